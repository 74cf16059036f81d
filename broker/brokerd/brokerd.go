// Package brokerd wires the broker together: the store, the dispatcher, the
// admin and grader services on the gRPC port, and the platforms' REST
// gateway on the HTTPS port. cmd/broker only parses flags and calls Run; tests
// start a whole broker in-process with New and Start on 127.0.0.1:0.
package brokerd

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/delivery"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/graderapi"
	"github.com/gradebroker/gradebroker/broker/graderqueue"
	"github.com/gradebroker/gradebroker/broker/metrics"
	"github.com/gradebroker/gradebroker/broker/platform"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/broker/wakeup"
	"github.com/gradebroker/gradebroker/broker/xqueue"
	"github.com/gradebroker/gradebroker/certs"
)

// Broker is one running broker.
type Broker struct {
	cfg Config
	log *slog.Logger

	db      *store.DB
	tls     *certs.Source
	disp    *dispatch.Dispatcher
	grader  *graderapi.Server
	admin   *adminapi.Service
	plat    *platform.Service
	deliv   *delivery.Worker
	xq      *xqueue.Service
	wake    *wakeup.Waker
	keys    *token.KeyRing
	grpc    *grpc.Server
	health  *health.Server
	http    *http.Server
	grpcLis net.Listener
	httpLis net.Listener

	metrics    *metrics.Metrics
	metricsLis net.Listener
	metricsSrv *http.Server

	maintSvc maintServices  // retention and alerts (maint.go)
	console  consoleService // the web console (console.go)

	// stops undoes what Start started, in the order it started it; Close,
	// or a Start that fails, runs it backwards.
	stops []stopStep
	// afterStep, if set, is called after each step of Start with its name;
	// an error fails Start there. Tests use it.
	afterStep func(name string) error

	errOnce sync.Once
	err     error
	failed  chan struct{}
	closed  sync.Once
}

// stopStep undoes one step of Start; ctx bounds the waiting for requests
// and streams under way (ShutdownTimeout).
type stopStep struct {
	name string
	stop func(ctx context.Context)
}

