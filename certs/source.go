package certs

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults for Watch. Events are debounced because replacing a certificate
// and its key is two writes, and reloading between them would only log a
// spurious key mismatch. The poll is a safety net for file systems where
// inotify does not fire (network mounts, some container bind mounts); it
// re-reads three small files and reloads only if their bytes changed.
const (
	defaultDebounce     = 250 * time.Millisecond
	defaultPollInterval = 10 * time.Second
	// expiryWarning is how close to NotAfter a loaded certificate makes the
	// load log a warning, so that an operator has time to renew it.
	expiryWarning = 30 * 24 * time.Hour
)

// side says which end of a connection a Source's certificate is for; it
// decides the extended key usage the certificate must allow.
type side int

const (
	serverSide side = iota
	clientSide
)

// Source holds a certificate, its key and a CA pool loaded from files, and
// builds TLS configurations that always use the current material, so a
// Reload (or Watch) applies to every new connection without a restart.
// Connections already open keep the material they were made with. A Source
// is safe for concurrent use.
type Source struct {
	side     side
	certFile string
	keyFile  string
	caFile   string
	log      *slog.Logger

	cur atomic.Pointer[material]

	mu      sync.Mutex // serializes loads, so reloads never race to Store
	lastBad string     // last reload error logged, to log a persisting failure once

	// Knobs for Watch; tests shorten them. onWatch, if set, is called once
	// Watch catches SIGHUP and watches the files, so a test knows a signal
	// is safe to send and a change will be seen; onPoll after each poll,
	// so that a test can wait for polls rather than sleep.
	debounce     time.Duration
	pollInterval time.Duration
	noNotify     bool
	onWatch      func()
	onPoll       func()
}

// material is one consistent set of loaded files. It is never modified
// after it is stored, so handshakes may read it without locks.
type material struct {
	cert    tls.Certificate
	id      Identity
	pool    *x509.CertPool
	caCount int
	digest  [sha256.Size]byte // of the three files' bytes
}

// NewServerSource loads the broker's certificate and key and the CA whose
// client certificates it accepts. The certificate must allow server
// authentication and must not have expired. The error names the file that
// is missing, unreadable, not PEM, or whose key does not match. log may be
// nil.
func NewServerSource(certFile, keyFile, caFile string, log *slog.Logger) (*Source, error) {
	return newSource(serverSide, certFile, keyFile, caFile, log)
}

// NewClientSource loads a client's (graderd's, an operator tool's)
// certificate and key and the CA that signed the broker's certificate. The
// certificate must allow client authentication and must not have expired.
// The error names the file that is missing, unreadable, not PEM, or whose
// key does not match. log may be nil.
func NewClientSource(certFile, keyFile, caFile string, log *slog.Logger) (*Source, error) {
	return newSource(clientSide, certFile, keyFile, caFile, log)
}

func newSource(sd side, certFile, keyFile, caFile string, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{
		side:         sd,
		certFile:     certFile,
		keyFile:      keyFile,
		caFile:       caFile,
		log:          log,
		debounce:     defaultDebounce,
		pollInterval: defaultPollInterval,
	}
	m, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.log.Info("certs: loaded", "certificate", m.id, "ca_file", caFile, "ca_certificates", m.caCount)
	return s, nil
}

// Identity returns the identity of the Source's own current certificate.
func (s *Source) Identity() Identity {
	return s.cur.Load().id
}

// CAPool returns a copy of the current CA pool, for VerifyClient. It is a
// copy so that a caller adding to it cannot change what the Source trusts.
func (s *Source) CAPool() *x509.CertPool {
	return s.cur.Load().pool.Clone()
}

// ServerTLSConfig returns the broker's gRPC server configuration: TLS 1.3
// only, a client certificate required and verified against the current CA,
// ALPN "h2". The certificate and CA pool are looked up on every handshake
// (GetConfigForClient), so reloads apply to new connections. Use it with a
// Source from NewServerSource.
func (s *Source) ServerTLSConfig() *tls.Config {
	return s.serverConfig(tls.RequireAndVerifyClientCert, []string{"h2"})
}

// ServerTLSConfigOptionalClient returns the REST gateway's HTTPS
// configuration: like ServerTLSConfig, but a client certificate is optional
// and, when given, must verify against the current CA (PeerIdentity then
// returns it; without one it returns ErrNoClientCertificate). It offers ALPN
// "h2" and "http/1.1", so serve it with http.Server.ServeTLS or
// ListenAndServeTLS (with empty file names), which set up HTTP/2.
func (s *Source) ServerTLSConfigOptionalClient() *tls.Config {
	return s.serverConfig(tls.VerifyClientCertIfGiven, []string{"h2", "http/1.1"})
}

