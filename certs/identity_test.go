package certs_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

func TestIdentityOf(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t, "test")
	f := ca.Client(t, certs.RoleServer, "grader1")
	sum := sha256.Sum256(f.Cert.Raw)
	want := certs.Identity{
		Serial:      f.Cert.SerialNumber.Text(16),
		Issuer:      "CN=test CA",
		Subject:     "CN=grader1,OU=server",
		CommonName:  "grader1",
		Fingerprint: hex.EncodeToString(sum[:]),
		Role:        certs.RoleServer,
		NotAfter:    f.Cert.NotAfter,
	}
	if diff := cmp.Diff(want, certs.IdentityOf(f.Cert)); diff != "" {
		t.Errorf("IdentityOf (-want +got):\n%s", diff)
	}
	if got := certs.IdentityOf(f.Cert).Serial; strings.HasPrefix(got, "0") || strings.ToLower(got) != got {
		t.Errorf("Serial %q: want lower-case hex without leading zeros", got)
	}
}

func TestIdentityRole(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t, "test")
	tests := []struct {
		ou   []string
		want certs.Role
	}{
		{ou: []string{"server"}, want: certs.RoleServer},
		{ou: []string{"operator"}, want: certs.RoleOperator},
		{ou: []string{"platform"}, want: certs.RolePlatform},
		{ou: []string{"broker"}, want: certs.RoleBroker},
		{ou: nil, want: ""},
		{ou: []string{"Server"}, want: ""}, // roles are exact, as the scripts write them
		{ou: []string{"admin"}, want: ""},
		{ou: []string{"dept-7", "platform"}, want: certs.RolePlatform},
		{ou: []string{"server", "server"}, want: certs.RoleServer},
		{ou: []string{"server", "operator"}, want: ""}, // ambiguous: no role at all
	}
	for _, tt := range tests {
		c := ca.Issue(t, certstest.Leaf{CommonName: "x"}).Cert
		c.Subject.OrganizationalUnit = tt.ou // IdentityOf reads the parsed subject only
		if got := certs.IdentityOf(c).Role; got != tt.want {
			t.Errorf("OU %q: role %q, want %q", tt.ou, got, tt.want)
		}
	}
}

func TestVerifyClient(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t, "test")
	foreign := certstest.NewCA(t, "foreign")
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	now := time.Now()
	tests := []struct {
		name    string
		cert    *x509.Certificate
		wantErr error
		wantMsg string
	}{
		{name: "ok", cert: ca.Client(t, certs.RoleServer, "grader1").Cert},
		{
			name:    "foreign CA",
			cert:    foreign.Client(t, certs.RoleServer, "intruder").Cert,
			wantErr: certs.ErrUntrusted,
			wantMsg: "certificate for CN=intruder,OU=server (serial ",
		},
		{
			name: "expired",
			cert: ca.Issue(t, certstest.Leaf{CommonName: "old", Role: certs.RoleServer,
				NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}).Cert,
			wantErr: certs.ErrExpired,
			wantMsg: "expired on ",
		},
		{
			name: "not yet valid",
			cert: ca.Issue(t, certstest.Leaf{CommonName: "early", Role: certs.RoleServer,
				NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)}).Cert,
			wantErr: certs.ErrNotYetValid,
			wantMsg: "is not yet valid",
		},
		{
			name:    "server certificate used as client",
			cert:    ca.Broker(t).Cert,
			wantErr: certs.ErrWrongUsage,
			wantMsg: "extended key usage",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := certs.VerifyClient(pool, tt.cert, now)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifyClient = %v, want error wrapping %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("VerifyClient = %q, want it to contain %q", err, tt.wantMsg)
			}
		})
	}

	t.Run("nil pool refused", func(t *testing.T) {
		t.Parallel()
		// A nil pool would make crypto/x509 trust the system roots.
		if err := certs.VerifyClient(nil, ca.Client(t, certs.RoleServer, "g").Cert, now); err == nil {
			t.Fatal("VerifyClient with a nil pool succeeded")
		}
	})
}

func TestParseCertificatePEM(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t, "test")
	f := ca.Client(t, certs.RolePlatform, "demo")
	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		in      []byte
		wantCN  string
		wantMsg string
	}{
		{name: "certificate", in: certPEM, wantCN: "demo"},
		{name: "key before certificate", in: append(append([]byte{}, keyPEM...), certPEM...), wantCN: "demo"},
		{name: "first of two", in: append(append([]byte{}, caPEM...), certPEM...), wantCN: "test CA"},
		{name: "text around", in: []byte("subject=CN=demo\n" + string(certPEM) + "trailer\n"), wantCN: "demo"},
		{name: "empty", in: nil, wantMsg: "empty"},
		{name: "blank", in: []byte(" \n\t"), wantMsg: "empty"},
		{name: "key only", in: keyPEM, wantMsg: "no CERTIFICATE block in PEM data (found PRIVATE KEY)"},
		{name: "DER", in: f.Cert.Raw, wantMsg: "looks like binary DER"},
		{name: "garbage", in: []byte("hello"), wantMsg: "no PEM data found"},
		{
			name:    "bad DER inside PEM",
			in:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}),
			wantMsg: "parsing PEM CERTIFICATE block",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := certs.ParseCertificatePEM(tt.in)
			if tt.wantMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantMsg) || !strings.HasPrefix(err.Error(), "certs: ") {
					t.Fatalf("ParseCertificatePEM error = %v, want \"certs: ...%s...\"", err, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCertificatePEM: %v", err)
			}
			if c.Subject.CommonName != tt.wantCN {
				t.Errorf("CN = %q, want %q", c.Subject.CommonName, tt.wantCN)
			}
		})
	}
}

func TestPeerIdentityWithoutCertificate(t *testing.T) {
	t.Parallel()
	_, err := certs.PeerIdentity(tls.ConnectionState{})
	if !errors.Is(err, certs.ErrNoClientCertificate) {
		t.Errorf("PeerIdentity(empty state) = %v, want ErrNoClientCertificate", err)
	}
	_, err = certs.PeerIdentityFromContext(context.Background())
	if !errors.Is(err, certs.ErrNoClientCertificate) {
		t.Errorf("PeerIdentityFromContext(no peer) = %v, want ErrNoClientCertificate", err)
	}
}

func FuzzParseCertificatePEM(f *testing.F) {
	ca := certstest.NewCA(f, "fuzz")
	leaf := ca.Client(f, certs.RoleServer, "grader1")
	for _, path := range []string{ca.CertFile, leaf.CertFile, leaf.KeyFile} {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add(leaf.Cert.Raw)
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := certs.ParseCertificatePEM(b)
		if err != nil {
			if c != nil {
				t.Fatal("certificate returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "certs: ") {
				t.Fatalf("error %q lacks the certs: prefix", err)
			}
			return
		}
		id := certs.IdentityOf(c)
		if len(id.Fingerprint) != 64 {
			t.Fatalf("fingerprint %q is not 64 hex digits", id.Fingerprint)
		}
	})
}
