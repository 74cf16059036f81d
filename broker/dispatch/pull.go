package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/gradebroker/gradebroker/broker"
)

// This file is the dispatcher's side of a server that pulls its jobs: an
// XQueue user pulling one queue, as xqueue-watcher's get_submission does.
// Its session is an ordinary Session whose leases are handed out on
// request (Pull) instead of pushed: the same ordering, slots (min of its
// max_concurrent_jobs and nothing else: it reports no slots), leases,
// fencing and attempt cap. What differs follows from a client that sends
// no heartbeats and cannot be told anything between its requests:
//
//   - its leases run to their deadline (the job's timeout plus the grace)
//     whether its session is open or not, and nothing extends them;
//   - a lease taken back from it (expired, cancelled, requeued) frees its
//     slot at once;
//   - an expired lease of it whose job was requeued, and that nobody has
//     pulled since, still takes its result (lateLease): XQueue accepts a
//     late result whose key is current, a grader that ran long has done
//     real work, and since the job then has no other lease no second
//     result can be kept.

// errSessionClosed is a Pull or Report on a session that its server or
// the dispatcher ended.
var errSessionClosed = fmt.Errorf("%w: the session is closed; open another", broker.ErrAborted)

// pullWaiters are the calls of a pulling session waiting for its messages:
// a Pull for the Assign of the job it took (by job id: the lease is made
// after the call waits), a Report for the Ack or Reject of the result it
// gave (by lease id). The session's mu guards them.
type pullWaiters struct {
	assigns map[int64]chan *Assign
	results map[int64][]chan Message
}

// toWaiter hands m to the call waiting for it; a message nobody waits for
// (a Cancel: the client cannot be told) is dropped. s.mu is held.
func (s *Session) toWaiter(m Message) {
	switch m := m.(type) {
	case *Assign:
		if ch := s.pulls.assigns[m.Lease.JobID]; ch != nil {
			delete(s.pulls.assigns, m.Lease.JobID)
			ch <- m
		}
	case *Ack:
		for _, ref := range m.Leases {
			s.toResult(ref.LeaseID, m)
		}
	case *Reject:
		s.toResult(m.Lease.LeaseID, m)
	}
}

func (s *Session) toResult(leaseID int64, m Message) {
	for _, ch := range s.pulls.results[leaseID] {
		ch <- m
	}
	delete(s.pulls.results, leaseID)
}

// assignRefused tells a Pull waiting for job jobID that the database
// refused its lease: it gets nothing.
func (s *Session) assignRefused(jobID int64) {
	if s == nil || s.pulls == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.pulls.assigns[jobID]; ch != nil {
		delete(s.pulls.assigns, jobID)
		ch <- nil
	}
}

// OpenPull opens a session for the pulling server registered as name,
// replacing any session it has. Every lease it holds is kept: a pulling
// client lists none, and its leases end at their deadline. It returns
// ErrNotFound for an unknown server, ErrPermissionDenied for a server that
// connects graderd, and ErrUnavailable once the dispatcher is stopping.
func (d *Dispatcher) OpenPull(ctx context.Context, name string) (*Session, Welcome, error) {
	rec, err := d.db.ServerByName(ctx, name)
	if err != nil {
		return nil, Welcome{}, fmt.Errorf("look up server: %w", err)
	}
	if rec.Pull == "" {
		return nil, Welcome{}, fmt.Errorf("%w: server %s connects graderd; it cannot pull", broker.ErrPermissionDenied, name)
	}
	tags, err := d.typeTags(ctx, rec.TypeID)
	if err != nil {
		return nil, Welcome{}, err
	}
	// Its capacity is its max_concurrent_jobs: a pulling client says
	// nothing of slots of its own.
	sess, w, err := d.attach(rec, tags, Hello{Slots: math.MaxInt32, Hostname: rec.Pull})
	if err != nil {
		return nil, Welcome{}, err
	}
	d.log.Info("pulling client connected", "server", rec.Name, "type", rec.Type, "max_jobs", w.MaxConcurrentJobs)
	return sess, w, nil
}

// Pull hands the session's server one job of pull queue queue under a new
// lease, the best it may take (by priority, fair turns between platforms,
// then age), and returns once the lease is committed. It returns nil when
// no job of the queue waits that the server may take, all its slots are in
// use, or the job it took was cancelled while its lease was committed. When ctx ends before the commit, the lease is handed back at
// no attempt's cost and ctx's error returned. It returns ErrUnavailable
// once the dispatcher is stopping, and ErrAborted for a session that
// ended.
func (s *Session) Pull(ctx context.Context, queue string) (*Assign, error) {
	if s.pulls == nil {
		return nil, fmt.Errorf("%w: server %s is not a pulling client", broker.ErrFailedPrecondition, s.srv.name)
	}
	d := s.d
	now := d.cfg.Now()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, errShuttingDown
	}
	if !s.current() {
		d.mu.Unlock()
		return nil, errSessionClosed
	}
	srv := s.srv
	srv.lastSeen = now
	if srv.freeSlots() <= 0 {
		d.mu.Unlock()
		return nil, nil
	}
	cand := d.bestOf(srv, now.UnixMilli(), true, queue)
	if cand == nil {
		d.mu.Unlock()
		return nil, nil
	}
	q := cand.c.take(cand.lv, cand.pq, cand.fromAgain)
	d.turnSeq++
	d.turn[cand.pq.platform] = d.turnSeq
	// Waiting before the lease exists, so that its Assign, sent by the
	// writer after the commit, finds the waiter.
	ch := make(chan *Assign, 1)
	s.mu.Lock()
	s.pulls.assigns[q.id] = ch
	s.mu.Unlock()
	l := d.assign(srv, q, cand.c, cand.lv.prio, cand.pq.platform, now)
	d.mu.Unlock()
	select {
	case a := <-ch:
		// nil: the job was cancelled while its lease was committed (or
		// the database refused the lease, which the dispatcher logs): no
		// job for this pull; the client asks again.
		return a, nil
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.pulls.assigns, q.id)
		s.mu.Unlock()
		s.Return(LeaseRef{JobID: q.id, LeaseID: l.id}, "the client stopped waiting for it")
		return nil, ctx.Err()
	case <-d.stopped:
		return nil, errShuttingDown
	}
}

