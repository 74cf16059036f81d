package brokerd

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// testEnv is a whole broker in-process on 127.0.0.1:0 with a test CA.
type testEnv struct {
	t  *testing.T
	b  *Broker
	ca *certstest.CA
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// writeRSAKey writes a new RSA key as PKCS#8 PEM, mode 0600, and returns it.
func writeRSAKey(t *testing.T, path string) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// startBroker starts a broker with metrics on 127.0.0.1:0 (or as mod sets).
func startBroker(t *testing.T, mod func(*Config)) *testEnv {
	t.Helper()
	e := newBroker(t, mod)
	if err := e.b.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { e.b.Close() })
	return e
}

// newBroker makes a broker on a new database with a test CA, not started.
func newBroker(t *testing.T, mod func(*Config)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t, "test")
	bf := ca.Broker(t)
	cfg := DefaultConfig()
	cfg.Database = filepath.Join(dir, "gb.db")
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = ca.CertFile, bf.CertFile, bf.KeyFile
	cfg.TokenKeyFile = filepath.Join(dir, "broker-token.key")
	writeRSAKey(t, cfg.TokenKeyFile)
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(context.Background(), cfg, testLog)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &testEnv{t: t, b: b, ca: ca}
}

// TestFailedStartClosesTheBroker: a Start that fails (here the HTTP port
// is taken) leaves nothing open, the database included, and Close after it
// has nothing left to do.
func TestFailedStartClosesTheBroker(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	e := newBroker(t, func(c *Config) { c.HTTPAddr = taken.Addr().String() })
	err = e.b.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "http_addr") {
		t.Fatalf("Start with the HTTP port taken = %v, want an http_addr error", err)
	}
	if _, err := e.b.DB().ListServerTypes(context.Background()); err == nil {
		t.Fatal("the database still answers after a failed Start")
	}
	if err := e.b.Close(); err != nil {
		t.Fatalf("Close after a failed Start = %v, want nil", err)
	}
}

// scrape fetches /metrics from the metrics port and returns every sample,
// keyed name{label="value",...} as the text format writes it.
func (e *testEnv) scrape() map[string]float64 {
	e.t.Helper()
	resp, err := http.Get("http://" + e.b.MetricsAddr() + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("GET /metrics = %s: %s", resp.Status, b)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			e.t.Fatalf("bad sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// expect checks samples of a scrape; a missing sample counts as absent.
func (e *testEnv) expect(when string, got map[string]float64, want map[string]float64) {
	e.t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			e.t.Errorf("%s: %s = %v (present %v), want %v", when, k, g, ok, v)
		}
	}
}

// grader is a minimal graderd: one Connect stream the test drives.
type grader struct {
	t      *testing.T
	stream gbv1.GraderService_ConnectClient
	in     chan *gbv1.ConnectResponse
	kept   []*gbv1.Assign // assignments that came while waiting for an Ack
}

// connect opens a Connect stream with the server certificate f.
func (e *testEnv) connect(f certstest.Files, name string, slots int) *grader {
	e.t.Helper()
	src, err := certs.NewClientSource(f.CertFile, f.KeyFile, e.ca.CertFile, testLog)
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.b.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig("localhost"))))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := gbv1.NewGraderServiceClient(conn).Connect(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	g := &grader{t: e.t, stream: stream, in: make(chan *gbv1.ConnectResponse, 100)}
	if err := stream.Send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Hello{Hello: &gbv1.Hello{
		Version: "test", Slots: uint32(slots), Hostname: name}}}); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		defer close(g.in)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			g.in <- m
		}
	}()
	if m := g.next(); m.GetWelcome() == nil {
		e.t.Fatalf("first message %v, want Welcome", m)
	}
	return g
}

func (g *grader) next() *gbv1.ConnectResponse {
	g.t.Helper()
	var m *gbv1.ConnectResponse
	var ok bool
	testutil.Eventually(g.t, "the broker's next message", func() bool {
		select {
		case m, ok = <-g.in:
			return true
		default:
			return false
		}
	})
	if !ok {
		g.t.Fatal("stream ended")
	}
	return m
}

func (g *grader) assign() *gbv1.Assign {
	g.t.Helper()
	if len(g.kept) > 0 {
		a := g.kept[0]
		g.kept = g.kept[1:]
		return a
	}
	for {
		if a := g.next().GetAssign(); a != nil {
			return a
		}
	}
}

