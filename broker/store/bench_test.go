package store

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// BenchmarkLifecycle runs the writer's statements for whole job lifecycles
// the way the dispatcher's group commit does when servers have free slots:
// each transaction stores and leases a batch of jobs and finishes the
// previous batch, its leases ended with what their runs used (as graderd
// reports it with every result) or, for comparison, without. It reports
// the process CPU time per job (user + system), which moves less than
// ns/op when other work shares the machine.
//
//	go test -run '^$' -bench Lifecycle -benchtime 100000x ./broker/store/
func BenchmarkLifecycle(b *testing.B) {
	usage := &broker.Usage{CPUTime: 3 * time.Millisecond, PeakMemory: 8 << 20, WallTime: 5 * time.Millisecond}
	b.Run("usage", func(b *testing.B) { benchLifecycle(b, usage) })
	b.Run("no-usage", func(b *testing.B) { benchLifecycle(b, nil) })
}

func benchLifecycle(b *testing.B, usage *broker.Usage) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(b.TempDir(), "gb.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.AddTag(ctx, "py", ""); err != nil {
		b.Fatal(err)
	}
	st, err := db.AddServerType(ctx, "pytype", []string{"py"})
	if err != nil {
		b.Fatal(err)
	}
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "plat", PublicKeyPEM: "x"})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := db.AddServer(ctx, broker.Server{Name: "g1", Type: "pytype", MaxConcurrentJobs: 64, Cert: ident("g1")})
	if err != nil {
		b.Fatal(err)
	}
	const batch = 32
	nj := broker.NewJob{PlatformID: p.ID, Name: "j", Tags: []string{"py"}, Timeout: time.Minute,
		JobData: []byte(`{"task":"bench"}`), MaxAttempts: 3, TypeIDs: []int64{st.ID}}
	type leased struct{ job, lease int64 }
	var prev []leased
	var lease int64
	cpu0 := cpuTime()
	b.ResetTimer()
	for done := 0; done < b.N; {
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var cur []leased
		for k := 0; k < batch && done+k < b.N; k++ {
			in, err := tx.InsertJob(nj, "platform:plat")
			if err != nil {
				b.Fatal(err)
			}
			lease++
			if err := tx.AssignInserted(in.ID, lease, srv.ID, srv.Name, 1, time.Now().Add(time.Minute)); err != nil {
				b.Fatal(err)
			}
			cur = append(cur, leased{in.ID, lease})
		}
		for _, l := range prev {
			if err := tx.EndLeaseRun(l.lease, "ok", "", usage, ""); err != nil {
				b.Fatal(err)
			}
			if _, err := tx.Finish(l.job, Final{PlatformID: p.ID, State: broker.JobDone, Outcome: broker.OutcomeOK,
				LeaseID: l.lease, Result: []byte(`{"score":100}`), Actor: "server:g1"}); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		done += len(cur)
		prev = cur
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/job")
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
