package store

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// dlClock is a settable clock for the store.
type dlClock = testutil.Clock

var dlBase = time.UnixMilli(1_800_000_000_000)

// dlSetup opens a fresh database whose clock the test moves.
func dlSetup(t *testing.T) (*DB, *dlClock) {
	t.Helper()
	clk := testutil.NewClock(dlBase)
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "gb.db"), Options{Now: clk.Now})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db, clk
}

func dlPlatform(t *testing.T, db *DB, name, returnURL string) int64 {
	t.Helper()
	p, err := db.AddPlatform(context.Background(), broker.Platform{Name: name, PublicKeyPEM: "key of " + name, ReturnURL: returnURL})
	if err != nil {
		t.Fatalf("AddPlatform %s: %v", name, err)
	}
	return p.ID
}

// dlFinal queues a job and makes it final with f, as the dispatcher does,
// and returns the job's and the delivery's ids.
func dlFinal(t *testing.T, db *DB, platformID int64, name, key string, f Final) (int64, int64) {
	t.Helper()
	tx, err := db.BeginJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: platformID, Name: name, IdempotencyKey: key,
		Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 3}, "test")
	if err != nil {
		t.Fatalf("InsertJob: %v", err)
	}
	if f.Actor == "" {
		f.Actor = "test"
	}
	did, err := tx.Finish(in.ID, f)
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return in.ID, did
}

func TestDeliveryMadeByFinishAndRead(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	jobID, id := dlFinal(t, db, p, "ex1", "k1", Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`{"score":1}`)})
	if id == 0 {
		t.Fatal("Finish made no delivery for a platform with a return_url")
	}
	want := Delivery{
		ID: id, State: broker.DeliveryPending, NextAttemptAt: dlBase, CreatedAt: dlBase,
		JobID: jobID, JobName: "ex1", IdempotencyKey: "k1", JobState: broker.JobDone,
		Result: []byte(`{"score":1}`), PlatformID: p, Platform: "mooc", Protocol: broker.ProtocolGradebroker,
		ReturnURL: "https://mooc.example/cb", PublicKeyPEM: "key of mooc",
	}
	got, err := db.Delivery(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Delivery (-want +got):\n%s", diff)
	}
	due, err := db.DueDeliveries(ctx, dlBase, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Delivery{want}, due); diff != "" {
		t.Errorf("DueDeliveries (-want +got):\n%s", diff)
	}
	if _, err := db.Delivery(ctx, id+100); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Delivery(unknown) = %v, want ErrNotFound", err)
	}

	// A cancelled job: no result, and the job's error.
	_, cid := dlFinal(t, db, p, "ex2", "", Final{State: broker.JobCancelled, Error: "cancelled by op"})
	got, err = db.Delivery(ctx, cid)
	if err != nil {
		t.Fatal(err)
	}
	if got.Result != nil || got.Error != "cancelled by op" || got.JobState != broker.JobCancelled || got.IdempotencyKey != "" {
		t.Errorf("Delivery of a cancelled job = %+v", got)
	}

	// A platform without a return_url gets no delivery.
	q := dlPlatform(t, db, "quiet", "")
	if _, id := dlFinal(t, db, q, "ex3", "", Final{State: broker.JobFailed, Error: "x"}); id != 0 {
		t.Errorf("Finish made delivery %d for a platform without a return_url", id)
	}
}

