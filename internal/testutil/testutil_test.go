package testutil

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestClockAndSyncBuffer(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	c := NewClock(t0)
	var b SyncBuffer
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			c.Add(time.Second)
			fmt.Fprintf(&b, "%d\n", i)
		})
	}
	wg.Wait()
	if got := c.Now(); !got.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("Now() = %v, want %v", got, t0.Add(10*time.Second))
	}
	if n := len(b.String()); n != 20 {
		t.Errorf("buffer holds %d bytes, want 20", n)
	}
}

// fakeTB records a failure instead of ending the test.
type fakeTB struct{ failed string }

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestEventually(t *testing.T) {
	var mu sync.Mutex
	ready := false
	go func() {
		mu.Lock()
		ready = true
		mu.Unlock()
	}()
	var f fakeTB
	Eventually(&f, "the flag", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return ready
	})
	if f.failed != "" {
		t.Fatalf("Eventually failed on a condition that became true: %s", f.failed)
	}

	calls := 0
	EventuallyWithin(&f, 30*time.Millisecond, "never", func() bool { calls++; return false })
	if want := "timed out after 30ms waiting for never"; f.failed != want {
		t.Errorf("failure = %q, want %q", f.failed, want)
	}
	if calls < 2 {
		t.Errorf("cond was checked %d times, want it checked again before giving up", calls)
	}
}
