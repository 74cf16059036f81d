package admincli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
	"github.com/gradebroker/gradebroker/broker/admincli"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// result is what one run of the command printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// run runs `broker admin args...` in-process, as the operator of env.
func run(t *testing.T, env *adminapitest.Env, args ...string) result {
	t.Helper()
	conn := []string{"--addr", env.Addr, "--ca", env.CA.CertFile,
		"--client-cert", env.Operator.CertFile, "--client-key", env.Operator.KeyFile}
	return runRaw(t, append(conn, args...)...)
}

// runRaw runs `broker admin args...` with exactly args.
func runRaw(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := admincli.Main(context.Background(), args, &out, &errOut)
	return result{out.String(), errOut.String(), code}
}

// want fails the test unless r exited with code and its stdout and stderr
// contain the given parts.
func (r result) want(t *testing.T, code int, stdoutParts, stderrParts []string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
		return
	}
	for _, p := range stdoutParts {
		if !strings.Contains(r.stdout, p) {
			t.Errorf("stdout lacks %q:\n%s", p, r.stdout)
		}
	}
	for _, p := range stderrParts {
		if !strings.Contains(r.stderr, p) {
			t.Errorf("stderr lacks %q:\n%s", p, r.stderr)
		}
	}
}

func ok(t *testing.T, r result, stdoutParts ...string) {
	t.Helper()
	r.want(t, 0, stdoutParts, nil)
	if r.stderr != "" {
		t.Errorf("stderr is not empty: %s", r.stderr)
	}
}

func TestBootstrap(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "new.db")
	alice := env.CA.Client(t, certs.RoleOperator, "alice")

	r := runRaw(t, "bootstrap", "--db", dbPath, "--name", "alice", "--cert", alice.CertFile, "--ca", env.CA.CertFile)
	ok(t, r, "created database "+dbPath, "registered operator alice", "CN=alice,OU=operator")
	db, err := store.Open(ctx, dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ops, err := db.ListOperators(ctx)
	db.Close()
	if err != nil || len(ops) != 1 || ops[0].Name != "alice" || ops[0].Cert.Fingerprint != certs.IdentityOf(alice.Cert).Fingerprint {
		t.Fatalf("operators after bootstrap = %+v, %v", ops, err)
	}

	bob := env.CA.Client(t, certs.RoleOperator, "bob")
	r = runRaw(t, "bootstrap", "--db", dbPath, "--name", "bob", "--cert", bob.CertFile, "--ca", env.CA.CertFile)
	r.want(t, 1, nil, []string{"already has 1 operator(s) (alice)", "broker admin operator add bob", "--force"})
	r = runRaw(t, "bootstrap", "--db", dbPath, "--name", "bob", "--cert", bob.CertFile, "--ca", env.CA.CertFile, "--force")
	ok(t, r, "registered operator bob")

	server := env.CA.Client(t, certs.RoleServer, "carol")
	r = runRaw(t, "bootstrap", "--db", dbPath, "--name", "carol", "--cert", server.CertFile, "--ca", env.CA.CertFile, "--force")
	r.want(t, 1, nil, []string{"role server", "OU=operator"})
	r = runRaw(t, "bootstrap", "--db", dbPath, "--name", "carol", "--cert", bob.CertFile)
	r.want(t, 2, nil, []string{"--ca is required", "Usage: broker admin bootstrap"})
}

// An operator bootstrapped into the running broker's database can use the
// API at once.
func TestBootstrappedOperatorCanCall(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	dave := env.CA.Client(t, certs.RoleOperator, "dave")
	r := runRaw(t, "tag", "list", "--addr", env.Addr, "--ca", env.CA.CertFile, "--cert", dave.CertFile, "--key", dave.KeyFile)
	r.want(t, 1, nil, []string{"error: unauthenticated: certificate CN=dave", "not registered as an operator"})
	ok(t, runRaw(t, "bootstrap", "--db", env.DBPath, "--name", "dave", "--cert", dave.CertFile, "--ca", env.CA.CertFile, "--force"))
	r = runRaw(t, "tag", "list", "--addr", env.Addr, "--ca", env.CA.CertFile, "--cert", dave.CertFile, "--key", dave.KeyFile)
	ok(t, r, "NAME")
}

