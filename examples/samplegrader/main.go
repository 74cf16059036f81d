// Command samplegrader is a small grader for gradebroker's demo. It follows
// graderd's exec convention (see package graderd/executor): it reads the job
// on stdin, runs a Python 3 solution against a built-in task's tests, prints
// the graded result as JSON on stdout and exits 0. It exits 1 (FATAL) for a
// job it can never grade and 2 (TEMPORARY) when this machine cannot run it.
// README.md describes the jobdata it takes.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Exit statuses, as graderd maps them.
const (
	exitGraded    = 0 // OK: the result is on stdout, whatever the score
	exitFatal     = 1 // FATAL: this job can never be graded
	exitTemporary = 2 // TEMPORARY: another server might manage
)

const (
	defaultTimeLimit = 2 * time.Second
	maxTimeLimit     = 10 * time.Second
	maxStdin         = 16 << 20
	maxOutput        = 64 << 10 // a solution's stdout kept per test
	maxStderr        = 4 << 10  // a solution's stderr kept per test, for messages
)

// testCase is one test of a task: what the solution reads and what it must
// print.
type testCase struct {
	name, input, want string
}

// tasks are the built-in toy tasks.
var tasks = map[string][]testCase{
	"sum": {
		{"small", "1 2\n", "3"},
		{"zeros", "0 0\n", "0"},
		{"negative", "-5 5\n", "0"},
		{"b is zero", "42 0\n", "42"},
		{"big", "1000000000000 1\n", "1000000000001"},
	},
	"reverse": {
		{"word", "hello\n", "olleh"},
		{"palindrome", "level\n", "level"},
		{"spaces", "a b  c\n", "c  b a"},
	},
}

// input is the document graderd writes on stdin; only jobdata matters here.
type input struct {
	JobData json.RawMessage `json:"jobdata"`
}

// jobData is what a platform sends for this grader. Solution and SolContent
// are two names for the same field, the second taskgrader's.
type jobData struct {
	Task        string  `json:"task"`
	Solution    *string `json:"solution"`
	SolContent  *string `json:"solcontent"`
	Lang        string  `json:"lang"`
	TimeLimitMS *int64  `json:"time_limit_ms"`
}

// testResult is one test's line in the result.
type testResult struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	TimeMS  int64  `json:"time_ms"`
	Message string `json:"message"`
}

// result is what the grader prints.
type result struct {
	Score  int          `json:"score"`
	Passed int          `json:"passed"`
	Total  int          `json:"total"`
	Tests  []testResult `json:"tests"`
}

// exitError carries the exit status a failure should end the grader with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func fatalf(format string, args ...any) error {
	return &exitError{exitFatal, fmt.Errorf(format, args...)}
}

func temporaryf(format string, args ...any) error {
	return &exitError{exitTemporary, fmt.Errorf(format, args...)}
}

func main() {
	if err := run(context.Background(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "samplegrader:", err)
		code := exitTemporary
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		os.Exit(code)
	}
}

func run(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	j, err := readJob(stdin)
	if err != nil {
		return err
	}
	tests, ok := tasks[j.task]
	if !ok {
		known := make([]string, 0, len(tasks))
		for name := range tasks {
			known = append(known, name)
		}
		slices.Sort(known)
		return fatalf("unknown task %q (known tasks: %s)", j.task, strings.Join(known, ", "))
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		return temporaryf("python3 is not installed on this server: %w", err)
	}
	// The working directory is the job's own, fresh and removed by graderd.
	if err := os.WriteFile("solution.py", []byte(j.source), 0o600); err != nil {
		return temporaryf("writing the solution: %w", err)
	}

	res := result{Total: len(tests), Tests: make([]testResult, 0, len(tests))}
	for _, tc := range tests {
		tr, err := runTest(ctx, python, tc, j.timeLimit)
		if err != nil {
			return err
		}
		if tr.OK {
			res.Passed++
		}
		res.Tests = append(res.Tests, tr)
	}
	res.Score = res.Passed * 100 / res.Total
	out, err := json.Marshal(res)
	if err != nil {
		return fatalf("encoding the result: %w", err)
	}
	if _, err := fmt.Fprintf(stdout, "%s\n", out); err != nil {
		return temporaryf("writing the result: %w", err)
	}
	return nil
}

// job is a checked jobData.
type job struct {
	task      string
	source    string
	timeLimit time.Duration
}

