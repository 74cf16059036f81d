package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// This file is the XQueue adapter's storage (broker/xqueue): its queues and
// users, the servers of its pulling clients, what a submission needs for
// its answer, and the files that come with jobs. Every change to a queue or
// a user counts as a registry change (RegistryVersion), so that the adapter
// may cache them.

// --- XQueue queues ---

// XQueueQueueUpdate lists the fields UpdateXQueueQueue changes; nil leaves
// one alone.
type XQueueQueueUpdate struct {
	Tags    *[]string
	Type    *string
	Timeout *time.Duration
}

// AddXQueueQueue maps an XQueue queue name to the tags of its jobs, the
// server type of its pulling clients, and a timeout. It returns ErrConflict
// for a queue already registered and ErrInvalid for an unknown tag or type,
// or a type that does not cover the tags (its clients could take none of
// the queue's jobs).
func (db *DB) AddXQueueQueue(ctx context.Context, q broker.XQueueQueue) (broker.XQueueQueue, error) {
	defer db.registryChanged()
	if err := broker.CheckName("XQueue queue", q.Name); err != nil {
		return broker.XQueueQueue{}, err
	}
	tags, err := NormalizeTags(q.Tags)
	if err != nil {
		return broker.XQueueQueue{}, err
	}
	err = db.write(ctx, func(tx *sql.Tx) error {
		typeID, err := queueTypeCovers(ctx, tx, q.Type, tags)
		if err != nil {
			return err
		}
		js, _ := json.Marshal(tags)
		_, err = tx.ExecContext(ctx, `INSERT INTO xqueue_queues (name, tags, type_id, timeout_ms, created_at) VALUES (?, ?, ?, ?, ?)`,
			q.Name, string(js), typeID, q.Timeout.Milliseconds(), ms(db.now()))
		return conflictName(err, "XQueue queue", q.Name)
	})
	if err != nil {
		return broker.XQueueQueue{}, err
	}
	return db.XQueueQueueByName(ctx, q.Name)
}

// queueTypeCovers checks that the tags exist and that server type typ
// covers them, and returns the type's id.
func queueTypeCovers(ctx context.Context, tx *sql.Tx, typ string, tags []string) (int64, error) {
	if _, err := tagIDs(ctx, tx, tags); err != nil {
		return 0, err
	}
	typeID, err := typeIDByName(ctx, tx, typ)
	if err != nil {
		return 0, err
	}
	types, err := listServerTypes(ctx, tx)
	if err != nil {
		return 0, err
	}
	for _, t := range types {
		if t.ID == typeID && !t.Covers(tags) {
			return 0, fmt.Errorf("%w: server type %q (tags %s) does not cover the queue's tags [%s]: its pulling clients could take none of its jobs",
				broker.ErrInvalid, typ, strings.Join(t.Tags, ", "), strings.Join(tags, ", "))
		}
	}
	return typeID, nil
}

// checkQueuesCovered refuses a change of server type t's tags that leaves
// an XQueue queue whose pulling clients are of type t with a tag t does not
// have: they could no longer take the queue's jobs.
func checkQueuesCovered(ctx context.Context, tx *sql.Tx, t broker.ServerType) error {
	queues, err := queryAll(ctx, tx, nil, scanXQueueQueue, `SELECT `+xqueueQueueColumns+` WHERE q.type_id = ?`, t.ID)
	if err != nil {
		return err
	}
	for _, q := range queues {
		if !t.Covers(q.Tags) {
			return fmt.Errorf("%w: server type %q is the type of XQueue queue %q's pulling clients, whose jobs have the tags [%s]; it must keep them",
				broker.ErrInUse, t.Name, q.Name, strings.Join(q.Tags, ", "))
		}
	}
	return nil
}

