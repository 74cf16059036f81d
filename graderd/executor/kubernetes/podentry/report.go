// Package podentry is both ends of a Kubernetes grading pod's channels:
// gbpod, the pod's entrypoint (Run, Install), and what graderd's kubernetes
// executor reads back (ParseReport, SplitLog). It uses the standard library
// only, so that gbpod stays a small static program.
//
// # The channels
//
// In: the job document (the exec convention's stdin document, byte for
// byte) reaches the pod as Secrets of at most PartSize bytes each, projected
// into one directory as part-000, part-001, ...; gbpod feeds them to the
// grader's standard input in order and checks their total length and
// SHA-256 against its arguments first. Secrets, because they need neither a
// kubelet stream (attach) nor network (an init step fetching the document
// would need egress, which the grading pods are denied), and they live on the
// node in memory (tmpfs), never on its disk; several, because one holds at
// most 1 MiB.
//
// Out: the kubelet merges a container's stdout and stderr into one log and
// keeps at most 4096 bytes of its termination message. gbpod keeps them
// apart: the grader's stderr is forwarded to the container's log (its first
// and last halves when it passes the cap), its stdout is the result, and
// when the grader has ended gbpod writes a Report, as JSON of at most
// MaxReport bytes, to the termination message file. The report carries the
// exit status, what the run used, the result's length and SHA-256, the
// result itself when it fits (base64), and as much of the log's end as the
// rest of the room holds. A result that does not fit is written to the
// container's log after the grader's stderr, as one line, the trailer
// (TrailerPrefix, base64, newline); the report's LogLen says where the log
// ends and the trailer begins, and the SHA-256 proves the trailer whole. So
// a small result with a short log needs nothing but the pod's status (no
// kubelet log endpoint), and any other arrives whole or not at all.
package podentry

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// MaxReport is the most a termination message holds: the kubelet reads no
// more than 4096 bytes of it.
const MaxReport = 4096

// PartSize is the most bytes of the job document one Secret carries: a
// Secret's data may not pass 1 MiB, and the key's name counts too.
const PartSize = 1<<20 - 1024

// ReportVersion is the Report.V of this package's reports.
const ReportVersion = 1

// TrailerPrefix starts the log line that carries a result too large for the
// report.
const TrailerPrefix = "gradebroker-result:"

// Report is what gbpod writes to the termination message when the grader
// has ended. Sizes are in bytes, times in nanoseconds.
type Report struct {
	// V is ReportVersion.
	V int `json:"v"`
	// Error is set when gbpod could not run the grader at all (a missing
	// program, a damaged job document); the other fields are then zero.
	Error string `json:"error,omitempty"`
	// Exit is the grader's exit status; Signal, when not zero, the signal
	// that killed it (Exit is then -1).
	Exit   int `json:"exit"`
	Signal int `json:"signal,omitempty"`
	// StdoutOver says the grader wrote more than its result cap; gbpod
	// then killed it.
	StdoutOver bool `json:"stdout_over,omitempty"`
	// Full names the first of the writable directories that was full when
	// the grader ended.
	Full string `json:"full,omitempty"`
	// CPU and MaxRSS are the grader's usage with that of the children it
	// waited for (getrusage); Wall is how long it ran.
	CPU    int64 `json:"cpu_ns,omitempty"`
	MaxRSS int64 `json:"maxrss,omitempty"`
	Wall   int64 `json:"wall_ns,omitempty"`
	// ResultLen and ResultSHA256 describe the grader's whole stdout.
	ResultLen    int    `json:"result_len"`
	ResultSHA256 string `json:"result_sha256"`
	// Result is the stdout itself when it fits the report; else it is the
	// trailer in the log.
	Result []byte `json:"result,omitempty"`
	// LogLen is the length of the log gbpod wrote to the container's log
	// (the grader's stderr, cut with a marker past its cap).
	LogLen int `json:"log_len"`
	// LogTail is the end of that log, as much as fits, from offset
	// LogLen-len(LogTail).
	LogTail string `json:"log_tail,omitempty"`
}

// InlineResult reports whether the report carries the result itself.
func (r Report) InlineResult() bool { return r.Result != nil || r.ResultLen == 0 }

// LogComplete reports whether LogTail is the whole log.
func (r Report) LogComplete() bool { return len(r.LogTail) == r.LogLen }

