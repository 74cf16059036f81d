package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// setup opens a fresh database in a temp dir.
func setup(t *testing.T) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "gb.db"), Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func ident(fp string) broker.CertIdentity {
	return broker.CertIdentity{Serial: "s" + fp, Issuer: "CN=test CA", Subject: "CN=" + fp, Fingerprint: fp, NotAfter: time.Now().Add(time.Hour)}
}

func TestOpenIsIdempotentAndSetsPragmas(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "gb.db")
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		db, err := Open(ctx, path, Options{})
		if err != nil {
			t.Fatalf("Open #%d: %v", i, err)
		}
		var mode string
		var fk, sync int
		if err := db.w.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := db.w.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil {
			t.Fatal(err)
		}
		if err := db.w.QueryRow(`PRAGMA synchronous`).Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || fk != 1 || sync != 2 {
			t.Errorf("journal_mode=%s foreign_keys=%d synchronous=%d, want wal 1 2(FULL)", mode, fk, sync)
		}
		var n int
		if err := db.w.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		embedded, err := fs.Glob(migrationFS, "migrations/*.sql")
		if err != nil {
			t.Fatal(err)
		}
		if n != len(embedded) {
			t.Errorf("schema_migrations has %d rows, want one per embedded migration (%d)", n, len(embedded))
		}
		db.Close()
	}
}

func TestRegistryErrors(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	if _, err := db.AddTag(ctx, "python3", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddTag(ctx, "python3", ""); !errors.Is(err, broker.ErrConflict) {
		t.Errorf("second AddTag: got %v, want ErrConflict", err)
	}
	if _, err := db.AddTag(ctx, "bad tag!", ""); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("AddTag bad name: got %v, want ErrInvalid", err)
	}
	if _, err := db.AddServerType(ctx, "py", []string{"python3", "gpu"}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("type with unknown tag: got %v, want ErrInvalid", err)
	}
	// No partial write: the failed type must not exist.
	types, err := db.ListServerTypes(ctx)
	if err != nil || len(types) != 0 {
		t.Fatalf("ListServerTypes after failed add = %v, %v; want none", types, err)
	}
	if _, err := db.AddServerType(ctx, "py", []string{"python3"}); err != nil {
		t.Fatal(err)
	}
	if err := db.RemoveTag(ctx, "python3"); !errors.Is(err, broker.ErrInUse) {
		t.Errorf("RemoveTag in use: got %v, want ErrInUse", err)
	}
	s := broker.Server{Name: "g1", Cert: ident("aa"), Type: "py", MaxConcurrentJobs: 4}
	if _, err := db.AddServer(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddServer(ctx, s); !errors.Is(err, broker.ErrConflict) {
		t.Errorf("server registered twice: got %v, want ErrConflict", err)
	}
	s2 := broker.Server{Name: "g2", Cert: ident("aa"), Type: "py"}
	if _, err := db.AddServer(ctx, s2); !errors.Is(err, broker.ErrConflict) {
		t.Errorf("second server with same cert: got %v, want ErrConflict", err)
	}
	if _, err := db.AddOperator(ctx, "alice", ident("aa")); !errors.Is(err, broker.ErrConflict) {
		t.Errorf("operator with a server's cert: got %v, want ErrConflict", err)
	}
	if err := db.RemoveServerType(ctx, "py"); !errors.Is(err, broker.ErrInUse) {
		t.Errorf("RemoveServerType in use: got %v, want ErrInUse", err)
	}
	got, err := db.ServerByFingerprint(ctx, "aa")
	if err != nil || got.Name != "g1" || got.Type != "py" || got.MaxConcurrentJobs != 4 {
		t.Errorf("ServerByFingerprint = %+v, %v", got, err)
	}
	if _, err := db.ServerByFingerprint(ctx, "zz"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("ServerByFingerprint unknown: got %v, want ErrNotFound", err)
	}
}

func TestLastOperatorCannotBeRemoved(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	if _, err := db.AddOperator(ctx, "alice", ident("a1")); err != nil {
		t.Fatal(err)
	}
	if err := db.RemoveOperator(ctx, "alice"); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("removing last operator: got %v, want ErrFailedPrecondition", err)
	}
	if _, err := db.AddOperator(ctx, "bob", ident("b1")); err != nil {
		t.Fatal(err)
	}
	if err := db.RemoveOperator(ctx, "alice"); err != nil {
		t.Errorf("removing one of two operators: %v", err)
	}
}

