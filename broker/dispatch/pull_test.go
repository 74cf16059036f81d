package dispatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// puller is a pulling client's session driven by the test.
type puller struct {
	t    *testing.T
	e    *env
	name string
	sess *Session
}

// addPuller registers an XQueue platform (once), queue and user, and the
// server of that user pulling the queue, with maxJobs; it returns the
// server's name. The queue's jobs have tag "py".
func (e *env) addPuller(user, queue string, maxJobs int) string {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.db.PlatformByName(ctx, "lms"); errors.Is(err, broker.ErrNotFound) {
		if _, err := e.db.AddPlatform(ctx, broker.Platform{Name: "lms", Protocol: broker.ProtocolXQueue}); err != nil {
			e.t.Fatal(err)
		}
	}
	q, err := e.db.XQueueQueueByName(ctx, queue)
	if errors.Is(err, broker.ErrNotFound) {
		q, err = e.db.AddXQueueQueue(ctx, broker.XQueueQueue{Name: queue, Tags: []string{"py"}, Type: "pytype"})
	}
	if err != nil {
		e.t.Fatal(err)
	}
	u, err := e.db.AddXQueueUser(ctx, broker.XQueueUser{Name: user, PasswordHash: "h", PullQueues: []string{queue}, MaxJobs: maxJobs})
	if err != nil {
		e.t.Fatal(err)
	}
	s, _, err := e.db.Puller(ctx, u, q)
	if err != nil {
		e.t.Fatal(err)
	}
	e.d.ServerChanged(ctx, s.Name)
	return s.Name
}

// openPull opens the pulling session of server name.
func (e *env) openPull(name string) *puller {
	e.t.Helper()
	sess, _, err := e.d.OpenPull(context.Background(), name)
	if err != nil {
		e.t.Fatalf("OpenPull %s: %v", name, err)
	}
	p := &puller{t: e.t, e: e, name: name, sess: sess}
	e.t.Cleanup(func() { sess.Close(nil) })
	return p
}

// pull pulls one job of queue, failing the test on an error.
func (p *puller) pull(queue string) *Assign {
	p.t.Helper()
	a, err := p.sess.Pull(context.Background(), queue)
	if err != nil {
		p.t.Fatalf("%s: Pull(%s): %v", p.name, queue, err)
	}
	return a
}

func (p *puller) report(ref LeaseRef, result string) error {
	return p.sess.Report(context.Background(), Result{Lease: ref, Outcome: broker.OutcomeOK, Result: []byte(result)})
}

// queueJobs submits n jobs of pull queue queue for the XQueue platform.
func (e *env) queueJobs(queue string, n, prio int) []int64 {
	e.t.Helper()
	p, err := e.db.PlatformByName(context.Background(), "lms")
	if err != nil {
		e.t.Fatal(err)
	}
	jobs := make([]broker.NewJob, n)
	for i := range jobs {
		jobs[i] = e.job(p, prio)
		jobs[i].Queue = queue
	}
	return e.submitJobs(jobs...)
}

// A pulling client gets a job only when it asks, of its queue only, in the
// dispatcher's order, never more than its max jobs at once; its result is
// committed before Report returns.
func TestPullHandsOutOnRequest(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{})
	name := e.addPuller("watcher", "q", 2)
	e.addPuller("other-watcher", "q2", 1)
	p := e.openPull(name)
	low := e.queueJobs("q", 1, 0)
	elsewhere := e.queueJobs("q2", 1, 5)
	plain := e.submit(e.platform, 1, 9) // no queue: graderd's
	high := e.queueJobs("q", 1, 3)
	e.settle()
	if msgs := p.sess.Messages(); len(msgs) != 0 {
		t.Fatalf("a pulling session was pushed %v", msgs)
	}
	if n := e.d.QueueLength("q"); n != 2 {
		t.Errorf("QueueLength(q) = %d, want 2", n)
	}
	a := p.pull("q")
	b := p.pull("q")
	if a == nil || b == nil || a.Lease.JobID != high[0] || b.Lease.JobID != low[0] || a.Attempt != 1 {
		t.Fatalf("pulls got %v and %v, want jobs %d then %d", a, b, high[0], low[0])
	}
	if string(a.JobData) != `{"n":1}` || a.Deadline.IsZero() {
		t.Errorf("Assign = %+v", a)
	}
	if st := e.state(a.Lease.JobID); st != broker.JobAssigned {
		t.Errorf("pulled job is %s, want assigned (committed before Pull returned)", st)
	}
	e.queueJobs("q", 1, 0)
	if c := p.pull("q"); c != nil {
		t.Fatalf("a third pull with max jobs 2 got %v", c)
	}
	if err := p.report(a.Lease, `{"correct":true}`); err != nil {
		t.Fatalf("Report: %v", err)
	}
	if st := e.state(a.Lease.JobID); st != broker.JobDone {
		t.Errorf("reported job is %s, want done (committed before Report returned)", st)
	}
	if c := p.pull("q"); c == nil {
		t.Error("no pull after a slot was freed")
	}
	if connected, slots, running, _ := e.d.ServerStatus(name); !connected || slots != 2 || running != 2 {
		t.Errorf("ServerStatus = %v %d %d, want connected, 2 slots, 2 running", connected, slots, running)
	}
	// The other queue's job and graderd's stay for theirs.
	if st := e.state(elsewhere[0]); st != broker.JobQueued {
		t.Errorf("q2's job is %s", st)
	}
	e.addServer("g1", 4)
	g := e.connect("g1", 4)
	if a := g.nextAssign(); a.Lease.JobID != plain[0] {
		t.Errorf("graderd got %v first, want the plain job %d (priority 9)", a, plain[0])
	}
	// graderd's server type covers queue jobs too: the same tag rules.
	if a := g.nextAssign(); a.Lease.JobID != elsewhere[0] {
		t.Errorf("graderd got %v, want q2's job %d", a, elsewhere[0])
	}
	if _, _, err := e.d.Open(context.Background(), "xqueue:1:q", Hello{Slots: 1}); err == nil {
		t.Error("Open by a pulling server's placeholder succeeded")
	}
}