func (s *Source) serverConfig(auth tls.ClientAuthType, protos []string) *tls.Config {
	// The returned config describes the policy for readers (and for code
	// that inspects MinVersion); the handshake itself runs on the config
	// GetConfigForClient builds from the material current at that moment.
	// Session tickets are off: a resumed session skips the client
	// certificate check, and after a reload that drops a CA it must not let
	// an old certificate back in. Broker connections are long-lived, so
	// resumption would save little.
	base := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             auth,
		NextProtos:             slices.Clone(protos),
		SessionTicketsDisabled: true,
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := s.cur.Load()
		return &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{m.cert},
			ClientAuth:             auth,
			ClientCAs:              m.pool,
			NextProtos:             slices.Clone(protos),
			SessionTicketsDisabled: true,
		}, nil
	}
	return base
}

// ClientTLSConfig returns a client configuration for connecting to the
// broker: TLS 1.3 only, the current client certificate sent on request,
// and the broker's certificate verified against the current CA for
// serverName (a DNS name or an IP address, as in the broker's
// certificate). If serverName is empty the name sent in SNI is used, which
// does not work for IP addresses: give the name explicitly. Use it with a
// Source from NewClientSource.
func (s *Source) ClientTLSConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := s.cur.Load().cert
			return &c, nil
		},
		// A fixed RootCAs could not follow a reloaded CA file, so the
		// built-in check is replaced by verifyServer, which does the same
		// verification (chain, name, serverAuth) against the current pool.
		// It runs on every handshake, resumed ones included.
		InsecureSkipVerify: true,
		VerifyConnection:   s.verifyServer(serverName),
	}
}

func (s *Source) verifyServer(serverName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("certs: the broker sent no certificate")
		}
		name := serverName
		if name == "" {
			name = cs.ServerName
		}
		if name == "" {
			return errors.New("certs: no server name to check the broker's certificate against; pass the broker's host name or IP address to ClientTLSConfig")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		now := time.Now()
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:         s.cur.Load().pool,
			Intermediates: inter,
			DNSName:       name,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("certs: the broker's %w", explain(leaf, "the CA in "+s.caFile, now, err))
		}
		return nil
	}
}

// Reload re-reads the three files. On success new connections use the new
// material; on error the current material stays in use and the error,
// which names the bad file, is returned (and logged).
func (s *Source) Reload() error {
	return s.reload("Reload called", true)
}

// reload loads the files and stores the result. Unless force is set it does
// nothing when the files are byte-for-byte what is loaded, and logs a
// failure it has already logged only once, so that polling a broken file
// does not flood the log.
func (s *Source) reload(reason string, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	if !force {
		if d, err := s.digest(); err == nil && d == old.digest {
			return nil
		}
	}
	m, err := s.load()
	if err != nil {
		if force || err.Error() != s.lastBad {
			s.log.Error("certs: reload failed; keeping the current certificates", "reason", reason, "error", err, "current", old.id)
		}
		s.lastBad = err.Error()
		return err
	}
	s.lastBad = ""
	s.cur.Store(m)
	s.log.Info("certs: reloaded", "reason", reason, "certificate", m.id,
		"changed", m.digest != old.digest, "ca_certificates", m.caCount)
	return nil
}

// Watch reloads the files when they change and when the process receives
// SIGHUP, logging each reload, until ctx ends. Changes are seen through
// fsnotify on the files' directories (any event there triggers a check, so
// that atomic renames and Kubernetes-style symlink swaps are caught) and,
// as a safety net for file systems without inotify, by comparing the files'
// bytes every few seconds. A change that leaves the files broken keeps the
// current material and is logged once. Run Watch in its own goroutine.
func (s *Source) Watch(ctx context.Context) {
	// Registered first: once Watch reacts to anything, SIGHUP is caught and
	// can no longer terminate the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if !s.noNotify {
		w, err := s.newWatcher()
		if err != nil {
			s.log.Warn("certs: cannot watch the certificate files; checking them by polling only", "interval", s.pollInterval, "error", err)
		} else {
			defer w.Close()
			events, watchErrs = w.Events, w.Errors
		}
	}
	// Files replaced between loading and watching raised no event we saw.
	_ = s.reload("file changed before Watch started", false)
	if s.onWatch != nil {
		s.onWatch()
	}
	poll := time.NewTicker(s.pollInterval)
	defer poll.Stop()
	// A stopped timer, armed by file events; since Go 1.23 a stopped or
	// reset timer never delivers a stale tick.
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			_ = s.reload("SIGHUP", true) // logged inside
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			settle.Reset(s.debounce)
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			s.log.Warn("certs: file watcher error; polling continues", "error", err)
		case <-settle.C:
			_ = s.reload("file changed", false)
		case <-poll.C:
			_ = s.reload("file changed (poll)", false)
			if s.onPoll != nil {
				s.onPoll()
			}
		}
	}
}

func (s *Source) newWatcher() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("certs: starting file watcher: %w", err)
	}
	var dirs []string
	for _, f := range []string{s.certFile, s.keyFile, s.caFile} {
		d := filepath.Dir(f)
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("certs: watching %s: %w", d, err)
		}
	}
	return w, nil
}

// files is the raw content of the three files.
type files struct {
	cert, key, ca []byte
}

