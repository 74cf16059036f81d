package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

const day = 24 * time.Hour

// mtJob is a job made by mtRun.
type mtJob struct {
	id, delivery int64
}

// mtRun queues a job, runs it under a lease and makes it final with state,
// with a result, events and a delivery when the platform has a return URL.
func mtRun(t *testing.T, db *DB, platformID int64, name string, state broker.JobState) mtJob {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: platformID, Name: name, Timeout: time.Minute,
		JobData: []byte(`{"task":"` + name + `"}`), MaxAttempts: 3}, "test")
	if err != nil {
		t.Fatal(err)
	}
	leaseID := in.ID * 10
	if _, err := tx.Assign(in.ID, leaseID, 1, "g1", 1, tx.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	f := Final{State: state, LeaseID: leaseID, Outcome: broker.OutcomeOK, Result: []byte(`{"score":1}`), Log: "ran", Actor: "server:g1"}
	if state != broker.JobDone {
		f.Outcome, f.Error = broker.OutcomeFatal, "broken"
	}
	if err := tx.EndLease(leaseID, "ok", ""); err != nil {
		t.Fatal(err)
	}
	did, err := tx.Finish(in.ID, f)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return mtJob{in.ID, did}
}

// mtQueue queues a job and, with assign, gives it a lease; it stays open.
func mtQueue(t *testing.T, db *DB, platformID int64, name string, assign bool) int64 {
	t.Helper()
	tx, err := db.BeginJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: platformID, Name: name, Timeout: time.Minute,
		JobData: []byte(`{}`), MaxAttempts: 3}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if assign {
		if _, err := tx.Assign(in.ID, in.ID*10, 1, "g1", 1, tx.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return in.ID
}

// rows counts the rows of table that hang off job id.
func rows(t *testing.T, db *DB, table string, jobID int64) int {
	t.Helper()
	var n int
	if err := db.r.QueryRow(`SELECT COUNT(*) FROM `+table+` WHERE job_id = ?`, jobID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDeleteFinishedJobsKeepsWhatTheRulesKeep(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	quiet := dlPlatform(t, db, "quiet", "")
	t0 := clk.Now()

	// Finished eight days ago (retention: seven).
	oldDone := mtRun(t, db, p, "old-done", broker.JobDone)
	mustDo(t, db.MarkDelivered(ctx, oldDone.delivery, 1, t0.Add(time.Minute)))
	oldNeverRan, _ := dlFinal(t, db, quiet, "never-ran", "", Final{State: broker.JobCancelled, Error: "cancelled while queued"})
	oldPending := mtRun(t, db, p, "old-pending", broker.JobFailed)
	mustDo(t, db.MarkRetry(ctx, oldPending.delivery, 5, t0.Add(9*day), "503"))
	oldDeadLongAgo := mtRun(t, db, p, "old-dead", broker.JobDone)
	mustDo(t, db.MarkDead(ctx, oldDeadLongAgo.delivery, 1, "404"))
	oldDeadRecently := mtRun(t, db, p, "old-dead-recently", broker.JobDone)
	mustDo(t, db.MarkRetry(ctx, oldDeadRecently.delivery, 9, t0.Add(2*day), "503"))
	mustDo(t, db.MarkDead(ctx, oldDeadRecently.delivery, 10, "503"))
	oldRedelivered := mtRun(t, db, p, "old-redelivered", broker.JobDone)
	mustDo(t, db.MarkDead(ctx, oldRedelivered.delivery, 1, "404"))
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{oldRedelivered.delivery}}); err != nil {
		t.Fatal(err)
	}
	var again int64
	mustDo(t, db.r.QueryRow(`SELECT MAX(id) FROM deliveries WHERE job_id = ?`, oldRedelivered.id).Scan(&again))
	mustDo(t, db.MarkDelivered(ctx, again, 1, t0.Add(time.Hour)))
	oldQueued := mtQueue(t, db, p, "old-queued", false)
	oldAssigned := mtQueue(t, db, p, "old-assigned", true)

	clk.Add(8 * day)
	recent := mtRun(t, db, p, "recent", broker.JobDone)
	mustDo(t, db.MarkDelivered(ctx, recent.delivery, 1, clk.Now()))

	cutoff := clk.Now().Add(-7 * day)
	n, cur, err := db.DeleteFinishedJobs(ctx, cutoff, RetentionCursor{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("deleted %d jobs, want 4", n)
	}
	if cur.ID == 0 {
		t.Errorf("cursor did not move: %+v", cur)
	}
	gone := map[string]int64{"done and delivered": oldDone.id, "cancelled before it ran": oldNeverRan,
		"newest delivery dead for 8 days": oldDeadLongAgo.id, "dead delivery superseded by a delivered one": oldRedelivered.id}
	for what, id := range gone {
		if _, err := db.GetJob(ctx, id); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("%s (job %d): GetJob = %v, want ErrNotFound", what, id, err)
		}
		for _, table := range []string{"events", "leases", "results", "deliveries", "job_types"} {
			if k := rows(t, db, table, id); k != 0 {
				t.Errorf("%s (job %d): %d rows left in %s", what, id, k, table)
			}
		}
	}
	kept := map[string]int64{"delivery pending": oldPending.id, "delivery dead for 6 days": oldDeadRecently.id,
		"queued": oldQueued, "assigned": oldAssigned, "finished a moment ago": recent.id}
	for what, id := range kept {
		j, err := db.GetJob(ctx, id)
		if err != nil {
			t.Errorf("%s (job %d) was deleted: %v", what, id, err)
			continue
		}
		if k := rows(t, db, "events", id); k == 0 {
			t.Errorf("%s (job %d) lost its events", what, id)
		}
		_ = j
	}
	if k := rows(t, db, "results", recent.id); k != 1 {
		t.Errorf("the recent job has %d results, want 1", k)
	}

	// A second pass from the cursor finds nothing; the kept ones stay.
	n, _, err = db.DeleteFinishedJobs(ctx, cutoff, cur, 100)
	if err != nil || n != 0 {
		t.Errorf("second pass deleted %d, %v; want 0", n, err)
	}
	// Once the dead delivery has been dead for the retention, its job goes.
	clk.Add(2 * day)
	n, _, err = db.DeleteFinishedJobs(ctx, clk.Now().Add(-7*day), RetentionCursor{}, 100)
	if err != nil || n != 1 {
		t.Errorf("after the dead delivery aged: deleted %d, %v; want 1", n, err)
	}
	if _, err := db.GetJob(ctx, oldDeadRecently.id); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("job with a delivery dead for 8 days: GetJob = %v, want ErrNotFound", err)
	}
}