// UpdateXQueueQueue changes the fields u sets. A new type is also given to
// the servers of the queue's pulling clients, whose names it returns for
// the dispatcher. Jobs already queued keep their tags.
func (db *DB) UpdateXQueueQueue(ctx context.Context, name string, u XQueueQueueUpdate) (broker.XQueueQueue, []string, error) {
	defer db.registryChanged()
	var changed []string
	err := db.write(ctx, func(tx *sql.Tx) error {
		cur, err := scanXQueueQueue(tx.QueryRowContext(ctx, `SELECT `+xqueueQueueColumns+` WHERE q.name = ?`, name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: XQueue queue %q", broker.ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		if u.Tags != nil {
			if cur.Tags, err = NormalizeTags(*u.Tags); err != nil {
				return err
			}
		}
		if u.Type != nil {
			cur.Type = *u.Type
		}
		if u.Timeout != nil {
			cur.Timeout = *u.Timeout
		}
		typeID, err := queueTypeCovers(ctx, tx, cur.Type, cur.Tags)
		if err != nil {
			return err
		}
		js, _ := json.Marshal(cur.Tags)
		if err := setColumns(ctx, tx, "xqueue_queues", cur.ID, `tags = ?, type_id = ?, timeout_ms = ?`,
			string(js), typeID, cur.Timeout.Milliseconds()); err != nil {
			return err
		}
		if typeID == cur.TypeID {
			return nil
		}
		changed, err = queryStrings(ctx, tx, `SELECT s.name FROM servers s JOIN xqueue_pullers p ON p.server_id = s.id
			WHERE p.queue = ? ORDER BY s.name`, name)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE servers SET type_id = ? WHERE id IN (SELECT server_id FROM xqueue_pullers WHERE queue = ?)`,
			typeID, name)
		return err
	})
	if err != nil {
		return broker.XQueueQueue{}, nil, err
	}
	q, err := db.XQueueQueueByName(ctx, name)
	return q, changed, err
}

const xqueueQueueColumns = `q.id, q.name, q.tags, st.name, q.type_id, q.timeout_ms, q.created_at
	FROM xqueue_queues q JOIN server_types st ON st.id = q.type_id`

func scanXQueueQueue(row rowScanner) (broker.XQueueQueue, error) {
	var q broker.XQueueQueue
	var tags string
	var timeout, created int64
	if err := row.Scan(&q.ID, &q.Name, &tags, &q.Type, &q.TypeID, &timeout, &created); err != nil {
		return q, err
	}
	if err := json.Unmarshal([]byte(tags), &q.Tags); err != nil {
		return q, fmt.Errorf("XQueue queue %s: tags: %w", q.Name, err)
	}
	q.Timeout, q.CreatedAt = time.Duration(timeout)*time.Millisecond, fromMS(created)
	return q, nil
}

// XQueueQueueByName returns a queue, or ErrNotFound.
func (db *DB) XQueueQueueByName(ctx context.Context, name string) (broker.XQueueQueue, error) {
	return lookup(ctx, db, scanXQueueQueue, fmt.Sprintf("XQueue queue %q", name), `SELECT `+xqueueQueueColumns+` WHERE q.name = ?`, name)
}

// ListXQueueQueues lists the queues by name.
func (db *DB) ListXQueueQueues(ctx context.Context) ([]broker.XQueueQueue, error) {
	return listAll(ctx, db, scanXQueueQueue, `SELECT `+xqueueQueueColumns+` ORDER BY q.name`)
}

// RemoveXQueueQueue removes a queue and the servers of its pulling
// clients, whose names it returns for the dispatcher. It returns ErrInUse
// while the queue has unfinished jobs.
func (db *DB) RemoveXQueueQueue(ctx context.Context, name string) ([]string, error) {
	defer db.registryChanged()
	var removed []string
	err := db.write(ctx, func(tx *sql.Tx) error {
		if _, err := idByName(ctx, tx, "xqueue_queues", "XQueue queue", name); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM jobs WHERE queue = ? AND state IN (1, 2)`, name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: XQueue queue %q has %d unfinished job(s); let them finish or cancel them first", broker.ErrInUse, name, n)
		}
		var err error
		if removed, err = removePullers(ctx, tx, `SELECT server_id FROM xqueue_pullers WHERE queue = ?`, name); err != nil {
			return err
		}
		return deleteByName(ctx, tx, "xqueue_queues", "XQueue queue", name)
	})
	return removed, err
}

