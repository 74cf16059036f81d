package dispatch

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
)

func TestMetricsSnapshotFollowsJobs(t *testing.T) {
	t.Parallel()
	var batches, ops atomic.Int64
	e := setup(t, Config{OnCommit: func(n int, took time.Duration) {
		if took <= 0 {
			t.Errorf("OnCommit took = %s, want > 0", took)
		}
		batches.Add(1)
		ops.Add(int64(n))
	}}, "g1")
	ids := e.submit(e.platform, 3, 0)

	s := e.d.MetricsSnapshot()
	g := s.Types[e.typeID]
	if g.Queued != 3 || g.Running != 0 || g.Connected != 0 || g.FreeSlots != 0 {
		t.Fatalf("before any server: %+v, want 3 queued and nothing else", g)
	}
	if g.OldestQueued.IsZero() || g.OldestQueued.After(s.Now) || s.Now.Sub(g.OldestQueued) > time.Minute {
		t.Fatalf("OldestQueued = %s, now %s", g.OldestQueued, s.Now)
	}
	if s.TypeNames[e.typeID] != "pytype" {
		t.Fatalf("TypeNames = %v, want pytype for %d", s.TypeNames, e.typeID)
	}

	srv := e.connect("g1", 2)
	a, b := srv.nextAssign(), srv.nextAssign()
	g = e.d.MetricsSnapshot().Types[e.typeID]
	if g.Queued != 1 || g.Running != 2 || g.Connected != 1 || g.FreeSlots != 0 {
		t.Fatalf("2 slots busy: %+v, want 1 queued, 2 running, 1 connected, 0 free", g)
	}

	srv.result(a, broker.OutcomeOK, map[string]int{"score": 1}) // j1 done
	srv.awaitAckOrReject()
	c := srv.nextAssign()                       // j3
	srv.result(b, broker.OutcomeTemporary, nil) // j2 again
	srv.awaitAckOrReject()
	d := srv.nextAssign()
	srv.result(c, broker.OutcomeOK, []byte("not json")) // j3 again
	srv.awaitAckOrReject()
	f := srv.nextAssign()
	if d.Lease.JobID != ids[1] || d.Attempt != 2 || f.Lease.JobID != ids[2] || f.Attempt != 2 {
		t.Fatalf("retries: %v and %v, want jobs %d and %d at attempt 2", d, f, ids[1], ids[2])
	}
	srv.result(d, broker.OutcomeFatal, nil) // j2 failed
	srv.awaitAckOrReject()
	if err := e.d.CancelJob(context.Background(), ids[2], "test"); err != nil { // running
		t.Fatal(err)
	}

	// A queued job cancelled where no server drains it stays in its queue
	// until a server reaches it, but it waits for nothing: it is neither
	// counted nor aged.
	srv.sess.SetSlots(0)
	late := e.submit(e.platform, 1, 0)
	if err := e.d.CancelJob(context.Background(), late[0], "test"); err != nil {
		t.Fatal(err)
	}

	s = e.d.MetricsSnapshot()
	if g := s.Types[e.typeID]; g.Queued != 0 || !g.OldestQueued.IsZero() {
		t.Fatalf("after cancelling the queued job: %+v, want it neither counted nor aged", g)
	}
	if s.Stats.Queued != 0 {
		t.Fatalf("Stats.Queued = %d after cancelling the only queued job, want 0", s.Stats.Queued)
	}
	wantResults := [numResults]uint64{ResultOK: 1, ResultFatal: 1, ResultTemporary: 1, ResultInvalid: 1}
	if diff := cmp.Diff(wantResults, s.Results); diff != "" {
		t.Errorf("Results (-want +got):\n%s", diff)
	}
	wantFinal := map[broker.JobState]uint64{broker.JobDone: 1, broker.JobFailed: 1, broker.JobCancelled: 2}
	if diff := cmp.Diff(wantFinal, s.Final); diff != "" {
		t.Errorf("Final (-want +got):\n%s", diff)
	}
	if s.AssignAttempts[0] != 3 || s.AssignAttempts[1] != 2 {
		t.Errorf("AssignAttempts = %v, want 3 first attempts and 2 second", s.AssignAttempts)
	}
	if s.Stats.Assigned != 5 || s.Stats.Requeued != 2 {
		t.Errorf("Stats = %+v, want 5 assigned and 2 requeued", s.Stats)
	}
	if batches.Load() == 0 || ops.Load() < batches.Load() {
		t.Errorf("OnCommit saw %d batches of %d ops, want some", batches.Load(), ops.Load())
	}
}

func TestAssignedCountsAttemptsBeyondTheLastBucket(t *testing.T) {
	t.Parallel()
	var m metricCounts
	for _, n := range []int32{0, 1, 2, MaxAttemptBucket, MaxAttemptBucket + 5} {
		m.assigned(n)
	}
	got := make([]uint64, MaxAttemptBucket)
	for i := range got {
		got[i] = m.attempts[i].Load()
	}
	want := make([]uint64, MaxAttemptBucket)
	want[0], want[1], want[MaxAttemptBucket-1] = 2, 1, 2
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("attempt buckets (-want +got):\n%s", diff)
	}
}
