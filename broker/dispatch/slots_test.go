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
// fail the job), and the server gets no new job until it frees a slot by
// its own word.
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
	g.none() // the server said it is full
	g.running(a.Lease)
	g.none() // a heartbeat frees nothing
	g.result(a, broker.OutcomeOK, map[string]int{"score": 1})
	g.awaitAckOrReject()
	// A result frees a slot by the server's word; the dispatcher's count
	// says two, and the job handed back goes first, as the older one.
	again, c := g.nextAssign(), g.nextAssign()
	if again.Lease.JobID != b.Lease.JobID || again.Attempt != 1 || c.Lease.JobID != ids[2] {
		t.Fatalf("after a result got job %d attempt %d and job %d; want job %d attempt 1 again, then job %d",
			again.Lease.JobID, again.Attempt, c.Lease.JobID, b.Lease.JobID, ids[2])
	}
	if n := e.d.MetricsSnapshot().Results[ResultNotStarted]; n != 1 {
		t.Errorf("not_started results counted %d, want 1", n)
	}
}
