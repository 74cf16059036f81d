package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// env is a broker's dispatch side on 127.0.0.1:0 with real mTLS and a real
// SQLite file.
type env struct {
	t        *testing.T
	dbPath   string
	db       *store.DB
	d        *Dispatcher
	cfg      Config
	ca       *certstest.CA
	addr     string
	srv      *grpc.Server
	platform broker.Platform
	other    broker.Platform
	typeID   int64
	certs    map[string]certstest.Files
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// setup registers tag "py", type "pytype" with it, and servers g1..gN.
func setup(t *testing.T, cfg Config, servers ...string) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, dbPath: filepath.Join(t.TempDir(), "gb.db"), cfg: cfg, ca: certstest.NewCA(t, "test CA"),
		certs: make(map[string]certstest.Files)}
	db, err := store.Open(ctx, e.dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	if _, err := db.AddTag(ctx, "py", ""); err != nil {
		t.Fatal(err)
	}
	st, err := db.AddServerType(ctx, "pytype", []string{"py"})
	if err != nil {
		t.Fatal(err)
	}
	e.typeID = st.ID
	if e.platform, err = db.AddPlatform(ctx, broker.Platform{Name: "plat", PublicKeyPEM: "x", ReturnURL: "https://example.invalid/cb"}); err != nil {
		t.Fatal(err)
	}
	if e.other, err = db.AddPlatform(ctx, broker.Platform{Name: "other", PublicKeyPEM: "x", ReturnURL: ""}); err != nil {
		t.Fatal(err)
	}
	for _, name := range servers {
		e.addServer(name, 4)
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *env) addServer(name string, maxJobs int) {
	e.t.Helper()
	f := e.ca.Client(e.t, certs.RoleServer, name)
	e.certs[name] = f
	id := certs.IdentityOf(f.Cert)
	if _, err := e.db.AddServer(context.Background(), broker.Server{Name: name, Type: "pytype", MaxConcurrentJobs: maxJobs,
		Cert: broker.CertIdentity{Serial: id.Serial, Issuer: id.Issuer, Subject: id.Subject, Fingerprint: id.Fingerprint, NotAfter: id.NotAfter}}); err != nil {
		e.t.Fatal(err)
	}
}

// start starts the dispatcher and its gRPC server (again, after stop).
func (e *env) start() {
	e.t.Helper()
	if e.db == nil {
		db, err := store.Open(context.Background(), e.dbPath, store.Options{})
		if err != nil {
			e.t.Fatal(err)
		}
		e.db = db
	}
	e.d = New(e.db, e.cfg, testLog)
	if err := e.d.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	bf := e.ca.Broker(e.t)
	src, err := certs.NewServerSource(bf.CertFile, bf.KeyFile, e.ca.CertFile, testLog)
	if err != nil {
		e.t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	e.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(src.ServerTLSConfig())))
	gbv1.RegisterGraderServiceServer(e.srv, e.d)
	go e.srv.Serve(lis)
}

func (e *env) stop() {
	if e.d == nil {
		return
	}
	e.d.Stop()
	e.srv.Stop()
	e.db.Close()
	e.d, e.db = nil, nil
}

// crash stops everything without letting the dispatcher flush: what was
// committed is all that survives, as after a kill -9.
func (e *env) crash() {
	e.srv.Stop()
	e.d.shutdown()
	e.d.life.Cancel(errors.New("crashed"))
	<-e.d.Done()
	e.db.Close()
	e.d, e.db = nil, nil
}

// submit queues n jobs for platform p and returns their ids.
func (e *env) submit(p broker.Platform, n, prio int) []int64 {
	e.t.Helper()
	jobs := make([]broker.NewJob, n)
	for i := range jobs {
		jobs[i] = broker.NewJob{PlatformID: p.ID, Name: "j", Priority: prio, Tags: []string{"py"},
			Timeout: 10 * time.Second, JobData: []byte(`{"n":1}`), TypeIDs: []int64{e.typeID}}
	}
	ins, err := e.d.Submit(context.Background(), jobs, nil, "platform:"+p.Name)
	if err != nil {
		e.t.Fatal(err)
	}
	ids := make([]int64, n)
	for i, in := range ins {
		ids[i] = in.ID
	}
	return ids
}

func (e *env) state(id int64) broker.JobState {
	e.t.Helper()
	st, _, err := e.db.JobState(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// waitState polls until job id reaches want.
func (e *env) waitState(id int64, want broker.JobState) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := e.state(id)
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %d is %s, want %s", id, st, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeServer is a minimal graderd: it opens the stream and lets the test
// drive every message.
type fakeServer struct {
	t      *testing.T
	name   string
	conn   *grpc.ClientConn
	stream gbv1.GraderService_ConnectClient
	cancel context.CancelFunc
	in     chan *gbv1.ConnectResponse
	errc   chan error
	kept   []*gbv1.ConnectResponse // skipped by wait, returned by next
}

func (e *env) dial(name string) (*grpc.ClientConn, error) {
	f := e.certs[name]
	src, err := certs.NewClientSource(f.CertFile, f.KeyFile, e.ca.CertFile, testLog)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig("localhost"))))
}

