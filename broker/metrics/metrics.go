// Package metrics is the broker's Prometheus instrumentation: one registry,
// the series other packages feed through small hooks (batch commits,
// deliveries, token refusals, wakeups, requests), and a collector that
// reads the dispatcher's and the outbox's state at scrape time, so that the
// dispatch hot path pays nothing for it.
//
// The package imports none of the broker's other packages but the domain
// types, so that any of them (the wakeup logic, say) may call it without an
// import cycle. brokerd wires it: it hands the hooks to the packages that
// call them and the Sources to Watch.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker"
)

// namespace prefixes every series of the broker's own.
const namespace = "gradebroker"

// The reasons of gradebroker_token_refusals_total: one per way a platform's
// token can be refused, so that the label's values are few and known.
const (
	ReasonMalformed    = "malformed"
	ReasonTooLarge     = "too_large"
	ReasonAlgorithm    = "algorithm"
	ReasonDecrypt      = "decrypt"
	ReasonUnknown      = "unknown_signer"
	ReasonBadSignature = "bad_signature"
	ReasonExpired      = "expired"
	ReasonNotYetValid  = "not_yet_valid"
	ReasonLifetime     = "lifetime"
	ReasonMissingJTI   = "missing_jti"
	ReasonReplayed     = "replayed"
	ReasonWrongRequest = "wrong_request"
	ReasonAudience     = "audience"
)

// TokenReasons lists every reason, in the order the series are created.
var TokenReasons = []string{ReasonMalformed, ReasonTooLarge, ReasonAlgorithm, ReasonDecrypt, ReasonUnknown,
	ReasonBadSignature, ReasonExpired, ReasonNotYetValid, ReasonLifetime, ReasonMissingJTI, ReasonReplayed,
	ReasonWrongRequest, ReasonAudience}

// Metrics is the broker's registry and the series fed by hooks. Its methods
// are safe for concurrent use, and those that record something do nothing
// on a nil *Metrics, so that a package may hold one optionally.
type Metrics struct {
	reg *prometheus.Registry
	log *slog.Logger

	commitSeconds   prometheus.Histogram
	commitOps       prometheus.Histogram
	deliveryLatency prometheus.Histogram
	tokenRefusals   *prometheus.CounterVec
	wakeups         *Wakeups
	grpcRequests    *prometheus.CounterVec
	httpRequests    *prometheus.CounterVec
	runCPU          *prometheus.HistogramVec
	runMemory       *prometheus.HistogramVec
	runWall         *prometheus.HistogramVec
	runLimits       *prometheus.CounterVec
}

// runLabels are the labels of the grading runs' histograms: how the run
// ended (dispatch.ResultNames) and the server type of its server. Both
// take few values.
var runLabels = []string{"outcome", "type"}

// runSecondsBuckets cover grading runs from a trivial check (10 ms) to the
// longest timeout (1 h).
var runSecondsBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// New makes a registry with the Go runtime and process collectors and the
// broker's hook-fed series. log may be nil.
func New(log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.Default()
	}
	m := &Metrics{reg: prometheus.NewRegistry(), log: log}
	m.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "write_batch_duration_seconds",
		Help: "Time the dispatcher's writer took to apply and commit one batch of changes in one SQLite transaction (group commit).",
		// An fsync is ~0.1-10 ms on SSDs; a second means trouble.
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	})
	m.commitOps = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "write_batch_ops",
		Help:    "Changes committed per batch by the dispatcher's writer.",
		Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 4096},
	})
	m.deliveryLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "delivery_latency_seconds",
		Help:    "Time from a result delivery's creation (its job became final) to the platform's acknowledgement, retries included.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
	})
	m.tokenRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "token_refusals_total",
		Help: "Platform requests refused because of their token, by reason.",
	}, []string{"reason"})
	for _, r := range TokenReasons {
		m.tokenRefusals.WithLabelValues(r)
	}
	m.wakeups = &Wakeups{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "wakeups_sent_total",
			Help: "Wakeup requests to idle grading servers that their wakeup URL accepted, by server.",
		}, []string{"server"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "wakeups_failed_total",
			Help: "Wakeup requests to idle grading servers that failed, by server.",
		}, []string{"server"}),
	}
	m.grpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "grpc_requests_total",
		Help: "Finished gRPC calls and streams on the gRPC port, by full method and status code.",
	}, []string{"method", "code"})
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "http_requests_total",
		Help: "HTTP requests on the platforms' gateway port, by route and status code.",
	}, []string{"path", "code"})
	m.runCPU = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "run_cpu_seconds",
		Help:    "CPU time (user and system) of each grading run, all its processes together, as its server measured it, by outcome and server type.",
		Buckets: runSecondsBuckets,
	}, runLabels)
	m.runWall = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "run_wall_seconds",
		Help:    "Wall-clock time of each grading run, as its server measured it, by outcome and server type.",
		Buckets: runSecondsBuckets,
	}, runLabels)
	m.runMemory = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "run_peak_memory_bytes",
		Help: "Peak memory of each grading run, all its processes together, as its server measured it, by outcome and server type.",
		// 1 MiB to 16 GiB, by powers of 2.
		Buckets: prometheus.ExponentialBuckets(1<<20, 2, 15),
	}, runLabels)
	m.runLimits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "run_limits_total",
		Help: "Grading runs a limit ended, by limit (wall_time, cpu_time, memory, pids, output, disk) and server type.",
	}, []string{"limit", "type"})
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.commitSeconds, m.commitOps, m.deliveryLatency, m.tokenRefusals,
		m.wakeups.sent, m.wakeups.failed, m.grpcRequests, m.httpRequests,
		m.runCPU, m.runWall, m.runMemory, m.runLimits,
	)
	return m
}