// A platform's protocol is stored with it, gradebroker's own unless given,
// changed by UpdatePlatform, and read with each of its deliveries, which the
// delivery worker sends in that protocol's form.
func TestPlatformProtocol(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "plain", PublicKeyPEM: "k", ReturnURL: "https://plain.example/cb"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Protocol != broker.ProtocolGradebroker {
		t.Errorf("AddPlatform without a protocol stored %q, want %q", p.Protocol, broker.ProtocolGradebroker)
	}
	other, err := db.AddPlatform(ctx, broker.Platform{Name: "other", Protocol: "other-proto", ReturnURL: "https://other.example/cb"})
	if err != nil {
		t.Fatal(err)
	}
	if other.Protocol != "other-proto" {
		t.Errorf("AddPlatform stored protocol %q, want other-proto", other.Protocol)
	}
	_, id := dlFinal(t, db, other.ID, "j", "", Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`1`)})
	d, err := db.Delivery(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if d.Protocol != "other-proto" {
		t.Errorf("Delivery.Protocol = %q, want other-proto", d.Protocol)
	}

	proto := broker.ProtocolGradebroker
	if _, err := db.UpdatePlatform(ctx, "other", PlatformUpdate{Protocol: &proto}); err != nil {
		t.Fatal(err)
	}
	list, err := db.ListPlatforms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list {
		if p.Name == "other" && p.Protocol != broker.ProtocolGradebroker {
			t.Errorf("after UpdatePlatform, ListPlatforms says %q", p.Protocol)
		}
	}
	if d, err = db.Delivery(ctx, id); err != nil || d.Protocol != broker.ProtocolGradebroker {
		t.Errorf("Delivery after the update: protocol %q, %v", d.Protocol, err)
	}
}

func TestMarkOnlyChangesPending(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	_, id := dlFinal(t, db, p, "ex1", "", Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`1`)})

	next := dlBase.Add(time.Minute)
	if err := db.MarkRetry(ctx, id, 1, next, "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	if due, _ := db.DueDeliveries(ctx, next.Add(-time.Millisecond), 10, 0); len(due) != 0 {
		t.Errorf("a delivery retried at %v is due before then: %+v", next, due)
	}
	if due, _ := db.DueDeliveries(ctx, next, 10, 0); len(due) != 1 || due[0].Tries != 1 || due[0].LastError != "HTTP 500" {
		t.Errorf("due at %v: %+v, want the delivery with 1 try and its error", next, due)
	}
	at := next.Add(time.Second)
	if err := db.MarkDelivered(ctx, id, 2, at); err != nil {
		t.Fatal(err)
	}
	got, _ := db.Delivery(ctx, id)
	if got.State != broker.DeliveryDelivered || got.Tries != 2 || !got.DeliveredAt.Equal(at) || got.LastError != "HTTP 500" {
		t.Errorf("after MarkDelivered: %+v", got)
	}
	// A late try of the same delivery must not undo the acknowledgement.
	for name, err := range map[string]error{
		"MarkRetry":     db.MarkRetry(ctx, id, 3, at, "late"),
		"MarkDead":      db.MarkDead(ctx, id, 3, "late"),
		"MarkDelivered": db.MarkDelivered(ctx, id, 3, at),
	} {
		if !errors.Is(err, broker.ErrFailedPrecondition) || !strings.Contains(err.Error(), "delivered") {
			t.Errorf("%s of a delivered delivery = %v, want ErrFailedPrecondition saying it is delivered", name, err)
		}
	}
	if got2, _ := db.Delivery(ctx, id); !cmp.Equal(got, got2) {
		t.Errorf("a refused Mark changed the row: %s", cmp.Diff(got, got2))
	}
	if err := db.MarkDead(ctx, id+100, 1, "x"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("MarkDead(unknown) = %v, want ErrNotFound", err)
	}
}

