package graderd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/spool"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// blockingExecutor runs until released or cancelled, so that tests control
// when jobs end without spawning processes.
type blockingExecutor struct {
	started chan executor.Job
	release chan struct{}
}

var _ executor.Executor = (*blockingExecutor)(nil)

func newBlockingExecutor() *blockingExecutor {
	return &blockingExecutor{started: make(chan executor.Job, 100), release: make(chan struct{})}
}

func (b *blockingExecutor) Run(ctx context.Context, job executor.Job) executor.Result {
	b.started <- job
	select {
	case <-b.release:
		return executor.Result{Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: []byte(`{"released":true}`), Duration: time.Millisecond}
	case <-ctx.Done():
		return executor.Result{Outcome: gradebrokerv1.Outcome_OUTCOME_TEMPORARY, Error: executor.ErrorCancelled}
	}
}

func (b *blockingExecutor) waitStarted(t *testing.T) executor.Job {
	t.Helper()
	select {
	case j := <-b.started:
		return j
	case <-time.After(10 * time.Second):
		t.Fatal("executor did not start the job within 10s")
	}
	return executor.Job{}
}

// countingExecutor counts its runs.
type countingExecutor struct{ runs chan executor.Job }

func (c *countingExecutor) Run(ctx context.Context, job executor.Job) executor.Result {
	c.runs <- job
	return executor.Noop{}.Run(ctx, job)
}

var ignoreDuration = protocmp.IgnoreFields(&gradebrokerv1.Result{}, "duration")

func TestHelloWelcome(t *testing.T) {
	t.Parallel()
	h := setup(t, func(c *Config) { c.Slots = 3 })
	bs := h.fb.nextStream(t)
	want := &gradebrokerv1.Hello{Version: Version, Slots: 3, Hostname: "test-host",
		Executors: []*gradebrokerv1.ExecutorInfo{{Name: "default", Type: "noop"}}}
	if diff := cmp.Diff(want, bs.hello, protocmp.Transform()); diff != "" {
		t.Errorf("Hello (-want +got):\n%s", diff)
	}
	testutil.Eventually(t, "the Welcome to be logged", func() bool {
		l := h.logs.String()
		return strings.Contains(l, "connected to broker") && strings.Contains(l, "server=grader1") && strings.Contains(l, "type=python")
	})
}

func TestAssignResultAck(t *testing.T) {
	t.Parallel()
	h := setup(t, nil)
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 7, LeaseId: 70, Attempt: 1, Name: "alice/sum", Jobdata: []byte(`{"x":1}`), Tags: []string{"python3"}})
	got := bs.result(t)
	want := &gradebrokerv1.Result{JobId: 7, LeaseId: 70, Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: []byte(`{"noop":true}`)}
	if diff := cmp.Diff(want, got, protocmp.Transform(), ignoreDuration); diff != "" {
		t.Errorf("Result (-want +got):\n%s", diff)
	}
	// Put happens before the result is handed to the sender, so the file
	// must be there by the time the broker has the result.
	if diff := cmp.Diff([]string{"70"}, h.spooled()); diff != "" {
		t.Fatalf("spool when the result arrived (-want +got):\n%s", diff)
	}
	bs.ack(ref(7, 70))
	testutil.Eventually(t, "the acked result to leave the spool", func() bool { return len(h.spooled()) == 0 })
	if err := h.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestResultResentAfterStreamBreak(t *testing.T) {
	t.Parallel()
	h := setup(t, nil)
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 2, LeaseId: 21})
	r1 := bs.result(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 10})
	r2 := bs.result(t)
	if diff := cmp.Diff([]string{"10", "21"}, h.spooled()); diff != "" {
		t.Fatalf("spool (-want +got):\n%s", diff)
	}
	// The broker dies after receiving the results and before acking them.
	bs.kill <- status.Error(codes.Unavailable, "broker going away")

	bs2 := h.fb.nextStream(t)
	// Hello names the leases whose results are pending, so the broker keeps
	// them instead of requeueing.
	wantHeld := []*gradebrokerv1.LeaseRef{ref(1, 10), ref(2, 21)}
	if diff := cmp.Diff(wantHeld, bs2.hello.GetRunning(), protocmp.Transform()); diff != "" {
		t.Errorf("Hello.running after reconnect (-want +got):\n%s", diff)
	}
	// Re-sent first, in lease order.
	for _, want := range []*gradebrokerv1.Result{r2, r1} {
		got := bs2.result(t)
		if !proto.Equal(want, got) {
			t.Errorf("re-sent result = %v, want %v", got, want)
		}
	}
	bs2.ack(ref(1, 10), ref(2, 21))
	testutil.Eventually(t, "the spool to empty", func() bool { return len(h.spooled()) == 0 })
}

