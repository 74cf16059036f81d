package podentry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// pod is one run of gbpod's Run in a temporary directory that stands in for
// the pod's volumes: the grader is a real process.
type pod struct {
	opts Options
	log  bytes.Buffer
	code int
	rep  Report
	raw  []byte
}

// newPod writes doc into the input directory in parts of partSize bytes.
func newPod(t *testing.T, doc []byte, partSize int, command ...string) *pod {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "input")
	if err := os.Mkdir(in, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i*partSize < len(doc) || i == 0; i++ {
		part := doc[i*partSize : min((i+1)*partSize, len(doc))]
		if err := os.WriteFile(filepath.Join(in, PartName(i)), part, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := sha256.Sum256(doc)
	return &pod{opts: Options{
		InputDir: in, DocLen: int64(len(doc)), DocSHA256: hex.EncodeToString(h[:]),
		Report:    filepath.Join(dir, "termination-log"),
		MaxStdout: 4 << 20, MaxStderr: 1 << 20, KillGrace: 2 * time.Second,
		CheckFull: []string{dir},
		Command:   command,
	}}
}

// run runs gbpod and reads its report back as the executor would.
func (p *pod) run(t *testing.T, ctx context.Context) {
	t.Helper()
	p.code = Run(ctx, p.opts, &p.log)
	var err error
	if p.raw, err = os.ReadFile(p.opts.Report); err != nil {
		t.Fatalf("gbpod wrote no report: %v", err)
	}
	if len(p.raw) > MaxReport {
		t.Fatalf("report is %d bytes, more than a termination message holds", len(p.raw))
	}
	if p.rep, err = ParseReport(p.raw); err != nil {
		t.Fatalf("ParseReport: %v\n%s", err, p.raw)
	}
}

// TestDocumentInResultOut: the document, in several parts, reaches the
// grader byte for byte; its stdout comes back as the result and its stderr
// as the log, apart; small ones travel in the report alone.
func TestDocumentInResultOut(t *testing.T) {
	t.Parallel()
	doc := []byte(`{"job_id":1,"jobdata":{"a": [1, 2,   3], "s":"\u00e9<>"}}` + "\n")
	p := newPod(t, doc, 7, "sh", "-c", `cat; echo "grading..." >&2; echo done >&2`)
	p.run(t, context.Background())
	if p.code != 0 || p.rep.Exit != 0 || p.rep.Error != "" {
		t.Fatalf("exit %d, report %+v", p.code, p.rep)
	}
	if !p.rep.InlineResult() || !p.rep.LogComplete() {
		t.Fatalf("a small result and log should both fit the report: %s", p.raw)
	}
	if diff := cmp.Diff(string(doc), string(p.rep.Result)); diff != "" {
		t.Errorf("result is not the document (-want +got):\n%s", diff)
	}
	if p.rep.LogTail != "grading...\ndone\n" || p.log.String() != p.rep.LogTail {
		t.Errorf("log tail %q, container log %q", p.rep.LogTail, p.log.String())
	}
	if p.rep.Wall <= 0 {
		t.Errorf("no wall time in %+v", p.rep)
	}
}

// TestLargeResultInLog: a result larger than the report goes to the
// container's log after the grader's log, and comes back whole; a log that
// lost part of it is refused.
func TestLargeResultInLog(t *testing.T) {
	t.Parallel()
	big := `{"x":"` + strings.Repeat("ab", 50_000) + `"}`
	p := newPod(t, []byte(big), PartSize, "sh", "-c", `cat; echo "some log" >&2`)
	p.run(t, context.Background())
	if p.rep.InlineResult() {
		t.Fatalf("a 100 kB result fits a 4 KiB report? %d bytes", len(p.rep.Result))
	}
	log, result, err := SplitLog(p.rep, p.log.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if string(result) != big || string(log) != "some log\n" {
		t.Errorf("result %d bytes (want %d), log %q", len(result), len(big), log)
	}
	// The kubelet's log is line based: it may add a final newline. Losing
	// any byte of the trailer, or changing one, must be noticed.
	withNL := append(bytes.Clone(p.log.Bytes()), '\n')
	if _, r, err := SplitLog(p.rep, withNL); err != nil || string(r) != big {
		t.Errorf("a final newline more: %v", err)
	}
	cut := p.log.Bytes()[:p.log.Len()-100]
	if _, _, err := SplitLog(p.rep, cut); err == nil {
		t.Error("a log missing the end of the result was accepted")
	}
	bad := bytes.Clone(p.log.Bytes())
	bad[len(bad)-10] ^= 1
	if _, _, err := SplitLog(p.rep, bad); err == nil {
		t.Error("a changed result was accepted")
	}
	if _, _, err := SplitLog(p.rep, p.log.Bytes()[:3]); err == nil {
		t.Error("a log shorter than the grader's was accepted")
	}
}

// TestEndings: exit status and signals are reported as the grader ended.
func TestEndings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		script     string
		code, exit int
		signal     int
	}{
		{"ok", "echo '{}'", 0, 0, 0},
		{"fatal", "exit 1", 1, 1, 0},
		{"status 7", "exit 7", 7, 7, 0},
		{"killed", "kill -9 $$", 128 + 9, -1, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newPod(t, []byte("{}"), PartSize, "sh", "-c", "cat >/dev/null; "+tc.script)
			p.run(t, context.Background())
			if p.code != tc.code || p.rep.Exit != tc.exit || p.rep.Signal != tc.signal {
				t.Errorf("gbpod exit %d, report exit %d signal %d; want %d, %d, %d", p.code, p.rep.Exit, p.rep.Signal, tc.code, tc.exit, tc.signal)
			}
		})
	}
}

