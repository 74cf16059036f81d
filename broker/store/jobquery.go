package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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

// JobFilter selects jobs for ListJobs and CountJobs. Every field set
// narrows the result; the zero value lists the newest DefaultJobListLimit
// jobs.
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
	// Tag keeps jobs that carry this tag; "" keeps all.
	Tag string
	// AnyTags, when set, keeps jobs that carry at least one of these tags
	// (a console viewer's scope).
	AnyTags []string
	// CreatedAfter and CreatedBefore keep jobs queued at or after, and
	// before, these times; the zero time leaves that side open.
	CreatedAfter, CreatedBefore time.Time
	// Search keeps the jobs whose id is this number, whose name starts with
	// it, or whose idempotency key is it; "" keeps all.
	Search string
	// Limit caps the number of jobs: 0 means DefaultJobListLimit, and
	// anything above MaxJobListLimit means MaxJobListLimit.
	Limit int
	// BeforeID keeps jobs with a smaller id, to page backwards; 0 starts at
	// the newest.
	BeforeID int64
	// AfterID keeps jobs with a larger id: the page of the AfterID's
	// newer neighbours, still listed newest first. It cannot be combined
	// with BeforeID.
	AfterID int64
	// MaxID keeps jobs whose id is at most MaxID; 0 keeps all. A bulk
	// action uses it to act on what its confirmation counted and not on
	// jobs submitted since.
	MaxID int64
}

// jobSelect is what every job query reads; scanJob reads it in this order.
// The delivery state is the latest delivery's: an operator's redelivery
// makes a new row, and the newest one is what is in flight.
const jobSelect = `j.id, j.platform_id, p.name, j.name, j.state, j.priority, j.tags, j.timeout_ms,
	COALESCE(j.idempotency_key, ''), j.restrict_paths, j.attempts, j.max_attempts, j.lease_id,
	j.server_name, j.error, j.created_at, j.updated_at, j.finished_at,
	COALESCE((SELECT d.state FROM deliveries d WHERE d.job_id = j.id ORDER BY d.id DESC LIMIT 1), 0),
	COALESCE(j.queue, '')`

// jobColumns is jobSelect from a job and its platform.
const jobColumns = jobSelect + ` FROM jobs j JOIN platforms p ON p.id = j.platform_id`

