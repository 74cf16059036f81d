package dispatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// opsClock is a settable clock that starts at the real time, since the
// store stamps jobs with the real time.
type opsClock = testutil.Clock

func newOpsClock() *opsClock { return testutil.NewClock(time.Now()) }

// addGPUType registers tag "gpu" and type "gputype", which no server has.
func (e *env) addGPUType() int64 {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.db.AddTag(ctx, "gpu", ""); err != nil {
		e.t.Fatal(err)
	}
	st, err := e.db.AddServerType(ctx, "gputype", []string{"gpu"})
	if err != nil {
		e.t.Fatal(err)
	}
	return st.ID
}

func (e *env) submitTo(typeID int64, n int) []int64 {
	e.t.Helper()
	jobs := make([]broker.NewJob, n)
	for i := range jobs {
		jobs[i] = broker.NewJob{PlatformID: e.platform.ID, Name: "j", Timeout: 10 * time.Second,
			JobData: []byte(`{}`), TypeIDs: []int64{typeID}}
	}
	ins, err := e.d.Submit(context.Background(), jobs, nil, "platform:plat")
	if err != nil {
		e.t.Fatal(err)
	}
	ids := make([]int64, n)
	for i, in := range ins {
		ids[i] = in.ID
	}
	return ids
}

func TestQueueStatsAndStarvingClasses(t *testing.T) {
	t.Parallel()
	clk := newOpsClock()
	e := setup(t, Config{Now: clk.Now}, "g1", "g2")
	gpu := e.addGPUType()
	ctx := context.Background()
	e.submit(e.platform, 5, 0)
	gpuJobs := e.submitTo(gpu, 2)
	clk.Add(10 * time.Minute)
	g1 := e.connect("g1", 2)
	g1.nextAssign()
	g1.nextAssign()

	st, err := e.d.QueueStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tq := range st.Types {
		// The clock started a moment before the jobs were stamped.
		if tq.OldestAge < 9*time.Minute || tq.OldestAge > 11*time.Minute {
			t.Errorf("%s: oldest wait %s, want about 10m", tq.Type, tq.OldestAge)
		}
	}
	want := QueueStats{Waiting: 5, Running: 2, Types: []TypeQueue{
		{TypeID: gpu, Type: "gputype", Tags: []string{"gpu"}, Waiting: 2},
		{TypeID: e.typeID, Type: "pytype", Tags: []string{"py"}, Waiting: 3, Running: 2, Connected: 1, FreeSlots: 0},
	}}
	if diff := cmp.Diff(want, st, cmpopts.IgnoreFields(TypeQueue{}, "OldestAge")); diff != "" {
		t.Errorf("QueueStats (-want +got):\n%s", diff)
	}

	starving, err := e.d.Starving(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(starving) != 1 || starving[0].Waiting != 2 || !cmp.Equal(starving[0].Types, []string{"gputype"}) ||
		starving[0].Connected != 0 || starving[0].OldestAge < 9*time.Minute {
		t.Errorf("Starving = %+v, want the gpu class alone", starving)
	}

	// Jobs cancelled while queued stay in their class until a server
	// reaches them; they do not wait for anything.
	for _, id := range gpuJobs {
		if err := e.d.CancelJob(ctx, id, "platform:plat"); err != nil {
			t.Fatal(err)
		}
	}
	if starving, _ := e.d.Starving(ctx); len(starving) != 0 {
		t.Errorf("after cancelling the gpu jobs: Starving = %+v, want none", starving)
	}
	st, _ = e.d.QueueStats(ctx)
	if st.Waiting != 3 || st.Types[0].Waiting != 0 || st.Types[0].OldestAge != 0 {
		t.Errorf("after cancelling the gpu jobs: %+v", st)
	}

	// A drained server takes no new jobs: its class starves.
	if err := e.d.DrainServer(ctx, "g1", true, "operator:alice"); err != nil {
		t.Fatal(err)
	}
	starving, _ = e.d.Starving(ctx)
	if len(starving) != 1 || starving[0].Connected != 1 || starving[0].Accepting != 0 || starving[0].Waiting != 3 {
		t.Errorf("with g1 drained: Starving = %+v, want the py class, 1 connected, 0 accepting", starving)
	}
	st, _ = e.d.QueueStats(ctx)
	if tq := st.Types[1]; tq.Connected != 1 || tq.Drained != 1 || tq.FreeSlots != 0 || tq.Running != 2 {
		t.Errorf("with g1 drained: %+v", tq)
	}
}

func TestRequeueServerJobsGivesBackTheAttempt(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1", "g2")
	ctx := context.Background()
	ids := e.submit(e.platform, 3, 0)
	g1 := e.connect("g1", 2)
	a1, a2 := g1.nextAssign(), g1.nextAssign()

	n, err := e.d.RequeueServerJobs(ctx, "g1", "operator:alice")
	if err != nil || n != 2 {
		t.Fatalf("RequeueServerJobs = %d, %v; want 2", n, err)
	}
	cancelled := map[int64]bool{}
	for range 2 {
		c := g1.nextCancel()
		cancelled[c.Lease.LeaseID] = true
	}
	if !cancelled[a1.Lease.LeaseID] || !cancelled[a2.Lease.LeaseID] {
		t.Errorf("g1 was told to cancel %v, want leases %d and %d", cancelled, a1.Lease.LeaseID, a2.Lease.LeaseID)
	}
	for _, a := range []*Assign{a1, a2} {
		j, err := e.db.GetJob(ctx, a.Lease.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != broker.JobQueued || j.MaxAttempts != 4 || j.Attempts != 1 {
			t.Errorf("job %d after the requeue: state %s, attempts %d of %d; want queued, 1 of 4", j.ID, j.State, j.Attempts, j.MaxAttempts)
		}
		if last := j.Events[len(j.Events)-1]; last.Kind != "requeued" || last.Actor != "operator:alice" {
			t.Errorf("job %d: last event %+v, want requeued by operator:alice", j.ID, last)
		}
	}
	// g1's slots stay taken until it lets go; the jobs go to g2.
	g1.none()
	g2 := e.connect("g2", 4)
	got := map[int64]bool{}
	for range 3 {
		a := g2.nextAssign()
		got[a.Lease.JobID] = true
		if a.Lease.JobID != ids[2] && a.Attempt != 2 {
			t.Errorf("requeued job %d came back as attempt %d, want 2", a.Lease.JobID, a.Attempt)
		}
	}
	if len(got) != 3 {
		t.Errorf("g2 got jobs %v, want all three", got)
	}

	if n, err := e.d.RequeueServerJobs(ctx, "g2-nope", "operator:alice"); !errors.Is(err, broker.ErrNotFound) || n != 0 {
		t.Errorf("unknown server: %d, %v; want ErrNotFound", n, err)
	}
	if n, err := e.d.RequeueServerJobs(ctx, "g1", "operator:alice"); err != nil || n != 0 {
		t.Errorf("server with nothing running: %d, %v; want 0", n, err)
	}
}

func TestDrainKeepsRunningJobsAndOutlastsReconnectAndRestart(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	ctx := context.Background()
	g := e.connect("g1", 4)
	first := e.submit(e.platform, 1, 0)
	a := g.nextAssign()

	if err := e.d.DrainServer(ctx, "g1", true, "operator:alice"); err != nil {
		t.Fatal(err)
	}
	if !e.d.ServerDrained("g1") {
		t.Error("ServerDrained = false after DrainServer")
	}
	if _, slots, running, _ := e.d.ServerStatus("g1"); slots != 0 || running != 1 {
		t.Errorf("drained server: slots %d running %d; want 0 and 1", slots, running)
	}
	more := e.submit(e.platform, 2, 0)
	g.none()
	// Its running job finishes as usual.
	g.result(a, broker.OutcomeOK, map[string]int{"score": 1})
	if m, ok := g.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("result of the running job: %#v, want Ack", m)
	}
	e.waitState(first[0], broker.JobDone)
	g.none()

	// A reconnect does not lift the drain.
	g.close()
	g = e.connect("g1", 4)
	g.none()
	// Nor does a restart: the flag is stored.
	g.close()
	e.stop()
	e.start()
	if !e.d.ServerDrained("g1") {
		t.Fatal("the drain was lost in a restart")
	}
	g = e.connect("g1", 4)
	g.none()

	if err := e.d.DrainServer(ctx, "g1", false, "operator:alice"); err != nil {
		t.Fatal(err)
	}
	got := map[int64]bool{g.nextAssign().Lease.JobID: true, g.nextAssign().Lease.JobID: true}
	if !got[more[0]] || !got[more[1]] {
		t.Errorf("after undrain g1 got %v, want %v", got, more)
	}
	if e.d.ServerDrained("g1") {
		t.Error("ServerDrained = true after undrain")
	}
	if err := e.d.DrainServer(ctx, "nope", true, "operator:alice"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("drain unknown server: %v, want ErrNotFound", err)
	}
}
