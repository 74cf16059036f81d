package maint

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

const day = 24 * time.Hour

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

func TestRetentionDeletesOldFinishedJobsInSmallBatches(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	t0 := e.clk.Now()
	big := []byte(`{"data":"` + strings.Repeat("x", 8<<10) + `"}`)

	var old []job
	for range 12 {
		j := e.finished(e.mooc, broker.JobDone, big)
		e.must(e.db.MarkDelivered(ctx, j.delivery, 1, t0.Add(time.Second)))
		old = append(old, j)
	}
	oldFailed := e.finished(e.quiet, broker.JobFailed, big)
	neverRan := e.cancelledQueued()
	pending := e.finished(e.mooc, broker.JobFailed, nil) // its result never got through
	e.must(e.db.MarkRetry(ctx, pending.delivery, 4, t0.Add(9*day), "503"))
	open := e.queued()
	tx, err := e.db.BeginJobs(ctx)
	e.must(err)
	e.must(tx.UseJTI("mooc", "old", t0.Add(10*time.Minute)))
	e.must(tx.UseJTI("mooc", "live", t0.Add(9*day)))
	e.must(tx.Commit())

	e.clk.Add(8 * day)
	recent := e.finished(e.mooc, broker.JobDone, nil)
	e.must(e.db.MarkDelivered(ctx, recent.delivery, 1, e.clk.Now()))
	if _, err := e.db.CheckpointWAL(ctx, true); err != nil {
		t.Fatal(err)
	}
	sizeBefore := fileSize(t, e.db.Path())

	m := New(e.db, Config{Retention: 7 * day, BatchSize: 5, BatchPause: time.Millisecond, VacuumPages: 64, Now: e.clk.Now}, e.log)
	rep, err := m.RunRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 14 jobs: batches of 5, 5, 4; then one batch each for deliveries and
	// token ids.
	if rep.Jobs != 14 || rep.TokenIDs != 1 || rep.Batches != 5 {
		t.Errorf("report %+v, want 14 jobs, 1 token id, 5 batches", rep)
	}
	if rep.PagesFreed == 0 {
		t.Errorf("report %+v: the vacuum freed no page", rep)
	}
	for _, id := range []int64{oldFailed.id, neverRan, old[0].id, old[11].id} {
		if _, err := e.db.GetJob(ctx, id); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("old job %d: %v, want deleted", id, err)
		}
	}
	for what, id := range map[string]int64{"recent": recent.id, "pending delivery": pending.id, "still queued": open} {
		if _, err := e.db.GetJob(ctx, id); err != nil {
			t.Errorf("%s job %d: %v, want kept", what, id, err)
		}
	}
	if counts, _ := e.db.DeliveryCounts(ctx); counts[broker.DeliveryDelivered] != 1 || counts[broker.DeliveryPending] != 1 {
		t.Errorf("deliveries left: %v, want the recent delivered one and the pending one", counts)
	}
	if free, _, _ := e.db.FreePages(ctx); free != 0 {
		t.Errorf("%d free pages left after retention, want 0", free)
	}
	if n := fileSize(t, e.db.Path()+"-wal"); n != 0 {
		t.Errorf("-wal file is %d bytes after retention, want truncated to 0", n)
	}
	if after := fileSize(t, e.db.Path()); after >= sizeBefore {
		t.Errorf("database file %d -> %d bytes, want smaller", sizeBefore, after)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "msg=retention") || !strings.Contains(logs, "jobs=14") {
		t.Errorf("retention is not logged:\n%s", e.logs.String())
	}

	// Nothing left to do: nothing deleted, no batch beyond the three looks.
	rep, err = m.RunRetention(ctx)
	if err != nil || rep.Jobs+rep.Deliveries+rep.TokenIDs != 0 || rep.Batches != 3 {
		t.Errorf("second run: %+v, %v; want nothing deleted in 3 looks", rep, err)
	}
}

func TestMaintainerRunsOnItsTimers(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	j := e.finished(e.quiet, broker.JobDone, nil)
	e.clk.Add(8 * day)
	m := New(e.db, Config{RetentionDelay: 5 * time.Millisecond, Interval: 10 * time.Millisecond,
		CheckpointInterval: 10 * time.Millisecond, BatchPause: time.Millisecond, Now: e.clk.Now}, e.log)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err == nil {
		t.Error("a second Start succeeded")
	}
	testutil.Eventually(t, "retention to delete the old job", func() bool {
		_, err := e.db.GetJob(ctx, j.id)
		return errors.Is(err, broker.ErrNotFound)
	})
	m.Stop()
	m.Stop()
	// The checkpoint timer keeps the -wal file short even without
	// deletions; after Stop nothing runs.
	if d := m.Config(); d.Retention != 7*day || d.BatchSize != 500 {
		t.Errorf("defaults: %+v", d)
	}
}

func TestCheckpointTruncatesTheWAL(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for range 20 {
		e.finished(e.mooc, broker.JobDone, nil)
	}
	wal := e.db.Path() + "-wal"
	if fileSize(t, wal) == 0 {
		t.Fatal("the writes left the -wal file empty")
	}
	m := New(e.db, Config{Now: e.clk.Now}, e.log)
	if err := m.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := fileSize(t, wal); n != 0 {
		t.Errorf("-wal file is %d bytes after Checkpoint, want 0", n)
	}
	// The data is in the main file: a fresh open sees it.
	db2, err := store.Open(context.Background(), e.db.Path(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	jobs, err := db2.ListJobs(context.Background(), store.JobFilter{})
	if err != nil || len(jobs) != 20 {
		t.Errorf("after the checkpoint a fresh open lists %d jobs, %v; want 20", len(jobs), err)
	}
}