// sum is the hex SHA-256 of b.
func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Encode fills in r's result fields from result and as much of log's end
// as fits, and returns the report as JSON of at most MaxReport bytes, and
// whether the result went into it (if not, the caller writes Trailer).
func Encode(r Report, result []byte, log []byte) ([]byte, bool, error) {
	r.V = ReportVersion
	r.ResultLen, r.ResultSHA256 = len(result), sum(result)
	r.LogLen, r.LogTail = len(log), ""
	r.Result = nil
	base, err := json.Marshal(r)
	if err != nil {
		return nil, false, err
	}
	if len(base) > MaxReport {
		// Only a very long Error or Full can do this.
		return nil, false, fmt.Errorf("report of %d bytes does not fit the termination message", len(base))
	}
	inline := false
	// The result field costs its base64, its quotes, its name and a comma.
	if len(result) > 0 && len(base)+base64.StdEncoding.EncodedLen(len(result))+len(`,"result":""`) <= MaxReport {
		r.Result, inline = result, true
	}
	out, err := json.Marshal(r)
	if err != nil {
		return nil, false, err
	}
	if len(out) > MaxReport {
		r.Result, inline, out = nil, false, base
	}
	room := MaxReport - len(out) - len(`,"log_tail":""`)
	if room > 0 && len(log) > 0 {
		// JSON escaping can make the tail longer than its bytes: take
		// what fits, shrinking until it does.
		n := min(room, len(log))
		for n > 0 {
			r.LogTail = string(log[len(log)-n:])
			if b, err := json.Marshal(r); err == nil && len(b) <= MaxReport {
				out = b
				break
			}
			n -= max(n/8, 1)
		}
	}
	return out, inline, nil
}

// Trailer is the log line that carries a result the report could not.
func Trailer(result []byte) []byte {
	b := make([]byte, 0, 2+len(TrailerPrefix)+base64.StdEncoding.EncodedLen(len(result)))
	b = append(b, '\n')
	b = append(b, TrailerPrefix...)
	b = base64.StdEncoding.AppendEncode(b, result)
	return append(b, '\n')
}

// ParseReport reads a termination message as a Report. It fails on
// anything gbpod would not write: an unknown version, a result that does
// not match its length and SHA-256, a tail longer than the log.
func ParseReport(msg []byte) (Report, error) {
	var r Report
	if len(msg) > MaxReport {
		return Report{}, fmt.Errorf("termination message of %d bytes is longer than gbpod writes", len(msg))
	}
	if err := json.Unmarshal(msg, &r); err != nil {
		return Report{}, fmt.Errorf("termination message is not gbpod's report: %w", err)
	}
	if r.V != ReportVersion {
		return Report{}, fmt.Errorf("report version %d; this graderd reads version %d (are gbpod's and graderd's images of one release?)", r.V, ReportVersion)
	}
	if r.Error != "" {
		return r, nil
	}
	if r.ResultLen < 0 || r.LogLen < 0 || len(r.LogTail) > r.LogLen {
		return Report{}, errors.New("report has impossible lengths")
	}
	if r.Result != nil && (len(r.Result) != r.ResultLen || sum(r.Result) != r.ResultSHA256) {
		return Report{}, errors.New("report's result does not match its length and SHA-256")
	}
	if r.ResultLen == 0 && r.ResultSHA256 != sum(nil) {
		return Report{}, errors.New("report's empty result has a wrong SHA-256")
	}
	return r, nil
}

// SplitLog splits a container's log, as the API server serves it, into the
// grader's log and, when the report did not carry the result, the result
// from the trailer, checked against the report. It fails when the log
// does not hold the trailer whole (the kubelet rotated or cut it).
func SplitLog(r Report, containerLog []byte) (log, result []byte, err error) {
	if len(containerLog) < r.LogLen {
		return nil, nil, fmt.Errorf("the container's log holds %d bytes, fewer than the %d gbpod wrote", len(containerLog), r.LogLen)
	}
	log, rest := containerLog[:r.LogLen], containerLog[r.LogLen:]
	if r.InlineResult() {
		if r.Result == nil {
			return log, []byte{}, nil
		}
		return log, r.Result, nil
	}
	line, ok := bytes.CutPrefix(rest, []byte("\n"+TrailerPrefix))
	if !ok {
		return nil, nil, errors.New("the container's log has no result after the grader's log")
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	result, err = base64.StdEncoding.AppendDecode(nil, line)
	if err != nil {
		return nil, nil, fmt.Errorf("the result in the container's log is damaged: %w", err)
	}
	if len(result) != r.ResultLen || sum(result) != r.ResultSHA256 {
		return nil, nil, fmt.Errorf("the result in the container's log (%d bytes) is not the %d bytes gbpod wrote", len(result), r.ResultLen)
	}
	return log, result, nil
}