func TestResultsOfAnEarlierRunAreSent(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	spoolDir := filepath.Join(t.TempDir(), "spool")
	sp, err := spool.Open(spoolDir)
	if err != nil {
		t.Fatal(err)
	}
	old := &gradebrokerv1.Result{JobId: 5, LeaseId: 50, Outcome: gradebrokerv1.Outcome_OUTCOME_FATAL, Error: "from before the crash"}
	if err := sp.Put(old); err != nil {
		t.Fatal(err)
	}
	h := startDaemon(t, fb, func(c *Config) { c.SpoolDir = spoolDir }, nil)
	bs := fb.nextStream(t)
	if diff := cmp.Diff([]*gradebrokerv1.LeaseRef{ref(5, 50)}, bs.hello.GetRunning(), protocmp.Transform()); diff != "" {
		t.Errorf("Hello.running (-want +got):\n%s", diff)
	}
	if got := bs.result(t); !proto.Equal(old, got) {
		t.Errorf("result = %v, want %v", got, old)
	}
	bs.ack(ref(5, 50))
	testutil.Eventually(t, "the spool to empty", func() bool { return len(h.spooled()) == 0 })
}

func TestRejectDropsResult(t *testing.T) {
	t.Parallel()
	h := setup(t, nil)
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 10})
	bs.result(t)
	bs.send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Reject{Reject: &gradebrokerv1.Reject{
		Lease: ref(1, 10), Code: int32(codes.FailedPrecondition), Message: "lease 10 is no longer current",
	}}})
	testutil.Eventually(t, "the refused result to leave the spool", func() bool { return len(h.spooled()) == 0 })
	testutil.Eventually(t, "the refusal to be logged at WARN", func() bool {
		for l := range strings.Lines(h.logs.String()) {
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "broker refused result for job 1 lease 10: lease 10 is no longer current") {
				return true
			}
		}
		return false
	})
	// Dropped, not retried: a new stream gets nothing.
	bs.kill <- status.Error(codes.Unavailable, "bye")
	bs2 := h.fb.nextStream(t)
	if n := len(bs2.hello.GetRunning()); n != 0 {
		t.Errorf("Hello.running = %v, want none", bs2.hello.GetRunning())
	}
	bs2.noResult(t, 300*time.Millisecond)
}

func TestCancelStopsExecJob(t *testing.T) {
	t.Parallel()
	// The grader writes its pid where the test can see it, then becomes a
	// sleep far longer than the test may wait: only the Cancel ends it.
	// Unconfined, so that the pid and the file are the host's: the
	// sandboxed cancel is TestEscapeDetachedChildGoneAfterTimeout's.
	pidFile := filepath.Join(t.TempDir(), "grader.pid")
	h := setup(t, func(c *Config) {
		c.DefaultExecutor = ExecutorSpec{Type: ExecutorExec, Sandbox: SandboxNone,
			Command: []string{"sh", "-c", `echo $$ > ` + pidFile + `; exec sleep 3600`}}
	})
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 3, LeaseId: 30, Jobdata: []byte(`{}`)})
	var pid int
	testutil.Eventually(t, "the grader to start", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	bs.send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Cancel{Cancel: &gradebrokerv1.Cancel{Lease: ref(3, 30), Reason: "platform cancelled the job"}}})
	r := bs.result(t)
	if r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || r.GetError() != executor.ErrorCancelled {
		t.Errorf("result = %v, want TEMPORARY %q", r, executor.ErrorCancelled)
	}
	// The result comes once the grader is gone, killed and reaped.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the grader (pid %d) is still there after its result: kill -0 = %v", pid, err)
	}
}

