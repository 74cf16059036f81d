package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// A lease's Assign leaves only once the lease is committed. A job cancelled
// in between never reaches its server: neither its Assign nor a Cancel,
// which sent at once would overtake the Assign (graderd would get a Cancel
// for a lease it does not have, then run the cancelled job). Its slot is
// free again at once.
func TestCancelWhileTheLeaseCommitsSendsNothing(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	ids := e.submit(e.platform, 1, 0) // no server yet: queued and committed
	release := e.holdWriter()
	g := e.connect("g1", 1) // leases the job; the commit waits behind the held batch
	done := make(chan error, 1)
	go func() { done <- e.d.CancelJob(context.Background(), ids[0], "operator:test") }()
	testutil.Eventually(t, "the lease and the cancellation queued for the writer", func() bool { return e.pendingOps() == 2 })
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := e.state(ids[0]); st != broker.JobCancelled {
		t.Fatalf("job is %s, want cancelled", st)
	}
	g.none()
	next := e.submit(e.platform, 1, 0)
	if a := g.nextAssign(); a.Lease.JobID != next[0] {
		t.Fatalf("got job %d, want %d on the slot the cancelled job left", a.Lease.JobID, next[0])
	}
}

// Reopening a cancelled job that still sits in its queue (cancelling a
// queued job leaves its entry until a server reaches it) queues it once,
// with fresh attempts.
func TestReopenCancelledJobStillInItsQueue(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{MaxAttempts: 3}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	g.sess.SetSlots(0)
	g.result(a, broker.OutcomeTemporary, nil) // queued again, one attempt used
	e.waitState(ids[0], broker.JobQueued)
	ctx := context.Background()
	if err := e.d.CancelJob(ctx, ids[0], "operator:test"); err != nil {
		t.Fatal(err)
	}
	if err := e.d.RequeueJob(ctx, ids[0], "operator:test"); err != nil {
		t.Fatal(err)
	}
	if st := e.d.Stats(); st.Queued != 1 {
		t.Fatalf("%d jobs queued after the reopen, want 1", st.Queued)
	}
	g.sess.SetSlots(2)
	again := g.nextAssign()
	if again.Lease.JobID != ids[0] || again.Attempt != 1 {
		t.Fatalf("got job %d attempt %d, want job %d attempt 1 (fresh attempts)", again.Lease.JobID, again.Attempt, ids[0])
	}
	g.none()
	if st := e.d.Stats(); st.Queued != 0 || st.Running != 1 {
		t.Fatalf("queued %d, running %d; want 0 and 1", st.Queued, st.Running)
	}
	g.result(again, broker.OutcomeOK, map[string]int{"score": 1})
	e.waitState(ids[0], broker.JobDone)
}

// A lease whose Assign never left the broker (its server went away while
// the lease was being committed, or before the transport took the Assign;
// an operator or the deadline took it back while it was being committed)
// costs its job no attempt when the broker ends it: the job never ran. An
// Assign the transport took may have run, and counts.
func TestLeaseWhoseAssignNeverLeftCostsNoAttempt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// lose makes g1 lose the job's lease and returns the server that
		// gets the job next.
		lose        func(t *testing.T, e *env, clk *testutil.Clock, job int64) *fakeServer
		wantAttempt int
	}{
		{"disconnected while the lease commits, reconnected", func(_ *testing.T, e *env, _ *testutil.Clock, _ int64) *fakeServer {
			release := e.holdWriter()
			g := e.connect("g1", 1)
			g.close()
			release()
			e.settle()
			return e.connect("g1", 1)
		}, 1},
		{"disconnected with the Assign in its outbox, reconnected", func(_ *testing.T, e *env, _ *testutil.Clock, _ int64) *fakeServer {
			g := e.connect("g1", 1)
			e.settle() // the Assign waits in the outbox; nothing took it
			g.close()
			return e.connect("g1", 1)
		}, 1},
		{"disconnected while the lease commits, gone past the grace", func(_ *testing.T, e *env, clk *testutil.Clock, job int64) *fakeServer {
			release := e.holdWriter()
			g := e.connect("g1", 1)
			g.close()
			release()
			e.settle()
			clk.Add(time.Hour)
			e.d.onTick(clk.Now())
			e.waitState(job, broker.JobQueued)
			return e.connect("g2", 1)
		}, 1},
		{"requeued by an operator while the lease commits", func(t *testing.T, e *env, _ *testutil.Clock, job int64) *fakeServer {
			release := e.holdWriter()
			g := e.connect("g1", 1)
			done := make(chan error, 1)
			go func() { done <- e.d.RequeueJob(context.Background(), job, "operator:test") }()
			testutil.Eventually(t, "the lease and the requeue queued for the writer", func() bool { return e.pendingOps() >= 2 })
			release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			return g
		}, 1},
		{"past its deadline while the lease commits", func(_ *testing.T, e *env, clk *testutil.Clock, _ int64) *fakeServer {
			release := e.holdWriter()
			g := e.connect("g1", 1)
			clk.Add(time.Hour)
			e.d.onTick(clk.Now())
			release()
			return g
		}, 1},
		{"Assign taken by the transport, reconnected without it", func(_ *testing.T, e *env, _ *testutil.Clock, _ int64) *fakeServer {
			g := e.connect("g1", 1)
			g.nextAssign()
			g.close()
			return e.connect("g1", 1)
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := testutil.NewClock(time.Now())
			e := setup(t, Config{MaxAttempts: 3, TickInterval: time.Hour, Now: clk.Now}, "g1", "g2")
			ids := e.submit(e.platform, 1, 0)
			g := tc.lose(t, e, clk, ids[0])
			a := g.nextAssign()
			if a.Lease.JobID != ids[0] || a.Attempt != tc.wantAttempt {
				t.Fatalf("got job %d attempt %d, want job %d attempt %d", a.Lease.JobID, a.Attempt, ids[0], tc.wantAttempt)
			}
			if j := e.getJob(ids[0]); j.Attempts != tc.wantAttempt {
				t.Fatalf("job's stored attempts %d, want %d", j.Attempts, tc.wantAttempt)
			}
		})
	}
}

// A lease whose deadline passes while its server is away, within the
// reconnect grace, waits for the server: it may report the result when it
// comes back, and the attempt stands.
func TestLeaseDeadlineWaitsForADisconnectedServer(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{ReconnectGrace: 10 * time.Minute, TickInterval: noTicks, Now: clk.Now}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	g.close()
	clk.Add(5 * time.Minute) // past the 10 s job's lease deadline
	e.tick()
	e.settle()
	if st := e.state(ids[0]); st != broker.JobAssigned {
		t.Fatalf("job %d is %s with its server away within the grace, want assigned", ids[0], st)
	}
	g = e.connect("g1", 1, a.Lease)
	g.result(a, broker.OutcomeOK, map[string]int{"x": 1})
	if m, ok := g.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("result after reconnecting: %#v, want Ack", m)
	}
	e.waitState(ids[0], broker.JobDone)
}
