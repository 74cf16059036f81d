package dispatch

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

func TestJobIsPushedAndResultCommittedBeforeAck(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 4)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	if a.Lease.JobID != ids[0] || a.Attempt != 1 || string(a.JobData) != `{"n":1}` || len(a.Tags) != 1 || a.Tags[0] != "py" {
		t.Fatalf("Assign = %v", a)
	}
	if e.state(ids[0]) != broker.JobAssigned {
		t.Fatalf("job is %s after Assign, want assigned", e.state(ids[0]))
	}
	g.result(a, broker.OutcomeOK, map[string]int{"score": 100})
	m := g.awaitAckOrReject()
	if ack, ok := m.(*Ack); !ok || ack.Leases[0] != a.Lease {
		t.Fatalf("got %v, want Ack of lease %d", m, a.Lease.LeaseID)
	}
	// The Ack comes after the commit: the job is already done.
	if st := e.state(ids[0]); st != broker.JobDone {
		t.Fatalf("job is %s when its Ack arrived, want done", st)
	}
}

func TestNeverMoreThanMinSlotsMaxJobs(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1") // max_concurrent_jobs 4
	g := e.connect("g1", 16)
	e.submit(e.platform, 10, 0)
	var got []*Assign
	for range 4 {
		got = append(got, g.nextAssign())
	}
	g.none()
	// Drain to 0 slots: finishing one job must not bring a new one.
	g.sess.SetSlots(0)
	g.result(got[0], broker.OutcomeOK, map[string]int{"x": 1})
	g.none()
	g.sess.SetSlots(2)
	// 3 still run, capacity is 2: nothing new until two finish.
	g.none()
	g.result(got[1], broker.OutcomeOK, map[string]int{"x": 1})
	g.result(got[2], broker.OutcomeOK, map[string]int{"x": 1})
	g.nextAssign()
}

func TestPriorityThenFairTurnsThenAge(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	burst := e.submit(e.platform, 200, 0)
	single := e.submit(e.other, 1, 0)
	urgent := e.submit(e.platform, 1, 5)
	g := e.connect("g1", 1)
	a := g.nextAssign()
	if a.Lease.JobID != urgent[0] {
		t.Fatalf("first assigned job %d, want the priority-5 job %d", a.Lease.JobID, urgent[0])
	}
	g.result(a, broker.OutcomeOK, map[string]int{"x": 1})
	seen := []int64{}
	for range 3 {
		a := g.nextAssign()
		seen = append(seen, a.Lease.JobID)
		g.result(a, broker.OutcomeOK, map[string]int{"x": 1})
	}
	found := false
	for _, id := range seen[:2] {
		if id == single[0] {
			found = true
		}
	}
	if !found {
		t.Fatalf("the other platform's single job %d was not among the next two (%v); the burst starved it", single[0], seen)
	}
	// Within a platform, oldest first.
	if seen[0] != single[0] && seen[0] != burst[0] || seen[2] != burst[1] && seen[1] != burst[1] {
		t.Errorf("burst jobs out of age order: %v (burst starts %d, %d)", seen, burst[0], burst[1])
	}
}

// Priorities go highest first, whatever order they were first submitted in.
func TestHighestPriorityFirstWhateverTheOrderSubmitted(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	var ids []int64
	for _, prio := range []int{5, 0, 9} {
		ids = append(ids, e.submit(e.platform, 1, prio)...)
	}
	got := e.connect("g1", 1).runJobs(3)
	if want := []int64{ids[2], ids[0], ids[1]}; !slices.Equal(got, want) {
		t.Errorf("assigned %v, want %v (priorities 9, 5, 0)", got, want)
	}
}

