package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The broker's own bookkeeping must never cost a job an attempt: a server
// gets no more jobs than it says it has free slots for. These tests pin the
// slot count to what the server reports it runs.

// After a restart, a server comes back still running leases whose deadline
// passed while the broker was down: the broker ended them and queued their
// jobs again, but the server's slots stay taken until it reports them
// (issue 10: the broker assigned two more jobs at once, graderd handed
// them back, and each hand-back cost an attempt).
func TestLeasesEndedWhileDownHoldTheirSlotsWhenHeld(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{TickInterval: time.Hour, Now: clk.Now}, "g1")
	g := e.connect("g1", 2)
	ids := e.submit(e.platform, 2, 0)
	a, b := g.nextAssign(), g.nextAssign()
	e.crash()
	clk.Add(time.Hour) // past both deadlines
	e.start()
	e.settle()
	for _, id := range ids {
		if st := e.state(id); st != broker.JobQueued {
			t.Fatalf("job %d is %s after the restart, want queued again (its lease expired)", id, st)
		}
	}

	g = e.connect("g1", 2, a.Lease, b.Lease)
	g.none() // both slots still run a and b
	if _, _, running, _ := e.d.ServerStatus("g1"); running != 2 {
		t.Errorf("server runs %d leases by the broker's count, want the 2 it reported", running)
	}
	g.result(a, broker.OutcomeOK, map[string]int{"late": 1})
	if m, ok := g.awaitAckOrReject().(*Reject); !ok || m.Lease != a.Lease {
		t.Fatalf("result of the ended lease got %#v, want a Reject", m)
	}
	// a's slot is free now: one job, no more.
	again := g.nextAssign()
	g.none()
	g.result(b, broker.OutcomeOK, map[string]int{"late": 1})
	if m, ok := g.awaitAckOrReject().(*Reject); !ok || m.Lease != b.Lease {
		t.Fatalf("result of the ended lease got %#v, want a Reject", m)
	}
	g.nextAssign()
	g.none()
	if again.Attempt != 2 {
		t.Errorf("job %d came back as attempt %d, want 2", again.Lease.JobID, again.Attempt)
	}
}

// A heartbeat that lists a lease the broker does not know holds its slot
// too, until a heartbeat no longer lists it.
func TestHeartbeatListingAnUnknownLeaseHoldsItsSlot(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 1)
	ghost := LeaseRef{JobID: 999, LeaseID: 999}
	g.running(ghost)
	e.submit(e.platform, 1, 0)
	g.none()
	g.running()
	g.nextAssign()
}

// A cancelled job's lease keeps its slot while the server still lists it.
func TestZombieHoldsItsSlotWhileListed(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 2, 0)
	a := g.nextAssign()
	if err := e.d.CancelJob(context.Background(), ids[0], "platform:plat"); err != nil {
		t.Fatal(err)
	}
	g.nextCancel()
	g.running(a.Lease)
	g.none()
	g.result(a, broker.OutcomeTemporary, nil)
	if b := g.nextAssign(); b.Lease.JobID != ids[1] {
		t.Fatalf("after the cancelled lease's result got job %d, want %d", b.Lease.JobID, ids[1])
	}
}

// A job a server hands back for want of a free slot goes back to the queue
// without using an attempt (with one attempt allowed, counting it would
// fail the job), and the server gets no new job until it reports again.
func TestNotStartedGivesTheAttemptBack(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{MaxAttempts: 1}, "g1")
	g := e.connect("g1", 2)
	ids := e.submit(e.platform, 3, 0)
	a, b := g.nextAssign(), g.nextAssign()
	g.sess.Result(Result{Lease: b.Lease, Outcome: broker.OutcomeNotStarted, Error: "graderd already runs its 1 jobs"})
	if m, ok := g.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("hand-back got %#v, want Ack", m)
	}
	j := e.getJob(b.Lease.JobID)
	if j.State != broker.JobQueued || j.Attempts != 0 || len(j.History) != 1 || j.History[0].End != broker.EndNotStarted ||
		j.History[0].Reason != "graderd already runs its 1 jobs" {
		t.Fatalf("job %d after the hand-back: %s, %d attempt(s), history %+v; want queued with its attempt given back",
			j.ID, j.State, j.Attempts, j.History)
	}
	g.none()           // the server said it is full
	g.running(a.Lease) // one job of 2: a slot is free
	// The job handed back goes first, as the older one.
	if again := g.nextAssign(); again.Lease.JobID != b.Lease.JobID || again.Attempt != 1 {
		t.Fatalf("after a heartbeat with a slot free got job %d attempt %d, want job %d attempt 1 again",
			again.Lease.JobID, again.Attempt, b.Lease.JobID)
	}
	g.none()
	g.result(a, broker.OutcomeOK, map[string]int{"score": 1})
	g.awaitAckOrReject()
	if c := g.nextAssign(); c.Lease.JobID != ids[2] {
		t.Fatalf("after a result got job %d, want %d", c.Lease.JobID, ids[2])
	}
	if n := e.d.MetricsSnapshot().Results[ResultNotStarted]; n != 1 {
		t.Errorf("not_started results counted %d, want 1", n)
	}
}

// A heartbeat the server sent before it received an Assign does not list
// that lease, and says nothing of it: after a partition, heartbeats queued
// behind the cut arrive while the server is only now getting the Assign
// (and, the lease having expired meanwhile, its Cancel). The slot of the
// lease taken back stays taken until a heartbeat that counts its Assign no
// longer lists it, or its result comes.
func TestHeartbeatsOlderThanAnAssignKeepItsSlot(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 2, 0)
	a := g.nextAssign() // the session's first Assign
	if err := e.d.RequeueJob(context.Background(), ids[0], "operator:test"); err != nil {
		t.Fatal(err)
	}
	g.nextCancel()
	// Sent before the server got the Assign: it lists nothing.
	g.sess.Heartbeat(Heartbeat{AssignsReceived: 0})
	g.none()
	// Sent after it got the Assign and the Cancel stopped the job.
	g.sess.Heartbeat(Heartbeat{AssignsReceived: 1})
	if b := g.nextAssign(); b.Lease == a.Lease {
		t.Fatalf("got lease %d again", a.Lease.LeaseID)
	}
}

// A lease the server listed in a heartbeat is let go of by the first
// heartbeat that no longer lists it, whatever it counts: the server had it.
func TestHeartbeatLetsGoOfListedLeases(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 2, 0)
	a := g.nextAssign()
	g.running(a.Lease)
	if err := e.d.CancelJob(context.Background(), ids[0], "platform:plat"); err != nil {
		t.Fatal(err)
	}
	g.nextCancel()
	g.sess.Heartbeat(Heartbeat{AssignsReceived: 0})
	if b := g.nextAssign(); b.Lease.JobID != ids[1] {
		t.Fatalf("got job %d, want %d", b.Lease.JobID, ids[1])
	}
}
