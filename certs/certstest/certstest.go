// Package certstest makes throwaway certificate authorities and certificates
// for tests, written as PEM files under t.TempDir() in the same shape as
// scripts/gb-ca.sh and scripts/gb-enroll.sh make them (EC P-256 keys in
// PKCS#8, role in the subject's OU, random 128-bit serials), but in Go, so a
// test needs neither openssl nor a shell. It is for tests only: keys are
// made fast, and failures end the test.
package certstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/certs"
)

// CA is a certificate authority whose files live in a test's temporary
// directory.
type CA struct {
	// Dir is the directory holding the CA's files and every certificate it
	// issues.
	Dir string
	// CertFile is the path of the CA certificate (PEM), the file to give as
	// caFile to certs.NewServerSource and certs.NewClientSource.
	CertFile string
	// Cert is the parsed CA certificate.
	Cert *x509.Certificate

	key crypto.Signer
}

// Files names a certificate and key written by Issue.
type Files struct {
	// CertFile is the path of the certificate (PEM).
	CertFile string
	// KeyFile is the path of the private key (PKCS#8 PEM, mode 0600).
	KeyFile string
	// Cert is the parsed certificate.
	Cert *x509.Certificate
}

// Leaf describes a certificate for Issue. Zero fields take defaults.
type Leaf struct {
	// CommonName is the subject's CN (default: the role's name).
	CommonName string
	// Role goes into the subject's OU; empty means no OU.
	Role certs.Role
	// ExtKeyUsage defaults to serverAuth for RoleBroker and clientAuth for
	// any other role.
	ExtKeyUsage []x509.ExtKeyUsage
	// DNSNames and IPAddresses are the subject alternative names; a broker
	// certificate with neither gets localhost, 127.0.0.1 and ::1.
	DNSNames    []string
	IPAddresses []net.IP
	// NotBefore defaults to an hour ago, NotAfter to 90 days from now; set
	// both in the past to make an expired certificate.
	NotBefore time.Time
	NotAfter  time.Time
}

// NewCA makes a CA named "<name> CA" in a fresh temporary directory.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	dir := tb.TempDir()
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(tb),
		Subject:               pkix.Name{CommonName: name + " CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatalf("certstest: creating CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("certstest: parsing CA certificate: %v", err)
	}
	ca := &CA{Dir: dir, CertFile: filepath.Join(dir, "ca.crt"), Cert: cert, key: key}
	writePEM(tb, ca.CertFile, "CERTIFICATE", der, 0o644)
	return ca
}

// Broker issues the broker's TLS server certificate: CN=gradebroker,
// OU=broker, serverAuth, for localhost, 127.0.0.1 and ::1.
func (ca *CA) Broker(tb testing.TB) Files {
	tb.Helper()
	return ca.Issue(tb, Leaf{CommonName: "gradebroker", Role: certs.RoleBroker})
}

// Client issues a client certificate CN=name, OU=role with clientAuth,
// valid for a day.
func (ca *CA) Client(tb testing.TB, role certs.Role, name string) Files {
	tb.Helper()
	return ca.Issue(tb, Leaf{CommonName: name, Role: role})
}

// Issue makes a certificate as l describes, signed by ca, and writes it and
// its key to new files in ca.Dir.
func (ca *CA) Issue(tb testing.TB, l Leaf) Files {
	tb.Helper()
	now := time.Now()
	if l.CommonName == "" {
		l.CommonName = string(l.Role)
	}
	if l.ExtKeyUsage == nil {
		l.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if l.Role == certs.RoleBroker {
			l.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}
	}
	if l.Role == certs.RoleBroker && l.DNSNames == nil && l.IPAddresses == nil {
		l.DNSNames = []string{"localhost"}
		l.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	if l.NotBefore.IsZero() {
		l.NotBefore = now.Add(-time.Hour)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = now.Add(90 * 24 * time.Hour)
	}
	subject := pkix.Name{CommonName: l.CommonName}
	if l.Role != "" {
		subject.OrganizationalUnit = []string{string(l.Role)}
	}
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(tb),
		Subject:               subject,
		NotBefore:             l.NotBefore,
		NotAfter:              l.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           l.ExtKeyUsage,
		BasicConstraintsValid: true,
		DNSNames:              l.DNSNames,
		IPAddresses:           l.IPAddresses,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		tb.Fatalf("certstest: creating certificate for %s: %v", l.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("certstest: parsing certificate for %s: %v", l.CommonName, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("certstest: encoding key for %s: %v", l.CommonName, err)
	}
	// Serial-suffixed names, because a test may issue the same name twice
	// (an old and a new certificate for a reload).
	base := filepath.Join(ca.Dir, l.CommonName+"-"+cert.SerialNumber.Text(16))
	f := Files{CertFile: base + ".crt", KeyFile: base + ".key", Cert: cert}
	writePEM(tb, f.CertFile, "CERTIFICATE", der, 0o644)
	writePEM(tb, f.KeyFile, "PRIVATE KEY", pkcs8, 0o600)
	return f
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("certstest: generating key: %v", err)
	}
	return key
}

// newSerial returns a random positive serial of at most 128 bits, like
// gb-enroll.sh.
func newSerial(tb testing.TB) *big.Int {
	tb.Helper()
	for {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			tb.Fatalf("certstest: generating serial: %v", err)
		}
		if n.Sign() > 0 {
			return n
		}
	}
}

func writePEM(tb testing.TB, path, typ string, der []byte, mode os.FileMode) {
	tb.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		tb.Fatalf("certstest: %v", err)
	}
}
