package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker/token"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/platformclient"
)

// accountingGrader is the sandboxed grader of TestAccounting. A job whose
// data says "memory" takes 256 MiB, past the executor's 128 MiB limit; any
// other burns a little CPU and answers with the job document it read and
// what it found in the task file (a path under the platform's
// restrict_paths), or "missing".
const accountingGrader = `doc=$(cat)
case "$doc" in
*'"mode":"memory"'*)
	exec python3 -c 'b = bytearray(256 << 20); import time; time.sleep(60)';;
esac
i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done
task=$(cat %q 2>/dev/null || echo missing)
printf '{"doc":%%s,"task":"%%s"}\n' "$doc" "$task"
`

// accountingGraderd runs a real graderd process as server name for the
// broker of e, grading with the shell script grader, and waits until it is
// connected.
// extraExec is added to its default executor's YAML, restrictRoot (if set)
// is where platforms' restrict_paths may point.
func accountingGraderd(t *testing.T, e *platformEnv, name, grader, extraExec, restrictRoot string) {
	t.Helper()
	_, bin := binaries(t)
	work := t.TempDir()
	dir := e.b.dir
	crt := filepath.Join(dir, "clients", name+".crt")
	if _, err := os.Stat(crt); err != nil {
		script(t, "gb-enroll.sh", "--dir", dir, "--role", "server", "--name", name)
	}
	e.b.mustAdmin(t, "server", "add", name, "--cert", crt, "--type", "py")
	quoted, _ := json.Marshal(grader)
	cfg := fmt.Sprintf(`broker: %s
ca_file: %s
cert_file: %s
key_file: %s
spool_dir: %s
slots: 2
sandbox:
  state_dir: %s
  restrict_roots: [%s]
limits:
  memory_limit: 128MiB
  kill_grace: 200ms
default_executor:
  type: exec
  command: [/bin/sh, -c, %s]
%s`, e.b.GRPCAddr(), filepath.Join(dir, "ca.crt"), crt, filepath.Join(dir, "clients", name+".key"),
		filepath.Join(work, "spool"), filepath.Join(work, "state"), restrictRoot, quoted, extraExec)
	cfgFile := filepath.Join(work, "graderd.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startProc(t, name, bin, "--config", cfgFile)
	testutil.Eventually(t, name+" connected", func() bool {
		if g.exited() {
			t.Fatalf("%s exited (%v) before it connected:\n%s", name, g.err, g.logs())
		}
		return serverConnected(t, dir, e.b.GRPCAddr(), name)
	})
}

// TestAccounting grades in graderd's sandbox, graderd a real process: what
// each run used reaches getjob, `broker admin job show` and the callback;
// a run the memory limit ended says so in each; the platform's
// restrict_paths reach the grader as restrictToPaths and show it what lies
// inside graderd's allowed root; and `broker admin server list` shows how
// each server's executors isolate their runs, a server without a sandbox
// standing out.
func TestAccounting(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("python3 is required by this test's grader: %v", err)
	}
	e := setupPlatform(t)
	ctx := ctxTimeout(t, 2*time.Minute)

	// The platform's callbacks, read as a Go platform reads them.
	var mu sync.Mutex
	callbacks := map[int64]platformclient.Callback{}
	brokerKey, err := token.ParsePublicKeyPEM(mustRead(t, filepath.Join(e.b.dir, "broker-token.pub")))
	if err != nil {
		t.Fatal(err)
	}
	reader := platformclient.NewCallbackReader("demo", e.demoKey, "", brokerKey)
	rcv := httptest.NewServer(reader.Handler(func(_ context.Context, cb platformclient.Callback) error {
		mu.Lock()
		defer mu.Unlock()
		callbacks[cb.JobID] = cb
		return nil
	}))
	t.Cleanup(rcv.Close)

	// A task directory inside graderd's allowed root, readable by the
	// runs' uids, which the platform restricts its jobs to.
	root := t.TempDir()
	task := filepath.Join(root, "task1")
	if err := os.Mkdir(task, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(task, "input.txt"), []byte("forty-two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	e.b.mustAdmin(t, "platform", "update", "demo", "--return-url", rcv.URL+"/cb", "--restrict-path", task)
	accountingGraderd(t, e, "grader1", fmt.Sprintf(accountingGrader, filepath.Join(task, "input.txt")), "", root)

	c := demoClient(t, e.b.dir, e.b.HTTPAddr())
	ok, err := c.SendJob(ctx, platformclient.Job{Name: "sum", Tags: []string{"python3"}, Data: map[string]any{"mode": "sum"}})
	if err != nil {
		t.Fatal(err)
	}
	oom, err := c.SendJob(ctx, platformclient.Job{Name: "greedy", Tags: []string{"python3"}, Data: map[string]any{"mode": "memory"}})
	if err != nil {
		t.Fatal(err)
	}

	// The graded job: its result shows the grader's job document and the
	// restricted task; its attempt what the run used.
	done := getFinal(ctx, t, c, ok.GetJobId())
	if done.GetState() != gbv1.JobState_JOB_STATE_DONE {
		t.Fatalf("job %d is %s (%s), want done", done.GetId(), done.GetState(), done.GetError())
	}
	var result struct {
		Doc struct {
			RestrictToPaths []string `json:"restrictToPaths"`
		}
		Task string
	}
	if err := json.Unmarshal([]byte(done.GetResult()), &result); err != nil {
		t.Fatalf("result %q: %v", done.GetResult(), err)
	}
	if !cmp.Equal(result.Doc.RestrictToPaths, []string{task}) || result.Task != "forty-two" {
		t.Errorf("the grader read restrictToPaths %q and task %q; want [%s] and forty-two", result.Doc.RestrictToPaths, result.Task, task)
	}
	u := onlyAttempt(t, done).GetUsage()
	if u.GetCpuTime().AsDuration() <= 0 || u.GetPeakMemoryBytes() == 0 || u.GetWallTime().AsDuration() <= 0 {
		t.Errorf("the graded run's usage is %v; want CPU time, peak memory and wall time", u)
	}
	if l := onlyAttempt(t, done).GetLimit(); l != gbv1.Limit_LIMIT_UNSPECIFIED {
		t.Errorf("the graded run ended on the %s limit, want none", l)
	}

	// The greedy job: the memory limit ended its run.
	failed := getFinal(ctx, t, c, oom.GetJobId())
	a := onlyAttempt(t, failed)
	if failed.GetState() != gbv1.JobState_JOB_STATE_FAILED || a.GetLimit() != gbv1.Limit_LIMIT_MEMORY ||
		!strings.Contains(failed.GetError(), "memory limit") {
		t.Errorf("job %d is %s with error %q and limit %s; want failed on the memory limit", failed.GetId(), failed.GetState(), failed.GetError(), a.GetLimit())
	}
	if peak := a.GetUsage().GetPeakMemoryBytes(); peak < 64<<20 || peak > 128<<20 {
		t.Errorf("the greedy run's peak memory is %d; want about the 128 MiB limit", peak)
	}

	// The callbacks say the same, in milliseconds and bytes.
	testutil.Eventually(t, "both callbacks", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(callbacks) == 2
	})
	mu.Lock()
	cbDone, cbFailed := callbacks[done.GetId()], callbacks[failed.GetId()]
	mu.Unlock()
	if want := callbackUsage(u); !cmp.Equal(cbDone.Usage, want) || cbDone.Limit != "" {
		t.Errorf("the graded job's callback has usage %+v and limit %q; want %+v and none", cbDone.Usage, cbDone.Limit, want)
	}
	if want := callbackUsage(a.GetUsage()); !cmp.Equal(cbFailed.Usage, want) || cbFailed.Limit != "memory" || cbFailed.Status != platformclient.StatusFailed {
		t.Errorf("the greedy job's callback: %s, usage %+v, limit %q; want failed, %+v, memory", cbFailed.Status, cbFailed.Usage, cbFailed.Limit, want)
	}

	// Operators see it too.
	show := e.b.mustAdmin(t, "job", "show", jsonIDString(failed.GetId()))
	// The attempt's row: ... fatal CPU PEAK-MiB WALL memory (the limit)
	// memory limit: ... (the reason).
	if !strings.Contains(show, "PEAK MEMORY") || !regexpLineE2E(show, "1", "grader1", "fatal", "MiB", "memory", "memory", "limit:") {
		t.Errorf("job show of the greedy job lacks its run's usage and limit:\n%s", show)
	}
	if list := e.b.mustAdmin(t, "server", "list"); !regexpLineE2E(list, "grader1", "yes", "dev", "crun") || strings.Contains(list, "WARNING") {
		t.Errorf("server list does not show grader1's sandbox:\n%s", list)
	}

	// A graderd whose executor runs without a sandbox stands out.
	accountingGraderd(t, e, "grader2", "cat >/dev/null; echo '{}'", "  sandbox: none\n", root)
	list := e.b.mustAdmin(t, "server", "list")
	if !regexpLineE2E(list, "grader2", "yes", "dev", "NONE", "(default)") ||
		!strings.Contains(list, "WARNING: server grader2 runs the graders of executor(s) default WITHOUT a sandbox") {
		t.Errorf("server list does not show that grader2 runs without a sandbox:\n%s", list)
	}
}

// getFinal waits (getjob's long poll) until job id is final.
func getFinal(ctx context.Context, t *testing.T, c *platformclient.Client, id int64) *gbv1.Job {
	t.Helper()
	for {
		resp, err := c.GetJob(ctx, id, 30*time.Second)
		if err != nil {
			t.Fatalf("getjob %d: %v", id, err)
		}
		if s := resp.GetJob().GetState(); s != gbv1.JobState_JOB_STATE_QUEUED && s != gbv1.JobState_JOB_STATE_ASSIGNED {
			return resp.GetJob()
		}
	}
}

// onlyAttempt is the job's one attempt.
func onlyAttempt(t *testing.T, j *gbv1.Job) *gbv1.Attempt {
	t.Helper()
	if len(j.GetHistory()) != 1 {
		t.Fatalf("job %d has attempts %v; want one", j.GetId(), j.GetHistory())
	}
	return j.GetHistory()[0]
}

// callbackUsage is what a callback says of usage u: whole milliseconds.
func callbackUsage(u *gbv1.Usage) *platformclient.Usage {
	return &platformclient.Usage{CPUTime: u.GetCpuTime().AsDuration().Round(time.Millisecond),
		PeakMemoryBytes: int64(u.GetPeakMemoryBytes()), WallTime: u.GetWallTime().AsDuration().Round(time.Millisecond)}
}

// regexpLineE2E reports whether a line of out holds words in this order,
// each a whole field.
func regexpLineE2E(out string, words ...string) bool {
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		i := 0
		for _, w := range f {
			if i < len(words) && w == words[i] {
				i++
			}
		}
		if i == len(words) {
			return true
		}
	}
	return false
}
