package certs_test

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

// TestGatewayClientTLSConfig: a platform's tool reaches the gateway over
// TLS 1.3 when it trusts the broker's CA, and not otherwise, nor over
// anything older.
func TestGatewayClientTLSConfig(t *testing.T) {
	t.Parallel()
	p := setup(t)
	cfg, err := certs.GatewayClientTLSConfig(p.ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "localhost"
	cli, srv := handshake(t, p.server.ServerTLSConfigOptionalClient(), cfg)
	if cli.err != nil || srv.err != nil {
		t.Fatalf("handshake: client %v, server %v", cli.err, srv.err)
	}
	if cli.state.Version != tls.VersionTLS13 {
		t.Errorf("negotiated %#x, want TLS 1.3", cli.state.Version)
	}

	old := p.server.ServerTLSConfigOptionalClient().Clone()
	old.GetConfigForClient = nil
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	kp, err := tls.LoadX509KeyPair(p.broker.CertFile, p.broker.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	old.Certificates = []tls.Certificate{kp}
	if cli, _ := handshake(t, old, cfg.Clone()); cli.err == nil {
		t.Error("the client accepted a TLS 1.2 server")
	}

	foreign, err := certs.GatewayClientTLSConfig(certstest.NewCA(t, "foreign").CertFile)
	if err != nil {
		t.Fatal(err)
	}
	foreign.ServerName = "localhost"
	if cli, _ := handshake(t, p.server.ServerTLSConfigOptionalClient(), foreign); cli.err == nil {
		t.Error("a client trusting another CA accepted the broker")
	}

	if sys, err := certs.GatewayClientTLSConfig(""); err != nil || sys.RootCAs != nil || sys.MinVersion != tls.VersionTLS13 {
		t.Errorf(`GatewayClientTLSConfig(""): %v; want nil RootCAs (the system's) and MinVersion TLS 1.3, got %v and %#x`, err, sys.RootCAs, sys.MinVersion)
	}
	missing := filepath.Join(t.TempDir(), "nope.crt")
	if _, err := certs.GatewayClientTLSConfig(missing); err == nil || !strings.Contains(err.Error(), "nope.crt") {
		t.Errorf("missing CA file: %v, want an error naming it", err)
	}
}

// TestCallbackServerTLSConfig: a callback receiver serves TLS 1.3 with its
// files' certificate and nothing older.
func TestCallbackServerTLSConfig(t *testing.T) {
	t.Parallel()
	p := setup(t)
	srvCfg, err := certs.CallbackServerTLSConfig(p.broker.CertFile, p.broker.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := handshake(t, srvCfg, manualClient(t, p.ca, nil))
	if cli.err != nil || srv.err != nil {
		t.Fatalf("handshake: client %v, server %v", cli.err, srv.err)
	}
	if cli.state.Version != tls.VersionTLS13 {
		t.Errorf("negotiated %#x, want TLS 1.3", cli.state.Version)
	}
	old := manualClient(t, p.ca, nil)
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if cli, _ := handshake(t, srvCfg, old); cli.err == nil {
		t.Error("the receiver accepted a TLS 1.2 client")
	}
	if _, err := certs.CallbackServerTLSConfig(p.broker.CertFile, filepath.Join(t.TempDir(), "nokey.key")); err == nil ||
		!strings.Contains(err.Error(), "nokey.key") {
		t.Errorf("missing key file: %v, want an error naming it", err)
	}
}