func TestTagsTypesServers(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	ok(t, run(t, env, "tag", "add", "python3", "--description", "CPython 3.12"), "added tag python3")
	ok(t, run(t, env, "tag", "add", "numpy"), "added tag numpy")
	r := run(t, env, "tag", "list")
	ok(t, r, "NAME", "DESCRIPTION")
	if !regexpLine(r.stdout, "python3", "CPython", "3.12") || !regexpLine(r.stdout, "numpy", "-") {
		t.Errorf("tag list:\n%s", r.stdout)
	}

	ok(t, run(t, env, "type", "add", "py", "--tags", "python3, numpy"), "added server type py (tags: numpy, python3)")
	ok(t, run(t, env, "type", "update", "py", "--tags", "python3"), "server type py now covers tags: python3")
	r = run(t, env, "type", "list")
	if !regexpLine(r.stdout, "py", "python3") {
		t.Errorf("type list:\n%s", r.stdout)
	}

	g1 := env.CA.Client(t, certs.RoleServer, "g1")
	ok(t, run(t, env, "server", "add", "g1", "--cert", g1.CertFile, "--type", "py", "--max-jobs", "4"),
		"server:", "g1", "max jobs:", "4", certs.IdentityOf(g1.Cert).Fingerprint)
	env.Dispatcher.SetStatus("g1", adminapitest.Status{Connected: true, Slots: 3, Running: 1, LastSeen: time.Now().Add(-5 * time.Second)})
	r = run(t, env, "server", "list")
	ok(t, r, "NAME", "TYPE", "CONNECTED", "SLOTS", "RUNNING", "LAST SEEN")
	if !regexpLine(r.stdout, "g1", "py", "yes", "3", "1", "4", "ago", "-", "-") || strings.Contains(r.stdout, "WARNING") {
		t.Errorf("server list:\n%s", r.stdout)
	}
	// An executor without a sandbox stands out: first, in capitals, and
	// in a warning.
	env.Dispatcher.SetStatus("g1", adminapitest.Status{Connected: true, Version: "1.4.0", Executors: []broker.Executor{
		{Name: "default", Type: "exec", Sandbox: "crun"}, {Name: "gpu", Type: "exec", Sandbox: "none"}}})
	r = run(t, env, "server", "list")
	ok(t, r, "VERSION", "SANDBOX", "WARNING: server g1 runs the graders of executor(s) gpu WITHOUT a sandbox")
	if !regexpLine(r.stdout, "g1", "py", "yes", "1.4.0", "NONE", "(gpu),", "crun") {
		t.Errorf("server list with an executor without a sandbox:\n%s", r.stdout)
	}
	ok(t, run(t, env, "server", "update", "g1", "--max-jobs", "8", "--wakeup-url", "https://g1.lan/wake"), "max jobs:", "8", "https://g1.lan/wake")
	env.Dispatcher.SetStatus("g1", adminapitest.Status{RequeueOnDrop: 1})
	ok(t, run(t, env, "server", "remove", "g1"), "removed server g1 (1 running job(s) requeued)")

	// --json prints the response as protojson.
	r = run(t, env, "tag", "list", "--json")
	var resp gradebrokerv1.ListTagsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil {
		t.Fatalf("tag list --json is not protojson: %v\n%s", err, r.stdout)
	}
	var names []string
	for _, tg := range resp.GetTags() {
		names = append(names, tg.GetName())
	}
	if diff := cmp.Diff([]string{"numpy", "python3"}, names); diff != "" {
		t.Errorf("tag list --json names (-want +got):\n%s", diff)
	}

	ok(t, run(t, env, "type", "remove", "py"), "removed server type py")
	ok(t, run(t, env, "tag", "remove", "numpy"), "removed tag numpy")
}

// regexpLine reports whether some line of out holds every word, in order,
// separated by blanks: a row of a tab-aligned table.
func regexpLine(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		i := 0
		for _, w := range f {
			if i < len(words) && w == words[i] {
				i++
			}
		}
		if i == len(words) && len(f) > 0 && f[0] == words[0] {
			return true
		}
	}
	return false
}

