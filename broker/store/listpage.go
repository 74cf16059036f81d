package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/gradebroker/gradebroker/broker"
)

// listPage builds the query of one page of a newest-first list: conditions
// joined by AND, rows below an id, at most a bounded number of them.
type listPage struct {
	where []string
	args  []any
	limit int
}

// newListPage checks and bounds a list's limit (0: def, above max: max) and
// its before id.
func newListPage(limit int, beforeID int64, def, max int) (*listPage, error) {
	if limit < 0 || beforeID < 0 {
		return nil, fmt.Errorf("%w: limit and before id must not be negative", broker.ErrInvalid)
	}
	switch {
	case limit == 0:
		limit = def
	case limit > max:
		limit = max
	}
	return &listPage{limit: limit}, nil
}

// and adds a condition with its one argument.
func (p *listPage) and(cond string, arg any) {
	p.where = append(p.where, cond)
	p.args = append(p.args, arg)
}

// query returns base with the conditions, rows whose idCol is below
// beforeID (when set), newest first, and the page's arguments.
func (p *listPage) query(base, idCol string, beforeID int64) (string, []any) {
	if beforeID != 0 {
		p.and(idCol+" < ?", beforeID)
	}
	q := base
	if len(p.where) > 0 {
		q += ` WHERE ` + strings.Join(p.where, " AND ")
	}
	q += ` ORDER BY ` + idCol + ` DESC LIMIT ?`
	return q, append(p.args, p.limit)
}

// rowScanner is a *sql.Row or *sql.Rows.
type rowScanner interface{ Scan(...any) error }

// queryAll runs q in tx and appends every row, read by scan, to out.
func queryAll[T any](ctx context.Context, tx *sql.Tx, out []T, scan func(rowScanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return out, err
	}
	defer rows.Close()
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
