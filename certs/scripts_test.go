package certs_test

import (
	"bufio"
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The scripts are the supported way to make gradebroker's certificates, so
// these tests run them for real and load what they make through this
// package. Without bash or openssl they fail, never skip: a machine that
// cannot run them cannot make a deployment's certificates either.

type scriptRun struct {
	stdout, stderr string
	code           int
}

func runScript(t *testing.T, script string, args ...string) scriptRun {
	t.Helper()
	for _, tool := range []string{"bash", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required to test scripts/ and was not found: %v", tool, err)
		}
	}
	path, err := filepath.Abs(filepath.Join("..", "scripts", script))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", append([]string{path}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	r := scriptRun{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", script, err)
	}
	return r
}

// mustRun runs a script that must succeed.
func mustRun(t *testing.T, script string, args ...string) scriptRun {
	t.Helper()
	r := runScript(t, script, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\nstderr:\n%s", script, strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// keyValues parses the "key: value" lines a script prints.
func keyValues(t *testing.T, out string) map[string]string {
	t.Helper()
	kv := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("stdout line %q is not key: value", line)
		}
		kv[k] = v
	}
	return kv
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := certs.ParseCertificatePEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

// snapshot reads every file under dir, to prove a re-run changed nothing.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		files[path] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestScriptsPKI(t *testing.T) {
	testutil.Slow(t, "openssl makes keys")
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	ca := keyValues(t, mustRun(t, "gb-ca.sh", "--dir", dir, "--name", "testbroker",
		"--san", "broker.example.org", "--san", "192.0.2.7", "--san=2001:db8::7").stdout)

	caCert := readCert(t, filepath.Join(dir, "ca.crt"))
	if !caCert.IsCA || !caCert.BasicConstraintsValid || caCert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA: IsCA %v, basic constraints %v, key usage %v", caCert.IsCA, caCert.BasicConstraintsValid, caCert.KeyUsage)
	}
	if years := caCert.NotAfter.Sub(caCert.NotBefore).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA valid for %.1f years, want 10", years)
	}
	if got := certs.IdentityOf(caCert).Fingerprint; ca["ca_fingerprint"] != got {
		t.Errorf("printed ca_fingerprint %q, IdentityOf says %q", ca["ca_fingerprint"], got)
	}

	srv, err := certs.NewServerSource(filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key"), filepath.Join(dir, "ca.crt"), nil)
	if err != nil {
		t.Fatalf("loading gb-ca.sh's broker certificate: %v", err)
	}
	broker := readCert(t, filepath.Join(dir, "broker.crt"))
	if id := srv.Identity(); id.Role != certs.RoleBroker || id.Subject != "CN=testbroker,OU=broker" || id.Issuer != "CN=testbroker CA" {
		t.Errorf("broker identity %+v", id)
	}
	if got := certs.IdentityOf(broker).Fingerprint; ca["broker_fingerprint"] != got {
		t.Errorf("printed broker_fingerprint %q, IdentityOf says %q", ca["broker_fingerprint"], got)
	}
	if diff := cmp.Diff([]string{"localhost", "broker.example.org"}, broker.DNSNames); diff != "" {
		t.Errorf("broker DNS names (-want +got):\n%s", diff)
	}
	var ips []string
	for _, ip := range broker.IPAddresses {
		ips = append(ips, ip.String())
	}
	if diff := cmp.Diff([]string{"127.0.0.1", "::1", "192.0.2.7", "2001:db8::7"}, ips); diff != "" {
		t.Errorf("broker IP addresses (-want +got):\n%s", diff)
	}
	if !slices.Equal(broker.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("broker extended key usage %v, want serverAuth", broker.ExtKeyUsage)
	}
	if days := broker.NotAfter.Sub(broker.NotBefore).Hours() / 24; days < 824.9 || days > 825.1 {
		t.Errorf("broker certificate valid %.1f days, want 825", days)
	}

	clients := map[certs.Role]*certs.Source{}
	for _, role := range []certs.Role{certs.RoleServer, certs.RoleOperator, certs.RolePlatform} {
		name := "test-" + string(role) + ".1"
		out := keyValues(t, mustRun(t, "gb-enroll.sh", "--dir", dir, "--role", string(role), "--name", name, "--days", "30").stdout)
		certFile, keyFile := filepath.Join(dir, "clients", name+".crt"), filepath.Join(dir, "clients", name+".key")
		c := readCert(t, certFile)
		id := certs.IdentityOf(c)
		want := map[string]string{
			"serial":      id.Serial,
			"issuer":      id.Issuer,
			"subject":     id.Subject,
			"fingerprint": id.Fingerprint,
			"role":        string(id.Role),
			"not_after":   id.NotAfter.UTC().Format(time.RFC3339),
			"cert_file":   certFile,
			"key_file":    keyFile,
		}
		if diff := cmp.Diff(want, out); diff != "" {
			t.Errorf("%s: printed identity differs from IdentityOf (-IdentityOf +printed):\n%s", name, diff)
		}
		if id.Role != role || id.CommonName != name || id.Subject != "CN="+name+",OU="+string(role) {
			t.Errorf("%s: identity %+v", name, id)
		}
		if bits := c.SerialNumber.BitLen(); bits < 64 || bits > 128 || c.SerialNumber.Sign() <= 0 {
			t.Errorf("%s: serial of %d bits (sign %d), want a random positive 128-bit serial", name, bits, c.SerialNumber.Sign())
		}
		if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
			t.Errorf("%s: extended key usage %v, want clientAuth", name, c.ExtKeyUsage)
		}
		if days := c.NotAfter.Sub(c.NotBefore).Hours() / 24; days < 29.9 || days > 30.1 {
			t.Errorf("%s: valid %.1f days, want 30", name, days)
		}
		if err := certs.VerifyClient(srv.CAPool(), c, time.Now()); err != nil {
			t.Errorf("%s: VerifyClient: %v", name, err)
		}
		src, err := certs.NewClientSource(certFile, keyFile, filepath.Join(dir, "ca.crt"), nil)
		if err != nil {
			t.Fatalf("%s: NewClientSource: %v", name, err)
		}
		clients[role] = src
		wantMode(t, keyFile, 0o600)
	}
	wantMode(t, filepath.Join(dir, "ca.key"), 0o600)
	wantMode(t, filepath.Join(dir, "broker.key"), 0o600)

	// Every script-made client connects to the script-made broker, over each
	// name the broker certificate carries, and is recognised by role.
	for role, src := range clients {
		for _, name := range []string{"localhost", "127.0.0.1"} {
			cli, seen := handshake(t, srv.ServerTLSConfig(), src.ClientTLSConfig(name))
			if cli.err != nil || seen.err != nil || seen.idErr != nil {
				t.Fatalf("%s via %s: client %v, server %v, identity %v", role, name, cli.err, seen.err, seen.idErr)
			}
			if seen.id.Role != role {
				t.Errorf("PeerIdentity role %q, want %q", seen.id.Role, role)
			}
		}
	}

	// Re-running changes nothing and says so.
	before := snapshot(t, dir)
	r := mustRun(t, "gb-ca.sh", "--dir", dir, "--name", "testbroker", "--san", "other.example.org")
	if !strings.Contains(r.stderr, "kept existing "+filepath.Join(dir, "ca.key")) || !strings.Contains(r.stderr, "kept existing "+filepath.Join(dir, "broker.crt")) {
		t.Errorf("gb-ca.sh re-run stderr does not say it kept the files:\n%s", r.stderr)
	}
	name := "test-server.1"
	r = mustRun(t, "gb-enroll.sh", "--dir", dir, "--role", "server", "--name", name)
	if !strings.Contains(r.stderr, "kept existing") {
		t.Errorf("gb-enroll.sh re-run stderr does not say it kept the files:\n%s", r.stderr)
	}
	if got := keyValues(t, r.stdout)["fingerprint"]; got != clients[certs.RoleServer].Identity().Fingerprint {
		t.Errorf("re-run printed fingerprint %s, want the kept certificate's %s", got, clients[certs.RoleServer].Identity().Fingerprint)
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Errorf("re-running changed files (-before +after):\n%s", diff)
	}

	// The same name under another role is refused, not silently kept.
	r = runScript(t, "gb-enroll.sh", "--dir", dir, "--role", "operator", "--name", name)
	if r.code == 0 || !strings.Contains(r.stderr, "not role operator") {
		t.Errorf("enrolling %s again as operator: exit %d, stderr %q", name, r.code, r.stderr)
	}
}