func TestDeleteFinishedJobsInBatches(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "quiet", "")
	pcb := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	for i := range 25 {
		dlFinal(t, db, p, fmt.Sprint("j", i), "", Final{State: broker.JobDone})
		if i == 3 {
			mtRun(t, db, pcb, "pending", broker.JobDone) // kept: its delivery is pending
		}
		clk.Add(time.Second)
	}
	clk.Add(8 * day)
	cutoff := clk.Now().Add(-7 * day)
	var got []int
	cur := RetentionCursor{}
	for {
		n, next, err := db.DeleteFinishedJobs(ctx, cutoff, cur, 10)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
		cur = next
		if n < 10 {
			break
		}
	}
	if diff := cmp.Diff([]int{10, 10, 5}, got); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
	var left int
	mustDo(t, db.r.QueryRow(`SELECT COUNT(*) FROM jobs`).Scan(&left))
	if left != 1 {
		t.Errorf("%d jobs left, want the one with a pending delivery", left)
	}
	if _, _, err := db.DeleteFinishedJobs(ctx, cutoff, cur, 0); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("batch size 0: %v, want ErrInvalid", err)
	}
}

func TestDeleteDeliveredDeliveriesAndTokenIDs(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	t0 := clk.Now()
	// A failed job whose result was delivered, reopened by an operator and
	// finished again: the job stays for its new, pending delivery; the old
	// delivered one goes.
	j := mtRun(t, db, p, "reopened", broker.JobFailed)
	mustDo(t, db.MarkDelivered(ctx, j.delivery, 1, t0))
	tx, err := db.BeginJobs(ctx)
	mustDo(t, err)
	if _, err := tx.Reopen(j.id, "operator:alice"); err != nil {
		t.Fatal(err)
	}
	second, err := tx.Finish(j.id, Final{State: broker.JobCancelled, Actor: "operator:alice", Error: "cancelled"})
	mustDo(t, err)
	mustDo(t, tx.Commit())
	recent := mtRun(t, db, p, "recent", broker.JobDone)
	mustDo(t, db.MarkDelivered(ctx, recent.delivery, 1, t0.Add(7*day+time.Hour)))

	tx, err = db.BeginJobs(ctx)
	mustDo(t, err)
	mustDo(t, tx.UseJTI("mooc", "expired", t0.Add(8*day-time.Second)))
	mustDo(t, tx.UseJTI("mooc", "expired-too", t0.Add(time.Minute)))
	mustDo(t, tx.UseJTI("mooc", "live", t0.Add(8*day+time.Minute)))
	mustDo(t, tx.Commit())

	clk.Add(8 * day)
	n, err := db.DeleteDeliveredDeliveries(ctx, clk.Now().Add(-7*day), 100)
	if err != nil || n != 1 {
		t.Fatalf("DeleteDeliveredDeliveries = %d, %v; want 1", n, err)
	}
	if _, err := db.Delivery(ctx, j.delivery); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("old delivered delivery: %v, want ErrNotFound", err)
	}
	for _, id := range []int64{second, recent.delivery} {
		if _, err := db.Delivery(ctx, id); err != nil {
			t.Errorf("delivery %d: %v, want kept", id, err)
		}
	}
	if _, err := db.GetJob(ctx, j.id); err != nil {
		t.Errorf("the reopened job: %v, want kept", err)
	}

	n, err = db.DeleteExpiredTokenIDs(ctx, clk.Now(), 1)
	if err != nil || n != 1 {
		t.Fatalf("DeleteExpiredTokenIDs batch 1 = %d, %v; want 1", n, err)
	}
	n, err = db.DeleteExpiredTokenIDs(ctx, clk.Now(), 100)
	if err != nil || n != 1 {
		t.Fatalf("DeleteExpiredTokenIDs = %d, %v; want 1", n, err)
	}
	var left []string
	r, err := db.r.Query(`SELECT jti FROM token_ids`)
	mustDo(t, err)
	for r.Next() {
		var s string
		mustDo(t, r.Scan(&s))
		left = append(left, s)
	}
	r.Close()
	if diff := cmp.Diff([]string{"live"}, left); diff != "" {
		t.Errorf("token ids left (-want +got):\n%s", diff)
	}
	// The expired id may be used again: a replay of it is refused for its
	// expiry instead.
	tx, err = db.BeginJobs(ctx)
	mustDo(t, err)
	defer tx.Rollback()
	mustDo(t, tx.UseJTI("mooc", "expired", clk.Now().Add(time.Minute)))
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestIncrementalVacuumAndCheckpointShrinkTheFiles(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	if mode, err := db.AutoVacuum(ctx); err != nil || mode != 2 {
		t.Fatalf("auto_vacuum = %d, %v; want 2 (incremental)", mode, err)
	}
	p := dlPlatform(t, db, "quiet", "")
	big := []byte(`{"data":"` + strings.Repeat("x", 16<<10) + `"}`)
	for i := range 200 {
		tx, err := db.BeginJobs(ctx)
		mustDo(t, err)
		in, err := tx.InsertJob(broker.NewJob{PlatformID: p, Name: fmt.Sprint("big", i), Timeout: time.Minute,
			JobData: big, MaxAttempts: 1}, "test")
		mustDo(t, err)
		_, err = tx.Finish(in.ID, Final{State: broker.JobDone, Result: big, Actor: "test"})
		mustDo(t, err)
		mustDo(t, tx.Commit())
	}
	wal := db.Path() + "-wal"
	if _, err := db.CheckpointWAL(ctx, true); err != nil {
		t.Fatal(err)
	}
	before := fileSize(t, db.Path())
	_, pagesBefore, err := db.FreePages(ctx)
	mustDo(t, err)

	clk.Add(8 * day)
	for {
		n, _, err := db.DeleteFinishedJobs(ctx, clk.Now().Add(-7*day), RetentionCursor{}, 50)
		mustDo(t, err)
		if n < 50 {
			break
		}
	}
	free, _, err := db.FreePages(ctx)
	mustDo(t, err)
	if free < 100 {
		t.Fatalf("freelist has %d pages after deleting ~6 MiB, want many", free)
	}
	if fileSize(t, wal) == 0 {
		t.Fatal("the deletions left the -wal file empty; the checkpoint test below proves nothing")
	}
	for steps := 0; free > 0; steps++ {
		left, err := db.IncrementalVacuum(ctx, 256)
		mustDo(t, err)
		if left >= free || steps > 1000 {
			t.Fatalf("incremental vacuum left %d free pages of %d", left, free)
		}
		free = left
	}
	_, pagesAfter, err := db.FreePages(ctx)
	mustDo(t, err)
	if pagesAfter >= pagesBefore/2 {
		t.Errorf("page_count %d -> %d, want it at least halved", pagesBefore, pagesAfter)
	}

	cp, err := db.CheckpointWAL(ctx, true)
	if err != nil || cp.Busy {
		t.Fatalf("CheckpointWAL(TRUNCATE) = %+v, %v", cp, err)
	}
	if n := fileSize(t, wal); n != 0 {
		t.Errorf("-wal file is %d bytes after a TRUNCATE checkpoint, want 0", n)
	}
	if after := fileSize(t, db.Path()); after >= before/2 {
		t.Errorf("database file %d -> %d bytes, want it at least halved", before, after)
	}
	if _, err := db.CheckpointWAL(ctx, false); err != nil {
		t.Errorf("PASSIVE checkpoint: %v", err)
	}
}