func TestHeartbeatListsRunningLeases(t *testing.T) {
	t.Parallel()
	ex := newBlockingExecutor()
	h := setup(t, func(c *Config) { c.Executor = ex })
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 11})
	bs.assign(&gradebrokerv1.Assign{JobId: 2, LeaseId: 12})
	ex.waitStarted(t)
	ex.waitStarted(t)
	want := []*gradebrokerv1.LeaseRef{ref(1, 11), ref(2, 12)}
	// Each heartbeat also says how many Assigns it reflects, so that the
	// broker can tell a lease not listed yet from one let go of.
	bs.expect(t, 5*time.Second, "a heartbeat listing both leases, counting 2 Assigns", func(m *gradebrokerv1.ConnectRequest) bool {
		hb := m.GetHeartbeat()
		return hb != nil && cmp.Diff(want, hb.GetRunning(), protocmp.Transform()) == "" && hb.GetAssignsReceived() == 2
	})
	close(ex.release)
	bs.result(t)
	bs.result(t)
	bs.expect(t, 5*time.Second, "an empty heartbeat counting 2 Assigns", func(m *gradebrokerv1.ConnectRequest) bool {
		return m.GetHeartbeat() != nil && len(m.GetHeartbeat().GetRunning()) == 0 && m.GetHeartbeat().GetAssignsReceived() == 2
	})
}

func TestAssignBeyondSlotsIsHandedBack(t *testing.T) {
	t.Parallel()
	ex := newBlockingExecutor()
	h := setup(t, func(c *Config) { c.Executor = ex; c.Slots = 1 })
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 1})
	ex.waitStarted(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 2, LeaseId: 2})
	r := bs.result(t)
	if r.GetLeaseId() != 2 || r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_NOT_STARTED || !strings.Contains(r.GetError(), "slots") {
		t.Errorf("result = %v, want lease 2 NOT_STARTED about slots", r)
	}
	close(ex.release)
	if r := bs.result(t); r.GetLeaseId() != 1 || r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Errorf("result = %v, want lease 1 OK", r)
	}
}

func TestSetSlots(t *testing.T) {
	t.Parallel()
	h := setup(t, nil)
	bs := h.fb.nextStream(t)
	if err := h.d.SetSlots(2); err != nil {
		t.Fatal(err)
	}
	m := bs.expect(t, 5*time.Second, "Slots", func(m *gradebrokerv1.ConnectRequest) bool { return m.GetSlots() != nil })
	if got := m.GetSlots().GetSlots(); got != 2 {
		t.Errorf("Slots = %d, want 2", got)
	}
	if err := h.d.SetSlots(5); err == nil {
		t.Error("SetSlots(5) with 4 configured slots succeeded")
	}
}

func TestDrainWaitsForRunningJob(t *testing.T) {
	t.Parallel()
	ex := newBlockingExecutor()
	h := setup(t, func(c *Config) { c.Executor = ex })
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 4, LeaseId: 40})
	ex.waitStarted(t)

	h.cancel()
	m := bs.expect(t, 5*time.Second, "Slots or Result", func(m *gradebrokerv1.ConnectRequest) bool {
		return m.GetSlots() != nil || m.GetResult() != nil
	})
	if m.GetSlots() == nil || m.GetSlots().GetSlots() != 0 {
		t.Fatalf("first message after cancel = %v, want Slots{0}", m)
	}
	// For a while, Run must not return: the wait is what is tested, an
	// absence.
	select {
	case err := <-h.done:
		t.Fatalf("Run returned (%v) while a job was running", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(ex.release)
	r := bs.result(t)
	if r.GetLeaseId() != 40 || r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Errorf("result = %v, want lease 40 OK", r)
	}
	bs.ack(ref(4, 40))
	if err := h.stop(); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if s := h.spooled(); len(s) != 0 {
		t.Errorf("spool after drain = %v, want empty", s)
	}
}

func TestDrainTimeoutCancelsJobAndSendsResult(t *testing.T) {
	t.Parallel()
	ex := newBlockingExecutor()
	h := setup(t, func(c *Config) { c.Executor = ex; c.DrainTimeout = 200 * time.Millisecond })
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 4, LeaseId: 41})
	ex.waitStarted(t)
	h.cancel()
	r := bs.result(t)
	if r.GetLeaseId() != 41 || r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || r.GetError() != executor.ErrorCancelled {
		t.Errorf("result = %v, want lease 41 TEMPORARY cancelled", r)
	}
	bs.ack(ref(4, 41))
	if err := h.stop(); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

