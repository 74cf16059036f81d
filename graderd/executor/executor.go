// Package executor runs grading jobs for graderd.
//
// An Executor turns one Job into one Result. Noop answers at once and exists
// for benchmarks; Exec runs an external grader program per job, following the
// convention of France-ioi's taskgrader so that existing graders port easily.
// The container executors (package docker) follow the same convention in a
// container, through what this package shares: JobDocument, ExitResult and
// LimitResult, ResultBuffer and LogBuffer, Limits and its defaults, Watch
// and Meter, Supervise, RunLabels and Reaper.
//
// # The exec convention
//
// The grader command runs in the sandbox (see sandbox.go; without it, with
// "sandbox: none", it runs as graderd's child with graderd's powers). There
// it starts in a fresh, empty working directory, /job (a tmpfs of its own,
// mode 0700, also HOME), with a private /tmp (TMPDIR), as an unprivileged
// user of its own, with only DefaultEnv and Exec.Env as its environment,
// no network but its own loopback, and read-only access to the system
// directories and the paths its executor names. It is the first process of
// its own pid namespace: the kernel delivers it only the signals it
// handles, and processes its children leave behind become its own; when
// it exits, every other process of the run is killed. Without the sandbox
// it starts in a fresh directory under the work root (TMPDIR too), in its
// own process group, with graderd's environment plus Exec.Env.
//
// It reads one JSON object, followed by a newline, on its standard input:
//
//	{
//	  "job_id": 42,            // the broker's job id
//	  "lease_id": 1234,        // this attempt's lease (fencing) id
//	  "attempt": 1,            // 1 for the first try, 2 for the second, ...
//	  "name": "alice/sum-3",   // the job's name, as the platform gave it
//	  "tags": ["python3"],     // the job's tags; always an array, maybe empty
//	  "timeout_sec": 30,       // the wall-time limit in seconds (may be fractional); 0 = none
//	  "limits": {              // the run's limits, to pass on to the solution; 0 = none
//	    "cpu_time_sec": 10, "memory_bytes": 1073741824, "pids": 256, "open_files": 1024,
//	    "tmp_bytes": 67108864, "work_bytes": 268435456, "max_stdout_bytes": 4194304
//	  },
//	  "restrictToPaths": [],   // the platform's restrict_paths (graderqueue's name)
//	  "jobdata": {...}         // the job's JSON, byte for byte as the platform sent it
//	}
//
// restrictToPaths lists the paths the platform restricts the job to; in
// the sandbox, the parts of them inside the roots graderd's configuration
// allows are visible read-only at the same paths.
//
// It writes its result as one JSON document on standard output and may log
// anything on standard error; the log is kept (cut to Limits.MaxStderr) and
// travels with the result. Its exit status says how the run ended:
//
//	0       OK: stdout is the final result
//	1       FATAL: a final error; stdout, if not empty, is a JSON result kept with it
//	2       TEMPORARY: retry, preferably on another server
//	other   TEMPORARY, as is death by a signal
//
// A run that passes a limit (memory, processes, CPU time, output size, a
// full /job or /tmp) is killed as a whole and ends FATAL with Result.Limit
// naming the limit, unless the grader exited 0 on its own first (it may
// have caught its solution's failure and graded it); past its wall time it
// ends TIMEOUT.
//
// Exit 0 with empty or non-JSON output, and exit 1 with non-JSON output, are
// FATAL: a grader that prints garbage will print it again on another server.
package executor

import (
	"context"
	"time"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Job is what an executor runs. The daemon fills it from a
// gradebrokerv1.Assign.
type Job struct {
	// JobID is the broker's id of the job.
	JobID int64
	// LeaseID is the fencing id of this attempt.
	LeaseID int64
	// Attempt counts the tries of the job, starting at 1.
	Attempt uint32
	// Name is the job's name as the platform gave it.
	Name string
	// JobData is the job's JSON document for the grader, passed through as is.
	JobData []byte
	// Tags are the job's tags.
	Tags []string
	// Timeout is the wall-time limit of the run; zero or less means none
	// (the broker always sets one, so only tests and tools leave it out).
	Timeout time.Duration
	// RestrictPaths are the platform's restrict_paths for the job, from the
	// Assign; an executor exposes them only inside paths its own
	// configuration allows.
	RestrictPaths []string
}

// Result is how a run ended.
type Result struct {
	// Outcome says whether the result is final (OK, FATAL) or the job should
	// be tried again (TEMPORARY, TIMEOUT).
	Outcome gradebrokerv1.Outcome
	// Result is the grader's JSON result; set only for OK and, when the
	// grader printed one, FATAL.
	Result []byte
	// Log is the grader's standard error, cut to a bounded size; it is always
	// valid UTF-8 so that it fits a protobuf string.
	Log string
	// Error says why the run did not end OK; empty for OK.
	Error string
	// Duration is how long the grader ran.
	Duration time.Duration
	// Usage is what the run used, as far as the executor could measure it.
	Usage Usage
	// Limit is the limit that ended the run, if one did; Error then names
	// it in words too.
	Limit Limit
}

// Executor runs jobs.
type Executor interface {
	// Run runs job and reports how it ended. It never panics and never
	// returns before everything it started has stopped. Cancelling ctx means
	// the broker cancelled the job: Run stops it and returns Outcome
	// TEMPORARY with Error "cancelled".
	Run(ctx context.Context, job Job) Result
}

// ErrorCancelled is the Error of a Result whose run was cancelled through its
// context.
const ErrorCancelled = "cancelled"

// Noop is an Executor that grades nothing: it returns OK with the result
// {"noop":true} at once. Benchmarks use it to measure the broker alone.
type Noop struct{}

var _ Executor = Noop{}

// Run returns OK with the result {"noop":true}, or TEMPORARY "cancelled" when
// ctx is already done.
func (Noop) Run(ctx context.Context, _ Job) Result {
	if ctx.Err() != nil {
		return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_TEMPORARY, Error: ErrorCancelled}
	}
	return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: []byte(`{"noop":true}`)}
}