// Connection flags may come before the command, which is how --cert names
// the operator's certificate on a command whose own --cert is the server's.
func TestConnectionFlagsBeforeCommand(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	ok(t, run(t, env, "type", "add", "py"))
	g2 := env.CA.Client(t, certs.RoleServer, "g2")
	r := runRaw(t, "--addr", env.Addr, "--ca", env.CA.CertFile, "--cert", env.Operator.CertFile, "--key", env.Operator.KeyFile,
		"server", "add", "g2", "--cert", g2.CertFile, "--type", "py")
	ok(t, r, "g2")
}

func TestServerErrorsExitOne(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	r := run(t, env, "tag", "remove", "nope")
	r.want(t, 1, nil, []string{`error: not found: tag "nope"`})
	if strings.Contains(r.stderr, "Usage") {
		t.Errorf("a server error printed usage:\n%s", r.stderr)
	}
	g1 := env.CA.Client(t, certs.RoleServer, "g1")
	r = run(t, env, "server", "add", "g1", "--cert", g1.CertFile, "--type", "nope")
	r.want(t, 1, nil, []string{`unknown server type "nope"`, "broker admin type add"})
	r = run(t, env, "server", "add", "g1", "--cert", env.Operator.CertFile, "--type", "py")
	r.want(t, 1, nil, []string{"OU=server"})
	r = run(t, env, "server", "add", "g1", "--cert", filepath.Join(t.TempDir(), "missing.crt"), "--type", "py")
	r.want(t, 1, nil, []string{"--cert", "missing.crt"})

	// A server certificate may not administer the broker.
	r = runRaw(t, "tag", "list", "--addr", env.Addr, "--ca", env.CA.CertFile, "--cert", g1.CertFile, "--key", g1.KeyFile)
	r.want(t, 1, nil, []string{"a server certificate (CN=g1) may not call the admin API"})

	// Nothing listens there: the error says what to check.
	r = runRaw(t, "tag", "list", "--addr", "127.0.0.1:1", "--ca", env.CA.CertFile,
		"--cert", env.Operator.CertFile, "--key", env.Operator.KeyFile, "--timeout", "5s")
	r.want(t, 1, nil, []string{"is the broker running at 127.0.0.1:1"})
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	tests := []struct {
		name   string
		args   []string
		stderr []string
	}{
		{"no command", nil, []string{"Usage: broker admin"}},
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"`, "Commands:"}},
		{"unknown subcommand", []string{"server", "explode"}, []string{`unknown command "server explode"`, "Subcommands:"}},
		{"unknown flag", []string{"tag", "add", "x", "--colour", "red"}, []string{"flag provided but not defined: -colour", "Usage: broker admin tag add NAME"}},
		{"missing name", []string{"tag", "add"}, []string{"missing NAME", "Usage: broker admin tag add"}},
		{"extra argument", []string{"tag", "list", "extra"}, []string{`unexpected argument "extra"`}},
		{"missing required flag", []string{"server", "add", "g1", "--type", "py"}, []string{"--cert is required"}},
		{"bad job id", []string{"job", "show", "abc"}, []string{`job ID "abc" must be a positive number`}},
		{"bad state", []string{"job", "list", "--state", "sleeping"}, []string{`--state "sleeping" is not one of`}},
		{"nothing to update", []string{"server", "update", "g1"}, []string{"nothing to change"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, env, tt.args...)
			if tt.args == nil {
				r = runRaw(t)
			}
			r.want(t, 2, nil, tt.stderr)
			if r.stdout != "" {
				t.Errorf("a usage error printed to stdout: %s", r.stdout)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"help"}, {"server", "-h"}, {"server", "add", "-h"}, {"help", "job", "list"}} {
		r := runRaw(t, args...)
		r.want(t, 0, []string{"Usage: broker admin"}, nil)
	}
	r := runRaw(t, "server", "add", "-h")
	r.want(t, 0, []string{"--max-jobs N", "Examples:", "broker admin server add grader1", "--client-cert FILE"}, nil)
}

func TestEnvironmentDefaults(t *testing.T) {
	env := adminapitest.Start(t)
	t.Setenv("GB_ADMIN_ADDR", env.Addr)
	t.Setenv("GB_ADMIN_CA", env.CA.CertFile)
	t.Setenv("GB_ADMIN_CERT", env.Operator.CertFile)
	t.Setenv("GB_ADMIN_KEY", env.Operator.KeyFile)
	ok(t, runRaw(t, "tag", "add", "from-env"), "added tag from-env")
}

func TestPlatformsOperatorsAndJobs(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "mooc.pub.pem")
	if err := os.WriteFile(keyFile, []byte(adminapitest.PublicKeyPEM(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, run(t, env, "tag", "add", "course-1"))
	ok(t, run(t, env, "platform", "add", "mooc", "--key", keyFile, "--return-url", "https://mooc.example/cb",
		"--restrict-path", "/tasks/a", "--restrict-path", "/tasks/b", "--force-tag", "course-1"),
		"platform:", "mooc", "/tasks/a, /tasks/b", "course-1")
	run(t, env, "platform", "add", "bad", "--key", keyFile, "--return-url", "http://mooc.example/cb").
		want(t, 1, nil, []string{"https://"})
	ok(t, run(t, env, "platform", "update", "mooc", "--force-tag", "", "--no-restrict-paths"), "force tag:")
	// A protocol other than gradebroker's needs neither key nor return URL.
	env.Service.SetProtocols(broker.ProtocolGradebroker, "other")
	ok(t, run(t, env, "platform", "add", "lms", "--protocol", "other"), "protocol:", "other")
	run(t, env, "platform", "add", "lms2").want(t, 2, nil, []string{"--key is required"})
	run(t, env, "platform", "update", "lms", "--protocol", "gradebroker").want(t, 1, nil, []string{"public key"})
	r := run(t, env, "platform", "list")
	if !regexpLine(r.stdout, "mooc", "gradebroker", "https://mooc.example/cb", "-", "-", "-") ||
		!regexpLine(r.stdout, "lms", "other", "-", "-", "-", "-") {
		t.Errorf("platform list:\n%s", r.stdout)
	}
	ok(t, run(t, env, "platform", "update", "mooc", "--protocol", "other"), "protocol:", "other")
	ok(t, run(t, env, "platform", "remove", "lms"))

	bob := env.CA.Client(t, certs.RoleOperator, "bob")
	ok(t, run(t, env, "operator", "add", "bob", "--cert", bob.CertFile), "operator:", "bob", "CN=bob,OU=operator")
	r = run(t, env, "operator", "list")
	if !regexpLine(r.stdout, "alice") || !regexpLine(r.stdout, "bob", "CN=bob,OU=operator") {
		t.Errorf("operator list:\n%s", r.stdout)
	}
	ok(t, run(t, env, "operator", "remove", "bob"), "removed operator bob")

	j1 := env.InsertJob(t, "mooc", "ex1", "course-1")
	j2 := env.InsertJob(t, "mooc", "ex2")
	r = run(t, env, "job", "list", "--state", "queued", "--platform", "mooc")
	ok(t, r, "ID", "STATE")
	if !regexpLine(r.stdout, itoa(j2), "mooc", "ex2", "queued") || !regexpLine(r.stdout, itoa(j1), "mooc", "ex1", "queued") ||
		strings.Index(r.stdout, "ex2") > strings.Index(r.stdout, "ex1") {
		t.Errorf("job list (newest first):\n%s", r.stdout)
	}
	r = run(t, env, "job", "list", "--before", itoa(j2))
	if strings.Contains(r.stdout, "ex2") || !strings.Contains(r.stdout, "ex1") {
		t.Errorf("job list --before %d:\n%s", j2, r.stdout)
	}
	ok(t, run(t, env, "job", "show", itoa(j1)), "job:", "state:", "queued", "course-1", "Events:", "platform:mooc", `{"task":"ex1"}`)
	run(t, env, "job", "show", "999").want(t, 1, nil, []string{"job 999"})
	ok(t, run(t, env, "job", "cancel", itoa(j1)), "job "+itoa(j1)+" is queued")
	ok(t, run(t, env, "job", "requeue", itoa(j2)))
	want := []adminapitest.Call{
		{Method: "CancelJob", JobID: j1, Actor: "operator:alice"},
		{Method: "RequeueJob", JobID: j2, Actor: "operator:alice"},
	}
	if diff := cmp.Diff(want, env.Dispatcher.Calls()); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}
	// The fake dispatcher left both jobs queued.
	run(t, env, "platform", "remove", "mooc").want(t, 1, nil, []string{"2 unfinished job(s)"})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestXQueueCommands(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	env.Service.SetProtocols(broker.ProtocolGradebroker, broker.ProtocolXQueue)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	authFile := filepath.Join(dir, "auth")
	if err := os.WriteFile(pwFile, []byte("watcher password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(authFile, []byte("basic secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, run(t, env, "tag", "add", "py"))
	ok(t, run(t, env, "type", "add", "pytype", "--tags", "py"))
	ok(t, run(t, env, "platform", "add", "openedx", "--protocol", "xqueue"), "protocol:", "xqueue")
	ok(t, run(t, env, "xqueue", "queue", "add", "MITx-6.00x", "--tags", "py", "--type", "pytype", "--job-timeout", "2m"),
		"XQueue queue:", "MITx-6.00x", "2m0s")
	run(t, env, "xqueue", "queue", "add", "q2", "--tags", "py").want(t, 2, nil, []string{"--type is required"})
	ok(t, run(t, env, "xqueue", "user", "add", "lms", "--password-file", pwFile, "--platform", "openedx",
		"--callback-host", "lms.example.org", "--callback-auth-user", "xq", "--callback-auth-password-file", authFile),
		"XQueue user:", "lms", "openedx", "lms.example.org", "xq (password set)")
	ok(t, run(t, env, "xqueue", "user", "add", "watcher", "--password-file", pwFile, "--pull", "MITx-6.00x", "--max-jobs", "4"),
		"pulls:", "MITx-6.00x", "max jobs:", "4")
	run(t, env, "xqueue", "user", "add", "w2").want(t, 2, nil, []string{"--password-file is required"})
	r := run(t, env, "xqueue", "user", "list")
	if !regexpLine(r.stdout, "lms", "openedx", "lms.example.org", "-", "-", "1") || !regexpLine(r.stdout, "watcher", "-", "-", "-", "MITx-6.00x", "4") ||
		strings.Contains(r.stdout, "watcher password") || strings.Contains(r.stdout, "basic secret") {
		t.Errorf("xqueue user list:\n%s", r.stdout)
	}
	stored, err := env.DB.XQueueUserByName(context.Background(), "watcher")
	if err != nil || stored.PasswordHash == "" || strings.Contains(stored.PasswordHash, "watcher password") {
		t.Fatalf("stored watcher: %+v, %v", stored, err)
	}
	queue, err := env.DB.XQueueQueueByName(context.Background(), "MITx-6.00x")
	if err != nil {
		t.Fatal(err)
	}
	srv, _, err := env.DB.Puller(context.Background(), stored, queue)
	if err != nil {
		t.Fatal(err)
	}
	r = run(t, env, "server", "list")
	if !regexpLine(r.stdout, srv.Name, "pytype", "no", "no", "0", "0", "4", "never", "xqueue") {
		t.Errorf("server list:\n%s", r.stdout)
	}
	ok(t, run(t, env, "server", "update", srv.Name, "--max-jobs", "5"), "none: it pulls its jobs (xqueue)", "max jobs:", "5")
	env.Dispatcher.SetQueueLength("MITx-6.00x", 3)
	r = run(t, env, "xqueue", "queue", "list")
	if !regexpLine(r.stdout, "MITx-6.00x", "py", "pytype", "2m0s", "3") {
		t.Errorf("xqueue queue list:\n%s", r.stdout)
	}
	ok(t, run(t, env, "xqueue", "queue", "update", "MITx-6.00x", "--job-timeout", "0"), "timeout:", "default")
	ok(t, run(t, env, "xqueue", "user", "update", "watcher", "--pull", ""), "removed servers "+srv.Name)
	run(t, env, "xqueue", "user", "update", "watcher").want(t, 2, nil, []string{"nothing to change"})
	ok(t, run(t, env, "xqueue", "user", "remove", "watcher"), "removed XQueue user watcher")
	ok(t, run(t, env, "xqueue", "queue", "remove", "MITx-6.00x"), "removed XQueue queue MITx-6.00x")
}