// New checks cfg, opens the database and loads the certificates. Nothing
// listens yet.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	b := &Broker{cfg: cfg, log: log, failed: make(chan struct{})}
	src, err := certs.NewServerSource(cfg.CertFile, cfg.KeyFile, cfg.CAFile, log)
	if err != nil {
		return nil, fmt.Errorf("broker TLS: %w", err)
	}
	b.tls = src
	if b.keys, err = loadKeyRing(cfg.TokenKeyFile, cfg.TokenNextKeyFile); err != nil {
		return nil, err
	}
	db, err := store.Open(ctx, cfg.Database, store.Options{})
	if err != nil {
		return nil, err
	}
	b.db = db
	b.metrics = metrics.New(log)
	b.disp = dispatch.New(db, dispatch.Config{
		MaxAttempts:       cfg.MaxAttempts,
		DefaultTimeout:    cfg.DefaultTimeout,
		MaxTimeout:        cfg.MaxTimeout,
		LeaseGrace:        cfg.LeaseGrace,
		ReconnectGrace:    cfg.ReconnectGrace,
		HeartbeatInterval: cfg.HeartbeatInterval,
		OnCommit:          onCommit(b.metrics, cfg.OnCommit),
		OnRun:             func(r dispatch.Run) { b.metrics.ObserveRun(r.Outcome, r.ServerType, r.Usage, r.Limit) },
	}, log)
	b.grader = graderapi.New(b.disp, log)
	b.admin = adminapi.New(db, func() *x509.CertPool { return b.tls.CAPool() }, b.disp, log)
	dcfg := delivery.Config{Broker: cfg.Name, Window: cfg.DeliveryWindow,
		Timeout: cfg.DeliveryTimeout, PerPlatform: cfg.DeliveryPerPlatform, CAFile: cfg.DeliveryCAFile,
		Protocols: map[broker.Protocol]delivery.Protocol{
			broker.ProtocolGraderqueue: delivery.NewGraderqueueCallback(b.keys, cfg.Name, 0),
		},
		OnDelivered: b.metrics.ObserveDelivery}
	b.newXQueue(&dcfg)
	b.deliv, err = delivery.New(db, b.keys, dcfg, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	b.disp.SetFinalHook(b.deliv.Notify)
	b.admin.SetRedeliverer(b.deliv)
	b.admin.SetProtocols(b.deliv.Protocols()...)
	wakeKey, err := wakeup.LoadKey(cfg.WakeupKeyFile)
	if err == nil {
		b.wake, err = wakeup.New(wakeup.Config{Broker: cfg.Name, Key: wakeKey, OnResult: b.disp.WakeResult,
			OnSent: b.metrics.Wakeups().WakeupSent}, db, log)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("wakeup_key_file: %w", err)
	}
	b.disp.SetWaker(b.wake, cfg.WakeupInterval)
	b.plat = platform.New(platform.Config{Broker: cfg.Name, MaxTimeout: cfg.MaxTimeout,
		RequireCerts: cfg.RequirePlatformCerts, TokenRefused: b.metrics.TokenRefused}, db, b.disp, b.keys, log)
	if err := b.watchMetrics(); err != nil {
		db.Close()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := b.newMaint(); err != nil {
		db.Close()
		return nil, err
	}
	if err := b.newConsole(); err != nil {
		db.Close()
		return nil, err
	}
	return b, nil
}

// loadKeyRing reads the broker's token keys.
func loadKeyRing(current, next string) (*token.KeyRing, error) {
	read := func(field, path string) (*rsa.PrivateKey, error) {
		pemBytes, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		k, err := token.LoadPrivateKeyPEM(pemBytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", field, path, err)
		}
		return k, nil
	}
	cur, err := read("token_key_file", current)
	if err != nil {
		return nil, err
	}
	var nxt *rsa.PrivateKey
	if next != "" {
		if nxt, err = read("token_next_key_file", next); err != nil {
			return nil, err
		}
	}
	return token.NewKeyRing(cur, nxt)
}

// KeyRing returns the broker's token keys.
func (b *Broker) KeyRing() *token.KeyRing { return b.keys }

// DB returns the broker's store, for tests and tools in the same process.
func (b *Broker) DB() *store.DB { return b.db }

// Delivery returns the broker's result outbox worker.
func (b *Broker) Delivery() *delivery.Worker { return b.deliv }

// Waker returns the broker's wakeup sender.
func (b *Broker) Waker() *wakeup.Waker { return b.wake }

// Dispatcher returns the broker's dispatcher.
func (b *Broker) Dispatcher() *dispatch.Dispatcher { return b.disp }

// Platform returns the platform API service behind the REST gateway.
func (b *Broker) Platform() *platform.Service { return b.plat }

// GRPCAddr returns the address the gRPC port listens on, once started.
func (b *Broker) GRPCAddr() string { return b.grpcLis.Addr().String() }

// HTTPAddr returns the address the REST gateway listens on, once started.
func (b *Broker) HTTPAddr() string { return b.httpLis.Addr().String() }

// Start opens the listeners, starts the services, then serves in the
// background. It returns once the broker accepts connections. ctx bounds
// the start only: the broker runs until Close. A broker that fails to start
// stops what it started, in reverse order, and closes its database; Close
// is then a no-op.
func (b *Broker) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			b.closed.Do(func() {
				b.stopAll()
				b.db.Close()
			})
		}
	}()
	if err := b.listenMetrics(); err != nil {
		return err
	}
	if err := b.started("metrics listener", func(context.Context) { b.closeMetricsListener() }); err != nil {
		return err
	}
	if b.grpcLis, err = net.Listen("tcp", b.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("grpc_addr: %w", err)
	}
	if err := b.started("grpc listener", func(context.Context) { b.grpcLis.Close() }); err != nil {
		return err
	}
	if b.httpLis, err = net.Listen("tcp", b.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("http_addr: %w", err)
	}
	if err := b.started("https listener", func(context.Context) { b.httpLis.Close() }); err != nil {
		return err
	}
	if err := b.listenConsole(); err != nil {
		return err
	}
	err = b.startServices(ctx, service{"dispatcher", b.disp.Start, b.disp.Stop},
		service{"delivery", b.deliv.Start, b.deliv.Stop}, service{"wakeup", b.wake.Start, b.wake.Stop},
		service{"xqueue", b.xq.Start, b.xq.Stop})
	if err != nil {
		return err
	}

	b.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(b.tls.ServerTLSConfig())),
		grpc.ChainUnaryInterceptor(b.metrics.UnaryInterceptor(), b.admin.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(b.metrics.StreamInterceptor()),
		// graderd streams live for days; let dead peers be noticed.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	b.grader.Register(b.grpc)
	b.admin.Register(b.grpc)
	b.health = health.NewServer()
	healthpb.RegisterHealthServer(b.grpc, b.health)
	reflection.Register(b.grpc)

	gateway, err := b.plat.Handler(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", gateway)
	mux.Handle("/xqueue/", b.xq.Handler())
	// graderqueue's platform API, for platforms written for it.
	mux.Handle(graderqueue.Path, graderqueue.Handler(b.plat, graderqueue.Config{}, b.log))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", b.readyz)
	b.http = &http.Server{
		Handler:           b.metrics.HTTPHandler(mux, gatewayRoutes...),
		TLSConfig:         b.tls.ServerTLSConfigOptionalClient(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelWarn),
	}

	err = b.serve("grpc server", func(context.Context) error {
		if err := b.grpc.Serve(b.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	}, func(ctx context.Context) {
		// The graderd streams end first, or GracefulStop would wait for
		// them for ever.
		b.grader.Stop()
		done := make(chan struct{})
		go func() { b.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			b.grpc.Stop()
		}
	})
	if err != nil {
		return err
	}
	err = b.serve("https server", func(context.Context) error {
		if err := b.http.ServeTLS(b.httpLis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("https server: %w", err)
		}
		return nil
	}, func(ctx context.Context) {
		if err := b.http.Shutdown(ctx); err != nil {
			b.http.Close()
		}
	})
	if err != nil {
		return err
	}
	if err := b.serve("certificate reload", func(ctx context.Context) error { b.tls.Watch(ctx); return nil }, nil); err != nil {
		return err
	}
	err = b.serve("dispatcher watch", func(ctx context.Context) error {
		select {
		case <-b.disp.Done():
			return b.disp.Err()
		case <-ctx.Done():
			return nil
		}
	}, nil)
	if err != nil {
		return err
	}
	if err := b.serveMetrics(); err != nil {
		return err
	}
	if err := b.serveConsole(ctx); err != nil {
		return err
	}
	if err := b.startMaint(ctx); err != nil {
		return err
	}
	b.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	b.log.Info("broker started", "name", b.cfg.Name, "grpc_addr", b.GRPCAddr(), "http_addr", b.HTTPAddr(), "database", b.cfg.Database)
	return nil
}

// service is a background service (internal/startstop): Start(ctx) error
// and Stop().
type service struct {
	name  string
	start func(context.Context) error
	stop  func()
}

// startServices starts svcs in order, each a step of Start.
func (b *Broker) startServices(ctx context.Context, svcs ...service) error {
	for _, svc := range svcs {
		if err := svc.start(ctx); err != nil {
			return fmt.Errorf("%s: %w", svc.name, err)
		}
		if err := b.started(svc.name, func(context.Context) { svc.stop() }); err != nil {
			return err
		}
	}
	return nil
}

// started records how to undo the step of Start just done.
func (b *Broker) started(name string, stop func(ctx context.Context)) error {
	b.stops = append(b.stops, stopStep{name: name, stop: stop})
	if b.afterStep != nil {
		return b.afterStep(name)
	}
	return nil
}

// serve runs run on its own goroutine until its stop (shutdown, when not
// nil, then the end of run's context) and records the step. An error from
// run fails the broker.
func (b *Broker) serve(name string, run func(ctx context.Context) error, shutdown func(ctx context.Context)) error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			b.fail(err)
		}
	}()
	return b.started(name, func(stopCtx context.Context) {
		if shutdown != nil {
			shutdown(stopCtx)
		}
		cancel()
		<-done
	})
}

