package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gradebroker/gradebroker/broker"
)

// --- operators ---

// AddOperator registers an operator. It returns ErrConflict when the name or
// certificate is already registered.
func (db *DB) AddOperator(ctx context.Context, name string, cert broker.CertIdentity) (broker.Operator, error) {
	if err := broker.CheckName("operator", name); err != nil {
		return broker.Operator{}, err
	}
	now := db.now()
	var op broker.Operator
	err := db.write(ctx, func(tx *sql.Tx) error {
		if err := checkIdentityFree(ctx, tx, cert); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO operators
			(name, cert_serial, cert_issuer, cert_subject, cert_fingerprint, cert_not_after, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`,
			name, cert.Serial, cert.Issuer, cert.Subject, cert.Fingerprint, ms(cert.NotAfter), ms(now))
		if err != nil {
			return conflictName(err, "operator", name)
		}
		id, _ := res.LastInsertId()
		op = broker.Operator{ID: id, Name: name, Cert: cert, CreatedAt: fromMS(ms(now))}
		return nil
	})
	return op, err
}

const operatorColumns = `id, name, cert_serial, cert_issuer, cert_subject, cert_fingerprint,
	cert_not_after, created_at FROM operators`

func scanOperator(row rowScanner) (broker.Operator, error) {
	var o broker.Operator
	var notAfter, created int64
	err := row.Scan(&o.ID, &o.Name, &o.Cert.Serial, &o.Cert.Issuer, &o.Cert.Subject, &o.Cert.Fingerprint, &notAfter, &created)
	o.Cert.Role = "operator"
	o.Cert.NotAfter, o.CreatedAt = fromMS(notAfter), fromMS(created)
	return o, err
}

// ListOperators lists operators by name.
func (db *DB) ListOperators(ctx context.Context) ([]broker.Operator, error) {
	return listAll(ctx, db, scanOperator, `SELECT `+operatorColumns+` ORDER BY name`)
}

// OperatorByFingerprint finds the operator whose certificate has the given
// SHA-256 fingerprint. It returns ErrNotFound when there is none.
func (db *DB) OperatorByFingerprint(ctx context.Context, fingerprint string) (broker.Operator, error) {
	return lookup(ctx, db, scanOperator, "no operator has a certificate with fingerprint "+fingerprint,
		`SELECT `+operatorColumns+` WHERE cert_fingerprint = ?`, fingerprint)
}

// RemoveOperator removes an operator. The last operator cannot be removed
// (ErrFailedPrecondition): nobody could administer the broker after.
func (db *DB) RemoveOperator(ctx context.Context, name string) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM operators`).Scan(&n); err != nil {
			return err
		}
		if err := deleteByName(ctx, tx, "operators", "operator", name); err != nil {
			return err
		}
		if n <= 1 {
			return fmt.Errorf("%w: %q is the last operator; add another before removing it", broker.ErrFailedPrecondition, name)
		}
		return nil
	})
}

// --- tags ---

