package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// The page sizes of ListDeliveries.
const (
	// DefaultDeliveryListLimit is how many deliveries ListDeliveries returns
	// when the filter sets no limit.
	DefaultDeliveryListLimit = 50
	// MaxDeliveryListLimit is the most deliveries ListDeliveries returns at
	// once; a larger limit is lowered to it.
	MaxDeliveryListLimit = 1000
)

// Delivery is one result callback from the outbox, with everything the
// delivery worker needs to build and send it: the delivery row itself, the
// job's final state and result as they are now, and where and to whom the
// callback goes.
type Delivery struct {
	ID    int64
	State broker.DeliveryState
	// Tries counts the attempts made so far, successful or not.
	Tries         int
	NextAttemptAt time.Time
	// LastError is the error of the latest failed try; it is kept after a
	// later try succeeds, as a record of what went wrong.
	LastError   string
	CreatedAt   time.Time
	DeliveredAt time.Time

	JobID          int64
	JobName        string
	IdempotencyKey string
	JobState       broker.JobState
	// Result is the grader's JSON result; nil when the job has none.
	// ListDeliveries leaves it nil.
	Result []byte
	// Error says why the job failed or was cancelled.
	Error    string
	Attempts int
	Server   string
	// Usage is what the job's last attempt used, as its server reported it
	// with its result; nil when it reported none (or the job never ran).
	Usage *broker.Usage
	// Limit is the limit that ended the last attempt's run, if one did.
	Limit broker.Limit

	PlatformID int64
	Platform   string
	// Protocol is the platform's protocol, which decides the form of the
	// callback (broker/delivery).
	Protocol  broker.Protocol
	ReturnURL string
	// PublicKeyPEM is the platform's key, to encrypt the callback to.
	// ListDeliveries leaves it empty.
	PublicKeyPEM string

	// Superseded is set when a newer delivery of the same job exists (an
	// operator's redelivery, or a reopened job that became final again):
	// only the newest delivery of a job should be sent.
	Superseded bool
}

// deliveryColumns are the columns every delivery query reads; scanDelivery
// reads them in this order. %s is replaced by the result and key columns,
// which listings leave out because they may be large.
const deliveryColumns = `d.id, d.state, d.tries, d.next_attempt_at, d.last_error, d.created_at, d.delivered_at,
	d.job_id, j.name, COALESCE(j.idempotency_key, ''), j.state, %s,
	COALESCE(NULLIF(j.error, ''), r.error, ''), j.attempts, j.server_name,
	l.cpu_time_us, l.peak_memory_bytes, l.wall_time_us, COALESCE(l.run_limit, ''),
	d.platform_id, p.name, p.protocol, p.return_url,
	EXISTS (SELECT 1 FROM deliveries n WHERE n.job_id = d.job_id AND n.id > d.id)`

// deliveryJoins follow "FROM deliveries d" to reach the job, its result,
// its last attempt (leases_job finds it) and the platform.
const deliveryJoins = ` JOIN jobs j ON j.id = d.job_id JOIN platforms p ON p.id = d.platform_id
	LEFT JOIN results r ON r.job_id = d.job_id
	LEFT JOIN leases l ON l.id = (SELECT MAX(id) FROM leases WHERE job_id = d.job_id)`

var (
	fullDeliveryQuery = `SELECT ` + fmt.Sprintf(deliveryColumns, `r.result, p.public_key_pem`) + ` FROM deliveries d` + deliveryJoins
	listDeliveryQuery = `SELECT ` + fmt.Sprintf(deliveryColumns, `NULL, ''`) + ` FROM deliveries d` + deliveryJoins
)

func scanDelivery(row rowScanner) (Delivery, error) {
	var d Delivery
	var next, created int64
	var delivered, cpu, peak, wall sql.NullInt64
	if err := row.Scan(&d.ID, &d.State, &d.Tries, &next, &d.LastError, &created, &delivered,
		&d.JobID, &d.JobName, &d.IdempotencyKey, &d.JobState, &d.Result, &d.PublicKeyPEM,
		&d.Error, &d.Attempts, &d.Server, &cpu, &peak, &wall, &d.Limit,
		&d.PlatformID, &d.Platform, &d.Protocol, &d.ReturnURL, &d.Superseded); err != nil {
		return d, err
	}
	d.NextAttemptAt, d.CreatedAt, d.DeliveredAt = fromMS(next), fromMS(created), nullMS(delivered)
	d.Usage = usageOf(cpu, peak, wall)
	return d, nil
}

