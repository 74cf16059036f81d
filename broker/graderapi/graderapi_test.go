package graderapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// env is a dispatcher on a real SQLite file behind the GraderService on
// 127.0.0.1:0 with real mTLS.
type env struct {
	t      *testing.T
	db     *store.DB
	d      *dispatch.Dispatcher
	api    *Server
	ca     *certstest.CA
	addr   string
	certs  map[string]certstest.Files
	typeID int64
	plat   broker.Platform
}

// setup registers tag "py", type "pytype" and the given servers (4 jobs at
// most each), and serves.
func setup(t *testing.T, servers ...string) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, ca: certstest.NewCA(t, "test CA"), certs: make(map[string]certstest.Files)}
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "gb.db"), store.Options{})
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
	if e.plat, err = db.AddPlatform(ctx, broker.Platform{Name: "plat", PublicKeyPEM: "x"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range servers {
		f := e.ca.Client(t, certs.RoleServer, name)
		e.certs[name] = f
		id := certs.IdentityOf(f.Cert)
		if _, err := db.AddServer(ctx, broker.Server{Name: name, Type: "pytype", MaxConcurrentJobs: 4,
			Cert: broker.CertIdentity{Serial: id.Serial, Issuer: id.Issuer, Subject: id.Subject, Fingerprint: id.Fingerprint, NotAfter: id.NotAfter}}); err != nil {
			t.Fatal(err)
		}
	}
	e.d = dispatch.New(db, dispatch.Config{}, testLog)
	if err := e.d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.api = New(e.d, testLog)
	bf := e.ca.Broker(t)
	src, err := certs.NewServerSource(bf.CertFile, bf.KeyFile, e.ca.CertFile, testLog)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(src.ServerTLSConfig())))
	e.api.Register(g)
	go g.Serve(lis)
	t.Cleanup(func() {
		e.api.Stop()
		g.Stop()
		e.d.Stop()
		db.Close()
	})
	return e
}

// grader is one Connect stream, driven by the test.
type grader struct {
	t      *testing.T
	stream gbv1.GraderService_ConnectClient
}

// open opens a stream with the certificate of name (made by the CA when
// it is not a registered server's) and sends hello.
func (e *env) open(name string, role certs.Role, hello *gbv1.Hello) *grader {
	e.t.Helper()
	f, ok := e.certs[name]
	if !ok {
		f = e.ca.Client(e.t, role, name)
		e.certs[name] = f
	}
	src, err := certs.NewClientSource(f.CertFile, f.KeyFile, e.ca.CertFile, testLog)
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig("localhost"))))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := gbv1.NewGraderServiceClient(conn).Connect(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	g := &grader{t: e.t, stream: stream}
	if hello == nil {
		return g
	}
	// A refused stream may end before the Hello is sent: Send then says
	// io.EOF, and Recv says why.
	if err := stream.Send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		e.t.Fatalf("send Hello: %v", err)
	}
	return g
}

// connect opens a registered server's stream and reads its Welcome.
func (e *env) connect(name string, slots uint32, running ...*gbv1.LeaseRef) *grader {
	e.t.Helper()
	g := e.open(name, certs.RoleServer, &gbv1.Hello{Version: "test", Slots: slots, Hostname: name, Running: running})
	if w := g.recv().GetWelcome(); w.GetServer() != name || w.GetType() != "pytype" || w.GetMaxConcurrentJobs() != 4 ||
		w.GetHeartbeatInterval().AsDuration() != 10*time.Second || len(w.GetTags()) != 1 {
		e.t.Fatalf("first message %v; want the Welcome of %s", w, name)
	}
	return g
}

func (g *grader) send(m *gbv1.ConnectRequest) {
	g.t.Helper()
	if err := g.stream.Send(m); err != nil {
		g.t.Fatalf("send: %v", err)
	}
}

// recv returns the next message; a stream that ends fails the test.
func (g *grader) recv() *gbv1.ConnectResponse {
	g.t.Helper()
	m, err := g.stream.Recv()
	if err != nil {
		g.t.Fatalf("recv: %v", err)
	}
	return m
}