// AddTag registers a tag.
func (db *DB) AddTag(ctx context.Context, name, description string) (broker.Tag, error) {
	defer db.registryChanged()
	if err := broker.CheckName("tag", name); err != nil {
		return broker.Tag{}, err
	}
	var t broker.Tag
	err := db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO tags (name, description) VALUES (?, ?)`, name, description)
		if err != nil {
			return conflictName(err, "tag", name)
		}
		id, _ := res.LastInsertId()
		t = broker.Tag{ID: id, Name: name, Description: description}
		return nil
	})
	return t, err
}

// ListTags lists tags by name.
func (db *DB) ListTags(ctx context.Context) ([]broker.Tag, error) {
	return listAll(ctx, db, func(row rowScanner) (broker.Tag, error) {
		var t broker.Tag
		err := row.Scan(&t.ID, &t.Name, &t.Description)
		return t, err
	}, `SELECT id, name, description FROM tags ORDER BY name`)
}

// RemoveTag removes a tag. It returns ErrInUse, naming the user, when a
// server type, a platform's force tag or an unfinished job still uses it.
func (db *DB) RemoveTag(ctx context.Context, name string) error {
	defer db.registryChanged()
	return db.write(ctx, func(tx *sql.Tx) error {
		id, err := idByName(ctx, tx, "tags", "tag", name)
		if err != nil {
			return err
		}
		// Each query names one user of the tag, in the words of the error.
		for _, q := range []struct {
			sql string
			arg any
		}{
			{`SELECT 'used by server type ' || st.name FROM server_type_tags stt
				JOIN server_types st ON st.id = stt.type_id WHERE stt.tag_id = ? LIMIT 1`, id},
			{`SELECT 'used by platform ' || name || ' (force tag)' FROM platforms WHERE force_tag_id = ? LIMIT 1`, id},
			{`SELECT 'needed by unfinished job ' || j.id FROM jobs j, json_each(j.tags) t
				WHERE j.state IN (1, 2) AND t.value = ? LIMIT 1`, name},
		} {
			var user string
			err := tx.QueryRowContext(ctx, q.sql, q.arg).Scan(&user)
			if err == nil {
				return fmt.Errorf("%w: tag %q is %s", broker.ErrInUse, name, user)
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM tags WHERE id = ?`, id)
		return err
	})
}

// tagIDs resolves tag names to ids, failing with ErrInvalid naming every
// unknown tag.
func tagIDs(ctx context.Context, tx *sql.Tx, names []string) ([]int64, error) {
	ids := make([]int64, 0, len(names))
	var unknown []string
	for _, n := range names {
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM tags WHERE name = ?`, n).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			unknown = append(unknown, n)
			continue
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("%w: unknown tag(s) %s; add them with 'broker admin tag add' first", broker.ErrInvalid, strings.Join(unknown, ", "))
	}
	return ids, nil
}

// NormalizeTags trims, de-duplicates and sorts tag names, and checks each.
func NormalizeTags(tags []string) ([]string, error) {
	seen := make(map[string]bool, len(tags))
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		t = strings.TrimSpace(t)
		if t == "" || seen[t] {
			continue
		}
		if err := broker.CheckName("tag", t); err != nil {
			return nil, err
		}
		seen[t] = true
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}

// --- server types ---

// AddServerType registers a server type with its tags; every tag must exist.
func (db *DB) AddServerType(ctx context.Context, name string, tags []string) (broker.ServerType, error) {
	defer db.registryChanged()
	if err := broker.CheckName("server type", name); err != nil {
		return broker.ServerType{}, err
	}
	tags, err := NormalizeTags(tags)
	if err != nil {
		return broker.ServerType{}, err
	}
	var st broker.ServerType
	err = db.write(ctx, func(tx *sql.Tx) error {
		ids, err := tagIDs(ctx, tx, tags)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO server_types (name) VALUES (?)`, name)
		if err != nil {
			return conflictName(err, "server type", name)
		}
		typeID, _ := res.LastInsertId()
		if err := addTypeTags(ctx, tx, typeID, ids); err != nil {
			return err
		}
		st = broker.ServerType{ID: typeID, Name: name, Tags: tags}
		return nil
	})
	return st, err
}