// Return hands back a lease the client never received (it stopped waiting
// before Pull answered): the job is requeued and its attempt given back.
// A lease that is not the server's current one is left alone.
func (s *Session) Return(ref LeaseRef, reason string) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.leases[ref.LeaseID]
	if l == nil || l.jobID != ref.JobID || l.srv != s.srv {
		return
	}
	// Its Assign may have reached the Pull that stopped waiting, or be
	// still on its way: either way the client never had it.
	l.withdraw()
	d.log.Info("lease handed back unsent", "server", s.srv.name, "job_id", l.jobID, "lease_id", l.id, "reason", reason)
	d.giveBack(l, broker.EndNotStarted, reason, "server:"+s.srv.name)
}

// Report takes the session's server's result of one lease, as Result
// does, and waits until it is committed (nil) or refused: a lease that is
// not current (expired and pulled since, cancelled, requeued, unknown, or
// another server's) is ErrFailedPrecondition. It returns ctx's error when
// ctx ends first; the result is still committed or refused.
func (s *Session) Report(ctx context.Context, r Result) error {
	if s.pulls == nil {
		return fmt.Errorf("%w: server %s is not a pulling client", broker.ErrFailedPrecondition, s.srv.name)
	}
	ch := make(chan Message, 1)
	id := r.Lease.LeaseID
	s.mu.Lock()
	s.pulls.results[id] = append(s.pulls.results[id], ch)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		waiting := s.pulls.results[id]
		for i, c := range waiting {
			if c == ch {
				s.pulls.results[id] = append(waiting[:i], waiting[i+1:]...)
				break
			}
		}
		if len(s.pulls.results[id]) == 0 {
			delete(s.pulls.results, id)
		}
	}()
	s.Result(r)
	select {
	case m := <-ch:
		if rj, ok := m.(*Reject); ok {
			return fmt.Errorf("%w: %s", broker.ErrFailedPrecondition, rj.Reason)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.d.stopped:
		return errShuttingDown
	}
}

// rememberLate keeps expired lease l of a pulling server, whose job was
// requeued, so that its result may still be taken until the job is pulled
// again (lateLease). d.mu is held.
func (d *Dispatcher) rememberLate(l *lease) {
	d.forgetLate(l.jobID)
	d.late[l.id] = l
	d.lateByJob[l.jobID] = l.id
}

// forgetLate forgets the expired lease of job id, whose result may no
// longer be taken. d.mu is held.
func (d *Dispatcher) forgetLate(jobID int64) {
	if id, ok := d.lateByJob[jobID]; ok {
		delete(d.late, id)
		delete(d.lateByJob, jobID)
	}
}

// lateLease returns the expired lease a pulling server's result r is for,
// when it may still be kept: the lease is the server's, its job waits in
// the queue, nobody has pulled it since and it was not cancelled, and r is
// a final result (OK with JSON, or FATAL). The job then leaves the queue
// (its class drops it when it reaches it) and the caller finishes it with
// r. Otherwise it returns nil. d.mu is held.
func (d *Dispatcher) lateLease(srv *server, r Result) *lease {
	l := d.late[r.Lease.LeaseID]
	if l == nil || l.jobID != r.Lease.JobID || l.srv != srv {
		return nil
	}
	if _, gone := d.cancelled[l.jobID]; gone {
		return nil
	}
	final := r.Outcome == broker.OutcomeOK && len(r.Result) > 0 && json.Valid(r.Result) || r.Outcome == broker.OutcomeFatal
	if !final {
		return nil
	}
	d.forgetLate(l.jobID)
	d.cancelled[l.jobID] = l.cls
	l.cls.cancelled++
	d.log.Info("late result of an expired lease taken: the job was not pulled again", "server", srv.name,
		"job_id", l.jobID, "lease_id", l.id)
	return l
}

// LeaseHolder tells which server holds lease ref: its current lease, or
// an expired one of a pulling server whose result may still be taken
// (current is then false). ok is false for any other lease.
func (d *Dispatcher) LeaseHolder(ref LeaseRef) (server string, current, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.leases[ref.LeaseID]; l != nil && l.jobID == ref.JobID && l.srv != nil {
		return l.srv.name, true, true
	}
	if l := d.late[ref.LeaseID]; l != nil && l.jobID == ref.JobID {
		if _, gone := d.cancelled[l.jobID]; !gone {
			return l.srv.name, false, true
		}
	}
	return "", false, false
}

// QueueLength tells how many jobs of pull queue queue wait for a server.
func (d *Dispatcher) QueueLength(queue string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.classes {
		if c.queue == queue {
			n += c.waiting()
		}
	}
	return n
}