// DueDeliveries returns pending deliveries whose next attempt is due at now,
// most overdue first: at most limit in all, and at most perPlatform of any
// one platform (0 means no such cap). The cap lets the worker fetch work for
// every platform even when one has a large backlog it cannot send quickly.
func (db *DB) DueDeliveries(ctx context.Context, now time.Time, limit, perPlatform int) ([]Delivery, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("%w: limit must be positive", broker.ErrInvalid)
	}
	if perPlatform <= 0 {
		perPlatform = limit
	}
	var out []Delivery
	err := db.read(ctx, func(tx *sql.Tx) error {
		// The window numbers each platform's due deliveries so that the
		// outer query can keep the first perPlatform of each. The inner scan
		// uses the partial index deliveries_due; CROSS JOIN keeps the few
		// due rows as the outer loop, so that the (large) history of
		// delivered rows is never scanned.
		var err error
		out, err = queryAll(ctx, tx, out, scanDelivery, `WITH due AS (
				SELECT id, ROW_NUMBER() OVER (PARTITION BY platform_id ORDER BY next_attempt_at, id) AS rn
				FROM deliveries WHERE state = 1 AND next_attempt_at <= ?)
			SELECT `+fmt.Sprintf(deliveryColumns, `r.result, p.public_key_pem`)+`
			FROM due CROSS JOIN deliveries d ON d.id = due.id`+deliveryJoins+`
			WHERE due.rn <= ? ORDER BY d.next_attempt_at, d.id LIMIT ?`, ms(now), perPlatform, limit)
		return err
	})
	if err != nil {
		return nil, deliveryErr(err, "due deliveries")
	}
	return out, nil
}

