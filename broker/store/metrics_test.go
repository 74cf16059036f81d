package store

import (
	"context"
	"testing"

	"github.com/gradebroker/gradebroker/broker"
)

func TestUnresolvedDeadDeliveries(t *testing.T) {
	t.Parallel()
	db, _ := dlSetup(t)
	ctx := context.Background()
	p := dlPlatform(t, db, "a", "https://a.example/cb")
	final := Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`{}`)}
	dead := func(f Final) (int64, int64) {
		t.Helper()
		job, id := dlFinal(t, db, p, "j", "", f)
		if err := db.MarkDead(ctx, id, 3, "gave up"); err != nil {
			t.Fatal(err)
		}
		return job, id
	}
	count := func(want int) {
		t.Helper()
		if n, err := db.UnresolvedDeadDeliveries(ctx); err != nil || n != want {
			t.Fatalf("UnresolvedDeadDeliveries = %d, %v; want %d", n, err, want)
		}
	}
	count(0)
	_, first := dead(final)
	reopened, _ := dead(Final{State: broker.JobFailed, Error: "boom"})
	dlFinal(t, db, p, "j", "", final) // pending: not dead
	count(2)

	// Redelivered: the dead row stays, but the job has a newer delivery.
	if _, err := db.Redeliver(ctx, Redelivery{IDs: []int64{first}}); err != nil {
		t.Fatal(err)
	}
	// Reopened: the job is no longer final; its next final state delivers.
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Reopen(reopened, "op"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	count(0)
	if c, err := db.DeliveryCounts(ctx); err != nil || c[broker.DeliveryDead] != 2 {
		t.Fatalf("DeliveryCounts = %v, %v; want the 2 dead rows still counted there", c, err)
	}
}
