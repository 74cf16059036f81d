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
