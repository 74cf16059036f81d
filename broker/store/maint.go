package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// This file holds what broker/maint needs of the database: retention in
// small batches, WAL checkpoints, incremental vacuum, the counts its alerts
// look at, and the operator's drain flag.
//
// Every deletion runs in its own short write transaction on the one writer
// connection that the dispatcher's group commit also uses, so a batch only
// ever delays dispatch by the time it takes; the caller pauses between
// batches to let dispatch in.

// RetentionCursor is where a retention pass over finished jobs has got to:
// jobs ordered by (finished_at, id), the same order as the index
// jobs_finished. The zero value starts at the beginning.
type RetentionCursor struct {
	FinishedAt int64 // Unix ms
	ID         int64
}

// DeleteFinishedJobs deletes at most limit final jobs (done, failed or
// cancelled) that finished before cutoff, in one transaction, together with
// everything that hangs off them (events, leases, results, deliveries,
// eligible types: ON DELETE CASCADE). It starts after cursor and returns how
// many jobs it deleted and where the next batch starts; fewer than limit
// means the pass is over.
//
// A job that never ran (cancelled while queued) is final and goes like any
// other. A job that is not final is never deleted, however old. A job is
// kept, whatever its age, while:
//
//   - any delivery of it is pending: the worker is still sending it, and
//     would lose the result it is sending;
//   - its newest delivery is dead and died (its last try was due) less than
//     the retention ago: an operator has the whole retention period after the
//     dead-delivery alert to redeliver it, which needs the job's result.
//
// Older dead deliveries that a newer delivery superseded hold nothing back.
func (db *DB) DeleteFinishedJobs(ctx context.Context, cutoff time.Time, cursor RetentionCursor, limit int) (int, RetentionCursor, error) {
	if limit <= 0 {
		return 0, cursor, fmt.Errorf("%w: batch size must be positive", broker.ErrInvalid)
	}
	c := ms(cutoff)
	n := 0
	next := cursor
	err := db.write(ctx, func(tx *sql.Tx) error {
		n, next = 0, cursor
		rows, err := tx.QueryContext(ctx, `SELECT j.id, j.finished_at FROM jobs j
			WHERE j.finished_at IS NOT NULL AND j.finished_at < ? AND (j.finished_at, j.id) > (?, ?)
			AND j.state IN (3, 4, 5)
			AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.state = 1)
			AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.state = 3
				AND MAX(d.created_at, d.next_attempt_at) >= ?
				AND NOT EXISTS (SELECT 1 FROM deliveries s WHERE s.job_id = d.job_id AND s.id > d.id))
			ORDER BY j.finished_at, j.id LIMIT ?`, c, cursor.FinishedAt, cursor.ID, c, limit)
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			var id, fin int64
			if err := rows.Scan(&id, &fin); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
			next = RetentionCursor{FinishedAt: fin, ID: id}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, `DELETE FROM jobs WHERE id = ?`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, id := range ids {
			res, err := stmt.ExecContext(ctx, id)
			if err != nil {
				return err
			}
			k, _ := res.RowsAffected()
			n += int(k)
		}
		return nil
	})
	if err != nil {
		return 0, cursor, fmt.Errorf("delete finished jobs: %w", err)
	}
	return n, next, nil
}

// DeleteDeliveredDeliveries deletes at most limit deliveries that the
// platform acknowledged before cutoff, in one transaction, and returns how
// many. Most go with their jobs; this catches those of jobs that are kept
// (a job reopened and finished again keeps its newer delivery).
func (db *DB) DeleteDeliveredDeliveries(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("%w: batch size must be positive", broker.ErrInvalid)
	}
	var n int64
	err := db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM deliveries WHERE id IN (
			SELECT id FROM deliveries WHERE state = 2 AND delivered_at < ? ORDER BY delivered_at LIMIT ?)`, ms(cutoff), limit)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete delivered deliveries: %w", err)
	}
	return int(n), nil
}

// DeleteExpiredTokenIDs deletes at most limit recorded token ids whose
// tokens expired before now, in one transaction, and returns how many. An
// expired token is refused for its expiry, so its id no longer needs to be
// remembered to refuse a replay.
func (db *DB) DeleteExpiredTokenIDs(ctx context.Context, now time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("%w: batch size must be positive", broker.ErrInvalid)
	}
	var n int64
	err := db.write(ctx, func(tx *sql.Tx) error {
		// token_ids is WITHOUT ROWID: pick the batch by its key.
		res, err := tx.ExecContext(ctx, `DELETE FROM token_ids WHERE (signer, jti) IN (
			SELECT signer, jti FROM token_ids WHERE expires_at < ? ORDER BY expires_at LIMIT ?)`, ms(now), limit)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete expired token ids: %w", err)
	}
	return int(n), nil
}

// Checkpoint is what one WAL checkpoint did.
type Checkpoint struct {
	// Busy is set when the checkpoint could not finish because of a reader
	// or writer; it is tried again next time.
	Busy bool
	// Frames is how many frames the WAL held, and Checkpointed how many of
	// them were copied into the database file.
	Frames, Checkpointed int
}

// CheckpointWAL copies the WAL into the database file and, when truncate is
// set and nobody is reading an older snapshot, truncates the -wal file to
// zero bytes; without truncate it is a PASSIVE checkpoint, which never waits.
// It runs on the writer connection, so that dispatch waits for it in Go
// rather than getting SQLITE_BUSY.
func (db *DB) CheckpointWAL(ctx context.Context, truncate bool) (Checkpoint, error) {
	mode := "PASSIVE"
	if truncate {
		mode = "TRUNCATE"
	}
	var cp Checkpoint
	db.cpMu.Lock()
	defer db.cpMu.Unlock()
	conn, err := db.w.Conn(ctx)
	if err != nil {
		return cp, translate(err)
	}
	defer conn.Close()
	var busy int
	if err := conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(`+mode+`)`).Scan(&busy, &cp.Frames, &cp.Checkpointed); err != nil {
		return cp, fmt.Errorf("wal checkpoint %s: %w", mode, translate(err))
	}
	cp.Busy = busy != 0
	return cp, nil
}