// Within a platform, jobs go oldest first whether they were requeued (in
// whatever order) or never ran, and the queue keeps working after it has
// been drained.
func TestPlatformJobsGoOldestFirstRequeuedOrNot(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: noTicks}, "g1", "g2")
	g1 := e.connect("g1", 3)
	ids := e.submit(e.platform, 3, 0)
	held := map[int64]*Assign{}
	for range 3 {
		a := g1.nextAssign()
		held[a.Lease.JobID] = a
	}
	g2 := e.connect("g2", 1)
	e.submit(e.platform, 1, 0)
	busy := g2.nextAssign()
	fresh := e.submit(e.platform, 1, 0) // both servers are full: it waits
	// g1 hands its jobs back out of order; while g2 is connected they
	// avoid g1. Then g1 goes, and g2 takes everything.
	for _, id := range []int64{ids[2], ids[0], ids[1]} {
		g1.result(held[id], broker.OutcomeTemporary, nil)
	}
	g1.none()
	g1.close()
	g2.result(busy, broker.OutcomeOK, map[string]int{"x": 1})
	got := g2.runJobs(3)
	last := g2.nextAssign()
	got = append(got, last.Lease.JobID)
	if want := slices.Concat(ids, fresh); !slices.Equal(got, want) {
		t.Errorf("assigned %v, want %v: oldest first, requeued or not", got, want)
	}
	// The queue is empty now; a job submitted while g2 is busy waits in it.
	later := e.submit(e.platform, 1, 0)
	g2.result(last, broker.OutcomeOK, map[string]int{"x": 1})
	if a := g2.nextAssign(); a.Lease.JobID != later[0] {
		t.Errorf("after the queue drained, assigned job %d, want %d", a.Lease.JobID, later[0])
	}
}

// A platform's long queue (more than the 1,024 jobs past which a drained
// queue gives its memory back) hands out its jobs in order.
func TestLongQueueKeepsItsJobs(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	ids := e.submit(e.platform, 1030, 0)
	if got := e.connect("g1", 1).runJobs(3); !slices.Equal(got, ids[:3]) {
		t.Errorf("assigned %v, want %v", got, ids[:3])
	}
}

// Platforms take turns: with three platforms' jobs waiting, each gets one
// before any gets another, whichever was served last, and a platform whose
// jobs have all gone takes no turn.
func TestFairTurnsRotateAmongPlatforms(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	third, err := e.db.AddPlatform(context.Background(), broker.Platform{Name: "third", PublicKeyPEM: "x", ReturnURL: ""})
	if err != nil {
		t.Fatal(err)
	}
	owner := map[int64]string{}
	for _, q := range []struct {
		p broker.Platform
		n int
	}{{e.platform, 1}, {e.other, 3}, {third, 2}} {
		for _, id := range e.submit(q.p, q.n, 0) {
			owner[id] = q.p.Name
		}
	}
	var got []string
	for _, id := range e.connect("g1", 1).runJobs(6) {
		got = append(got, owner[id])
	}
	want := []string{"plat", "other", "third", "other", "third", "other"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("platforms in assignment order (-want +got):\n%s", diff)
	}
}

func TestTemporaryRequeuesOnAnotherServerAndAttemptsEnd(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{MaxAttempts: 2}, "g1", "g2")
	g1 := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g1.nextAssign()
	g2 := e.connect("g2", 1)
	g1.result(a, broker.OutcomeTemporary, nil)
	// The retry goes to the other server even though g1 is free again.
	a2 := g2.nextAssign()
	if a2.Lease.JobID != ids[0] || a2.Attempt != 2 || a2.Lease.LeaseID <= a.Lease.LeaseID {
		t.Fatalf("retry = %v, want job %d attempt 2 with a newer lease than %d", a2, ids[0], a.Lease.LeaseID)
	}
	g1.none()
	g2.result(a2, broker.OutcomeTimeout, nil)
	e.waitState(ids[0], broker.JobFailed)
	job, err := e.db.GetJob(context.Background(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(job.Error, "gave up after 2 attempt(s)") {
		t.Errorf("error = %q, want it to say it gave up after 2 attempts", job.Error)
	}
	if len(job.History) != 2 || job.History[0].Server != "g1" || job.History[1].Server != "g2" {
		t.Errorf("history = %+v, want attempts on g1 then g2", job.History)
	}
}

func TestStaleResultIsRefused(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 2)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	if err := e.d.RequeueJob(context.Background(), ids[0], "operator:test"); err != nil {
		t.Fatal(err)
	}
	// The server is told to stop, then gets the job again under a new lease.
	cancel, again := g.nextCancel(), g.nextAssign()
	if cancel.Lease.LeaseID != a.Lease.LeaseID || again.Lease.LeaseID == a.Lease.LeaseID {
		t.Fatalf("cancel %v, reassign %v", cancel, again)
	}
	g.result(a, broker.OutcomeOK, map[string]int{"late": 1})
	if m, ok := g.awaitAckOrReject().(*Reject); !ok || m.Lease != a.Lease {
		t.Fatalf("stale result got %#v, want a Reject of lease %d", m, a.Lease.LeaseID)
	}
	g.result(again, broker.OutcomeOK, map[string]int{"score": 1})
	if m, ok := g.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("current result got %#v, want Ack", m)
	}
	e.waitState(ids[0], broker.JobDone)
	if st := e.d.Stats(); st.StaleResults != 1 {
		t.Errorf("StaleResults = %d, want 1", st.StaleResults)
	}
	job, err := e.db.GetJob(context.Background(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if string(job.Result) != `{"score":1}` {
		t.Errorf("result = %s, want the current lease's", job.Result)
	}
}

func TestInvalidResultCountsAsFailedAttempt(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{MaxAttempts: 1}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	g.result(a, broker.OutcomeOK, []byte("not json"))
	if m, ok := g.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("got %#v, want Ack (the broker took the report)", m)
	}
	e.waitState(ids[0], broker.JobFailed)
}

