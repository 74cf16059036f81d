package graderd

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The escape tests: one per way out of a run that the sandbox closes, each
// a real graderd process laid out as a deployment lays it out (config and
// keys in a directory under /etc, spool under /var/lib, a co-located
// broker's keys and database beside them), taking jobs from the fake
// broker. The graders are shell or Python one-liners that try to escape
// and print what they managed as their JSON result.
//
// GB_TEST_SANDBOX=none runs the same tests with sandbox: none on the
// executor, to see them fail without the sandbox.

// deployment is one graderd's files.
type deployment struct {
	etc, brokerEtc string // /etc/gbtest-*: graderd's config and keys; the broker's
	varLib         string // /var/lib/gbtest-*: spool, the broker's database, task data
	run            string // /run/gbtest-*: the sandbox's state
	config         string
	dbFile         string
	tokenKey       string
	fb             *fakeBroker
	logs           *testutil.SyncBuffer
	cmd            *exec.Cmd
	exited         chan struct{} // closed when cmd has exited
}

func uniqueName(t *testing.T) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "gbtest-" + hex.EncodeToString(b[:])
}

// deploy lays out a graderd whose default executor runs script with
// /bin/sh -c, with extra YAML for the config's top level and executor, and
// starts it.
func deploy(t *testing.T, script, topYAML, execYAML string) *deployment {
	t.Helper()
	d := layout(t)
	d.configure(t, script, topYAML, execYAML)
	d.start(t)
	return d
}

// layout makes a deployment's directories, keys and fake broker; configure
// and start come next (tests that need the paths in the script call them).
func layout(t *testing.T) *deployment {
	t.Helper()
	return layoutFor(t, "grader1")
}

// layoutFor is layout with graderd's certificate for server name.
func layoutFor(t *testing.T, server string) *deployment {
	t.Helper()
	name := uniqueName(t)
	d := &deployment{
		etc: "/etc/" + name, brokerEtc: "/etc/" + name + "-broker",
		varLib: "/var/lib/" + name, run: "/run/" + name,
	}
	for _, dir := range []string{d.etc, d.brokerEtc, d.varLib, d.run} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatalf("laying out graderd as deployed needs root: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	d.fb = startFakeBroker(t, pkiIn(t, newServerPKI(t, server), d.etc))
	d.dbFile = filepath.Join(d.varLib, "gradebroker.db")
	d.tokenKey = filepath.Join(d.brokerEtc, "broker-token.key")
	for _, f := range []string{d.dbFile, d.tokenKey} {
		if err := os.WriteFile(f, []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.config = filepath.Join(d.etc, "graderd.yaml")
	return d
}

// configure writes the deployment's graderd.yaml.
func (d *deployment) configure(t *testing.T, script, topYAML, execYAML string) {
	t.Helper()
	sandbox := ""
	if os.Getenv("GB_TEST_SANDBOX") == "none" {
		sandbox = "  sandbox: none\n"
	}
	d.writeConfig(t, fmt.Sprintf("slots: 4\ndrain_timeout: 1s\n"+
		"sandbox:\n  state_dir: %s\nlimits:\n  kill_grace: 200ms\n%s"+
		"default_executor:\n  type: exec\n  command: [/bin/sh, -c, %s]\n%s%s",
		d.run, topYAML, strconvQuote(script), sandbox, execYAML))
}

// writeConfig writes graderd's configuration: the broker, the deployment's
// PKI and spool, then rest.
func (d *deployment) writeConfig(t *testing.T, rest string) {
	t.Helper()
	pki := d.fb.pki
	cfg := fmt.Sprintf("broker: %s\nca_file: %s\ncert_file: %s\nkey_file: %s\nspool_dir: %s\n%s",
		d.fb.addr, pki.CAFile, pki.CertFile, pki.KeyFile, filepath.Join(d.varLib, "spool"), rest)
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// mountTmpfs mounts a small tmpfs at dir (made if missing) until the test
// ends.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=1777"); err != nil {
		t.Fatalf("mounting a tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
}

// strconvQuote quotes s for YAML (a JSON string is a YAML string).
func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// start runs graderd with variables a grader must not see.
func (d *deployment) start(t *testing.T) {
	t.Helper()
	d.logs = &testutil.SyncBuffer{}
	d.cmd = exec.Command(graderdBinary(t), "--config", d.config)
	d.cmd.Env = append(cleanEnv(), "GB_ADMIN_KEY=/etc/gradebroker/admin.key", "GRADERD_LOG_LEVEL=debug", "GB_SECRET_TEST=leaked")
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	d.exited = exited
	cmd := d.cmd
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("graderd's log:\n%s", d.logs.String())
		}
	})
}

// job runs one job and returns its Result.
func (d *deployment) job(t *testing.T, bs *brokerStream, a *gradebrokerv1.Assign) *gradebrokerv1.Result {
	t.Helper()
	if a.Jobdata == nil {
		a.Jobdata = []byte(`{}`)
	}
	bs.assign(a)
	res := bs.expect(t, time.Minute, "Result", func(m *gradebrokerv1.ConnectRequest) bool {
		return m.GetResult() != nil && m.GetResult().GetLeaseId() == a.LeaseId
	}).GetResult()
	bs.ack(ref(a.JobId, a.LeaseId))
	return res
}

// resultOf decodes a grader's JSON result.
func resultOf(t *testing.T, res *gradebrokerv1.Result, v any) {
	t.Helper()
	if res.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v, error %q, log:\n%s", res.GetOutcome(), res.GetError(), res.GetLog())
	}
	if err := json.Unmarshal(res.GetResult(), v); err != nil {
		t.Fatalf("result %q: %v", res.GetResult(), err)
	}
}

