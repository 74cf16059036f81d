package dispatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// TokenUse is a token id to record in the same transaction as a submission,
// so that a replayed token and its job are refused or stored together.
type TokenUse struct {
	Signer  string
	JTI     string
	Expires time.Time
}

// Submit stores jobs, all or none, and queues them. A job whose idempotency
// key matches an earlier one of the same platform is not stored again; the
// earlier job is returned with Duplicate set. When tok is set, its id is
// recorded in the same transaction; a replay fails with ErrConflict.
func (d *Dispatcher) Submit(ctx context.Context, jobs []broker.NewJob, tok *TokenUse, actor string) ([]store.Inserted, error) {
	return d.SubmitWith(ctx, jobs, tok, actor, nil)
}

// SubmitWith is Submit with more to store in the same transaction: with,
// if not nil, runs once the jobs are inserted, with what InsertJob said of
// each, and an error from it refuses them all. An edge adapter stores
// there what its protocol keeps beside a job (XQueue's callback and files).
func (d *Dispatcher) SubmitWith(ctx context.Context, jobs []broker.NewJob, tok *TokenUse, actor string,
	with func(tx *store.JobTx, ins []store.Inserted) error) ([]store.Inserted, error) {
	for i := range jobs {
		if jobs[i].MaxAttempts <= 0 {
			jobs[i].MaxAttempts = d.cfg.MaxAttempts
		}
		if jobs[i].Timeout <= 0 {
			jobs[i].Timeout = d.cfg.DefaultTimeout
		}
		jobs[i].Timeout = min(jobs[i].Timeout, d.cfg.MaxTimeout)
	}
	out := make([]store.Inserted, len(jobs))
	var o *op
	var assigned []func()
	o = &op{
		fallible: true,
		apply: func(tx *store.JobTx) error {
			if tok != nil {
				if err := tx.UseJTI(tok.Signer, tok.JTI, tok.Expires); err != nil {
					return err
				}
			}
			for i, nj := range jobs {
				in, err := tx.InsertJob(nj, actor)
				if err != nil {
					return fmt.Errorf("job %d of %d: %w", i+1, len(jobs), err)
				}
				out[i] = in
			}
			if with != nil {
				if err := with(tx, out); err != nil {
					return err
				}
			}
			// Nothing below can refuse the op: queue the jobs now and give
			// those a server can take at once their leases in this same
			// transaction, so that a job submitted while a slot is free
			// costs one commit and its Assign leaves as soon as it is stored.
			assigned, o.fatal = d.queueInline(tx, jobs, out)
			return nil
		},
		after: func() {
			for _, f := range assigned {
				f()
			}
			d.mu.Lock()
			d.wakeIdle(d.cfg.Now())
			d.mu.Unlock()
		},
	}
	err := d.w.submit(ctx, o)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// queueInline puts the jobs just inserted into tx in their classes and
// matches them with servers that have a free slot, writing those leases into
// tx. It returns what to run after the commit (the Assign messages), or a
// storage failure.
func (d *Dispatcher) queueInline(tx *store.JobTx, jobs []broker.NewJob, out []store.Inserted) ([]func(), error) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	in := &inlineTx{tx: tx, inserted: make(map[int64]*broker.NewJob, len(jobs))}
	d.inline = in
	defer func() { d.inline = nil }()
	touched := make(map[*class]bool)
	for i, ins := range out {
		if ins.Duplicate {
			continue
		}
		nj := &jobs[i]
		in.inserted[ins.ID] = nj
		c := d.classFor(nj.TypeIDs, nj.Queue)
		c.push(nj.Priority, nj.PlatformID, qjob{id: ins.ID, created: ins.CreatedAt.UnixMilli(),
			timeoutMS: nj.Timeout.Milliseconds(), maxAttempts: int32(nj.MaxAttempts)})
		touched[c] = true
	}
	for c := range touched {
		d.fillClass(c, now)
	}
	return in.after, in.err
}

// CancelJob cancels a job that is not final: a queued one at once, a running
// one also on its server. It returns ErrFailedPrecondition for a final job.
func (d *Dispatcher) CancelJob(ctx context.Context, jobID int64, actor string) error {
	return d.cancel(ctx, jobID, actor, "cancelled by "+actor, false)
}

// Retire cancels a job as CancelJob does, for reason, but makes no
// delivery: its platform is not to hear of it. XQueue retires a submission
// when a newer one to the same callback URL replaces it, and never posts
// its result. Errors are CancelJob's.
func (d *Dispatcher) Retire(ctx context.Context, jobID int64, actor, reason string) error {
	return d.cancel(ctx, jobID, actor, reason, true)
}

