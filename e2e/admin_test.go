package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminOverMTLS is the foundation's end-to-end test: certificates from
// the openssl scripts, an operator bootstrapped in the database, the registry
// filled through the admin API over mTLS, and every wrong certificate
// refused with a message that says why.
func TestAdminOverMTLS(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	b := startBroker(t, dir, nil)
	bootstrap(t, dir, b.db)

	b.mustAdmin(t, "tag", "add", "python3", "--description", "Python 3 graders")
	b.mustAdmin(t, "type", "add", "py", "--tags", "python3")
	b.mustAdmin(t, "server", "add", "grader1", "--cert", filepath.Join(dir, "clients", "grader1.crt"), "--type", "py", "--max-jobs", "4")
	b.mustAdmin(t, "platform", "add", "demo", "--key", filepath.Join(dir, "demo-token.pub"), "--return-url", "http://127.0.0.1:9/cb")

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tag", "list"}, "python3"},
		{[]string{"type", "list"}, "py"},
		{[]string{"server", "list"}, "grader1"},
		{[]string{"platform", "list"}, "demo"},
		{[]string{"operator", "list"}, "admin"},
	} {
		if out := b.mustAdmin(t, c.args...); !strings.Contains(out, c.want) {
			t.Errorf("broker admin %v printed %q; want it to list %q", c.args, out, c.want)
		}
	}

	// Bad input: a clear error, a non-zero exit, nothing written.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "add", "grader1", "--cert", filepath.Join(dir, "clients", "grader1.crt"), "--type", "py"}, "already"},
		{[]string{"type", "add", "gpu", "--tags", "cuda"}, "cuda"},
		{[]string{"tag", "remove", "python3"}, "server type py"},
		{[]string{"server", "add", "x", "--cert", filepath.Join(dir, "clients", "admin.crt"), "--type", "py"}, "operator"},
	} {
		code, out, errs := b.admin(t, "admin", c.args...)
		if code == 0 || !strings.Contains(out+errs, c.want) {
			t.Errorf("broker admin %v: exit %d, output %q; want a failure mentioning %q", c.args, code, out+errs, c.want)
		}
	}
	if out := b.mustAdmin(t, "type", "list"); strings.Contains(out, "gpu") {
		t.Errorf("a refused type was stored: %s", out)
	}

	// A grading server's certificate may not administer.
	code, out, errs := b.admin(t, "grader1", "tag", "list")
	if code == 0 || !strings.Contains(strings.ToLower(out+errs), "permission denied") {
		t.Errorf("server certificate calling the admin API: exit %d, %q; want permission denied", code, out+errs)
	}
	// An operator certificate from the right CA that nobody registered.
	script(t, "gb-enroll.sh", "--dir", dir, "--role", "operator", "--name", "mallory")
	code, out, errs = b.admin(t, "mallory", "tag", "list")
	if code == 0 || !strings.Contains(strings.ToLower(out+errs), "not registered") {
		t.Errorf("unregistered operator: exit %d, %q; want 'not registered'", code, out+errs)
	}
	// An operator certificate from another CA does not get past TLS.
	foreign := t.TempDir()
	script(t, "gb-ca.sh", "--dir", foreign)
	script(t, "gb-enroll.sh", "--dir", foreign, "--role", "operator", "--name", "eve", "--out", filepath.Join(dir, "clients"))
	code, out, errs = b.admin(t, "eve", "tag", "list")
	if code == 0 {
		t.Errorf("foreign-CA operator was let in: %q", out+errs)
	}
}
