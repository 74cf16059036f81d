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