func TestDueDeliveriesOrderAndPerPlatformCap(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	a := dlPlatform(t, db, "a", "https://a.example/cb")
	b := dlPlatform(t, db, "b", "https://b.example/cb")
	var as, bs []int64
	for i := 0; i < 5; i++ {
		_, id := dlFinal(t, db, a, "a", "", Final{State: broker.JobFailed, Error: "x"})
		as = append(as, id)
		clk.Add(time.Millisecond)
	}
	for i := 0; i < 2; i++ {
		_, id := dlFinal(t, db, b, "b", "", Final{State: broker.JobFailed, Error: "x"})
		bs = append(bs, id)
		clk.Add(time.Millisecond)
	}
	ids := func(ds []Delivery) []int64 {
		var out []int64
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	now := clk.Now()
	all, err := db.DueDeliveries(ctx, now, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(append(append([]int64{}, as...), bs...), ids(all)); diff != "" {
		t.Errorf("all due, oldest first (-want +got):\n%s", diff)
	}
	// A backlog of a does not hide b.
	capped, err := db.DueDeliveries(ctx, now, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{as[0], as[1], bs[0], bs[1]}, ids(capped)); diff != "" {
		t.Errorf("two per platform (-want +got):\n%s", diff)
	}
	limited, _ := db.DueDeliveries(ctx, now, 3, 0)
	if diff := cmp.Diff(as[:3], ids(limited)); diff != "" {
		t.Errorf("limit 3 (-want +got):\n%s", diff)
	}
	// Retrying the oldest moves it behind the others.
	if err := db.MarkRetry(ctx, as[0], 1, now, "x"); err != nil {
		t.Fatal(err)
	}
	first, _ := db.DueDeliveries(ctx, now, 1, 0)
	if diff := cmp.Diff([]int64{as[1]}, ids(first)); diff != "" {
		t.Errorf("after a retry (-want +got):\n%s", diff)
	}
	if _, err := db.DueDeliveries(ctx, now, 0, 0); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("limit 0 = %v, want ErrInvalid", err)
	}
}

func TestListDeliveriesAndCounts(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	a := dlPlatform(t, db, "a", "https://a.example/cb")
	b := dlPlatform(t, db, "b", "https://b.example/cb")
	var ids []int64
	for i, p := range []int64{a, b, a, b, a} {
		_, id := dlFinal(t, db, p, "j", "", Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`{}`)})
		ids = append(ids, id)
		switch i {
		case 1:
			if err := db.MarkDead(ctx, id, 3, "gone"); err != nil {
				t.Fatal(err)
			}
		case 2:
			if err := db.MarkDelivered(ctx, id, 1, dlBase); err != nil {
				t.Fatal(err)
			}
		}
	}
	list := func(f DeliveryFilter) []int64 {
		t.Helper()
		ds, err := db.ListDeliveries(ctx, f)
		if err != nil {
			t.Fatalf("ListDeliveries(%+v): %v", f, err)
		}
		var out []int64
		for _, d := range ds {
			if d.Result != nil || d.PublicKeyPEM != "" {
				t.Errorf("ListDeliveries returned a result or key for %d", d.ID)
			}
			out = append(out, d.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    DeliveryFilter
		want []int64
	}{
		{"all", DeliveryFilter{}, []int64{ids[4], ids[3], ids[2], ids[1], ids[0]}},
		{"pending", DeliveryFilter{State: broker.DeliveryPending}, []int64{ids[4], ids[3], ids[0]}},
		{"dead", DeliveryFilter{State: broker.DeliveryDead}, []int64{ids[1]}},
		{"platform a", DeliveryFilter{Platform: "a"}, []int64{ids[4], ids[2], ids[0]}},
		{"platform id b", DeliveryFilter{PlatformID: b}, []int64{ids[3], ids[1]}},
		{"page", DeliveryFilter{Limit: 2, BeforeID: ids[3]}, []int64{ids[2], ids[1]}},
	} {
		if diff := cmp.Diff(tc.want, list(tc.f)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
	if _, err := db.ListDeliveries(ctx, DeliveryFilter{Platform: "nope"}); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("unknown platform = %v, want ErrNotFound", err)
	}
	if _, err := db.ListDeliveries(ctx, DeliveryFilter{State: 9}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("state 9 = %v, want ErrInvalid", err)
	}
	counts, err := db.DeliveryCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[broker.DeliveryState]int{broker.DeliveryPending: 3, broker.DeliveryDelivered: 1, broker.DeliveryDead: 1}
	if diff := cmp.Diff(want, counts); diff != "" {
		t.Errorf("DeliveryCounts (-want +got):\n%s", diff)
	}
}

func TestRedeliver(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	a := dlPlatform(t, db, "a", "https://a.example/cb")
	b := dlPlatform(t, db, "b", "https://b.example/cb")
	final := Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`{}`)}
	dead := func(p int64) (int64, int64) {
		t.Helper()
		job, id := dlFinal(t, db, p, "j", "", final)
		if err := db.MarkDead(ctx, id, 7, "gave up"); err != nil {
			t.Fatal(err)
		}
		return job, id
	}
	jobA1, deadA1 := dead(a)
	_, deadA2 := dead(a)
	_, deadB := dead(b)
	_, pending := dlFinal(t, db, a, "j", "", final)
	if err := db.MarkRetry(ctx, pending, 2, dlBase.Add(2*time.Hour), "HTTP 503"); err != nil {
		t.Fatal(err)
	}
	_, delivered := dlFinal(t, db, b, "j", "", final)
	if err := db.MarkDelivered(ctx, delivered, 1, dlBase); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	now := clk.Now()

	for _, sel := range []Redelivery{{}, {IDs: []int64{deadA1}, AllDead: true}, {Platform: "a", AllDead: true}} {
		if _, err := db.Redeliver(ctx, sel); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Redeliver(%+v) = %v, want ErrInvalid", sel, err)
		}
	}
	if _, err := db.Redeliver(ctx, Redelivery{Platform: "nope"}); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("unknown platform = %v, want ErrNotFound", err)
	}
	if _, err := db.Redeliver(ctx, Redelivery{PlatformID: b, Platform: "a"}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("platform id of b with the name a = %v, want ErrInvalid", err)
	}
	// One bad id refuses the whole request, naming it.
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{deadA1, delivered}}); !errors.Is(err, broker.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "acknowledged") {
		t.Errorf("redeliver a delivered one = %v, want ErrFailedPrecondition saying it was acknowledged", err)
	}
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{deadA1, 9999}}); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("redeliver an unknown one = %v, want ErrNotFound", err)
	}
	if due, _ := db.DueDeliveries(ctx, now, 100, 0); len(due) != 0 {
		t.Fatalf("a refused Redeliver scheduled %d deliveries", len(due))
	}

	// By id, repeated: one new delivery for the dead one; the pending one
	// is due now with its id and tries.
	n, err := db.Redeliver(ctx, Redelivery{IDs: []int64{deadA1, pending, deadA1}})
	if err != nil || n != 2 {
		t.Fatalf("Redeliver by ids = %d, %v; want 2", n, err)
	}
	due, err := db.DueDeliveries(ctx, now, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 2 {
		t.Fatalf("due after Redeliver: %+v, want 2", due)
	}
	if d := due[0]; d.ID != pending || d.Tries != 2 {
		t.Errorf("first due = %+v, want pending delivery %d with its 2 tries", d, pending)
	}
	if d := due[1]; d.ID <= deadA1 || d.JobID != jobA1 || d.Tries != 0 || !d.CreatedAt.Equal(now) || d.State != broker.DeliveryPending {
		t.Errorf("second due = %+v, want a new delivery of job %d created now without tries", d, jobA1)
	}
	old, _ := db.Delivery(ctx, deadA1)
	if old.State != broker.DeliveryDead || !old.Superseded || old.LastError != "gave up" {
		t.Errorf("the redelivered dead row = %+v, want it dead, superseded, with its error", old)
	}
	// Now superseded: refused by id, skipped in bulk.
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{deadA1}}); !errors.Is(err, broker.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "superseded") {
		t.Errorf("redeliver a superseded one = %v, want ErrFailedPrecondition saying superseded", err)
	}

	// By platform: only a's remaining dead one.
	if n, err := db.Redeliver(ctx, Redelivery{Platform: "a"}); err != nil || n != 1 {
		t.Errorf("Redeliver platform a = %d, %v; want 1", n, err)
	}
	if got, _ := db.Delivery(ctx, deadA2); !got.Superseded {
		t.Errorf("dead delivery %d of a was not redelivered", deadA2)
	}
	// All dead: b's, and nothing twice.
	if n, err := db.Redeliver(ctx, Redelivery{AllDead: true}); err != nil || n != 1 {
		t.Errorf("Redeliver all dead = %d, %v; want 1 (b's)", n, err)
	}
	if got, _ := db.Delivery(ctx, deadB); !got.Superseded {
		t.Errorf("dead delivery %d of b was not redelivered", deadB)
	}
	if n, err := db.Redeliver(ctx, Redelivery{AllDead: true}); err != nil || n != 0 {
		t.Errorf("second Redeliver all dead = %d, %v; want 0", n, err)
	}
	// A platform's id and name may both be given when they agree.
	if n, err := db.Redeliver(ctx, Redelivery{PlatformID: a, Platform: "a"}); err != nil || n != 0 {
		t.Errorf("Redeliver platform a by id and name = %d, %v; want 0 (nothing is dead)", n, err)
	}
}