// end reads until the stream ends and returns how: nil when the broker
// ended it with OK.
func (g *grader) end() error {
	for {
		if _, err := g.stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func (e *env) submit() int64 {
	e.t.Helper()
	ins, err := e.d.Submit(context.Background(), []broker.NewJob{{PlatformID: e.plat.ID, Name: "j", Tags: []string{"py"},
		Timeout: 10 * time.Second, JobData: []byte(`{"n":1}`), TypeIDs: []int64{e.typeID}}}, nil, "platform:plat")
	if err != nil {
		e.t.Fatal(err)
	}
	return ins[0].ID
}

// A job goes out as an Assign with every field, its result comes back as a
// Result and is acknowledged; a result for the same lease again is refused
// with FailedPrecondition; a cancellation goes out as a Cancel.
func TestMessagesBothWays(t *testing.T) {
	t.Parallel()
	e := setup(t, "g1")
	g := e.connect("g1", 2)
	id := e.submit()
	a := g.recv().GetAssign()
	if a.GetJobId() != id || a.GetLeaseId() == 0 || a.GetAttempt() != 1 || a.GetName() != "j" || string(a.GetJobdata()) != `{"n":1}` ||
		len(a.GetTags()) != 1 || a.GetTimeout().AsDuration() != 10*time.Second || !a.GetDeadline().AsTime().After(time.Now()) {
		t.Fatalf("Assign = %v; want job %d's, attempt 1, with its data, tags, timeout and a deadline ahead", a, id)
	}
	ref := &gbv1.LeaseRef{JobId: a.GetJobId(), LeaseId: a.GetLeaseId()}
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Heartbeat{Heartbeat: &gbv1.Heartbeat{Running: []*gbv1.LeaseRef{ref}}}})
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{JobId: a.GetJobId(), LeaseId: a.GetLeaseId(),
		Outcome: gbv1.Outcome_OUTCOME_OK, Result: []byte(`{"score":1}`), Log: "graded"}}})
	if ack := g.recv().GetAck(); len(ack.GetLeases()) != 1 || ack.GetLeases()[0].GetLeaseId() != a.GetLeaseId() {
		t.Fatalf("after the result got Ack %v; want lease %d acknowledged", ack, a.GetLeaseId())
	}
	j, err := e.db.GetJob(context.Background(), id)
	if err != nil || j.State != broker.JobDone || string(j.Result) != `{"score":1}` || j.Log != "graded" {
		t.Fatalf("job %d: %s, result %s, log %q, %v; want done with the result and log sent", id, j.State, j.Result, j.Log, err)
	}
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{JobId: a.GetJobId(), LeaseId: a.GetLeaseId(),
		Outcome: gbv1.Outcome_OUTCOME_OK, Result: []byte(`{"score":2}`)}}})
	r := g.recv().GetReject()
	if codes.Code(r.GetCode()) != codes.FailedPrecondition || r.GetLease().GetLeaseId() != a.GetLeaseId() || !strings.Contains(r.GetMessage(), "not current") {
		t.Fatalf("a second result got Reject %v; want FailedPrecondition for lease %d saying it is not current", r, a.GetLeaseId())
	}

	id2 := e.submit()
	a2 := g.recv().GetAssign()
	if err := e.d.CancelJob(context.Background(), id2, "platform:plat"); err != nil {
		t.Fatal(err)
	}
	if c := g.recv().GetCancel(); c.GetLease().GetLeaseId() != a2.GetLeaseId() || c.GetLease().GetJobId() != id2 || c.GetReason() != "cancelled by platform:plat" {
		t.Fatalf("after CancelJob got Cancel %v; want lease %d with the reason", c, a2.GetLeaseId())
	}
}