func TestAbortKeepsResultsInSpool(t *testing.T) {
	t.Parallel()
	ex := newBlockingExecutor()
	h := setup(t, func(c *Config) { c.Executor = ex })
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 9, LeaseId: 90})
	ex.waitStarted(t)
	h.cancel()
	bs.expect(t, 5*time.Second, "Slots", func(m *gradebrokerv1.ConnectRequest) bool { return m.GetSlots() != nil })
	h.d.Abort()
	select {
	case err := <-h.done:
		h.done <- err
		if !errors.Is(err, ErrAborted) {
			t.Errorf("Run = %v, want ErrAborted", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of Abort")
	}
	if diff := cmp.Diff([]string{"90"}, h.spooled()); diff != "" {
		t.Errorf("spool after abort (-want +got):\n%s", diff)
	}
}

func TestReconnectAfterBrokerRestart(t *testing.T) {
	t.Parallel()
	h := setup(t, nil)
	h.fb.nextStream(t)
	h.fb.restart(t)
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 100})
	if r := bs.result(t); r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Errorf("result after reconnect = %v, want OK", r)
	}
	testutil.Eventually(t, "the lost connection to be logged", func() bool {
		return strings.Contains(h.logs.String(), "connection to the broker failed; reconnecting")
	})
}

// TestBrokerGoneAfterWelcome: a stream the broker had accepted ends when
// the broker goes away; graderd says so, with how long the stream was up,
// and does not blame its certificate, which the broker had accepted. (The
// certificate hint is for a connection closed before any Welcome; the
// "client certificate from another CA" case of TestConnectionTestFailures
// keeps it.)
func TestBrokerGoneAfterWelcome(t *testing.T) {
	t.Parallel()
	h := setup(t, nil)
	h.fb.nextStream(t)
	testutil.Eventually(t, "graderd to have the Welcome", func() bool {
		return strings.Contains(h.logs.String(), `msg="connected to broker"`)
	})
	h.fb.stop()
	var line string
	testutil.Eventually(t, "the lost stream to be logged", func() bool {
		for _, l := range strings.Split(h.logs.String(), "\n") {
			if strings.Contains(l, "connection to the broker failed; reconnecting") {
				line = l
				return true
			}
		}
		return false
	})
	if strings.Contains(line, "certificate") {
		t.Errorf("graderd blames its certificate for a broker gone after the Welcome:\n%s", line)
	}
	if !strings.Contains(line, "the stream had been up for") {
		t.Errorf("the log does not say the stream had been up:\n%s", line)
	}
}

func TestRefusedCertificateIsRetried(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	fb.setRefuse(status.Error(codes.PermissionDenied, "certificate serial 1f is not registered; ask an operator to add it"))
	h := startDaemon(t, fb, nil, nil)
	testutil.Eventually(t, "the refusal to be logged", func() bool {
		l := h.logs.String()
		return strings.Contains(l, "broker refused this server's certificate") && strings.Contains(l, "serial 1f is not registered")
	})
	// The operator registers the server; graderd gets in by itself.
	fb.setRefuse(nil)
	fb.nextStream(t)
}

func TestExecutorChosenByFirstTag(t *testing.T) {
	t.Parallel()
	echo := func(s string) ExecutorSpec {
		return ExecutorSpec{Type: ExecutorExec, Command: []string{"sh", "-c", "cat >/dev/null; echo '{\"by\":\"" + s + "\"}'"}}
	}
	h := setup(t, func(c *Config) {
		c.Executors = map[string]ExecutorSpec{"python3": echo("python3"), "gpu": echo("gpu")}
		c.DefaultExecutor = echo("default")
	})
	bs := h.fb.nextStream(t)
	for i, tc := range []struct {
		tags []string
		want string
	}{
		{[]string{"course-1", "gpu", "python3"}, `{"by":"gpu"}`},
		{[]string{"python3"}, `{"by":"python3"}`},
		{[]string{"other"}, `{"by":"default"}`},
		{nil, `{"by":"default"}`},
	} {
		bs.assign(&gradebrokerv1.Assign{JobId: int64(i + 1), LeaseId: int64(i + 1), Tags: tc.tags, Jobdata: []byte(`{}`)})
		r := bs.result(t)
		if got := string(r.GetResult()); got != tc.want || r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK {
			t.Errorf("tags %v: result %s (%v, %q), want %s", tc.tags, got, r.GetOutcome(), r.GetError(), tc.want)
		}
	}
}

