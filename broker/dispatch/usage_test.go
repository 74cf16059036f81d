package dispatch

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
)

// What each run used and the limit that ended it are committed with its
// attempt, whatever the outcome, and reported to OnRun once committed; a
// stale result's are neither.
func TestRunUsageIsKeptWithItsAttempt(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var runs []Run
	e := setup(t, Config{MaxAttempts: 3, OnRun: func(r Run) {
		mu.Lock()
		runs = append(runs, r)
		mu.Unlock()
	}}, "g1")
	g := e.connect("g1", 1)
	ids := e.submit(e.platform, 1, 0)
	first := &broker.Usage{CPUTime: 250 * time.Millisecond, PeakMemory: 40 << 20, WallTime: 300 * time.Millisecond}
	last := &broker.Usage{CPUTime: 2 * time.Second, PeakMemory: 1 << 30, WallTime: 3 * time.Second}

	a := g.nextAssign()
	g.sess.Result(Result{Lease: a.Lease, Outcome: broker.OutcomeTemporary, Error: "flaky", Usage: first})
	b := g.nextAssign()
	g.sess.Result(Result{Lease: a.Lease, Outcome: broker.OutcomeOK, Result: []byte(`{}`), Usage: first}) // stale
	g.sess.Result(Result{Lease: b.Lease, Outcome: broker.OutcomeFatal, Error: "memory limit: the run used 1 GiB",
		Usage: last, Limit: broker.LimitMemory})
	e.waitState(ids[0], broker.JobFailed)
	e.settle() // what follows the commit has run: OnRun, the Acks

	type attempt struct {
		End   broker.LeaseEnd
		Usage *broker.Usage
		Limit broker.Limit
	}
	var got []attempt
	for _, h := range e.getJob(ids[0]).History {
		got = append(got, attempt{h.End, h.Usage, h.Limit})
	}
	want := []attempt{{broker.EndTemporary, first, ""}, {broker.EndFatal, last, broker.LimitMemory}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("attempts (-want +got):\n%s", diff)
	}
	d, err := e.db.DueDeliveries(context.Background(), time.Now().Add(time.Hour), 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != 1 || !cmp.Equal(d[0].Usage, last) || d[0].Limit != broker.LimitMemory {
		t.Errorf("deliveries %+v, want one with the last attempt's usage and limit", d)
	}
	mu.Lock()
	defer mu.Unlock()
	wantRuns := []Run{{Outcome: "temporary", ServerType: "pytype", Usage: first},
		{Outcome: "fatal", ServerType: "pytype", Usage: last, Limit: broker.LimitMemory}}
	if diff := cmp.Diff(wantRuns, runs); diff != "" {
		t.Errorf("OnRun calls (-want +got):\n%s", diff)
	}
}

// Every Assign carries its job's restrict_paths, whether its lease was
// written with the job (a slot was free) or later.
func TestAssignCarriesRestrictPaths(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	paths := []string{"/srv/tasks/t1", "/srv/tasks/shared"}
	job := e.job(e.platform, 0)
	job.RestrictPaths = paths
	queued := e.submitJobs(job)
	g := e.connect("g1", 2)
	inline := e.submitJobs(job)
	for _, id := range []int64{queued[0], inline[0]} {
		a := g.nextAssign()
		if a.Lease.JobID != id || !cmp.Equal(a.RestrictPaths, paths) {
			t.Errorf("Assign of job %d: restrict paths %q, want job %d with %q", a.Lease.JobID, a.RestrictPaths, id, paths)
		}
	}
	if st := e.d.Stats(); st.AssignedInline != 1 {
		t.Fatalf("%d leases written with their job, want 1: the test covers both ways", st.AssignedInline)
	}
}

// What graderd says of itself in its Hello is kept for operators, and
// replaced at its next connection.
func TestServerHelloIsKept(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	if v, ex := e.d.ServerHello("g1"); v != "" || ex != nil {
		t.Fatalf("before any connection: %q, %v", v, ex)
	}
	for _, h := range []Hello{
		{Slots: 1, Version: "1.0", Executors: []broker.Executor{{Name: "default", Type: "exec", Sandbox: "crun"},
			{Name: "gpu", Type: "exec", Sandbox: broker.SandboxNone}}},
		{Slots: 1, Version: "1.1", Executors: []broker.Executor{{Name: "default", Type: "docker", Sandbox: "docker"}}},
	} {
		sess, _, err := e.d.Open(context.Background(), fingerprint("g1"), h)
		if err != nil {
			t.Fatal(err)
		}
		sess.Close(nil)
		v, ex := e.d.ServerHello("g1")
		if v != h.Version || !cmp.Equal(ex, h.Executors) {
			t.Errorf("ServerHello = %q, %v; want %q, %v", v, ex, h.Version, h.Executors)
		}
	}
}