func TestFatalIsFinal(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	g.sess.Result(Result{Lease: a.Lease, Outcome: broker.OutcomeFatal, Error: "compile error", Log: "line 1"})
	g.awaitAckOrReject()
	e.waitState(ids[0], broker.JobFailed)
	job, _ := e.db.GetJob(context.Background(), ids[0])
	if job.Error != "compile error" || job.Log != "line 1" {
		t.Errorf("job error %q log %q", job.Error, job.Log)
	}
	if job.Delivery != broker.DeliveryPending {
		t.Errorf("delivery = %v, want pending (a final job gets a delivery in the same transaction)", job.Delivery)
	}
}

func TestLeaseExpiryRequeues(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{LeaseGrace: 10 * time.Millisecond, TickInterval: 20 * time.Millisecond}, "g1", "g2")
	g1 := e.connect("g1", 1)
	jobs := []broker.NewJob{{PlatformID: e.platform.ID, Name: "short", Tags: []string{"py"}, Timeout: time.Second,
		JobData: []byte(`{}`), TypeIDs: []int64{e.typeID}}}
	ins, err := e.d.Submit(context.Background(), jobs, nil, "test")
	if err != nil {
		t.Fatal(err)
	}
	a := g1.nextAssign()
	// g1 never answers; after timeout+grace the lease expires and g1 is told to stop.
	if c := g1.nextCancel(); c.Lease != a.Lease {
		t.Fatalf("cancel for %v, want lease %d", c.Lease, a.Lease.LeaseID)
	}
	g2 := e.connect("g2", 1)
	a2 := g2.nextAssign()
	if a2.Lease.JobID != ins[0].ID || a2.Attempt != 2 {
		t.Fatalf("after expiry got %v", a2)
	}
}

func TestDisconnectedServerGetsGraceThenLeasesRequeue(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{ReconnectGrace: time.Minute, TickInterval: 5 * time.Millisecond, Now: clk.Now}, "g1", "g2")
	g1 := e.connect("g1", 2)
	ids := e.submit(e.platform, 2, 0)
	a := g1.nextAssign()
	b := g1.nextAssign()
	g1.close()
	// g1 comes back within the grace, still running a but having lost b.
	g1b := e.connect("g1", 2, a.Lease)
	g1b.result(a, broker.OutcomeOK, map[string]int{"ok": 1})
	if m, ok := g1b.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("result after reconnect: %#v, want Ack", m)
	}
	// b was lost on reconnect and comes back as a new attempt.
	b2 := g1b.nextAssign()
	if b2.Lease.JobID != b.Lease.JobID || b2.Attempt != 2 {
		t.Fatalf("lost lease's job came back as %v", b2)
	}
	g1b.close()
	// Within the grace its lease waits; past it, the job is requeued.
	clk.Add(59 * time.Second)
	e.settle()
	if st := e.state(b.Lease.JobID); st != broker.JobAssigned {
		t.Fatalf("job %d is %s within the reconnect grace, want assigned", b.Lease.JobID, st)
	}
	clk.Add(2 * time.Second)
	e.waitState(b.Lease.JobID, broker.JobQueued)
	g2 := e.connect("g2", 1)
	b3 := g2.nextAssign()
	if b3.Lease.JobID != b.Lease.JobID || b3.Attempt != 3 {
		t.Fatalf("after grace got %v, want job %d attempt 3", b3, b.Lease.JobID)
	}
	e.waitState(ids[0], broker.JobDone)
}