func TestNoExecutorHandsJobBack(t *testing.T) {
	t.Parallel()
	h := setup(t, func(c *Config) {
		c.DefaultExecutor = ExecutorSpec{}
		c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorNoop}}
	})
	bs := h.fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Tags: []string{"python3"}})
	r := bs.result(t)
	if r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || !strings.Contains(r.GetError(), "no executor") {
		t.Errorf("result = %v, want TEMPORARY no executor", r)
	}
}

func TestTestBehaviors(t *testing.T) {
	t.Parallel()
	jobdata := []byte(`{"task":"sum","answer": 42}`)
	for _, tc := range []struct {
		behavior int
		check    func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor)
	}{
		{TestBehaviorNormal, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			r := bs.result(t)
			if r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK || string(r.GetResult()) != `{"noop":true}` || len(ex.runs) != 1 {
				t.Errorf("result = %v (executor runs %d), want the executor's OK", r, len(ex.runs))
			}
		}},
		{TestBehaviorHang, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			// Heartbeats keep naming the lease, and no result comes.
			for range 3 {
				bs.expect(t, 5*time.Second, "a heartbeat naming the lease", func(m *gradebrokerv1.ConnectRequest) bool {
					hb := m.GetHeartbeat()
					return hb != nil && len(hb.GetRunning()) == 1 && hb.GetRunning()[0].GetLeaseId() == 10
				})
			}
			bs.noResult(t, 300*time.Millisecond)
			if len(ex.runs) != 0 {
				t.Error("the executor ran")
			}
		}},
		{TestBehaviorSlowStart, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			start := time.Now()
			r := bs.result(t)
			if took := time.Since(start); took < 250*time.Millisecond {
				t.Errorf("result after %v, want at least the 300ms delay", took)
			}
			if r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK || len(ex.runs) != 1 {
				t.Errorf("result = %v, want the executor's OK", r)
			}
		}},
		{TestBehaviorFatal, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			want := &gradebrokerv1.Result{JobId: 1, LeaseId: 10, Outcome: gradebrokerv1.Outcome_OUTCOME_FATAL, Result: []byte(`{"error":"testbehavior 3"}`), Error: "testbehavior 3"}
			if diff := cmp.Diff(want, bs.result(t), protocmp.Transform(), ignoreDuration); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if len(ex.runs) != 0 {
				t.Error("the executor ran")
			}
		}},
		{TestBehaviorTemporary, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			want := &gradebrokerv1.Result{JobId: 1, LeaseId: 10, Outcome: gradebrokerv1.Outcome_OUTCOME_TEMPORARY, Error: "testbehavior 4"}
			if diff := cmp.Diff(want, bs.result(t), protocmp.Transform(), ignoreDuration); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		}},
		{TestBehaviorInvalidResult, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			r := bs.result(t)
			if r.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK || json.Valid(r.GetResult()) {
				t.Errorf("result = %v, want OK with a result that is not JSON", r)
			}
		}},
		{TestBehaviorEcho, func(t *testing.T, h *harness, bs *brokerStream, ex *countingExecutor) {
			want := &gradebrokerv1.Result{JobId: 1, LeaseId: 10, Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: jobdata}
			if diff := cmp.Diff(want, bs.result(t), protocmp.Transform(), ignoreDuration); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		}},
	} {
		t.Run(strings.TrimPrefix(behaviorName(tc.behavior), "TestBehavior"), func(t *testing.T) {
			t.Parallel()
			ex := &countingExecutor{runs: make(chan executor.Job, 10)}
			fb := startFakeBroker(t, newTestPKI(t))
			h := startDaemon(t, fb, func(c *Config) {
				c.Executor = ex
				c.TestBehavior = tc.behavior
				c.DrainTimeout = 300 * time.Millisecond
			},
				func(d *Daemon) { d.slowStart = 300 * time.Millisecond })
			bs := fb.nextStream(t)
			bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 10, Jobdata: jobdata, Timeout: durationpb.New(time.Minute)})
			tc.check(t, h, bs, ex)
		})
	}
}

