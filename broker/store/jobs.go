package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/gradebroker/gradebroker/broker"
)

// JobTx is one write transaction of the dispatcher's group-commit writer:
// many job state changes, one commit, one fsync. Its methods run on the one
// writer connection; a JobTx must be finished with Commit or Rollback.
//
// It runs BEGIN IMMEDIATE and COMMIT itself on a *sql.Conn rather than use a
// *sql.Tx: database/sql gives a Tx a cancellable context, and then starts a
// goroutine for every query in it to watch that context, which for the
// writer (a query per assigned job) cost a goroutine and a thread wake-up
// per job.
type JobTx struct {
	ctx  context.Context
	conn *sql.Conn
	tx   *sql.Conn // the connection the statements run on
	db   *DB
	now  int64
	done bool
}

// BeginJobs starts a write transaction for job changes. All times written in
// it are the time it began. ctx bounds the wait for the writer connection;
// once begun, the transaction ends only by Commit or Rollback (a cancelled
// statement could otherwise end it halfway, leaving later statements to run
// on their own).
func (db *DB) BeginJobs(ctx context.Context) (*JobTx, error) {
	conn, err := db.w.Conn(ctx)
	if err != nil {
		return nil, translate(err)
	}
	t := &JobTx{ctx: context.WithoutCancel(ctx), conn: conn, tx: conn, db: db, now: ms(db.now())}
	if _, err := conn.ExecContext(t.ctx, `BEGIN IMMEDIATE`); err != nil {
		t.Rollback()
		return nil, translate(err)
	}
	return t, nil
}

// Now returns the time the transaction writes as "now".
func (t *JobTx) Now() time.Time { return fromMS(t.now) }

// Commit commits the transaction; when it returns nil the changes are on disk.
// After an error the transaction is rolled back.
func (t *JobTx) Commit() error {
	if t.done {
		return errors.New("store: transaction already finished")
	}
	if _, err := t.conn.ExecContext(t.ctx, `COMMIT`); err != nil {
		t.Rollback()
		return translate(err)
	}
	t.done = true
	return translate(t.conn.Close())
}

// Rollback abandons the transaction. It is safe after Commit.
func (t *JobTx) Rollback() {
	if t.done {
		return
	}
	t.done = true
	if _, err := t.conn.ExecContext(t.ctx, `ROLLBACK`); err != nil && !t.autocommit() {
		// The connection is still inside a transaction it cannot end: drop
		// it rather than hand it back to the pool.
		_ = t.conn.Raw(func(any) error { return driver.ErrBadConn })
	}
	_ = t.conn.Close()
}

// autocommit reports whether the connection is outside any transaction (a
// failed COMMIT may have ended it already, and then ROLLBACK fails).
func (t *JobTx) autocommit() bool {
	ok := false
	_ = t.conn.Raw(func(c any) error {
		if sc, is := c.(*sqlite3.SQLiteConn); is {
			ok = sc.AutoCommit()
		}
		return nil
	})
	return ok
}

// Savepoint marks a point that RollbackToSavepoint returns to, so that one
// failing request does not abort the others of its batch.
func (t *JobTx) Savepoint() error {
	_, err := t.tx.ExecContext(t.ctx, `SAVEPOINT op`)
	return translate(err)
}

// ReleaseSavepoint keeps what was done since Savepoint.
func (t *JobTx) ReleaseSavepoint() error {
	_, err := t.tx.ExecContext(t.ctx, `RELEASE op`)
	return translate(err)
}

// RollbackToSavepoint undoes what was done since Savepoint.
func (t *JobTx) RollbackToSavepoint() error {
	if _, err := t.tx.ExecContext(t.ctx, `ROLLBACK TO op`); err != nil {
		return translate(err)
	}
	return t.ReleaseSavepoint()
}

func (t *JobTx) exec(query string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(t.ctx, query, args...)
}

// ErrTokenReused is returned by UseJTI for a token id the signer already
// used: a replay. It wraps broker.ErrConflict.
var ErrTokenReused = fmt.Errorf("%w: token id already used", broker.ErrConflict)

