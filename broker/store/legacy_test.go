package store

import (
	"context"
	"testing"

	"github.com/gradebroker/gradebroker/broker"
)

// TestPlatformLegacyTokens: legacy tokens are off unless asked for, and
// can be turned on and off again.
func TestPlatformLegacyTokens(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "plain", PublicKeyPEM: "k"})
	if err != nil || p.LegacyTokens {
		t.Fatalf("AddPlatform without legacy tokens: %+v, %v; want them off", p, err)
	}
	p, err = db.AddPlatform(ctx, broker.Platform{Name: "old", PublicKeyPEM: "k", LegacyTokens: true})
	if err != nil || !p.LegacyTokens {
		t.Fatalf("AddPlatform with legacy tokens: %+v, %v; want them on", p, err)
	}
	for _, on := range []bool{false, true} {
		p, err = db.UpdatePlatform(ctx, "old", PlatformUpdate{LegacyTokens: &on})
		if err != nil || p.LegacyTokens != on {
			t.Fatalf("UpdatePlatform to %v: %+v, %v", on, p, err)
		}
	}
	list, err := db.ListPlatforms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range list {
		got[p.Name] = p.LegacyTokens
	}
	if !got["old"] || got["plain"] {
		t.Errorf("listed: %v, want old on and plain off", got)
	}
}