// removePullers deletes the servers whose ids the query selects and
// returns their names.
func removePullers(ctx context.Context, tx *sql.Tx, ids string, args ...any) ([]string, error) {
	names, err := queryStrings(ctx, tx, `SELECT name FROM servers WHERE id IN (`+ids+`) ORDER BY name`, args...)
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM servers WHERE id IN (`+ids+`)`, args...)
	return names, err
}

// queryStrings reads one string column.
func queryStrings(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]string, error) {
	return queryAll(ctx, tx, nil, func(row rowScanner) (string, error) {
		var s string
		err := row.Scan(&s)
		return s, err
	}, q, args...)
}

// --- XQueue users ---

// XQueueUserUpdate lists the fields UpdateXQueueUser changes; nil leaves
// one alone.
type XQueueUserUpdate struct {
	PasswordHash *string
	// Platform names the user's new platform; "" takes it away.
	Platform             *string
	CallbackHosts        *[]string
	HTTPCallbackHosts    *[]string
	CallbackAuthUser     *string
	CallbackAuthPassword *string
	PullQueues           *[]string
	MaxJobs              *int
}

// AddXQueueUser registers an XQueue user. The caller has hashed its
// password and checked its hosts. Its platform, if any, must exist and
// speak XQueue's protocol, and its pull queues must exist. It returns
// ErrConflict for a name already registered.
func (db *DB) AddXQueueUser(ctx context.Context, u broker.XQueueUser) (broker.XQueueUser, error) {
	defer db.registryChanged()
	if err := broker.CheckName("XQueue user", u.Name); err != nil {
		return broker.XQueueUser{}, err
	}
	if u.MaxJobs <= 0 {
		u.MaxJobs = 1
	}
	now := ms(db.now())
	err := db.write(ctx, func(tx *sql.Tx) error {
		platform, err := xqueuePlatformID(ctx, tx, u.Platform)
		if err != nil {
			return err
		}
		if err := checkPullQueues(ctx, tx, u.PullQueues); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO xqueue_users (name, password_hash, platform_id, callback_hosts,
			http_callback_hosts, callback_auth_user, callback_auth_password, pull_queues, max_jobs, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			u.Name, u.PasswordHash, platform, jsonList(u.CallbackHosts), jsonList(u.HTTPCallbackHosts),
			u.CallbackAuthUser, u.CallbackAuthPassword, jsonList(u.PullQueues), u.MaxJobs, now, now)
		return conflictName(err, "XQueue user", u.Name)
	})
	if err != nil {
		return broker.XQueueUser{}, err
	}
	return db.XQueueUserByName(ctx, u.Name)
}

// xqueuePlatformID resolves an XQueue user's platform: "" is none; any
// other must exist and speak XQueue's protocol, or its results would go
// where the LMS never sees them.
func xqueuePlatformID(ctx context.Context, tx *sql.Tx, name string) (sql.NullInt64, error) {
	if name == "" {
		return sql.NullInt64{}, nil
	}
	var id int64
	var protocol string
	err := tx.QueryRowContext(ctx, `SELECT id, protocol FROM platforms WHERE name = ?`, name).Scan(&id, &protocol)
	if errors.Is(err, sql.ErrNoRows) {
		return sql.NullInt64{}, fmt.Errorf("%w: unknown platform %q; add it with 'broker admin platform add %s --protocol xqueue' first", broker.ErrInvalid, name, name)
	}
	if err != nil {
		return sql.NullInt64{}, err
	}
	if broker.Protocol(protocol) != broker.ProtocolXQueue {
		return sql.NullInt64{}, fmt.Errorf("%w: platform %q speaks %s, not xqueue: an XQueue user's results go back as XQueue posts them ('broker admin platform update %s --protocol xqueue')",
			broker.ErrInvalid, name, protocol, name)
	}
	return sql.NullInt64{Int64: id, Valid: true}, nil
}

// checkPullQueues refuses a pull queue that is not registered (AnyQueue
// aside).
func checkPullQueues(ctx context.Context, tx *sql.Tx, queues []string) error {
	for _, q := range queues {
		if q == broker.AnyQueue {
			continue
		}
		if _, err := idByName(ctx, tx, "xqueue_queues", "XQueue queue", q); err != nil {
			return fmt.Errorf("%w: pull queue %q is not registered; add it with 'broker admin xqueue queue add' first", broker.ErrInvalid, q)
		}
	}
	return nil
}

func jsonList(s []string) string {
	b, _ := json.Marshal(nonNil(s))
	return string(b)
}

// UpdateXQueueUser changes the fields u sets. When its pull queues change,
// the servers of the queues it may no longer pull are removed: it returns
// their names for the dispatcher.
func (db *DB) UpdateXQueueUser(ctx context.Context, name string, u XQueueUserUpdate) (broker.XQueueUser, []string, error) {
	defer db.registryChanged()
	var removed []string
	err := db.write(ctx, func(tx *sql.Tx) error {
		id, err := idByName(ctx, tx, "xqueue_users", "XQueue user", name)
		if err != nil {
			return err
		}
		var sets []string
		var args []any
		set := func(col string, v any) {
			sets = append(sets, col+" = ?")
			args = append(args, v)
		}
		if u.PasswordHash != nil {
			set("password_hash", *u.PasswordHash)
		}
		if u.Platform != nil {
			platform, err := xqueuePlatformID(ctx, tx, *u.Platform)
			if err != nil {
				return err
			}
			set("platform_id", platform)
		}
		if u.CallbackHosts != nil {
			set("callback_hosts", jsonList(*u.CallbackHosts))
		}
		if u.HTTPCallbackHosts != nil {
			set("http_callback_hosts", jsonList(*u.HTTPCallbackHosts))
		}
		if u.CallbackAuthUser != nil {
			set("callback_auth_user", *u.CallbackAuthUser)
		}
		if u.CallbackAuthPassword != nil {
			set("callback_auth_password", *u.CallbackAuthPassword)
		}
		if u.MaxJobs != nil {
			if *u.MaxJobs <= 0 {
				return fmt.Errorf("%w: max jobs must be at least 1", broker.ErrInvalid)
			}
			set("max_jobs", *u.MaxJobs)
		}
		if u.PullQueues != nil {
			if err := checkPullQueues(ctx, tx, *u.PullQueues); err != nil {
				return err
			}
			set("pull_queues", jsonList(*u.PullQueues))
			if !slices.Contains(*u.PullQueues, broker.AnyQueue) {
				js := jsonList(*u.PullQueues)
				removed, err = removePullers(ctx, tx, `SELECT server_id FROM xqueue_pullers WHERE user_id = ?
					AND queue NOT IN (SELECT value FROM json_each(?))`, id, js)
				if err != nil {
					return err
				}
			}
		}
		set("updated_at", ms(db.now()))
		return setColumns(ctx, tx, "xqueue_users", id, strings.Join(sets, ", "), args...)
	})
	if err != nil {
		return broker.XQueueUser{}, nil, err
	}
	user, err := db.XQueueUserByName(ctx, name)
	return user, removed, err
}

const xqueueUserColumns = `u.id, u.name, u.password_hash, COALESCE(p.name, ''), COALESCE(u.platform_id, 0), u.callback_hosts,
	u.http_callback_hosts, u.callback_auth_user, u.callback_auth_password, u.pull_queues, u.max_jobs, u.created_at, u.updated_at
	FROM xqueue_users u LEFT JOIN platforms p ON p.id = u.platform_id`

func scanXQueueUser(row rowScanner) (broker.XQueueUser, error) {
	var u broker.XQueueUser
	var hosts, httpHosts, queues string
	var created, updated int64
	if err := row.Scan(&u.ID, &u.Name, &u.PasswordHash, &u.Platform, &u.PlatformID, &hosts, &httpHosts,
		&u.CallbackAuthUser, &u.CallbackAuthPassword, &queues, &u.MaxJobs, &created, &updated); err != nil {
		return u, err
	}
	for _, l := range []struct {
		js  string
		out *[]string
	}{{hosts, &u.CallbackHosts}, {httpHosts, &u.HTTPCallbackHosts}, {queues, &u.PullQueues}} {
		if err := json.Unmarshal([]byte(l.js), l.out); err != nil {
			return u, fmt.Errorf("XQueue user %s: %w", u.Name, err)
		}
	}
	u.CreatedAt, u.UpdatedAt = fromMS(created), fromMS(updated)
	return u, nil
}

// XQueueUserByName returns a user, password hash included, or ErrNotFound.
func (db *DB) XQueueUserByName(ctx context.Context, name string) (broker.XQueueUser, error) {
	return lookup(ctx, db, scanXQueueUser, fmt.Sprintf("XQueue user %q", name), `SELECT `+xqueueUserColumns+` WHERE u.name = ?`, name)
}

// ListXQueueUsers lists the users by name, password hashes included.
func (db *DB) ListXQueueUsers(ctx context.Context) ([]broker.XQueueUser, error) {
	return listAll(ctx, db, scanXQueueUser, `SELECT `+xqueueUserColumns+` ORDER BY u.name`)
}

// RemoveXQueueUser removes a user and the servers of its pulling clients,
// whose names it returns for the dispatcher. Its submissions stay; their
// results not yet delivered can no longer be (the user's callback
// allow-list is gone with it).
func (db *DB) RemoveXQueueUser(ctx context.Context, name string) ([]string, error) {
	defer db.registryChanged()
	var removed []string
	err := db.write(ctx, func(tx *sql.Tx) error {
		id, err := idByName(ctx, tx, "xqueue_users", "XQueue user", name)
		if err != nil {
			return err
		}
		if removed, err = removePullers(ctx, tx, `SELECT server_id FROM xqueue_pullers WHERE user_id = ?`, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM xqueue_users WHERE id = ?`, id)
		return err
	})
	return removed, err
}