func behaviorName(b int) string {
	return [...]string{"Normal", "Hang", "SlowStart", "Fatal", "Temporary", "InvalidResult", "Echo"}[b]
}

func TestConnectionTest(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	log, _ := newTestLogger(t)
	d, err := New(testConfig(t, fb), log)
	if err != nil {
		t.Fatal(err)
	}
	w, err := d.Test(context.Background())
	if err != nil {
		t.Fatalf("Test: %v", err)
	}
	if diff := cmp.Diff(fb.welcome, w, protocmp.Transform()); diff != "" {
		t.Errorf("Welcome (-want +got):\n%s", diff)
	}
	bs := fb.nextStream(t)
	if bs.hello.GetSlots() != 0 {
		t.Errorf("Test's Hello has %d slots, want 0", bs.hello.GetSlots())
	}
}

func TestConnectionTestFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, fb *fakeBroker, cfg *Config, d **Daemon)
		check   func(t *testing.T, fb *fakeBroker, err error)
	}{
		{"refused", func(t *testing.T, fb *fakeBroker, cfg *Config, d **Daemon) {
			fb.setRefuse(status.Error(codes.PermissionDenied, "certificate CN=grader1,OU=server (serial 1f) is not registered"))
		}, func(t *testing.T, fb *fakeBroker, err error) {
			var refused *RefusedError
			if !errors.As(err, &refused) || refused.Code != codes.PermissionDenied {
				t.Fatalf("error %v is not a PermissionDenied RefusedError", err)
			}
			if want := "broker refused this server's certificate: certificate CN=grader1,OU=server (serial 1f) is not registered"; err.Error() != want {
				t.Errorf("error = %q, want %q", err, want)
			}
		}},
		{"unknown CA", func(t *testing.T, fb *fakeBroker, cfg *Config, d **Daemon) {
			other := newTestPKI(t)
			cfg.CAFile = other.CAFile
		}, func(t *testing.T, fb *fakeBroker, err error) {
			if !strings.Contains(err.Error(), "TLS handshake failed") {
				t.Errorf("error %q does not say the TLS handshake failed", err)
			}
		}},
		{"client certificate from another CA", func(t *testing.T, fb *fakeBroker, cfg *Config, d **Daemon) {
			other := newTestPKI(t)
			cfg.CertFile, cfg.KeyFile = other.CertFile, other.KeyFile
		}, func(t *testing.T, fb *fakeBroker, err error) {
			if !strings.Contains(err.Error(), "TLS handshake failed") && !strings.Contains(err.Error(), "does not accept this server's certificate") {
				t.Errorf("error %q does not point at the certificate", err)
			}
		}},
		{"no broker", func(t *testing.T, fb *fakeBroker, cfg *Config, d **Daemon) {
			fb.stop()
		}, func(t *testing.T, fb *fakeBroker, err error) {
			if !strings.Contains(err.Error(), fb.addr) {
				t.Errorf("error %q does not name the broker", err)
			}
		}},
		{"no welcome", func(t *testing.T, fb *fakeBroker, cfg *Config, d **Daemon) {
			fb.setSilent()
			(*d).welcomeTimeout = 200 * time.Millisecond
		}, func(t *testing.T, fb *fakeBroker, err error) {
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no Welcome") {
				t.Errorf("error %q is not a Welcome timeout", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fb := startFakeBroker(t, newTestPKI(t))
			cfg := testConfig(t, fb)
			var d *Daemon
			build := func() {
				log, _ := newTestLogger(t)
				var err error
				if d, err = New(cfg, log); err != nil {
					t.Fatal(err)
				}
			}
			build()
			tc.prepare(t, fb, &cfg, &d)
			if cfg.CAFile != fb.pki.CAFile || cfg.CertFile != fb.pki.CertFile {
				build()
			}
			_, err := d.Test(context.Background())
			if err == nil {
				t.Fatal("Test succeeded")
			}
			t.Logf("error: %v", err)
			tc.check(t, fb, err)
		})
	}
}