// TestStdoutCap: a grader that writes more than its result cap is stopped
// and the report says so.
func TestStdoutCap(t *testing.T) {
	t.Parallel()
	p := newPod(t, []byte("{}"), PartSize, "sh", "-c", "cat >/dev/null; yes")
	p.opts.MaxStdout = 1000
	p.run(t, context.Background())
	if !p.rep.StdoutOver || p.rep.Signal == 0 || p.rep.ResultLen != 1000 {
		t.Errorf("report %+v: want stdout_over, a signal and 1000 bytes kept", p.rep)
	}
}

// TestLogCap: past its cap the log keeps its first and last halves, with a
// marker; the report's tail is the end of what was written.
func TestLogCap(t *testing.T) {
	t.Parallel()
	p := newPod(t, []byte("{}"), PartSize, "sh", "-c", `cat >/dev/null; i=0; while [ $i -lt 500 ]; do echo "line $i" >&2; i=$((i+1)); done; echo '{}'`)
	p.opts.MaxStderr = 200
	p.run(t, context.Background())
	log := p.log.String()
	if !strings.HasPrefix(log, "line 0\nline 1\n") || !strings.HasSuffix(log, "line 499\n") || !strings.Contains(log, "bytes of stderr cut ...]") {
		t.Errorf("cut log:\n%s", log)
	}
	if p.rep.LogLen != len(log) || !strings.HasSuffix(log, p.rep.LogTail) {
		t.Errorf("report says log_len %d with tail %q; the log is %d bytes", p.rep.LogLen, p.rep.LogTail, len(log))
	}
}

// TestDamagedDocument: a missing part or another document never reaches
// the grader.
func TestDamagedDocument(t *testing.T) {
	t.Parallel()
	doc := []byte(`{"a":"` + strings.Repeat("x", 100) + `"}`)
	p := newPod(t, doc, 30, "sh", "-c", "cat")
	if err := os.Remove(filepath.Join(p.opts.InputDir, PartName(1))); err != nil {
		t.Fatal(err)
	}
	p.run(t, context.Background())
	if p.code != 125 || !strings.Contains(p.rep.Error, "part 1 is missing") {
		t.Errorf("exit %d, report %+v", p.code, p.rep)
	}
	q := newPod(t, doc, 30, "sh", "-c", "cat")
	q.opts.DocSHA256 = strings.Repeat("0", 64)
	q.run(t, context.Background())
	if q.code != 125 || !strings.Contains(q.rep.Error, "another SHA-256") {
		t.Errorf("exit %d, report %+v", q.code, q.rep)
	}
}

