package graderd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// fakeBroker is a real gRPC server over real mutual TLS 1.3 that implements
// GraderService with whatever each test tells it: it answers Hello with a
// Welcome and hands every stream to the test as a brokerStream.
type fakeBroker struct {
	gradebrokerv1.UnimplementedGraderServiceServer

	t       *testing.T
	pki     *testPKI
	addr    string
	welcome *gradebrokerv1.Welcome
	streams chan *brokerStream

	mu     sync.Mutex
	srv    *grpc.Server
	refuse error // returned by Connect before reading anything
}

var _ gradebrokerv1.GraderServiceServer = (*fakeBroker)(nil)

// brokerStream is one graderd stream as the fake broker sees it.
type brokerStream struct {
	hello *gradebrokerv1.Hello
	in    chan *gradebrokerv1.ConnectRequest  // everything after Hello; closed when the stream ends
	out   chan *gradebrokerv1.ConnectResponse // sent to graderd in order
	kill  chan error                          // ends the stream with this error
	ended chan struct{}
}

const heartbeatForTests = 50 * time.Millisecond

func startFakeBroker(t *testing.T, pki *testPKI) *fakeBroker {
	t.Helper()
	fb := &fakeBroker{
		t:   t,
		pki: pki,
		welcome: &gradebrokerv1.Welcome{
			Server:            "grader1",
			Type:              "python",
			Tags:              []string{"python3", "course-6.00x"},
			HeartbeatInterval: durationpb.New(heartbeatForTests),
			MaxConcurrentJobs: 4,
		},
		streams: make(chan *brokerStream, 16),
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb.addr = lis.Addr().String()
	fb.serve(lis)
	t.Cleanup(fb.stop)
	return fb
}

func (fb *fakeBroker) serve(lis net.Listener) {
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(fb.pki.ServerTLS)))
	gradebrokerv1.RegisterGraderServiceServer(srv, fb)
	fb.mu.Lock()
	fb.srv = srv
	fb.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

// stop closes the listener and every stream at once, like a crashed broker.
func (fb *fakeBroker) stop() {
	fb.mu.Lock()
	srv := fb.srv
	fb.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// restart stops the broker and starts a new one on the same address.
func (fb *fakeBroker) restart(t *testing.T) {
	t.Helper()
	fb.stop()
	var lis net.Listener
	testutil.Eventually(t, "the fake broker's port "+fb.addr+" to be free again", func() bool {
		var err error
		lis, err = net.Listen("tcp", fb.addr)
		return err == nil
	})
	fb.serve(lis)
}

// setSilent makes the broker accept streams and never answer Hello.
func (fb *fakeBroker) setSilent() {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	fb.welcome = nil
}

func (fb *fakeBroker) setRefuse(err error) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	fb.refuse = err
}

// Connect checks the peer like the real broker, answers Hello and hands the
// stream to the test.
func (fb *fakeBroker) Connect(stream gradebrokerv1.GraderService_ConnectServer) error {
	fb.mu.Lock()
	refuse, welcome := fb.refuse, fb.welcome
	fb.mu.Unlock()
	if refuse != nil {
		return refuse
	}
	id, err := certs.PeerIdentityFromContext(stream.Context())
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "no usable client certificate: %v", err)
	}
	if id.Role != certs.RoleServer {
		return status.Errorf(codes.PermissionDenied, "certificate %s is not a server's", id)
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := m.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "first message must be Hello")
	}
	if welcome == nil {
		// A broker that accepts the stream and never answers.
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	if err := stream.Send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	bs := &brokerStream{
		hello: hello,
		in:    make(chan *gradebrokerv1.ConnectRequest, 10000),
		out:   make(chan *gradebrokerv1.ConnectResponse, 100),
		kill:  make(chan error, 1),
		ended: make(chan struct{}),
	}
	defer close(bs.ended)
	fb.streams <- bs
	recvErr := make(chan error, 1)
	go func() {
		defer close(bs.in)
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			bs.in <- m
		}
	}()
	for {
		select {
		case m := <-bs.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-bs.kill:
			return err
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// nextStream waits for graderd to connect.
func (fb *fakeBroker) nextStream(t *testing.T) *brokerStream {
	t.Helper()
	select {
	case bs := <-fb.streams:
		return bs
	case <-time.After(10 * time.Second):
		t.Fatal("graderd did not connect to the fake broker within 10s")
	}
	return nil
}

func (bs *brokerStream) send(m *gradebrokerv1.ConnectResponse) {
	select {
	case bs.out <- m:
	case <-bs.ended:
	}
}

func (bs *brokerStream) assign(a *gradebrokerv1.Assign) {
	if a.Timeout == nil {
		a.Timeout = durationpb.New(time.Minute)
	}
	bs.send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Assign{Assign: a}})
}

