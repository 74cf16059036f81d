// Package adminapitest starts a real admin API for tests: a gRPC server on
// 127.0.0.1 with mutual TLS from a CA made in the test, a real store in a
// temporary directory, and a fake dispatcher that records what it is asked.
// The admin API's own tests and the admin command's tests share it.
package adminapitest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// OperatorName is the operator Start registers, as the bootstrap would.
const OperatorName = "alice"

// ConsoleURL is where the test service's console login links point.
const ConsoleURL = "https://console.test:8444"

// Env is a running admin API.
type Env struct {
	// Addr is the server's address, 127.0.0.1:port.
	Addr string
	// CA issued the broker's certificate and the clients'.
	CA *certstest.CA
	// Operator is the certificate of the registered operator OperatorName.
	Operator certstest.Files
	// DBPath is the database file; DB is the server's handle on it.
	DBPath string
	DB     *store.DB
	// Dispatcher is the fake the service calls.
	Dispatcher *FakeDispatcher
	// Service is the admin service itself, for calls made in-process with
	// a principal (as the web console makes them). Its console is on, with
	// login links to ConsoleURL.
	Service *adminapi.Service

	logs *testutil.SyncBuffer
}

// Start starts an admin API with a fresh CA and database, and registers an
// operator certificate as OperatorName. The server also serves the gRPC
// health service, so that tests can check that calls to other services pass
// the admin interceptor untouched. Everything stops when the test ends.
func Start(tb testing.TB) *Env {
	tb.Helper()
	ctx := context.Background()
	e := &Env{
		CA:         certstest.NewCA(tb, "test"),
		DBPath:     filepath.Join(tb.TempDir(), "gb.db"),
		Dispatcher: NewFakeDispatcher(),
		logs:       &testutil.SyncBuffer{},
	}
	db, err := store.Open(ctx, e.DBPath, store.Options{})
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	e.DB = db
	tb.Cleanup(func() { db.Close() })

	e.Operator = e.CA.Client(tb, certs.RoleOperator, OperatorName)
	if _, err := db.AddOperator(ctx, OperatorName, adminapi.CertIdentity(certs.IdentityOf(e.Operator.Cert))); err != nil {
		tb.Fatalf("adminapitest: registering operator: %v", err)
	}

	brokerCert := e.CA.Broker(tb)
	src, err := certs.NewServerSource(brokerCert.CertFile, brokerCert.KeyFile, e.CA.CertFile, nil)
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	svc := adminapi.New(db, src.CAPool, e.Dispatcher, log)
	if err := svc.EnableConsole(adminapi.ConsoleConfig{URL: ConsoleURL}); err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	e.Service = svc
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(src.ServerTLSConfig())),
		grpc.ChainUnaryInterceptor(svc.UnaryInterceptor()),
	)
	svc.Register(srv)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	e.Addr = lis.Addr().String()
	go srv.Serve(lis)
	tb.Cleanup(srv.Stop)
	return e
}

// Conn connects to the server with the client certificate f (made by e.CA
// or by another CA).
func (e *Env) Conn(tb testing.TB, f certstest.Files) *grpc.ClientConn {
	tb.Helper()
	src, err := certs.NewClientSource(f.CertFile, f.KeyFile, e.CA.CertFile, nil)
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig("127.0.0.1"))))
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// Client returns an admin client using the client certificate f.
func (e *Env) Client(tb testing.TB, f certstest.Files) gradebrokerv1.AdminServiceClient {
	tb.Helper()
	return gradebrokerv1.NewAdminServiceClient(e.Conn(tb, f))
}

// OperatorClient returns an admin client using the registered operator's
// certificate.
func (e *Env) OperatorClient(tb testing.TB) gradebrokerv1.AdminServiceClient {
	tb.Helper()
	return e.Client(tb, e.Operator)
}

// Logs returns what the service has logged so far.
func (e *Env) Logs() string { return e.logs.String() }

// InsertJob queues a job for platform through the store's job-writing API,
// as a platform's submission would, and returns its id.
func (e *Env) InsertJob(tb testing.TB, platform, name string, tags ...string) int64 {
	tb.Helper()
	ctx := context.Background()
	p, err := e.DB.PlatformByName(ctx, platform)
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	tx, err := e.DB.BeginJobs(ctx)
	if err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{
		PlatformID:  p.ID,
		Name:        name,
		Tags:        tags,
		Timeout:     time.Minute,
		JobData:     []byte(`{"task":"` + name + `"}`),
		MaxAttempts: 3,
	}, "platform:"+platform)
	if err != nil {
		tb.Fatalf("adminapitest: inserting job: %v", err)
	}
	if err := tx.Commit(); err != nil {
		tb.Fatalf("adminapitest: %v", err)
	}
	return in.ID
}