func TestScriptsKeys(t *testing.T) {
	testutil.Slow(t, "openssl makes RSA keys")
	t.Parallel()
	prefix := filepath.Join(t.TempDir(), "keys", "demo-token")
	out := keyValues(t, mustRun(t, "gb-keys.sh", "--out", prefix, "--bits", "2048").stdout)

	keyPEM, err := os.ReadFile(prefix + ".key")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s.key is not a PKCS#8 PEM private key", prefix)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, ok := key.(*rsa.PrivateKey)
	if !ok || rsaKey.N.BitLen() != 2048 {
		t.Fatalf("key is %T, want a 2048-bit RSA key", key)
	}
	pubPEM, err := os.ReadFile(prefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	block, _ = pem.Decode(pubPEM)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("%s.pub is not an SPKI PEM public key", prefix)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !rsaKey.PublicKey.Equal(pub) {
		t.Error("public key does not belong to the private key")
	}
	sum := sha256.Sum256(block.Bytes)
	want := map[string]string{
		"private_key": prefix + ".key",
		"public_key":  prefix + ".pub",
		"bits":        "2048",
		"spki_sha256": hex.EncodeToString(sum[:]),
	}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("printed lines (-want +got):\n%s", diff)
	}
	wantMode(t, prefix+".key", 0o600)
	wantMode(t, filepath.Dir(prefix), 0o700)

	// Refuses to overwrite; rewrites a lost public key from the private one.
	if err := os.Remove(prefix + ".pub"); err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, "gb-keys.sh", "--out", prefix, "--bits", "4096")
	if !strings.Contains(r.stderr, "kept existing "+prefix+".key") || !strings.Contains(r.stderr, "wrote "+prefix+".pub") {
		t.Errorf("re-run stderr:\n%s", r.stderr)
	}
	if b, _ := os.ReadFile(prefix + ".key"); !bytes.Equal(b, keyPEM) {
		t.Error("re-run changed the private key")
	}
	if b, _ := os.ReadFile(prefix + ".pub"); !bytes.Equal(b, pubPEM) {
		t.Error("rewritten public key differs")
	}
	// A public key that belongs to another key is an error, not kept quietly.
	other := filepath.Join(filepath.Dir(prefix), "other")
	mustRun(t, "gb-keys.sh", "--out", other, "--bits", "2048")
	replace(t, prefix+".pub", other+".pub")
	if r := runScript(t, "gb-keys.sh", "--out", prefix); r.code == 0 || !strings.Contains(r.stderr, "does not hold the public key") {
		t.Errorf("mismatched pair: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestScriptsDevPKI(t *testing.T) {
	testutil.Slow(t, "openssl makes a whole development PKI")
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dev")
	mustRun(t, "gb-dev-pki.sh", dir)
	files := []string{
		"ca.crt", "ca.key", "broker.crt", "broker.key",
		"clients/grader1.crt", "clients/grader1.key",
		"clients/admin.crt", "clients/admin.key",
		"clients/demo.crt", "clients/demo.key",
		"broker-token.key", "broker-token.pub",
		"demo-token.key", "demo-token.pub",
		"wakeup.key",
	}
	var got []string
	for path := range snapshot(t, dir) {
		rel, _ := filepath.Rel(dir, path)
		got = append(got, rel)
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(files))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("files (-want +got):\n%s", diff)
	}
	for _, f := range files {
		if strings.HasSuffix(f, ".key") {
			wantMode(t, filepath.Join(dir, f), 0o600)
		}
	}
	srv, err := certs.NewServerSource(filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key"), filepath.Join(dir, "ca.crt"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, role := range map[string]certs.Role{"grader1": certs.RoleServer, "admin": certs.RoleOperator, "demo": certs.RolePlatform} {
		c := readCert(t, filepath.Join(dir, "clients", name+".crt"))
		if id := certs.IdentityOf(c); id.Role != role || id.CommonName != name {
			t.Errorf("%s: identity %+v, want role %s", name, id, role)
		}
		if err := certs.VerifyClient(srv.CAPool(), c, time.Now()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	before := snapshot(t, dir)
	mustRun(t, "gb-dev-pki.sh", dir)
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Errorf("re-running gb-dev-pki.sh changed files (-before +after):\n%s", diff)
	}
}

func TestScriptsHelp(t *testing.T) {
	t.Parallel()
	for _, script := range []string{"gb-ca.sh", "gb-enroll.sh", "gb-keys.sh", "gb-dev-pki.sh"} {
		for _, flag := range []string{"--help", "-h"} {
			r := runScript(t, script, flag)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: "+script) || r.stderr != "" {
				t.Errorf("%s %s: exit %d, stdout %.40q, stderr %q", script, flag, r.code, r.stdout, r.stderr)
			}
		}
	}
}

