package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// The page sizes of ListJobs.
const (
	// DefaultJobListLimit is how many jobs ListJobs returns when the filter
	// sets no limit.
	DefaultJobListLimit = 50
	// MaxJobListLimit is the most jobs ListJobs returns at once; a larger
	// limit is lowered to it, so that one call cannot read the whole table.
	MaxJobListLimit = 1000
)

// JobFilter selects jobs for ListJobs. Every field set narrows the result;
// the zero value lists the newest DefaultJobListLimit jobs.
type JobFilter struct {
	// State keeps jobs in this state; 0 keeps all.
	State broker.JobState
	// PlatformID keeps one platform's jobs; 0 keeps all.
	PlatformID int64
	// Platform keeps the jobs of the platform with this name; "" keeps all.
	// An unknown name is ErrNotFound.
	Platform string
	// Server keeps jobs whose latest attempt ran on the server with this
	// name (removed servers included); "" keeps all.
	Server string
	// Limit caps the number of jobs: 0 means DefaultJobListLimit, and
	// anything above MaxJobListLimit means MaxJobListLimit.
	Limit int
	// BeforeID keeps jobs with a smaller id, to page backwards; 0 starts at
	// the newest.
	BeforeID int64
}

// jobColumns are the columns every job query reads; scanJob reads them in
// this order. The delivery state is the latest delivery's: an operator's
// redelivery makes a new row, and the newest one is what is in flight.
const jobColumns = `j.id, j.platform_id, p.name, j.name, j.state, j.priority, j.tags, j.timeout_ms,
	COALESCE(j.idempotency_key, ''), j.restrict_paths, j.attempts, j.max_attempts, j.lease_id,
	j.server_name, j.error, j.created_at, j.updated_at, j.finished_at,
	COALESCE((SELECT d.state FROM deliveries d WHERE d.job_id = j.id ORDER BY d.id DESC LIMIT 1), 0)
	FROM jobs j JOIN platforms p ON p.id = j.platform_id`

func scanJob(row rowScanner) (broker.Job, error) {
	var j broker.Job
	var tags, paths string
	var timeoutMS, created, updated int64
	var leaseID, finished sql.NullInt64
	if err := row.Scan(&j.ID, &j.PlatformID, &j.Platform, &j.Name, &j.State, &j.Priority, &tags, &timeoutMS,
		&j.IdempotencyKey, &paths, &j.Attempts, &j.MaxAttempts, &leaseID,
		&j.Server, &j.Error, &created, &updated, &finished, &j.Delivery); err != nil {
		return j, err
	}
	if err := json.Unmarshal([]byte(tags), &j.Tags); err != nil {
		return j, fmt.Errorf("job %d: tags: %w", j.ID, err)
	}
	if err := json.Unmarshal([]byte(paths), &j.RestrictPaths); err != nil {
		return j, fmt.Errorf("job %d: restrict_paths: %w", j.ID, err)
	}
	j.Timeout = time.Duration(timeoutMS) * time.Millisecond
	j.LeaseID = leaseID.Int64
	j.CreatedAt, j.UpdatedAt, j.FinishedAt = fromMS(created), fromMS(updated), nullMS(finished)
	return j, nil
}

// ListJobs lists the jobs f selects, newest first, without their data,
// result, log, history or events (GetJob has those). It returns ErrInvalid
// for a state that does not exist and ErrNotFound for an unknown platform
// name.
func (db *DB) ListJobs(ctx context.Context, f JobFilter) ([]broker.Job, error) {
	if f.State < 0 || f.State > broker.JobCancelled {
		return nil, fmt.Errorf("%w: job state %d does not exist", broker.ErrInvalid, int(f.State))
	}
	page, err := newListPage(f.Limit, f.BeforeID, DefaultJobListLimit, MaxJobListLimit)
	if err != nil {
		return nil, err
	}
	if f.State != 0 {
		page.and("j.state = ?", int(f.State))
	}
	if f.PlatformID != 0 {
		page.and("j.platform_id = ?", f.PlatformID)
	}
	if f.Platform != "" {
		page.and("p.name = ?", f.Platform)
	}
	if f.Server != "" {
		page.and("j.server_name = ?", f.Server)
	}
	q, args := page.query(`SELECT `+jobColumns, "j.id", f.BeforeID)

	out := []broker.Job{}
	err = db.read(ctx, func(tx *sql.Tx) error {
		if f.Platform != "" {
			// An unknown platform is more likely a typo than a platform
			// without jobs; say so instead of listing nothing.
			if _, err := platformID(ctx, tx, f.Platform); err != nil {
				return err
			}
		}
		var err error
		out, err = queryAll(ctx, tx, out, scanJob, q, args...)
		return err
	})
	if err != nil {
		return nil, withContext(err, "list jobs")
	}
	return out, nil
}

