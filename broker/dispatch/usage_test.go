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
// attempt, whatever the outcome, and reported to OnRun; a stale result's
// are neither.
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