// visibleScript prints {"visible": [...]} with the paths of $@ that exist.
const visibleScript = `cat >/dev/null; printf '{"visible":['; sep=; for p in %s; do if [ -e "$p" ]; then printf '%%s"%%s"' "$sep" "$p"; sep=,; fi; done; echo ']}'`

func TestEscapeSecretsInvisible(t *testing.T) {
	t.Parallel()
	// The paths are known only once deployed: the grader reads them from
	// its jobdata instead.
	script := `read -r doc; paths=$(printf '%s' "$doc" | sed 's/.*"paths":"\([^"]*\)".*/\1/'); ` +
		`printf '{"visible":['; sep=; for p in $paths; do if [ -e "$p" ]; then printf '%s"%s"' "$sep" "$p"; sep=,; fi; done; echo ']}'`
	d := deploy(t, script, "", "")
	bs := d.fb.nextStream(t)
	paths := []string{d.config, d.fb.pki.KeyFile, d.fb.pki.CertFile, d.fb.pki.CAFile, d.etc,
		filepath.Join(d.varLib, "spool"), d.dbFile, d.tokenKey, d.run}
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Jobdata: []byte(`{"paths":"` + strings.Join(paths, " ") + `"}`)})
	var got struct{ Visible []string }
	resultOf(t, res, &got)
	if len(got.Visible) > 0 {
		t.Errorf("the run saw graderd's or the broker's files: %v", got.Visible)
	}
}

func TestEscapeSiblingRunInvisible(t *testing.T) {
	t.Parallel()
	// Job 1 leaves a marker in its working directory and waits; job 2
	// looks for it where a sibling's directory could be.
	script := `read -r doc; case "$doc" in *'"role":"a"'*) echo a > marker-of-a; exec sleep 1000;; esac; ` +
		`i=0; while [ $i -lt 40 ]; do for f in "$(dirname "$PWD")"/*/marker-of-a /tmp/*/marker-of-a /*/marker-of-a; do ` +
		`if [ -e "$f" ]; then echo "{\"found\":\"$f\"}"; exit 0; fi; done; i=$((i+1)); sleep 0.05; done; echo '{"found":""}'`
	d := deploy(t, script, "", "")
	bs := d.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Jobdata: []byte(`{"role":"a"}`), Timeout: durationpb.New(time.Minute)})
	bs.expect(t, 10*time.Second, "a heartbeat naming job 1", func(m *gradebrokerv1.ConnectRequest) bool {
		return len(m.GetHeartbeat().GetRunning()) == 1
	})
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 2, LeaseId: 2, Jobdata: []byte(`{"role":"b"}`)})
	var got struct{ Found string }
	resultOf(t, res, &got)
	if got.Found != "" {
		t.Errorf("job 2 found job 1's file at %s", got.Found)
	}
	bs.send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Cancel{Cancel: &gradebrokerv1.Cancel{Lease: ref(1, 1)}}})
	bs.result(t)
	bs.ack(ref(1, 1))
}

