package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// This file is the dispatcher's side of a grading server's connection, in
// Go terms: a server opens a Session with a Hello and feeds it what it
// reports (results, heartbeats, slot changes); what the dispatcher has to
// say to the server (assignments, acknowledgements, refusals,
// cancellations) waits in the session's outbox until the transport takes
// it. broker/graderapi carries sessions over graderd's gRPC stream; nothing
// here assumes a stream, so a server that pulls its jobs can be a session
// too.

// LeaseRef names one lease of one job.
type LeaseRef struct {
	JobID   int64
	LeaseID int64
}

// Hello is what a server says when it opens a session.
type Hello struct {
	// Slots is how many jobs the server takes at once. The dispatcher never
	// gives it more than min(Slots, max_concurrent_jobs).
	Slots int
	// Held lists the leases the server still holds: running, or finished
	// with a result it has not had acknowledged yet.
	Held []LeaseRef
	// Hostname is for the logs.
	Hostname string
	// Version is graderd's version, and Executors its executors with how
	// each isolates its runs: for the logs and for operators
	// (Dispatcher.ServerHello).
	Version   string
	Executors []broker.Executor
}

// Welcome answers a Hello: who the dispatcher takes the server for.
type Welcome struct {
	Server            string
	Type              string
	Tags              []string
	HeartbeatInterval time.Duration
	MaxConcurrentJobs int
}

// Result is a server's report of how one lease ended.
type Result struct {
	Lease   LeaseRef
	Outcome broker.Outcome
	// Result is the grader's JSON result.
	Result []byte
	// Log is the grader's log; Error why it failed, for outcomes but OK.
	Log   string
	Error string
	// Usage is what the run used, as far as the server measured it; nil
	// when it measured nothing.
	Usage *broker.Usage
	// Limit is the limit that ended the run, if one did.
	Limit broker.Limit
}

// Heartbeat is a server's periodic report of the leases it runs.
type Heartbeat struct {
	// Running lists the leases the server runs now.
	Running []LeaseRef
	// AssignsReceived is how many of the session's Assigns the server had
	// received when it sent the heartbeat: a lease whose Assign came later
	// is missing from Running for that reason alone.
	AssignsReceived uint64
}

// Message is one message for the server: *Assign, *Ack, *Reject or
// *Cancel.
type Message interface{ message() }

// Assign hands the server a job under a new lease.
type Assign struct {
	Lease   LeaseRef
	Attempt int
	Name    string
	JobData []byte
	Tags    []string
	Timeout time.Duration
	// Deadline is when the lease ends unless a heartbeat extends it.
	Deadline time.Time
	// RestrictPaths are the job's platform's restrict_paths: the grader
	// gets them in its job document (restrictToPaths), and graderd shows
	// it those inside the paths its own configuration allows.
	RestrictPaths []string
}

// Ack says the results of these leases are committed; the server may
// forget them.
type Ack struct{ Leases []LeaseRef }

// Reject refuses the result of a lease that is not current (expired,
// requeued, cancelled or unknown): it is dropped, and the server must
// forget it too.
type Reject struct {
	Lease  LeaseRef
	Reason string
}

// Cancel tells the server to stop running a lease.
type Cancel struct {
	Lease  LeaseRef
	Reason string
}

func (*Assign) message() {}
func (*Ack) message()    {}
func (*Reject) message() {}
func (*Cancel) message() {}

// Why the dispatcher ends a session. Each wraps the domain error that says
// how a transport should report it.
var (
	errShuttingDown = fmt.Errorf("%w: the broker is shutting down; reconnect later", broker.ErrUnavailable)
	errReplaced     = fmt.Errorf("%w: replaced by a newer connection from the same server", broker.ErrAborted)
	errCertReplaced = fmt.Errorf("%w: this server's certificate was replaced by an operator; reconnect with the new one", broker.ErrUnauthenticated)
	errRemoved      = fmt.Errorf("%w: this server was removed by an operator", broker.ErrPermissionDenied)
)

// Session is one open connection of a grading server. Its methods are safe
// for concurrent use; the dispatcher never blocks on it: messages for the
// server wait in its outbox until Messages takes them.
type Session struct {
	d   *Dispatcher
	srv *server

	mu      sync.Mutex
	queue   []Message
	acks    []LeaseRef
	assigns uint64 // Assigns queued so far
	// queued are the leases whose Assign waits in queue: Messages marks
	// them taken.
	queued []*lease
	ready  chan struct{}
	done   chan struct{}
	err    error
	closed bool
	// pulls is set for a pulling server's session (pull.go): its messages
	// go to the calls waiting for them rather than to the outbox.
	pulls *pullWaiters
}