func TestRestartKeepsJobsAndLeases(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 2)
	ids := e.submit(e.platform, 3, 0)
	a := g.nextAssign()
	b := g.nextAssign()
	g.close()
	e.crash()
	e.start()
	// After the restart g1 reports a still running; b is lost; the third job
	// is still queued.
	g2 := e.connect("g1", 2, a.Lease)
	g2.result(a, broker.OutcomeOK, map[string]int{"ok": 1})
	if m, ok := g2.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("result across restart: %#v", m)
	}
	got := map[int64]*Assign{}
	for len(got) < 2 {
		x := g2.nextAssign()
		if x.Lease.LeaseID <= b.Lease.LeaseID {
			t.Fatalf("lease id %d after restart is not newer than %d: fencing ids must grow", x.Lease.LeaseID, b.Lease.LeaseID)
		}
		got[x.Lease.JobID] = x
		g2.result(x, broker.OutcomeOK, map[string]int{"ok": 1})
	}
	for _, id := range ids {
		e.waitState(id, broker.JobDone)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	ids := e.submit(e.platform, 2, 0)
	if err := e.d.CancelJob(context.Background(), ids[1], "platform:plat"); err != nil {
		t.Fatal(err)
	}
	if st := e.state(ids[1]); st != broker.JobCancelled {
		t.Fatalf("queued job after cancel is %s", st)
	}
	g := e.connect("g1", 4)
	a := g.nextAssign()
	if a.Lease.JobID != ids[0] {
		t.Fatalf("assigned %d; the cancelled job %d must not run", a.Lease.JobID, ids[1])
	}
	g.none()
	if err := e.d.CancelJob(context.Background(), ids[0], "platform:plat"); err != nil {
		t.Fatal(err)
	}
	if c, ok := g.next().(*Cancel); !ok || c.Lease != a.Lease {
		t.Fatalf("running job's server got %#v, want Cancel", c)
	}
	if err := e.d.CancelJob(context.Background(), ids[0], "platform:plat"); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Fatalf("cancel of a final job: %v, want ErrFailedPrecondition", err)
	}
	g.result(a, broker.OutcomeTemporary, nil)
	if m, ok := g.awaitAckOrReject().(*Reject); !ok {
		t.Fatalf("result of a cancelled lease: %#v, want Reject", m)
	}
}

func TestServerRemovedClosesStreamAndRequeues(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1", "g2")
	g1 := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	g1.nextAssign()
	if err := e.db.RemoveServer(context.Background(), "g1"); err != nil {
		t.Fatal(err)
	}
	if n := e.d.ServerRemoved(context.Background(), "g1"); n != 1 {
		t.Fatalf("requeued %d, want 1", n)
	}
	<-g1.sess.Done()
	if err := g1.sess.Err(); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Fatalf("removed server's session ended with %v, want ErrPermissionDenied", err)
	}
	g2 := e.connect("g2", 1)
	if a := g2.nextAssign(); a.Lease.JobID != ids[0] {
		t.Fatalf("g2 got %v", a)
	}
}

func TestServerChangedAppliesAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 8) // max_concurrent_jobs 4
	e.submit(e.platform, 6, 0)
	for range 4 {
		g.nextAssign()
	}
	g.none()
	six := 6
	if _, err := e.db.UpdateServer(context.Background(), "g1", storeServerUpdate(&six)); err != nil {
		t.Fatal(err)
	}
	e.d.ServerChanged(context.Background(), "g1")
	g.nextAssign()
	g.nextAssign()
}

func TestProbeLeavesLiveSessionAlone(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	a := g.nextAssign()
	w, err := e.d.Probe(context.Background(), fingerprint("g1"))
	if err != nil || w.Server != "g1" || w.Type != "pytype" || w.MaxConcurrentJobs != 4 {
		t.Fatalf("Probe = %+v, %v; want g1 of pytype with 4 jobs at most", w, err)
	}
	// The live session keeps its lease: its result is accepted.
	g.result(a, broker.OutcomeOK, map[string]int{"ok": 1})
	if m, ok := g.awaitAckOrReject().(*Ack); !ok {
		t.Fatalf("live session after a probe: %#v, want Ack", m)
	}
	e.waitState(ids[0], broker.JobDone)
	if _, err := e.d.Probe(context.Background(), "fp-nobody"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Probe of an unregistered certificate: %v, want ErrNotFound", err)
	}
	if _, _, err := e.d.Open(context.Background(), "fp-nobody", Hello{Slots: 1}); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Open of an unregistered certificate: %v, want ErrNotFound", err)
	}
}

