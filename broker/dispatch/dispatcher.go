// Package dispatch matches queued jobs to connected grading servers, keeps
// their leases, and turns results into final job states.
//
// All in-memory state sits behind one mutex; every change to a job is also
// queued, in order, for one writer goroutine that commits many changes in one
// SQLite transaction (group commit) and only then acts on them: an Assign is
// sent, an Ack is returned, a waiter is woken, after the change is on disk.
// The database is the truth: at start the queues and leases are rebuilt from
// it, so a crash loses nothing that was acknowledged.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/startstop"
)

// Config tunes a Dispatcher. The zero value of each field means its default.
type Config struct {
	// MaxAttempts is how many attempts a job gets before it fails; default 3.
	MaxAttempts int
	// DefaultTimeout is a job's timeout when it names none; default 300 s.
	DefaultTimeout time.Duration
	// MaxTimeout bounds any job's timeout; default 1 h.
	MaxTimeout time.Duration
	// LeaseGrace is added to a job's timeout to make its lease deadline, so
	// that a result sent at the last moment still lands; default 30 s.
	LeaseGrace time.Duration
	// ReconnectGrace is how long a disconnected server's leases wait for it
	// to come back before they are requeued; default 30 s.
	ReconnectGrace time.Duration
	// HeartbeatInterval is how often graderd sends heartbeats; default 10 s.
	HeartbeatInterval time.Duration
	// AvoidFor is how long a requeued job waits for a server other than the
	// one that failed it, when such a server is connected; default 30 s.
	AvoidFor time.Duration
	// TickInterval is how often deadlines are checked; default 250 ms.
	TickInterval time.Duration
	// MaxBatch bounds how many changes go in one transaction; default 4096.
	MaxBatch int
	// Now replaces time.Now, for tests.
	Now func() time.Time
	// OnCommit, if set, is called by the writer after each committed batch
	// with its number of changes and how long its transaction took, from
	// begin to commit. It runs on the writer goroutine: it must be quick.
	OnCommit func(ops int, took time.Duration)
	// OnRun, if set, is called for every result of a current lease that
	// says what its run used or which limit ended it (a result refused as
	// stale is not: the broker kept another). It runs on the writer
	// goroutine once the result is committed, just before the server's
	// Ack is queued: it must be quick.
	OnRun func(Run)
}

// Run is one grading run as its server reported it, for metrics.
type Run struct {
	// Outcome is how the run ended, one of ResultNames.
	Outcome string
	// ServerType is the type of the server that ran it.
	ServerType string
	// Usage is what the run used; nil when the server measured nothing.
	Usage *broker.Usage
	// Limit is the limit that ended the run, if one did.
	Limit broker.Limit
}