func (bs *brokerStream) ack(refs ...*gradebrokerv1.LeaseRef) {
	bs.send(&gradebrokerv1.ConnectResponse{Msg: &gradebrokerv1.ConnectResponse_Ack{Ack: &gradebrokerv1.Ack{Leases: refs}}})
}

// expect returns the next message for which match is true, dropping the
// others, or fails after timeout.
func (bs *brokerStream) expect(t *testing.T, timeout time.Duration, what string, match func(*gradebrokerv1.ConnectRequest) bool) *gradebrokerv1.ConnectRequest {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-bs.in:
			if !ok {
				t.Fatalf("stream ended while waiting for %s", what)
			}
			if match(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s from graderd within %v", what, timeout)
		}
	}
}

// result returns the next Result, skipping heartbeats and slot changes.
func (bs *brokerStream) result(t *testing.T) *gradebrokerv1.Result {
	t.Helper()
	return bs.expect(t, 10*time.Second, "Result", func(m *gradebrokerv1.ConnectRequest) bool { return m.GetResult() != nil }).GetResult()
}

// noResult checks that no Result arrives during d: the wait is what is
// tested, an absence.
func (bs *brokerStream) noResult(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-bs.in:
			if !ok {
				return
			}
			if r := m.GetResult(); r != nil {
				t.Fatalf("unexpected Result: %v", r)
			}
		case <-deadline:
			return
		}
	}
}

// syncLog collects a daemon's logs for assertions and echoes them to the
// test log while the test runs.
type syncLog struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	t    *testing.T
	done bool
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if !l.done {
		l.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newTestLogger(t *testing.T) (*slog.Logger, *syncLog) {
	l := &syncLog{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

// harness runs one Daemon against a fake broker.
type harness struct {
	t      *testing.T
	fb     *fakeBroker
	d      *Daemon
	cfg    Config
	logs   *syncLog
	cancel context.CancelFunc
	done   chan error
}

// testConfig returns a Config for fb with quick timings and temp dirs.
func testConfig(t *testing.T, fb *fakeBroker) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Broker = fb.addr
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = fb.pki.CAFile, fb.pki.CertFile, fb.pki.KeyFile
	cfg.Hostname = "test-host"
	cfg.SpoolDir = filepath.Join(t.TempDir(), "spool")
	cfg.WorkRoot = t.TempDir()
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 200 * time.Millisecond
	cfg.DrainTimeout = 10 * time.Second
	cfg.DefaultExecutor = ExecutorSpec{Type: ExecutorNoop}
	cfg.Limits.KillGrace = 200 * time.Millisecond
	return cfg
}

// setup starts a fake broker and a daemon configured by mutate.
func setup(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	fb := startFakeBroker(t, newTestPKI(t))
	return startDaemon(t, fb, mutate, nil)
}

func startDaemon(t *testing.T, fb *fakeBroker, mutate func(*Config), knobs func(*Daemon)) *harness {
	t.Helper()
	cfg := testConfig(t, fb)
	if mutate != nil {
		mutate(&cfg)
	}
	log, logs := newTestLogger(t)
	d, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	d.ackTimeout = 500 * time.Millisecond
	if knobs != nil {
		knobs(d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, fb: fb, d: d, cfg: cfg, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			d.Abort()
			t.Error("Run did not return within 30s of cancel")
			<-h.done
		}
	})
	return h
}

// stop cancels Run's context and returns Run's error.
func (h *harness) stop() error {
	h.t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		return err
	case <-time.After(20 * time.Second):
		h.t.Fatal("Run did not return within 20s of cancel")
	}
	return nil
}

// spooled returns the lease ids of the results in the spool directory.
func (h *harness) spooled() []string {
	h.t.Helper()
	entries, err := os.ReadDir(h.cfg.SpoolDir)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".result"); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func ref(job, lease int64) *gradebrokerv1.LeaseRef {
	return &gradebrokerv1.LeaseRef{JobId: job, LeaseId: lease}
}