func TestFinalCountsAndDeadDeliveries(t *testing.T) {
	t.Parallel()
	db, clk := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "mooc", "https://mooc.example/cb")
	old := mtRun(t, db, p, "old", broker.JobFailed)
	mustDo(t, db.MarkDead(ctx, old.delivery, 3, "500"))
	clk.Add(time.Hour)
	since := clk.Now()
	mtRun(t, db, p, "ok1", broker.JobDone)
	mtRun(t, db, p, "ok2", broker.JobDone)
	bad := mtRun(t, db, p, "bad", broker.JobFailed)
	dlFinal(t, db, p, "gone", "", Final{State: broker.JobCancelled})
	mtQueue(t, db, p, "open", false)
	got, err := db.FinalCounts(ctx, since)
	mustDo(t, err)
	want := map[broker.JobState]int{broker.JobDone: 2, broker.JobFailed: 1, broker.JobCancelled: 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FinalCounts (-want +got):\n%s", diff)
	}

	mustDo(t, db.MarkDead(ctx, bad.delivery, 1, "404"))
	dead, total, err := db.DeadDeliveries(ctx, 10)
	mustDo(t, err)
	if total != 2 || len(dead) != 2 || dead[0].ID != old.delivery || dead[1].ID != bad.delivery || dead[0].Platform != "mooc" ||
		dead[0].LastError != "500" || !dead[0].DiedAt.Equal(since.Add(-time.Hour)) {
		t.Errorf("DeadDeliveries = %+v, %d", dead, total)
	}
	// A redelivery supersedes the dead one: it no longer needs anyone.
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{old.delivery}}); err != nil {
		t.Fatal(err)
	}
	dead, total, err = db.DeadDeliveries(ctx, 1)
	mustDo(t, err)
	if total != 1 || len(dead) != 1 || dead[0].ID != bad.delivery {
		t.Errorf("after redelivery: DeadDeliveries = %+v, %d; want only %d", dead, total, bad.delivery)
	}
}

