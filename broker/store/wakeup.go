package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/gradebroker/gradebroker/broker"
)

// RecordWakeup records the result of waking server name: a failure adds one
// to its wakeup_fails, a success resets it to 0. It returns the new count,
// and ErrNotFound for an unknown server.
func (db *DB) RecordWakeup(ctx context.Context, name string, ok bool) (int, error) {
	var fails int
	err := db.write(ctx, func(tx *sql.Tx) error {
		q := `UPDATE servers SET wakeup_fails = wakeup_fails + 1 WHERE name = ? RETURNING wakeup_fails`
		if ok {
			q = `UPDATE servers SET wakeup_fails = 0 WHERE name = ? RETURNING wakeup_fails`
		}
		return tx.QueryRowContext(ctx, q, name).Scan(&fails)
	})
	if errors.Is(err, broker.ErrNotFound) {
		return 0, fmt.Errorf("%w: server %q", broker.ErrNotFound, name)
	}
	return fails, err
}

// WakeupServers returns the names of the servers that have a wakeup URL, by
// name.
func (db *DB) WakeupServers(ctx context.Context) ([]string, error) {
	var out []string
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT name FROM servers WHERE wakeup_url != '' ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			out = append(out, n)
		}
		return rows.Err()
	})
	return out, err
}