// GetJob returns one job with everything known about it: its data, its
// final result, log and error, the state of its latest delivery, its
// attempts (oldest first), its audit trail (oldest first) and the server
// types it may run on. It returns ErrNotFound, naming the job, when there is
// no such job.
func (db *DB) GetJob(ctx context.Context, id int64) (broker.Job, error) {
	var j broker.Job
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		j, err = scanJob(tx.QueryRowContext(ctx, `SELECT `+jobColumns+` WHERE j.id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: job %d", broker.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT jobdata FROM jobs WHERE id = ?`, id).Scan(&j.JobData); err != nil {
			return err
		}
		if err := jobResult(ctx, tx, &j); err != nil {
			return err
		}
		if j.History, err = jobHistory(ctx, tx, id); err != nil {
			return err
		}
		if j.Events, err = jobEvents(ctx, tx, id); err != nil {
			return err
		}
		j.TypeIDs, err = jobTypeIDs(ctx, tx, id)
		return err
	})
	if err != nil {
		return broker.Job{}, withContext(err, fmt.Sprintf("get job %d", id))
	}
	return j, nil
}

// withContext prefixes what failed to an unexpected error, for the log. A
// domain error is left alone: its message already says what was wrong, and
// it is what the user reads.
func withContext(err error, what string) error {
	for _, domain := range []error{broker.ErrNotFound, broker.ErrInvalid, broker.ErrUnavailable} {
		if errors.Is(err, domain) {
			return err
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// jobResult fills in the final result, if one was stored. The job's own
// error (set when it failed or was cancelled) wins over the result's,
// which is the grader's word for a FATAL outcome.
func jobResult(ctx context.Context, tx *sql.Tx, j *broker.Job) error {
	var result []byte
	var log, resErr string
	err := tx.QueryRowContext(ctx, `SELECT result, log, error FROM results WHERE job_id = ?`, j.ID).
		Scan(&result, &log, &resErr)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	j.Result, j.Log = result, log
	if j.Error == "" {
		j.Error = resErr
	}
	return nil
}

func jobHistory(ctx context.Context, tx *sql.Tx, id int64) ([]broker.Attempt, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, number, server_name, assigned_at, deadline, ended_at,
		end_kind, reason FROM leases WHERE job_id = ? ORDER BY number, id`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []broker.Attempt{}
	for rows.Next() {
		var a broker.Attempt
		var assigned, deadline int64
		var ended sql.NullInt64
		if err := rows.Scan(&a.LeaseID, &a.Number, &a.Server, &assigned, &deadline, &ended, &a.End, &a.Reason); err != nil {
			return nil, err
		}
		a.AssignedAt, a.Deadline, a.EndedAt = fromMS(assigned), fromMS(deadline), nullMS(ended)
		out = append(out, a)
	}
	return out, rows.Err()
}

func jobEvents(ctx context.Context, tx *sql.Tx, id int64) ([]broker.Event, error) {
	rows, err := tx.QueryContext(ctx, `SELECT at, kind, actor, lease_id, detail FROM events
		WHERE job_id = ? ORDER BY at, id`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []broker.Event{}
	for rows.Next() {
		var e broker.Event
		var at int64
		var lease sql.NullInt64
		if err := rows.Scan(&at, &e.Kind, &e.Actor, &lease, &e.Detail); err != nil {
			return nil, err
		}
		e.At, e.LeaseID = fromMS(at), lease.Int64
		out = append(out, e)
	}
	return out, rows.Err()
}

func jobTypeIDs(ctx context.Context, tx *sql.Tx, id int64) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT type_id FROM job_types WHERE job_id = ? ORDER BY type_id`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var t int64
		if err := rows.Scan(&t); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
