package bench

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

// pkiTB lets certstest, which reports through a testing.TB, run inside a
// program: a failure panics with a pkiFailure that the PKI methods recover
// into an error. certstest calls only Helper, Fatalf and TempDir; the
// embedded nil TB is there to satisfy the interface's unexported method.
type pkiTB struct {
	testing.TB
	dir string
}

type pkiFailure struct{ err error }

func (t *pkiTB) Helper() {}

func (t *pkiTB) Fatalf(format string, args ...any) {
	panic(pkiFailure{fmt.Errorf(format, args...)})
}

func (t *pkiTB) TempDir() string {
	d, err := os.MkdirTemp(t.dir, "ca-")
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	return d
}

func catchPKI(err *error) {
	if r := recover(); r != nil {
		f, ok := r.(pkiFailure)
		if !ok {
			panic(r)
		}
		*err = f.err
	}
}

// PKI is the benchmark's certificate authority with the broker's TLS
// certificate and token key, made in Go with certstest.
type PKI struct {
	CAFile     string
	BrokerCert string
	BrokerKey  string
	TokenKey   string
	// PlatformKeyPEM is a real RSA public key to register the platform with.
	PlatformKeyPEM string

	tb *pkiTB
	ca *certstest.CA
}

// ServerCert is one grading server's client certificate.
type ServerCert struct {
	Name     string
	CertFile string
	KeyFile  string
	Identity broker.CertIdentity
}

// NewPKI makes a CA, the broker's certificate and an RSA token key under dir.
func NewPKI(dir string) (p *PKI, err error) {
	defer catchPKI(&err)
	tb := &pkiTB{dir: dir}
	ca := certstest.NewCA(tb, "gbbench")
	bf := ca.Broker(tb)
	p = &PKI{CAFile: ca.CertFile, BrokerCert: bf.CertFile, BrokerKey: bf.KeyFile, tb: tb, ca: ca}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	p.TokenKey = filepath.Join(ca.Dir, "broker-token.key")
	if err := os.WriteFile(p.TokenKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	p.PlatformKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	return p, nil
}

// Server issues a client certificate with role server for name.
func (p *PKI) Server(name string) (sc ServerCert, err error) {
	defer catchPKI(&err)
	f := p.ca.Client(p.tb, certs.RoleServer, name)
	id := certs.IdentityOf(f.Cert)
	return ServerCert{Name: name, CertFile: f.CertFile, KeyFile: f.KeyFile, Identity: broker.CertIdentity{
		Serial: id.Serial, Issuer: id.Issuer, Subject: id.Subject, Fingerprint: id.Fingerprint,
		Role: string(id.Role), NotAfter: id.NotAfter}}, nil
}

// Servers issues certificates for prefix-0001 … prefix-n.
func (p *PKI) Servers(prefix string, n int) ([]ServerCert, error) {
	out := make([]ServerCert, n)
	for i := range out {
		sc, err := p.Server(fmt.Sprintf("%s-%04d", prefix, i+1))
		if err != nil {
			return nil, err
		}
		out[i] = sc
	}
	return out, nil
}
