package password

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

func TestHashAndCheck(t *testing.T) {
	t.Parallel()
	h, err := Hash("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h, "correct horse") || CheckHash(h) != nil {
		t.Fatalf("Hash = %q, want a bcrypt hash", h)
	}
	clk := testutil.NewClock(time.Unix(1_800_000_000, 0))
	c := &Checker{Now: clk.Now, Remember: time.Minute}
	ctx := context.Background()
	for _, tc := range []struct {
		pw   string
		want bool
	}{
		{"correct horse", true},
		{"correct horse", true}, // remembered
		{"correct horsf", false},
		{"", false},
		{"correct horse ", false},
	} {
		ok, err := c.Check(ctx, h, tc.pw)
		if err != nil || ok != tc.want {
			t.Errorf("Check(%q) = %v, %v; want %v", tc.pw, ok, err, tc.want)
		}
	}
	clk.Add(2 * time.Minute)
	if ok, err := c.Check(ctx, h, "correct horse"); !ok || err != nil {
		t.Errorf("Check after the memory expired = %v, %v", ok, err)
	}
	other, err := Hash("another password")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Check(ctx, other, "correct horse"); ok {
		t.Error("a password remembered for one hash passed for another")
	}
	if _, err := c.Check(ctx, "not a hash", "correct horse"); err == nil {
		t.Error("Check against a broken hash did not fail")
	}
}

// A check whose caller stopped waiting runs on, and its yes is remembered
// for the caller's next try; checks beyond MaxPending are refused at once.
func TestCheckOutlivesItsCaller(t *testing.T) {
	t.Parallel()
	h, err := Hash("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	c := &Checker{MaxPending: 1}
	c.init()
	occupy := func() {
		for range cap(c.sem) {
			c.sem <- struct{}{}
		}
	}
	release := func() {
		for range cap(c.sem) {
			<-c.sem
		}
	}
	occupy() // every core busy: checks wait
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Check(cancelled, h, "correct horse"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Check with an ended context = %v", err)
	}
	if _, err := c.Check(context.Background(), h, "another guess"); !errors.Is(err, ErrBusy) {
		t.Errorf("a check beyond MaxPending = %v, want ErrBusy", err)
	}
	release()
	testutil.Eventually(t, "the abandoned check to finish", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending) == 0
	})
	occupy() // no core free: only a remembered answer can come back
	defer release()
	// Bounded only so that a broken memory fails rather than hangs.
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	if ok, err := c.Check(ctx, h, "correct horse"); !ok || err != nil {
		t.Errorf("the retry after an abandoned check = %v, %v; want the remembered yes", ok, err)
	}
}

func TestHashRefuses(t *testing.T) {
	t.Parallel()
	for _, pw := range []string{"", "short", strings.Repeat("x", MaxLength+1)} {
		if _, err := Hash(pw); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Hash(%d bytes) = %v, want ErrInvalid", len(pw), err)
		}
	}
	if err := CheckHash("$2a$04$short"); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("CheckHash(broken) = %v", err)
	}
}
