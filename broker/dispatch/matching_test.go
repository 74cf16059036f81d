package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// A server takes only the jobs its type covers, however many slots it has
// free; a job several types cover goes to a server of any of them.
func TestServerTakesOnlyTheJobsItsTypeCovers(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1") // pytype
	gpu := e.addGPUType()
	e.addServerOfType("gpu1", "gputype", 4)
	gpuJobs := e.submitTo(gpu, 2)
	py := e.submit(e.platform, 1, 0)
	g := e.connect("g1", 4)
	a := g.nextAssign()
	if a.Lease.JobID != py[0] {
		t.Fatalf("the python server got job %d, want the python job %d", a.Lease.JobID, py[0])
	}
	g.none()
	g.result(a, broker.OutcomeOK, map[string]int{"score": 1})
	g.awaitAckOrReject()
	g.none()

	h := e.connect("gpu1", 4)
	got := map[int64]bool{h.nextAssign().Lease.JobID: true, h.nextAssign().Lease.JobID: true}
	if !got[gpuJobs[0]] || !got[gpuJobs[1]] {
		t.Fatalf("the gpu server got jobs %v, want %v", got, gpuJobs)
	}
	h.none()

	either := e.job(e.platform, 0)
	either.TypeIDs = []int64{e.typeID, gpu}
	id := e.submitJobs(either)[0]
	e.settle()
	if st := e.state(id); st != broker.JobAssigned {
		t.Fatalf("a job both types cover is %s with both servers free, want assigned", st)
	}
}

// Heartbeats extend a lease the server lists, up to twice the job's
// timeout plus the grace; a lease it does not list expires at its deadline.
func TestHeartbeatsExtendListedLeases(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{TickInterval: noTicks, Now: clk.Now, LeaseGrace: time.Second, HeartbeatInterval: time.Second}, "g1")
	g := e.connect("g1", 2)
	ids := e.submit(e.platform, 2, 0) // timeout 10 s: deadline 11 s, at most 21 s
	a, b := g.nextAssign(), g.nextAssign()
	beat := func(seconds int) {
		for range seconds {
			clk.Add(time.Second)
			g.running(a.Lease)
			e.tick()
		}
	}
	beat(15)
	if c := g.nextCancel(); c.Lease != b.Lease {
		t.Fatalf("cancelled lease %d, want the unlisted lease %d", c.Lease.LeaseID, b.Lease.LeaseID)
	}
	g.none()
	e.settle()
	if st := e.state(ids[0]); st != broker.JobAssigned {
		t.Fatalf("the listed job is %s 15 s into its 11 s lease, want still assigned", st)
	}
	beat(6) // 21 s: at the limit
	g.none()
	beat(1)
	if c := g.nextCancel(); c.Lease != a.Lease {
		t.Fatalf("cancelled lease %d, want lease %d past twice its timeout plus the grace", c.Lease.LeaseID, a.Lease.LeaseID)
	}
}

// A job handed back TEMPORARY avoids the server that handed it back for
// AvoidFor while another server that may take it is connected, even when
// that one is busy and the first is free; from AvoidFor on, any server may
// take it.
func TestRequeuedJobAvoidsItsServerForAvoidFor(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	const avoidFor = 30 * time.Second
	e := setup(t, Config{TickInterval: noTicks, AvoidFor: avoidFor, Now: clk.Now}, "g1", "g2")
	g1 := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g1.nextAssign()
	g2 := e.connect("g2", 1)
	e.submit(e.platform, 1, 0)
	g2.nextAssign() // g2 is busy from now on

	g1.result(a, broker.OutcomeTemporary, nil)
	g1.none()
	clk.Add(avoidFor - time.Millisecond)
	e.tick()
	g1.none()
	clk.Add(time.Millisecond)
	e.tick()
	again := g1.nextAssign()
	if again.Lease.JobID != ids[0] || again.Attempt != 2 {
		t.Fatalf("g1 got %v after AvoidFor, want job %d attempt 2", again, ids[0])
	}
	g2.none()
}

// A tick writes connected servers' last contact to the database, at most
// every touchEvery, so that operators and the wakeup logic see it across
// restarts.
func TestTickWritesLastSeen(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now().Truncate(time.Millisecond))
	e := setup(t, Config{TickInterval: noTicks, Now: clk.Now}, "g1")
	g := e.connect("g1", 1)
	stored := func() time.Time {
		t.Helper()
		e.settle()
		s, err := e.db.ServerByName(context.Background(), "g1")
		if err != nil {
			t.Fatal(err)
		}
		return s.LastSeen
	}
	first := clk.Now()
	e.tick()
	if got := stored(); !got.Equal(first) {
		t.Fatalf("last seen after the first tick = %v, want %v", got, first)
	}
	clk.Add(touchEvery - time.Millisecond)
	g.running()
	e.tick()
	if got := stored(); !got.Equal(first) {
		t.Errorf("last seen written again %v after the last write, before touchEvery: %v", touchEvery-time.Millisecond, got)
	}
	clk.Add(time.Millisecond)
	g.running()
	e.tick()
	if got, want := stored(), clk.Now(); !got.Equal(want) {
		t.Errorf("last seen touchEvery after the last write = %v, want %v", got, want)
	}
}

// A job requeued before a restart still avoids the server that handed it
// back, for AvoidFor from the restart, while another server is connected.
func TestRequeuedJobStillAvoidsItsServerAfterARestart(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{TickInterval: noTicks, Now: clk.Now}, "g1", "g2")
	g1 := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g1.nextAssign()
	g2 := e.connect("g2", 1)
	e.submit(e.platform, 1, 0)
	busy := g2.nextAssign()
	g1.result(a, broker.OutcomeTemporary, nil)
	g1.none()
	e.settle()
	e.crash()
	e.start()

	g2 = e.connect("g2", 1, busy.Lease) // still busy
	g1 = e.connect("g1", 1)
	g1.none()
	clk.Add(e.d.Config().AvoidFor)
	e.tick()
	if again := g1.nextAssign(); again.Lease.JobID != ids[0] || again.Attempt != 2 {
		t.Fatalf("g1 got %v after AvoidFor, want job %d attempt 2", again, ids[0])
	}
	g2.none()
}