// The key is the lease: a result for another lease, another server's, or
// one taken back is refused, and nothing changes.
func TestPullFencing(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{})
	p := e.openPull(e.addPuller("watcher", "q", 2))
	other := e.openPull(e.addPuller("thief", "q", 2))
	ids := e.queueJobs("q", 2, 0)
	a := p.pull("q")
	for _, tc := range []struct {
		name string
		from *puller
		ref  LeaseRef
	}{
		{"wrong lease id", p, LeaseRef{JobID: a.Lease.JobID, LeaseID: a.Lease.LeaseID + 100}},
		{"wrong job id", p, LeaseRef{JobID: ids[1], LeaseID: a.Lease.LeaseID}},
		{"another client's lease", other, a.Lease},
	} {
		if err := tc.from.report(tc.ref, `{}`); !errors.Is(err, broker.ErrFailedPrecondition) {
			t.Errorf("%s: Report = %v, want ErrFailedPrecondition", tc.name, err)
		}
	}
	if st := e.state(a.Lease.JobID); st != broker.JobAssigned {
		t.Fatalf("after refused reports the job is %s", st)
	}
	if err := e.d.Retire(context.Background(), a.Lease.JobID, "xqueue:watcher", "superseded"); err != nil {
		t.Fatal(err)
	}
	if err := p.report(a.Lease, `{}`); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("Report after the job was retired = %v", err)
	}
	if j := e.getJob(a.Lease.JobID); j.State != broker.JobCancelled || j.Delivery != broker.DeliveryNone || j.Error != "superseded" {
		t.Errorf("retired job = %s, delivery %v, error %q; want cancelled without a delivery", j.State, j.Delivery, j.Error)
	}
	// Its slot is free again at once: the client cannot be told to stop.
	if b := p.pull("q"); b == nil || b.Lease.JobID != ids[1] {
		t.Errorf("pull after the retirement got %v", b)
	}
}

// A pull not answered within the lease returns to the queue with an
// attempt counted; its late result is still taken while nobody has pulled
// the job since, and refused once someone has. At the attempt cap the job
// fails.
func TestPullLeaseExpiry(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{LeaseGrace: time.Second, MaxAttempts: 3, AvoidFor: time.Millisecond, TickInterval: time.Hour, Now: clk.Now})
	p := e.openPull(e.addPuller("watcher", "q", 1))
	other := e.openPull(e.addPuller("watcher2", "q", 1))
	ids := e.queueJobs("q", 2, 0)
	expire := func() {
		t.Helper()
		clk.Add(12 * time.Second) // the test job's timeout is 10 s
		e.d.onTick(clk.Now())
		e.settle()
	}

	// Late, but nobody pulled it since: taken.
	a := p.pull("q")
	expire()
	if j := e.getJob(a.Lease.JobID); j.State != broker.JobQueued || j.Attempts != 1 || j.History[0].End != broker.EndExpired {
		t.Fatalf("expired job = %s, %d attempts, %+v", j.State, j.Attempts, j.History)
	}
	if _, current, ok := e.d.LeaseHolder(a.Lease); !ok || current {
		t.Errorf("LeaseHolder(expired lease) = current %v, ok %v; want a late lease", current, ok)
	}
	if err := p.report(a.Lease, `{"correct":true}`); err != nil {
		t.Fatalf("late Report = %v, want it taken", err)
	}
	j := e.getJob(a.Lease.JobID)
	if j.State != broker.JobDone || string(j.Result) != `{"correct":true}` || j.Delivery != broker.DeliveryPending {
		t.Errorf("after the late result: %s %s delivery %v", j.State, j.Result, j.Delivery)
	}
	if n := e.d.QueueLength("q"); n != 1 {
		t.Errorf("QueueLength = %d after the late result, want 1 (the other job)", n)
	}
	// The finished job never reaches another client.
	if b := other.pull("q"); b == nil || b.Lease.JobID != ids[1] {
		t.Fatalf("next pull got %v, want job %d", b, ids[1])
	}

	// Late, and pulled again since: refused; the new key is good.
	expire()
	c := p.pull("q")
	if c == nil || c.Lease.JobID != ids[1] || c.Attempt != 2 {
		t.Fatalf("re-pull got %v", c)
	}
	if err := other.report(LeaseRef{JobID: ids[1], LeaseID: c.Lease.LeaseID - 1}, `{}`); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("Report of the superseded key = %v, want refused", err)
	}

	// At the cap the job fails, and a late result is refused.
	expire()
	d := other.pull("q")
	expire()
	if st := e.state(ids[1]); st != broker.JobFailed {
		t.Fatalf("after 3 expired attempts the job is %s", st)
	}
	if err := other.report(d.Lease, `{}`); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("late Report of a failed job = %v", err)
	}
}

