package delivery

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// BenchmarkDeliver measures callbacks delivered per second to local
// receivers that acknowledge at once: building the payload, signing it
// (RS512, 2048-bit broker key), encrypting it (RSA-OAEP-256 to a 2048-bit
// platform key), the HTTP round trip, and recording the outcome in SQLite.
// The receivers do not open the tokens, so that the figure is the broker's.
func BenchmarkDeliver(b *testing.B) {
	for _, platforms := range []int{1, 4} {
		b.Run(fmt.Sprintf("platforms=%d", platforms), func(b *testing.B) {
			e := setup(b)
			e.clk = nil // real time: the store and worker use time.Now
			e.db.Close()
			db, err := store.Open(context.Background(), e.path, store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			e.db = db
			var ids []int64
			for i := range platforms {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					w.WriteHeader(http.StatusOK)
				}))
				b.Cleanup(srv.Close)
				ids = append(ids, e.platform(fmt.Sprintf("p%d", i), srv.URL, ""))
			}
			tx, err := db.BeginJobs(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			for n := range b.N {
				in, err := tx.InsertJob(broker.NewJob{PlatformID: ids[n%platforms], Name: "bench", Timeout: time.Minute,
					JobData: []byte(`{}`), MaxAttempts: 3}, "bench")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tx.Finish(in.ID, store.Final{State: broker.JobDone, Outcome: broker.OutcomeOK,
					Result: []byte(`{"score":100,"tests":[{"name":"t1","ok":true},{"name":"t2","ok":true}]}`), Actor: "bench"}); err != nil {
					b.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			var delivered atomic.Int64
			all := make(chan struct{})
			w, err := New(db, e.ring, Config{Broker: brokerName, OnDelivered: func(time.Duration) {
				if delivered.Add(1) == int64(b.N) {
					close(all)
				}
			}}, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			if err := w.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			<-all
			elapsed := time.Since(start)
			b.StopTimer()
			w.Stop()
			if s := w.Stats(); s.Retried+s.Dead != 0 {
				b.Fatalf("Stats = %+v; every callback should succeed first time", s)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "callbacks/s")
		})
	}
}