func (f files) digest() [sha256.Size]byte {
	h := sha256.New()
	for _, b := range [][]byte{f.cert, f.key, f.ca} {
		// Length-prefixed, so that bytes moving between files change the sum.
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

func (s *Source) read() (files, error) {
	var f files
	var err error
	if f.cert, err = readFile("certificate", s.certFile); err != nil {
		return files{}, err
	}
	if f.key, err = readFile("key", s.keyFile); err != nil {
		return files{}, err
	}
	if f.ca, err = readFile("CA", s.caFile); err != nil {
		return files{}, err
	}
	return f, nil
}

func (s *Source) digest() ([sha256.Size]byte, error) {
	f, err := s.read()
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return f.digest(), nil
}

func readFile(what, path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("certs: no %s file given", what)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		// The path error already names the file; unwrap it so the message
		// names it once, in our words, while errors.Is(err, fs.ErrNotExist)
		// still works.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("certs: cannot read %s file %s: %w", what, path, err)
	}
	return b, nil
}

// load reads and checks the files. Each check names the file at fault,
// because the person reading the error is an operator holding three paths.
func (s *Source) load() (*material, error) {
	f, err := s.read()
	if err != nil {
		return nil, err
	}
	leaf, err := parseCertificatePEM(f.cert)
	if err != nil {
		return nil, fmt.Errorf("certs: certificate file %s: %w", s.certFile, err)
	}
	if err := checkPrivateKeyPEM(f.key); err != nil {
		return nil, fmt.Errorf("certs: key file %s: %w", s.keyFile, err)
	}
	cert, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("certs: key file %s does not belong to certificate file %s: %w", s.keyFile, s.certFile, err)
	}
	cert.Leaf = leaf
	id := IdentityOf(leaf)
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("certs: certificate file %s (%s) expired on %s; renew it", s.certFile, id, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	usage, use := x509.ExtKeyUsageServerAuth, "TLS server (serverAuth)"
	if s.side == clientSide {
		usage, use = x509.ExtKeyUsageClientAuth, "TLS client (clientAuth)"
	}
	if !allowsUsage(leaf, usage) {
		return nil, fmt.Errorf("certs: certificate file %s (%s) is not valid as a %s certificate: its extended key usage does not include it", s.certFile, id, use)
	}
	pool, count, err := parseCAs(f.ca)
	if err != nil {
		return nil, fmt.Errorf("certs: CA file %s: %w", s.caFile, err)
	}

	// Problems that still allow a working connection are warnings, not
	// errors: refusing to start would be worse than what they cause.
	if now.Before(leaf.NotBefore) {
		s.log.Warn("certs: certificate is not valid yet; check this machine's clock", "file", s.certFile, "not_before", leaf.NotBefore)
	}
	if left := leaf.NotAfter.Sub(now); left < expiryWarning {
		s.log.Warn("certs: certificate expires soon; renew it", "file", s.certFile, "not_after", leaf.NotAfter, "left", left.Round(time.Hour))
	}
	if s.side == serverSide && len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
		s.log.Warn("certs: server certificate has no subject alternative names; clients will refuse it", "file", s.certFile)
	}
	if runtime.GOOS != "windows" {
		if fi, err := os.Stat(s.keyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			s.log.Warn("certs: private key file is readable by other users; chmod 600 it", "file", s.keyFile, "mode", fi.Mode().Perm().String())
		}
	}
	return &material{cert: cert, id: id, pool: pool, caCount: count, digest: f.digest()}, nil
}

// checkPrivateKeyPEM gives a clearer error than tls.X509KeyPair for the
// usual mistakes (a certificate or public key in the key file, garbage).
// It never quotes the file: it may hold a secret.
func checkPrivateKeyPEM(b []byte) error {
	rest := b
	var seen []string
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			seen = append(seen, block.Type)
			continue
		}
		var err error
		switch block.Type {
		case "RSA PRIVATE KEY":
			_, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			_, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			_, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return fmt.Errorf("unsupported private key type %q (use an unencrypted PKCS#8 key: openssl pkey -in OLD -out NEW)", block.Type)
		}
		if err != nil {
			return fmt.Errorf("cannot parse the %s: %w", strings.ToLower(block.Type), err)
		}
		return nil
	}
	if len(seen) > 0 {
		return fmt.Errorf("no PEM private key (found %s)", strings.Join(seen, ", "))
	}
	return errors.New("no PEM private key (expected -----BEGIN PRIVATE KEY-----)")
}

// allowsUsage reports whether c may be used for u. No extended key usage at
// all means any use, as in crypto/x509's own verification.
func allowsUsage(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	return slices.Contains(c.ExtKeyUsage, u) || slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny)
}

// parseCAs parses every CERTIFICATE block in b, so a CA file may be a
// bundle (for example the old and the new CA during a CA rotation).
func parseCAs(b []byte) (*x509.CertPool, int, error) {
	pool := x509.NewCertPool()
	n := 0
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, 0, errors.New("no PEM CERTIFICATE block (expected -----BEGIN CERTIFICATE-----)")
	}
	return pool, n, nil
}
