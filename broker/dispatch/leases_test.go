package dispatch

import (
	"context"
	"testing"

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