func TestScriptsBadArguments(t *testing.T) {
	t.Parallel()
	// A CA to enroll against, so the enroll cases fail on their argument
	// and not on a missing CA.
	dir := t.TempDir()
	mustRun(t, "gb-ca.sh", "--dir", dir)
	empty := t.TempDir()

	tests := []struct {
		script string
		args   []string
		msg    string
	}{
		{"gb-ca.sh", nil, "--dir is required"},
		{"gb-ca.sh", []string{"--dir"}, "--dir needs a value"},
		{"gb-ca.sh", []string{"--dir", "--name", "x"}, "--dir needs a value"},
		{"gb-ca.sh", []string{"--dir=", "x"}, "--dir needs a non-empty value"},
		{"gb-ca.sh", []string{"--bogus"}, "unknown option: --bogus"},
		{"gb-ca.sh", []string{"--dir", dir, "extra"}, "unexpected argument: extra"},
		{"gb-ca.sh", []string{"--dir", dir, "--name", "bad name"}, "bad --name 'bad name'"},
		{"gb-ca.sh", []string{"--dir", dir, "--name", "-x"}, "bad --name '-x'"},
		{"gb-ca.sh", []string{"--dir", dir, "--san", "not_a host!"}, "bad --san 'not_a host!'"},
		{"gb-ca.sh", []string{"--dir", dir, "--san", "300.1.1.1"}, "bad --san '300.1.1.1'"},
		{"gb-enroll.sh", []string{"--dir", dir, "--name", "x"}, "--role is required"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "admin", "--name", "x"}, "bad --role 'admin': must be server, operator or platform"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "broker", "--name", "x"}, "bad --role 'broker'"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "server", "--name", "../evil"}, "bad --name '../evil'"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "server", "--name", strings.Repeat("a", 64)}, "bad --name"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "server", "--name", "x", "--days", "0"}, "bad --days '0'"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "server", "--name", "x", "--days", "ten"}, "bad --days 'ten'"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "server", "--name"}, "--name needs a value"},
		{"gb-enroll.sh", []string{"--role", "server", "--name", "x"}, "--dir is required"},
		{"gb-enroll.sh", []string{"--dir", empty, "--role", "server", "--name", "x"}, "run gb-ca.sh --dir " + empty + " first"},
		{"gb-enroll.sh", []string{"--dir", dir, "--role", "server", "--name", "x", "--color"}, "unknown option: --color"},
		{"gb-keys.sh", nil, "--out is required"},
		{"gb-keys.sh", []string{"--out", dir + "/k", "--bits", "1024"}, "bad --bits '1024'"},
		{"gb-keys.sh", []string{"--out", dir + "/"}, "not a directory"},
		{"gb-keys.sh", []string{"--out", dir + "/k", "--force"}, "unknown option: --force"},
		{"gb-dev-pki.sh", nil, "DIR is required"},
		{"gb-dev-pki.sh", []string{"a", "b"}, "unexpected argument: b"},
		{"gb-dev-pki.sh", []string{"--dir", "a"}, "unknown option: --dir"},
	}
	for _, tt := range tests {
		t.Run(tt.script+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runScript(t, tt.script, tt.args...)
			if r.code == 0 {
				t.Fatalf("exit 0, want failure; stdout %q", r.stdout)
			}
			if !strings.Contains(r.stderr, tt.msg) {
				t.Errorf("stderr %q, want it to contain %q", r.stderr, tt.msg)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing on failure", r.stdout)
			}
		})
	}
	// Nothing was written for the refused enrolments.
	if _, err := os.Stat(filepath.Join(dir, "clients")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused enrolments left %s/clients behind (stat: %v)", dir, err)
	}
}

// TestScriptsFailedOpensslLeavesNothing runs the scripts with an openssl
// that always fails: they must exit non-zero and leave no half-written or
// temporary file behind.
func TestScriptsFailedOpensslLeavesNothing(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	fake := "#!/bin/sh\necho 'fake openssl: refusing' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "openssl"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		script string
		args   func(dir string) []string
	}{
		{"gb-keys.sh", func(dir string) []string { return []string{"--out", filepath.Join(dir, "k")} }},
		{"gb-ca.sh", func(dir string) []string { return []string{"--dir", dir} }},
	} {
		dir := t.TempDir()
		path, err := filepath.Abs(filepath.Join("..", "scripts", c.script))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", append([]string{path}, c.args(dir)...)...)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("%s with a failing openssl succeeded:\n%s", c.script, out)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			t.Errorf("%s left %s behind after openssl failed", c.script, e.Name())
		}
	}
}