// Slots and held leases cross the wire: a server that connects holding a
// lease keeps it, and one that changes its slots gets jobs by them.
func TestHelloAndSlots(t *testing.T) {
	t.Parallel()
	e := setup(t, "g1")
	g := e.connect("g1", 1)
	id := e.submit()
	a := g.recv().GetAssign()
	// The stream breaks; the server comes back still running the job, and
	// with no slot to spare.
	g.stream.CloseSend()
	if err := g.end(); err != nil {
		t.Fatalf("a stream closed by graderd ended with %v, want a clean end", err)
	}
	testutil.Eventually(t, "the broker to see g1 go", func() bool { c, _, _, _ := e.d.ServerStatus("g1"); return !c })
	g = e.connect("g1", 0, &gbv1.LeaseRef{JobId: a.GetJobId(), LeaseId: a.GetLeaseId()})
	if _, _, running, _ := e.d.ServerStatus("g1"); running != 1 {
		t.Fatalf("after a Hello holding lease %d the server runs %d jobs, want 1", a.GetLeaseId(), running)
	}
	e.submit()
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Slots{Slots: &gbv1.Slots{Slots: 2}}})
	if a2 := g.recv().GetAssign(); a2.GetJobId() == id || a2.GetJobId() == 0 {
		t.Fatalf("after Slots{2} got %v; want the second job", a2)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	e := setup(t, "g1")
	for _, tc := range []struct {
		name string
		role certs.Role
		want codes.Code
		msg  string
	}{
		{"ghost", certs.RoleServer, codes.Unauthenticated, "CN=ghost"},
		{"alice", certs.RoleOperator, codes.PermissionDenied, "CN=alice"},
	} {
		g := e.open(tc.name, tc.role, &gbv1.Hello{Slots: 1})
		err := g.end()
		if status.Code(err) != tc.want || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: stream ended with %v; want %v naming %s", tc.name, err, tc.want, tc.msg)
		}
	}
	g := e.open("g1", certs.RoleServer, nil)
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Slots{Slots: &gbv1.Slots{Slots: 1}}})
	if err := g.end(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a stream opened without Hello ended with %v; want InvalidArgument", err)
	}
	g = e.connect("g1", 1)
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Hello{Hello: &gbv1.Hello{Slots: 1}}})
	if err := g.end(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a second Hello ended the stream with %v; want InvalidArgument", err)
	}
}

// A connection test gets its Welcome and leaves the live stream alone; a
// newer stream replaces the older (Aborted); a removed server's stream ends
// with PermissionDenied; Stop ends the rest with Unavailable.
func TestProbeReplaceRemoveStop(t *testing.T) {
	t.Parallel()
	e := setup(t, "g1", "g2")
	live := e.connect("g1", 1)
	probe := e.open("g1", certs.RoleServer, &gbv1.Hello{Probe: true})
	if w := probe.recv().GetWelcome(); w.GetServer() != "g1" {
		t.Fatalf("probe got %v, want g1's Welcome", w)
	}
	if err := probe.end(); err != nil {
		t.Errorf("probe stream ended with %v, want a clean end", err)
	}
	if c, _, _, _ := e.d.ServerStatus("g1"); !c {
		t.Fatal("a probe disconnected the live stream")
	}

	e.connect("g1", 1)
	if err := live.end(); status.Code(err) != codes.Aborted {
		t.Errorf("a replaced stream ended with %v, want Aborted", err)
	}

	g2 := e.connect("g2", 1)
	if err := e.db.RemoveServer(context.Background(), "g2"); err != nil {
		t.Fatal(err)
	}
	e.d.ServerRemoved(context.Background(), "g2")
	if err := g2.end(); status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "removed by an operator") {
		t.Errorf("a removed server's stream ended with %v, want PermissionDenied saying so", err)
	}

	g1 := e.connect("g1", 1)
	e.api.Stop()
	if err := g1.end(); status.Code(err) != codes.Unavailable {
		t.Errorf("Stop ended a stream with %v, want Unavailable", err)
	}
	if err := e.open("g1", certs.RoleServer, &gbv1.Hello{Slots: 1}).end(); status.Code(err) != codes.Unavailable {
		t.Errorf("a stream opened after Stop ended with %v, want Unavailable", err)
	}
}