func readJob(stdin io.Reader) (job, error) {
	raw, err := io.ReadAll(io.LimitReader(stdin, maxStdin+1))
	if err != nil {
		return job{}, temporaryf("reading stdin: %w", err)
	}
	if len(raw) > maxStdin {
		return job{}, fatalf("the job is larger than %d bytes", maxStdin)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		return job{}, fatalf("stdin is not graderd's JSON job document: %w", err)
	}
	if len(in.JobData) == 0 || string(in.JobData) == "null" {
		return job{}, fatalf("malformed jobdata: missing")
	}
	data := in.JobData
	// Platforms may send jobdata as a string holding JSON.
	var str string
	if json.Unmarshal(data, &str) == nil {
		data = json.RawMessage(str)
	}
	var jd jobData
	if err := json.Unmarshal(data, &jd); err != nil {
		return job{}, fatalf("malformed jobdata: %w", err)
	}
	if jd.Task == "" {
		return job{}, fatalf(`malformed jobdata: "task" is missing`)
	}
	var src string
	switch {
	case jd.Solution != nil && jd.SolContent != nil && *jd.Solution != *jd.SolContent:
		return job{}, fatalf(`malformed jobdata: "solution" and "solcontent" are both given and differ; give one`)
	case jd.Solution != nil:
		src = *jd.Solution
	case jd.SolContent != nil:
		src = *jd.SolContent
	default:
		return job{}, fatalf(`malformed jobdata: "solution" (or "solcontent") is missing`)
	}
	switch jd.Lang {
	case "", "python3", "python":
	default:
		return job{}, fatalf(`malformed jobdata: lang %q is not supported; use "python3"`, jd.Lang)
	}
	limit := defaultTimeLimit
	if jd.TimeLimitMS != nil {
		limit = time.Duration(*jd.TimeLimitMS) * time.Millisecond
		if limit <= 0 || limit > maxTimeLimit {
			return job{}, fatalf("malformed jobdata: time_limit_ms must be between 1 and %d", maxTimeLimit.Milliseconds())
		}
	}
	return job{task: jd.Task, source: src, timeLimit: limit}, nil
}

// runTest runs the solution on one test. Failures of the solution are part
// of the result; only failing to run python3 at all is an error.
func runTest(ctx context.Context, python string, tc testCase, limit time.Duration) (testResult, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	stdout := capped{max: maxOutput}
	stderr := capped{max: maxStderr, keepTail: true} // a traceback ends with its point
	cmd := exec.CommandContext(ctx, python, "solution.py")
	cmd.Stdin = strings.NewReader(tc.input)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// A solution may fork; killing its process group leaves nothing
	// running past its time limit.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 500 * time.Millisecond
	start := time.Now()
	err := cmd.Run()
	tr := testResult{Name: tc.name, TimeMS: time.Since(start).Milliseconds()}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		tr.Message = fmt.Sprintf("time limit of %d ms exceeded", limit.Milliseconds())
	case err != nil && !errors.As(err, &exitErr):
		return tr, temporaryf("running python3: %w", err)
	case err != nil:
		tr.Message = fmt.Sprintf("runtime error (%v)%s", exitErr.ProcessState, lastLine(stderr.String()))
	case stdout.over:
		tr.Message = fmt.Sprintf("output larger than %d bytes", maxOutput)
	default:
		got := normalize(stdout.String())
		if got == tc.want {
			tr.OK = true
		} else {
			tr.Message = fmt.Sprintf("wrong answer: expected %s, got %s", quote(tc.want), quote(got))
		}
	}
	return tr, nil
}

// normalize drops trailing spaces on each line and trailing blank lines, as
// judges usually do.
func normalize(s string) string {
	lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t")
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}

func quote(s string) string {
	const max = 100
	if len(s) > max {
		return fmt.Sprintf("%q...", strings.ToValidUTF8(s[:max], ""))
	}
	return fmt.Sprintf("%q", s)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return ": " + strings.ToValidUTF8(s, "\uFFFD")
}

// capped is a buffer that keeps its first (or, with keepTail, last) max
// bytes and notes whether more came.
type capped struct {
	buf      []byte
	max      int
	keepTail bool
	over     bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	if len(c.buf) > c.max {
		c.over = true
		if c.keepTail {
			c.buf = append([]byte(nil), c.buf[len(c.buf)-c.max:]...)
		} else {
			c.buf = c.buf[:c.max]
		}
	}
	return len(p), nil
}

func (c *capped) String() string { return string(c.buf) }
