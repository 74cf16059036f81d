// Package certs is gradebroker's single home for TLS and X.509: it builds the
// TLS 1.3 configurations of the broker and of graderd, reloads certificate
// files without a restart, and turns a peer's certificate into an Identity
// (serial, issuer, fingerprint, role) that the rest of the code compares and
// stores as plain strings.
//
// The certificates themselves are made by the openssl scripts in scripts/
// (gb-ca.sh, gb-enroll.sh); the strings this package computes are the ones
// those scripts print, so an operator can compare them by eye.
package certs

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is what a certificate's holder may do, taken from the subject's
// organizational unit (OU) as gb-enroll.sh and gb-ca.sh write it.
type Role string

// The roles gradebroker issues certificates for.
const (
	// RoleServer is a grading server running graderd.
	RoleServer Role = "server"
	// RoleOperator is a person or tool using the admin API.
	RoleOperator Role = "operator"
	// RolePlatform is a platform submitting jobs through the REST gateway.
	RolePlatform Role = "platform"
	// RoleBroker is the broker's own TLS server certificate.
	RoleBroker Role = "broker"
)

// Valid reports whether r is one of the roles gradebroker issues.
func (r Role) Valid() bool {
	switch r {
	case RoleServer, RoleOperator, RolePlatform, RoleBroker:
		return true
	}
	return false
}

// Identity is the part of a certificate gradebroker compares, logs and
// stores. All fields are plain strings so that other packages never need
// crypto/x509.
type Identity struct {
	// Serial is the serial number in lower-case hex without leading zeros,
	// as big.Int.Text(16) prints it (gb-enroll.sh prints the same).
	Serial string
	// Issuer is the issuer's distinguished name in RFC 2253 form, as
	// pkix.Name.String prints it, e.g. "CN=gradebroker CA".
	Issuer string
	// Subject is the subject's distinguished name in the same form, e.g.
	// "CN=grader1,OU=server".
	Subject string
	// CommonName is the subject's CN: the name of the server, operator or
	// platform.
	CommonName string
	// Fingerprint is the SHA-256 of the DER certificate in lower-case hex
	// without colons.
	Fingerprint string
	// Role is taken from the subject's OU; it is empty when no OU names a
	// known role, or when two OUs name different roles.
	Role Role
	// NotAfter is the end of the certificate's validity.
	NotAfter time.Time
}

// IdentityOf computes the Identity of c. It does not verify c; see
// VerifyClient and PeerIdentity for that.
func IdentityOf(c *x509.Certificate) Identity {
	sum := sha256.Sum256(c.Raw)
	id := Identity{
		Issuer:      c.Issuer.String(),
		Subject:     c.Subject.String(),
		CommonName:  c.Subject.CommonName,
		Fingerprint: hex.EncodeToString(sum[:]),
		Role:        roleOf(c.Subject.OrganizationalUnit),
		NotAfter:    c.NotAfter,
	}
	if c.SerialNumber != nil {
		id.Serial = c.SerialNumber.Text(16)
	}
	return id
}

// roleOf picks the role named by the OUs. A certificate whose OUs name two
// different roles gets none: guessing which one was meant would hand out
// permissions nobody clearly granted.
func roleOf(ous []string) Role {
	var found Role
	for _, ou := range ous {
		r := Role(ou)
		if !r.Valid() {
			continue
		}
		if found != "" && found != r {
			return ""
		}
		found = r
	}
	return found
}

// String returns a one-line description for messages, e.g.
// "CN=grader1,OU=server (serial 1f2e)".
func (id Identity) String() string {
	if id.Subject == "" {
		return "certificate with serial " + id.Serial
	}
	return fmt.Sprintf("%s (serial %s)", id.Subject, id.Serial)
}

// LogValue makes slog print an Identity as a group of its fields.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("subject", id.Subject),
		slog.String("role", string(id.Role)),
		slog.String("serial", id.Serial),
		slog.String("issuer", id.Issuer),
		slog.String("fingerprint", id.Fingerprint),
		slog.Time("not_after", id.NotAfter),
	)
}

// ParseCertificatePEM parses the first CERTIFICATE block of pemBytes,
// skipping any other blocks (such as a private key) before it. The error
// says what was found instead; it never quotes the input.
func ParseCertificatePEM(pemBytes []byte) (*x509.Certificate, error) {
	c, err := parseCertificatePEM(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	return c, nil
}

// parseCertificatePEM is ParseCertificatePEM without the package prefix on
// its errors, for callers that put the file name in front.
func parseCertificatePEM(pemBytes []byte) (*x509.Certificate, error) {
	rest := pemBytes
	var seen []string
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			seen = append(seen, block.Type)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing PEM CERTIFICATE block: %w", err)
		}
		return c, nil
	}
	switch {
	case len(seen) > 0:
		return nil, fmt.Errorf("no CERTIFICATE block in PEM data (found %s)", strings.Join(seen, ", "))
	case len(pemBytes) > 0 && pemBytes[0] == 0x30:
		// 0x30 opens a DER SEQUENCE: a binary certificate, not a broken PEM one.
		return nil, errors.New("data is not PEM; it looks like binary DER (convert it with: openssl x509 -inform DER -outform PEM)")
	case len(strings.TrimSpace(string(pemBytes))) == 0:
		return nil, errors.New("no certificate: the data is empty")
	default:
		return nil, errors.New("no PEM data found (expected -----BEGIN CERTIFICATE-----)")
	}
}