func TestServerDrainedFlag(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	if _, err := db.AddServerType(ctx, "py", nil); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, name := range []string{"g1", "g2"} {
		s, err := db.AddServer(ctx, broker.Server{Name: name, Cert: ident(name), Type: "py", MaxConcurrentJobs: 1})
		mustDo(t, err)
		ids = append(ids, s.ID)
	}
	set := func(id int64, drained bool) {
		tx, err := db.BeginJobs(ctx)
		mustDo(t, err)
		defer tx.Rollback()
		mustDo(t, tx.SetServerDrained(id, drained))
		mustDo(t, tx.Commit())
	}
	set(ids[1], true)
	got, err := db.DrainedServers(ctx)
	mustDo(t, err)
	if diff := cmp.Diff([]int64{ids[1]}, got); diff != "" {
		t.Errorf("DrainedServers (-want +got):\n%s", diff)
	}
	set(ids[1], false)
	if got, err := db.DrainedServers(ctx); err != nil || len(got) != 0 {
		t.Errorf("after undrain: DrainedServers = %v, %v", got, err)
	}
}

// The background checkpointer never writes: a WAL that a TRUNCATE
// checkpoint emptied stays empty while it runs. (Its connection used to set
// the writer's journal-mode and auto-vacuum pragmas when it opened, at its
// first tick, which wrote page 1 into the WAL; retention's test then saw a
// -wal file of 32 bytes now and then.)
func TestCheckpointerLeavesAnEmptyWALEmpty(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	dlPlatform(t, db, "mooc", "")
	if cp, err := db.CheckpointWAL(ctx, true); err != nil || cp.Busy {
		t.Fatalf("CheckpointWAL(TRUNCATE) = %+v, %v", cp, err)
	}
	wal := db.Path() + "-wal"
	if n := fileSize(t, wal); n != 0 {
		t.Fatalf("-wal file is %d bytes after a TRUNCATE checkpoint, want 0", n)
	}
	runs := db.cpRuns.Load()
	testutil.Eventually(t, "two more background checkpoints", func() bool { return db.cpRuns.Load() >= runs+2 })
	if n := fileSize(t, wal); n != 0 {
		t.Errorf("-wal file is %d bytes after the checkpointer ran on an empty WAL, want 0", n)
	}
}