func newSession(d *Dispatcher, srv *server) *Session {
	s := &Session{d: d, srv: srv, ready: make(chan struct{}, 1), done: make(chan struct{})}
	if srv.pull {
		s.pulls = &pullWaiters{assigns: make(map[int64]chan *Assign), results: make(map[int64][]chan Message)}
	}
	return s
}

// Ready receives a value when messages wait for Messages to take them.
func (s *Session) Ready() <-chan struct{} { return s.ready }

// Messages takes the messages waiting for the server, in the order they
// must be delivered; acknowledgements waiting together come last, as one
// Ack. Once the session has ended it returns nothing: what had not left
// by then never leaves, and the dispatcher counts it so (an Assign that
// never left costs its job no attempt).
func (s *Session) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	for _, l := range s.queued {
		l.sent.CompareAndSwap(assignQueued, assignTaken)
	}
	s.queued = nil
	out := s.queue
	s.queue = nil
	if len(s.acks) > 0 {
		out = append(out, &Ack{Leases: s.acks})
		s.acks = nil
	}
	return out
}

// Done is closed when the session ended: by Close, or by the dispatcher,
// in which case Err says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the dispatcher ended the session (shutting down, replaced
// by a newer session of the same server, certificate replaced, server
// removed), wrapping a domain error of package broker; nil while it is open
// or after Close.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) push(m Message) {
	s.mu.Lock()
	if s.pulls != nil {
		s.toWaiter(m)
		s.mu.Unlock()
		return
	}
	if !s.closed {
		s.queue = append(s.queue, m)
	}
	s.mu.Unlock()
	s.poke()
}

func (s *Session) poke() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// end closes the session with err (nil when the server side ended it). It
// is idempotent: the first reason stays.
func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed, s.err = true, err
	close(s.done)
}

func (s *Session) sendAssign(l *lease, aj store.AssignedJob, timeout time.Duration) {
	if s == nil {
		return
	}
	m := &Assign{Lease: LeaseRef{l.jobID, l.id}, Attempt: l.attempt, Name: aj.Name, JobData: aj.JobData,
		Tags: aj.Tags, Timeout: timeout, Deadline: l.deadline, RestrictPaths: aj.RestrictPaths}
	s.mu.Lock()
	if s.pulls != nil {
		// A pulling client has its Assign once the Pull waiting for it
		// takes it; a lease withdrawn meanwhile (the Pull gave up, or the
		// job was cancelled while the lease was committed) sends nothing.
		if l.sent.CompareAndSwap(assignPending, assignTaken) {
			s.toWaiter(m)
		} else if ch := s.pulls.assigns[l.jobID]; ch != nil {
			delete(s.pulls.assigns, l.jobID)
			ch <- nil // withdrawn: the Pull gets nothing, at once
		}
		s.mu.Unlock()
		return
	}
	// A lease withdrawn meanwhile (cancelled while it was being committed)
	// sends nothing; on a closed session the Assign stays pending, never
	// to leave.
	if !s.closed && l.sent.CompareAndSwap(assignPending, assignQueued) {
		s.queue = append(s.queue, m)
		s.queued = append(s.queued, l)
		s.assigns++
		l.assignSeq.Store(s.assigns)
	}
	s.mu.Unlock()
	s.poke()
}

func (s *Session) sendCancel(l *lease, reason string) {
	s.push(&Cancel{Lease: LeaseRef{l.jobID, l.id}, Reason: reason})
}

// sendAck queues an acknowledgement; acks waiting together leave as one
// message.
func (s *Session) sendAck(ref LeaseRef) {
	s.mu.Lock()
	if s.pulls != nil {
		s.toWaiter(&Ack{Leases: []LeaseRef{ref}})
		s.mu.Unlock()
		return
	}
	if !s.closed {
		s.acks = append(s.acks, ref)
	}
	s.mu.Unlock()
	s.poke()
}