func TestEscapeNoWritesOutsideWorkAndTmp(t *testing.T) {
	t.Parallel()
	d := layout(t)
	script := `cat >/dev/null; printf '{"written":['; sep=; for p in /escape-$$ /usr/escape-$$ /etc/escape-$$ ` + d.etc + `/escape-$$ ` +
		d.varLib + `/escape-$$ /var/tmp/escape-$$ /run/escape-$$ "$(dirname "$PWD")/escape-$$"; do ` +
		`if (echo x > "$p") 2>/dev/null; then printf '%s"%s"' "$sep" "$p"; sep=,; rm -f "$p"; fi; done; ` +
		`echo x > ./ok && echo x > /tmp/ok && echo '],"work_and_tmp":true}'`
	d.configure(t, script, "", "")
	d.start(t)
	bs := d.fb.nextStream(t)
	var got struct {
		Written    []string
		WorkAndTmp bool `json:"work_and_tmp"`
	}
	resultOf(t, d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1}), &got)
	if len(got.Written) > 0 || !got.WorkAndTmp {
		t.Errorf("the run wrote %v, and in its work dir and /tmp: %v; want nothing outside them", got.Written, got.WorkAndTmp)
	}
}

func TestEscapeNoWritesBelowReadOnlyPaths(t *testing.T) {
	t.Parallel()
	// A file system mounted below a read-only path (a tmpfs here, an NFS
	// share on a real server) must be read-only in the run too: writable,
	// it would be shared by every run and outlive each.
	d := layout(t)
	shared := filepath.Join(d.varLib, "shared")
	sub := filepath.Join(shared, "sub")
	mountTmpfs(t, sub)
	script := `cat >/dev/null; printf '{"written":['; sep=; for p in ` + shared + `/escape-$$ ` + sub + `/escape-$$; do ` +
		`if (echo x > "$p") 2>/dev/null; then printf '%s"%s"' "$sep" "$p"; sep=,; fi; done; echo ']}'`
	d.configure(t, script, "", "  read_only_paths: ["+shared+"]\n")
	d.start(t)
	bs := d.fb.nextStream(t)
	var got struct{ Written []string }
	resultOf(t, d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1}), &got)
	if len(got.Written) > 0 {
		t.Errorf("the run wrote %v, below its read-only path %s", got.Written, shared)
	}
}

func TestEscapeCleanEnvironment(t *testing.T) {
	t.Parallel()
	d := deploy(t, `cat >/dev/null; env | sort | python3 -c 'import json,sys; print(json.dumps({"env": sys.stdin.read().split()}))'`, "", "  env: [LANG=C, EXTRA=1]\n")
	bs := d.fb.nextStream(t)
	var got struct{ Env []string }
	resultOf(t, d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1}), &got)
	// PWD is the shell's own.
	want := []string{"EXTRA=1", "HOME=/job", "LANG=C", "PATH=/usr/local/bin:/usr/bin:/bin", "PWD=/job", "TMPDIR=/tmp"}
	if strings.Join(got.Env, " ") != strings.Join(want, " ") {
		t.Errorf("the run's environment is %v, want %v", got.Env, want)
	}
}

