// Package maint keeps a running broker healthy without an outside cron:
// retention of old jobs, deliveries and token ids, WAL checkpoints and
// incremental vacuum (Maintainer), and alerts to the operator by webhook
// and email (Alerter). Both run on timers inside the broker.
package maint

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/startstop"
)

// Config tunes a Maintainer. The zero value of each field means its default.
type Config struct {
	// Retention is how long final jobs and delivered deliveries are kept
	// after they finished or were delivered; default 7 days.
	Retention time.Duration
	// Interval is how often retention runs; default 10 min. It also runs
	// RetentionDelay after Start.
	Interval time.Duration
	// BatchSize is how many jobs (with their events, leases, results and
	// deliveries), deliveries or token ids one transaction deletes; default
	// 500. Each batch holds the one writer connection, which dispatch
	// shares, so it must stay short.
	BatchSize int
	// BatchPause is the pause between two batches, which lets dispatch's
	// writer in; default 50 ms.
	BatchPause time.Duration
	// VacuumPages is how many free pages one incremental vacuum transaction
	// gives back; default 2048 (8 MiB of 4 KiB pages).
	VacuumPages int
	// CheckpointInterval is how often the WAL is checkpointed and truncated;
	// default 5 min.
	CheckpointInterval time.Duration
	// RetentionDelay is how long after Start the first retention runs, so
	// that it does not slow the start; default 1 min.
	RetentionDelay time.Duration
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.Interval <= 0 {
		c.Interval = 10 * time.Minute
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.BatchPause <= 0 {
		c.BatchPause = 50 * time.Millisecond
	}
	if c.VacuumPages <= 0 {
		c.VacuumPages = 2048
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 5 * time.Minute
	}
	if c.RetentionDelay <= 0 {
		c.RetentionDelay = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Report says what one retention run did.
type Report struct {
	// Jobs, Deliveries and TokenIDs count the rows deleted: jobs (their
	// events, leases, results and deliveries went with them), delivered
	// deliveries of jobs that are kept, and expired token ids.
	Jobs, Deliveries, TokenIDs int
	// Batches counts the deleting transactions.
	Batches int
	// PagesFreed is how many pages the incremental vacuum gave back to the
	// file system.
	PagesFreed int
	// Took is how long the run took.
	Took time.Duration
}

// Maintainer runs retention, vacuum and WAL checkpoints on timers.
type Maintainer struct {
	db  *store.DB
	cfg Config
	log *slog.Logger

	run  sync.Mutex // one retention or checkpoint at a time
	life startstop.Base
}

// New returns a Maintainer of db. log may be nil.
func New(db *store.DB, cfg Config, log *slog.Logger) *Maintainer {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Maintainer{db: db, cfg: cfg, log: log.With("component", "maint")}
}

// Config returns the configuration with defaults filled in.
func (m *Maintainer) Config() Config { return m.cfg }

// Start starts the timers. It checks that the database can give pages back
// (auto_vacuum=incremental) and says so in the log when it cannot. ctx
// bounds only the start; the timers run until Stop (see
// internal/startstop).
func (m *Maintainer) Start(ctx context.Context) error {
	if _, err := m.life.Start(ctx); err != nil {
		return fmt.Errorf("maintenance: %w", err)
	}
	if mode, err := m.db.AutoVacuum(ctx); err != nil {
		m.log.Error("cannot read the database's auto_vacuum mode", "err", err)
	} else if mode != 2 {
		m.log.Warn("the database was created without auto_vacuum=incremental: deleted rows are reused but the file never shrinks; "+
			"run 'sqlite3 FILE \"PRAGMA auto_vacuum=INCREMENTAL; VACUUM\"' once while the broker is stopped", "auto_vacuum", mode)
	}
	if !m.life.Go(m.loop) {
		return fmt.Errorf("maintenance: %w during start", startstop.ErrStopped)
	}
	return nil
}

// Stop stops the timers and waits for a running pass to end (a batch in
// progress commits; the rest is left for next time). It is idempotent, and
// safe before Start.
func (m *Maintainer) Stop() { m.life.Stop(nil) }

// Done is closed once the timers have stopped.
func (m *Maintainer) Done() <-chan struct{} { return m.life.Done() }

func (m *Maintainer) loop(ctx context.Context) {
	retention := time.NewTimer(m.cfg.RetentionDelay)
	defer retention.Stop()
	checkpoint := time.NewTicker(m.cfg.CheckpointInterval)
	defer checkpoint.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retention.C:
			if _, err := m.RunRetention(ctx); err != nil && ctx.Err() == nil {
				m.log.Error("retention failed; trying again at the next run", "err", err)
			}
			retention.Reset(m.cfg.Interval)
		case <-checkpoint.C:
			if err := m.Checkpoint(ctx); err != nil && ctx.Err() == nil {
				m.log.Error("WAL checkpoint failed", "err", err)
			}
		}
	}
}

// pause waits BatchPause, or until ctx ends.
func (m *Maintainer) pause(ctx context.Context) error {
	t := time.NewTimer(m.cfg.BatchPause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// RunRetention deletes, in batches of BatchSize with a pause between:
// final jobs that finished more than Retention ago (see
// store.DeleteFinishedJobs for the ones kept for their deliveries),
// delivered deliveries delivered more than Retention ago, and token ids
// whose tokens expired. Then it gives the freed pages back to the file
// system and truncates the WAL.
func (m *Maintainer) RunRetention(ctx context.Context) (Report, error) {
	m.run.Lock()
	defer m.run.Unlock()
	start := time.Now()
	now := m.cfg.Now()
	cutoff := now.Add(-m.cfg.Retention)
	var rep Report
	err := m.retain(ctx, now, cutoff, &rep)
	rep.Took = time.Since(start)
	if rep.Jobs+rep.Deliveries+rep.TokenIDs > 0 || err != nil {
		m.log.Info("retention", "jobs", rep.Jobs, "deliveries", rep.Deliveries, "token_ids", rep.TokenIDs,
			"batches", rep.Batches, "pages_freed", rep.PagesFreed, "took", rep.Took.Round(time.Millisecond),
			"cutoff", cutoff.UTC().Format(time.RFC3339), "complete", err == nil)
	}
	return rep, err
}

func (m *Maintainer) retain(ctx context.Context, now, cutoff time.Time, rep *Report) error {
	batch := m.cfg.BatchSize
	first := true
	step := func(fn func() (int, error)) (int, error) {
		if !first {
			if err := m.pause(ctx); err != nil {
				return 0, err
			}
		}
		first = false
		n, err := fn()
		if err == nil {
			rep.Batches++
		}
		return n, err
	}
	var cursor store.RetentionCursor
	for {
		n, err := step(func() (int, error) {
			n, next, err := m.db.DeleteFinishedJobs(ctx, cutoff, cursor, batch)
			cursor = next
			return n, err
		})
		rep.Jobs += n
		if err != nil {
			return err
		}
		if n < batch {
			break
		}
	}
	for {
		n, err := step(func() (int, error) { return m.db.DeleteDeliveredDeliveries(ctx, cutoff, batch) })
		rep.Deliveries += n
		if err != nil {
			return err
		}
		if n < batch {
			break
		}
	}
	for {
		n, err := step(func() (int, error) { return m.db.DeleteExpiredTokenIDs(ctx, now, batch) })
		rep.TokenIDs += n
		if err != nil {
			return err
		}
		if n < batch {
			break
		}
	}
	if rep.Jobs+rep.Deliveries+rep.TokenIDs == 0 {
		return nil
	}
	freed, err := m.vacuum(ctx)
	rep.PagesFreed = freed
	if err != nil {
		return err
	}
	return m.checkpoint(ctx)
}

// Vacuum gives every free page back to the file system, VacuumPages per
// transaction with a pause between, and returns how many it gave back.
func (m *Maintainer) Vacuum(ctx context.Context) (int, error) {
	m.run.Lock()
	defer m.run.Unlock()
	return m.vacuum(ctx)
}

func (m *Maintainer) vacuum(ctx context.Context) (int, error) {
	free, _, err := m.db.FreePages(ctx)
	if err != nil {
		return 0, err
	}
	freed := 0
	for free > 0 {
		left, err := m.db.IncrementalVacuum(ctx, m.cfg.VacuumPages)
		if err != nil {
			return freed, err
		}
		if left >= free {
			// Nothing given back: auto_vacuum is off for this file.
			break
		}
		freed += free - left
		free = left
		if free > 0 {
			if err := m.pause(ctx); err != nil {
				return freed, err
			}
		}
	}
	return freed, nil
}

// Checkpoint copies the WAL into the database file (PASSIVE, which never
// waits) and then truncates it (TRUNCATE, which has little left to copy
// and waits only for readers of an older snapshot to finish). Without
// TRUNCATE the -wal file keeps its largest size for good.
func (m *Maintainer) Checkpoint(ctx context.Context) error {
	m.run.Lock()
	defer m.run.Unlock()
	return m.checkpoint(ctx)
}

func (m *Maintainer) checkpoint(ctx context.Context) error {
	if _, err := m.db.CheckpointWAL(ctx, false); err != nil {
		return err
	}
	cp, err := m.db.CheckpointWAL(ctx, true)
	if err != nil {
		return err
	}
	if cp.Busy {
		m.log.Debug("WAL checkpoint could not truncate: a reader holds an older snapshot; trying again later",
			"frames", cp.Frames, "checkpointed", cp.Checkpointed)
	}
	return nil
}