// UseJTI records a token id until it expires. It returns ErrTokenReused when
// the signer already used it.
func (t *JobTx) UseJTI(signer, jti string, expires time.Time) error {
	_, err := t.exec(`INSERT INTO token_ids (signer, jti, expires_at) VALUES (?, ?, ?)`, signer, jti, ms(expires))
	if err != nil {
		err = translate(err)
		if errors.Is(err, broker.ErrConflict) {
			return fmt.Errorf("%w: jti %q of %s", ErrTokenReused, jti, signer)
		}
	}
	return err
}

// Inserted says what InsertJob did.
type Inserted struct {
	ID        int64
	Duplicate bool // the idempotency key matched an earlier job, returned instead
	State     broker.JobState
	CreatedAt time.Time
}

// InsertJob stores a new queued job, its tags (job_tags, which the console's
// tag filter reads), its eligible types and a "queued" event.
// When the platform already sent a job with the same idempotency key, nothing
// is written and that job is returned with Duplicate set.
func (t *JobTx) InsertJob(nj broker.NewJob, actor string) (Inserted, error) {
	tags, _ := json.Marshal(nonNil(nj.Tags))
	paths, _ := json.Marshal(nonNil(nj.RestrictPaths))
	var key, queue any
	if nj.IdempotencyKey != "" {
		key = nj.IdempotencyKey
	}
	if nj.Queue != "" {
		queue = nj.Queue
	}
	res, err := t.exec(`INSERT INTO jobs (platform_id, name, state, priority, tags, timeout_ms, idempotency_key,
		jobdata, restrict_paths, max_attempts, queue, created_at, updated_at)
		VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform_id, idempotency_key) DO NOTHING`,
		nj.PlatformID, nj.Name, nj.Priority, string(tags), nj.Timeout.Milliseconds(), key,
		nj.JobData, string(paths), nj.MaxAttempts, queue, t.now, t.now)
	if err != nil {
		return Inserted{}, translate(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var in Inserted
		var state int
		var created int64
		err := t.tx.QueryRowContext(t.ctx, `SELECT id, state, created_at FROM jobs WHERE platform_id = ? AND idempotency_key = ?`,
			nj.PlatformID, nj.IdempotencyKey).Scan(&in.ID, &state, &created)
		in.Duplicate, in.State, in.CreatedAt = true, broker.JobState(state), fromMS(created)
		return in, translate(err)
	}
	id, _ := res.LastInsertId()
	for _, tag := range nj.Tags {
		if _, err := t.exec(`INSERT INTO job_tags (tag, job_id) VALUES (?, ?)`, tag, id); err != nil {
			return Inserted{}, translate(err)
		}
	}
	for _, typeID := range nj.TypeIDs {
		if _, err := t.exec(`INSERT INTO job_types (job_id, type_id) VALUES (?, ?)`, id, typeID); err != nil {
			return Inserted{}, translate(err)
		}
	}
	if err := t.Event(id, "queued", actor, 0, ""); err != nil {
		return Inserted{}, err
	}
	return Inserted{ID: id, State: broker.JobQueued, CreatedAt: fromMS(t.now)}, nil
}

// Event appends an entry to a job's audit trail.
func (t *JobTx) Event(jobID int64, kind, actor string, leaseID int64, detail string) error {
	var lease any
	if leaseID != 0 {
		lease = leaseID
	}
	_, err := t.exec(`INSERT INTO events (job_id, at, kind, actor, lease_id, detail) VALUES (?, ?, ?, ?, ?, ?)`,
		jobID, t.now, kind, actor, lease, detail)
	return translate(err)
}

// AssignedJob is what graderd needs of a job to run it.
type AssignedJob struct {
	Name      string
	JobData   []byte
	Tags      []string
	TimeoutMS int64
	// RestrictPaths are the platform's restrict_paths, copied to the job
	// when it was submitted.
	RestrictPaths []string
}

// Assign moves a queued job to assigned under a new lease and returns what
// the server needs to run it. It returns ErrFailedPrecondition when the job is
// not queued.
func (t *JobTx) Assign(jobID, leaseID, serverID int64, serverName string, attempt int, deadline time.Time) (AssignedJob, error) {
	var a AssignedJob
	var tags, paths string
	err := t.tx.QueryRowContext(t.ctx, `UPDATE jobs SET state = 2, lease_id = ?, attempts = ?, server_id = ?,
		server_name = ?, updated_at = ? WHERE id = ? AND state = 1 RETURNING name, jobdata, tags, timeout_ms, restrict_paths`,
		leaseID, attempt, serverID, serverName, t.now, jobID).Scan(&a.Name, &a.JobData, &tags, &a.TimeoutMS, &paths)
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("%w: job %d is not queued", broker.ErrFailedPrecondition, jobID)
	}
	if err != nil {
		return a, translate(err)
	}
	if err := json.Unmarshal([]byte(tags), &a.Tags); err != nil {
		return a, fmt.Errorf("job %d: tags: %w", jobID, err)
	}
	if paths != "[]" {
		if err := json.Unmarshal([]byte(paths), &a.RestrictPaths); err != nil {
			return a, fmt.Errorf("job %d: restrict_paths: %w", jobID, err)
		}
	}
	return a, t.lease(jobID, leaseID, serverID, serverName, attempt, deadline)
}