// Delivery returns one delivery, in any state, with its result and the
// platform's key. It returns ErrNotFound, naming the delivery, when there is
// no such delivery.
func (db *DB) Delivery(ctx context.Context, id int64) (Delivery, error) {
	var d Delivery
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = scanDelivery(tx.QueryRowContext(ctx, fullDeliveryQuery+` WHERE d.id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: delivery %d", broker.ErrNotFound, id)
		}
		return err
	})
	if err != nil {
		return Delivery{}, deliveryErr(err, fmt.Sprintf("get delivery %d", id))
	}
	return d, nil
}

// markPending runs an UPDATE of one delivery that must still be pending. A
// row that is no longer pending was finished by another try or changed by an
// operator, and must not be overwritten: that is ErrFailedPrecondition,
// naming its state.
func (db *DB) markPending(ctx context.Context, id int64, query string, args ...any) error {
	err := db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return nil
		}
		var state int
		err = tx.QueryRowContext(ctx, `SELECT state FROM deliveries WHERE id = ?`, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: delivery %d", broker.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: delivery %d is %s, not pending", broker.ErrFailedPrecondition, id, deliveryStateName(broker.DeliveryState(state)))
	})
	return deliveryErr(err, fmt.Sprintf("update delivery %d", id))
}

// MarkDelivered records that try number tries of a pending delivery was
// acknowledged at at. It returns ErrFailedPrecondition when the delivery is
// no longer pending and ErrNotFound when it does not exist.
func (db *DB) MarkDelivered(ctx context.Context, id int64, tries int, at time.Time) error {
	return db.markPending(ctx, id, `UPDATE deliveries SET state = 2, tries = ?, delivered_at = ?
		WHERE id = ? AND state = 1`, tries, ms(at), id)
}

// MarkRetry records that try number tries of a pending delivery failed with
// lastErr, and schedules the next one at next. It returns
// ErrFailedPrecondition when the delivery is no longer pending and
// ErrNotFound when it does not exist.
func (db *DB) MarkRetry(ctx context.Context, id int64, tries int, next time.Time, lastErr string) error {
	return db.markPending(ctx, id, `UPDATE deliveries SET tries = ?, next_attempt_at = ?, last_error = ?
		WHERE id = ? AND state = 1`, tries, ms(next), lastErr, id)
}

// MarkDead gives up on a pending delivery after tries tries, the last of
// which failed with lastErr; an operator may Redeliver it. It returns
// ErrFailedPrecondition when the delivery is no longer pending and
// ErrNotFound when it does not exist.
func (db *DB) MarkDead(ctx context.Context, id int64, tries int, lastErr string) error {
	return db.markPending(ctx, id, `UPDATE deliveries SET state = 3, tries = ?, last_error = ?
		WHERE id = ? AND state = 1`, tries, lastErr, id)
}

// DeliveryFilter selects deliveries for ListDeliveries. Every field set
// narrows the result; the zero value lists the newest
// DefaultDeliveryListLimit deliveries.
type DeliveryFilter struct {
	// State keeps deliveries in this state; 0 keeps all.
	State broker.DeliveryState
	// PlatformID keeps one platform's deliveries; 0 keeps all.
	PlatformID int64
	// Platform keeps the deliveries of the platform with this name; ""
	// keeps all. An unknown name is ErrNotFound.
	Platform string
	// JobID keeps one job's deliveries; 0 keeps all.
	JobID int64
	// Limit caps the number of deliveries: 0 means DefaultDeliveryListLimit,
	// and anything above MaxDeliveryListLimit means MaxDeliveryListLimit.
	Limit int
	// BeforeID keeps deliveries with a smaller id, to page backwards; 0
	// starts at the newest.
	BeforeID int64
}

// ListDeliveries lists the deliveries f selects, newest first, without their
// results or the platforms' keys (Delivery has those). It returns ErrInvalid
// for a state that does not exist or a negative limit, and ErrNotFound for an
// unknown platform name.
func (db *DB) ListDeliveries(ctx context.Context, f DeliveryFilter) ([]Delivery, error) {
	if f.State < 0 || f.State > broker.DeliveryDead {
		return nil, fmt.Errorf("%w: delivery state %d does not exist", broker.ErrInvalid, int(f.State))
	}
	page, err := newListPage(f.Limit, f.BeforeID, DefaultDeliveryListLimit, MaxDeliveryListLimit)
	if err != nil {
		return nil, err
	}
	if f.State != 0 {
		page.and("d.state = ?", int(f.State))
	}
	if f.PlatformID != 0 {
		page.and("d.platform_id = ?", f.PlatformID)
	}
	if f.Platform != "" {
		page.and("p.name = ?", f.Platform)
	}
	if f.JobID != 0 {
		page.and("d.job_id = ?", f.JobID)
	}
	q, args := page.query(listDeliveryQuery, "d.id", f.BeforeID)

	out := []Delivery{}
	err = db.read(ctx, func(tx *sql.Tx) error {
		if f.Platform != "" {
			if _, err := platformID(ctx, tx, f.Platform); err != nil {
				return err
			}
		}
		var err error
		out, err = queryAll(ctx, tx, out, scanDelivery, q, args...)
		return err
	})
	if err != nil {
		return nil, deliveryErr(err, "list deliveries")
	}
	return out, nil
}

// Redelivery selects what Redeliver sends again. Exactly one way of
// selecting must be used: IDs, a platform (by id or name), or AllDead.
type Redelivery struct {
	// IDs names deliveries: each must be dead or pending.
	IDs []int64
	// PlatformID selects every dead delivery of one platform.
	PlatformID int64
	// Platform selects every dead delivery of the platform with this name.
	Platform string
	// AllDead selects every dead delivery. It must be set explicitly, so
	// that a forgotten filter does not resend everything.
	AllDead bool
}

// Redeliver sends deliveries again, at once, and returns how many it
// scheduled.
//
// A dead delivery is not revived in place: a new pending delivery of the
// same job is made, with no tries and its own retry window starting now,
// and the dead row stays as the record of what failed. Reviving the old row
// would keep its creation time, so its retry window would already be over
// and the first failure would kill it again. The platform sees a new
// delivery_id, but job_id (and the idempotency key) still identify the
// result. A dead delivery that is not its job's newest, or whose job is no
// longer final (reopened), is skipped: it is superseded. A named pending
// delivery is made due now, keeping its id and tries. A delivered one is
// refused: the platform acknowledged it.
//
// With IDs, nothing is changed unless every id can be redelivered: an
// unknown id is ErrNotFound, a delivered or superseded one
// ErrFailedPrecondition, each naming the delivery. A selection that names
// nothing, or more than one way, is ErrInvalid; an unknown platform name is
// ErrNotFound.
func (db *DB) Redeliver(ctx context.Context, sel Redelivery) (int, error) {
	ways := 0
	if len(sel.IDs) > 0 {
		ways++
	}
	if sel.PlatformID != 0 || sel.Platform != "" {
		ways++
	}
	if sel.AllDead {
		ways++
	}
	if ways != 1 {
		return 0, fmt.Errorf("%w: say which deliveries to redeliver: their ids, a platform, or all dead ones (exactly one)", broker.ErrInvalid)
	}
	now := ms(db.now())
	n := 0
	err := db.write(ctx, func(tx *sql.Tx) error {
		n = 0
		if len(sel.IDs) > 0 {
			// A repeated id would otherwise be refused as superseded by the
			// delivery its first mention just made.
			seen := make(map[int64]bool, len(sel.IDs))
			for _, id := range sel.IDs {
				if seen[id] {
					continue
				}
				seen[id] = true
				k, err := redeliverOne(ctx, tx, id, now)
				if err != nil {
					return err
				}
				n += k
			}
			return nil
		}
		pid := sel.PlatformID
		if sel.Platform != "" {
			id, err := platformID(ctx, tx, sel.Platform)
			if err != nil {
				return err
			}
			if pid != 0 && pid != id {
				return fmt.Errorf("%w: platform id %d is not platform %q", broker.ErrInvalid, pid, sel.Platform)
			}
			pid = id
		}
		q := `INSERT INTO deliveries (job_id, platform_id, state, next_attempt_at, created_at)
			SELECT d.job_id, d.platform_id, 1, ?, ? FROM deliveries d
			JOIN jobs j ON j.id = d.job_id JOIN platforms p ON p.id = d.platform_id
			WHERE d.state = 3 AND j.state IN (3, 4, 5) AND (p.return_url != '' OR p.protocol = 'xqueue')
			AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.job_id = d.job_id AND n.id > d.id)`
		args := []any{now, now}
		if pid != 0 {
			q += ` AND d.platform_id = ?`
			args = append(args, pid)
		}
		res, err := tx.ExecContext(ctx, q+` ORDER BY d.id`, args...)
		if err != nil {
			return err
		}
		k, _ := res.RowsAffected()
		n = int(k)
		return nil
	})
	if err != nil {
		return 0, deliveryErr(err, "redeliver")
	}
	return n, nil
}

// redeliverOne redelivers one named delivery, as Redeliver describes.
func redeliverOne(ctx context.Context, tx *sql.Tx, id, now int64) (int, error) {
	var state, jobState int
	var jobID, newer int64
	var returnURL, protocol string
	err := tx.QueryRowContext(ctx, `SELECT d.state, d.job_id, j.state, p.return_url, p.protocol,
		COALESCE((SELECT MAX(n.id) FROM deliveries n WHERE n.job_id = d.job_id AND n.id > d.id), 0)
		FROM deliveries d JOIN jobs j ON j.id = d.job_id JOIN platforms p ON p.id = d.platform_id
		WHERE d.id = ?`, id).Scan(&state, &jobID, &jobState, &returnURL, &protocol, &newer)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: delivery %d", broker.ErrNotFound, id)
	}
	if err != nil {
		return 0, err
	}
	switch broker.DeliveryState(state) {
	case broker.DeliveryPending:
		_, err := tx.ExecContext(ctx, `UPDATE deliveries SET next_attempt_at = ? WHERE id = ?`, now, id)
		return 1, err
	case broker.DeliveryDelivered:
		return 0, fmt.Errorf("%w: delivery %d of job %d was delivered: the platform acknowledged it", broker.ErrFailedPrecondition, id, jobID)
	}
	switch {
	case newer != 0:
		return 0, fmt.Errorf("%w: delivery %d of job %d is superseded by delivery %d", broker.ErrFailedPrecondition, id, jobID, newer)
	case !broker.JobState(jobState).Final():
		return 0, fmt.Errorf("%w: job %d of delivery %d is %s again; its next final state will be delivered", broker.ErrFailedPrecondition, jobID, id, broker.JobState(jobState))
	case returnURL == "" && broker.Protocol(protocol) != broker.ProtocolXQueue:
		// XQueue's submissions each name where their result goes.
		return 0, fmt.Errorf("%w: the platform of delivery %d has no return_url; set one first", broker.ErrFailedPrecondition, id)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO deliveries (job_id, platform_id, state, next_attempt_at, created_at)
		SELECT job_id, platform_id, 1, ?, ? FROM deliveries WHERE id = ?`, now, now, id)
	return 1, err
}