// connect opens a stream as server name with Hello{slots, running}.
func (e *env) connect(name string, slots int, running ...*gbv1.LeaseRef) *fakeServer {
	e.t.Helper()
	conn, err := e.dial(name)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := gbv1.NewGraderServiceClient(conn).Connect(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	fs := &fakeServer{t: e.t, name: name, conn: conn, stream: stream, cancel: cancel,
		in: make(chan *gbv1.ConnectResponse, 10000), errc: make(chan error, 1)}
	if err := stream.Send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Hello{Hello: &gbv1.Hello{
		Version: "test", Slots: uint32(slots), Hostname: name, Running: running}}}); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				fs.errc <- err
				close(fs.in)
				return
			}
			fs.in <- m
		}
	}()
	w := fs.next()
	if w.GetWelcome() == nil {
		e.t.Fatalf("first message = %v, want Welcome", w)
	}
	e.t.Cleanup(fs.close)
	return fs
}

func (fs *fakeServer) close() {
	fs.cancel()
	fs.conn.Close()
}

// next returns the next message, failing after 10 s.
func (fs *fakeServer) next() *gbv1.ConnectResponse {
	fs.t.Helper()
	if len(fs.kept) > 0 {
		m := fs.kept[0]
		fs.kept = fs.kept[1:]
		return m
	}
	return fs.recv()
}

func (fs *fakeServer) recv() *gbv1.ConnectResponse {
	fs.t.Helper()
	select {
	case m, ok := <-fs.in:
		if !ok {
			fs.t.Fatalf("%s: stream ended: %v", fs.name, <-fs.errc)
		}
		return m
	case <-time.After(10 * time.Second):
		fs.t.Fatalf("%s: no message within 10 s", fs.name)
	}
	return nil
}

// wait returns the first message (kept ones first) that ok accepts,
// keeping the others for next.
func (fs *fakeServer) wait(ok func(*gbv1.ConnectResponse) bool) *gbv1.ConnectResponse {
	fs.t.Helper()
	for i, m := range fs.kept {
		if ok(m) {
			fs.kept = append(fs.kept[:i:i], fs.kept[i+1:]...)
			return m
		}
	}
	for {
		m := fs.recv()
		if ok(m) {
			return m
		}
		fs.kept = append(fs.kept, m)
	}
}

// nextAssign returns the next Assign, keeping other messages.
func (fs *fakeServer) nextAssign() *gbv1.Assign {
	fs.t.Helper()
	return fs.wait(func(m *gbv1.ConnectResponse) bool { return m.GetAssign() != nil }).GetAssign()
}

// none checks that nothing but acks arrives for d.
func (fs *fakeServer) none(d time.Duration) {
	fs.t.Helper()
	for _, m := range fs.kept {
		if m.GetAck() == nil {
			fs.t.Fatalf("%s: unexpected message %v", fs.name, m)
		}
	}
	fs.kept = nil
	timer := time.After(d)
	for {
		select {
		case m, ok := <-fs.in:
			if !ok {
				return
			}
			if m.GetAck() == nil {
				fs.t.Fatalf("%s: unexpected message %v", fs.name, m)
			}
		case <-timer:
			return
		}
	}
}

func (fs *fakeServer) send(r *gbv1.ConnectRequest) {
	fs.t.Helper()
	if err := fs.stream.Send(r); err != nil {
		fs.t.Fatalf("%s: send: %v", fs.name, err)
	}
}

func (fs *fakeServer) result(a *gbv1.Assign, outcome gbv1.Outcome, result any) {
	fs.t.Helper()
	var b []byte
	switch v := result.(type) {
	case nil:
	case []byte:
		b = v
	default:
		b, _ = json.Marshal(v)
	}
	fs.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{
		JobId: a.JobId, LeaseId: a.LeaseId, Outcome: outcome, Result: b}}})
}

// awaitAckOrReject returns the first Ack or Reject, keeping other messages.
func (fs *fakeServer) awaitAckOrReject() *gbv1.ConnectResponse {
	fs.t.Helper()
	return fs.wait(func(m *gbv1.ConnectResponse) bool { return m.GetAck() != nil || m.GetReject() != nil })
}

// pendingOps returns how many ops wait for the writer.
func (e *env) pendingOps() int {
	e.d.w.mu.Lock()
	defer e.d.w.mu.Unlock()
	return len(e.d.w.pending)
}

// waitFor polls f until it is true, failing after 5 s.
func (e *env) waitFor(what string, f func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timeout waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdWriter makes the writer wait inside a batch until the returned
// function is called.
func (e *env) holdWriter() (release func()) {
	e.t.Helper()
	block, entered := make(chan struct{}), make(chan struct{})
	e.d.mu.Lock()
	e.d.w.enqueue(&op{apply: func(*store.JobTx) error { close(entered); <-block; return nil }})
	e.d.mu.Unlock()
	<-entered
	return func() { close(block) }
}
