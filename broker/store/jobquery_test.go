package store

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
)

// jqBase is a fixed instant, whole milliseconds, so that times survive the
// round trip through the database unchanged.
var jqBase = time.UnixMilli(1_700_000_000_000)

// jqJob is a job row as jqInsertJob writes it; the job-writing API belongs to
// dispatch, so these tests write rows directly through the writer.
type jqJob struct {
	platformID int64
	name       string
	state      broker.JobState
	server     string
	tags       []string
	jobdata    string
	errText    string
	leaseID    int64
	attempts   int
	created    time.Time
	finished   time.Time
}

func jqInsertJob(t *testing.T, db *DB, j jqJob) int64 {
	t.Helper()
	if j.tags == nil {
		j.tags = []string{}
	}
	if j.jobdata == "" {
		j.jobdata = `{}`
	}
	if j.created.IsZero() {
		j.created = jqBase
	}
	tags, _ := json.Marshal(j.tags)
	var lease, finished any
	if j.leaseID != 0 {
		lease = j.leaseID
	}
	if !j.finished.IsZero() {
		finished = ms(j.finished)
	}
	res, err := db.w.ExecContext(context.Background(), `INSERT INTO jobs (platform_id, name, state, priority,
		tags, timeout_ms, idempotency_key, jobdata, restrict_paths, attempts, max_attempts, lease_id,
		server_name, error, created_at, updated_at, finished_at)
		VALUES (?, ?, ?, 0, ?, 30000, NULL, ?, '["/tasks"]', ?, 3, ?, ?, ?, ?, ?, ?)`,
		j.platformID, j.name, int(j.state), string(tags), []byte(j.jobdata), j.attempts, lease,
		j.server, j.errText, ms(j.created), ms(j.created), finished)
	if err != nil {
		t.Fatalf("insert job %s: %v", j.name, err)
	}
	id, _ := res.LastInsertId()
	return id
}