// DeliveryCounts counts deliveries by state, for metrics. Every state has an
// entry, zero or not.
func (db *DB) DeliveryCounts(ctx context.Context) (map[broker.DeliveryState]int, error) {
	out := map[broker.DeliveryState]int{
		broker.DeliveryPending:   0,
		broker.DeliveryDelivered: 0,
		broker.DeliveryDead:      0,
	}
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT state, COUNT(*) FROM deliveries GROUP BY state`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var state, n int
			if err := rows.Scan(&state, &n); err != nil {
				return err
			}
			out[broker.DeliveryState(state)] = n
		}
		return rows.Err()
	})
	if err != nil {
		return nil, deliveryErr(err, "count deliveries")
	}
	return out, nil
}

// platformID resolves a platform name, saying when it is unknown: more likely
// a typo than a platform without deliveries.
func platformID(ctx context.Context, tx *sql.Tx, name string) (int64, error) {
	id, err := idByName(ctx, tx, "platforms", "platform", name)
	if errors.Is(err, broker.ErrNotFound) {
		return 0, fmt.Errorf("%w; see 'broker admin platform list'", err)
	}
	return id, err
}

// deliveryErr prefixes what failed to an unexpected error, for the log. A
// domain error is left alone: its message already names the delivery, and it
// is what an operator reads.
func deliveryErr(err error, what string) error {
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

func deliveryStateName(s broker.DeliveryState) string {
	switch s {
	case broker.DeliveryPending:
		return "pending"
	case broker.DeliveryDelivered:
		return "delivered"
	case broker.DeliveryDead:
		return "dead"
	}
	return fmt.Sprintf("DeliveryState(%d)", int(s))
}
