package executor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The exec convention (see the package documentation), written once for
// every executor that runs a grader: the document the grader reads, and how
// its exit status, output and log become a Result. An executor that runs
// graders elsewhere (a container, a pod) only has to deliver the document
// and collect the exit status, stdout and stderr.

// limitsDoc is the "limits" object of the grader's stdin document, so that
// a grader can pass them on to the solution it runs. Zero means none.
type limitsDoc struct {
	CPUTimeSec     float64 `json:"cpu_time_sec"`
	MemoryBytes    int64   `json:"memory_bytes"`
	Pids           int     `json:"pids"`
	OpenFiles      int     `json:"open_files"`
	TmpBytes       int64   `json:"tmp_bytes"`
	WorkBytes      int64   `json:"work_bytes"`
	MaxStdoutBytes int64   `json:"max_stdout_bytes"`
}

func (l Limits) doc() limitsDoc {
	return limitsDoc{l.CPUTime.Seconds(), l.Memory, l.Pids, l.OpenFiles, l.TmpSize, l.WorkSize, l.MaxStdout}
}

// JobDocument builds the JSON object a grader reads (on stdin, or from a
// file), followed by a newline. jobdata is spliced in byte for byte:
// encoding/json would compact and HTML-escape it. It fails only when
// jobdata is not JSON.
func JobDocument(job Job, limits Limits) ([]byte, error) {
	jobdata := bytes.TrimSpace(job.JobData)
	if len(jobdata) == 0 {
		jobdata = []byte("null")
	}
	if !json.Valid(jobdata) {
		return nil, errors.New("jobdata is not valid JSON")
	}
	tags := job.Tags
	if tags == nil {
		tags = []string{}
	}
	timeout := 0.0
	if job.Timeout > 0 {
		timeout = job.Timeout.Seconds()
	}
	restrict := job.RestrictPaths
	if restrict == nil {
		restrict = []string{}
	}
	head, err := json.Marshal(struct {
		JobID           int64     `json:"job_id"`
		LeaseID         int64     `json:"lease_id"`
		Attempt         uint32    `json:"attempt"`
		Name            string    `json:"name"`
		Tags            []string  `json:"tags"`
		TimeoutSec      float64   `json:"timeout_sec"`
		Limits          limitsDoc `json:"limits"`
		RestrictToPaths []string  `json:"restrictToPaths"`
	}{job.JobID, job.LeaseID, job.Attempt, job.Name, tags, timeout, limits.doc(), restrict})
	if err != nil {
		return nil, fmt.Errorf("encoding the grader's input: %w", err)
	}
	doc := append(head[:len(head)-1], `,"jobdata":`...)
	doc = append(doc, jobdata...)
	return append(doc, "}\n"...), nil
}

// ExitResult maps a grader that exited on its own with status code (not
// killed by a signal, not stopped for a limit) to a Result, by the exec
// convention: 0 is OK with stdout as the result (which must be JSON), 1 is
// FATAL (stdout, if any, a JSON result kept with it), 2 and anything else
// TEMPORARY. log is the grader's kept stderr, whose last line the Error
// quotes; the caller sets Result.Log.
func ExitResult(code int, stdout []byte, log string) Result {
	doc := bytes.TrimSpace(stdout)
	switch code {
	case 0:
		if len(doc) == 0 {
			return Fatal("grader exited with status 0 but printed no result on stdout")
		}
		if !json.Valid(doc) {
			return Fatal(notJSON(doc, 0))
		}
		return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: doc}
	case 1:
		if len(doc) > 0 && !json.Valid(doc) {
			return Fatal(notJSON(doc, 1))
		}
		r := Fatal("grader reported a fatal error (exit status 1)" + lastLine(log))
		if len(doc) > 0 {
			r.Result = doc
		}
		return r
	case 2:
		return Temporary("grader asked for a retry (exit status 2)" + lastLine(log))
	}
	return Temporary(fmt.Sprintf("grader exited with status %d", code) + lastLine(log))
}

// LimitResult is the Result of a run that limit l ended: TIMEOUT for the
// wall time, FATAL for the others (every server of the type enforces the
// same limits, so a retry would hit them again), with Limit set and an
// Error that names the limit (see LimitError).
func LimitResult(l Limit, limits Limits, timeout time.Duration, detail string) Result {
	r := Fatal(LimitError(l, limits, timeout, detail))
	r.Limit = l
	if l == LimitWallTime {
		r.Outcome = gradebrokerv1.Outcome_OUTCOME_TIMEOUT
	}
	return r
}

// Temporary is a TEMPORARY Result with Error msg: the job should be tried
// again, preferably on another server.
func Temporary(msg string) Result {
	return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_TEMPORARY, Error: msg}
}

// Fatal is a FATAL Result with Error msg: a final error, delivered to the
// platform.
func Fatal(msg string) Result {
	return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_FATAL, Error: msg}
}

func notJSON(doc []byte, code int) string {
	const show = 64
	if len(doc) > show {
		doc = doc[:show]
	}
	return fmt.Sprintf("grader printed something that is not JSON on stdout (exit status %d); it starts with %s",
		code, strconv.Quote(string(doc)))
}

// lastLine returns ": " and the last non-empty line of a log, cut short, to
// make an Error say something useful without the whole log.
func lastLine(log string) string {
	log = strings.TrimSpace(log)
	if log == "" {
		return ""
	}
	if i := strings.LastIndexByte(log, '\n'); i >= 0 {
		log = log[i+1:]
	}
	const max = 200
	if len(log) > max {
		log = strings.ToValidUTF8(log[:max], "") + "..."
	}
	return ": " + log
}

// JSONOrNil returns out, trimmed, when it is a JSON document, else nil: the
// result a grader may leave beside a failure.
func JSONOrNil(out []byte) []byte {
	doc := bytes.TrimSpace(out)
	if len(doc) == 0 || !json.Valid(doc) {
		return nil
	}
	return doc
}