// stopAll undoes the steps of Start, last first.
func (b *Broker) stopAll() {
	if b.health != nil {
		b.health.Shutdown()
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.ShutdownTimeout)
	defer cancel()
	for i := len(b.stops) - 1; i >= 0; i-- {
		b.stops[i].stop(ctx)
	}
	b.stops = nil
}

func (b *Broker) readyz(w http.ResponseWriter, r *http.Request) {
	select {
	case <-b.failed:
		http.Error(w, "failed: "+b.err.Error(), http.StatusServiceUnavailable)
		return
	default:
	}
	select {
	case <-b.disp.Done():
		http.Error(w, "dispatcher stopped", http.StatusServiceUnavailable)
		return
	default:
	}
	if _, err := b.db.MaxLeaseID(r.Context()); err != nil {
		http.Error(w, "database not ready", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (b *Broker) fail(err error) {
	b.errOnce.Do(func() {
		b.err = err
		b.log.Error("broker failed", "err", err)
		if b.health != nil {
			b.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		}
		close(b.failed)
	})
}

// Failed is closed when a component failed for good; Err says why.
func (b *Broker) Failed() <-chan struct{} { return b.failed }

// Err returns why the broker failed, or nil.
func (b *Broker) Err() error {
	select {
	case <-b.failed:
		return b.err
	default:
		return nil
	}
}

// Close stops the broker in the reverse order of Start: no new requests,
// streams closed, services stopped, pending changes committed, database
// closed. It is idempotent.
func (b *Broker) Close() error {
	var err error
	b.closed.Do(func() {
		b.stopAll()
		err = b.db.Close()
		b.log.Info("broker stopped")
	})
	return err
}

// Run starts the broker and serves until ctx ends or a component fails.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	b, err := New(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down", "cause", context.Cause(ctx))
	case <-b.Failed():
	}
	cerr := b.Close()
	return errors.Join(b.Err(), cerr)
}

// onCommit feeds the dispatcher's group commits to the metrics and to the
// configured hook, if any.
func onCommit(m *metrics.Metrics, hook func(int, time.Duration)) func(int, time.Duration) {
	if hook == nil {
		return m.ObserveCommit
	}
	return func(ops int, took time.Duration) {
		m.ObserveCommit(ops, took)
		hook(ops, took)
	}
}