// AssignInserted is Assign for a job inserted earlier in this transaction,
// whose fields the caller still has: it does not read them back.
func (t *JobTx) AssignInserted(jobID, leaseID, serverID int64, serverName string, attempt int, deadline time.Time) error {
	res, err := t.exec(`UPDATE jobs SET state = 2, lease_id = ?, attempts = ?, server_id = ?,
		server_name = ?, updated_at = ? WHERE id = ? AND state = 1`,
		leaseID, attempt, serverID, serverName, t.now, jobID)
	if err != nil {
		return translate(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: job %d is not queued", broker.ErrFailedPrecondition, jobID)
	}
	return t.lease(jobID, leaseID, serverID, serverName, attempt, deadline)
}

// lease records a new lease of an assigned job and its event.
func (t *JobTx) lease(jobID, leaseID, serverID int64, serverName string, attempt int, deadline time.Time) error {
	if _, err := t.exec(`INSERT INTO leases (id, job_id, server_id, server_name, number, assigned_at, deadline)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, leaseID, jobID, serverID, serverName, attempt, t.now, ms(deadline)); err != nil {
		return translate(err)
	}
	return t.Event(jobID, "assigned", "server:"+serverName, leaseID, "attempt "+strconv.Itoa(attempt))
}

// EndLease records how a lease ended.
func (t *JobTx) EndLease(leaseID int64, end broker.LeaseEnd, reason string) error {
	return t.EndLeaseRun(leaseID, end, reason, nil, "")
}

// EndLeaseRun records how a lease ended together with what its run used
// and the limit that ended it, as its server reported them with its result
// (usage nil: not measured).
func (t *JobTx) EndLeaseRun(leaseID int64, end broker.LeaseEnd, reason string, usage *broker.Usage, limit broker.Limit) error {
	cpu, peak, wall := usageColumns(usage)
	_, err := t.exec(`UPDATE leases SET ended_at = ?, end_kind = ?, reason = ?, cpu_time_us = ?, peak_memory_bytes = ?,
		wall_time_us = ?, run_limit = ? WHERE id = ? AND ended_at IS NULL`,
		t.now, end, reason, cpu, peak, wall, string(limit), leaseID)
	return translate(err)
}

// usageColumns turns a run's usage into the leases table's columns: NULL
// for a run that reported none.
func usageColumns(u *broker.Usage) (cpuUS, peakBytes, wallUS any) {
	if u == nil {
		return nil, nil, nil
	}
	return u.CPUTime.Microseconds(), max(u.PeakMemory, 0), u.WallTime.Microseconds()
}

// usageOf reads what usageColumns wrote; nil when the run reported none.
func usageOf(cpuUS, peakBytes, wallUS sql.NullInt64) *broker.Usage {
	if !cpuUS.Valid && !peakBytes.Valid && !wallUS.Valid {
		return nil
	}
	return &broker.Usage{CPUTime: time.Duration(cpuUS.Int64) * time.Microsecond, PeakMemory: peakBytes.Int64,
		WallTime: time.Duration(wallUS.Int64) * time.Microsecond}
}

// Requeue puts an assigned job back in the queue after its lease ended,
// remembering the server to avoid next time.
func (t *JobTx) Requeue(jobID, avoidServerID int64, actor string, leaseID int64, reason string) error {
	var avoid any
	if avoidServerID != 0 {
		avoid = avoidServerID
	}
	if _, err := t.exec(`UPDATE jobs SET state = 1, lease_id = NULL, avoid_server_id = ?, updated_at = ? WHERE id = ?`,
		avoid, t.now, jobID); err != nil {
		return translate(err)
	}
	return t.Event(jobID, "requeued", actor, leaseID, reason)
}

// SetAttempts sets how many attempts a job has used: a lease its server
// never started gives its attempt back.
func (t *JobTx) SetAttempts(jobID int64, n int) error {
	_, err := t.exec(`UPDATE jobs SET attempts = ? WHERE id = ?`, n, jobID)
	return translate(err)
}

// SetMaxAttempts changes a job's attempt limit (an operator's requeue of a
// job that used them all gives it one more).
func (t *JobTx) SetMaxAttempts(jobID int64, n int) error {
	_, err := t.exec(`UPDATE jobs SET max_attempts = ? WHERE id = ?`, n, jobID)
	return translate(err)
}

// Final is a job's final state and what goes with it.
type Final struct {
	// PlatformID is the job's platform, when the caller knows it (it saves
	// a lookup); 0 makes Finish look it up.
	PlatformID int64
	State      broker.JobState // JobDone, JobFailed or JobCancelled
	LeaseID    int64           // the lease whose result this is; 0 if none
	Outcome    broker.Outcome  // 0 when no result was reported
	Result     []byte
	Log        string
	Error      string
	Actor      string
	Detail     string
	// Quiet makes no delivery: the platform is not to hear of this end
	// (an XQueue submission retired by a newer one, whose result XQueue
	// never posts).
	Quiet bool
}

// Finish makes a job final: its state, its result row when a lease reported
// one, a "done"/"failed"/"cancelled" event, and a pending delivery to its
// platform (when its results go anywhere, and f is not Quiet), all in this
// transaction. It
// returns the delivery's id, or 0. It returns ErrFailedPrecondition when the
// job is already final, and ErrNotFound when it does not exist.
func (t *JobTx) Finish(jobID int64, f Final) (int64, error) {
	// One statement both checks and changes the state: the common case
	// needs no SELECT (and no goroutine database/sql starts per QueryRow).
	res, err := t.exec(`UPDATE jobs SET state = ?, lease_id = NULL, error = ?, updated_at = ?, finished_at = ?
		WHERE id = ? AND state IN (1, 2)`, int(f.State), f.Error, t.now, t.now, jobID)
	if err != nil {
		return 0, translate(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var state int
		err := t.tx.QueryRowContext(t.ctx, `SELECT state FROM jobs WHERE id = ?`, jobID).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("%w: job %d", broker.ErrNotFound, jobID)
		}
		if err != nil {
			return 0, translate(err)
		}
		return 0, fmt.Errorf("%w: job %d is already %s", broker.ErrFailedPrecondition, jobID, broker.JobState(state))
	}
	if f.Outcome != 0 || f.Result != nil || f.Log != "" {
		if _, err := t.exec(`INSERT INTO results (job_id, lease_id, outcome, result, log, error, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET lease_id = excluded.lease_id,
			outcome = excluded.outcome, result = excluded.result, log = excluded.log, error = excluded.error,
			created_at = excluded.created_at`,
			jobID, f.LeaseID, int(f.Outcome), f.Result, f.Log, f.Error, t.now); err != nil {
			return 0, translate(err)
		}
	}
	detail := f.Detail
	if detail == "" {
		detail = f.Error
	}
	if err := t.Event(jobID, f.State.String(), f.Actor, f.LeaseID, detail); err != nil {
		return 0, err
	}
	if f.Quiet {
		return 0, nil
	}
	platform := f.PlatformID
	if platform == 0 {
		if err := t.tx.QueryRowContext(t.ctx, `SELECT platform_id FROM jobs WHERE id = ?`, jobID).Scan(&platform); err != nil {
			return 0, translate(err)
		}
	}
	wants, err := t.db.wantsCallbacks(t.ctx, t.tx, platform)
	if err != nil || !wants {
		return 0, err
	}
	// A plain INSERT ... VALUES: an INSERT ... SELECT here was re-prepared
	// by SQLite on every execution (gbbench measured a third of the
	// writer's time in it).
	res, err = t.exec(`INSERT INTO deliveries (job_id, platform_id, state, next_attempt_at, created_at)
		VALUES (?, ?, 1, ?, ?)`, jobID, platform, t.now, t.now)
	if err != nil {
		return 0, translate(err)
	}
	id, _ := res.LastInsertId()
	return id, nil
}

// wantsCallbacks reports whether a platform's results are sent anywhere:
// it has a return URL, or its protocol is XQueue's, whose submissions each
// name where their result goes. The answer comes from a cache that every
// platform change in this package invalidates.
func (db *DB) wantsCallbacks(ctx context.Context, tx *sql.Conn, platformID int64) (bool, error) {
	if v, ok := db.callbacks.Load(platformID); ok {
		return v.(bool), nil
	}
	var url, protocol string
	err := tx.QueryRowContext(ctx, `SELECT return_url, protocol FROM platforms WHERE id = ?`, platformID).Scan(&url, &protocol)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, translate(err)
	}
	wants := url != "" || broker.Protocol(protocol) == broker.ProtocolXQueue
	db.callbacks.Store(platformID, wants)
	return wants, nil
}

// Reopen puts a failed or cancelled job back in the queue with fresh
// attempts, for an operator. It returns ErrFailedPrecondition for a job that
// is done (its result stands) or not final.
func (t *JobTx) Reopen(jobID int64, actor string) (OpenJob, error) {
	var state int
	err := t.tx.QueryRowContext(t.ctx, `SELECT state FROM jobs WHERE id = ?`, jobID).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return OpenJob{}, fmt.Errorf("%w: job %d", broker.ErrNotFound, jobID)
	}
	if err != nil {
		return OpenJob{}, translate(err)
	}
	switch broker.JobState(state) {
	case broker.JobFailed, broker.JobCancelled:
	case broker.JobDone:
		return OpenJob{}, fmt.Errorf("%w: job %d is done; its result stands and was delivered", broker.ErrFailedPrecondition, jobID)
	default:
		return OpenJob{}, fmt.Errorf("%w: job %d is %s, not final", broker.ErrFailedPrecondition, jobID, broker.JobState(state))
	}
	if _, err := t.exec(`UPDATE jobs SET state = 1, attempts = 0, lease_id = NULL, avoid_server_id = NULL, error = '',
		updated_at = ?, finished_at = NULL WHERE id = ?`, t.now, jobID); err != nil {
		return OpenJob{}, translate(err)
	}
	if _, err := t.exec(`DELETE FROM results WHERE job_id = ?`, jobID); err != nil {
		return OpenJob{}, translate(err)
	}
	if err := t.Event(jobID, "reopened", actor, 0, "requeued with fresh attempts"); err != nil {
		return OpenJob{}, err
	}
	row := t.tx.QueryRowContext(t.ctx, openJobQuery+` WHERE j.id = ? GROUP BY j.id`, jobID)
	return scanOpenJob(row)
}

// OpenJob is what the dispatcher keeps in memory of an unfinished job.
type OpenJob struct {
	ID            int64
	PlatformID    int64
	Priority      int
	State         broker.JobState
	CreatedAt     time.Time
	TimeoutMS     int64
	Attempts      int
	MaxAttempts   int
	LeaseID       int64
	AvoidServerID int64
	TypeIDs       []int64
	Queue         string // its pull queue, if any
}

const openJobQuery = `SELECT j.id, j.platform_id, j.priority, j.state, j.created_at, j.timeout_ms, j.attempts,
	j.max_attempts, COALESCE(j.lease_id, 0), COALESCE(j.avoid_server_id, 0), COALESCE(group_concat(jt.type_id), ''),
	COALESCE(j.queue, '')
	FROM jobs j LEFT JOIN job_types jt ON jt.job_id = j.id`

func scanOpenJob(row rowScanner) (OpenJob, error) {
	var j OpenJob
	var state int
	var created int64
	var types string
	if err := row.Scan(&j.ID, &j.PlatformID, &j.Priority, &state, &created, &j.TimeoutMS, &j.Attempts,
		&j.MaxAttempts, &j.LeaseID, &j.AvoidServerID, &types, &j.Queue); err != nil {
		return j, translate(err)
	}
	j.State, j.CreatedAt = broker.JobState(state), fromMS(created)
	if types != "" {
		for _, s := range strings.Split(types, ",") {
			id, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return j, fmt.Errorf("job %d: type id %q: %w", j.ID, s, err)
			}
			j.TypeIDs = append(j.TypeIDs, id)
		}
	}
	return j, nil
}

// LoadOpenJobs calls fn for every queued or assigned job, oldest first, so
// that the dispatcher can rebuild its queues at start.
func (db *DB) LoadOpenJobs(ctx context.Context, fn func(OpenJob) error) error {
	return db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, openJobQuery+` WHERE j.state IN (1, 2) GROUP BY j.id ORDER BY j.id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			j, err := scanOpenJob(rows)
			if err != nil {
				return err
			}
			if err := fn(j); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}

// OpenLease is a lease that has not ended.
type OpenLease struct {
	ID         int64
	JobID      int64
	ServerID   int64
	ServerName string
	Number     int
	AssignedAt time.Time
	Deadline   time.Time
}

// OpenLeases lists leases that have not ended.
func (db *DB) OpenLeases(ctx context.Context) ([]OpenLease, error) {
	var out []OpenLease
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, job_id, COALESCE(server_id, 0), server_name, number,
			assigned_at, deadline FROM leases WHERE ended_at IS NULL ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var l OpenLease
			var assigned, deadline int64
			if err := rows.Scan(&l.ID, &l.JobID, &l.ServerID, &l.ServerName, &l.Number, &assigned, &deadline); err != nil {
				return err
			}
			l.AssignedAt, l.Deadline = fromMS(assigned), fromMS(deadline)
			out = append(out, l)
		}
		return rows.Err()
	})
	return out, err
}

