// Package startstop gives the broker's background services one lifecycle,
// after river's startstop package.
//
// A service has Start(ctx) error and Stop(). Start returns once the service
// runs, or with the reason it could not start; ctx bounds the start only
// (loading state, checking the database): the service keeps ctx's values
// but not its cancellation, and runs until Stop. That way a caller's
// context ending (a signal, a test's deadline) never tears a service down
// behind the back of whoever stops the services in order. Stop stops the
// service and waits for every goroutine it started; it is idempotent, safe
// before Start (Start then fails), and safe after a failed Start.
//
// A service holds one Base and calls its Start, Go and Stop from its own.
package startstop

import (
	"context"
	"errors"
	"sync"
)

// ErrStarted is returned by Start on a service that was started before.
var ErrStarted = errors.New("already started")

// ErrStopped is returned by Start on a service that was stopped, and is the
// cause of a run context that Stop ended.
var ErrStopped = errors.New("stopped")

type state int

const (
	idle state = iota
	running
	stopping // Stop or Cancel was called: no goroutine starts any more
)

// Base is one service's lifecycle: its state, its run context and the
// goroutines Stop waits for. The zero value is ready to use; a Base must
// not be copied after first use.
type Base struct {
	mu     sync.Mutex
	state  state
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
	done   chan struct{} // closed once stopped and every goroutine returned
	once   sync.Once     // closes done
}

func (b *Base) doneLocked() chan struct{} {
	if b.done == nil {
		b.done = make(chan struct{})
	}
	return b.done
}

// Start marks the service started and returns its run context: ctx's values
// without its cancellation, ended by Stop or Cancel. It returns ErrStarted
// or ErrStopped when the service was started or stopped before.
func (b *Base) Start(ctx context.Context) (context.Context, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case running:
		return nil, ErrStarted
	case stopping:
		return nil, ErrStopped
	}
	b.ctx, b.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	b.state = running
	done := b.doneLocked()
	runCtx := b.ctx
	// Done closes once the run context ended and the goroutines returned,
	// whether Stop or Cancel ended it.
	go func() {
		<-runCtx.Done()
		b.wg.Wait()
		b.once.Do(func() { close(done) })
	}()
	return runCtx, nil
}

// Go runs f on a goroutine that Stop waits for, with the run context. It
// returns false, and does not run f, when the service is not running
// (never started, or stopping): a Start that calls Go after a concurrent
// Stop learns so and can fail.
func (b *Base) Go(f func(ctx context.Context)) bool {
	b.mu.Lock()
	if b.state != running {
		b.mu.Unlock()
		return false
	}
	b.wg.Add(1)
	ctx := b.ctx
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		f(ctx)
	}()
	return true
}

// Stop stops the service: when it runs, it calls prepare (if not nil; a
// service's last work while its goroutines still run, such as committing
// what is pending), then ends the run context and waits for every
// goroutine started with Go. It is idempotent: a second Stop, concurrent
// or not, waits for the first. Before Start it only marks the service
// stopped.
func (b *Base) Stop(prepare func()) {
	b.mu.Lock()
	was := b.state
	b.state = stopping
	done := b.doneLocked()
	cancel := b.cancel
	b.mu.Unlock()
	switch was {
	case idle:
		b.once.Do(func() { close(done) })
	case running:
		if prepare != nil {
			prepare()
		}
		cancel(ErrStopped)
	}
	// After Cancel the context has already ended; either way done closes
	// when the goroutines have returned.
	<-done
}

// Cancel ends the run context with cause, without waiting: for a service
// that fails from one of its own goroutines, which cannot wait for itself.
// Nothing starts any more; Done closes once the goroutines returned, and
// Err returns cause, also when a Stop was under way (a failure during the
// last work of Stop is still reported). Stop after Cancel only waits.
func (b *Base) Cancel(cause error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel == nil {
		return // never started
	}
	b.state = stopping
	b.cancel(cause) // the first cause wins
}

// Done is closed once the service has stopped (by Stop, or by Cancel and
// its goroutines returning), and also by a Stop before Start.
func (b *Base) Done() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.doneLocked()
}

// Stopped reports whether Done is closed.
func (b *Base) Stopped() bool {
	select {
	case <-b.Done():
		return true
	default:
		return false
	}
}

// Err returns the cause given to Cancel, or nil while the service runs,
// after a plain Stop and before Start.
func (b *Base) Err() error {
	b.mu.Lock()
	ctx := b.ctx
	b.mu.Unlock()
	if ctx == nil {
		return nil
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, ErrStopped) {
		return err
	}
	return nil
}
