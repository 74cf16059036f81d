// Package store is gradebroker's SQLite storage: the schema, its migrations
// and every SQL statement of the project. Nothing else speaks SQL.
//
// The database runs in WAL mode with foreign keys on and synchronous=FULL, so
// that a committed transaction survives a power cut. Writes go through one
// connection (SQLite has one writer anyway; a pool would only queue on the
// lock), with BEGIN IMMEDIATE so that a read-then-write transaction never
// fails half-way on a lock upgrade. Reads use a separate pool.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/gradebroker/gradebroker/broker"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// DB is an open gradebroker database.
type DB struct {
	path string
	w    *sql.DB // the one writer connection
	r    *sql.DB // readers
	now  func() time.Time

	// callbacks caches, per platform id, whether it has a return URL; the
	// platform methods of this package invalidate it.
	callbacks sync.Map
	// registryVersion counts changes to tags, types and platforms.
	registryVersion atomic.Int64

	cp *sql.DB // the checkpointer's connection
	// cpMu keeps the background checkpointer and CheckpointWAL apart:
	// SQLite refuses a checkpoint while another one runs (busy, at once,
	// whatever the busy timeout), so retention's truncation failed whenever
	// it met a background tick.
	cpMu      sync.Mutex
	cpRuns    atomic.Int64
	stopCP    chan struct{}
	cpDone    chan struct{}
	closeOnce sync.Once
	cpStarted bool
}

// Options tune Open. The zero value is what production uses.
type Options struct {
	// Now replaces time.Now, for tests.
	Now func() time.Time
	// Readers is the size of the read pool; default 4.
	Readers int

	// checkpointEvery replaces checkpointInterval, for this package's tests.
	checkpointEvery time.Duration
}

// Open opens (creating if needed) the database at path and applies every
// migration it has not seen.
func Open(ctx context.Context, path string, opts Options) (*DB, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: database path is empty", broker.ErrInvalid)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Readers <= 0 {
		opts.Readers = 4
	}
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_foreign_keys", "on")
	q.Set("_busy_timeout", "10000")
	q.Set("_synchronous", "FULL")
	q.Set("_txlock", "immediate")
	// Reuse prepared statements: the writer runs the same few statements
	// for every job, and parsing them again was a third of its time.
	q.Set("_stmt_cache_size", "128")
	// database/sql hands a connection to one goroutine at a time, so
	// SQLite's per-connection mutex (taken on every call) protects nothing:
	// multi-thread mode, 3 % less writer CPU per job (BenchmarkLifecycle).
	q.Set("_mutex", "no")
	// Incremental auto-vacuum lets retention give pages back to the file
	// system without a full VACUUM; it only takes effect on a new database.
	q.Set("_auto_vacuum", "incremental")
	wdsn := "file:" + path + "?" + q.Encode()
	w, err := sql.Open("sqlite3", wdsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)

	rq := url.Values{}
	rq.Set("_foreign_keys", "on")
	rq.Set("_busy_timeout", "10000")
	rq.Set("_query_only", "1")
	rq.Set("_stmt_cache_size", "64")
	rq.Set("_mutex", "no")
	r, err := sql.Open("sqlite3", "file:"+path+"?"+rq.Encode())
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	r.SetMaxOpenConns(opts.Readers)
	r.SetMaxIdleConns(opts.Readers)

	// The checkpointer has a connection of its own: a checkpoint copies the
	// WAL into the database file and fsyncs it, which took milliseconds
	// inside whichever commit crossed SQLite's automatic threshold, stalling
	// every job behind it. On its own connection it runs beside the writer.
	// That connection must not write: opened with the writer's journal
	// mode and auto-vacuum pragmas, it wrote page 1 (mattn's driver sets
	// them on every new connection), and as it opened at its first tick,
	// that write could land right after a truncating checkpoint.
	cq := url.Values{}
	for _, k := range []string{"_foreign_keys", "_busy_timeout", "_synchronous", "_mutex"} {
		cq.Set(k, q.Get(k))
	}
	cp, err := sql.Open("sqlite3", "file:"+path+"?"+cq.Encode())
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	cp.SetMaxOpenConns(1)
	cp.SetMaxIdleConns(1)
	cp.SetConnMaxLifetime(0)

	db := &DB{path: path, w: w, r: r, cp: cp, now: opts.Now, stopCP: make(chan struct{}), cpDone: make(chan struct{})}
	if err := w.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if err := db.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate database %s: %w", path, err)
	}
	// The writer only checkpoints as a safety net, if the WAL grows past
	// ~80 MB (the checkpointer fell behind); SQLite's default is 1000 pages.
	if _, err := w.ExecContext(ctx, `PRAGMA wal_autocheckpoint = 20000`); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if err := cp.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	db.cpStarted = true
	every := opts.checkpointEvery
	if every <= 0 {
		every = checkpointInterval
	}
	go db.checkpointer(every)
	return db, nil
}