// cancel is CancelJob and Retire: why is the job's error, quiet leaves its
// platform untold.
func (d *Dispatcher) cancel(ctx context.Context, jobID int64, actor, why string, quiet bool) error {
	// A queued job stays in its class until a server reaches it; the class
	// counts it as cancelled meanwhile, so that it is not counted as
	// waiting.
	types, queue, err := d.db.JobClass(ctx, jobID)
	if err != nil {
		return err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errShuttingDown
	}
	if l := d.leaseByJob[jobID]; l != nil {
		d.revoke(l, why)
		done := make(chan error, 1)
		d.stats.Finished++
		d.mx.finalState(broker.JobCancelled)
		var deliveryID int64
		d.w.enqueue(&op{
			apply: func(tx *store.JobTx) error {
				if err := tx.EndLease(l.id, broker.EndCancelled, why); err != nil {
					return err
				}
				var err error
				deliveryID, err = tx.Finish(jobID, store.Final{PlatformID: l.platform, State: broker.JobCancelled, LeaseID: l.id,
					Error: why, Actor: actor, Quiet: quiet})
				return err
			},
			after: func() { d.finalized(jobID, deliveryID) },
			done:  done,
		})
		d.mu.Unlock()
		return waitDone(ctx, done)
	}
	if _, ok := d.cancelled[jobID]; ok {
		d.mu.Unlock()
		return fmt.Errorf("%w: job %d is already final", broker.ErrFailedPrecondition, jobID)
	}
	c := d.classes[classKey(types, queue)]
	d.cancelled[jobID] = c
	if c != nil {
		c.cancelled++
	}
	var deliveryID int64
	o := &op{
		fallible: true,
		apply: func(tx *store.JobTx) error {
			var err error
			deliveryID, err = tx.Finish(jobID, store.Final{State: broker.JobCancelled, Error: why, Actor: actor, Quiet: quiet})
			return err
		},
		after: func() {
			d.mx.finalState(broker.JobCancelled)
			d.finalized(jobID, deliveryID)
		},
		failed: func(error) {
			d.mu.Lock()
			d.dropCancelled(jobID)
			d.mu.Unlock()
		},
		done: make(chan error, 1),
	}
	d.w.enqueue(o)
	d.mu.Unlock()
	return waitDone(ctx, o.done)
}

func waitDone(ctx context.Context, done chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RequeueJob puts a job back in the queue for an operator. A running job
// loses its lease (its server is told to stop) without using up an attempt
// limit; a failed or cancelled job starts again with fresh attempts. A done
// or queued job is refused with ErrFailedPrecondition.
func (d *Dispatcher) RequeueJob(ctx context.Context, jobID int64, actor string) error {
	now := d.cfg.Now()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errShuttingDown
	}
	if l := d.leaseByJob[jobID]; l != nil {
		withdrawn := d.revoke(l, "requeued by "+actor)
		if withdrawn {
			// Its Assign never left: the attempt does not count.
			l.q.attempts--
		}
		if l.q.attempts >= l.q.maxAttempts {
			l.q.maxAttempts = l.q.attempts + 1
		}
		attempts, maxAttempts := int(l.q.attempts), int(l.q.maxAttempts)
		d.requeueLocal(l, 0, now)
		done := make(chan error, 1)
		d.w.enqueue(&op{
			apply: func(tx *store.JobTx) error {
				if err := tx.EndLease(l.id, broker.EndRequeued, "requeued by "+actor); err != nil {
					return err
				}
				if err := tx.SetMaxAttempts(jobID, maxAttempts); err != nil {
					return err
				}
				if withdrawn {
					if err := tx.SetAttempts(jobID, attempts); err != nil {
						return err
					}
				}
				return tx.Requeue(jobID, 0, actor, l.id, "requeued by "+actor)
			},
			done: done,
		})
		d.fillClass(l.cls, now)
		d.mu.Unlock()
		return waitDone(ctx, done)
	}
	d.mu.Unlock()
	var oj store.OpenJob
	var platform int64
	return d.w.submit(ctx, &op{
		fallible: true,
		apply: func(tx *store.JobTx) error {
			var err error
			oj, err = tx.Reopen(jobID, actor)
			platform = oj.PlatformID
			return err
		},
		after: func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			q := qjob{id: oj.ID, created: oj.CreatedAt.UnixMilli(), timeoutMS: oj.TimeoutMS, maxAttempts: int32(oj.MaxAttempts)}
			c, stillQueued := d.cancelled[jobID]
			d.dropCancelled(jobID)
			if stillQueued && c != nil {
				// Cancelled while queued, and no server has reached its
				// entry to drop it yet: that entry comes back, with the
				// reopened job's fresh attempts.
				d.reopened[jobID] = q
			} else {
				delete(d.reopened, jobID)
				c = d.classFor(oj.TypeIDs, oj.Queue)
				c.push(oj.Priority, platform, q)
			}
			d.fillClass(c, d.cfg.Now())
		},
	})
}

