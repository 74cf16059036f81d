package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker"
)

// scrape serves m's /metrics and returns every sample, keyed as the text
// format writes it: name{label="value",...} with labels in name order.
func scrape(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics = %d: %s", rec.Code, rec.Body)
	}
	return parseText(t, rec.Body)
}

// parseText reads the Prometheus text format. Label values here never hold
// spaces, so a sample is everything up to its line's last space.
func parseText(t *testing.T, r io.Reader) map[string]float64 {
	t.Helper()
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad value in %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// fakeSources feeds the collector fixed numbers and counts its store calls.
type fakeSources struct {
	storeCalls atomic.Int32
	failStore  atomic.Bool
	now        time.Time
}

func (f *fakeSources) sources() Sources {
	return Sources{
		Dispatch: func() DispatchSnapshot {
			return DispatchSnapshot{
				Now: f.now,
				Types: map[int64]TypeGauges{
					1: {Queued: 4, OldestQueued: f.now.Add(-90 * time.Second), Running: 2, Connected: 1, FreeSlots: 3},
					7: {Queued: 1, OldestQueued: f.now.Add(-time.Second)}, // no name anywhere
				},
				TypeNames:      map[int64]string{1: "from-dispatcher"},
				Assigned:       10,
				StaleResults:   2,
				Expired:        1,
				Requeued:       3,
				Results:        map[string]uint64{"ok": 6, "temporary": 2},
				Finished:       map[string]uint64{"done": 6, "cancelled": 1},
				AssignAttempts: []uint64{7, 2, 0, 1},
			}
		},
		Delivery: func() DeliveryStats {
			return DeliveryStats{Attempts: 9, Retried: 2, Dead: 1, Superseded: 1, InFlight: 3}
		},
		DeliveryCounts: func(context.Context) (map[string]int, error) {
			f.storeCalls.Add(1)
			if f.failStore.Load() {
				return nil, errors.New("database is locked")
			}
			return map[string]int{"pending": 5, "delivered": 40, "dead": 2}, nil
		},
		DeadUnresolved: func(context.Context) (int, error) { return 1, nil },
		ServerTypes: func(context.Context) (map[int64]string, error) {
			return map[int64]string{1: "python", 2: "gpu"}, nil
		},
		CacheFor: time.Hour,
	}
}

func TestCollectorReadsSourcesAtScrape(t *testing.T) {
	t.Parallel()
	m := New(nil)
	f := &fakeSources{now: time.Unix(1_800_000_000, 0)}
	if err := m.Watch(f.sources()); err != nil {
		t.Fatal(err)
	}
	got := scrape(t, m)
	want := map[string]float64{
		`gradebroker_jobs{state="queued",type="python"}`:           4,
		`gradebroker_jobs{state="running",type="python"}`:          2,
		`gradebroker_jobs{state="queued",type="type-7"}`:           1,
		`gradebroker_jobs{state="queued",type="gpu"}`:              0,
		`gradebroker_queue_oldest_age_seconds{type="python"}`:      90,
		`gradebroker_queue_oldest_age_seconds{type="gpu"}`:         0,
		`gradebroker_servers_connected{type="python"}`:             1,
		`gradebroker_servers_connected{type="gpu"}`:                0,
		`gradebroker_free_slots{type="python"}`:                    3,
		`gradebroker_assignments_total`:                            10,
		`gradebroker_stale_results_total`:                          2,
		`gradebroker_lease_expiries_total`:                         1,
		`gradebroker_requeues_total`:                               3,
		`gradebroker_results_total{outcome="ok"}`:                  6,
		`gradebroker_results_total{outcome="invalid"}`:             0,
		`gradebroker_jobs_finished_total{state="done"}`:            6,
		`gradebroker_jobs_finished_total{state="failed"}`:          0,
		`gradebroker_jobs_finished_total{state="cancelled"}`:       1,
		`gradebroker_assignment_attempt_bucket{le="1"}`:            7,
		`gradebroker_assignment_attempt_bucket{le="2"}`:            9,
		`gradebroker_assignment_attempt_bucket{le="3"}`:            9,
		`gradebroker_assignment_attempt_bucket{le="+Inf"}`:         10,
		`gradebroker_assignment_attempt_count`:                     10,
		`gradebroker_assignment_attempt_sum`:                       7 + 4 + 4,
		`gradebroker_deliveries{state="pending"}`:                  5,
		`gradebroker_deliveries{state="dead"}`:                     2,
		`gradebroker_deliveries_dead_unresolved`:                   1,
		`gradebroker_delivery_attempts_total`:                      9,
		`gradebroker_delivery_retries_total`:                       2,
		`gradebroker_delivery_dead_total`:                          1,
		`gradebroker_delivery_superseded_total`:                    1,
		`gradebroker_deliveries_in_flight`:                         3,
		`gradebroker_token_refusals_total{reason="bad_signature"}`: 0,
		`gradebroker_write_batch_duration_seconds_count`:           0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if _, ok := got[`gradebroker_assignment_attempt_bucket{le="4"}`]; ok {
		t.Error("the open-ended last attempt slot has a bucket of its own; want it only in +Inf")
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("no go_goroutines: the Go collector is missing")
	}
}

func TestCollectorCachesTheStore(t *testing.T) {
	t.Parallel()
	m := New(nil)
	f := &fakeSources{now: time.Now()}
	src := f.sources()
	src.CacheFor = 5 * time.Second
	var clock atomic.Int64 // seconds since the start
	c := newCollector(src)
	c.now = func() time.Time { return f.now.Add(time.Duration(clock.Load()) * time.Second) }
	if err := m.Registry().Register(c); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		scrape(t, m)
	}
	if n := f.storeCalls.Load(); n != 1 {
		t.Fatalf("5 quick scrapes queried the store %d times, want 1", n)
	}
	clock.Add(5)
	scrape(t, m)
	if n := f.storeCalls.Load(); n != 2 {
		t.Fatalf("a scrape after CacheFor queried the store %d times in all, want 2", n)
	}

	// A failing store leaves its series out, and the rest still answers.
	f.failStore.Store(true)
	clock.Add(5)
	got := scrape(t, m)
	if _, ok := got[`gradebroker_deliveries{state="pending"}`]; ok {
		t.Error("deliveries reported although the store failed")
	}
	if got["gradebroker_assignments_total"] != 10 {
		t.Error("a store failure hid the dispatcher's series")
	}
	// A failure is not cached: the next scrape asks again.
	before := f.storeCalls.Load()
	scrape(t, m)
	if f.storeCalls.Load() == before {
		t.Error("a failed store read was cached")
	}
}

func TestHooks(t *testing.T) {
	t.Parallel()
	m := New(nil)
	m.ObserveCommit(12, 3*time.Millisecond)
	m.ObserveCommit(1, time.Millisecond)
	m.ObserveDelivery(2 * time.Second)
	m.TokenRefused(ReasonExpired)
	m.TokenRefused("something new") // counted as malformed
	m.Wakeups().WakeupSent("g1", true)
	m.Wakeups().WakeupSent("g1", false)
	m.Wakeups().WakeupSent("g2", true)
	m.ObserveRun("ok", "py", &broker.Usage{CPUTime: 40 * time.Millisecond, PeakMemory: 3 << 20, WallTime: 2 * time.Second}, "")
	m.ObserveRun("fatal", "py", nil, broker.LimitPids) // a limit, nothing measured

	var nilM *Metrics // every recording method is a no-op on nil
	nilM.ObserveCommit(1, time.Second)
	nilM.ObserveRun("ok", "py", &broker.Usage{}, broker.LimitMemory)
	nilM.ObserveDelivery(time.Second)
	nilM.TokenRefused(ReasonExpired)
	nilM.Wakeups().WakeupSent("g1", true)
	nilM.Wakeups().ForgetServer("g1")

	got := scrape(t, m)
	want := map[string]float64{
		`gradebroker_write_batch_duration_seconds_count`:                                     2,
		`gradebroker_write_batch_ops_sum`:                                                    13,
		`gradebroker_write_batch_ops_bucket{le="10"}`:                                        1,
		`gradebroker_delivery_latency_seconds_count`:                                         1,
		`gradebroker_delivery_latency_seconds_bucket{le="1"}`:                                0,
		`gradebroker_delivery_latency_seconds_bucket{le="2.5"}`:                              1,
		`gradebroker_token_refusals_total{reason="expired"}`:                                 1,
		`gradebroker_token_refusals_total{reason="malformed"}`:                               1,
		`gradebroker_wakeups_sent_total{server="g1"}`:                                        1,
		`gradebroker_wakeups_failed_total{server="g1"}`:                                      1,
		`gradebroker_wakeups_sent_total{server="g2"}`:                                        1,
		`gradebroker_run_cpu_seconds_bucket{outcome="ok",type="py",le="0.025"}`:              0,
		`gradebroker_run_cpu_seconds_bucket{outcome="ok",type="py",le="0.05"}`:               1,
		`gradebroker_run_wall_seconds_bucket{outcome="ok",type="py",le="2.5"}`:               1,
		`gradebroker_run_peak_memory_bytes_bucket{outcome="ok",type="py",le="4.194304e+06"}`: 1,
		`gradebroker_run_limits_total{limit="pids",type="py"}`:                               1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, ok := got[`gradebroker_run_cpu_seconds_count{outcome="fatal",type="py"}`]; ok {
		t.Error("a run that measured nothing was observed in the histograms")
	}
	if _, ok := got[`gradebroker_token_refusals_total{reason="something new"}`]; ok {
		t.Error("an unknown reason made a series of its own")
	}
	m.Wakeups().ForgetServer("g1")
	if _, ok := scrape(t, m)[`gradebroker_wakeups_sent_total{server="g1"}`]; ok {
		t.Error("ForgetServer left g1's series")
	}
}

func TestRequestCounters(t *testing.T) {
	t.Parallel()
	m := New(nil)
	h := m.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/jobs" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}), "/v1/jobs", "/healthz")
	for _, p := range []string{"/v1/jobs", "/v1/jobs", "/healthz", "/wp-login.php", "/.env"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, p, nil))
	}

	unary := m.UnaryInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/gradebroker.v1.AdminService/ListJobs"}
	_, _ = unary(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, nil })
	_, _ = unary(context.Background(), nil, info, func(context.Context, any) (any, error) {
		return nil, status.Error(codes.PermissionDenied, "no")
	})
	stream := m.StreamInterceptor()
	_ = stream(nil, nil, &grpc.StreamServerInfo{FullMethod: "/gradebroker.v1.GraderService/Connect"},
		func(any, grpc.ServerStream) error { return nil })

	got := scrape(t, m)
	want := map[string]float64{
		`gradebroker_http_requests_total{code="401",path="/v1/jobs"}`:                                             2,
		`gradebroker_http_requests_total{code="200",path="/healthz"}`:                                             1,
		`gradebroker_http_requests_total{code="200",path="other"}`:                                                2,
		`gradebroker_grpc_requests_total{code="OK",method="/gradebroker.v1.AdminService/ListJobs"}`:               1,
		`gradebroker_grpc_requests_total{code="PermissionDenied",method="/gradebroker.v1.AdminService/ListJobs"}`: 1,
		`gradebroker_grpc_requests_total{code="OK",method="/gradebroker.v1.GraderService/Connect"}`:               1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}