// FreePages returns how many pages of the database file are free (the
// freelist) and how many it has in all.
func (db *DB) FreePages(ctx context.Context) (free, total int, err error) {
	err = db.read(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&total)
	})
	return free, total, err
}

// IncrementalVacuum gives at most pages free pages back to the file system,
// in one short write transaction, and returns how many free pages are left.
// It does nothing on a database created without auto_vacuum=incremental
// (before gradebroker set it); such a file needs one VACUUM, by hand, while
// the broker is stopped.
func (db *DB) IncrementalVacuum(ctx context.Context, pages int) (int, error) {
	if pages <= 0 {
		return 0, fmt.Errorf("%w: page count must be positive", broker.ErrInvalid)
	}
	left := 0
	err := db.write(ctx, func(tx *sql.Tx) error {
		// The pragma frees pages as it is stepped: read it to the end, since
		// a plain Exec steps a statement only once.
		rows, err := tx.QueryContext(ctx, fmt.Sprintf(`PRAGMA incremental_vacuum(%d)`, pages))
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&left)
	})
	if err != nil {
		return 0, fmt.Errorf("incremental vacuum: %w", err)
	}
	return left, nil
}

// AutoVacuum returns the database's auto_vacuum mode: 0 none, 1 full, 2
// incremental.
func (db *DB) AutoVacuum(ctx context.Context) (int, error) {
	var mode int
	err := db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `PRAGMA auto_vacuum`).Scan(&mode)
	})
	return mode, err
}

// FinalCounts counts the jobs that became final at or after since, by state
// (JobDone, JobFailed, JobCancelled; each has an entry).
func (db *DB) FinalCounts(ctx context.Context, since time.Time) (map[broker.JobState]int, error) {
	out := map[broker.JobState]int{broker.JobDone: 0, broker.JobFailed: 0, broker.JobCancelled: 0}
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT state, COUNT(*) FROM jobs
			WHERE finished_at IS NOT NULL AND finished_at >= ? GROUP BY state`, ms(since))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var state, n int
			if err := rows.Scan(&state, &n); err != nil {
				return err
			}
			if broker.JobState(state).Final() {
				out[broker.JobState(state)] = n
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("count final jobs: %w", err)
	}
	return out, nil
}

// DeadDelivery is a dead delivery that needs an operator: the newest of its
// job, whose job is still final.
type DeadDelivery struct {
	ID       int64
	JobID    int64
	Platform string
	// DiedAt is when its last try was due.
	DiedAt    time.Time
	LastError string
}

// DeadDeliveries returns the dead deliveries that an operator could
// redeliver (the newest of their job, the job final), oldest first, at most
// limit of them, and how many there are in all. Dead deliveries superseded
// by a redelivery, or whose job was reopened, are not counted.
func (db *DB) DeadDeliveries(ctx context.Context, limit int) ([]DeadDelivery, int, error) {
	if limit <= 0 {
		return nil, 0, fmt.Errorf("%w: limit must be positive", broker.ErrInvalid)
	}
	const where = ` FROM deliveries d JOIN jobs j ON j.id = d.job_id JOIN platforms p ON p.id = d.platform_id
		WHERE d.state = 3 AND j.state IN (3, 4, 5)
		AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.job_id = d.job_id AND n.id > d.id)`
	var out []DeadDelivery
	total := 0
	err := db.read(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*)`+where).Scan(&total); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT d.id, d.job_id, p.name, MAX(d.created_at, d.next_attempt_at), d.last_error`+
			where+` ORDER BY d.id LIMIT ?`, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var dd DeadDelivery
			var died int64
			if err := rows.Scan(&dd.ID, &dd.JobID, &dd.Platform, &died, &dd.LastError); err != nil {
				return err
			}
			dd.DiedAt = fromMS(died)
			out = append(out, dd)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, fmt.Errorf("dead deliveries: %w", err)
	}
	return out, total, nil
}

// SetServerDrained records an operator's drain (or undrain) of a server,
// in the dispatcher's transaction, so that the flag is stored in the same
// order as the dispatcher changed it. A server that no longer exists is left
// alone.
func (t *JobTx) SetServerDrained(serverID int64, drained bool) error {
	v := 0
	if drained {
		v = 1
	}
	_, err := t.exec(`UPDATE servers SET drained = ? WHERE id = ?`, v, serverID)
	return translate(err)
}

// DrainedServers returns the ids of the servers an operator drained.
func (db *DB) DrainedServers(ctx context.Context) ([]int64, error) {
	var out []int64
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id FROM servers WHERE drained != 0 ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			out = append(out, id)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("drained servers: %w", err)
	}
	return out, nil
}