var (
	keyOnce sync.Once
	keyPEM  string
	keyErr  error
)

// PublicKeyPEM returns a 2048-bit RSA public key in PEM, the same for the
// whole test binary: generating one costs a noticeable part of a second.
func PublicKeyPEM(tb testing.TB) string {
	tb.Helper()
	keyOnce.Do(func() {
		var k *rsa.PrivateKey
		k, keyErr = rsa.GenerateKey(rand.Reader, 2048)
		if keyErr != nil {
			return
		}
		var der []byte
		der, keyErr = x509.MarshalPKIXPublicKey(&k.PublicKey)
		keyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	})
	if keyErr != nil {
		tb.Fatalf("adminapitest: generating RSA key: %v", keyErr)
	}
	return keyPEM
}

// Call is one call the FakeDispatcher received.
type Call struct {
	// Method is the Dispatcher method's name.
	Method string
	// Name is the server's name, for the server methods.
	Name string
	// JobID and Actor are set for RequeueJob and CancelJob.
	JobID int64
	Actor string
}

// Status is what FakeDispatcher.ServerStatus reports for one server.
type Status struct {
	// Connected, Slots, Running and LastSeen are what ServerStatus returns.
	Connected bool
	Slots     int
	Running   int
	LastSeen  time.Time
	// Version and Executors are what ServerHello returns.
	Version   string
	Executors []broker.Executor
	// RequeueOnDrop is what ServerRemoved returns.
	RequeueOnDrop int
}

// FakeDispatcher records every call and answers from fields the test sets.
// It is safe for concurrent use.
type FakeDispatcher struct {
	mu     sync.Mutex
	calls  []Call
	status map[string]Status
	queues map[string]int
	jobErr error
	ops    opsState // the incident methods' state, in ops.go
}

var _ adminapi.Dispatcher = (*FakeDispatcher)(nil)

// NewFakeDispatcher returns a dispatcher that knows no connected server.
func NewFakeDispatcher() *FakeDispatcher {
	return &FakeDispatcher{status: map[string]Status{}, queues: map[string]int{}}
}

// SetStatus sets what ServerStatus and ServerRemoved report for server name.
func (f *FakeDispatcher) SetStatus(name string, s Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status[name] = s
}

// SetJobError makes RequeueJob and CancelJob fail with err (nil: succeed).
func (f *FakeDispatcher) SetJobError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobErr = err
}

// Calls returns the calls so far, oldest first.
func (f *FakeDispatcher) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

func (f *FakeDispatcher) record(c Call) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
}

// ServerChanged records the call.
func (f *FakeDispatcher) ServerChanged(_ context.Context, name string) {
	f.record(Call{Method: "ServerChanged", Name: name})
}

// ServerRemoved records the call and returns the server's RequeueOnDrop.
func (f *FakeDispatcher) ServerRemoved(_ context.Context, name string) int {
	f.record(Call{Method: "ServerRemoved", Name: name})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status[name].RequeueOnDrop
}

// SetQueueLength sets what QueueLength reports for pull queue queue.
func (f *FakeDispatcher) SetQueueLength(queue string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queues[queue] = n
}

// QueueLength reports what SetQueueLength set; it is not recorded.
func (f *FakeDispatcher) QueueLength(queue string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queues[queue]
}

// ServerStatus reports what SetStatus set; it is not recorded, since lists
// call it for every server.
func (f *FakeDispatcher) ServerStatus(name string) (bool, int, int, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.status[name]
	return s.Connected, s.Slots, s.Running, s.LastSeen
}

// ServerHello reports what SetStatus set; like ServerStatus, it is not
// recorded.
func (f *FakeDispatcher) ServerHello(name string) (string, []broker.Executor) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.status[name]
	return s.Version, s.Executors
}

// RequeueJob records the call and returns the error SetJobError set.
func (f *FakeDispatcher) RequeueJob(_ context.Context, id int64, actor string) error {
	f.record(Call{Method: "RequeueJob", JobID: id, Actor: actor})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jobErr
}

// CancelJob records the call and returns the error SetJobError set.
func (f *FakeDispatcher) CancelJob(_ context.Context, id int64, actor string) error {
	f.record(Call{Method: "CancelJob", JobID: id, Actor: actor})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jobErr
}