// A job submitted while a server has a free slot is stored and leased in one
// transaction: when Submit returns it is already assigned in the database.
// A job that finds no free slot waits in the queue; a refused submission
// leaves nothing queued or leased.
func TestSubmitWithAFreeSlotIsAssignedInTheSameCommit(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	g := e.connect("g1", 2)
	st0 := e.d.Stats()
	ids := e.submit(e.platform, 3, 0)
	for _, id := range ids[:2] {
		if st := e.state(id); st != broker.JobAssigned {
			t.Fatalf("job %d is %s when Submit returned, want assigned (leased in the same commit)", id, st)
		}
	}
	if st := e.state(ids[2]); st != broker.JobQueued {
		t.Fatalf("third job is %s, want queued: the server has 2 slots", st)
	}
	if st := e.d.Stats(); st.Running != st0.Running+2 || st.Queued != st0.Queued+1 || st.AssignedInline != st0.AssignedInline+2 {
		t.Fatalf("after Submit: running %d queued %d leased inline %d, want %d, %d and %d", st.Running, st.Queued,
			st.AssignedInline, st0.Running+2, st0.Queued+1, st0.AssignedInline+2)
	}
	first := []*Assign{g.nextAssign(), g.nextAssign()}
	if first[0].Lease.JobID != ids[0] || first[1].Lease.JobID != ids[1] {
		t.Fatalf("assigned jobs %d and %d, want %d and %d", first[0].Lease.JobID, first[1].Lease.JobID, ids[0], ids[1])
	}
	g.result(first[0], broker.OutcomeOK, map[string]int{"score": 1})
	if a := g.nextAssign(); a.Lease.JobID != ids[2] {
		t.Fatalf("after a result, Assign of job %d, want the queued job %d", a.Lease.JobID, ids[2])
	}
	if st := e.d.Stats(); st.Assigned != st0.Assigned+3 || st.AssignedInline != st0.AssignedInline+2 {
		t.Fatalf("assigned %d, inline %d: want %d and %d (the third job's lease waited for a slot)", st.Assigned,
			st.AssignedInline, st0.Assigned+3, st0.AssignedInline+2)
	}

	// A replayed token refuses the whole submission: nothing is queued,
	// nothing is leased, the server hears nothing.
	g.result(first[1], broker.OutcomeOK, map[string]int{"score": 1})
	g.awaitAckOrReject()
	tok := &TokenUse{Signer: "plat", JTI: "once", Expires: time.Now().Add(time.Minute)}
	job := []broker.NewJob{{PlatformID: e.platform.ID, Name: "j", Tags: []string{"py"}, Timeout: 10 * time.Second,
		JobData: []byte(`{}`), TypeIDs: []int64{e.typeID}}}
	if _, err := e.d.Submit(context.Background(), job, tok, "platform:plat"); err != nil {
		t.Fatal(err)
	}
	g.nextAssign()
	before := e.d.Stats()
	if _, err := e.d.Submit(context.Background(), job, tok, "platform:plat"); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("replayed token: got %v, want ErrConflict", err)
	}
	if st := e.d.Stats(); st.Running != before.Running || st.Queued != before.Queued || st.Assigned != before.Assigned {
		t.Fatalf("refused Submit changed the dispatcher: before %+v after %+v", before, st)
	}
	g.none()
}