// --- pulling clients' servers ---

// pullerName is the server name of XQueue user user pulling queue: both
// names when they fit, or as much of them as fits and a hash of both.
func pullerName(user, queue string) string {
	name := "xq." + user + "." + queue
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(user + "\x00" + queue))
	return name[:63-9] + "-" + hex.EncodeToString(sum[:4])
}

// Puller returns the server of XQueue user u pulling queue q, and makes it
// when there is none yet: named "xq.USER.QUEUE", of the queue's type, with
// the user's max jobs, and a placeholder identity no certificate matches.
// made says whether it was made now, for the dispatcher to learn of it.
func (db *DB) Puller(ctx context.Context, u broker.XQueueUser, q broker.XQueueQueue) (s broker.Server, made bool, err error) {
	var name string
	err = db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT s.name FROM servers s JOIN xqueue_pullers p ON p.server_id = s.id
			WHERE p.user_id = ? AND p.queue = ?`, u.ID, q.Name).Scan(&name)
	})
	if err == nil {
		s, err = db.ServerByName(ctx, name)
		return s, false, err
	}
	if !errors.Is(err, broker.ErrNotFound) {
		return s, false, err
	}
	name = pullerName(u.Name, q.Name)
	placeholder := fmt.Sprintf("xqueue:%d:%s", u.ID, q.Name)
	err = db.write(ctx, func(tx *sql.Tx) error {
		// Another request may have made it meanwhile.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM xqueue_pullers WHERE user_id = ? AND queue = ?`, u.ID, q.Name).Scan(&n); err != nil || n > 0 {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO servers (name, cert_serial, cert_issuer, cert_subject, cert_fingerprint,
			cert_not_after, type_id, max_concurrent_jobs, created_at, pull) VALUES (?, ?, 'gradebroker XQueue', ?, ?, 0, ?, ?, ?, ?)`,
			name, placeholder, fmt.Sprintf("XQueue user %s pulling queue %s", u.Name, q.Name), placeholder,
			q.TypeID, max(u.MaxJobs, 1), ms(db.now()), broker.PullXQueue)
		if err != nil {
			return conflictName(err, "server", name)
		}
		id, _ := res.LastInsertId()
		if _, err := tx.ExecContext(ctx, `INSERT INTO xqueue_pullers (server_id, user_id, queue) VALUES (?, ?, ?)`, id, u.ID, q.Name); err != nil {
			return err
		}
		made = true
		return nil
	})
	if err != nil {
		return s, false, err
	}
	if !made {
		return db.Puller(ctx, u, q)
	}
	s, err = db.ServerByName(ctx, name)
	return s, true, err
}

// PullerOf returns the XQueue user id and queue of a pulling client's
// server, or ErrNotFound.
func (db *DB) PullerOf(ctx context.Context, server string) (userID int64, queue string, err error) {
	err = db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT p.user_id, p.queue FROM xqueue_pullers p JOIN servers s ON s.id = p.server_id
			WHERE s.name = ?`, server).Scan(&userID, &queue)
	})
	if errors.Is(err, broker.ErrNotFound) {
		err = fmt.Errorf("%w: server %q is no XQueue user's", broker.ErrNotFound, server)
	}
	return userID, queue, err
}

