package bench

import (
	"context"
	"testing"
	"time"
)

// TestLatencyRun runs the latency scenario briefly at a low rate: every
// measured job gets its Assign, and with servers that have slots to spare
// every lease is written in the commit that stores its job.
func TestLatencyRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	servers, err := p.Servers("bench", 2)
	if err != nil {
		t.Fatal(err)
	}
	res, err := runLatency(ctx, latencySpec{pki: p, dir: dir, servers: servers, slots: 64, rate: 400, batch: 4,
		warmup: 200 * time.Millisecond, duration: time.Second, logLevel: "warn"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Jobs < 300 || res.Missing != 0 {
		t.Fatalf("measured %d jobs, %d without an Assign: want about 400, none missing", res.Jobs, res.Missing)
	}
	if res.Leases == 0 || res.Inline != res.Leases {
		t.Fatalf("%d of %d leases written in the commit that stored the job, want all", res.Inline, res.Leases)
	}
	if res.Commits == 0 || res.Commit.Max <= 0 || res.Commit.P50 > res.Commit.Max {
		t.Fatalf("implausible distribution: %d commits, latency %+v", res.Commits, res.Commit)
	}
}