// finishOne stores a job for platform p and makes it done; it returns the
// delivery id Finish gave.
func finishOne(t *testing.T, db *DB, p broker.Platform, passPlatform bool) int64 {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: p.ID, Name: "j", Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 1}, "test")
	if err != nil {
		t.Fatal(err)
	}
	f := Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`{}`), Actor: "test"}
	if passPlatform {
		f.PlatformID = p.ID
	}
	id, err := tx.Finish(in.ID, f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Finish(in.ID, f); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Errorf("second Finish: %v, want ErrFailedPrecondition", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestFinishMakesDeliveryOnlyWithReturnURL also checks that changing a
// platform's return URL reaches Finish's cache at once.
func TestFinishMakesDeliveryOnlyWithReturnURL(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "p", PublicKeyPEM: "k", ReturnURL: ""})
	if err != nil {
		t.Fatal(err)
	}
	for _, pass := range []bool{true, false} {
		if id := finishOne(t, db, p, pass); id != 0 {
			t.Errorf("platform without return URL got delivery %d", id)
		}
	}
	url := "https://example.org/cb"
	if _, err := db.UpdatePlatform(ctx, "p", PlatformUpdate{ReturnURL: &url}); err != nil {
		t.Fatal(err)
	}
	for _, pass := range []bool{true, false} {
		if id := finishOne(t, db, p, pass); id == 0 {
			t.Errorf("platform with a return URL (platform id passed: %v) got no delivery", pass)
		}
	}
}

// AssignInserted, like Assign, leases only a queued job and records the
// lease; it just does not read the job back.
func TestAssignInserted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := setup(t)
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "plat", PublicKeyPEM: "x"})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: p.ID, Name: "j", Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 3}, "test")
	if err != nil {
		t.Fatal(err)
	}
	deadline := tx.Now().Add(time.Minute)
	if err := tx.AssignInserted(in.ID, 7, 1, "g1", 1, deadline); err != nil {
		t.Fatal(err)
	}
	if err := tx.AssignInserted(in.ID, 8, 1, "g1", 2, deadline); !errors.Is(err, broker.ErrFailedPrecondition) {
		t.Fatalf("second AssignInserted: %v, want ErrFailedPrecondition", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	st, _, err := db.JobState(ctx, in.ID)
	if err != nil || st != broker.JobAssigned {
		t.Fatalf("job is %v (%v), want assigned", st, err)
	}
	open, err := db.OpenLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 1 || open[0].ID != 7 || open[0].JobID != in.ID || open[0].Number != 1 || open[0].ServerID != 1 {
		t.Fatalf("open leases = %+v, want lease 7 of job %d", open, in.ID)
	}
}

// A JobTx is BEGIN IMMEDIATE ... COMMIT on the writer connection: a rollback
// leaves nothing and hands the connection back outside any transaction, and
// a finished JobTx cannot be committed again.
func TestJobTxCommitAndRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := setup(t)
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "plat", PublicKeyPEM: "x"})
	if err != nil {
		t.Fatal(err)
	}
	insert := func(tx *JobTx) int64 {
		t.Helper()
		in, err := tx.InsertJob(broker.NewJob{PlatformID: p.ID, Name: "j", Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 1}, "test")
		if err != nil {
			t.Fatal(err)
		}
		return in.ID
	}
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gone := insert(tx)
	tx.Rollback()
	tx.Rollback() // a second call is harmless
	if err := tx.Commit(); err == nil {
		t.Fatal("Commit after Rollback succeeded")
	}
	if _, _, err := db.JobState(ctx, gone); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("rolled-back job: %v, want ErrNotFound", err)
	}

	tx, err = db.BeginJobs(ctx) // the connection is usable again
	if err != nil {
		t.Fatal(err)
	}
	kept := insert(tx)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx.Rollback() // safe after Commit: changes nothing
	if err := tx.Commit(); err == nil {
		t.Fatal("second Commit succeeded")
	}
	if st, _, err := db.JobState(ctx, kept); err != nil || st != broker.JobQueued {
		t.Fatalf("committed job: %v %v, want queued", st, err)
	}
	// The write helpers share the one writer connection with JobTx.
	if _, err := db.AddTag(ctx, "after", ""); err != nil {
		t.Fatalf("write after JobTx: %v", err)
	}
}