// exec runs one statement on the writer, failing the test on error.
func jqExec(t *testing.T, db *DB, q string, args ...any) int64 {
	t.Helper()
	res, err := db.w.ExecContext(context.Background(), q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	id, _ := res.LastInsertId()
	return id
}

func jqAddPlatform(t *testing.T, db *DB, name string) int64 {
	t.Helper()
	p, err := db.AddPlatform(context.Background(), broker.Platform{Name: name, PublicKeyPEM: "key", ReturnURL: "https://" + name + ".example/cb"})
	if err != nil {
		t.Fatalf("AddPlatform %s: %v", name, err)
	}
	return p.ID
}

func jqIDs(jobs []broker.Job) []int64 {
	out := []int64{}
	for _, j := range jobs {
		out = append(out, j.ID)
	}
	return out
}

func TestListJobsFilters(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	mooc := jqAddPlatform(t, db, "mooc")
	contest := jqAddPlatform(t, db, "contest")
	j1 := jqInsertJob(t, db, jqJob{platformID: mooc, name: "a", state: broker.JobQueued})
	j2 := jqInsertJob(t, db, jqJob{platformID: mooc, name: "b", state: broker.JobDone, server: "g1", finished: jqBase})
	j3 := jqInsertJob(t, db, jqJob{platformID: contest, name: "c", state: broker.JobAssigned, server: "g2", leaseID: 9})
	j4 := jqInsertJob(t, db, jqJob{platformID: contest, name: "d", state: broker.JobDone, server: "g1", finished: jqBase})
	j5 := jqInsertJob(t, db, jqJob{platformID: mooc, name: "e", state: broker.JobFailed, server: "g2", errText: "too many attempts"})

	tests := []struct {
		name   string
		filter JobFilter
		want   []int64
	}{
		{"all, newest first", JobFilter{}, []int64{j5, j4, j3, j2, j1}},
		{"state", JobFilter{State: broker.JobDone}, []int64{j4, j2}},
		{"platform by name", JobFilter{Platform: "contest"}, []int64{j4, j3}},
		{"platform by id", JobFilter{PlatformID: mooc}, []int64{j5, j2, j1}},
		{"server", JobFilter{Server: "g1"}, []int64{j4, j2}},
		{"removed server still matches", JobFilter{Server: "gone"}, []int64{}},
		{"combined", JobFilter{Platform: "mooc", Server: "g2"}, []int64{j5}},
		{"limit", JobFilter{Limit: 2}, []int64{j5, j4}},
		{"page", JobFilter{Limit: 2, BeforeID: j4}, []int64{j3, j2}},
		{"last page", JobFilter{Limit: 2, BeforeID: j2}, []int64{j1}},
		{"limit above max is lowered", JobFilter{Limit: MaxJobListLimit + 1}, []int64{j5, j4, j3, j2, j1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := db.ListJobs(ctx, tt.filter)
			if err != nil {
				t.Fatalf("ListJobs(%+v): %v", tt.filter, err)
			}
			if diff := cmp.Diff(tt.want, jqIDs(got)); diff != "" {
				t.Errorf("ListJobs(%+v) ids (-want +got):\n%s", tt.filter, diff)
			}
		})
	}
}

func TestListJobsDefaultLimit(t *testing.T) {
	t.Parallel()
	db := setup(t)
	p := jqAddPlatform(t, db, "mooc")
	for i := 0; i < DefaultJobListLimit+5; i++ {
		jqInsertJob(t, db, jqJob{platformID: p, name: "j", state: broker.JobQueued})
	}
	got, err := db.ListJobs(context.Background(), JobFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != DefaultJobListLimit {
		t.Errorf("ListJobs returned %d jobs, want the default %d", len(got), DefaultJobListLimit)
	}
}

func TestListJobsErrors(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	_, err := db.ListJobs(ctx, JobFilter{Platform: "nope"})
	if !errors.Is(err, broker.ErrNotFound) || !strings.Contains(err.Error(), `platform "nope"`) {
		t.Errorf("unknown platform: got %v, want ErrNotFound naming it", err)
	}
	if _, err := db.ListJobs(ctx, JobFilter{State: 9}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("bad state: got %v, want ErrInvalid", err)
	}
	if _, err := db.ListJobs(ctx, JobFilter{Limit: -1}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("negative limit: got %v, want ErrInvalid", err)
	}
}

// ListJobs leaves out the heavy parts (data, result, history, events) but
// carries the summary an operator scans: state, server, error, delivery.
func TestListJobsSummaryFields(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	p := jqAddPlatform(t, db, "mooc")
	id := jqInsertJob(t, db, jqJob{platformID: p, name: "big", state: broker.JobDone, server: "g1",
		tags: []string{"python3"}, jobdata: `{"x":1}`, attempts: 1, finished: jqBase.Add(time.Minute)})
	lease := jqExec(t, db, `INSERT INTO leases (job_id, server_name, number, assigned_at, deadline, ended_at, end_kind)
		VALUES (?, 'g1', 1, ?, ?, ?, 'ok')`, id, ms(jqBase), ms(jqBase.Add(time.Minute)), ms(jqBase.Add(time.Minute)))
	jqExec(t, db, `INSERT INTO results (job_id, lease_id, outcome, result, log, created_at) VALUES (?, ?, 1, '{"score":1}', 'log', ?)`, id, lease, ms(jqBase))
	jqExec(t, db, `INSERT INTO deliveries (job_id, platform_id, state, next_attempt_at, created_at) VALUES (?, ?, 2, 0, ?)`, id, p, ms(jqBase))
	jqExec(t, db, `INSERT INTO events (job_id, at, kind, actor) VALUES (?, ?, 'queued', 'platform:mooc')`, id, ms(jqBase))

	got, err := db.ListJobs(ctx, JobFilter{})
	if err != nil || len(got) != 1 {
		t.Fatalf("ListJobs = %v, %v", got, err)
	}
	j := got[0]
	if j.JobData != nil || j.Result != nil || j.Log != "" || j.History != nil || j.Events != nil {
		t.Errorf("ListJobs returned heavy fields: %+v", j)
	}
	if j.Platform != "mooc" || j.Server != "g1" || j.Delivery != broker.DeliveryDelivered ||
		j.State != broker.JobDone || !j.FinishedAt.Equal(jqBase.Add(time.Minute)) {
		t.Errorf("ListJobs summary = %+v", j)
	}
}

func TestGetJob(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	p := jqAddPlatform(t, db, "mooc")
	if _, err := db.AddTag(ctx, "python3", ""); err != nil {
		t.Fatal(err)
	}
	st, err := db.AddServerType(ctx, "py", []string{"python3"})
	if err != nil {
		t.Fatal(err)
	}
	finished := jqBase.Add(3 * time.Minute)
	id := jqInsertJob(t, db, jqJob{platformID: p, name: "ex1", state: broker.JobDone, server: "g2",
		tags: []string{"python3"}, jobdata: `{"task":"t1"}`, attempts: 2, finished: finished})
	jqExec(t, db, `INSERT INTO job_types (job_id, type_id) VALUES (?, ?)`, id, st.ID)
	l1 := jqExec(t, db, `INSERT INTO leases (job_id, server_name, number, assigned_at, deadline, ended_at, end_kind, reason)
		VALUES (?, 'g1', 1, ?, ?, ?, 'disconnected', 'stream closed')`,
		id, ms(jqBase), ms(jqBase.Add(time.Minute)), ms(jqBase.Add(30*time.Second)))
	l2 := jqExec(t, db, `INSERT INTO leases (job_id, server_name, number, assigned_at, deadline, ended_at, end_kind)
		VALUES (?, 'g2', 2, ?, ?, ?, 'ok')`,
		id, ms(jqBase.Add(time.Minute)), ms(jqBase.Add(2*time.Minute)), ms(finished))
	jqExec(t, db, `INSERT INTO results (job_id, lease_id, outcome, result, log, created_at) VALUES (?, ?, 1, ?, 'ran 3 tests', ?)`,
		id, l2, []byte(`{"score":100}`), ms(finished))
	// Two deliveries: the first died, an operator redelivered; the newest counts.
	jqExec(t, db, `INSERT INTO deliveries (job_id, platform_id, state, next_attempt_at, created_at) VALUES (?, ?, 3, 0, ?)`, id, p, ms(finished))
	jqExec(t, db, `INSERT INTO deliveries (job_id, platform_id, state, next_attempt_at, created_at) VALUES (?, ?, 1, 0, ?)`, id, p, ms(finished))
	jqExec(t, db, `INSERT INTO events (job_id, at, kind, actor) VALUES (?, ?, 'queued', 'platform:mooc')`, id, ms(jqBase))
	jqExec(t, db, `INSERT INTO events (job_id, at, kind, actor, lease_id) VALUES (?, ?, 'assigned', 'broker', ?)`, id, ms(jqBase), l1)
	jqExec(t, db, `INSERT INTO events (job_id, at, kind, actor, lease_id, detail) VALUES (?, ?, 'result', 'server:g2', ?, 'ok')`, id, ms(finished), l2)

	got, err := db.GetJob(ctx, id)
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	want := broker.Job{
		ID: id, PlatformID: p, Platform: "mooc", Name: "ex1", State: broker.JobDone,
		Tags: []string{"python3"}, Timeout: 30 * time.Second, JobData: []byte(`{"task":"t1"}`),
		RestrictPaths: []string{"/tasks"}, Attempts: 2, MaxAttempts: 3, Server: "g2",
		Result: []byte(`{"score":100}`), Log: "ran 3 tests", Delivery: broker.DeliveryPending,
		CreatedAt: jqBase, UpdatedAt: jqBase, FinishedAt: finished, TypeIDs: []int64{st.ID},
		History: []broker.Attempt{
			{LeaseID: l1, Number: 1, Server: "g1", AssignedAt: jqBase, Deadline: jqBase.Add(time.Minute),
				EndedAt: jqBase.Add(30 * time.Second), End: "disconnected", Reason: "stream closed"},
			{LeaseID: l2, Number: 2, Server: "g2", AssignedAt: jqBase.Add(time.Minute), Deadline: jqBase.Add(2 * time.Minute),
				EndedAt: finished, End: "ok"},
		},
		Events: []broker.Event{
			{At: jqBase, Kind: "queued", Actor: "platform:mooc"},
			{At: jqBase, Kind: "assigned", Actor: "broker", LeaseID: l1},
			{At: finished, Kind: "result", Actor: "server:g2", LeaseID: l2, Detail: "ok"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GetJob (-want +got):\n%s", diff)
	}
}

// A job still queued has no result, history or delivery; GetJob must say so
// with empty values, not fail on the missing rows.
func TestGetJobQueued(t *testing.T) {
	t.Parallel()
	db := setup(t)
	p := jqAddPlatform(t, db, "mooc")
	id := jqInsertJob(t, db, jqJob{platformID: p, name: "new", state: broker.JobQueued})
	got, err := db.GetJob(context.Background(), id)
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	if got.Result != nil || got.Log != "" || got.Delivery != broker.DeliveryNone || len(got.History) != 0 ||
		len(got.Events) != 0 || !got.FinishedAt.IsZero() || got.LeaseID != 0 {
		t.Errorf("GetJob of a queued job = %+v", got)
	}
}

// A FATAL result's error shows when the job itself carries none.
func TestGetJobResultError(t *testing.T) {
	t.Parallel()
	db := setup(t)
	p := jqAddPlatform(t, db, "mooc")
	id := jqInsertJob(t, db, jqJob{platformID: p, name: "bad", state: broker.JobFailed, finished: jqBase})
	jqExec(t, db, `INSERT INTO results (job_id, lease_id, outcome, error, created_at) VALUES (?, 1, 2, 'grader crashed', ?)`, id, ms(jqBase))
	got, err := db.GetJob(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Error != "grader crashed" || got.Result != nil {
		t.Errorf("GetJob error = %q result = %q, want the result's error and no result", got.Error, got.Result)
	}
}

func TestGetJobNotFound(t *testing.T) {
	t.Parallel()
	db := setup(t)
	_, err := db.GetJob(context.Background(), 42)
	if !errors.Is(err, broker.ErrNotFound) || !strings.Contains(err.Error(), "job 42") {
		t.Errorf("GetJob(42) = %v, want ErrNotFound saying \"job 42\"", err)
	}
}