// Reasons a certificate is refused. Errors returned by VerifyClient and by the
// handshake of a ClientTLSConfig wrap one of them, so callers can pick a
// status code with errors.Is; the message around it names the certificate.
var (
	// ErrNoClientCertificate means the connection carries no verified client
	// certificate: it is not TLS, or the client sent none.
	ErrNoClientCertificate = errors.New("no verified client certificate")
	// ErrUntrusted means the certificate does not chain to the trusted CA.
	ErrUntrusted = errors.New("not signed by the broker's CA")
	// ErrExpired means the certificate (or its CA) is past its NotAfter.
	ErrExpired = errors.New("expired")
	// ErrNotYetValid means the certificate is before its NotBefore.
	ErrNotYetValid = errors.New("not yet valid")
	// ErrWrongName means a server certificate does not name the host the
	// client connected to.
	ErrWrongName = errors.New("not valid for the server name")
	// ErrWrongUsage means the certificate's extended key usage does not allow
	// the use it is put to (client or server authentication).
	ErrWrongUsage = errors.New("not valid for this use (extended key usage)")
)

// VerifyClient checks that c is a client certificate the broker accepts at
// time now: it chains to a certificate in roots, is valid at now, and allows
// client authentication. roots must not be nil (a nil pool would mean the
// system roots). The error wraps ErrUntrusted, ErrExpired, ErrNotYetValid or
// ErrWrongUsage and names the certificate, e.g. "certificate for
// CN=x,OU=server (serial 1f) is not signed by the broker's CA".
func VerifyClient(roots *x509.CertPool, c *x509.Certificate, now time.Time) error {
	if roots == nil {
		return errors.New("certs: VerifyClient needs the CA pool; refusing to fall back to the system roots")
	}
	if c == nil {
		return fmt.Errorf("certs: %w", ErrNoClientCertificate)
	}
	_, err := c.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return explain(c, "the broker's CA", now, err)
	}
	return nil
}

// explain turns an x509 verification error into a sentence that names the
// certificate and wraps the matching sentinel. ca says whose CA was expected.
func explain(c *x509.Certificate, ca string, now time.Time, err error) error {
	who := "certificate for " + IdentityOf(c).String()
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	switch {
	case errors.As(err, &unknown):
		if ca == "the broker's CA" {
			return fmt.Errorf("%s is %w", who, ErrUntrusted)
		}
		return fmt.Errorf("%s is %w (expected %s)", who, ErrUntrusted, ca)
	case errors.As(err, &host):
		return fmt.Errorf("%s is %w %q (it names %s); connect with one of those names or reissue the certificate with gb-ca.sh --san",
			who, ErrWrongName, host.Host, certNames(c))
	case errors.As(err, &invalid):
		switch invalid.Reason {
		case x509.Expired:
			if now.After(c.NotAfter) {
				return fmt.Errorf("%s %w on %s", who, ErrExpired, c.NotAfter.UTC().Format(time.RFC3339))
			}
			if now.Before(c.NotBefore) {
				return fmt.Errorf("%s is %w: it starts on %s", who, ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
			}
			// The leaf is in date, so a CA certificate in its chain is not.
			return fmt.Errorf("%s chains to a CA certificate that has %w or is not yet valid: %v", who, ErrExpired, err)
		case x509.IncompatibleUsage:
			return fmt.Errorf("%s is %w", who, ErrWrongUsage)
		}
	}
	return fmt.Errorf("%s failed verification: %w", who, err)
}

// certNames lists the names a server certificate is valid for.
func certNames(c *x509.Certificate) string {
	var names []string
	for _, n := range c.DNSNames {
		names = append(names, "DNS:"+n)
	}
	for _, ip := range c.IPAddresses {
		names = append(names, "IP:"+ip.String())
	}
	if len(names) == 0 {
		return "no names"
	}
	return strings.Join(names, ", ")
}

// PeerIdentity returns the identity of the leaf of the peer's verified
// chain. On the broker it is the client certificate that TLS verified
// against the CA; with no verified chain (a client without a certificate
// under ServerTLSConfigOptionalClient) it returns an error wrapping
// ErrNoClientCertificate. It is meant for the server side: a client built
// with ClientTLSConfig verifies the server itself and has no verified chain
// in its connection state.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		if len(cs.PeerCertificates) > 0 {
			return Identity{}, fmt.Errorf("certificate for %s was sent but not verified: %w", IdentityOf(cs.PeerCertificates[0]), ErrNoClientCertificate)
		}
		return Identity{}, fmt.Errorf("connection has %w", ErrNoClientCertificate)
	}
	return IdentityOf(cs.VerifiedChains[0][0]), nil
}

// PeerIdentityFromContext returns PeerIdentity of the connection a gRPC call
// arrived on. The error wraps ErrNoClientCertificate when the context has
// no peer, the connection is not TLS, or there is no verified certificate.
func PeerIdentityFromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, fmt.Errorf("no gRPC peer in the context: %w", ErrNoClientCertificate)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, fmt.Errorf("connection from %s is not TLS: %w", p.Addr, ErrNoClientCertificate)
	}
	return PeerIdentity(info.State)
}