// TestStopped: cancelling the run (the kubelet's SIGTERM) stops the grader.
func TestStopped(t *testing.T) {
	t.Parallel()
	p := newPod(t, []byte("{}"), PartSize, "sh", "-c", "echo started >&2; exec sleep 600")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.code = Run(ctx, p.opts, &syncWriter{w: &p.log, started: cancel}) }()
	testutil.WaitClosed(t, "gbpod to return after the cancel", done)
	rep, err := ParseReport(mustRead(t, p.opts.Report))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Signal != int(syscall.SIGTERM) {
		t.Errorf("grader ended with %+v, want SIGTERM", rep)
	}
}

// syncWriter cancels the run once the grader has said it started.
type syncWriter struct {
	w       *bytes.Buffer
	started func()
}

func (s *syncWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if strings.Contains(s.w.String(), "started") {
		s.started()
	}
	return n, err
}

// TestOpenFiles: the grader runs with the open-files limit.
func TestOpenFiles(t *testing.T) {
	t.Parallel()
	p := newPod(t, []byte("{}"), PartSize, "sh", "-c", "cat >/dev/null; ulimit -n")
	p.opts.OpenFiles = 77
	p.run(t, context.Background())
	if got := strings.TrimSpace(string(p.rep.Result)); got != "77" {
		t.Errorf("grader saw an open-files limit of %q, want 77", got)
	}
}

// TestArgsRoundTrip: what the executor writes is what gbpod reads.
func TestArgsRoundTrip(t *testing.T) {
	t.Parallel()
	want := Options{InputDir: InputDir, DocLen: 12, DocSHA256: "ab", Report: "/dev/termination-log",
		MaxStdout: 5, MaxStderr: 6, OpenFiles: 7, KillGrace: 3 * time.Second, CheckFull: []string{"/tmp", "/job"},
		Command: []string{"/grader", "--flag", "--"}}
	got, err := ParseArgs(want.Args())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := ParseArgs([]string{"--max-stdout", "0", "--", "x"}); err == nil {
		t.Error("a zero result cap was accepted")
	}
}

// TestEncodeFits: whatever the result and the log, the report fits the
// termination message and says the truth about both.
func TestEncodeFits(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 100, 2900, 3000, 3100, 5000} {
		for _, logLen := range []int{0, 10, 5000} {
			result := bytes.Repeat([]byte("r"), n)
			log := bytes.Repeat([]byte("\"\x01"), logLen/2) // escaping doubles and more
			msg, inline, err := Encode(Report{Exit: 0}, result, log)
			if err != nil {
				t.Fatal(err)
			}
			if len(msg) > MaxReport {
				t.Fatalf("result %d, log %d: report of %d bytes", n, logLen, len(msg))
			}
			r, err := ParseReport(msg)
			if err != nil {
				t.Fatal(err)
			}
			if inline != (r.Result != nil) || (inline && !bytes.Equal(r.Result, result)) {
				t.Errorf("result %d: inline %v, report has %d bytes", n, inline, len(r.Result))
			}
			if !bytes.HasSuffix(log, []byte(r.LogTail)) || r.LogLen != len(log) {
				t.Errorf("log tail is not the log's end")
			}
		}
	}
	if _, inline, _ := Encode(Report{}, bytes.Repeat([]byte("r"), 2000), nil); !inline {
		t.Error("a 2000-byte result did not fit the report")
	}
}

// FuzzParseReport: a termination message is outside input (a grader may
// write its own before gbpod overwrites it, a cluster may cut it).
func FuzzParseReport(f *testing.F) {
	msg, _, _ := Encode(Report{Exit: 1, CPU: 5}, []byte(`{"a":1}`), []byte("log"))
	f.Add(msg, []byte("log"))
	big, _, _ := Encode(Report{}, bytes.Repeat([]byte("x"), 5000), []byte("l"))
	f.Add(big, append([]byte("l"), Trailer(bytes.Repeat([]byte("x"), 5000))...))
	f.Add([]byte(`{"v":1,"result_len":-1}`), []byte{})
	f.Fuzz(func(t *testing.T, msg, log []byte) {
		r, err := ParseReport(msg)
		if err != nil {
			return
		}
		l, res, err := SplitLog(r, log)
		if err != nil {
			return
		}
		if len(l) != r.LogLen || len(res) != r.ResultLen {
			t.Fatalf("SplitLog returned %d and %d bytes for a report of %d and %d", len(l), len(res), r.LogLen, r.ResultLen)
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatal(err)
		}
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
