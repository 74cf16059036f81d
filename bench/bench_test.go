package bench

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkDrain4x16 drains b.N seeded jobs with 4 fake graderds of 16
// slots each over mTLS, results committed with synchronous=FULL, and
// reports jobs/s. Seeding and broker start are outside the timer.
//
//	go test -run '^$' -bench Drain4x16 -benchtime 50000x ./bench/
func BenchmarkDrain4x16(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	p, err := NewPKI(dir)
	if err != nil {
		b.Fatal(err)
	}
	servers, err := p.Servers("bench", 4)
	if err != nil {
		b.Fatal(err)
	}
	path := dbPath(dir, fmt.Sprintf("drain-%d", b.N))
	if _, err := seedDB(ctx, path, p, servers, 16, b.N); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	res, err := runDrain(ctx, drainSpec{pki: p, dbPath: path, servers: servers, slots: 16, jobs: int64(b.N),
		warmup: time.Hour, window: time.Hour, logLevel: "warn", start: b.StartTimer, stop: b.StopTimer})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.Rate, "jobs/s")
	b.ReportMetric(res.opsPerCommit(), "ops/commit")
}
