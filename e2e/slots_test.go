package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	gb "github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/store"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/platformclient"
)

// The broker's own bookkeeping must never cost a job an attempt (issue
// 10): a graderd gets no more jobs than it has free slots, whatever the
// broker lost track of, and a job it had no slot for is handed back
// without using an attempt.

// checkNoHandBack checks that job j ended done after an expired first
// attempt and one more, with no attempt lost to a hand-back.
func checkNoHandBack(t *testing.T, j *gbv1.Job) {
	t.Helper()
	h := j.GetHistory()
	if j.GetState() != gbv1.JobState_JOB_STATE_DONE || len(h) != 2 || h[0].GetEnd() != string(gb.EndExpired) || h[1].GetEnd() != string(gb.EndOK) {
		var ends []string
		for _, a := range h {
			ends = append(ends, fmt.Sprintf("%d:%s(%s)", a.GetNumber(), a.GetEnd(), a.GetReason()))
		}
		t.Errorf("job %d is %v (error %q) after attempts %v; want done after an expired attempt and an ok one",
			j.GetId(), j.GetState(), j.GetError(), ends)
	}
}

// TestLeasesExpiredWhileTheBrokerWasDown is the reproduction: one
// graderd with 2 slots is frozen (SIGSTOP) while the broker assigns it 2
// jobs; the broker is killed; the leases' deadlines pass; the broker comes
// back and ends them, and graderd is thawed. graderd then runs both jobs
// (their Assigns were waiting in its socket), reconnects and reports them.
// The broker must count them against its 2 slots until their results
// come, rather than assign both jobs again at once, which graderd would
// hand back: each hand-back cost an attempt, and both jobs failed.
func TestLeasesExpiredWhileTheBrokerWasDown(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	dbPath := t.TempDir() + "/gb.db"
	bootstrap(t, dir, dbPath)
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	bp := startBrokerProc(t, dir, dbPath, grpcAddr, httpAddr, "--lease-grace", "1s")
	registerRel(t, dir, grpcAddr, 2, "grader1")
	// The first attempts take 3 s, longer than their 2 s timeout: they are
	// still running when graderd reconnects.
	g := runGraderd(t, dir, grpcAddr, "grader1", graderdOpts{sleep: "3", sleepAttempt: 1, slots: 2})
	g.signal(syscall.SIGSTOP)

	c := demoClient(t, dir, httpAddr)
	var ids []int64
	for i := range 2 {
		r, err := c.SendJob(ctxTimeout(t, 30*time.Second), platformclient.Job{
			Data: map[string]any{"n": i}, Name: fmt.Sprintf("frozen-%d", i), Tags: []string{relTag}, TimeoutSec: 2})
		if err != nil {
			t.Fatalf("SendJob %d: %v", i, err)
		}
		ids = append(ids, r.GetJobId())
	}
	for _, id := range ids {
		testutil.Eventually(t, fmt.Sprintf("job %d assigned", id), func() bool {
			r, err := c.GetJob(ctxTimeout(t, 30*time.Second), id, 0)
			return err == nil && r.GetJob().GetState() == gbv1.JobState_JOB_STATE_ASSIGNED
		})
	}
	bp.kill()

	// The outage must outlast the leases: that is what is tested. Their
	// deadlines are in the database the broker left.
	db, err := store.Open(context.Background(), dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leases, err := db.OpenLeases(context.Background())
	db.Close()
	if err != nil || len(leases) != 2 {
		t.Fatalf("open leases at the crash: %v, %v; want 2", leases, err)
	}
	last := leases[0].Deadline
	if leases[1].Deadline.After(last) {
		last = leases[1].Deadline
	}
	time.Sleep(time.Until(last) + 100*time.Millisecond)

	startBrokerProc(t, dir, dbPath, grpcAddr, httpAddr, "--lease-grace", "1s")
	g.signal(syscall.SIGCONT)
	c = demoClient(t, dir, httpAddr)
	for _, id := range ids {
		r, err := c.GetJob(ctxTimeout(t, 60*time.Second), id, 50*time.Second)
		if err != nil {
			t.Fatalf("GetJob %d: %v", id, err)
		}
		checkNoHandBack(t, r.GetJob())
	}
}

// TestHeartbeatsQueuedInAPartition: graderd (one slot) is cut off from the
// broker while the broker assigns it a job; the lease expires behind the
// cut and the broker tells graderd to cancel it. When the link heals,
// graderd's heartbeats from the partition arrive first: they list no
// lease, because graderd had not received the Assign when it sent them.
// They must not free the slot, or the broker assigns the job again at
// once and graderd, still stopping the first lease, hands it back. The
// slot frees when the cancelled lease's result arrives.
func TestHeartbeatsQueuedInAPartition(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	b := startBroker(t, dir, func(c *brokerd.Config) {
		c.LeaseGrace = time.Second
		c.HeartbeatInterval = 200 * time.Millisecond
	})
	bootstrap(t, dir, b.db)
	registerRel(t, dir, b.GRPCAddr(), 1, "grader1")
	proxy := startProxy(t, b.GRPCAddr())
	runGraderd(t, dir, proxy.addr(), "grader1", graderdOpts{sleep: "2", sleepAttempt: 1, slots: 1})
	proxy.cut()

	sent, err := demoClient(t, dir, b.HTTPAddr()).SendJob(ctxTimeout(t, 30*time.Second), platformclient.Job{
		Data: map[string]any{"task": "partition"}, Name: "behind-the-cut", Tags: []string{relTag}, TimeoutSec: 1})
	if err != nil {
		t.Fatalf("SendJob: %v", err)
	}
	id := sent.GetJobId()
	// The lease expires behind the cut: the job waits again, and the slot
	// stays taken by the lease graderd may be running.
	testutil.Eventually(t, "the first lease to expire", func() bool {
		j, err := b.DB().GetJob(t.Context(), id)
		return err == nil && len(j.History) == 1 && j.History[0].End == gb.EndExpired && j.State == gb.JobQueued
	})
	if _, _, running, _ := b.Dispatcher().ServerStatus("grader1"); running != 1 {
		t.Fatalf("grader1 runs %d lease(s) by the broker's count while cut off, want its expired one", running)
	}
	proxy.heal()

	r, err := demoClient(t, dir, b.HTTPAddr()).GetJob(ctxTimeout(t, 40*time.Second), id, 30*time.Second)
	if err != nil {
		t.Fatalf("GetJob %d: %v", id, err)
	}
	checkNoHandBack(t, r.GetJob())
}