func TestEscapeNoNetwork(t *testing.T) {
	t.Parallel()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	script := fmt.Sprintf(`cat >/dev/null; exec python3 -c '
import json, socket
r = {}
try:
    socket.create_connection(("127.0.0.1", %d), timeout=5).close(); r["tcp"] = "connected"
except OSError as e:
    r["tcp"] = str(e)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"escaped", ("127.0.0.1", %d))
print(json.dumps(r))'`, tcp.Addr().(*net.TCPAddr).Port, udp.LocalAddr().(*net.UDPAddr).Port)
	d := deploy(t, script, "", "")
	bs := d.fb.nextStream(t)
	var got struct{ TCP string }
	resultOf(t, d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1}), &got)
	if got.TCP == "connected" {
		t.Error("the run connected to a TCP listener on the host's 127.0.0.1")
	}
	// A datagram on loopback is queued at once by sendto: if it had
	// reached the listener, it would be there now.
	_ = udp.SetReadDeadline(time.Now())
	buf := make([]byte, 64)
	if n, _, err := udp.ReadFrom(buf); err == nil {
		t.Errorf("the run's UDP datagram %q reached a listener on the host", buf[:n])
	}
}

func TestEscapeForkBombStopsAtPidsLimit(t *testing.T) {
	t.Parallel()
	d := deploy(t, `cat >/dev/null; i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done; wait`, "", "  pids: 100\n")
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1})
	if res.GetLimit() != gradebrokerv1.Limit_LIMIT_PIDS || !strings.Contains(res.GetError(), "process limit") {
		t.Errorf("result %v limit %v error %q, want the process limit named", res.GetOutcome(), res.GetLimit(), res.GetError())
	}
}

func TestEscapeMemoryAsAWhole(t *testing.T) {
	t.Parallel()
	// Three processes of 700 MiB each under 1 GiB: each alone fits.
	grab := `python3 -c "b = bytearray(700 << 20); import time; time.sleep(1000)"`
	d := deploy(t, `cat >/dev/null; `+grab+` & `+grab+` & `+grab+` & wait`, "", "  memory_limit: 1GiB\n")
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1})
	if res.GetLimit() != gradebrokerv1.Limit_LIMIT_MEMORY || !strings.Contains(res.GetError(), "memory limit") {
		t.Errorf("result %v limit %v error %q, want the memory limit named", res.GetOutcome(), res.GetLimit(), res.GetError())
	}
	if peak := res.GetUsage().GetPeakMemoryBytes(); peak < 1<<30-64<<20 || peak > 1<<30 {
		t.Errorf("peak memory %d, want about the 1 GiB limit", peak)
	}
}

// With no memory_limit configured a sandboxed run still has one
// (executor.DefaultMemory, 1 GiB): unbounded, one run could push the machine
// out of memory, and it can lower its OOM score to its neighbours' level.
func TestEscapeMemoryBoundedByDefault(t *testing.T) {
	t.Parallel()
	grab := `python3 -c "b = bytearray(1536 << 20); import time; time.sleep(1000)"`
	d := deploy(t, `cat >/dev/null; `+grab, "", "")
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Jobdata: []byte(`{}`), Timeout: durationpb.New(time.Minute)})
	if res.GetLimit() != gradebrokerv1.Limit_LIMIT_MEMORY || !strings.Contains(res.GetError(), "memory limit") {
		t.Errorf("result %v limit %v error %q, want the default memory limit named", res.GetOutcome(), res.GetLimit(), res.GetError())
	}
	if peak := res.GetUsage().GetPeakMemoryBytes(); peak > executor.DefaultMemory {
		t.Errorf("peak memory %d, want at most the default limit %d", peak, executor.DefaultMemory)
	}
}

func TestEscapeCPUTimeLimit(t *testing.T) {
	t.Parallel()
	d := deploy(t, `cat >/dev/null; while :; do :; done`, "", "  cpu_time: 500ms\n")
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1})
	if res.GetLimit() != gradebrokerv1.Limit_LIMIT_CPU_TIME || !strings.Contains(res.GetError(), "CPU time limit") {
		t.Errorf("result %v limit %v error %q, want the CPU time limit named", res.GetOutcome(), res.GetLimit(), res.GetError())
	}
	if cpu := res.GetUsage().GetCpuTime().AsDuration(); cpu < 500*time.Millisecond || cpu > 2*time.Second {
		t.Errorf("CPU time %v, want a little over the 500ms limit", cpu)
	}
}

