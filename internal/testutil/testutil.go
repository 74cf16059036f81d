// Package testutil holds the small fakes many packages' tests share.
package testutil

import (
	"bytes"
	"sync"
	"time"
)

// Clock is a settable clock, safe for use by many goroutines. Pass its Now
// where a package takes a func() time.Time.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock that reads t until it is moved.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// SyncBuffer collects output (a logger's, a process's) written from many
// goroutines.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitTimeout is how long Eventually waits before it fails the test. It is
// generous because the tests run with the race detector on two busy cores;
// a test that passes never waits for it.
const WaitTimeout = 30 * time.Second

// TB is the part of testing.TB that Eventually needs.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Eventually waits until cond reports true, checking it again every few
// milliseconds, and fails the test with "timed out waiting for WHAT" after
// WaitTimeout. It is the one way tests here wait for a state that another
// goroutine or process reaches: never a fixed sleep.
func Eventually(t TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, WaitTimeout, what, cond)
}

// EventuallyWithin is Eventually with its own time limit.
func EventuallyWithin(t TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	poll := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
			return
		}
		time.Sleep(poll)
		poll = min(2*poll, 20*time.Millisecond)
	}
}
