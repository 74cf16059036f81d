package brokerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/metrics"
)

// gatewayRoutes are the paths of the HTTPS port that requests are counted
// under by name; any other path is counted as "other".
var gatewayRoutes = []string{"/v1/test", "/v1/jobs", "/v1/jobs:batch", "/v1/solutions", "/v1/jobs:get",
	"/v1/jobs:cancel", "/v1/keys", "/healthz", "/readyz", "/api.php",
	"/xqueue/login/", "/xqueue/logout/", "/xqueue/status/", "/xqueue/submit/", "/xqueue/get_queuelen/",
	"/xqueue/get_submission/", "/xqueue/put_result/"}

// validateMetricsAddr checks metrics_addr: empty (off), or host:port on a
// loopback address unless remote is allowed. DESIGN: every listener refuses
// plaintext except an optional metrics port bound to loopback.
func validateMetricsAddr(addr string, allowRemote bool) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics_addr: %q is not host:port: %w", addr, err)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if host == "" {
		host = "every interface"
	}
	return fmt.Errorf("metrics_addr: %q listens on %s, not loopback; the metrics port is plain HTTP without authentication, so bind it to 127.0.0.1 or [::1], or set metrics_allow_remote (--metrics-allow-remote) to expose it anyway", addr, host)
}

// Metrics returns the broker's metrics, for the packages that feed them (the
// wakeup logic: b.Metrics().Wakeups()) and for tests.
func (b *Broker) Metrics() *metrics.Metrics { return b.metrics }

// MetricsAddr returns the address the metrics port listens on once started,
// or "" when it is off.
func (b *Broker) MetricsAddr() string {
	if b.metricsLis == nil {
		return ""
	}
	return b.metricsLis.Addr().String()
}

// watchMetrics registers the collector that reads the dispatcher, the
// delivery worker and the store at scrape time.
func (b *Broker) watchMetrics() error {
	return b.metrics.Watch(metrics.Sources{
		Dispatch: func() metrics.DispatchSnapshot { return dispatchSnapshot(b.disp.MetricsSnapshot()) },
		Delivery: func() metrics.DeliveryStats {
			s := b.deliv.Stats()
			return metrics.DeliveryStats{Attempts: s.Attempts, Retried: s.Retried, Dead: s.Dead,
				Superseded: s.Superseded, InFlight: s.InFlight}
		},
		DeliveryCounts: func(ctx context.Context) (map[string]int, error) {
			c, err := b.db.DeliveryCounts(ctx)
			if err != nil {
				return nil, err
			}
			return map[string]int{"pending": c[broker.DeliveryPending], "delivered": c[broker.DeliveryDelivered],
				"dead": c[broker.DeliveryDead]}, nil
		},
		DeadUnresolved: b.db.UnresolvedDeadDeliveries,
		ServerTypes: func(ctx context.Context) (map[int64]string, error) {
			ts, err := b.db.ListServerTypes(ctx)
			if err != nil {
				return nil, err
			}
			out := make(map[int64]string, len(ts))
			for _, t := range ts {
				out[t.ID] = t.Name
			}
			return out, nil
		},
	})
}

// dispatchSnapshot turns the dispatcher's snapshot into the collector's.
func dispatchSnapshot(s dispatch.MetricsSnapshot) metrics.DispatchSnapshot {
	out := metrics.DispatchSnapshot{
		Now:            s.Now,
		Types:          make(map[int64]metrics.TypeGauges, len(s.Types)),
		TypeNames:      s.TypeNames,
		Assigned:       s.Stats.Assigned,
		StaleResults:   s.Stats.StaleResults,
		Expired:        s.Stats.Expired,
		Requeued:       s.Stats.Requeued,
		Results:        make(map[string]uint64, len(s.Results)),
		Finished:       make(map[string]uint64, len(s.Final)),
		AssignAttempts: s.AssignAttempts[:],
	}
	for id, g := range s.Types {
		out.Types[id] = metrics.TypeGauges(g)
	}
	for i, n := range s.Results {
		out.Results[dispatch.ResultNames[i]] = n
	}
	for st, n := range s.Final {
		out.Finished[st.String()] = n
	}
	return out
}

// listenMetrics opens the metrics port, if configured.
func (b *Broker) listenMetrics() error {
	if b.cfg.MetricsAddr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", b.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics_addr: %w", err)
	}
	b.metricsLis = lis
	return nil
}

// serveMetrics serves /metrics, /healthz and /readyz in plain HTTP on the
// metrics port, if it is open.
func (b *Broker) serveMetrics() error {
	if b.metricsLis == nil {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", b.metrics.Handler())
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", b.readyz)
	b.metricsSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelWarn),
	}
	err := b.serve("metrics server", func(context.Context) error {
		if err := b.metricsSrv.Serve(b.metricsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics server: %w", err)
		}
		return nil
	}, func(ctx context.Context) {
		// Scrapes under way finish first, so that none reads the database
		// after it is closed.
		if err := b.metricsSrv.Shutdown(ctx); err != nil {
			b.metricsSrv.Close()
		}
	})
	if err == nil {
		b.log.Info("metrics listening", "metrics_addr", b.MetricsAddr())
	}
	return err
}

// closeMetricsListener closes the metrics port when it was opened but not
// served (Start failed before); the server closes it otherwise.
func (b *Broker) closeMetricsListener() {
	if b.metricsLis != nil && b.metricsSrv == nil {
		b.metricsLis.Close()
	}
}

func healthz(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) }