// report sends a result and waits for its Ack, which comes after commit.
func (g *grader) report(a *gbv1.Assign, outcome gbv1.Outcome, result string) {
	g.t.Helper()
	g.reportRun(a, outcome, result, nil, gbv1.Limit_LIMIT_UNSPECIFIED)
}

// reportRun is report of a run that used u and that limit ended.
func (g *grader) reportRun(a *gbv1.Assign, outcome gbv1.Outcome, result string, u *gbv1.Usage, limit gbv1.Limit) {
	g.t.Helper()
	if err := g.stream.Send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{
		JobId: a.JobId, LeaseId: a.LeaseId, Outcome: outcome, Result: []byte(result), Usage: u, Limit: limit}}}); err != nil {
		g.t.Fatal(err)
	}
	for {
		m := g.next()
		if ack := m.GetAck(); ack != nil {
			for _, l := range ack.Leases {
				if l.LeaseId == a.LeaseId {
					return
				}
			}
		}
		if m.GetReject() != nil {
			g.t.Fatalf("result refused: %v", m)
		}
		if a := m.GetAssign(); a != nil {
			g.kept = append(g.kept, a)
		}
	}
}

// TestMetricsFollowJobs runs jobs through a whole broker and watches the
// main series change on the metrics port.
func TestMetricsFollowJobs(t *testing.T) {
	t.Parallel()
	e := startBroker(t, nil)
	ctx := context.Background()
	db := e.b.DB()

	// A platform whose callbacks are acknowledged, for delivery latency.
	callbacks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	t.Cleanup(callbacks.Close)
	platKey := writeRSAKey(t, filepath.Join(t.TempDir(), "plat.key"))
	spki, err := x509.MarshalPKIXPublicKey(&platKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddTag(ctx, "py", ""); err != nil {
		t.Fatal(err)
	}
	st, err := db.AddServerType(ctx, "pytype", []string{"py"})
	if err != nil {
		t.Fatal(err)
	}
	plat, err := db.AddPlatform(ctx, broker.Platform{Name: "plat", ReturnURL: callbacks.URL + "/cb",
		PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))})
	if err != nil {
		t.Fatal(err)
	}
	srvCert := e.ca.Client(t, certs.RoleServer, "g1")
	id := certs.IdentityOf(srvCert.Cert)
	if _, err := db.AddServer(ctx, broker.Server{Name: "g1", Type: "pytype", MaxConcurrentJobs: 4,
		Cert: broker.CertIdentity{Serial: id.Serial, Issuer: id.Issuer, Subject: id.Subject, Fingerprint: id.Fingerprint, NotAfter: id.NotAfter}}); err != nil {
		t.Fatal(err)
	}

	jobs := make([]broker.NewJob, 3)
	for i := range jobs {
		jobs[i] = broker.NewJob{PlatformID: plat.ID, Name: "j", Tags: []string{"py"}, Timeout: time.Minute,
			JobData: []byte(`{"n":1}`), TypeIDs: []int64{st.ID}}
	}
	if _, err := e.b.Dispatcher().Submit(ctx, jobs, nil, "test"); err != nil {
		t.Fatal(err)
	}
	m := e.scrape()
	e.expect("3 jobs, no server", m, map[string]float64{
		`gradebroker_jobs{state="queued",type="pytype"}`:  3,
		`gradebroker_jobs{state="running",type="pytype"}`: 0,
		`gradebroker_servers_connected{type="pytype"}`:    0,
		`gradebroker_free_slots{type="pytype"}`:           0,
		`gradebroker_assignments_total`:                   0,
	})
	if m[`gradebroker_queue_oldest_age_seconds{type="pytype"}`] < 0 {
		t.Error("negative queue age")
	}
	if m["gradebroker_write_batch_duration_seconds_count"] < 1 || m["gradebroker_write_batch_ops_count"] < 1 {
		t.Errorf("no batch commit observed after a submission: %v batches", m["gradebroker_write_batch_duration_seconds_count"])
	}

	g := e.connect(srvCert, "g1", 2)
	a1, a2 := g.assign(), g.assign()
	e.expect("2 of 3 running", e.scrape(), map[string]float64{
		`gradebroker_jobs{state="queued",type="pytype"}`:  1,
		`gradebroker_jobs{state="running",type="pytype"}`: 2,
		`gradebroker_servers_connected{type="pytype"}`:    1,
		`gradebroker_free_slots{type="pytype"}`:           0,
		`gradebroker_assignments_total`:                   2,
		`gradebroker_assignment_attempt_bucket{le="1"}`:   2,
	})

	g.reportRun(a1, gbv1.Outcome_OUTCOME_OK, `{"score":100}`, &gbv1.Usage{CpuTime: durationpb.New(300 * time.Millisecond),
		PeakMemoryBytes: 40 << 20, WallTime: durationpb.New(500 * time.Millisecond)}, gbv1.Limit_LIMIT_UNSPECIFIED)
	a3 := g.assign()
	g.reportRun(a2, gbv1.Outcome_OUTCOME_FATAL, "", &gbv1.Usage{CpuTime: durationpb.New(2 * time.Second),
		PeakMemoryBytes: 1 << 30, WallTime: durationpb.New(3 * time.Second)}, gbv1.Limit_LIMIT_MEMORY)
	m = e.scrape()
	// What each run used, by outcome and server type.
	e.expect("two runs measured", m, map[string]float64{
		`gradebroker_run_cpu_seconds_count{outcome="ok",type="pytype"}`:        1,
		`gradebroker_run_cpu_seconds_sum{outcome="ok",type="pytype"}`:          0.3,
		`gradebroker_run_wall_seconds_sum{outcome="ok",type="pytype"}`:         0.5,
		`gradebroker_run_peak_memory_bytes_sum{outcome="ok",type="pytype"}`:    40 << 20,
		`gradebroker_run_cpu_seconds_sum{outcome="fatal",type="pytype"}`:       2,
		`gradebroker_run_wall_seconds_count{outcome="fatal",type="pytype"}`:    1,
		`gradebroker_run_peak_memory_bytes_sum{outcome="fatal",type="pytype"}`: 1 << 30,
		`gradebroker_run_limits_total{limit="memory",type="pytype"}`:           1,
	})
	e.expect("one done, one failed, one running", m, map[string]float64{
		`gradebroker_jobs{state="queued",type="pytype"}`:      0,
		`gradebroker_jobs{state="running",type="pytype"}`:     1,
		`gradebroker_queue_oldest_age_seconds{type="pytype"}`: 0,
		`gradebroker_free_slots{type="pytype"}`:               1,
		`gradebroker_assignments_total`:                       3,
		`gradebroker_results_total{outcome="ok"}`:             1,
		`gradebroker_results_total{outcome="fatal"}`:          1,
		`gradebroker_jobs_finished_total{state="done"}`:       1,
		`gradebroker_jobs_finished_total{state="failed"}`:     1,
		`gradebroker_stale_results_total`:                     0,
	})
	g.report(a3, gbv1.Outcome_OUTCOME_TEMPORARY, "")
	a4 := g.assign() // the same job, attempt 2: the only server
	if a4.JobId != a3.JobId || a4.Attempt != 2 {
		t.Fatalf("after TEMPORARY got %v, want job %d again at attempt 2", a4, a3.JobId)
	}
	// A late result for the old lease is refused and counted.
	if err := g.stream.Send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{
		JobId: a3.JobId, LeaseId: a3.LeaseId, Outcome: gbv1.Outcome_OUTCOME_OK, Result: []byte(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	for {
		m := g.next()
		if m.GetReject() != nil {
			break
		}
		if a := m.GetAssign(); a != nil {
			g.kept = append(g.kept, a)
		}
	}
	g.report(a4, gbv1.Outcome_OUTCOME_OK, `{"score":1}`)
	e.expect("a retry", e.scrape(), map[string]float64{
		`gradebroker_results_total{outcome="temporary"}`:  1,
		`gradebroker_requeues_total`:                      1,
		`gradebroker_stale_results_total`:                 1,
		`gradebroker_assignment_attempt_bucket{le="1"}`:   3,
		`gradebroker_assignment_attempt_bucket{le="2"}`:   4,
		`gradebroker_jobs_finished_total{state="done"}`:   2,
		`gradebroker_jobs{state="running",type="pytype"}`: 0,
		`gradebroker_free_slots{type="pytype"}`:           2,
	})

	// The three results reach the platform; the latency histogram sees them.
	testutil.Eventually(t, "3 deliveries in the latency histogram", func() bool {
		m = e.scrape()
		return m["gradebroker_delivery_latency_seconds_count"] == 3
	})
	if _, ok := m[`gradebroker_deliveries{state="delivered"}`]; !ok {
		t.Error("no gradebroker_deliveries gauge")
	}
	e.expect("delivered", m, map[string]float64{`gradebroker_deliveries_dead_unresolved`: 0})

	// A garbage token is refused, counted by reason, and its request by code.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: e.caPool(), MinVersion: tls.VersionTLS13}}}
	resp, err := hc.Post("https://"+e.b.HTTPAddr()+"/v1/jobs", "application/json", strings.NewReader(`{"token":"garbage"}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("garbage token: HTTP %d, want 400", resp.StatusCode)
	}
	e.expect("a garbage token", e.scrape(), map[string]float64{
		`gradebroker_token_refusals_total{reason="malformed"}`:        1,
		`gradebroker_token_refusals_total{reason="bad_signature"}`:    0,
		`gradebroker_http_requests_total{code="400",path="/v1/jobs"}`: 1,
	})
}

func (e *testEnv) caPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.ca.Cert)
	return p
}

// TestHealthEndpoints checks /healthz and /readyz on both ports, and gRPC
// health, which turns NOT_SERVING when the broker closes.
func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	e := startBroker(t, nil)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + e.b.MetricsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("metrics port %s = %d", path, resp.StatusCode)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.caPool(), MinVersion: tls.VersionTLS13}}}
		resp, err = hc.Get("https://" + e.b.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("gateway %s = %d", path, resp.StatusCode)
		}
	}

	f := e.ca.Client(t, certs.RoleOperator, "op")
	src, err := certs.NewClientSource(f.CertFile, f.KeyFile, e.ca.CertFile, testLog)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.b.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig("localhost"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	res, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Check = %v, %v; want SERVING", res, err)
	}
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	watch, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch first = %v, %v", r, err)
	}
	closed := make(chan error, 1)
	go func() { closed <- e.b.Close() }()
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("Watch during Close = %v, %v; want NOT_SERVING", r, err)
	}
	// GracefulStop waits for open streams, a Watch too.
	stopWatch()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + e.b.MetricsAddr() + "/healthz"); err == nil {
		t.Error("the metrics port still answers after Close")
	}
}

func TestMetricsPortOff(t *testing.T) {
	t.Parallel()
	e := startBroker(t, func(c *Config) { c.MetricsAddr = "" })
	if a := e.b.MetricsAddr(); a != "" {
		t.Fatalf("MetricsAddr = %q with metrics_addr empty, want \"\"", a)
	}
}

func TestMetricsAddrMustBeLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:9090", false, true},
		{"127.0.0.2:9090", false, true},
		{"[::1]:9090", false, true},
		{"localhost:9090", false, true},
		{"", false, true},
		{"0.0.0.0:9090", false, false},
		{":9090", false, false},
		{"[::]:9090", false, false},
		{"10.1.2.3:9090", false, false},
		{"metrics.example.org:9090", false, false},
		{"9090", false, false},
		{"0.0.0.0:9090", true, true},
		{":9090", true, true},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		cfg.MetricsAddr, cfg.MetricsAllowRemote = tt.addr, tt.remote
		err := cfg.Validate()
		if tt.ok && err != nil {
			t.Errorf("metrics_addr %q (allow remote %v): %v, want ok", tt.addr, tt.remote, err)
		}
		if !tt.ok && (err == nil || !strings.HasPrefix(err.Error(), "metrics_addr:")) {
			t.Errorf("metrics_addr %q (allow remote %v): %v, want an error naming metrics_addr", tt.addr, tt.remote, err)
		}
	}

	// The flags and the file feed the same check.
	if _, err := ParseServeFlags([]string{"--metrics-addr", "0.0.0.0:9090"}, io.Discard); err == nil || !strings.Contains(err.Error(), "metrics_addr") {
		t.Errorf("--metrics-addr 0.0.0.0:9090 = %v, want an error naming metrics_addr", err)
	}
	cfg, err := ParseServeFlags([]string{"--metrics-addr", "0.0.0.0:9090", "--metrics-allow-remote"}, io.Discard)
	if err != nil || cfg.MetricsAddr != "0.0.0.0:9090" || !cfg.MetricsAllowRemote {
		t.Errorf("with --metrics-allow-remote: %+v, %v", cfg, err)
	}
	file := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(file, []byte("metrics_addr: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if cfg, err := ParseServeFlags([]string{"--config", file}, io.Discard); err != nil || cfg.MetricsAddr != "" {
		t.Errorf("metrics_addr \"\" in the file: %q, %v; want it off", cfg.MetricsAddr, err)
	}
	if d := DefaultConfig().MetricsAddr; d != "127.0.0.1:9090" {
		t.Errorf("default metrics_addr = %q", d)
	}
}