// WaitFinal waits until job jobID is final, or ctx ends. It returns the job's
// state, and ErrNotFound for a job that does not exist.
func (d *Dispatcher) WaitFinal(ctx context.Context, jobID int64) (broker.JobState, error) {
	ch := make(chan struct{})
	d.mu.Lock()
	d.waiters[jobID] = append(d.waiters[jobID], ch)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		ws := d.waiters[jobID]
		for i, w := range ws {
			if w == ch {
				d.waiters[jobID] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(d.waiters[jobID]) == 0 {
			delete(d.waiters, jobID)
		}
		d.mu.Unlock()
	}()
	state, _, err := d.db.JobState(ctx, jobID)
	if err != nil || state.Final() {
		return state, err
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
	state, _, err = d.db.JobState(context.WithoutCancel(ctx), jobID)
	return state, err
}

// ServerChanged re-reads a server's registration and applies it to its live
// connection at once: a new certificate closes the stream, a new type or
// limit changes what it is given next.
func (d *Dispatcher) ServerChanged(ctx context.Context, name string) {
	rec, err := d.db.ServerByName(ctx, name)
	if errors.Is(err, broker.ErrNotFound) {
		d.ServerRemoved(ctx, name)
		return
	}
	if err != nil {
		d.log.Error("reload server registration", "server", name, "err", err)
		return
	}
	tags, err := d.typeTags(ctx, rec.TypeID)
	if err != nil {
		d.log.Error("reload server types", "err", err)
		return
	}
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.servers[rec.ID]
	if s == nil {
		d.addServer(rec, tags, now)
		return
	}
	if s.sess != nil && s.fp != rec.Cert.Fingerprint {
		sess := s.sess
		d.detachLocked(sess)
		sess.end(errCertReplaced)
	}
	if s.sess != nil && s.typeID != rec.TypeID {
		d.connectedByType[s.typeID]--
		d.connectedByType[rec.TypeID]++
	}
	if set := d.free[s.typeID]; set != nil {
		delete(set, s)
	}
	s.name, s.typeID, s.typeName, s.tags, s.maxJobs, s.fp = rec.Name, rec.TypeID, rec.Type, tags, rec.MaxConcurrentJobs, rec.Cert.Fingerprint
	s.wakeupURL = rec.WakeupURL
	d.byName[s.name] = s
	d.log.Info("server registration changed", "server", s.name, "type", s.typeName, "max_jobs", s.maxJobs)
	d.fill(s, now)
}

// ServerRemoved closes a removed server's stream and requeues its leases. It
// returns how many leases were requeued or failed.
func (d *Dispatcher) ServerRemoved(ctx context.Context, name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.byName[name]
	if s == nil {
		return 0
	}
	if s.sess != nil {
		sess := s.sess
		d.detachLocked(sess)
		sess.end(errRemoved)
	}
	n := 0
	for _, l := range s.leases {
		if l.zombie {
			continue
		}
		d.endAttempt(l, broker.EndRemoved, "server "+name+" was removed by an operator", "broker")
		n++
	}
	delete(d.servers, s.id)
	delete(d.byName, name)
	if set := d.free[s.typeID]; set != nil {
		delete(set, s)
	}
	d.log.Info("server removed", "server", name, "requeued", n)
	return n
}

// ServerStatus tells whether a server is connected, its slots, how many jobs
// it runs and when it was last heard from.
func (d *Dispatcher) ServerStatus(name string) (connected bool, slots, running int, lastSeen time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.byName[name]
	if s == nil {
		return false, 0, 0, time.Time{}
	}
	return s.sess != nil, s.capacity(), len(s.leases), s.lastSeen
}

// ServerHello returns what server name's graderd reported of itself when
// it last connected since the broker started: its version and its
// executors, with how each isolates its runs. Both are empty for a server
// that has not connected since.
func (d *Dispatcher) ServerHello(name string) (version string, executors []broker.Executor) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.byName[name]
	if s == nil {
		return "", nil
	}
	return s.version, slices.Clone(s.executors)
}

// UseToken records a token id in its own group-committed transaction, for
// requests that store nothing else. A replay fails with ErrConflict.
func (d *Dispatcher) UseToken(ctx context.Context, tok TokenUse) error {
	return d.w.submit(ctx, &op{
		fallible: true,
		apply: func(tx *store.JobTx) error {
			return tx.UseJTI(tok.Signer, tok.JTI, tok.Expires)
		},
	})
}
