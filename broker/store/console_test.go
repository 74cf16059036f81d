package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
)

// ctInsert stores jobs through InsertJob, the dispatcher's path, so that
// job_tags is written as in production. Each job gets its own transaction
// at the time the clock says.
func ctInsert(t *testing.T, db *DB, platformID int64, name, key string, tags ...string) int64 {
	t.Helper()
	tx, err := db.BeginJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	in, err := tx.InsertJob(broker.NewJob{PlatformID: platformID, Name: name, IdempotencyKey: key, Tags: tags,
		Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 3}, "test")
	if err != nil {
		tx.Rollback()
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return in.ID
}

// ctOpen opens a fresh database whose clock reads *now.
func ctOpen(t *testing.T, now *time.Time) *DB {
	t.Helper()
	db, err := Open(context.Background(), t.TempDir()+"/gb.db", Options{Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestListJobsConsoleFilters(t *testing.T) {
	t.Parallel()
	now := jqBase
	db := ctOpen(t, &now)
	ctx := context.Background()
	mooc := jqAddPlatform(t, db, "mooc")
	contest := jqAddPlatform(t, db, "contest")
	j1 := ctInsert(t, db, mooc, "hw1/alice", "k-1", "py", "course-a")
	now = now.Add(time.Minute)
	j2 := ctInsert(t, db, mooc, "hw1/bob", "", "py", "course-b")
	now = now.Add(time.Minute)
	j3 := ctInsert(t, db, contest, "hw2/carol", "k-3", "c")
	now = now.Add(time.Minute)
	j4 := ctInsert(t, db, mooc, "hw2/dave", "", "course-a")
	now = now.Add(time.Minute)
	j5 := ctInsert(t, db, contest, "x", "hw1/alice", "course-b", "py")
	jqExec(t, db, `UPDATE jobs SET state = 4 WHERE id IN (?, ?)`, j2, j5)
	jqExec(t, db, `UPDATE jobs SET state = 5 WHERE id = ?`, j3)

	tests := []struct {
		name   string
		filter JobFilter
		want   []int64
	}{
		{"tag", JobFilter{Tag: "py"}, []int64{j5, j2, j1}},
		{"tag and state", JobFilter{Tag: "py", State: broker.JobFailed}, []int64{j5, j2}},
		{"failed", JobFilter{State: broker.JobFailed}, []int64{j5, j2}},
		{"cancelled", JobFilter{State: broker.JobCancelled}, []int64{j3}},
		{"queued", JobFilter{State: broker.JobQueued}, []int64{j4, j1}},
		{"any of a scope's tags", JobFilter{AnyTags: []string{"course-a", "course-b"}}, []int64{j5, j4, j2, j1}},
		{"scope and a tag inside it", JobFilter{AnyTags: []string{"course-a", "course-b"}, Tag: "course-a"}, []int64{j4, j1}},
		{"scope and a tag outside it", JobFilter{AnyTags: []string{"course-b"}, Tag: "py"}, []int64{j5, j2}},
		{"one-tag scope", JobFilter{AnyTags: []string{"course-a"}}, []int64{j4, j1}},
		// Both conditions hold, not the scope's tag alone.
		{"one-tag scope and a tag outside it", JobFilter{AnyTags: []string{"course-a"}, Tag: "py"}, []int64{j1}},
		{"scope pages", JobFilter{AnyTags: []string{"course-a", "course-b"}, Limit: 2, BeforeID: j4}, []int64{j2, j1}},
		{"scope pages forward", JobFilter{AnyTags: []string{"course-a", "course-b"}, Limit: 2, AfterID: j1}, []int64{j4, j2}},
		{"after id, newest first", JobFilter{Limit: 2, AfterID: j2}, []int64{j4, j3}},
		{"created from", JobFilter{CreatedAfter: jqBase.Add(2 * time.Minute)}, []int64{j5, j4, j3}},
		{"created before", JobFilter{CreatedBefore: jqBase.Add(2 * time.Minute)}, []int64{j2, j1}},
		{"created between", JobFilter{CreatedAfter: jqBase.Add(time.Minute), CreatedBefore: jqBase.Add(3 * time.Minute)}, []int64{j3, j2}},
		{"created range with a tag", JobFilter{Tag: "py", CreatedAfter: jqBase.Add(30 * time.Second)}, []int64{j5, j2}},
		{"created after the last", JobFilter{CreatedAfter: jqBase.Add(time.Hour)}, []int64{}},
		{"search id", JobFilter{Search: itoa(j3)}, []int64{j3}},
		{"search name prefix and key", JobFilter{Search: "hw1/alice"}, []int64{j5, j1}},
		{"search name prefix", JobFilter{Search: "hw2/"}, []int64{j4, j3}},
		{"search key", JobFilter{Search: "k-3"}, []int64{j3}},
		{"search of the longest length", JobFilter{Search: strings.Repeat("x", 256)}, []int64{}},
		{"max id", JobFilter{MaxID: j2}, []int64{j2, j1}},
		{"platform and tag", JobFilter{Platform: "contest", Tag: "py"}, []int64{j5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := db.ListJobs(ctx, tt.filter)
			if err != nil {
				t.Fatalf("ListJobs(%+v): %v", tt.filter, err)
			}
			if diff := cmp.Diff(tt.want, jqIDs(got)); diff != "" {
				t.Errorf("ListJobs(%+v) ids (-want +got):\n%s", tt.filter, diff)
			}
			n, maxID, err := db.CountJobs(ctx, tt.filter, 1000)
			if err != nil {
				t.Fatalf("CountJobs: %v", err)
			}
			if tt.filter.Limit == 0 && tt.filter.BeforeID == 0 && tt.filter.AfterID == 0 && (n != len(tt.want) || len(tt.want) > 0 && maxID != tt.want[0]) {
				t.Errorf("CountJobs(%+v) = %d, max %d; want %d, max of %v", tt.filter, n, maxID, len(tt.want), tt.want)
			}
		})
	}

	if n, _, err := db.CountJobs(ctx, JobFilter{}, 3); err != nil || n != 3 {
		t.Errorf("CountJobs with limit 3 = %d, %v; want 3 (the limit)", n, err)
	}
	if _, _, err := db.CountJobs(ctx, JobFilter{}, 0); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("CountJobs with limit 0 = %v; want ErrInvalid", err)
	}
	for _, f := range []JobFilter{
		{BeforeID: 3, AfterID: 1},
		{CreatedAfter: jqBase.Add(time.Hour), CreatedBefore: jqBase},
		{Search: strings.Repeat("x", 257)},
	} {
		if _, err := db.ListJobs(ctx, f); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("ListJobs(%+v) = %v; want ErrInvalid", f, err)
		}
	}
	// Retention and platform removal take the tag rows with the job.
	jqExec(t, db, `DELETE FROM jobs WHERE id = ?`, j1)
	if n := rows(t, db, "job_tags", j1); n != 0 {
		t.Errorf("job_tags keeps %d rows of a deleted job", n)
	}
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }

// TestJobFilterPlans checks that every selective filter of the console's
// job list walks an index in id order (the unfiltered list and the done
// jobs, which are most jobs, walk the table itself): the jobs page must stay fast at a million
// jobs, and a plan that scans the table would not (the benchmark measures
// the time; this test keeps the plans).
func TestJobFilterPlans(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	for _, f := range []JobFilter{
		{State: broker.JobQueued}, {State: broker.JobAssigned}, {State: broker.JobFailed}, {State: broker.JobCancelled},
		{Tag: "a"}, {Tag: "a", State: broker.JobFailed}, {AnyTags: []string{"a", "b"}, Tag: "c"}, {PlatformID: 1},
		{CreatedAfter: jqBase, CreatedBefore: jqBase.Add(time.Hour)}, {Tag: "a", CreatedAfter: jqBase}, {Search: "hw1"},
	} {
		var plan []string
		err := db.read(ctx, func(tx *sql.Tx) error {
			q, err := buildJobQuery(ctx, tx, f)
			if err != nil {
				return err
			}
			rs, err := tx.QueryContext(ctx, `EXPLAIN QUERY PLAN `+q.sql(jobSelect)+` ORDER BY `+q.idCol+` DESC LIMIT 50`, q.args...)
			if err != nil {
				return err
			}
			defer rs.Close()
			for rs.Next() {
				var id, parent, unused int
				var detail string
				if err := rs.Scan(&id, &parent, &unused, &detail); err != nil {
					return err
				}
				plan = append(plan, detail)
			}
			return rs.Err()
		})
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		text := strings.Join(plan, "\n")
		if strings.Contains(text, "SCAN j") || strings.Contains(text, "SCAN jt") ||
			(f.Search == "" && strings.Contains(text, "TEMP B-TREE")) {
			t.Errorf("filter %+v reads the whole table or sorts it:\n%s", f, text)
		}
	}
}

func TestConsoleSessions(t *testing.T) {
	t.Parallel()
	now := jqBase
	db := ctOpen(t, &now)
	ctx := context.Background()
	hash := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }
	login := &LoginUse{JTI: "j1", Expires: now.Add(5 * time.Minute)}
	s, err := db.CreateConsoleSession(ctx, ConsoleSession{Name: "TA Bob", Role: "viewer", Tags: []string{"course-a"},
		Via: "link", CreatedBy: "alice", ExpiresAt: now.Add(time.Hour)}, hash("secret"), login)
	if err != nil {
		t.Fatal(err)
	}
	// The link is single use, whatever the new session's secret.
	if _, err := db.CreateConsoleSession(ctx, ConsoleSession{Name: "TA Bob", Role: "viewer", Via: "link", CreatedBy: "alice",
		ExpiresAt: now.Add(time.Hour)}, hash("other"), login); !errors.Is(err, ErrLoginUsed) {
		t.Fatalf("second use of a login link = %v; want ErrLoginUsed", err)
	}
	got, err := db.ConsoleSessionByHash(ctx, hash("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s, got); diff != "" {
		t.Errorf("session read back (-created +read):\n%s", diff)
	}
	if _, err := db.ConsoleSessionByHash(ctx, hash("other")); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("the refused session was stored: %v", err)
	}
	if _, err := db.CreateConsoleSession(ctx, ConsoleSession{Role: "admin"}, hash("x"), nil); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("role admin = %v; want ErrInvalid", err)
	}
	if _, err := db.RevokeConsoleSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RevokeConsoleSession(ctx, s.ID); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("revoking twice = %v; want ErrFailedPrecondition", err)
	}
	list, err := db.ListConsoleSessions(ctx)
	if err != nil || len(list) != 1 || list[0].RevokedAt.IsZero() {
		t.Fatalf("ListConsoleSessions = %+v, %v; want the one revoked session", list, err)
	}
	// Expired sessions and login ids go when the next session is made.
	now = now.Add(2 * time.Hour)
	if _, err := db.CreateConsoleSession(ctx, ConsoleSession{Name: "alice", Role: "operator", Via: "certificate", CreatedBy: "alice",
		ExpiresAt: now.Add(time.Hour)}, hash("new"), nil); err != nil {
		t.Fatal(err)
	}
	var sessions, logins int
	db.r.QueryRow(`SELECT (SELECT COUNT(*) FROM console_sessions), (SELECT COUNT(*) FROM console_logins)`).Scan(&sessions, &logins)
	if sessions != 1 || logins != 0 {
		t.Errorf("after expiry: %d sessions, %d login ids; want 1 and 0", sessions, logins)
	}
}