// Open opens a session for the server registered with the certificate
// fingerprint, replacing any session it already has: the leases it still
// holds (h.Held) are kept, any other lease it had is requeued. It returns
// ErrNotFound for a fingerprint no server is registered with, and
// ErrUnavailable once the dispatcher is stopping.
func (d *Dispatcher) Open(ctx context.Context, fingerprint string, h Hello) (*Session, Welcome, error) {
	rec, tags, err := d.registration(ctx, fingerprint)
	if err != nil {
		return nil, Welcome{}, err
	}
	if rec.Pull != "" {
		return nil, Welcome{}, fmt.Errorf("%w: server %s pulls its jobs (%s) and connects no graderd", broker.ErrPermissionDenied, rec.Name, rec.Pull)
	}
	sess, w, err := d.attach(rec, tags, h)
	if err != nil {
		return nil, Welcome{}, err
	}
	d.log.Info("server connected", "server", rec.Name, "type", rec.Type, "slots", h.Slots, "running", len(h.Held),
		"hostname", h.Hostname, "version", h.Version)
	for _, e := range h.Executors {
		if e.Sandbox == broker.SandboxNone {
			d.log.Warn("a server's executor runs its graders without a sandbox, with graderd's powers", "server", rec.Name,
				"executor", e.Name, "type", e.Type)
		}
	}
	return sess, w, nil
}

// Probe answers a connection test of the server registered with the
// certificate fingerprint, leaving its session and leases alone. Errors are
// Open's.
func (d *Dispatcher) Probe(ctx context.Context, fingerprint string) (Welcome, error) {
	rec, tags, err := d.registration(ctx, fingerprint)
	if err != nil {
		return Welcome{}, err
	}
	d.mu.Lock()
	maxJobs := rec.MaxConcurrentJobs
	if s := d.servers[rec.ID]; s != nil {
		maxJobs = s.maxJobs
	}
	d.mu.Unlock()
	d.log.Info("connection test passed", "server", rec.Name)
	return Welcome{Server: rec.Name, Type: rec.Type, Tags: tags, HeartbeatInterval: d.cfg.HeartbeatInterval,
		MaxConcurrentJobs: maxJobs}, nil
}

// registration reads the server registered with a certificate fingerprint,
// and its type's tags.
func (d *Dispatcher) registration(ctx context.Context, fingerprint string) (broker.Server, []string, error) {
	rec, err := d.db.ServerByFingerprint(ctx, fingerprint)
	if err != nil {
		return rec, nil, fmt.Errorf("look up server certificate: %w", err)
	}
	tags, err := d.typeTags(ctx, rec.TypeID)
	return rec, tags, err
}

// typeTags reads the tags of server type id.
func (d *Dispatcher) typeTags(ctx context.Context, id int64) ([]string, error) {
	types, err := d.db.ListServerTypes(ctx)
	if err != nil {
		return nil, fmt.Errorf("list server types: %w", err)
	}
	for _, t := range types {
		if t.ID == id {
			return t.Tags, nil
		}
	}
	return nil, nil
}

// attach registers a new session for a server, replacing any older one.
func (d *Dispatcher) attach(rec broker.Server, tags []string, h Hello) (*Session, Welcome, error) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, Welcome{}, errShuttingDown
	}
	s := d.servers[rec.ID]
	if s == nil {
		s = d.addServer(rec, tags, now)
	}
	s.name, s.typeID, s.typeName, s.tags, s.maxJobs, s.fp = rec.Name, rec.TypeID, rec.Type, tags, rec.MaxConcurrentJobs, rec.Cert.Fingerprint
	if s.sess != nil {
		old := s.sess
		d.detachLocked(old)
		old.end(errReplaced)
	}
	sess := newSession(d, s)
	s.sess = sess
	s.slots = h.Slots
	s.version, s.executors = h.Version, slices.Clone(h.Executors)
	s.full = false
	s.lastSeen = now
	d.connectedByType[s.typeID]++

	held := make(map[int64]bool, len(h.Held))
	for _, r := range h.Held {
		held[r.LeaseID] = true
	}
	if s.pull {
		// A pulling client lists nothing: it may still work on every
		// lease it took, which ends at its deadline.
		for id := range s.leases {
			held[id] = true
		}
	}
	for _, l := range s.leases {
		switch {
		case held[l.id]:
			// Still running there, or its result is on its way: keep it.
			l.reported = true
		case l.zombie:
			delete(s.leases, l.id)
		default:
			d.endAttempt(l, broker.EndLost, "server reconnected without it (graderd restarted?)", "server:"+s.name)
		}
	}
	d.holdReported(s, h.Held)
	d.fill(s, now)
	w := Welcome{Server: s.name, Type: s.typeName, Tags: tags, HeartbeatInterval: d.cfg.HeartbeatInterval,
		MaxConcurrentJobs: s.maxJobs}
	return sess, w, nil
}