// TestRegistryMessages pins the words of the registry's refusals: each
// names the thing that was not found or what still uses it, which is what
// an operator reads.
func TestRegistryMessages(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	for _, tag := range []string{"py", "forced", "jobtag"} {
		if _, err := db.AddTag(ctx, tag, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.AddServerType(ctx, "pytype", []string{"py"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddServer(ctx, broker.Server{Name: "g1", Cert: ident("f1"), Type: "pytype"}); err != nil {
		t.Fatal(err)
	}
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "mooc", PublicKeyPEM: "k", ForceTag: "forced"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddOperator(ctx, "alice", ident("o1")); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	job, err := tx.InsertJob(broker.NewJob{PlatformID: p.ID, Name: "j", Tags: []string{"jobtag"}, Timeout: time.Minute,
		JobData: []byte(`{}`), MaxAttempts: 1}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	two := 2
	for _, tc := range []struct {
		name string
		call func() error
		want error
		msg  string
	}{
		{"platform by name", func() error { _, err := db.PlatformByName(ctx, "nope"); return err },
			broker.ErrNotFound, `not found: platform "nope"`},
		{"server by name", func() error { _, err := db.ServerByName(ctx, "nope"); return err },
			broker.ErrNotFound, `not found: server "nope"`},
		{"server by fingerprint", func() error { _, err := db.ServerByFingerprint(ctx, "zz"); return err },
			broker.ErrNotFound, `not found: no server has a certificate with fingerprint zz`},
		{"operator by fingerprint", func() error { _, err := db.OperatorByFingerprint(ctx, "zz"); return err },
			broker.ErrNotFound, `not found: no operator has a certificate with fingerprint zz`},
		{"update platform", func() error { _, err := db.UpdatePlatform(ctx, "nope", PlatformUpdate{}); return err },
			broker.ErrNotFound, `not found: platform "nope"`},
		{"update server", func() error {
			_, err := db.UpdateServer(ctx, "nope", ServerUpdate{MaxConcurrentJobs: &two})
			return err
		}, broker.ErrNotFound, `not found: server "nope"`},
		{"update server type", func() error { _, err := db.UpdateServerType(ctx, "nope", nil); return err },
			broker.ErrNotFound, `not found: server type "nope"`},
		{"remove platform", func() error { return db.RemovePlatform(ctx, "nope") },
			broker.ErrNotFound, `not found: platform "nope"`},
		{"remove server", func() error { return db.RemoveServer(ctx, "nope") },
			broker.ErrNotFound, `not found: server "nope"`},
		{"remove server type", func() error { return db.RemoveServerType(ctx, "nope") },
			broker.ErrNotFound, `not found: server type "nope"`},
		{"remove operator", func() error { return db.RemoveOperator(ctx, "nope") },
			broker.ErrNotFound, `not found: operator "nope"`},
		{"remove tag", func() error { return db.RemoveTag(ctx, "nope") },
			broker.ErrNotFound, `not found: tag "nope"`},
		{"tag of a server type", func() error { return db.RemoveTag(ctx, "py") },
			broker.ErrInUse, `tag "py" is used by server type pytype`},
		{"force tag", func() error { return db.RemoveTag(ctx, "forced") },
			broker.ErrInUse, `tag "forced" is used by platform mooc (force tag)`},
		{"tag of a job", func() error { return db.RemoveTag(ctx, "jobtag") },
			broker.ErrInUse, fmt.Sprintf(`tag "jobtag" is needed by unfinished job %d`, job.ID)},
		{"type of a server", func() error { return db.RemoveServerType(ctx, "pytype") },
			broker.ErrInUse, `server type "pytype" is the type of server "g1"`},
		{"platform with jobs", func() error { return db.RemovePlatform(ctx, "mooc") },
			broker.ErrInUse, `platform "mooc" has 1 unfinished job(s); cancel them first`},
		{"last operator", func() error { return db.RemoveOperator(ctx, "alice") },
			broker.ErrFailedPrecondition, `"alice" is the last operator; add another before removing it`},
	} {
		err := tc.call()
		if !errors.Is(err, tc.want) || !strings.HasSuffix(err.Error(), tc.msg) {
			t.Errorf("%s: got %v, want %v ending in %q", tc.name, err, tc.want, tc.msg)
		}
	}
	// The refusals changed nothing.
	if _, err := db.ServerByName(ctx, "g1"); err != nil {
		t.Errorf("server g1 after the refusals: %v", err)
	}
	if tags, err := db.ListTags(ctx); err != nil || len(tags) != 3 {
		t.Errorf("tags after the refusals: %v, %v; want 3", tags, err)
	}
}

// UpdatePlatform applies every field it is given in one call, and a
// platform may be given the certificate it already has; AddOperator
// returns the operator it stored.
func TestRegistryUpdatesInOneCall(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	op, err := db.AddOperator(ctx, "alice", ident("op-a"))
	if err != nil || op.ID == 0 || op.Name != "alice" || op.Cert.Fingerprint != "op-a" {
		t.Fatalf("AddOperator = %+v, %v; want alice with an id and her certificate", op, err)
	}
	cert := ident("plat-p")
	if _, err := db.AddPlatform(ctx, broker.Platform{Name: "p", PublicKeyPEM: "old", ReturnURL: "https://p.example/cb", Cert: &cert}); err != nil {
		t.Fatal(err)
	}
	proto, key, on, same := broker.ProtocolGraderqueue, "new", true, &cert
	p, err := db.UpdatePlatform(ctx, "p", PlatformUpdate{Protocol: &proto, PublicKeyPEM: &key, Cert: &same, LegacyTokens: &on})
	if err != nil {
		t.Fatalf("UpdatePlatform: %v", err)
	}
	if p.Protocol != proto || p.PublicKeyPEM != key || !p.LegacyTokens || p.Cert == nil || p.Cert.Fingerprint != cert.Fingerprint {
		t.Errorf("UpdatePlatform = %+v; want protocol %s, key %q, legacy tokens and its certificate", p, proto, key)
	}
}
