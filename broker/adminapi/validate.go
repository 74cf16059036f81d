package adminapi

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker/wakeup"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
)

// CertIdentity converts what certs reads from a certificate into what the
// store keeps of it.
func CertIdentity(id certs.Identity) broker.CertIdentity {
	return broker.CertIdentity{
		Serial:      id.Serial,
		Issuer:      id.Issuer,
		Subject:     id.Subject,
		Fingerprint: id.Fingerprint,
		Role:        string(id.Role),
		NotAfter:    id.NotAfter,
	}
}

// CheckCertificate parses a PEM client certificate, verifies it against the
// CA pool at now, and checks that it was issued for role, so that a server's
// certificate can never be registered as an operator's (or the other way
// round). It returns the identity to store, or an ErrInvalid error that says
// what is wrong with the certificate and what to do.
func CheckCertificate(pemData []byte, ca *x509.CertPool, role certs.Role, now time.Time) (broker.CertIdentity, error) {
	if ca == nil {
		return broker.CertIdentity{}, fmt.Errorf("%w: the broker has no CA loaded to verify certificates against", broker.ErrUnavailable)
	}
	c, err := certs.ParseCertificatePEM(pemData)
	if err != nil {
		return broker.CertIdentity{}, fmt.Errorf("%w: %s certificate: %v", broker.ErrInvalid, role, err)
	}
	id := certs.IdentityOf(c)
	if err := certs.VerifyClient(ca, c, now); err != nil {
		return broker.CertIdentity{}, fmt.Errorf("%w: %v; issue a new %s certificate with scripts/gb-enroll.sh", broker.ErrInvalid, err, role)
	}
	if id.Role != role {
		got := "no role"
		if id.Role != "" {
			got = "role " + string(id.Role)
		}
		return broker.CertIdentity{}, fmt.Errorf("%w: certificate for %s has %s (its subject's OU), but a %s certificate (OU=%s) is needed here",
			broker.ErrInvalid, id, got, role, role)
	}
	return CertIdentity(id), nil
}

// checkProtocol refuses a protocol the broker cannot deliver results in: a
// platform registered with it would never hear of its jobs.
func (s *Service) checkProtocol(p broker.Protocol) error {
	known := *s.protocols.Load()
	if slices.Contains(known, p) {
		return nil
	}
	names := make([]string, len(known))
	for i, p := range known {
		names[i] = string(p)
	}
	return fmt.Errorf("%w: unknown protocol %q: this broker delivers results in %s", broker.ErrInvalid, p, strings.Join(names, ", "))
}

// checkPlatformNeeds checks that a platform has what its protocol needs.
// gradebroker's own protocol needs a key, which checks the platform's
// tokens and encrypts its callbacks, and a return URL, where they go.
// graderqueue's needs the key for the same (its callbacks are tokens too),
// and a return URL only for callbacks: without one, as in graderqueue, the
// platform reads its results with getjob. Other protocols may do without
// either (their adapters say what they use); a key or URL given is checked
// all the same.
func checkPlatformNeeds(p broker.Platform) error {
	own := p.Protocol == broker.ProtocolGradebroker
	if own || p.Protocol == broker.ProtocolGraderqueue || p.PublicKeyPEM != "" {
		if err := checkPublicKey(p.PublicKeyPEM); err != nil {
			return err
		}
	}
	if own || p.ReturnURL != "" {
		return checkReturnURL(p.ReturnURL)
	}
	return nil
}

// checkPublicKey refuses anything but an RSA public key the token package
// accepts, so that a platform is never registered with a key its tokens
// could not be checked against.
func checkPublicKey(pemData string) error {
	if _, err := token.ParsePublicKeyPEM([]byte(pemData)); err != nil {
		return fmt.Errorf("%w: platform %v", broker.ErrInvalid, err)
	}
	return nil
}

// checkReturnURL accepts https:// URLs, and http:// only to a loopback host:
// results are personal data and must not cross a network in clear, but a
// platform on the same machine (or a test) may skip TLS.
func checkReturnURL(raw string) error {
	u, err := parseHTTPURL("return_url", raw)
	if err != nil {
		return err
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return fmt.Errorf("%w: return_url %q uses http:// to a host that is not loopback; use https:// (http:// is allowed only to localhost, 127.0.0.1 or ::1)",
			broker.ErrInvalid, raw)
	}
	return nil
}

// checkWakeupURL accepts the wakeup schemes the broker speaks: http://,
// https:// and udp://HOST:PORT. A wakeup carries no data, only a signed
// nudge, and grading servers often sit on a private network without
// certificates of their own.
func checkWakeupURL(raw string) error {
	if err := wakeup.CheckURL(raw); err != nil {
		return fmt.Errorf("%w: wakeup_url: %v", broker.ErrInvalid, err)
	}
	return nil
}

func parseHTTPURL(field, raw string) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("%w: %s is required", broker.ErrInvalid, field)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %q is not a URL: %v", broker.ErrInvalid, field, raw, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("%w: %s %q must start with https://", broker.ErrInvalid, field, raw)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%w: %s %q has no host", broker.ErrInvalid, field, raw)
	}
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkRestrictPaths refuses empty entries, which would otherwise restrict
// a platform's jobs to nothing in a way nobody meant.
func checkRestrictPaths(paths []string) error {
	for i, p := range paths {
		if strings.TrimSpace(p) == "" {
			return fmt.Errorf("%w: restrict_paths[%d] is empty", broker.ErrInvalid, i)
		}
	}
	return nil
}

// maxDescription bounds a tag's description: it is shown in lists, not a
// place for documents.
const maxDescription = 1000

func checkJobID(id int64) error {
	if id <= 0 {
		return fmt.Errorf("%w: job id must be a positive number, got %d", broker.ErrInvalid, id)
	}
	return nil
}
