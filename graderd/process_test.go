package graderd

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/kubetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// These tests run the real binary, built once per test run.

var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.StopShared()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

func graderdBinary(t *testing.T) string {
	t.Helper()
	testutil.Slow(t, "builds and runs the graderd binary")
	binary.once.Do(func() {
		binary.dir, binary.err = os.MkdirTemp("", "graderd-bin-")
		if binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "graderd")
		out, err := exec.Command("go", "build", "-o", binary.path, "./cmd/graderd").CombinedOutput()
		if err != nil {
			binary.err = errors.New("go build ./cmd/graderd: " + err.Error() + "\n" + string(out))
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

type procResult struct {
	code           int
	stdout, stderr string
}

// runBinary runs graderd with args and a clean GRADERD_* environment.
func runBinary(t *testing.T, args ...string) procResult {
	t.Helper()
	cmd := exec.Command(graderdBinary(t), args...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("graderd %v did not exit within 30s; stderr:\n%s", args, stderr.String())
	}
	return procResult{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
}

func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, EnvPrefix) {
			env = append(env, e)
		}
	}
	return env
}

func TestBinaryHelp(t *testing.T) {
	t.Parallel()
	r := runBinary(t, "--help")
	if r.code != 0 {
		t.Fatalf("graderd --help exited %d; stderr:\n%s", r.code, r.stderr)
	}
	fs, _ := newFlagSet(newCommandLine())
	fs.VisitAll(func(f *flag.Flag) {
		if !regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(f.Name) + `\b`).MatchString(r.stdout) {
			t.Errorf("--help does not mention -%s", f.Name)
		}
	})
	for _, s := range []string{"default_executor:", "executors:", "GRADERD_", "--testbehavior N", "6  report every job OK with its own jobdata"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("--help does not mention %q", s)
		}
	}
}

func TestBinaryBadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"invalid value", "broker: b:1\nca_file: a\ncert_file: b\nkey_file: c\nslots: -1\n", "slots: must be between 1"},
		{"missing broker", "slots: 2\n", "broker: missing"},
		{"unknown key", "brokr: b:1\n", "field brokr not found"},
		{"not yaml", "broker: [\n", "yaml"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runBinary(t, "--config", path)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want a failure saying %q", tc.name, r.code, r.stderr, tc.want)
		}
	}
	if r := runBinary(t, "--config", filepath.Join(dir, "missing.yaml")); r.code == 0 || !strings.Contains(r.stderr, "missing.yaml") {
		t.Errorf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// brokerArgs are the flags that point graderd at fb.
func brokerArgs(t *testing.T, fb *fakeBroker) []string {
	return []string{"--broker", fb.addr, "--ca", fb.pki.CAFile, "--cert", fb.pki.CertFile, "--key", fb.pki.KeyFile,
		"--spool-dir", filepath.Join(t.TempDir(), "spool"), "--noop"}
}

func TestBinaryConnectionTest(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	r := runBinary(t, append(brokerArgs(t, fb), "-t")...)
	want := "ok: connected to " + fb.addr + " as server grader1 (type python, tags python3, course-6.00x)\n" +
		"executor default: noop, sandbox not applicable\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("graderd -t: exit %d, stdout %q, want 0 and %q; stderr:\n%s", r.code, r.stdout, want, r.stderr)
	}
}

func TestBinaryConnectionTestRefused(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	fb.setRefuse(status.Error(codes.PermissionDenied, "certificate CN=grader1,OU=server is not registered; run gbadmin server add"))
	r := runBinary(t, append(brokerArgs(t, fb), "-t")...)
	want := "broker refused this server's certificate: certificate CN=grader1,OU=server is not registered; run gbadmin server add"
	if r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("graderd -t: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}
}

// TestBinarySignals runs graderd in the foreground: the first SIGTERM
// drains (Slots 0), the second ends it at once with the cancelled job's
// result left in the spool.
func TestBinarySignals(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")
	cfgPath := filepath.Join(dir, "graderd.yaml")
	cfg := "broker: " + fb.addr + "\nca_file: " + fb.pki.CAFile + "\ncert_file: " + fb.pki.CertFile + "\nkey_file: " + fb.pki.KeyFile +
		"\nspool_dir: " + spoolDir + "\ndefault_executor: {type: exec, command: [sh, -c, 'sleep 30']}\nlimits: {kill_grace: 100ms}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(graderdBinary(t), "--config", cfgPath, "--log-format", "json")
	cmd.Env = cleanEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})

	bs := fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 77, Jobdata: []byte(`{}`)})
	bs.expect(t, 5*time.Second, "a heartbeat naming the job", func(m *gradebrokerv1.ConnectRequest) bool {
		return len(m.GetHeartbeat().GetRunning()) == 1
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	bs.expect(t, 5*time.Second, "Slots{0}", func(m *gradebrokerv1.ConnectRequest) bool { return m.GetSlots() != nil })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		done <- nil
	case <-time.After(10 * time.Second):
		t.Fatalf("graderd did not exit within 10s of the second SIGTERM; stderr:\n%s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit code after two signals = %d, want 1", code)
	}
	if _, err := os.Stat(filepath.Join(spoolDir, "77.result")); err != nil {
		t.Errorf("the cancelled job's result is not in the spool: %v", err)
	}
	if !strings.Contains(stderr.String(), `"msg":"second signal: stopping at once; unacknowledged results stay in the spool"`) {
		t.Errorf("stderr does not log the second signal as JSON:\n%s", stderr.String())
	}
}

// TestBinaryDaemon checks that --daemon detaches, writes the pid file and
// logs to --log-file, and that the detached graderd drains on SIGTERM and
// removes its pid file.
func TestBinaryDaemon(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "graderd.pid")
	logFile := filepath.Join(dir, "graderd.log")
	r := runBinary(t, append(brokerArgs(t, fb), "--daemon", "--pid-file", pidFile, "--log-file", logFile)...)
	if r.code != 0 {
		t.Fatalf("graderd --daemon exited %d; stderr:\n%s", r.code, r.stderr)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("no pid file after the parent exited: %v", err)
	}
	fi, err := os.Stat(pidFile)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("pid file mode = %v (%v), want 0644", fi.Mode().Perm(), err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file holds %q", b)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })

	bs := fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 5})
	if res := bs.result(t); res.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Errorf("result = %v, want OK", res)
	}
	bs.ack(ref(1, 5))

	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the daemon to remove its pid file", func() bool {
		_, err := os.Stat(pidFile)
		return errors.Is(err, os.ErrNotExist)
	})
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"connected to broker", "broker acknowledged the result", "draining", "graderd stopped"} {
		if !strings.Contains(string(logs), s) {
			t.Errorf("log file lacks %q:\n%s", s, logs)
		}
	}
}
