package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// grader is the path of the samplegrader binary TestMain builds: the tests
// run it as graderd would, as a real process.
var grader string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "samplegrader-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	grader = filepath.Join(dir, "samplegrader")
	build := exec.Command("go", "build", "-o", grader, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building samplegrader:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needPython fails the test when python3 is missing: the demo needs it, so
// its absence is a broken machine, not a reason to skip.
func needPython(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("python3 is required to test the sample grader: %v", err)
	}
}

func solution(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "solutions", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// envelope wraps jobdata in the document graderd writes on stdin.
func envelope(t *testing.T, jobdata any) []byte {
	t.Helper()
	raw, ok := jobdata.(string)
	if !ok {
		b, err := json.Marshal(jobdata)
		if err != nil {
			t.Fatal(err)
		}
		raw = string(b)
	}
	return []byte(`{"job_id":1,"lease_id":1,"attempt":1,"name":"t","tags":[],"timeout_sec":60,"jobdata":` + raw + "}\n")
}

// runGrader runs the grader binary in a fresh directory and returns its
// exit status, stdout and stderr.
func runGrader(t *testing.T, stdin []byte, env ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(grader)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("running the grader: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func TestGrades(t *testing.T) {
	testutil.Slow(t, "a python3 per test case")
	t.Parallel()
	needPython(t)
	// Messages carry times and tracebacks; the test compares the verdicts
	// and checks each failing test says why.
	type verdict struct {
		Score, Passed, Total int
		OK                   []bool
	}
	tests := []struct {
		name        string
		jobdata     map[string]any
		want        verdict
		wantMessage string // in every failed test's message
	}{
		{
			name:    "sum ok",
			jobdata: map[string]any{"task": "sum", "solution": solution(t, "sum_ok.py"), "lang": "python3"},
			want:    verdict{100, 5, 5, []bool{true, true, true, true, true}},
		},
		{
			name:        "sum wrong",
			jobdata:     map[string]any{"task": "sum", "solution": solution(t, "sum_wrong.py")},
			want:        verdict{40, 2, 5, []bool{false, true, false, true, false}},
			wantMessage: "wrong answer: expected",
		},
		{
			name:        "sum loops",
			jobdata:     map[string]any{"task": "sum", "solution": solution(t, "sum_loop.py"), "time_limit_ms": 300},
			want:        verdict{0, 0, 5, []bool{false, false, false, false, false}},
			wantMessage: "time limit of 300 ms exceeded",
		},
		{
			name:    "taskgrader keys",
			jobdata: map[string]any{"task": "sum", "solcontent": solution(t, "sum_ok.py"), "lang": "python"},
			want:    verdict{100, 5, 5, []bool{true, true, true, true, true}},
		},
		{
			name:    "reverse",
			jobdata: map[string]any{"task": "reverse", "solution": "print(input()[::-1])"},
			want:    verdict{100, 3, 3, []bool{true, true, true}},
		},
		{
			name:        "syntax error",
			jobdata:     map[string]any{"task": "reverse", "solution": "print(("},
			want:        verdict{0, 0, 3, []bool{false, false, false}},
			wantMessage: "runtime error (exit status 1): SyntaxError",
		},
	}
	for _, tt := range tests {
		// Only "sum loops" is about the time limit. The others get the
		// longest one: each test starts a python3, and on a busy machine
		// a start can take longer than the default 2 s, which would turn
		// a syntax error into a time-out.
		if _, set := tt.jobdata["time_limit_ms"]; !set {
			tt.jobdata["time_limit_ms"] = maxTimeLimit.Milliseconds()
		}
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runGrader(t, envelope(t, tt.jobdata))
			if code != exitGraded {
				t.Fatalf("exit status %d, want 0; stderr:\n%s", code, stderr)
			}
			var got result
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("stdout is not a result: %v\n%s", err, stdout)
			}
			v := verdict{Score: got.Score, Passed: got.Passed, Total: got.Total}
			for _, tr := range got.Tests {
				v.OK = append(v.OK, tr.OK)
				if tr.Name == "" {
					t.Errorf("a test has no name")
				}
				if !tr.OK && !strings.Contains(tr.Message, tt.wantMessage) {
					t.Errorf("test %q: message %q, want it to contain %q", tr.Name, tr.Message, tt.wantMessage)
				}
				if tr.OK && tr.Message != "" {
					t.Errorf("test %q passed with message %q", tr.Name, tr.Message)
				}
			}
			if diff := cmp.Diff(tt.want, v); diff != "" {
				t.Errorf("verdict (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRefuses(t *testing.T) {
	t.Parallel()
	needPython(t)
	ok := solution(t, "sum_ok.py")
	tests := []struct {
		name       string
		stdin      []byte
		env        []string
		wantCode   int
		wantStderr string
	}{
		{"stdin not JSON", []byte("hello"), nil, exitFatal, "stdin is not graderd's JSON job document"},
		{"no jobdata", []byte(`{"job_id":1}`), nil, exitFatal, "malformed jobdata: missing"},
		{"jobdata not an object", envelope(t, `[1,2]`), nil, exitFatal, "malformed jobdata: json: cannot unmarshal array"},
		{"no task", envelope(t, map[string]any{"solution": ok}), nil, exitFatal, `"task" is missing`},
		{"no solution", envelope(t, map[string]any{"task": "sum"}), nil, exitFatal, `"solution" (or "solcontent") is missing`},
		{"both solutions", envelope(t, map[string]any{"task": "sum", "solution": ok, "solcontent": "x"}), nil, exitFatal, "both given and differ"},
		{"bad lang", envelope(t, map[string]any{"task": "sum", "solution": ok, "lang": "cobol"}), nil, exitFatal, `lang "cobol" is not supported`},
		{"bad time limit", envelope(t, map[string]any{"task": "sum", "solution": ok, "time_limit_ms": 0}), nil, exitFatal, "time_limit_ms must be between 1 and 10000"},
		{"unknown task", envelope(t, map[string]any{"task": "sort", "solution": ok}), nil, exitFatal, `unknown task "sort" (known tasks: reverse, sum)`},
		{"no python3", envelope(t, map[string]any{"task": "sum", "solution": ok}), []string{"PATH=" + t.TempDir()}, exitTemporary, "python3 is not installed on this server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runGrader(t, tt.stdin, tt.env...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("exit status %d, stderr %q; want %d and a stderr containing %q", code, stderr, tt.wantCode, tt.wantStderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
}

func TestJobDataAsString(t *testing.T) {
	testutil.Slow(t, "a python3 per test case")
	t.Parallel()
	needPython(t)
	inner, _ := json.Marshal(map[string]any{"task": "reverse", "solution": "print(input()[::-1])"})
	quoted, _ := json.Marshal(string(inner))
	code, stdout, stderr := runGrader(t, envelope(t, string(quoted)))
	if code != exitGraded || !strings.HasPrefix(stdout, `{"score":100,`) {
		t.Errorf("exit status %d, stdout %q, stderr %q; want 0 and score 100", code, stdout, stderr)
	}
}

// TestThroughExecutor runs the sample grader the way graderd does, through
// executor.Exec.
func TestThroughExecutor(t *testing.T) {
	testutil.Slow(t, "graderd's executor runs the grader and python3")
	t.Parallel()
	needPython(t)
	e := &executor.Exec{Command: []string{grader}, WorkRoot: t.TempDir()}
	jobdata, _ := json.Marshal(map[string]any{"task": "sum", "solution": solution(t, "sum_ok.py")})
	res := e.Run(t.Context(), executor.Job{JobID: 1, LeaseID: 1, Attempt: 1, JobData: jobdata, Timeout: time.Minute})
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || !bytes.HasPrefix(res.Result, []byte(`{"score":100,`)) {
		t.Errorf("Run = %v %q %q, want OK with score 100; log:\n%s", res.Outcome, res.Result, res.Error, res.Log)
	}

	res = e.Run(t.Context(), executor.Job{JobID: 1, LeaseID: 2, JobData: []byte(`{"task":"sort","solution":""}`), Timeout: time.Minute})
	want := `grader reported a fatal error (exit status 1): samplegrader: unknown task "sort" (known tasks: reverse, sum)`
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || res.Error != want {
		t.Errorf("Run = %v %q, want FATAL %q", res.Outcome, res.Error, want)
	}
}

// TestTimeLimit: a job without time_limit_ms gets the default limit, and
// one with it gets what it asks for. (TestGrades runs its solutions with
// the longest limit, and "sum loops" shows a limit being enforced.)
func TestTimeLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		jobdata string
		want    time.Duration
	}{
		{`{"task":"sum","solution":"x"}`, defaultTimeLimit},
		{`{"task":"sum","solution":"x","time_limit_ms":750}`, 750 * time.Millisecond},
	} {
		j, err := readJob(bytes.NewReader(envelope(t, tc.jobdata)))
		if err != nil || j.timeLimit != tc.want {
			t.Errorf("%s: time limit %v, %v; want %v", tc.jobdata, j.timeLimit, err, tc.want)
		}
	}
}