func scanJob(row rowScanner) (broker.Job, error) {
	var j broker.Job
	var tags, paths string
	var timeoutMS, created, updated int64
	var leaseID, finished sql.NullInt64
	if err := row.Scan(&j.ID, &j.PlatformID, &j.Platform, &j.Name, &j.State, &j.Priority, &tags, &timeoutMS,
		&j.IdempotencyKey, &paths, &j.Attempts, &j.MaxAttempts, &leaseID,
		&j.Server, &j.Error, &created, &updated, &finished, &j.Delivery, &j.Queue); err != nil {
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

// jobQuery is a job filter turned into SQL: the tables to read, the
// conditions and their arguments, and the column that orders the result.
// Every filter is written so that SQLite can walk an index in id order and
// stop after a page, whatever the size of the table:
//
//   - a tag filter walks job_tags' primary key (tag, job_id);
//   - queued and assigned jobs are found through the partial index jobs_open,
//     failed and cancelled ones through jobs_failed and jobs_cancelled (the
//     condition repeats the index's own, which is how SQLite recognises it);
//   - a time range becomes a range of ids (ids grow with created_at), found
//     by a binary search on the primary key;
//   - a search is an OR of an id, a name prefix (jobs_name) and an
//     idempotency key (the unique index on (platform_id, idempotency_key)).
type jobQuery struct {
	from  string
	where []string
	args  []any
	idCol string
}

func (q *jobQuery) and(cond string, args ...any) {
	q.where = append(q.where, cond)
	q.args = append(q.args, args...)
}

func (q *jobQuery) sql(columns string) string {
	s := `SELECT ` + columns + ` FROM ` + q.from
	if len(q.where) > 0 {
		s += ` WHERE ` + strings.Join(q.where, " AND ")
	}
	return s
}

// checkJobFilter refuses what no query could mean.
func checkJobFilter(f JobFilter) error {
	if f.State < 0 || f.State > broker.JobCancelled {
		return fmt.Errorf("%w: job state %d does not exist", broker.ErrInvalid, int(f.State))
	}
	if f.BeforeID < 0 || f.AfterID < 0 || f.MaxID < 0 {
		return fmt.Errorf("%w: job ids in a filter must not be negative", broker.ErrInvalid)
	}
	if f.BeforeID != 0 && f.AfterID != 0 {
		return fmt.Errorf("%w: page before an id or after one, not both", broker.ErrInvalid)
	}
	if !f.CreatedAfter.IsZero() && !f.CreatedBefore.IsZero() && !f.CreatedAfter.Before(f.CreatedBefore) {
		return fmt.Errorf("%w: the time range ends (%s) before it starts (%s)", broker.ErrInvalid,
			f.CreatedBefore.Format(time.RFC3339), f.CreatedAfter.Format(time.RFC3339))
	}
	if len(f.Search) > 256 {
		return fmt.Errorf("%w: a search is at most 256 bytes", broker.ErrInvalid)
	}
	return nil
}

// buildJobQuery turns f into a query in tx. The paging fields (BeforeID,
// AfterID, Limit) are left to the caller.
func buildJobQuery(ctx context.Context, tx *sql.Tx, f JobFilter) (*jobQuery, error) {
	q := &jobQuery{from: `jobs j JOIN platforms p ON p.id = j.platform_id`, idCol: "j.id"}
	if f.Tag != "" {
		// CROSS JOIN keeps job_tags the outer loop: its key is the order.
		q.from = `job_tags jt CROSS JOIN jobs j ON j.id = jt.job_id JOIN platforms p ON p.id = j.platform_id`
		q.idCol = "jt.job_id"
		q.and("jt.tag = ?", f.Tag)
	}
	if len(f.AnyTags) > 0 && !slices.Contains(f.AnyTags, f.Tag) {
		q.and(`EXISTS (SELECT 1 FROM job_tags s WHERE s.job_id = j.id AND s.tag IN (`+placeholders(len(f.AnyTags))+`))`,
			anySlice(f.AnyTags)...)
	}
	switch f.State {
	case 0:
	case broker.JobQueued, broker.JobAssigned:
		q.and("j.state = ? AND j.state IN (1, 2)", int(f.State))
	case broker.JobFailed:
		q.and("j.state = 4")
	case broker.JobCancelled:
		q.and("j.state = 5")
	default:
		q.and("j.state = ?", int(f.State))
	}
	if f.PlatformID != 0 {
		q.and("j.platform_id = ?", f.PlatformID)
	}
	if f.Platform != "" {
		// An unknown platform is more likely a typo than a platform
		// without jobs; say so instead of listing nothing.
		id, err := platformID(ctx, tx, f.Platform)
		if err != nil {
			return nil, err
		}
		q.and("j.platform_id = ?", id)
	}
	if f.Server != "" {
		q.and("j.server_name = ?", f.Server)
	}
	if !f.CreatedAfter.IsZero() {
		first, err := firstJobAt(ctx, tx, f.CreatedAfter)
		if err != nil {
			return nil, err
		}
		q.and(q.idCol+" >= ? AND j.created_at >= ?", first, ms(f.CreatedAfter))
	}
	if !f.CreatedBefore.IsZero() {
		end, err := firstJobAt(ctx, tx, f.CreatedBefore)
		if err != nil {
			return nil, err
		}
		q.and(q.idCol+" < ? AND j.created_at < ?", end, ms(f.CreatedBefore))
	}
	if f.MaxID != 0 {
		q.and(q.idCol+" <= ?", f.MaxID)
	}
	if s := strings.TrimSpace(f.Search); s != "" {
		id, _ := strconv.ParseInt(s, 10, 64)
		q.and(`(j.id = ? OR (j.name >= ? AND j.name < ?)
			OR (j.platform_id IN (SELECT id FROM platforms) AND j.idempotency_key = ?))`, id, s, s+"\U0010FFFF", s)
	}
	return q, nil
}

// firstJobAt returns an id x such that the jobs with an id of at least x
// are exactly those queued at or after t. Ids grow with created_at (both
// are written by the one writer, in order), so a binary search over the
// primary key finds it in a few dozen lookups, where a condition on
// created_at alone would read every row.
func firstJobAt(ctx context.Context, tx *sql.Tx, t time.Time) (int64, error) {
	var lo, hi int64
	// Two subqueries: SQLite reads MIN or MAX from the index end only when
	// it is a query's one aggregate; both in one would scan the table.
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE((SELECT MIN(id) FROM jobs), 1), COALESCE((SELECT MAX(id) FROM jobs), 0) + 1`).Scan(&lo, &hi); err != nil {
		return 0, err
	}
	at := ms(t)
	// created(x) is the created_at of the first job at or after id x (the
	// end of the table counts as "late enough"); it grows with x. Find the
	// smallest x in [lo, hi] whose created(x) is at or after t.
	for lo < hi {
		mid := lo + (hi-lo)/2
		var created int64
		err := tx.QueryRowContext(ctx, `SELECT created_at FROM jobs WHERE id >= ? ORDER BY id LIMIT 1`, mid).Scan(&created)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		if err != nil || created >= at {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// ListJobs lists the jobs f selects, newest first, without their data,
// result, log, history or events (GetJob has those). It returns ErrInvalid
// for a state that does not exist and ErrNotFound for an unknown platform
// name.
func (db *DB) ListJobs(ctx context.Context, f JobFilter) ([]broker.Job, error) {
	if err := checkJobFilter(f); err != nil {
		return nil, err
	}
	page, err := newListPage(f.Limit, f.BeforeID, DefaultJobListLimit, MaxJobListLimit)
	if err != nil {
		return nil, err
	}
	// A scope of several tags is one walk per tag, merged: one query with
	// "tag IN (...)" would have to sort every matching job to find the
	// newest.
	if f.Tag == "" && len(f.AnyTags) > 1 {
		return db.listJobsPerTag(ctx, f, page.limit)
	}
	if f.Tag == "" && len(f.AnyTags) == 1 {
		f.Tag = f.AnyTags[0]
	}
	out := []broker.Job{}
	err = db.read(ctx, func(tx *sql.Tx) error {
		q, err := buildJobQuery(ctx, tx, f)
		if err != nil {
			return err
		}
		order := " DESC"
		switch {
		case f.BeforeID != 0:
			q.and(q.idCol+" < ?", f.BeforeID)
		case f.AfterID != 0:
			q.and(q.idCol+" > ?", f.AfterID)
			order = ""
		}
		stmt := q.sql(jobSelect) + ` ORDER BY ` + q.idCol + order + ` LIMIT ?`
		out, err = queryAll(ctx, tx, out, scanJob, stmt, append(q.args, page.limit)...)
		return err
	})
	if err != nil {
		return nil, withContext(err, "list jobs")
	}
	if f.AfterID != 0 {
		slices.Reverse(out)
	}
	return out, nil
}

// listJobsPerTag lists the jobs of f that carry any of f.AnyTags: the
// newest limit of each tag's own walk, merged newest first without
// duplicates.
func (db *DB) listJobsPerTag(ctx context.Context, f JobFilter, limit int) ([]broker.Job, error) {
	seen := make(map[int64]bool)
	var all []broker.Job
	for _, tag := range f.AnyTags {
		g := f
		g.Tag, g.AnyTags, g.Limit = tag, nil, limit
		jobs, err := db.ListJobs(ctx, g)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			if !seen[j.ID] {
				seen[j.ID] = true
				all = append(all, j)
			}
		}
	}
	slices.SortFunc(all, func(a, b broker.Job) int { return cmp.Compare(b.ID, a.ID) })
	if len(all) > limit {
		if f.AfterID != 0 {
			all = all[len(all)-limit:]
		} else {
			all = all[:limit]
		}
	}
	return all, nil
}

// CountJobs counts the jobs f selects (its paging fields are ignored), up to
// limit: a larger count is returned as limit, so that a count over a
// million rows stays bounded. It also returns the largest matching id seen,
// for a bulk action's JobFilter.MaxID.
func (db *DB) CountJobs(ctx context.Context, f JobFilter, limit int) (count int, maxID int64, err error) {
	f.BeforeID, f.AfterID = 0, 0
	if err := checkJobFilter(f); err != nil {
		return 0, 0, err
	}
	if limit <= 0 {
		return 0, 0, fmt.Errorf("%w: a count's limit must be positive", broker.ErrInvalid)
	}
	err = db.read(ctx, func(tx *sql.Tx) error {
		q, err := buildJobQuery(ctx, tx, f)
		if err != nil {
			return err
		}
		stmt := `SELECT COUNT(*), COALESCE(MAX(id), 0) FROM (` + q.sql(q.idCol+` AS id`) + ` LIMIT ?)`
		return tx.QueryRowContext(ctx, stmt, append(q.args, limit)...).Scan(&count, &maxID)
	})
	if err != nil {
		return 0, 0, withContext(err, "count jobs")
	}
	return count, maxID, nil
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
	if err == nil {
		return nil
	}
	for _, domain := range []error{broker.ErrNotFound, broker.ErrInvalid, broker.ErrUnavailable, broker.ErrFailedPrecondition} {
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
		end_kind, reason, cpu_time_us, peak_memory_bytes, wall_time_us, run_limit
		FROM leases WHERE job_id = ? ORDER BY number, id`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []broker.Attempt{}
	for rows.Next() {
		var a broker.Attempt
		var assigned, deadline int64
		var ended, cpu, peak, wall sql.NullInt64
		if err := rows.Scan(&a.LeaseID, &a.Number, &a.Server, &assigned, &deadline, &ended, &a.End, &a.Reason,
			&cpu, &peak, &wall, &a.Limit); err != nil {
			return nil, err
		}
		a.AssignedAt, a.Deadline, a.EndedAt = fromMS(assigned), fromMS(deadline), nullMS(ended)
		a.Usage = usageOf(cpu, peak, wall)
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