// UpdateServerType replaces a type's tags. Jobs already queued keep the
// eligibility computed when they were sent.
func (db *DB) UpdateServerType(ctx context.Context, name string, tags []string) (broker.ServerType, error) {
	defer db.registryChanged()
	tags, err := NormalizeTags(tags)
	if err != nil {
		return broker.ServerType{}, err
	}
	var st broker.ServerType
	err = db.write(ctx, func(tx *sql.Tx) error {
		typeID, err := idByName(ctx, tx, "server_types", "server type", name)
		if err != nil {
			return err
		}
		ids, err := tagIDs(ctx, tx, tags)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM server_type_tags WHERE type_id = ?`, typeID); err != nil {
			return err
		}
		if err := addTypeTags(ctx, tx, typeID, ids); err != nil {
			return err
		}
		st = broker.ServerType{ID: typeID, Name: name, Tags: tags}
		return checkQueuesCovered(ctx, tx, st)
	})
	return st, err
}

// ListServerTypes lists server types by name, each with its sorted tags.
func (db *DB) ListServerTypes(ctx context.Context) ([]broker.ServerType, error) {
	var out []broker.ServerType
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = listServerTypes(ctx, tx)
		return err
	})
	return out, err
}

func listServerTypes(ctx context.Context, tx *sql.Tx) ([]broker.ServerType, error) {
	rows, err := tx.QueryContext(ctx, `SELECT st.id, st.name, t.name FROM server_types st
		LEFT JOIN server_type_tags stt ON stt.type_id = st.id
		LEFT JOIN tags t ON t.id = stt.tag_id ORDER BY st.name, t.name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []broker.ServerType
	for rows.Next() {
		var id int64
		var name string
		var tag sql.NullString
		if err := rows.Scan(&id, &name, &tag); err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].ID != id {
			out = append(out, broker.ServerType{ID: id, Name: name, Tags: []string{}})
		}
		if tag.Valid {
			out[len(out)-1].Tags = append(out[len(out)-1].Tags, tag.String)
		}
	}
	return out, rows.Err()
}

// RemoveServerType removes a type no server uses.
func (db *DB) RemoveServerType(ctx context.Context, name string) error {
	defer db.registryChanged()
	return db.write(ctx, func(tx *sql.Tx) error {
		var server string
		err := tx.QueryRowContext(ctx, `SELECT s.name FROM servers s JOIN server_types st ON st.id = s.type_id
			WHERE st.name = ? LIMIT 1`, name).Scan(&server)
		if err == nil {
			return fmt.Errorf("%w: server type %q is the type of server %q", broker.ErrInUse, name, server)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var queue string
		err = tx.QueryRowContext(ctx, `SELECT q.name FROM xqueue_queues q JOIN server_types st ON st.id = q.type_id
			WHERE st.name = ? LIMIT 1`, name).Scan(&queue)
		if err == nil {
			return fmt.Errorf("%w: server type %q is the type of XQueue queue %q's pulling clients", broker.ErrInUse, name, queue)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		return deleteByName(ctx, tx, "server_types", "server type", name)
	})
}

// --- platforms ---

// PlatformUpdate lists the fields UpdatePlatform changes; nil leaves one alone.
type PlatformUpdate struct {
	Protocol      *broker.Protocol
	PublicKeyPEM  *string
	ReturnURL     *string
	RestrictPaths *[]string
	ForceTag      *string
	// Cert replaces the certificate; a pointer to nil removes it.
	Cert **broker.CertIdentity
	// LegacyTokens allows or refuses graderqueue's legacy tokens.
	LegacyTokens *bool
}

// AddPlatform registers a platform. The caller has validated the protocol,
// key and URL; an empty protocol is gradebroker's own.
func (db *DB) AddPlatform(ctx context.Context, p broker.Platform) (broker.Platform, error) {
	defer db.registryChanged()
	if err := broker.CheckName("platform", p.Name); err != nil {
		return broker.Platform{}, err
	}
	if p.Protocol == "" {
		p.Protocol = broker.ProtocolGradebroker
	}
	now := db.now()
	err := db.write(ctx, func(tx *sql.Tx) error {
		forceTag, err := optionalTagID(ctx, tx, p.ForceTag)
		if err != nil {
			return err
		}
		if p.Cert != nil {
			if err := checkIdentityFree(ctx, tx, *p.Cert); err != nil {
				return err
			}
		}
		paths, _ := json.Marshal(nonNil(p.RestrictPaths))
		c := certColumns(p.Cert)
		res, err := tx.ExecContext(ctx, `INSERT INTO platforms (name, protocol, public_key_pem, return_url, restrict_paths,
			force_tag_id, cert_serial, cert_issuer, cert_subject, cert_fingerprint, cert_not_after, created_at, legacy_tokens)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			p.Name, string(p.Protocol), p.PublicKeyPEM, p.ReturnURL, string(paths), forceTag, c[0], c[1], c[2], c[3], c[4], ms(now), p.LegacyTokens)
		if err != nil {
			return conflictName(err, "platform", p.Name)
		}
		p.ID, _ = res.LastInsertId()
		return nil
	})
	db.callbacks.Delete(p.ID)
	if err != nil {
		return broker.Platform{}, err
	}
	return db.PlatformByName(ctx, p.Name)
}

// UpdatePlatform changes the fields u sets.
func (db *DB) UpdatePlatform(ctx context.Context, name string, u PlatformUpdate) (broker.Platform, error) {
	defer db.registryChanged()
	err := db.write(ctx, func(tx *sql.Tx) error {
		id, err := idByName(ctx, tx, "platforms", "platform", name)
		if err != nil {
			return err
		}
		if u.Protocol != nil {
			if err := setColumns(ctx, tx, "platforms", id, `protocol = ?`, string(*u.Protocol)); err != nil {
				return err
			}
			defer db.callbacks.Delete(id)
		}
		if u.PublicKeyPEM != nil {
			if err := setColumns(ctx, tx, "platforms", id, `public_key_pem = ?`, *u.PublicKeyPEM); err != nil {
				return err
			}
		}
		if u.ReturnURL != nil {
			if err := setColumns(ctx, tx, "platforms", id, `return_url = ?`, *u.ReturnURL); err != nil {
				return err
			}
			defer db.callbacks.Delete(id)
		}
		if u.RestrictPaths != nil {
			paths, _ := json.Marshal(nonNil(*u.RestrictPaths))
			if err := setColumns(ctx, tx, "platforms", id, `restrict_paths = ?`, string(paths)); err != nil {
				return err
			}
		}
		if u.ForceTag != nil {
			tagID, err := optionalTagID(ctx, tx, *u.ForceTag)
			if err != nil {
				return err
			}
			if err := setColumns(ctx, tx, "platforms", id, `force_tag_id = ?`, tagID); err != nil {
				return err
			}
		}
		if u.Cert != nil {
			if *u.Cert != nil {
				if err := checkIdentityFree(ctx, tx, **u.Cert, "platforms", id); err != nil {
					return err
				}
			}
			if err := setColumns(ctx, tx, "platforms", id, certAssignments, certColumns(*u.Cert)...); err != nil {
				return err
			}
		}
		if u.LegacyTokens != nil {
			if err := setColumns(ctx, tx, "platforms", id, `legacy_tokens = ?`, *u.LegacyTokens); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return broker.Platform{}, err
	}
	return db.PlatformByName(ctx, name)
}

const platformColumns = `p.id, p.name, p.protocol, p.public_key_pem, p.return_url, p.restrict_paths, COALESCE(t.name, ''),
	p.cert_serial, p.cert_issuer, p.cert_subject, p.cert_fingerprint, p.cert_not_after, p.created_at, p.legacy_tokens
	FROM platforms p LEFT JOIN tags t ON t.id = p.force_tag_id`

func scanPlatform(row rowScanner) (broker.Platform, error) {
	var p broker.Platform
	var paths string
	var serial, issuer, subject, fp sql.NullString
	var notAfter sql.NullInt64
	var created int64
	if err := row.Scan(&p.ID, &p.Name, &p.Protocol, &p.PublicKeyPEM, &p.ReturnURL, &paths, &p.ForceTag,
		&serial, &issuer, &subject, &fp, &notAfter, &created, &p.LegacyTokens); err != nil {
		return p, err
	}
	if err := json.Unmarshal([]byte(paths), &p.RestrictPaths); err != nil {
		return p, fmt.Errorf("platform %s: restrict_paths: %w", p.Name, err)
	}
	if fp.Valid {
		p.Cert = &broker.CertIdentity{Serial: serial.String, Issuer: issuer.String, Subject: subject.String,
			Fingerprint: fp.String, Role: "platform", NotAfter: nullMS(notAfter)}
	}
	p.CreatedAt = fromMS(created)
	return p, nil
}

// PlatformByName returns a platform, or ErrNotFound.
func (db *DB) PlatformByName(ctx context.Context, name string) (broker.Platform, error) {
	return lookup(ctx, db, scanPlatform, fmt.Sprintf("platform %q", name), `SELECT `+platformColumns+` WHERE p.name = ?`, name)
}

// ListPlatforms lists platforms by name.
func (db *DB) ListPlatforms(ctx context.Context) ([]broker.Platform, error) {
	return listAll(ctx, db, scanPlatform, `SELECT `+platformColumns+` ORDER BY p.name`)
}

// RemovePlatform removes a platform and its finished jobs. It returns
// ErrInUse while the platform has unfinished jobs.
func (db *DB) RemovePlatform(ctx context.Context, name string) error {
	defer db.registryChanged()
	return db.write(ctx, func(tx *sql.Tx) error {
		id, err := idByName(ctx, tx, "platforms", "platform", name)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM jobs WHERE platform_id = ? AND state IN (1, 2)`, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: platform %q has %d unfinished job(s); cancel them first", broker.ErrInUse, name, n)
		}
		var user string
		err = tx.QueryRowContext(ctx, `SELECT name FROM xqueue_users WHERE platform_id = ? LIMIT 1`, id).Scan(&user)
		if err == nil {
			return fmt.Errorf("%w: platform %q is the platform of XQueue user %q; remove the user or give it another platform first", broker.ErrInUse, name, user)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM platforms WHERE id = ?`, id)
		defer db.callbacks.Delete(id)
		return err
	})
}

// --- servers ---

// ServerUpdate lists the fields UpdateServer changes; nil leaves one alone.
type ServerUpdate struct {
	Cert              *broker.CertIdentity
	Type              *string
	MaxConcurrentJobs *int
	WakeupURL         *string
}

// AddServer registers a grading server. It returns ErrConflict when the name
// or the certificate is already registered, and ErrInvalid for an unknown type.
func (db *DB) AddServer(ctx context.Context, s broker.Server) (broker.Server, error) {
	if err := broker.CheckName("server", s.Name); err != nil {
		return broker.Server{}, err
	}
	if s.MaxConcurrentJobs <= 0 {
		s.MaxConcurrentJobs = 1
	}
	now := db.now()
	err := db.write(ctx, func(tx *sql.Tx) error {
		typeID, err := typeIDByName(ctx, tx, s.Type)
		if err != nil {
			return err
		}
		if err := checkIdentityFree(ctx, tx, s.Cert); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO servers (name, cert_serial, cert_issuer, cert_subject,
			cert_fingerprint, cert_not_after, type_id, max_concurrent_jobs, wakeup_url, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			s.Name, s.Cert.Serial, s.Cert.Issuer, s.Cert.Subject, s.Cert.Fingerprint, ms(s.Cert.NotAfter),
			typeID, s.MaxConcurrentJobs, s.WakeupURL, ms(now))
		return conflictName(err, "server", s.Name)
	})
	if err != nil {
		return broker.Server{}, err
	}
	return db.ServerByName(ctx, s.Name)
}

// UpdateServer changes the fields u sets.
func (db *DB) UpdateServer(ctx context.Context, name string, u ServerUpdate) (broker.Server, error) {
	err := db.write(ctx, func(tx *sql.Tx) error {
		id, err := idByName(ctx, tx, "servers", "server", name)
		if err != nil {
			return err
		}
		if u.Type != nil {
			typeID, err := typeIDByName(ctx, tx, *u.Type)
			if err != nil {
				return err
			}
			if err := setColumns(ctx, tx, "servers", id, `type_id = ?`, typeID); err != nil {
				return err
			}
		}
		if u.MaxConcurrentJobs != nil {
			if *u.MaxConcurrentJobs <= 0 {
				return fmt.Errorf("%w: max_concurrent_jobs must be at least 1", broker.ErrInvalid)
			}
			if err := setColumns(ctx, tx, "servers", id, `max_concurrent_jobs = ?`, *u.MaxConcurrentJobs); err != nil {
				return err
			}
		}
		if u.WakeupURL != nil {
			if err := setColumns(ctx, tx, "servers", id, `wakeup_url = ?`, *u.WakeupURL); err != nil {
				return err
			}
		}
		if u.Cert != nil {
			var pull string
			if err := tx.QueryRowContext(ctx, `SELECT pull FROM servers WHERE id = ?`, id).Scan(&pull); err != nil {
				return err
			}
			if pull != "" {
				return fmt.Errorf("%w: server %q is a client that pulls its jobs (%s), which has no certificate", broker.ErrInvalid, name, pull)
			}
			if err := checkIdentityFree(ctx, tx, *u.Cert, "servers", id); err != nil {
				return err
			}
			if err := setColumns(ctx, tx, "servers", id, certAssignments, certColumns(u.Cert)...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return broker.Server{}, err
	}
	return db.ServerByName(ctx, name)
}

const serverColumns = `s.id, s.name, s.cert_serial, s.cert_issuer, s.cert_subject, s.cert_fingerprint,
	s.cert_not_after, st.name, s.type_id, s.max_concurrent_jobs, s.wakeup_url, s.wakeup_fails, s.last_seen,
	s.created_at, s.pull FROM servers s JOIN server_types st ON st.id = s.type_id`

func scanServer(row rowScanner) (broker.Server, error) {
	var s broker.Server
	var notAfter, lastSeen, created int64
	err := row.Scan(&s.ID, &s.Name, &s.Cert.Serial, &s.Cert.Issuer, &s.Cert.Subject, &s.Cert.Fingerprint,
		&notAfter, &s.Type, &s.TypeID, &s.MaxConcurrentJobs, &s.WakeupURL, &s.WakeupFails, &lastSeen, &created, &s.Pull)
	s.Cert.Role = "server"
	s.Cert.NotAfter, s.LastSeen, s.CreatedAt = fromMS(notAfter), fromMS(lastSeen), fromMS(created)
	return s, err
}

// ServerByName returns a server, or ErrNotFound.
func (db *DB) ServerByName(ctx context.Context, name string) (broker.Server, error) {
	return lookup(ctx, db, scanServer, fmt.Sprintf("server %q", name), `SELECT `+serverColumns+` WHERE s.name = ?`, name)
}

// ServerByFingerprint returns the server whose certificate has the given
// SHA-256 fingerprint, or ErrNotFound.
func (db *DB) ServerByFingerprint(ctx context.Context, fingerprint string) (broker.Server, error) {
	return lookup(ctx, db, scanServer, "no server has a certificate with fingerprint "+fingerprint,
		`SELECT `+serverColumns+` WHERE s.cert_fingerprint = ?`, fingerprint)
}

// ListServers lists servers by name.
func (db *DB) ListServers(ctx context.Context) ([]broker.Server, error) {
	return listAll(ctx, db, scanServer, `SELECT `+serverColumns+` ORDER BY s.name`)
}

// RemoveServer removes a server. Its open leases must have been ended by the
// caller (dispatch requeues them); the lease rows keep its name.
func (db *DB) RemoveServer(ctx context.Context, name string) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		return deleteByName(ctx, tx, "servers", "server", name)
	})
}

// --- helpers ---

// lookup reads the one row q selects, with scan. No row is ErrNotFound
// followed by notFound, which says what was looked for.
func lookup[T any](ctx context.Context, db *DB, scan func(rowScanner) (T, error), notFound, q string, args ...any) (T, error) {
	var v T
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		v, err = scan(tx.QueryRowContext(ctx, q, args...))
		return err
	})
	if errors.Is(err, broker.ErrNotFound) {
		return v, fmt.Errorf("%w: %s", broker.ErrNotFound, notFound)
	}
	return v, err
}

// listAll reads every row q selects, with scan, in one read transaction.
func listAll[T any](ctx context.Context, db *DB, scan func(rowScanner) (T, error), q string, args ...any) ([]T, error) {
	var out []T
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = queryAll(ctx, tx, out, scan, q, args...)
		return err
	})
	return out, err
}

// idByName returns the id of the row of table named name; what names the
// thing for the ErrNotFound message ("server type").
func idByName(ctx context.Context, tx *sql.Tx, table, what, name string) (int64, error) {
	var id int64
	err := tx.QueryRowContext(ctx, `SELECT id FROM `+table+` WHERE name = ?`, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: %s %q", broker.ErrNotFound, what, name)
	}
	return id, err
}

// deleteByName deletes the row of table named name, or says that there is
// none (ErrNotFound, what naming the thing).
func deleteByName(ctx context.Context, tx *sql.Tx, table, what, name string) error {
	res, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s %q", broker.ErrNotFound, what, name)
	}
	return nil
}

// setColumns runs UPDATE table SET assignments WHERE id = id. table and
// assignments are constants of this package, never input.
func setColumns(ctx context.Context, tx *sql.Tx, table string, id int64, assignments string, args ...any) error {
	_, err := tx.ExecContext(ctx, `UPDATE `+table+` SET `+assignments+` WHERE id = ?`, append(args, id)...)
	return err
}

// addTypeTags gives server type typeID the tags tagIDs.
func addTypeTags(ctx context.Context, tx *sql.Tx, typeID int64, tagIDs []int64) error {
	for _, id := range tagIDs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO server_type_tags (type_id, tag_id) VALUES (?, ?)`, typeID, id); err != nil {
			return err
		}
	}
	return nil
}

func typeIDByName(ctx context.Context, tx *sql.Tx, name string) (int64, error) {
	var id int64
	err := tx.QueryRowContext(ctx, `SELECT id FROM server_types WHERE name = ?`, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: unknown server type %q; add it with 'broker admin type add' first", broker.ErrInvalid, name)
	}
	return id, err
}

func optionalTagID(ctx context.Context, tx *sql.Tx, name string) (sql.NullInt64, error) {
	if name == "" {
		return sql.NullInt64{}, nil
	}
	ids, err := tagIDs(ctx, tx, []string{name})
	if err != nil {
		return sql.NullInt64{}, err
	}
	return sql.NullInt64{Int64: ids[0], Valid: true}, nil
}

// checkIdentityFree refuses a certificate already registered to anyone (an
// operator, a server or a platform), so that one certificate never has two
// roles. except names a table and row allowed to hold it (an update of the
// same thing).
func checkIdentityFree(ctx context.Context, tx *sql.Tx, c broker.CertIdentity, except ...any) error {
	if c.Fingerprint == "" {
		return fmt.Errorf("%w: certificate identity is empty", broker.ErrInvalid)
	}
	for _, table := range []string{"operators", "servers", "platforms"} {
		var name string
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id, name FROM `+table+` WHERE cert_fingerprint = ?
			OR (cert_serial = ? AND cert_issuer = ?)`, c.Fingerprint, c.Serial, c.Issuer).Scan(&id, &name)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return err
		}
		if len(except) == 2 && except[0] == table && except[1] == id {
			continue
		}
		return fmt.Errorf("%w: certificate (serial %s) is already registered to %s %q",
			broker.ErrConflict, c.Serial, strings.TrimSuffix(table, "s"), name)
	}
	return nil
}

// certAssignments sets a row's certificate columns to certColumns' values.
const certAssignments = `cert_serial = ?, cert_issuer = ?, cert_subject = ?, cert_fingerprint = ?, cert_not_after = ?`

// certColumns are the values of a row's certificate columns, in the order of
// certAssignments; nil clears them.
func certColumns(c *broker.CertIdentity) []any {
	if c == nil {
		return []any{nil, nil, nil, nil, nil}
	}
	return []any{c.Serial, c.Issuer, c.Subject, c.Fingerprint, ms(c.NotAfter)}
}

// conflictName rewords a unique violation on a name.
func conflictName(err error, what, name string) error {
	if err == nil {
		return nil
	}
	if errors.Is(translate(err), broker.ErrConflict) {
		return fmt.Errorf("%w: %s %q is already registered", broker.ErrConflict, what, name)
	}
	return err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// RegistryVersion changes whenever a tag, server type or platform is added,
// changed or removed, so that callers may cache them and reload only then.
func (db *DB) RegistryVersion() int64 { return db.registryVersion.Load() }

func (db *DB) registryChanged() { db.registryVersion.Add(1) }
