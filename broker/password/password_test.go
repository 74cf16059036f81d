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
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	full := &Checker{}
	full.init()
	for range cap(full.sem) {
		full.sem <- struct{}{}
	}
	if _, err := full.Check(cancelled, h, "correct horse"); !errors.Is(err, context.Canceled) {
		t.Errorf("Check waiting for a turn with an ended context = %v", err)
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