// A dead delivery of a job that was reopened is not sent again: the job's
// next final state will be.
func TestRedeliverSkipsReopenedJobs(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "a", "https://a.example/cb")
	job, id := dlFinal(t, db, p, "j", "", Final{State: broker.JobFailed, Error: "boom"})
	if err := db.MarkDead(ctx, id, 5, "gave up"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Reopen(job, "op"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n, err := db.Redeliver(ctx, Redelivery{AllDead: true}); err != nil || n != 0 {
		t.Errorf("Redeliver all dead = %d, %v; want 0", n, err)
	}
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{id}}); !errors.Is(err, broker.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "queued") {
		t.Errorf("Redeliver by id = %v, want ErrFailedPrecondition saying the job is queued", err)
	}
}

// What a run used and the limit that ended it are kept with its lease:
// every attempt shows its own, and the callback the last attempt's.
func TestRunUsageKeptWithItsLease(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	first := &broker.Usage{CPUTime: 1500 * time.Microsecond, PeakMemory: 12 << 20, WallTime: 2 * time.Second}
	last := &broker.Usage{CPUTime: 3 * time.Second, PeakMemory: 1 << 30, WallTime: 4*time.Second + 7*time.Microsecond}
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: p, Name: "j", Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 3}, "test")
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { return tx.AssignInserted(in.ID, 1, 0, "g1", 1, dlBase.Add(time.Minute)) },
		func() error { return tx.EndLeaseRun(1, broker.EndTemporary, "flaky", first, "") },
		func() error { return tx.Requeue(in.ID, 0, "test", 1, "again") },
		func() error { _, err := tx.Assign(in.ID, 2, 0, "g1", 2, dlBase.Add(time.Minute)); return err },
		func() error { return tx.EndLeaseRun(2, broker.EndFatal, "memory limit", last, broker.LimitMemory) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	did, err := tx.Finish(in.ID, Final{PlatformID: p, State: broker.JobFailed, LeaseID: 2, Outcome: broker.OutcomeFatal, Error: "memory limit", Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	j, err := db.GetJob(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		Usage *broker.Usage
		Limit broker.Limit
	}
	var got []run
	for _, a := range j.History {
		got = append(got, run{a.Usage, a.Limit})
	}
	if diff := cmp.Diff([]run{{first, ""}, {last, broker.LimitMemory}}, got); diff != "" {
		t.Errorf("attempts' usage (-want +got):\n%s", diff)
	}
	d, err := db.Delivery(ctx, did)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(run{last, broker.LimitMemory}, run{d.Usage, d.Limit}); diff != "" {
		t.Errorf("the delivery's usage (-want +got):\n%s", diff)
	}

	// A job that never ran, or whose run reported nothing, has none.
	_, cid := dlFinal(t, db, p, "never", "", Final{State: broker.JobCancelled, Error: "cancelled"})
	if d, err := db.Delivery(ctx, cid); err != nil || d.Usage != nil || d.Limit != "" {
		t.Errorf("delivery of a job that never ran: usage %v, limit %q, err %v", d.Usage, d.Limit, err)
	}
}