// A heartbeat's count of Assigns crosses the wire: one that counts the
// Assign of a cancelled lease and does not list it frees the slot; one
// sent before that Assign does not.
func TestHeartbeatCountsAssigns(t *testing.T) {
	t.Parallel()
	e := setup(t, "g1")
	g := e.connect("g1", 1)
	first := e.submit()
	a := g.recv().GetAssign()
	second := e.submit()
	if err := e.d.CancelJob(context.Background(), first, "platform:plat"); err != nil {
		t.Fatal(err)
	}
	if c := g.recv().GetCancel(); c.GetLease().GetLeaseId() != a.GetLeaseId() {
		t.Fatalf("got Cancel %v, want lease %d's", c, a.GetLeaseId())
	}
	hb := func(n uint64) {
		g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Heartbeat{Heartbeat: &gbv1.Heartbeat{AssignsReceived: n}}})
	}
	hb(0)
	hb(1)
	testutil.Eventually(t, "the second job assigned", func() bool { return e.d.Stats().Assigned == 2 })
	if b := g.recv().GetAssign(); b.GetJobId() != second {
		t.Fatalf("after a heartbeat counting the Assign got %v, want job %d", b, second)
	}
}

// What graderd reports of itself and of each run, and the paths a platform
// restricts its jobs to, cross the wire both ways.
func TestExecutorsRestrictPathsAndUsage(t *testing.T) {
	t.Parallel()
	e := setup(t, "g1")
	executors := []*gbv1.ExecutorInfo{{Name: "default", Type: "exec", Sandbox: "crun"}, {Name: "gpu", Type: "exec", Sandbox: "none"}}
	g := e.open("g1", certs.RoleServer, &gbv1.Hello{Version: "1.2.3", Slots: 1, Hostname: "g1", Executors: executors})
	g.recv().GetWelcome()
	version, got := e.d.ServerHello("g1")
	want := []broker.Executor{{Name: "default", Type: "exec", Sandbox: "crun"}, {Name: "gpu", Type: "exec", Sandbox: "none"}}
	if version != "1.2.3" || !cmp.Equal(got, want) {
		t.Errorf("ServerHello = %q, %v; want 1.2.3, %v", version, got, want)
	}

	paths := []string{"/srv/tasks/t1"}
	ins, err := e.d.Submit(context.Background(), []broker.NewJob{{PlatformID: e.plat.ID, Name: "j", Tags: []string{"py"},
		Timeout: 10 * time.Second, JobData: []byte(`{}`), RestrictPaths: paths, TypeIDs: []int64{e.typeID}}}, nil, "platform:plat")
	if err != nil {
		t.Fatal(err)
	}
	a := g.recv().GetAssign()
	if !cmp.Equal(a.GetRestrictPaths(), paths) {
		t.Errorf("Assign.restrict_paths = %q, want %q", a.GetRestrictPaths(), paths)
	}
	g.send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{JobId: a.GetJobId(), LeaseId: a.GetLeaseId(),
		Outcome: gbv1.Outcome_OUTCOME_FATAL, Error: "process limit", Limit: gbv1.Limit_LIMIT_PIDS,
		Usage: &gbv1.Usage{CpuTime: durationpb.New(40 * time.Millisecond), PeakMemoryBytes: 5 << 20, WallTime: durationpb.New(time.Second)}}}})
	g.recv().GetAck()
	j, err := e.db.GetJob(context.Background(), ins[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	wantUsage := &broker.Usage{CPUTime: 40 * time.Millisecond, PeakMemory: 5 << 20, WallTime: time.Second}
	if len(j.History) != 1 || !cmp.Equal(j.History[0].Usage, wantUsage) || j.History[0].Limit != broker.LimitPids {
		t.Errorf("attempts %+v; want one with usage %+v and the pids limit", j.History, wantUsage)
	}
}