// checkpointInterval is how often the checkpointer copies the WAL into the
// database file.
const checkpointInterval = 250 * time.Millisecond

// checkpointer runs PASSIVE checkpoints, which never wait for the writer or
// readers, until Close.
func (db *DB) checkpointer(every time.Duration) {
	defer close(db.cpDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-db.stopCP:
			return
		case <-t.C:
		}
		var busy, frames, done int
		// Errors are not fatal here: the writer's own threshold still
		// bounds the WAL, and the next tick tries again.
		db.cpMu.Lock()
		_ = db.cp.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &done)
		db.cpMu.Unlock()
		db.cpRuns.Add(1)
	}
}

// Path returns the database file's path.
func (db *DB) Path() string { return db.path }

// Close closes both pools.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		close(db.stopCP)
		if db.cpStarted {
			<-db.cpDone
		}
	})
	return errors.Join(db.r.Close(), db.w.Close(), db.cp.Close())
}

func (db *DB) migrate(ctx context.Context) error {
	if _, err := db.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		base := strings.TrimPrefix(name, "migrations/")
		num, _, ok := strings.Cut(base, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil {
			return fmt.Errorf("migration %s: name must start with a number and '_'", base)
		}
		if err := db.applyMigration(ctx, version, base, name); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
	}
	return nil
}

func (db *DB) applyMigration(ctx context.Context, version int, base, path string) error {
	body, err := migrationFS.ReadFile(path)
	if err != nil {
		return err
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
			version, base, ms(db.now()))
		return err
	})
}

// write runs fn in one write transaction (BEGIN IMMEDIATE) and commits it.
// Driver errors are translated once, here.
func (db *DB) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return translate(err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return translate(err)
	}
	return translate(tx.Commit())
}

// read runs fn in one read transaction, so that it sees one snapshot.
func (db *DB) read(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return translate(err)
	}
	defer tx.Rollback()
	return translate(fn(tx))
}

// SQLiteVersion returns the version of the SQLite library linked in, such
// as "3.46.1", for reports; only this package speaks to the driver.
func SQLiteVersion() string {
	v, _, _ := sqlite3.Version()
	return v
}

// translate maps driver errors to the domain's sentinel errors by their
// codes, never by their text. Errors that are already domain errors pass
// through.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w", broker.ErrNotFound)
	}
	var se sqlite3.Error
	if errors.As(err, &se) {
		switch se.ExtendedCode {
		case sqlite3.ErrConstraintUnique, sqlite3.ErrConstraintPrimaryKey:
			return fmt.Errorf("%w: %v", broker.ErrConflict, err)
		case sqlite3.ErrConstraintForeignKey, sqlite3.ErrConstraintTrigger:
			return fmt.Errorf("%w: %v", broker.ErrInUse, err)
		case sqlite3.ErrConstraintCheck, sqlite3.ErrConstraintNotNull:
			return fmt.Errorf("%w: %v", broker.ErrInvalid, err)
		}
		switch se.Code {
		case sqlite3.ErrBusy, sqlite3.ErrLocked:
			return fmt.Errorf("%w: database busy: %v", broker.ErrUnavailable, err)
		}
	}
	return err
}

// ms turns a time into Unix milliseconds; the zero time is 0.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromMS turns Unix milliseconds back into a time; 0 is the zero time.
func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

// nullMS reads a nullable millisecond column.
func nullMS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMS(v.Int64)
}
