package store

import (
	"context"
	"database/sql"
)

// UnresolvedDeadDeliveries counts the dead deliveries that still matter: each
// is its job's newest delivery and its job is still final, so its platform
// has no result for that job until an operator redelivers it. Dead rows kept
// as the record of an earlier failure (redelivered since) and superseded
// ones are not counted, which DeliveryCounts' dead count includes.
func (db *DB) UnresolvedDeadDeliveries(ctx context.Context) (int, error) {
	var n int
	err := db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM deliveries d
			JOIN jobs j ON j.id = d.job_id
			WHERE d.state = 3 AND j.state IN (3, 4, 5)
			AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.job_id = d.job_id AND n.id > d.id)`).Scan(&n)
	})
	if err != nil {
		return 0, deliveryErr(err, "count unresolved dead deliveries")
	}
	return n, nil
}