func (c *Config) setDefaults() {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = 300 * time.Second
	}
	if c.MaxTimeout <= 0 {
		c.MaxTimeout = time.Hour
	}
	if c.LeaseGrace <= 0 {
		c.LeaseGrace = 30 * time.Second
	}
	if c.ReconnectGrace <= 0 {
		c.ReconnectGrace = 30 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.AvoidFor <= 0 {
		c.AvoidFor = 30 * time.Second
	}
	if c.TickInterval <= 0 {
		c.TickInterval = 250 * time.Millisecond
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 4096
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Timeout returns the timeout a job gets when it asks for sec seconds (0 for
// the default), bounded by the maximum.
func (c Config) Timeout(sec int) time.Duration {
	c.setDefaults()
	if sec <= 0 {
		return c.DefaultTimeout
	}
	return min(time.Duration(sec)*time.Second, c.MaxTimeout)
}

// server is a registered grading server as the dispatcher sees it.
type server struct {
	id       int64
	name     string
	typeID   int64
	typeName string
	tags     []string
	maxJobs  int
	fp       string // certificate fingerprint, to notice a changed certificate

	sess           *Session // nil while disconnected
	slots          int
	leases         map[int64]*lease // every lease it holds, including zombies
	disconnectedAt time.Time
	lastSeen       time.Time
	wakeupURL      string // empty: it cannot be woken (wakeup.go)
	// drained: an operator drained it (ops.go); it gets no new jobs.
	drained bool
	// version and executors are what graderd reported in its last Hello,
	// for operators (an executor without a sandbox must show).
	version   string
	executors []broker.Executor
	// full: it handed a job back for want of a free slot, so the
	// dispatcher's count of its leases is short; it gets no new jobs
	// until it reports again (a result or a heartbeat), changes its slots
	// or reconnects.
	full bool
	// pull: it pulls its jobs (broker.Server.Pull; pull.go) rather than
	// have them pushed. It is never in the free sets, its leases run to
	// their deadline whether its session is open or not, and a lease taken
	// back from it frees its slot at once: it cannot be told.
	pull bool
}

func (s *server) capacity() int {
	if s.sess == nil || s.drained {
		return 0
	}
	return min(s.slots, s.maxJobs)
}

func (s *server) freeSlots() int {
	if s.full {
		return 0
	}
	return s.capacity() - len(s.leases)
}

// lease is one running attempt.
type lease struct {
	id       int64
	jobID    int64
	srv      *server
	attempt  int
	deadline time.Time
	hard     time.Time // heartbeats never extend a lease past this
	// Where the job goes back to if the lease ends without a final result.
	cls      *class
	prio     int
	platform int64
	q        qjob
	// zombie: the lease was cancelled or taken back but the server may still
	// run it; it counts against the server's slots until the server reports
	// it or stops listing it, and its result is refused.
	zombie bool
	// assignSeq is the number of the lease's Assign among those its session
	// sent, 0 until it is sent; reported says the server listed the lease
	// in a Hello or heartbeat. A heartbeat that does not list the lease
	// shows the server let go of it only if it counts the Assign or the
	// server listed the lease before.
	assignSeq atomic.Uint64
	reported  bool
	// sess is the session the lease's Assign goes to (nil for a lease
	// loaded at start, whose Assign left before the restart), and sent
	// how far the Assign got (assignPending...): a lease the broker ends
	// before its Assign left was never the server's, and must cost its
	// job nothing.
	sess *Session
	sent atomic.Int32
	// usage and limit are what the lease's run used and the limit that
	// ended it, as its result reported them: they are written with the
	// lease's end.
	usage *broker.Usage
	limit broker.Limit
}

// How far a lease's Assign got (lease.sent). An Assign leaves when the
// transport takes it from the session's outbox; until then the broker can
// still keep it from leaving.
const (
	// assignPending: the lease is being committed; its Assign waits.
	assignPending int32 = iota
	// assignQueued: the Assign waits in its session's outbox.
	assignQueued
	// assignTaken: the transport took the Assign; the server may have it.
	assignTaken
	// assignWithdrawn: the broker ended the lease before its Assign left;
	// it never will.
	assignWithdrawn
)

// withdraw keeps the lease's Assign from leaving if it has not left yet,
// and reports whether it never left: then the server never had the job.
// An Assign waiting in the outbox of an open session is left to go: what
// the caller sends next (a Cancel) follows it.
func (l *lease) withdraw() bool {
	if l.sent.CompareAndSwap(assignPending, assignWithdrawn) {
		return true
	}
	s := l.sess
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed && l.sent.CompareAndSwap(assignQueued, assignWithdrawn)
}

// Stats are counters for monitoring.
type Stats struct {
	Queued       int
	Running      int
	Connected    int
	FreeSlots    int
	StaleResults uint64
	Assigned     uint64
	// AssignedInline counts the leases written in the transaction that
	// stored their job (a slot was free when it was submitted).
	AssignedInline uint64
	Finished       uint64
	Requeued       uint64
	Expired        uint64
	Batches        uint64
	BatchOps       uint64
}

// Dispatcher is the matching engine and lease keeper. Servers talk to it
// through Sessions (session.go); platforms and operators through its
// methods.
type Dispatcher struct {
	cfg Config
	db  *store.DB
	log *slog.Logger

	mu              sync.Mutex
	classes         map[string]*class
	classesByType   map[int64][]*class
	turn            map[int64]uint64 // platform → when it was last served
	turnSeq         uint64
	servers         map[int64]*server
	byName          map[string]*server
	free            map[int64]map[*server]struct{} // type → servers with a free slot
	connectedByType map[int64]int
	leases          map[int64]*lease // current leases by id
	leaseByJob      map[int64]*lease
	cancelled       map[int64]*class // queued jobs cancelled (or finished by a late result), dropped when reached; their class if known
	// reopened are jobs reopened while their entry from before their
	// cancellation was still queued: the entry takes these fields when a
	// server reaches it, rather than a second entry joining it.
	reopened  map[int64]qjob
	late      map[int64]*lease // expired leases of pulling servers whose result may still come (pull.go)
	lateByJob map[int64]int64  // job id → its lease in late
	nextLease int64
	waiters   map[int64][]chan struct{}
	stats     Stats
	onFinal   func(jobID, deliveryID int64)
	wake      wakeState
	mx        metricCounts
	closed    bool
	lastTouch time.Time // when servers' last_seen was last written

	w *writer
	// inline, while set, makes assign write its lease into this transaction
	// rather than queue an op for a later one (see Submit).
	inline *inlineTx

	life    startstop.Base
	stopped <-chan struct{} // life.Done(), kept for the writer's hot path
}

// inlineTx collects the leases assign wrote into a transaction that is
// being applied, and what to do once it commits.
type inlineTx struct {
	tx *store.JobTx
	// inserted are the jobs this transaction stored, whose fields need not
	// be read back to send their Assign.
	inserted map[int64]*broker.NewJob
	after    []func()
	err      error // a storage failure; the batch must not commit
}

// New makes a Dispatcher over db. Call Start before use.
func New(db *store.DB, cfg Config, log *slog.Logger) *Dispatcher {
	cfg.setDefaults()
	if log == nil {
		log = slog.Default()
	}
	d := &Dispatcher{
		cfg:             cfg,
		db:              db,
		log:             log,
		classes:         make(map[string]*class),
		classesByType:   make(map[int64][]*class),
		turn:            make(map[int64]uint64),
		servers:         make(map[int64]*server),
		byName:          make(map[string]*server),
		free:            make(map[int64]map[*server]struct{}),
		connectedByType: make(map[int64]int),
		leases:          make(map[int64]*lease),
		leaseByJob:      make(map[int64]*lease),
		cancelled:       make(map[int64]*class),
		late:            make(map[int64]*lease),
		lateByJob:       make(map[int64]int64),
		reopened:        make(map[int64]qjob),
		waiters:         make(map[int64][]chan struct{}),
	}
	d.stopped = d.life.Done()
	d.w = newWriter(d)
	return d
}

// Config returns the dispatcher's configuration with defaults filled in.
func (d *Dispatcher) Config() Config { return d.cfg }

// SetFinalHook sets a function called, after commit, for every job that
// became final with a delivery to make. The delivery worker uses it to start
// at once rather than at its next poll.
func (d *Dispatcher) SetFinalHook(fn func(jobID, deliveryID int64)) {
	d.mu.Lock()
	d.onFinal = fn
	d.mu.Unlock()
}

// Start rebuilds the queues and leases from the database and starts the
// writer and the deadline ticker. It returns once the state is loaded; ctx
// bounds the loading, and the dispatcher runs until Stop (see
// internal/startstop).
func (d *Dispatcher) Start(ctx context.Context) error {
	if _, err := d.life.Start(ctx); err != nil {
		return fmt.Errorf("dispatcher: %w", err)
	}
	// The writer runs from the start: loading queues changes (leases that
	// expired while the broker was down), and a Stop during the load
	// flushes them.
	d.life.Go(d.w.run)
	if err := d.load(ctx); err != nil {
		d.Stop()
		return fmt.Errorf("load dispatcher state: %w", err)
	}
	if !d.life.Go(d.tick) {
		return fmt.Errorf("dispatcher: %w during start", startstop.ErrStopped)
	}
	return nil
}

// Done is closed when the dispatcher has stopped, on Stop or on a storage
// failure; Err then says why.
func (d *Dispatcher) Done() <-chan struct{} { return d.stopped }

// Err returns why the dispatcher stopped, or nil while it runs or after a
// clean Stop.
func (d *Dispatcher) Err() error { return d.life.Err() }

// Stop closes every server session, commits what is pending and stops. It
// is idempotent, and safe before Start.
func (d *Dispatcher) Stop() {
	d.shutdown()
	d.life.Stop(d.w.flush)
}

// shutdown refuses new work from now on and closes every server session.
func (d *Dispatcher) shutdown() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for _, s := range d.servers {
		if s.sess != nil {
			s.sess.end(errShuttingDown)
		}
	}
}

// fail stops the dispatcher after a storage failure: the in-memory state can
// no longer be trusted to match the database, and a restart rebuilds it.
// It runs on the writer, so it does not wait for the writer to end.
func (d *Dispatcher) fail(err error) {
	d.log.Error("dispatcher stopping: storage failed; restart the broker to rebuild from the database", "err", err)
	d.shutdown()
	d.life.Cancel(err)
}

// load rebuilds the in-memory state from the database.
func (d *Dispatcher) load(ctx context.Context) error {
	types, err := d.db.ListServerTypes(ctx)
	if err != nil {
		return err
	}
	typeTags := make(map[int64][]string, len(types))
	for _, t := range types {
		typeTags[t.ID] = t.Tags
	}
	servers, err := d.db.ListServers(ctx)
	if err != nil {
		return err
	}
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range servers {
		d.addServer(s, typeTags[s.TypeID], now)
	}
	if err := d.loadDrained(ctx); err != nil {
		return err
	}
	maxLease, err := d.db.MaxLeaseID(ctx)
	if err != nil {
		return err
	}
	d.nextLease = maxLease + 1
	open, err := d.db.OpenLeases(ctx)
	if err != nil {
		return err
	}
	leaseOf := make(map[int64]store.OpenLease, len(open))
	for _, l := range open {
		leaseOf[l.JobID] = l
	}
	var expired []*lease
	err = d.db.LoadOpenJobs(ctx, func(j store.OpenJob) error {
		cls := d.classFor(j.TypeIDs, j.Queue)
		q := qjob{id: j.ID, created: j.CreatedAt.UnixMilli(), timeoutMS: j.TimeoutMS,
			attempts: int32(j.Attempts), maxAttempts: int32(j.MaxAttempts), avoid: j.AvoidServerID}
		if j.State == broker.JobQueued {
			if j.Attempts > 0 {
				q.requeuedAt = now.UnixMilli()
			}
			cls.push(j.Priority, j.PlatformID, q)
			return nil
		}
		ol, ok := leaseOf[j.ID]
		if !ok || ol.ID != j.LeaseID {
			// Assigned without an open lease cannot happen through the
			// dispatcher; repair it by requeueing.
			ol = store.OpenLease{ID: j.LeaseID, JobID: j.ID, Number: j.Attempts, Deadline: now}
		}
		l := &lease{id: ol.ID, jobID: j.ID, attempt: ol.Number, deadline: ol.Deadline,
			hard: ol.Deadline, cls: cls, prio: j.Priority, platform: j.PlatformID, q: q}
		// Its Assign may have reached the server before the restart.
		l.sent.Store(assignTaken)
		srv := d.servers[ol.ServerID]
		d.leases[l.id] = l
		d.leaseByJob[j.ID] = l
		if srv == nil || !ol.Deadline.After(now) {
			expired = append(expired, l)
			if srv != nil {
				l.srv = srv
				srv.leases[l.id] = l
			}
			return nil
		}
		l.srv = srv
		srv.leases[l.id] = l
		return nil
	})
	if err != nil {
		return err
	}
	for _, l := range expired {
		d.endAttempt(l, broker.EndExpired, "lease deadline passed while the broker was down", "broker")
	}
	for _, s := range d.servers {
		s.disconnectedAt = now
	}
	d.log.Info("dispatcher state loaded", "queued", d.queuedLocked(), "leases", len(d.leases),
		"servers", len(d.servers), "next_lease", d.nextLease)
	return nil
}

func (d *Dispatcher) addServer(s broker.Server, tags []string, now time.Time) *server {
	srv := &server{id: s.ID, name: s.Name, typeID: s.TypeID, typeName: s.Type, tags: tags,
		maxJobs: s.MaxConcurrentJobs, fp: s.Cert.Fingerprint, leases: make(map[int64]*lease),
		lastSeen: s.LastSeen, disconnectedAt: now, wakeupURL: s.WakeupURL, pull: s.Pull != ""}
	d.servers[s.ID] = srv
	d.byName[s.Name] = srv
	return srv
}

func (d *Dispatcher) classFor(types []int64, queue string) *class {
	key := classKey(types, queue)
	c := d.classes[key]
	if c == nil {
		c = newClass(types, queue)
		d.classes[key] = c
		for _, t := range c.types {
			d.classesByType[t] = append(d.classesByType[t], c)
		}
	}
	return c
}

func (d *Dispatcher) queuedLocked() int {
	n := 0
	for _, c := range d.classes {
		n += c.waiting()
	}
	return n
}

// dropCancelled forgets that queued job id was cancelled: its entry left
// class c, or the cancellation did not happen.
func (d *Dispatcher) dropCancelled(id int64) {
	if c, ok := d.cancelled[id]; ok {
		delete(d.cancelled, id)
		if c != nil {
			c.cancelled--
		}
	}
	d.forgetLate(id)
}

// updateFree keeps the per-type set of servers with a free slot current.
func (d *Dispatcher) updateFree(s *server) {
	set := d.free[s.typeID]
	if s.freeSlots() > 0 && !s.pull {
		if set == nil {
			set = make(map[*server]struct{})
			d.free[s.typeID] = set
		}
		set[s] = struct{}{}
		return
	}
	if set != nil {
		delete(set, s)
	}
}

// otherServerFor reports whether a connected server other than s may take
// jobs of class c.
func (d *Dispatcher) otherServerFor(c *class, s *server) bool {
	n := 0
	for _, t := range c.types {
		n += d.connectedByType[t]
		if t == s.typeID {
			n--
		}
	}
	return n > 0
}

// best finds the job server s should run next, or nil.
func (d *Dispatcher) best(s *server, nowMS int64) *candidate { return d.bestOf(s, nowMS, false, "") }

// bestOf is best among every class server s may take jobs of, or, when
// pulling, those of one pull queue only.
func (d *Dispatcher) bestOf(s *server, nowMS int64, pulling bool, queue string) *candidate {
	var win *candidate
	for _, c := range d.classesByType[s.typeID] {
		if pulling && c.queue != queue {
			continue
		}
		for c.n > 0 {
			cand, retry := d.bestIn(c, s, nowMS)
			if retry {
				continue // a cancelled job was dropped; look again
			}
			if cand != nil && better(cand, win, d.turn) {
				win = cand
			}
			break
		}
	}
	return win
}

// bestIn returns the best candidate of class c for server s. When it drops a
// cancelled job it returns retry, since the class changed under it.
func (d *Dispatcher) bestIn(c *class, s *server, nowMS int64) (*candidate, bool) {
	for _, prio := range c.prios {
		lv := c.levels[prio]
		var win *candidate
		for _, pq := range lv.plats {
			j, fromAgain := pq.head()
			if _, gone := d.cancelled[j.id]; gone {
				d.dropCancelled(j.id)
				delete(d.reopened, j.id)
				c.take(lv, pq, fromAgain)
				return nil, true
			}
			if len(d.reopened) > 0 {
				if r, ok := d.reopened[j.id]; ok {
					*j = r // the same job: its place in the queue (by id) stands
					delete(d.reopened, j.id)
				}
			}
			if j.avoid == s.id && nowMS-j.requeuedAt < d.cfg.AvoidFor.Milliseconds() && d.otherServerFor(c, s) {
				continue
			}
			cand := &candidate{c: c, lv: lv, pq: pq, fromAgain: fromAgain, j: j}
			if better(cand, win, d.turn) {
				win = cand
			}
		}
		if win != nil {
			return win, false
		}
	}
	return nil, false
}

// fill assigns jobs to s while it has free slots and jobs it may take. A
// pulling server gets its jobs when it asks (Session.Pull) instead.
func (d *Dispatcher) fill(s *server, now time.Time) {
	if d.closed || s.pull {
		return
	}
	nowMS := now.UnixMilli()
	for s.freeSlots() > 0 {
		cand := d.best(s, nowMS)
		if cand == nil {
			break
		}
		q := cand.c.take(cand.lv, cand.pq, cand.fromAgain)
		d.turnSeq++
		d.turn[cand.pq.platform] = d.turnSeq
		d.assign(s, q, cand.c, cand.lv.prio, cand.pq.platform, now)
	}
	d.updateFree(s)
}

// fillClass offers class c's jobs to every free server that may take them.
func (d *Dispatcher) fillClass(c *class, now time.Time) {
	for _, t := range c.types {
		for s := range d.free[t] {
			if c.n == 0 {
				return
			}
			d.fill(s, now)
		}
	}
}

// fillAll offers jobs to every server with a free slot.
func (d *Dispatcher) fillAll(now time.Time) {
	for _, set := range d.free {
		for s := range set {
			d.fill(s, now)
		}
	}
}

// assign creates a lease of q on s and queues its commit, or writes it into
// the transaction being applied when d.inline is set; the Assign message
// goes out after the commit.
func (d *Dispatcher) assign(s *server, q qjob, c *class, prio int, platform int64, now time.Time) *lease {
	if len(d.lateByJob) > 0 {
		// The job's expired lease is no longer current: a late result of
		// it is refused from now on.
		d.forgetLate(q.id)
	}
	id := d.nextLease
	d.nextLease++
	q.attempts++
	timeout := time.Duration(q.timeoutMS) * time.Millisecond
	l := &lease{id: id, jobID: q.id, srv: s, attempt: int(q.attempts),
		deadline: now.Add(timeout + d.cfg.LeaseGrace), hard: now.Add(2*timeout + d.cfg.LeaseGrace),
		cls: c, prio: prio, platform: platform, q: q, sess: s.sess}
	d.leases[id] = l
	d.leaseByJob[q.id] = l
	s.leases[id] = l
	d.stats.Assigned++
	d.mx.assigned(q.attempts)
	var aj store.AssignedJob
	var aerr error
	o := &op{
		apply: func(tx *store.JobTx) error {
			aj, aerr = tx.Assign(q.id, id, s.id, s.name, l.attempt, l.deadline)
			if errors.Is(aerr, broker.ErrFailedPrecondition) {
				return nil // nothing was written; handled after commit
			}
			return aerr
		},
		after: func() {
			if aerr == nil {
				l.sess.sendAssign(l, aj, timeout)
				return
			}
			// The job was not queued in the database after all; forget the
			// lease. This only happens if something bypassed the dispatcher.
			d.log.Error("assign refused by the database; dropping lease", "job_id", q.id, "lease_id", id, "server", s.name, "err", aerr)
			l.sess.assignRefused(q.id)
			d.mu.Lock()
			defer d.mu.Unlock()
			d.dropLease(l)
			d.updateFree(s)
		},
	}
	if in := d.inline; in != nil {
		if nj := in.inserted[q.id]; nj != nil {
			// A job this transaction stored: its lease joins it, so one
			// commit makes the job durable and assigned, and the Assign
			// leaves right after it.
			d.stats.AssignedInline++
			if in.err == nil {
				aj = store.AssignedJob{Name: nj.Name, JobData: nj.JobData, Tags: nj.Tags, TimeoutMS: nj.Timeout.Milliseconds(),
					RestrictPaths: nj.RestrictPaths}
				in.err = in.tx.AssignInserted(q.id, id, s.id, s.name, l.attempt, l.deadline)
			}
			in.after = append(in.after, o.after)
			return l
		}
		// Any other job (a requeued one, say) may have changes queued for
		// the writer that this transaction has not applied yet: its lease
		// must be written after them, in queue order.
	}
	d.w.enqueue(o)
	return l
}

// dropLease forgets a lease everywhere.
func (d *Dispatcher) dropLease(l *lease) {
	if d.leases[l.id] == l {
		delete(d.leases, l.id)
	}
	if d.leaseByJob[l.jobID] == l {
		delete(d.leaseByJob, l.jobID)
	}
	if l.srv != nil {
		delete(l.srv.leases, l.id)
	}
}

// requeueLocal puts a job back in its class after its lease ended.
func (d *Dispatcher) requeueLocal(l *lease, avoid int64, now time.Time) {
	q := l.q
	q.avoid = avoid
	q.requeuedAt = now.UnixMilli()
	l.cls.push(l.prio, l.platform, q)
	d.stats.Requeued++
}

// revoke takes lease l back from its server. When its Assign never left
// (the lease was still being committed), the server never had the job: the
// Assign never will leave, its slot is free at once, and revoke reports
// true. Otherwise, forgotten as a lease, it stays counted against the
// server's slots as a zombie while the server is connected, and the server
// is told to stop it. The zombie goes when the server reports it or stops
// listing it.
func (d *Dispatcher) revoke(l *lease, reason string) (withdrawn bool) {
	d.dropLease(l)
	if l.withdraw() {
		if l.srv != nil {
			d.fill(l.srv, d.cfg.Now())
		}
		return true
	}
	if s := l.srv; s != nil && s.sess != nil && !s.pull {
		l.zombie = true
		s.leases[l.id] = l
		s.sess.sendCancel(l, reason)
	}
	return false
}

// endAttempt ends lease l without a final result (expired, disconnected,
// lost, temporary, timeout): the job is requeued, or fails when it has used
// its attempts. The lease is forgotten at once; the change is committed by
// the writer. An end the broker decided for a lease whose Assign never left
// (its server went away while it was being committed) costs no attempt:
// the job never ran.
func (d *Dispatcher) endAttempt(l *lease, end broker.LeaseEnd, reason, actor string) {
	if !end.Reported() && l.withdraw() {
		d.giveBack(l, end, reason+"; its Assign had not left the broker, so the attempt does not count", actor)
		return
	}
	d.dropLease(l)
	d.requeueOrFail(l, end, reason, actor)
}

// requeueOrFail puts the job of a lease that ended without a final result
// back in the queue, or fails it when it has used its attempts.
func (d *Dispatcher) requeueOrFail(l *lease, end broker.LeaseEnd, reason, actor string) {
	now := d.cfg.Now()
	var avoid int64
	var srvName string
	if l.srv != nil {
		avoid, srvName = l.srv.id, l.srv.name
	}
	if !end.Reported() {
		// Results that end an attempt are logged where they arrive.
		d.log.Warn("attempt ended without a result", "job_id", l.jobID, "lease_id", l.id, "server", srvName,
			"attempt", l.attempt, "end", end, "reason", reason)
	}
	if int(l.q.attempts) >= int(l.q.maxAttempts) {
		errMsg := fmt.Sprintf("gave up after %d attempt(s); last: %s: %s", l.q.attempts, end, reason)
		d.log.Warn("job failed: out of attempts", "job_id", l.jobID, "lease_id", l.id, "server", srvName, "attempts", l.q.attempts)
		d.finish(l, store.Final{PlatformID: l.platform, State: broker.JobFailed, Error: errMsg, Actor: actor}, end, reason, nil)
		return
	}
	d.requeueLocal(l, avoid, now)
	d.w.enqueue(&op{apply: func(tx *store.JobTx) error {
		if err := tx.EndLeaseRun(l.id, end, reason, l.usage, l.limit); err != nil {
			return err
		}
		return tx.Requeue(l.jobID, avoid, actor, l.id, string(end)+": "+reason)
	}})
	d.fillClass(l.cls, now)
}

// giveBack puts the job of a lease its server never ran back in the queue
// without using an attempt: the server had no free slot for it (the
// dispatcher gave it more than it runs), or never got its Assign. The
// broker's own bookkeeping must never cost a job an attempt.
func (d *Dispatcher) giveBack(l *lease, end broker.LeaseEnd, reason, actor string) {
	now := d.cfg.Now()
	d.dropLease(l)
	l.q.attempts--
	attempts := int(l.q.attempts)
	d.requeueLocal(l, 0, now)
	d.w.enqueue(&op{apply: func(tx *store.JobTx) error {
		if err := tx.EndLease(l.id, end, reason); err != nil {
			return err
		}
		if err := tx.Requeue(l.jobID, 0, actor, l.id, string(end)+": "+reason); err != nil {
			return err
		}
		return tx.SetAttempts(l.jobID, attempts)
	}})
	d.fillClass(l.cls, now)
}

// finish queues the final state of lease l's job. end and reason close the
// lease, with what its run used; after runs after commit.
func (d *Dispatcher) finish(l *lease, f store.Final, end broker.LeaseEnd, reason string, after func()) {
	d.stats.Finished++
	d.mx.finalState(f.State)
	jobID, leaseID := l.jobID, l.id
	var deliveryID int64
	d.w.enqueue(&op{
		apply: func(tx *store.JobTx) error {
			if err := tx.EndLeaseRun(leaseID, end, reason, l.usage, l.limit); err != nil {
				return err
			}
			f.LeaseID = leaseID
			var err error
			deliveryID, err = tx.Finish(jobID, f)
			if errors.Is(err, broker.ErrFailedPrecondition) {
				// Already final: Finish wrote nothing. This means the
				// in-memory state disagreed with the database; keep the
				// database's answer rather than stopping the broker.
				d.log.Error("job was already final; keeping the stored result", "job_id", jobID, "lease_id", leaseID, "actor", f.Actor)
				return nil
			}
			return err
		},
		after: func() {
			if after != nil {
				after()
			}
			d.finalized(jobID, deliveryID)
		},
	})
}

// finalized wakes whoever waits for the job and tells the delivery worker.
func (d *Dispatcher) finalized(jobID, deliveryID int64) {
	d.mu.Lock()
	ws := d.waiters[jobID]
	delete(d.waiters, jobID)
	hook := d.onFinal
	d.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
	if hook != nil && deliveryID != 0 {
		hook(jobID, deliveryID)
	}
}

// tick expires leases past their deadline, requeues the leases of servers
// gone longer than the reconnect grace, and retries matching (a job that
// avoided a server may now take it).
func (d *Dispatcher) tick(ctx context.Context) {
	t := time.NewTicker(d.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.onTick(d.cfg.Now())
	}
}

// onTick is one tick of the deadline ticker.
func (d *Dispatcher) onTick(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.expire(now)
	if now.Sub(d.lastTouch) >= touchEvery {
		d.lastTouch = now
		d.touchServers()
	}
	d.wakeIdle(now)
}

// touchEvery is how often connected servers' last_seen is written, so that
// operators and the wakeup logic see it across restarts.
const touchEvery = 10 * time.Second

func (d *Dispatcher) touchServers() {
	seen := make(map[int64]time.Time)
	for _, s := range d.servers {
		if s.sess != nil && !s.lastSeen.IsZero() {
			seen[s.id] = s.lastSeen
		}
	}
	if len(seen) == 0 {
		return
	}
	d.w.enqueue(&op{apply: func(tx *store.JobTx) error { return tx.TouchServers(seen) }})
}

func (d *Dispatcher) expire(now time.Time) {
	for _, s := range d.servers {
		if s.sess == nil && !s.pull && len(s.leases) > 0 && now.Sub(s.disconnectedAt) >= d.cfg.ReconnectGrace {
			for _, l := range s.leases {
				if l.zombie {
					delete(s.leases, l.id)
					continue
				}
				d.endAttempt(l, broker.EndDisconnected, fmt.Sprintf("server %s did not come back within %s", s.name, d.cfg.ReconnectGrace), "broker")
			}
		}
	}
	for _, l := range d.leases {
		if l.srv != nil && l.srv.sess == nil && !l.srv.pull {
			continue // waiting for its server to come back
		}
		if now.After(l.deadline) {
			d.stats.Expired++
			// The server may still be running it: stop it and keep the slot
			// counted until it lets go.
			reason := fmt.Sprintf("no result by the lease deadline %s", l.deadline.UTC().Format(time.RFC3339))
			if d.revoke(l, string(broker.EndExpired)) {
				d.giveBack(l, broker.EndExpired, reason+"; its Assign had not left the broker, so the attempt does not count", "broker")
				continue
			}
			requeued := l.q.attempts < l.q.maxAttempts
			d.requeueOrFail(l, broker.EndExpired, reason, "broker")
			if requeued && l.srv != nil && l.srv.pull {
				d.rememberLate(l)
			}
		}
	}
	d.fillAll(now)
}

// Stats returns current counters.
func (d *Dispatcher) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.stats
	st.Queued = d.queuedLocked()
	st.Running = len(d.leases)
	for _, s := range d.servers {
		if s.sess != nil {
			st.Connected++
			st.FreeSlots += max(0, s.freeSlots())
		}
	}
	st.Batches, st.BatchOps = d.w.counts()
	return st
}