// Close ends the session from the server's side: its connection is gone.
// The server's leases wait the reconnect grace for it to come back; reason,
// if not nil, is logged. It is idempotent.
func (s *Session) Close(reason error) {
	s.d.mu.Lock()
	s.d.detachLocked(s)
	name := s.srv.name // an operator may rename it meanwhile
	s.d.mu.Unlock()
	s.end(nil)
	msg := "closed"
	if err := s.Err(); err != nil {
		msg = err.Error()
	} else if reason != nil {
		msg = reason.Error()
	}
	s.d.log.Info("server disconnected", "server", name, "reason", msg)
}

func (d *Dispatcher) detachLocked(sess *Session) {
	s := sess.srv
	if s.sess != sess {
		return
	}
	s.sess = nil
	s.disconnectedAt = d.cfg.Now()
	d.connectedByType[s.typeID]--
	d.updateFree(s)
}

// current reports whether sess is its server's live session; the reports
// of a replaced or closed session count for nothing but refusals.
func (s *Session) current() bool { return s.srv.sess == s }

// Result takes the server's report of how a lease ended. Only the current
// lease's result is kept: it is committed, then acknowledged; any other is
// refused with a Reject.
func (s *Session) Result(r Result) {
	d := s.d
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	srv := s.srv
	srv.lastSeen = now
	// A result frees the server's slot; a job handed back for want of one
	// says it has none.
	wasFull := srv.full
	if srv.full = r.Outcome == broker.OutcomeNotStarted; srv.full != wasFull {
		d.updateFree(srv)
	}
	l := d.leases[r.Lease.LeaseID]
	if l == nil && s.current() {
		// A pulling client's result may come after its lease expired,
		// while the key it holds is still the job's latest (pull.go).
		l = d.lateLease(srv, r)
	}
	if l == nil || l.jobID != r.Lease.JobID || l.srv != srv || !s.current() {
		d.stats.StaleResults++
		refill := wasFull && !srv.full
		if z := srv.leases[r.Lease.LeaseID]; z != nil && z.zombie {
			delete(srv.leases, r.Lease.LeaseID)
			refill = true
		}
		if refill {
			d.fill(srv, now)
		}
		d.log.Warn("refused a result for a lease that is not current", "server", srv.name, "job_id", r.Lease.JobID, "lease_id", r.Lease.LeaseID)
		s.push(&Reject{Lease: r.Lease, Reason: fmt.Sprintf("lease %d of job %d is not current (expired, requeued, cancelled or unknown); result dropped",
			r.Lease.LeaseID, r.Lease.JobID)})
		return
	}
	d.dropLease(l)
	l.usage, l.limit = r.Usage, r.Limit
	valid := len(r.Result) == 0 || json.Valid(r.Result)
	kind := resultKind(r, valid)
	d.mx.result(kind)
	ack := func() { s.sendAck(r.Lease) }
	if report := d.cfg.OnRun; report != nil && (r.Usage != nil || r.Limit != "") {
		// Reported once the result is committed, just before its Ack: off
		// the dispatcher's lock, and before the server hears it was kept.
		run := Run{Outcome: ResultNames[kind], ServerType: srv.typeName, Usage: r.Usage, Limit: r.Limit}
		ack = func() {
			report(run)
			s.sendAck(r.Lease)
		}
	}
	// The job's attributes go on each call rather than through log.With,
	// which formats them even when the level is off (this runs per job).
	log := d.log
	switch kind {
	case ResultOK:
		log.Info("job done", "server", srv.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt)
		d.finish(l, store.Final{PlatformID: l.platform, State: broker.JobDone, Outcome: r.Outcome, Result: r.Result,
			Log: r.Log, Actor: "server:" + srv.name}, broker.EndOK, "", ack)
	case ResultFatal:
		msg := r.Error
		if msg == "" {
			msg = "the grader reported a fatal error"
		}
		res := r.Result
		if !valid || len(res) == 0 {
			res = nil
		}
		log.Info("job failed: fatal result", "server", srv.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "error", msg)
		d.finish(l, store.Final{PlatformID: l.platform, State: broker.JobFailed, Outcome: r.Outcome, Result: res, Log: r.Log,
			Error: msg, Actor: "server:" + srv.name}, broker.EndFatal, msg, ack)
	case ResultTemporary, ResultTimeout:
		reason := r.Error
		if reason == "" {
			reason = "no reason given"
		}
		end := broker.EndTemporary
		if kind == ResultTimeout {
			end = broker.EndTimeout
		}
		log.Info("attempt ended; requeueing", "server", srv.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "outcome", end, "reason", reason)
		d.endAttempt(l, end, reason, "server:"+srv.name)
		d.w.enqueue(&op{apply: func(*store.JobTx) error { return nil }, after: ack})
	case ResultNotStarted:
		reason := r.Error
		if reason == "" {
			reason = "the server had no free slot"
		}
		log.Warn("server had no free slot for the job; requeueing it without using an attempt", "server", srv.name,
			"job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "reason", reason)
		d.giveBack(l, broker.EndNotStarted, reason, "server:"+srv.name)
		d.w.enqueue(&op{apply: func(*store.JobTx) error { return nil }, after: ack})
	default:
		// An OK without a JSON result, or an unknown outcome: the server is
		// misbehaving. The attempt counts and another server gets the job.
		reason := "server sent an empty or invalid result"
		if !valid {
			reason = "server sent a result that is not JSON"
		}
		log.Warn("invalid result; requeueing", "server", srv.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "outcome", int(r.Outcome), "reason", reason)
		d.endAttempt(l, broker.EndInvalid, reason, "server:"+srv.name)
		d.w.enqueue(&op{apply: func(*store.JobTx) error { return nil }, after: ack})
	}
	d.fill(srv, now)
}

// resultKind classifies a result of a current lease as ResultNames counts
// it; valid says its result is empty or JSON.
func resultKind(r Result, valid bool) int {
	switch r.Outcome {
	case broker.OutcomeOK:
		if len(r.Result) > 0 && valid {
			return ResultOK
		}
	case broker.OutcomeFatal:
		return ResultFatal
	case broker.OutcomeTemporary:
		return ResultTemporary
	case broker.OutcomeTimeout:
		return ResultTimeout
	case broker.OutcomeNotStarted:
		return ResultNotStarted
	}
	// An OK without a JSON result, or an unknown outcome.
	return ResultInvalid
}

// Heartbeat extends the leases the server still runs and lets go of the
// zombies it no longer runs.
func (s *Session) Heartbeat(hb Heartbeat) {
	d := s.d
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	srv := s.srv
	srv.lastSeen = now
	running := make(map[int64]bool, len(hb.Running))
	for _, r := range hb.Running {
		running[r.LeaseID] = true
		l := srv.leases[r.LeaseID]
		if l != nil {
			l.reported = true
		}
		if l != nil && !l.zombie {
			ext := now.Add(3 * d.cfg.HeartbeatInterval)
			if ext.After(l.deadline) {
				l.deadline = ext
				if l.deadline.After(l.hard) {
					l.deadline = l.hard
				}
			}
		}
	}
	d.holdReported(srv, hb.Running)
	freed := false
	for id, l := range srv.leases {
		if !l.zombie || running[id] {
			continue
		}
		// Not listed, because the server let go of it, or because it had
		// not received its Assign when it sent the heartbeat (queued
		// behind a partition, say): only the first frees the slot.
		if seq := l.assignSeq.Load(); l.reported || seq != 0 && seq <= hb.AssignsReceived {
			delete(srv.leases, id)
			freed = true
		}
	}
	// A server that said it had no free slot counts as full until its next
	// report: the leases a heartbeat lists are all counted now, so a slot
	// the dispatcher still sees free is free by the server's word too (at
	// worst it hands back one more job per heartbeat, at no attempt's cost).
	if srv.full {
		srv.full, freed = false, true
	}
	if freed {
		d.fill(srv, now)
	}
}

// holdReported counts against server s's slots every lease it reports
// holding that the dispatcher had ended or never knew (their deadline
// passed while the broker was down, say): the server still runs them, or
// still has their result to send. They are zombies: their results are
// refused, and they go when the server reports them or stops listing them.
func (d *Dispatcher) holdReported(s *server, refs []LeaseRef) {
	for _, r := range refs {
		if s.leases[r.LeaseID] != nil || d.leases[r.LeaseID] != nil {
			continue
		}
		s.leases[r.LeaseID] = &lease{id: r.LeaseID, jobID: r.JobID, srv: s, zombie: true, reported: true}
	}
}

// SetSlots changes how many jobs the server takes at once; 0 drains it.
func (s *Session) SetSlots(n int) {
	d := s.d
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	srv := s.srv
	if !s.current() {
		return
	}
	srv.slots, srv.full = n, false
	d.log.Info("server changed its slots", "server", srv.name, "slots", n)
	d.fill(srv, now)
}