func TestEscapeDiskLimit(t *testing.T) {
	t.Parallel()
	d := deploy(t, `cat >/dev/null; head -c 100000000 /dev/zero > /tmp/fill`, "", "  tmp_size: 8MiB\n")
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1})
	if res.GetLimit() != gradebrokerv1.Limit_LIMIT_DISK || !strings.Contains(res.GetError(), "disk limit: the run filled its /tmp") {
		t.Errorf("result %v limit %v error %q, want the disk limit of /tmp named", res.GetOutcome(), res.GetLimit(), res.GetError())
	}
}

// processesWith returns the pids of the host's processes whose command
// line holds marker.
func processesWith(marker string) []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, e := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(marker)) {
			out = append(out, e.Name())
		}
	}
	return out
}

// detachScript starts a setsid'd, double-forked sleep whose command line
// holds a marker, then waits for ever.
func detachScript(marker string) string {
	return `cat >/dev/null; (setsid sh -c 'exec sleep ` + marker + `' </dev/null >/dev/null 2>&1 &); exec sleep 1000`
}

func newMarker() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("4242.%d", uint32(b[0])<<16|uint32(b[1])<<8|uint32(b[2]))
}

func TestEscapeDetachedChildGoneAfterTimeout(t *testing.T) {
	t.Parallel()
	marker := newMarker()
	d := deploy(t, detachScript(marker), "", "")
	bs := d.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Jobdata: []byte(`{}`), Timeout: durationpb.New(time.Minute)})
	testutil.Eventually(t, "the detached child to start", func() bool { return len(processesWith(marker)) > 0 })
	bs.send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Cancel{Cancel: &gradebrokerv1.Cancel{Lease: ref(1, 1)}}})
	bs.result(t)
	bs.ack(ref(1, 1))
	if left := processesWith(marker); len(left) > 0 {
		t.Errorf("processes %v of the cancelled run are still running", left)
	}
	// The same after a timeout.
	marker2 := newMarker()
	d2 := deploy(t, detachScript(marker2), "", "")
	bs2 := d2.fb.nextStream(t)
	res := d2.job(t, bs2, &gradebrokerv1.Assign{JobId: 2, LeaseId: 2, Jobdata: []byte(`{}`), Timeout: durationpb.New(time.Second)})
	if res.GetLimit() != gradebrokerv1.Limit_LIMIT_WALL_TIME {
		t.Errorf("limit %v, want the wall time", res.GetLimit())
	}
	if left := processesWith(marker2); len(left) > 0 {
		t.Errorf("processes %v of the timed-out run are still running", left)
	}
}

func TestEscapeNothingLeftAfterGraderdCrash(t *testing.T) {
	t.Parallel()
	marker := newMarker()
	d := deploy(t, detachScript(marker), "", "")
	bs := d.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Jobdata: []byte(`{}`), Timeout: durationpb.New(time.Minute)})
	testutil.Eventually(t, "the run's processes to start", func() bool { return len(processesWith(marker)) > 0 })
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	if len(processesWith(marker)) == 0 {
		t.Fatal("the run died with graderd: this test no longer tests the restart")
	}
	d.start(t)
	d.fb.nextStream(t)
	if left := processesWith(marker); len(left) > 0 {
		t.Errorf("processes %v of the run a killed graderd left are still running after its restart", left)
	}
}

