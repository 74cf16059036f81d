package dispatch

import (
	"context"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker/store"
)

// op is one change for the writer to commit.
type op struct {
	// apply makes the change inside the batch's transaction.
	apply func(tx *store.JobTx) error
	// fallible marks a change that may be refused on its own (a replayed
	// token, a duplicate, a job that is no longer queued). It runs under a
	// savepoint so that its failure leaves the rest of the batch alone. A
	// failure of any other op is a storage failure and stops the dispatcher.
	fallible bool
	// after runs once the batch is committed, in queue order.
	after func()
	// failed runs instead of after when a fallible op was refused.
	failed func(err error)
	// done, if set, receives nil after commit or the op's error.
	done chan error

	err error
	// fatal, set by apply, is a storage failure inside a fallible op: unlike
	// the op's own refusal it stops the dispatcher.
	fatal error
}

// writer commits queued ops in batches: while one transaction commits, the
// next batch gathers, so one fsync serves many changes (group commit).
type writer struct {
	d *Dispatcher

	mu      sync.Mutex
	pending []*op
	wake    chan struct{}
	idle    *sync.Cond // signalled when a batch is finished
	busy    bool

	batches, ops uint64
}

func newWriter(d *Dispatcher) *writer {
	w := &writer{d: d, wake: make(chan struct{}, 1)}
	w.idle = sync.NewCond(&w.mu)
	return w
}

// enqueue adds an op. Callers hold d.mu, which keeps ops in the order the
// in-memory state changed.
func (w *writer) enqueue(o *op) {
	w.mu.Lock()
	w.pending = append(w.pending, o)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// submit queues an op and waits for its commit.
func (w *writer) submit(ctx context.Context, o *op) error {
	o.done = make(chan error, 1)
	w.d.mu.Lock()
	if w.d.closed {
		w.d.mu.Unlock()
		return errShuttingDown
	}
	w.enqueue(o)
	w.d.mu.Unlock()
	select {
	case err := <-o.done:
		return err
	case <-w.d.stopped:
		select {
		case err := <-o.done:
			return err
		default:
			return errShuttingDown
		}
	case <-ctx.Done():
		// The op still commits; the caller just stops waiting.
		return ctx.Err()
	}
}

func (w *writer) counts() (uint64, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.batches, w.ops
}

// flush waits until everything queued so far is committed.
func (w *writer) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.pending) > 0 || w.busy {
		select {
		case w.wake <- struct{}{}:
		default:
		}
		w.idle.Wait()
	}
}

func (w *writer) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			w.mu.Lock()
			rest := w.pending
			w.pending = nil
			w.idle.Broadcast()
			w.mu.Unlock()
			for _, o := range rest {
				if o.done != nil {
					o.done <- errShuttingDown
				}
			}
			return
		case <-w.wake:
		}
		for {
			w.mu.Lock()
			n := min(len(w.pending), w.d.cfg.MaxBatch)
			if n == 0 {
				w.busy = false
				w.idle.Broadcast()
				w.mu.Unlock()
				break
			}
			batch := w.pending[:n:n]
			w.pending = w.pending[n:]
			w.busy = true
			w.mu.Unlock()
			if err := w.commit(ctx, batch); err != nil {
				w.d.fail(err)
				// Nothing more will be committed: answer everyone waiting,
				// in this batch and behind it, and let flush return.
				w.mu.Lock()
				rest := w.pending
				w.pending = nil
				w.busy = false
				w.idle.Broadcast()
				w.mu.Unlock()
				for _, o := range append(batch, rest...) {
					if o.done != nil {
						o.done <- errShuttingDown
					}
				}
				return
			}
		}
	}
}

// commit applies one batch in one transaction, then runs the ops' after
// functions. It returns an error only for a storage failure.
func (w *writer) commit(ctx context.Context, batch []*op) error {
	start := time.Now()
	tx, err := w.d.db.BeginJobs(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, o := range batch {
		if !o.fallible {
			if err := o.apply(tx); err != nil {
				return err
			}
			continue
		}
		if err := tx.Savepoint(); err != nil {
			return err
		}
		if o.err = o.apply(tx); o.fatal != nil {
			return o.fatal
		}
		if o.err != nil {
			if err := tx.RollbackToSavepoint(); err != nil {
				return err
			}
			continue
		}
		if err := tx.ReleaseSavepoint(); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w.mu.Lock()
	w.batches++
	w.ops += uint64(len(batch))
	w.mu.Unlock()
	if f := w.d.cfg.OnCommit; f != nil {
		f(len(batch), time.Since(start))
	}
	for _, o := range batch {
		if o.err != nil {
			if o.failed != nil {
				o.failed(o.err)
			}
		} else if o.after != nil {
			o.after()
		}
		if o.done != nil {
			o.done <- o.err
		}
	}
	return nil
}
