package graderd

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

// testPKI is a CA, a broker certificate for 127.0.0.1 and localhost, and a
// graderd client certificate (CN=grader1, OU=server), made fresh for a test.
type testPKI struct {
	CAFile, CertFile, KeyFile string // graderd's side
	// ServerTLS is the fake broker's configuration, the real broker's: TLS
	// 1.3, a client certificate from the CA required.
	ServerTLS *tls.Config
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	return newServerPKI(t, "grader1")
}

// newServerPKI is newTestPKI with graderd's certificate for server name.
func newServerPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	ca := certstest.NewCA(t, "gradebroker test")
	brokerFiles := ca.Broker(t)
	grader := ca.Client(t, certs.RoleServer, name)
	src, err := certs.NewServerSource(brokerFiles.CertFile, brokerFiles.KeyFile, ca.CertFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{CAFile: ca.CertFile, CertFile: grader.CertFile, KeyFile: grader.KeyFile, ServerTLS: src.ServerTLSConfig()}
}

// newTestPKIIn is newTestPKI with graderd's files (CA, certificate, key)
// copied into dir, as a deployment lays them out under /etc/graderd.
func newTestPKIIn(t *testing.T, dir string) *testPKI {
	t.Helper()
	return pkiIn(t, newTestPKI(t), dir)
}

// pkiIn copies p's graderd files into dir.
func pkiIn(t *testing.T, p *testPKI, dir string) *testPKI {
	t.Helper()
	for _, f := range []*string{&p.CAFile, &p.CertFile, &p.KeyFile} {
		b, err := os.ReadFile(*f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Base(*f))
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
		*f = dst
	}
	return p
}