func TestRestrictPathsInsideAllowedRoots(t *testing.T) {
	t.Parallel()
	d := layout(t)
	allowed := filepath.Join(d.varLib, "tasks")
	task := filepath.Join(allowed, "task1")
	if err := os.MkdirAll(task, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `read -r doc; printf '{"doc":%s,"visible":[' "$doc"; sep=; for p in ` + task + ` ` + d.etc + ` ` + filepath.Join(d.varLib, "spool") +
		`; do if [ -e "$p" ]; then printf '%s"%s"' "$sep" "$p"; sep=,; fi; done; echo ']}'`
	d.configure(t, script, "", "")
	b, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.config, []byte(strings.Replace(string(b), "sandbox:\n", "sandbox:\n  restrict_roots: ["+allowed+"]\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1, RestrictPaths: []string{task, d.etc, d.varLib}})
	var got struct {
		Doc struct {
			RestrictToPaths []string `json:"restrictToPaths"`
		}
		Visible []string
	}
	resultOf(t, res, &got)
	if strings.Join(got.Doc.RestrictToPaths, " ") != strings.Join([]string{task, d.etc, d.varLib}, " ") {
		t.Errorf("restrictToPaths = %v, want the platform's list", got.Doc.RestrictToPaths)
	}
	if strings.Join(got.Visible, " ") != task {
		t.Errorf("visible = %v, want only %s (inside the allowed root)", got.Visible, task)
	}
}

func TestSandboxRefusesToStart(t *testing.T) {
	t.Parallel()
	name := uniqueName(t)
	etc := "/etc/" + name
	if err := os.MkdirAll(etc, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	pki := newTestPKIIn(t, etc)
	base := fmt.Sprintf("broker: 127.0.0.1:1\nca_file: %s\ncert_file: %s\nkey_file: %s\nspool_dir: %s\n",
		pki.CAFile, pki.CertFile, pki.KeyFile, filepath.Join(t.TempDir(), "spool"))
	for _, tc := range []struct{ name, yaml, want string }{
		{"no crun", "sandbox: {runtime: /nonexistent/crun}\ndefault_executor: {type: exec, command: [/bin/true]}\n",
			`sandbox: the OCI runtime "/nonexistent/crun" is not installed (Debian, Ubuntu: apt-get install crun)`},
		{"/etc exposed", "default_executor: {type: exec, command: [/bin/true], read_only_paths: [/etc]}\n",
			"default_executor.read_only_paths: /etc would show graderd's own " + filepath.Join(etc, "graderd.yaml")},
		{"keys exposed to all", "sandbox: {read_only_paths: [" + etc + "]}\ndefault_executor: {type: exec, command: [/bin/true]}\n",
			"sandbox.read_only_paths: " + etc + " would show graderd's own"},
	} {
		path := filepath.Join(etc, "graderd.yaml")
		if err := os.WriteFile(path, []byte(base+tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runBinary(t, "--config", path, "-t")
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", tc.name, r.code, r.stderr, tc.want)
		}
	}
}

func TestSandboxNoneIsShown(t *testing.T) {
	t.Parallel()
	d := deploy(t, `cat >/dev/null; echo '{}'`, "", "")
	hello := d.fb.nextStream(t).hello
	sandbox := "crun"
	if os.Getenv("GB_TEST_SANDBOX") == "none" {
		sandbox = "none"
	}
	if got := hello.GetExecutors(); len(got) != 1 || got[0].GetName() != "default" || got[0].GetType() != "exec" || got[0].GetSandbox() != sandbox {
		t.Errorf("Hello.executors = %v, want default, exec, %s", got, sandbox)
	}
	// With sandbox: none, graderd -t and the log say so.
	b, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	if sandbox != "none" {
		cfg = strings.Replace(cfg, "  command: [/bin/sh, -c,", "  sandbox: none\n  command: [/bin/sh, -c,", 1)
	}
	path := filepath.Join(d.etc, "none.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runBinary(t, "--config", path, "-t")
	if r.code != 0 || !strings.Contains(r.stdout, "executor default: exec, sandbox NONE: graders run with graderd's powers\n") ||
		!strings.Contains(r.stderr, "runs its graders WITHOUT the sandbox") {
		t.Errorf("graderd -t with sandbox: none: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