// --- submissions ---

// InsertXQueueSubmission records where the result of job jobID, submitted
// by XQueue user userID, goes, and the header to post back with it.
func (t *JobTx) InsertXQueueSubmission(jobID, userID int64, callbackURL, header string) error {
	_, err := t.exec(`INSERT INTO xqueue_submissions (job_id, user_id, callback_url, header) VALUES (?, ?, ?, ?)`,
		jobID, userID, callbackURL, header)
	return translate(err)
}

// InsertAttachment stores a file of job jobID.
func (t *JobTx) InsertAttachment(jobID int64, name string, data []byte) error {
	if data == nil {
		data = []byte{}
	}
	_, err := t.exec(`INSERT INTO job_attachments (job_id, name, data) VALUES (?, ?, ?)`, jobID, name, data)
	return translate(err)
}

// UnfinishedXQueueSubmissions returns the ids of platformID's unfinished
// XQueue submissions to callbackURL older than job before: those a new
// submission retires, as XQueue does.
func (db *DB) UnfinishedXQueueSubmissions(ctx context.Context, platformID int64, callbackURL string, before int64) ([]int64, error) {
	var ids []int64
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		ids, err = queryAll(ctx, tx, ids, func(row rowScanner) (int64, error) {
			var id int64
			err := row.Scan(&id)
			return id, err
		}, `SELECT s.job_id FROM xqueue_submissions s JOIN jobs j ON j.id = s.job_id
			WHERE s.callback_url = ? AND s.job_id < ? AND j.platform_id = ? AND j.state IN (1, 2) ORDER BY s.job_id`,
			callbackURL, before, platformID)
		return err
	})
	return ids, err
}

