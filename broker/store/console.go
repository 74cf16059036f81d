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

// ConsoleSession is one web console session: who it is for, what it may
// see, and how long it lasts. The secret that the browser's cookie holds is
// not part of it; only the secret's hash is stored.
type ConsoleSession struct {
	ID   int64
	Name string
	// Role is "operator" or "viewer".
	Role string
	// Platform and Tags are a viewer's scope (at most one of them is set).
	Platform string
	Tags     []string
	// Via is how the session was opened: "link" or "certificate".
	Via       string
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time
	LastSeen  time.Time
	// RevokedAt is when an operator revoked it; zero while it is not.
	RevokedAt time.Time
}

// LoginUse is the login link a new session uses up: its id, recorded until
// it expires so that the link opens no second session.
type LoginUse struct {
	JTI     string
	Expires time.Time
}

// ErrLoginUsed is returned by CreateConsoleSession for a login link that
// already opened a session. It wraps broker.ErrFailedPrecondition.
var ErrLoginUsed = fmt.Errorf("%w: this login link was already used; ask an operator for a new one ('broker admin console-login')", broker.ErrFailedPrecondition)

const consoleSessionColumns = `id, name, role, platform, tags, via, created_by, created_at, expires_at, last_seen_at, revoked_at`

func scanConsoleSession(row rowScanner) (ConsoleSession, error) {
	var s ConsoleSession
	var tags string
	var created, expires, seen int64
	var revoked sql.NullInt64
	if err := row.Scan(&s.ID, &s.Name, &s.Role, &s.Platform, &tags, &s.Via, &s.CreatedBy, &created, &expires, &seen, &revoked); err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(tags), &s.Tags); err != nil {
		return s, fmt.Errorf("console session %d: tags: %w", s.ID, err)
	}
	s.CreatedAt, s.ExpiresAt, s.LastSeen, s.RevokedAt = fromMS(created), fromMS(expires), fromMS(seen), nullMS(revoked)
	return s, nil
}

// CreateConsoleSession stores a new session under the hash of its secret.
// When login is set, the link's id is recorded in the same transaction: a
// link already used fails with ErrLoginUsed and stores nothing. Sessions
// and login ids that expired are deleted on the way, so neither table
// grows.
func (db *DB) CreateConsoleSession(ctx context.Context, s ConsoleSession, secretHash []byte, login *LoginUse) (ConsoleSession, error) {
	if s.Role != "operator" && s.Role != "viewer" {
		return ConsoleSession{}, fmt.Errorf("%w: console role %q is not operator or viewer", broker.ErrInvalid, s.Role)
	}
	tags, _ := json.Marshal(nonNil(s.Tags))
	now := ms(db.now())
	err := db.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM console_logins WHERE expires_at < ?`, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE expires_at < ?`, now); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO console_sessions (secret_hash, name, role, platform, tags, via,
			created_by, created_at, expires_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			secretHash, s.Name, s.Role, s.Platform, string(tags), s.Via, s.CreatedBy, now, ms(s.ExpiresAt), now)
		if err != nil {
			return err
		}
		s.ID, _ = res.LastInsertId()
		if login == nil {
			return nil
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO console_logins (jti, expires_at, session_id) VALUES (?, ?, ?)`,
			login.JTI, ms(login.Expires), s.ID)
		if errors.Is(translate(err), broker.ErrConflict) {
			return ErrLoginUsed
		}
		return err
	})
	if err != nil {
		return ConsoleSession{}, withContext(err, "create console session")
	}
	s.CreatedAt, s.LastSeen = fromMS(now), fromMS(now)
	return s, nil
}

// ConsoleSessionByHash returns the session whose secret has this hash,
// revoked or expired ones included (the caller decides). It returns
// ErrNotFound when there is none.
func (db *DB) ConsoleSessionByHash(ctx context.Context, secretHash []byte) (ConsoleSession, error) {
	var s ConsoleSession
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		s, err = scanConsoleSession(tx.QueryRowContext(ctx, `SELECT `+consoleSessionColumns+` FROM console_sessions WHERE secret_hash = ?`, secretHash))
		return err
	})
	if errors.Is(err, broker.ErrNotFound) {
		return s, fmt.Errorf("%w: no console session has this cookie", broker.ErrNotFound)
	}
	return s, err
}

// TouchConsoleSession records that a session was used at at.
func (db *DB) TouchConsoleSession(ctx context.Context, id int64, at time.Time) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE console_sessions SET last_seen_at = ? WHERE id = ?`, ms(at), id)
		return err
	})
}

// ListConsoleSessions lists the sessions that have not expired, revoked
// ones included, newest first.
func (db *DB) ListConsoleSessions(ctx context.Context) ([]ConsoleSession, error) {
	out := []ConsoleSession{}
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = queryAll(ctx, tx, out, scanConsoleSession, `SELECT `+consoleSessionColumns+
			` FROM console_sessions WHERE expires_at >= ? ORDER BY id DESC`, ms(db.now()))
		return err
	})
	return out, withContext(err, "list console sessions")
}

// RevokeConsoleSession ends session id at once. It returns ErrNotFound for
// a session that does not exist (or expired and was deleted) and
// ErrFailedPrecondition for one already revoked.
func (db *DB) RevokeConsoleSession(ctx context.Context, id int64) (ConsoleSession, error) {
	var s ConsoleSession
	err := db.write(ctx, func(tx *sql.Tx) error {
		var err error
		s, err = scanConsoleSession(tx.QueryRowContext(ctx, `SELECT `+consoleSessionColumns+` FROM console_sessions WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: console session %d", broker.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if !s.RevokedAt.IsZero() {
			return fmt.Errorf("%w: console session %d was already revoked", broker.ErrFailedPrecondition, id)
		}
		s.RevokedAt = fromMS(ms(db.now()))
		_, err = tx.ExecContext(ctx, `UPDATE console_sessions SET revoked_at = ? WHERE id = ?`, ms(s.RevokedAt), id)
		return err
	})
	return s, withContext(err, "revoke console session")
}