// A truncating checkpoint is never refused because the background
// checkpointer is running one: SQLite answers busy at once to a second
// checkpoint, so the two take turns.
func TestCheckpointWALTakesTurnsWithTheCheckpointer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "gb.db"), Options{checkpointEvery: 100 * time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	start := db.cpRuns.Load()
	for i := 0; i < 100 || db.cpRuns.Load() < start+100; i++ {
		dlPlatform(t, db, fmt.Sprint("p", i), "")
		cp, err := db.CheckpointWAL(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Busy {
			t.Fatalf("TRUNCATE checkpoint %d busy (%+v) with the checkpointer running", i, cp)
		}
	}
}

// A jti used twice by the same signer is refused as ErrTokenReused, which
// the platform API tells apart from other conflicts; another signer may use
// the same jti.
func TestUseJTIRefusesReuse(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	use := func(signer, jti string) error {
		t.Helper()
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := tx.UseJTI(signer, jti, time.Now().Add(time.Hour)); err != nil {
			return err
		}
		return tx.Commit()
	}
	if err := use("mooc", "j1"); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := use("mooc", "j1"); !errors.Is(err, ErrTokenReused) || !strings.Contains(err.Error(), `"j1"`) {
		t.Errorf("second use: got %v, want ErrTokenReused naming the jti", err)
	}
	if err := use("contest", "j1"); err != nil {
		t.Errorf("same jti from another signer: %v", err)
	}
}

// Each maintenance batch refuses a size of zero: a caller that computed
// one by mistake would otherwise loop doing nothing.
func TestMaintenanceRefusesAnEmptyBatch(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"DeleteDeliveredDeliveries": func() error { _, err := db.DeleteDeliveredDeliveries(ctx, time.Now(), 0); return err },
		"DeleteExpiredTokenIDs":     func() error { _, err := db.DeleteExpiredTokenIDs(ctx, time.Now(), 0); return err },
		"IncrementalVacuum":         func() error { _, err := db.IncrementalVacuum(ctx, 0); return err },
		"DeadDeliveries":            func() error { _, _, err := db.DeadDeliveries(ctx, 0); return err },
	} {
		if err := call(); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s with 0: %v, want ErrInvalid", name, err)
		}
	}
}