// MaxLeaseID returns the highest lease id ever written, so that new fencing
// ids keep growing across restarts.
func (db *DB) MaxLeaseID(ctx context.Context) (int64, error) {
	var id int64
	err := db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM leases`).Scan(&id)
	})
	return id, err
}

// JobState returns a job's state and owning platform, or ErrNotFound.
func (db *DB) JobState(ctx context.Context, jobID int64) (broker.JobState, int64, error) {
	var state int
	var platform int64
	err := db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT state, platform_id FROM jobs WHERE id = ?`, jobID).Scan(&state, &platform)
	})
	if errors.Is(err, broker.ErrNotFound) {
		return 0, 0, fmt.Errorf("%w: job %d", broker.ErrNotFound, jobID)
	}
	return broker.JobState(state), platform, err
}

// JobClass returns what decides which queue of the dispatcher job jobID is
// in: the server types that may take it, sorted, and its pull queue. A job
// that does not exist has none.
func (db *DB) JobClass(ctx context.Context, jobID int64) ([]int64, string, error) {
	var ids []int64
	var queue sql.NullString
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		if ids, err = jobTypeIDs(ctx, tx, jobID); err != nil {
			return err
		}
		err = tx.QueryRowContext(ctx, `SELECT queue FROM jobs WHERE id = ?`, jobID).Scan(&queue)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	})
	return ids, queue.String, err
}

// TouchServers records when servers were last heard from.
func (t *JobTx) TouchServers(seen map[int64]time.Time) error {
	for id, at := range seen {
		if _, err := t.exec(`UPDATE servers SET last_seen = ? WHERE id = ?`, ms(at), id); err != nil {
			return translate(err)
		}
	}
	return nil
}