// Registry returns the registry, for tests and for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text (or protobuf)
// exposition format. A collector that fails is logged and left out of the
// answer rather than failing the whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            m.reg,
		Timeout:             10 * time.Second,
		MaxRequestsInFlight: 4,
	})
}

// ObserveCommit records one batch of the dispatcher's writer: it is
// dispatch.Config.OnCommit.
func (m *Metrics) ObserveCommit(ops int, took time.Duration) {
	if m == nil {
		return
	}
	m.commitSeconds.Observe(took.Seconds())
	m.commitOps.Observe(float64(ops))
}

// ObserveDelivery records the latency of one acknowledged delivery: it is
// delivery.Config.OnDelivered.
func (m *Metrics) ObserveDelivery(latency time.Duration) {
	if m == nil {
		return
	}
	m.deliveryLatency.Observe(latency.Seconds())
}

// ObserveRun records one grading run whose result the broker kept: what
// it used (nil: its server measured nothing) and the limit that ended it,
// if one did. outcome is how it ended (ok, fatal, temporary, timeout,
// invalid), serverType its server's type: it is dispatch.Config.OnRun's
// work.
func (m *Metrics) ObserveRun(outcome, serverType string, u *broker.Usage, limit broker.Limit) {
	if m == nil {
		return
	}
	if u != nil {
		m.runCPU.WithLabelValues(outcome, serverType).Observe(u.CPUTime.Seconds())
		m.runWall.WithLabelValues(outcome, serverType).Observe(u.WallTime.Seconds())
		m.runMemory.WithLabelValues(outcome, serverType).Observe(float64(u.PeakMemory))
	}
	if limit != "" {
		m.runLimits.WithLabelValues(string(limit), serverType).Inc()
	}
}

// TokenRefused counts one refused platform token; reason is one of
// TokenReasons (anything else is counted as malformed, so that the label
// stays bounded).
func (m *Metrics) TokenRefused(reason string) {
	if m == nil {
		return
	}
	if !slices.Contains(TokenReasons, reason) {
		reason = ReasonMalformed
	}
	m.tokenRefusals.WithLabelValues(reason).Inc()
}

// Wakeups returns the wakeup counters, for the wakeup logic.
func (m *Metrics) Wakeups() *Wakeups {
	if m == nil {
		return nil
	}
	return m.wakeups
}

// Wakeups counts wakeup requests sent to idle grading servers. A nil
// *Wakeups ignores calls, so the wakeup logic may run without metrics.
type Wakeups struct {
	sent, failed *prometheus.CounterVec
}

// WakeupSent records one wakeup request to server: ok when its wakeup URL
// accepted it, false when the request failed.
func (w *Wakeups) WakeupSent(server string, ok bool) {
	if w == nil {
		return
	}
	if ok {
		w.sent.WithLabelValues(server).Inc()
	} else {
		w.failed.WithLabelValues(server).Inc()
	}
}

// ForgetServer drops a removed server's wakeup series.
func (w *Wakeups) ForgetServer(server string) {
	if w == nil {
		return
	}
	w.sent.DeleteLabelValues(server)
	w.failed.DeleteLabelValues(server)
}

// UnaryInterceptor counts unary gRPC calls by method and status code.
func (m *Metrics) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		m.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		return resp, err
	}
}

// StreamInterceptor counts gRPC streams by method and status code when
// they end (a graderd stream may last days).
func (m *Metrics) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		m.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		return err
	}
}

// HTTPHandler counts the requests next serves by route and status code.
// routes are the paths counted under their own name; any other path counts
// as "other", so that a scan of random URLs cannot grow the series.
func (m *Metrics) HTTPHandler(next http.Handler, routes ...string) http.Handler {
	known := make(map[string]bool, len(routes))
	for _, r := range routes {
		known[r] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		path := r.URL.Path
		if !known[path] {
			path = "other"
		}
		m.httpRequests.WithLabelValues(path, strconv.Itoa(sw.code)).Inc()
	})
}

// statusWriter remembers the status code of a response.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