// XQueueCallback is what the answer to an XQueue submission needs.
type XQueueCallback struct {
	URL    string
	Header string
	// User is the user that submitted it; HasUser is false once the user
	// was removed.
	User    broker.XQueueUser
	HasUser bool
}

// XQueueCallback returns where the result of job jobID goes, or
// ErrNotFound when it was not submitted through XQueue.
func (db *DB) XQueueCallback(ctx context.Context, jobID int64) (XQueueCallback, error) {
	var cb XQueueCallback
	var userID sql.NullInt64
	err := db.read(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT callback_url, header, user_id FROM xqueue_submissions WHERE job_id = ?`, jobID).
			Scan(&cb.URL, &cb.Header, &userID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: job %d was not submitted through XQueue", broker.ErrNotFound, jobID)
		}
		if err != nil || !userID.Valid {
			return err
		}
		cb.User, err = scanXQueueUser(tx.QueryRowContext(ctx, `SELECT `+xqueueUserColumns+` WHERE u.id = ?`, userID.Int64))
		cb.HasUser = err == nil
		return err
	})
	return cb, err
}

// Attachments lists job jobID's files, without their data, in the order
// they came.
func (db *DB) Attachments(ctx context.Context, jobID int64) ([]broker.Attachment, error) {
	return listAll(ctx, db, func(row rowScanner) (broker.Attachment, error) {
		var a broker.Attachment
		err := row.Scan(&a.ID, &a.JobID, &a.Name, &a.Size)
		return a, err
	}, `SELECT id, job_id, name, length(data) FROM job_attachments WHERE job_id = ? ORDER BY id`, jobID)
}

// Attachment returns one file with its data, or ErrNotFound.
func (db *DB) Attachment(ctx context.Context, id int64) (broker.Attachment, error) {
	return lookup(ctx, db, func(row rowScanner) (broker.Attachment, error) {
		var a broker.Attachment
		err := row.Scan(&a.ID, &a.JobID, &a.Name, &a.Data)
		a.Size = int64(len(a.Data))
		return a, err
	}, fmt.Sprintf("attachment %d", id), `SELECT id, job_id, name, data FROM job_attachments WHERE id = ?`, id)
}

// --- secrets ---

// Secret returns the broker's secret called name, making it (size random
// bytes) the first time: a key that must outlive a restart.
func (db *DB) Secret(ctx context.Context, name string, size int) ([]byte, error) {
	var v []byte
	err := db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&v)
	})
	if err == nil || !errors.Is(err, broker.ErrNotFound) {
		return v, err
	}
	fresh := make([]byte, size)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	err = db.write(ctx, func(tx *sql.Tx) error {
		// The first writer wins; a second reads what the first made.
		if _, err := tx.ExecContext(ctx, `INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`, name, fresh); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&v)
	})
	return v, err
}