// A pulling client's leases outlive its session: closed, reopened, or a
// broker restart; a lease it never received is handed back without an
// attempt.
func TestPullLeasesOutliveSessions(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{ReconnectGrace: time.Second, TickInterval: time.Hour, Now: clk.Now})
	name := e.addPuller("watcher", "q", 2)
	p := e.openPull(name)
	e.queueJobs("q", 3, 0)
	a := p.pull("q")
	p.sess.Close(nil)
	clk.Add(5 * time.Second) // past the reconnect grace, within the lease
	e.d.onTick(clk.Now())
	e.settle()
	if st := e.state(a.Lease.JobID); st != broker.JobAssigned {
		t.Fatalf("a closed pulling session's job is %s, want still assigned", st)
	}
	if err := p.report(a.Lease, `{}`); err == nil {
		t.Error("Report on a closed session succeeded")
	}
	p = e.openPull(name)
	if err := p.report(a.Lease, `{"n":1}`); err != nil {
		t.Fatalf("Report on a new session: %v", err)
	}

	b := p.pull("q")
	e.stop()
	e.start()
	p = e.openPull(name)
	if err := p.report(b.Lease, `{"n":2}`); err != nil {
		t.Fatalf("Report after a restart: %v", err)
	}

	// The client stopped waiting before the lease was committed.
	release := e.holdWriter()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := p.sess.Pull(ctx, "q")
		done <- err
	}()
	testutil.Eventually(t, "the pull's lease to wait for the writer", func() bool { return e.pendingOps() > 0 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Pull with an ended context = %v", err)
	}
	release()
	e.settle()
	c := p.pull("q")
	if c == nil || c.Attempt != 1 {
		t.Fatalf("the handed-back job came back as %v, want attempt 1", c)
	}
}

// Pulling and streaming sessions do not mix.
func TestPullSessionKinds(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{}, "g1")
	if _, _, err := e.d.OpenPull(context.Background(), "g1"); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("OpenPull(graderd's server) = %v", err)
	}
	g := e.connect("g1", 1)
	if _, err := g.sess.Pull(context.Background(), "q"); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("Pull on a streaming session = %v", err)
	}
	if err := g.sess.Report(context.Background(), Result{}); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("Report on a streaming session = %v", err)
	}
}

// A job cancelled while its pulled lease is committed never reaches the
// client: its Pull gets nothing, at once, and the slot is free.
func TestPullOfAJobCancelledWhileCommitted(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{})
	p := e.openPull(e.addPuller("watcher", "q", 1))
	ids := e.queueJobs("q", 2, 0)
	release := e.holdWriter()
	pulled := make(chan *Assign, 1)
	go func() {
		// Bounded only so that a Pull left waiting fails the test rather
		// than hangs it.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a, err := p.sess.Pull(ctx, "q")
		if err != nil {
			t.Errorf("Pull: %v", err)
		}
		pulled <- a
	}()
	testutil.Eventually(t, "the pull's lease to wait for the writer", func() bool { return e.pendingOps() > 0 })
	cancelled := make(chan error, 1)
	go func() { cancelled <- e.d.CancelJob(context.Background(), ids[0], "operator:test") }()
	testutil.Eventually(t, "the cancellation to queue behind the lease", func() bool { return e.pendingOps() > 1 })
	release()
	if err := <-cancelled; err != nil {
		t.Fatal(err)
	}
	if a := <-pulled; a != nil {
		t.Errorf("the client got %v, a job cancelled while its lease was committed", a)
	}
	if b := p.pull("q"); b == nil || b.Lease.JobID != ids[1] {
		t.Errorf("the next pull got %v, want job %d (the slot is free)", b, ids[1])
	}
}
