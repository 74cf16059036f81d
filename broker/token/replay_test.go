package token

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// TestMemoryReplayGuardClock checks the guard keeps a jti until the expiry
// it was given, by its own clock when it has one (testNow is years ahead of
// the real clock), and by the real clock when it has none.
func TestMemoryReplayGuardClock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := testutil.NewClock(testNow)
	g := &MemoryReplayGuard{Now: c.Now}
	if err := g.UseJTI(ctx, platformName, "j1", testNow.Add(time.Minute)); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := g.UseJTI(ctx, platformName, "j1", testNow.Add(time.Minute)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second use before the expiry: got %v, want ErrReplayed", err)
	}
	if err := g.UseJTI(ctx, "other-platform", "j1", testNow.Add(time.Minute)); err != nil {
		t.Fatalf("same jti from another signer: %v", err)
	}
	c.Add(time.Minute)
	if err := g.UseJTI(ctx, platformName, "j1", testNow.Add(2*time.Minute)); err != nil {
		t.Fatalf("use at the expiry: %v", err)
	}

	real := NewMemoryReplayGuard()
	if err := real.UseJTI(ctx, platformName, "j1", time.Now().Add(-time.Second)); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := real.UseJTI(ctx, platformName, "j1", time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("use after the expiry by the real clock: %v", err)
	}
	if err := real.UseJTI(ctx, platformName, "j1", time.Now().Add(time.Hour)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("use before the expiry by the real clock: got %v, want ErrReplayed", err)
	}
}
