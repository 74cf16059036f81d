package executor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

const (
	outOK      = gradebrokerv1.Outcome_OUTCOME_OK
	outFatal   = gradebrokerv1.Outcome_OUTCOME_FATAL
	outTemp    = gradebrokerv1.Outcome_OUTCOME_TEMPORARY
	outTimeout = gradebrokerv1.Outcome_OUTCOME_TIMEOUT
)

// promptly is the generous bound within which Run must return once it
// should; it guards against hangs, not slowness.
const promptly = 10 * time.Second

// outcome is the part of a Result the table tests compare.
type outcome struct {
	Outcome gradebrokerv1.Outcome
	Result  string
	Error   string
}

func summary(r Result) outcome {
	return outcome{Outcome: r.Outcome, Result: string(r.Result), Error: r.Error}
}

// setup returns an Exec running testdata/grader.sh in mode, with its own
// work root, and a file prefix the grader writes pids to.
func setup(t *testing.T, mode string) (*Exec, string) {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pid")
	return &Exec{
		Command:   []string{"testdata/grader.sh", mode},
		Env:       []string{"PIDFILE=" + pidfile},
		WorkRoot:  t.TempDir(),
		KillGrace: 500 * time.Millisecond,
	}, pidfile
}

// testSandbox is one sandbox for the package's tests, made once: every
// sandboxed run of the tests goes through it.
var testSandbox struct {
	once sync.Once
	dir  string // its state directory, removed by TestMain
	s    *Sandbox
	err  error
}

// sandboxed turns e into a sandboxed executor.
func sandboxed(t *testing.T, e *Exec) *Exec {
	t.Helper()
	testSandbox.once.Do(func() {
		dir, err := os.MkdirTemp("", "gb-sandbox-test-")
		if err != nil {
			testSandbox.err = err
			return
		}
		testSandbox.dir = dir
		testSandbox.s, testSandbox.err = NewSandbox(SandboxConfig{Slots: 64, StateDir: dir})
	})
	if testSandbox.err != nil {
		t.Fatalf("cannot set up the sandbox (the tests run as root with crun installed, as CI does): %v", testSandbox.err)
	}
	e.Sandbox = testSandbox.s
	return e
}

// modes are the two ways Exec runs a grader.
var modes = []string{"none", "sandbox"}

func setupMode(t *testing.T, mode, sandbox string) (*Exec, string) {
	t.Helper()
	e, pidfile := setup(t, mode)
	if sandbox == "sandbox" {
		sandboxed(t, e)
	}
	return e, pidfile
}

// run runs job and checks what every run must leave behind: nothing in the
// work root, and a return within promptly.
func run(t *testing.T, ctx context.Context, e *Exec, job Job) Result {
	t.Helper()
	start := time.Now()
	res := e.Run(ctx, job)
	if d := time.Since(start); d > promptly {
		t.Errorf("Run took %v, want under %v", d, promptly)
	}
	entries, err := os.ReadDir(e.WorkRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("work root holds %d entries after Run (first %q), want none", len(entries), entries[0].Name())
	}
	return res
}

func TestExecOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		mode     string
		tweak    func(*Exec)
		want     outcome
		wantLog  string
		wantLim  Limit
		noSandbx bool
	}{
		{
			name: "fatal with result",
			mode: "fatal",
			want: outcome{Outcome: outFatal, Result: `{"error":"bad task"}`,
				Error: "grader reported a fatal error (exit status 1): the task is broken"},
			wantLog: "the task is broken\n",
		},
		{
			name:    "fatal without result",
			mode:    "fatal-empty",
			want:    outcome{Outcome: outFatal, Error: "grader reported a fatal error (exit status 1): no result for you"},
			wantLog: "no result for you\n",
		},
		{
			name: "exit 2 is temporary",
			mode: "retry",
			want: outcome{Outcome: outTemp, Error: "grader asked for a retry (exit status 2): disk full"},
		},
		{
			name: "exit 7 is temporary",
			mode: "exit7",
			want: outcome{Outcome: outTemp, Error: "grader exited with status 7"},
		},
		{
			name: "killed by a signal",
			mode: "signal",
			want: outcome{Outcome: outTemp, Error: "grader was killed by signal 9 (killed)"},
			// In the sandbox the grader is its pid namespace's first
			// process, which the kernel keeps from killing itself.
			noSandbx: true,
		},
		{
			name: "not JSON",
			mode: "notjson",
			want: outcome{Outcome: outFatal,
				Error: `grader printed something that is not JSON on stdout (exit status 0); it starts with "hello <world> \"x\""`},
		},
		{
			name: "not JSON on exit 1",
			mode: "notjson-fatal",
			want: outcome{Outcome: outFatal,
				Error: `grader printed something that is not JSON on stdout (exit status 1); it starts with "Traceback, not JSON"`},
		},
		{
			name: "empty stdout",
			mode: "empty",
			want: outcome{Outcome: outFatal, Error: "grader exited with status 0 but printed no result on stdout"},
		},
		{
			name:    "stdout over the cap",
			mode:    "flood",
			tweak:   func(e *Exec) { e.Limits.MaxStdout = 1000 },
			want:    outcome{Outcome: outFatal, Error: "output size limit: the result was larger than 1000 bytes"},
			wantLim: LimitOutput,
		},
		{
			name:    "stderr over the cap",
			mode:    "chatty",
			tweak:   func(e *Exec) { e.Limits.MaxStderr = 10 },
			want:    outcome{Outcome: outOK, Result: "{}"},
			wantLog: "Bxxxx\n[... 9992 bytes of stderr cut ...]\nxxxxE",
		},
		{
			name: "missing command",
			tweak: func(e *Exec) {
				e.Command = []string{"testdata/no-such-grader"}
			},
			want: outcome{Outcome: outTemp,
				Error: `cannot find grader command "testdata/no-such-grader": stat testdata/no-such-grader: no such file or directory`},
		},
		{
			name:  "no command",
			tweak: func(e *Exec) { e.Command = nil },
			want:  outcome{Outcome: outTemp, Error: "graderd has no grader command configured"},
		},
	}
	for _, sb := range modes {
		for _, tt := range tests {
			if tt.noSandbx && sb == "sandbox" {
				continue
			}
			t.Run(sb+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				e, _ := setupMode(t, tt.mode, sb)
				if tt.tweak != nil {
					tt.tweak(e)
				}
				res := run(t, t.Context(), e, Job{JobID: 1, LeaseID: 2, JobData: []byte(`{}`), Timeout: time.Minute})
				if diff := cmp.Diff(tt.want, summary(res)); diff != "" {
					t.Errorf("Run (-want +got):\n%s\nlog:\n%s", diff, res.Log)
				}
				if res.Limit != tt.wantLim {
					t.Errorf("Limit = %v, want %v", res.Limit, tt.wantLim)
				}
				if tt.wantLog != "" {
					if diff := cmp.Diff(tt.wantLog, res.Log); diff != "" {
						t.Errorf("Log (-want +got):\n%s", diff)
					}
				}
			})
		}
	}
}

func TestExecStdinContract(t *testing.T) {
	t.Parallel()
	e, _ := setup(t, "echo")
	job := Job{
		JobID:   7,
		LeaseID: 9,
		Attempt: 2,
		Name:    "alice/sum <1>",
		JobData: []byte(`{ "task" : "sum",  "x": [1, 2.50] }`),
		Tags:    []string{"python3", "fast"},
		Timeout: 1500 * time.Millisecond,
	}
	job.RestrictPaths = []string{"/srv/tasks"}
	e.Limits = Limits{CPUTime: 2500 * time.Millisecond, Memory: 64 << 20, Pids: 10}
	res := run(t, t.Context(), e, job)
	want := outcome{
		Outcome: outOK,
		Result: `{"job_id":7,"lease_id":9,"attempt":2,"name":"alice/sum \u003c1\u003e","tags":["python3","fast"],` +
			`"timeout_sec":1.5,"limits":{"cpu_time_sec":2.5,"memory_bytes":67108864,"pids":10,"open_files":0,"tmp_bytes":0,"work_bytes":0,"max_stdout_bytes":4194304},` +
			`"restrictToPaths":["/srv/tasks"],"jobdata":{ "task" : "sum",  "x": [1, 2.50] }}`,
	}
	if diff := cmp.Diff(want, summary(res)); diff != "" {
		t.Errorf("Run (-want +got):\n%s", diff)
	}

	// Without tags, data or timeout the document still has every key.
	e.Limits = Limits{}
	res = run(t, t.Context(), e, Job{JobID: 1, LeaseID: 1, Attempt: 1})
	want.Result = `{"job_id":1,"lease_id":1,"attempt":1,"name":"","tags":[],"timeout_sec":0,` +
		`"limits":{"cpu_time_sec":0,"memory_bytes":0,"pids":0,"open_files":0,"tmp_bytes":0,"work_bytes":0,"max_stdout_bytes":4194304},"restrictToPaths":[],"jobdata":null}`
	if diff := cmp.Diff(want, summary(res)); diff != "" {
		t.Errorf("Run without fields (-want +got):\n%s", diff)
	}
}

func TestExecBadJobData(t *testing.T) {
	t.Parallel()
	e, _ := setup(t, "echo")
	res := run(t, t.Context(), e, Job{JobData: []byte(`{"unterminated`)})
	want := outcome{Outcome: outFatal, Error: "jobdata is not valid JSON"}
	if diff := cmp.Diff(want, summary(res)); diff != "" {
		t.Errorf("Run (-want +got):\n%s", diff)
	}
}

