package store

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
)

// TestJobTxTrail walks one job through JobTx as the dispatcher does
// (insert, assign, requeue avoiding the server, assign, fail, reopen) and
// checks what each step leaves: the audit trail with its lease ids and
// details, the server to avoid, the restrict paths an Assign returns, and
// the reopened job's fresh start. The dispatcher's tests go through these
// paths too, but none reads back the audit trail or the avoided server.
func TestJobTxTrail(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	p := jqAddPlatform(t, db, "mooc")
	step := func(what string, fn func(tx *JobTx) error) {
		t.Helper()
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := fn(tx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("%s: commit: %v", what, err)
		}
	}
	open := func() OpenJob {
		t.Helper()
		var all []OpenJob
		if err := db.LoadOpenJobs(ctx, func(j OpenJob) error { all = append(all, j); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(all) != 1 {
			t.Fatalf("LoadOpenJobs: %d jobs, want 1", len(all))
		}
		return all[0]
	}

	var id int64
	step("insert", func(tx *JobTx) error {
		in, err := tx.InsertJob(broker.NewJob{PlatformID: p, Name: "j", Timeout: time.Minute, JobData: []byte(`{}`),
			RestrictPaths: []string{"/tasks/a"}, MaxAttempts: 3}, "platform:mooc")
		id = in.ID
		return err
	})
	step("assign", func(tx *JobTx) error {
		a, err := tx.Assign(id, 10, 7, "g1", 1, tx.Now().Add(time.Minute))
		if err == nil && !cmp.Equal(a.RestrictPaths, []string{"/tasks/a"}) {
			t.Errorf("Assign returned restrict paths %q, want [/tasks/a]", a.RestrictPaths)
		}
		return err
	})
	step("requeue", func(tx *JobTx) error {
		if err := tx.EndLease(10, broker.EndTemporary, "busy"); err != nil {
			return err
		}
		return tx.Requeue(id, 7, "server:g1", 10, "temporary: busy")
	})
	if j := open(); j.State != broker.JobQueued || j.AvoidServerID != 7 {
		t.Errorf("after Requeue: state %s, avoid server %d; want queued, avoiding 7", j.State, j.AvoidServerID)
	}
	step("assign again and fail", func(tx *JobTx) error {
		if _, err := tx.Assign(id, 11, 8, "g2", 2, tx.Now().Add(time.Minute)); err != nil {
			return err
		}
		if err := tx.EndLease(11, broker.EndFatal, ""); err != nil {
			return err
		}
		_, err := tx.Finish(id, Final{State: broker.JobFailed, LeaseID: 11, Outcome: broker.OutcomeFatal,
			Result: []byte(`{"score":0}`), Error: "the grader crashed", Actor: "server:g2"})
		return err
	})
	var reopened OpenJob
	step("reopen", func(tx *JobTx) error {
		var err error
		reopened, err = tx.Reopen(id, "operator:alice")
		return err
	})
	if reopened.ID != id || reopened.State != broker.JobQueued || reopened.Attempts != 0 || reopened.AvoidServerID != 0 || !reopened.CreatedAt.Equal(open().CreatedAt) {
		t.Errorf("Reopen returned %+v, want job %d queued with no attempts, no server to avoid, created as before", reopened, id)
	}

	job, err := db.GetJob(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if job.Result != nil {
		t.Errorf("reopened job keeps its result %s", job.Result)
	}
	type ev struct {
		Kind    string
		LeaseID int64
		Detail  string
	}
	var got []ev
	for _, e := range job.Events {
		got = append(got, ev{e.Kind, e.LeaseID, e.Detail})
	}
	want := []ev{
		{"queued", 0, ""},
		{"assigned", 10, "attempt 1"},
		{"requeued", 10, "temporary: busy"},
		{"assigned", 11, "attempt 2"},
		// Without a detail of its own, a final event says the error.
		{"failed", 11, "the grader crashed"},
		{"reopened", 0, "requeued with fresh attempts"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}
