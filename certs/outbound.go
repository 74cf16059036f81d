package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// LoadCAPool reads a PEM file of CA certificates into a pool.
func LoadCAPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("certs: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("certs: CA file %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// GatewayClientTLSConfig is the client configuration of a platform's tool
// calling the broker's REST gateway without a client certificate: TLS 1.3
// only (the gateway speaks nothing older), and the broker's certificate
// verified against the CAs in caFile, or against the system's roots when
// caFile is empty (a broker with a public certificate). The error names
// the file.
func GatewayClientTLSConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile != "" {
		pool, err := LoadCAPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// CallbackServerTLSConfig is the server configuration of a platform's
// callback receiver (`broker platform receive`): TLS 1.3 only, the
// certificate and key read from their files, no client certificate asked
// for. Any certificate the broker's delivery client trusts will do, a
// development CA's included: whom the broker trusts is its operator's
// choice (delivery_ca_file). The error names the files.
func CallbackServerTLSConfig(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certs: certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}, nil
}

// OutboundTLSConfig is the client configuration for servers that are not
// gradebroker's own, such as platforms' callback URLs: the system's roots
// plus, if caFile is set, the CAs in it (for platforms with a private CA).
// TLS 1.2 is allowed here because those servers are not ours to upgrade.
func OutboundTLSConfig(caFile string) (*tls.Config, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		// No system pool (a minimal container): only caFile can vouch for
		// anyone, which is still a working configuration.
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("certs: CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("certs: CA file %s holds no PEM certificate", caFile)
		}
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}, nil
}