func TestExecWorkDir(t *testing.T) {
	t.Parallel()
	e, _ := setup(t, "workdir")
	job := Job{JobID: 3, LeaseID: 4}
	var seen []string
	for range 2 {
		res := run(t, t.Context(), e, job)
		if res.Outcome != outOK {
			t.Fatalf("Run = %+v, want OK", res)
		}
		var got struct {
			Cwd     string `json:"cwd"`
			Mode    string `json:"mode"`
			Entries int    `json:"entries"`
			TmpDir  string `json:"tmpdir"`
		}
		if err := json.Unmarshal(res.Result, &got); err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(got.Cwd) != e.WorkRoot || !strings.HasPrefix(filepath.Base(got.Cwd), "job3-lease4-") {
			t.Errorf("cwd = %q, want job3-lease4-* under %q", got.Cwd, e.WorkRoot)
		}
		if got.Mode != "700" || got.Entries != 0 || got.TmpDir != got.Cwd {
			t.Errorf("work dir mode %s with %d entries and TMPDIR %q, want 700, empty, TMPDIR = cwd", got.Mode, got.Entries, got.TmpDir)
		}
		seen = append(seen, got.Cwd)
	}
	// run has checked that each directory is gone; a second run of the same
	// lease must not reuse the first one's.
	if seen[0] == seen[1] {
		t.Errorf("two runs of a lease got the same work dir %q", seen[0])
	}
}

func TestExecTimeoutKillsEverything(t *testing.T) {
	t.Parallel()
	e, pidfile := setup(t, "hang")
	res := run(t, t.Context(), e, Job{JobID: 1, LeaseID: 1, Timeout: time.Second})
	want := outcome{Outcome: outTimeout, Error: "wall time limit: the grader ran past its time limit of 1s and was killed"}
	if diff := cmp.Diff(want, summary(res)); diff != "" {
		t.Errorf("Run (-want +got):\n%s", diff)
	}
	for _, who := range []string{"grader", "grandchild"} {
		pid := readPid(t, pidfile+"."+who)
		if alive(pid) {
			t.Errorf("%s (pid %d) is still running after Run returned", who, pid)
		}
	}
}

func TestExecEscapedProcessCannotHoldRun(t *testing.T) {
	t.Parallel()
	e, pidfile := setup(t, "escape")
	res := run(t, t.Context(), e, Job{JobID: 1, LeaseID: 1, Timeout: time.Minute})
	// The escapee left the process group: where graderd cannot make a
	// cgroup nothing can reach it, so the test cleans up after it.
	pid := readPid(t, pidfile+".escapee")
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if diff := cmp.Diff(outcome{Outcome: outOK, Result: `{"ok":true}`}, summary(res)); diff != "" {
		t.Errorf("Run (-want +got):\n%s", diff)
	}
}

func TestExecCancel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		delay time.Duration
	}{
		{"before start", 0},
		{"while running", 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, _ := setup(t, "sleep")
			ctx, cancel := context.WithCancel(t.Context())
			if tt.delay == 0 {
				cancel()
			} else {
				time.AfterFunc(tt.delay, cancel)
			}
			res := run(t, ctx, e, Job{JobID: 1, LeaseID: 1, Timeout: time.Minute})
			if diff := cmp.Diff(outcome{Outcome: outTemp, Error: "cancelled"}, summary(res)); diff != "" {
				t.Errorf("Run (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExecMemoryLimit(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("python3 is needed for this test: %v", err)
	}
	tests := []struct {
		name    string
		command []string
		want    outcome
	}{
		{
			name:    "over the limit",
			command: []string{"python3", "-c", "x = bytearray(500*1024*1024)"},
			want:    outcome{Outcome: outFatal, Error: "memory limit: the run used more than its 100 MiB of memory (tmpfs files included) and was killed"},
		},
		{
			name:    "under the limit",
			command: []string{"python3", "-c", "import sys; sys.stdin.read(); x = bytearray(10*1024*1024); print('{}')"},
			want:    outcome{Outcome: outOK, Result: "{}"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, _ := setup(t, "")
			e.Command = tt.command
			e.Limits.Memory = 100 << 20
			res := run(t, t.Context(), e, Job{JobID: 1, LeaseID: 1, Timeout: time.Minute})
			if diff := cmp.Diff(tt.want, summary(res)); diff != "" {
				t.Errorf("Run (-want +got):\n%s\nlog:\n%s", diff, res.Log)
			}
		})
	}
}

func TestNoop(t *testing.T) {
	t.Parallel()
	got := summary(Noop{}.Run(t.Context(), Job{JobID: 1}))
	if diff := cmp.Diff(outcome{Outcome: outOK, Result: `{"noop":true}`}, got); diff != "" {
		t.Errorf("Run (-want +got):\n%s", diff)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	got = summary(Noop{}.Run(ctx, Job{JobID: 1}))
	if diff := cmp.Diff(outcome{Outcome: outTemp, Error: "cancelled"}, got); diff != "" {
		t.Errorf("Run cancelled (-want +got):\n%s", diff)
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the grader did not record its pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		t.Fatalf("bad pid %q in %s", b, path)
	}
	return pid
}

// alive reports whether pid is a running process. A zombie counts as gone:
// it is dead, and whether anyone reaps it depends on the machine's init.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}