// A Submit's transaction leases only the jobs it stores. A requeued job
// whose requeue is still queued behind the Submit must get its new lease
// after that requeue is written, not inside the Submit's transaction, where
// the database still has it assigned (found in review: the lease was
// refused and the job forgotten, queued in the database and nowhere else).
func TestSubmitLeasesOnlyItsOwnJobsInline(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{AvoidFor: time.Hour}, "g1", "g2")
	g1 := e.connect("g1", 2)
	e.submit(e.platform, 2, 0)
	a1, _ := g1.nextAssign(), g1.nextAssign()
	g2 := e.connect("g2", 1)
	e.submit(e.platform, 1, 0)
	g2.nextAssign()

	release := e.holdWriter()
	submitted := make(chan error, 1)
	go func() {
		_, err := e.d.Submit(context.Background(), []broker.NewJob{{PlatformID: e.platform.ID, Name: "n", Tags: []string{"py"},
			Timeout: 10 * time.Second, JobData: []byte(`{}`), TypeIDs: []int64{e.typeID}}}, nil, "platform:plat")
		submitted <- err
	}()
	testutil.Eventually(t, "the Submit to queue", func() bool { return e.pendingOps() == 1 })
	// The job fails for now on g1: requeued in memory, avoiding g1 while g2
	// is connected; its requeue is queued behind the Submit.
	g1.result(a1, broker.OutcomeTemporary, nil)
	if n := e.pendingOps(); n < 3 {
		t.Fatalf("%d ops wait for the writer, want the Submit, the requeue and the ack", n)
	}
	// g2 goes away: g1 may now take the job again.
	g2.close()
	release()
	if err := <-submitted; err != nil {
		t.Fatal(err)
	}
	a := g1.wait(func(m Message) bool { x, ok := m.(*Assign); return ok && x.Lease.JobID == a1.Lease.JobID }).(*Assign)
	if a.Attempt != 2 || a.Lease.LeaseID == a1.Lease.LeaseID {
		t.Fatalf("second Assign of job %d: attempt %d lease %d, want attempt 2 on a new lease", a1.Lease.JobID, a.Attempt, a.Lease.LeaseID)
	}
	if st := e.state(a1.Lease.JobID); st != broker.JobAssigned {
		t.Fatalf("job %d is %s, want assigned", a1.Lease.JobID, st)
	}
}

// When a commit fails the dispatcher stops, and every caller waiting for a
// commit, in the failed batch or behind it, gets an error instead of
// waiting forever, and a Stop under way returns. (MaxBatch 1 leaves ops
// queued behind the failed batch.)
func TestStorageFailureAnswersEveryWaiter(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{MaxBatch: 1}, "g1")
	queued := e.submit(e.platform, 1, 0)[0] // no server is connected: it stays queued
	release := e.holdWriter()
	errs := make(chan error, 2)
	go func() {
		_, err := e.d.Submit(context.Background(), []broker.NewJob{{PlatformID: e.platform.ID, Name: "n", Tags: []string{"py"},
			Timeout: 10 * time.Second, JobData: []byte(`{}`), TypeIDs: []int64{e.typeID}}}, nil, "platform:plat")
		errs <- err
	}()
	testutil.Eventually(t, "the Submit to queue", func() bool { return e.pendingOps() == 1 })
	go func() { errs <- e.d.CancelJob(context.Background(), queued, "operator:test") }()
	testutil.Eventually(t, "the cancel to queue", func() bool { return e.pendingOps() == 2 })
	// A storage failure in the next batch, ahead of both.
	e.d.w.mu.Lock()
	e.d.w.pending = append([]*op{{apply: func(*store.JobTx) error { return errors.New("disk on fire") }}}, e.d.w.pending...)
	e.d.w.mu.Unlock()
	stopped := make(chan struct{})
	go func() { e.d.Stop(); close(stopped) }()
	release()
	// A caller left waiting would hang the test until its deadline.
	for range 2 {
		if err := <-errs; err == nil {
			t.Fatal("a change succeeded after a storage failure")
		}
	}
	<-stopped
	if err := e.d.Err(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Err() = %v, want the storage failure", err)
	}
}

// The final hook hears, after commit, of every job that became final with
// a delivery to make, with that delivery's id, and of no other job: the
// delivery worker starts on it at once.
func TestFinalHookGetsTheDelivery(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	type call struct{ job, delivery int64 }
	calls := make(chan call, 4)
	e.d.SetFinalHook(func(job, delivery int64) { calls <- call{job, delivery} })
	g := e.connect("g1", 1)
	// The other platform has no return URL: nothing to deliver.
	quiet := e.submit(e.other, 1, 0)
	a := g.nextAssign()
	g.result(a, broker.OutcomeOK, map[string]int{"x": 1})
	e.waitState(quiet[0], broker.JobDone)
	loud := e.submit(e.platform, 1, 0)
	b := g.nextAssign()
	g.result(b, broker.OutcomeOK, map[string]int{"x": 1})
	var c call
	select {
	case c = <-calls:
	case <-time.After(30 * time.Second):
		t.Fatalf("the final hook was not called for job %d within 30 s", loud[0])
	}
	if c.job != loud[0] {
		t.Fatalf("final hook called for job %d first, want %d (job %d has no delivery)", c.job, loud[0], quiet[0])
	}
	d, err := e.db.Delivery(context.Background(), c.delivery)
	if err != nil || d.JobID != loud[0] {
		t.Errorf("final hook's delivery %d is %+v, %v; want job %d's", c.delivery, d, err, loud[0])
	}
}
