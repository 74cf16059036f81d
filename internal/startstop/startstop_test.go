package startstop

import (
	"context"
	"errors"
	"sync"
	"testing"
)

type ctxKey struct{}

// A run keeps the start context's values but not its cancellation, and
// ends with Stop, which waits for its goroutines after calling prepare
// while they still run.
func TestStartRunsUntilStop(t *testing.T) {
	t.Parallel()
	var b Base
	startCtx, cancelStart := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	run, err := b.Start(startCtx)
	if err != nil {
		t.Fatal(err)
	}
	if run.Value(ctxKey{}) != "v" {
		t.Error("the run context lost the start context's values")
	}
	cancelStart()
	if run.Err() != nil {
		t.Fatal("the start context's cancellation ended the run")
	}
	running := make(chan struct{})
	var ended bool
	if !b.Go(func(ctx context.Context) { close(running); <-ctx.Done(); ended = true }) {
		t.Fatal("Go refused a running service")
	}
	<-running
	var prepared bool
	b.Stop(func() {
		if run.Err() != nil {
			t.Error("prepare ran after the run context ended")
		}
		prepared = true
	})
	if !prepared || !ended {
		t.Fatalf("Stop returned with prepare run %v and the goroutine ended %v; want both", prepared, ended)
	}
	if !b.Stopped() || b.Err() != nil {
		t.Fatalf("after Stop: stopped %v, Err %v; want stopped, nil", b.Stopped(), b.Err())
	}
	if b.Go(func(context.Context) { t.Error("a goroutine started after Stop") }) {
		t.Error("Go after Stop = true")
	}
	if _, err := b.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop: %v, want ErrStopped", err)
	}
}

func TestStartTwiceFails(t *testing.T) {
	t.Parallel()
	var b Base
	if _, err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Stop(nil)
	if _, err := b.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v, want ErrStarted", err)
	}
}

// Stop before Start is safe, runs no prepare, and keeps the service from
// starting later.
func TestStopBeforeStart(t *testing.T) {
	t.Parallel()
	var b Base
	b.Stop(func() { t.Error("prepare ran for a service never started") })
	b.Stop(nil)
	if !b.Stopped() {
		t.Error("Done not closed by a Stop before Start")
	}
	if _, err := b.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop: %v, want ErrStopped", err)
	}
}

// Concurrent Stops all return once the service stopped, and prepare runs
// once.
func TestConcurrentStopsPrepareOnce(t *testing.T) {
	t.Parallel()
	var b Base
	if _, err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	b.Go(func(ctx context.Context) { <-ctx.Done(); <-release })
	var mu sync.Mutex
	prepares := 0
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Stop(func() { mu.Lock(); prepares++; mu.Unlock() })
			if !b.Stopped() {
				t.Error("Stop returned before the goroutine ended")
			}
		}()
	}
	close(release)
	wg.Wait()
	if prepares != 1 {
		t.Errorf("prepare ran %d times, want once", prepares)
	}
}

// Cancel, from one of the service's own goroutines, ends the run without
// waiting; Done closes when the goroutines returned and Err says why.
func TestCancelFromInside(t *testing.T) {
	t.Parallel()
	var b Base
	if _, err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk on fire")
	b.Go(func(ctx context.Context) { b.Cancel(boom); <-ctx.Done() })
	b.Go(func(ctx context.Context) { <-ctx.Done() })
	<-b.Done()
	if !errors.Is(b.Err(), boom) {
		t.Errorf("Err = %v, want the cause", b.Err())
	}
	if b.Go(func(context.Context) {}) {
		t.Error("Go after Cancel = true")
	}
	b.Stop(func() { t.Error("prepare ran after Cancel") })
}

// A failure during Stop's last work is reported, not hidden by the Stop.
func TestCancelDuringStopKeepsTheCause(t *testing.T) {
	t.Parallel()
	var b Base
	if _, err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("commit failed")
	b.Stop(func() { b.Cancel(boom) })
	if !errors.Is(b.Err(), boom) {
		t.Errorf("Err = %v, want the failure during Stop", b.Err())
	}
}
