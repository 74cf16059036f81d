package dispatch

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestConfigDefaults checks that a zero or negative field takes its
// documented default and that a set one is kept: brokerd passes its
// configuration through, so a default that overrode a setting, or a
// setting of 0 that stayed 0, would go unnoticed elsewhere.
func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	defaults := Config{MaxAttempts: 3, DefaultTimeout: 300 * time.Second, MaxTimeout: time.Hour,
		LeaseGrace: 30 * time.Second, ReconnectGrace: 30 * time.Second, HeartbeatInterval: 10 * time.Second,
		AvoidFor: 30 * time.Second, TickInterval: 250 * time.Millisecond, MaxBatch: 4096}
	negative := Config{MaxAttempts: -1, DefaultTimeout: -1, MaxTimeout: -1, LeaseGrace: -1, ReconnectGrace: -1,
		HeartbeatInterval: -1, AvoidFor: -1, TickInterval: -1, MaxBatch: -1}
	set := Config{MaxAttempts: 5, DefaultTimeout: 7 * time.Second, MaxTimeout: 11 * time.Minute,
		LeaseGrace: 13 * time.Second, ReconnectGrace: 17 * time.Second, HeartbeatInterval: 19 * time.Second,
		AvoidFor: 23 * time.Second, TickInterval: 29 * time.Millisecond, MaxBatch: 31}
	ignoreFuncs := cmpopts.IgnoreFields(Config{}, "Now", "OnCommit", "OnRun")
	for _, tc := range []struct {
		name    string
		in, out Config
	}{
		{"zero", Config{}, defaults},
		{"negative", negative, defaults},
		{"set", set, set},
	} {
		got := New(nil, tc.in, testLog).Config()
		if diff := cmp.Diff(tc.out, got, ignoreFuncs); diff != "" {
			t.Errorf("%s: Config() (-want +got):\n%s", tc.name, diff)
		}
		if got.Now == nil {
			t.Errorf("%s: Config().Now is nil, want time.Now", tc.name)
		}
	}

	for _, tc := range []struct {
		cfg  Config
		sec  int
		want time.Duration
	}{
		{Config{}, 0, 300 * time.Second},
		{Config{}, 60, time.Minute},
		{Config{}, 7200, time.Hour},
		{set, 0, 7 * time.Second},
		{set, 3600, 11 * time.Minute},
	} {
		if got := tc.cfg.Timeout(tc.sec); got != tc.want {
			t.Errorf("Config{DefaultTimeout: %v, MaxTimeout: %v}.Timeout(%d) = %v, want %v",
				tc.cfg.DefaultTimeout, tc.cfg.MaxTimeout, tc.sec, got, tc.want)
		}
	}
}
