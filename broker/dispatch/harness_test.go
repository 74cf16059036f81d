package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// env is a broker's dispatch side over a real SQLite file. Servers talk to
// it through Sessions, as broker/graderapi does for graderd's streams
// (whose translation graderapi's own tests cover over real mTLS).
type env struct {
	t        *testing.T
	dbPath   string
	db       *store.DB
	d        *Dispatcher
	cfg      Config
	platform broker.Platform
	other    broker.Platform
	typeID   int64
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// setup registers tag "py", type "pytype" with it, and servers g1..gN.
func setup(t *testing.T, cfg Config, servers ...string) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, dbPath: filepath.Join(t.TempDir(), "gb.db"), cfg: cfg}
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

// fingerprint is the certificate fingerprint server name is registered
// with: the dispatcher only compares it.
func fingerprint(name string) string { return "fp-" + name }

func (e *env) addServer(name string, maxJobs int) {
	e.t.Helper()
	e.addServerOfType(name, "pytype", maxJobs)
}

func (e *env) addServerOfType(name, typ string, maxJobs int) {
	e.t.Helper()
	if _, err := e.db.AddServer(context.Background(), broker.Server{Name: name, Type: typ, MaxConcurrentJobs: maxJobs,
		Cert: broker.CertIdentity{Serial: "serial-" + name, Issuer: "CN=test CA", Subject: "CN=" + name,
			Fingerprint: fingerprint(name), NotAfter: time.Now().Add(time.Hour)}}); err != nil {
		e.t.Fatal(err)
	}
}

// start starts the dispatcher (again, after stop or crash).
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
}

func (e *env) stop() {
	if e.d == nil {
		return
	}
	e.d.Stop()
	e.db.Close()
	e.d, e.db = nil, nil
}

// crash stops everything without letting the dispatcher flush: what was
// committed is all that survives, as after a kill -9.
func (e *env) crash() {
	e.d.shutdown()
	e.d.life.Cancel(errors.New("crashed"))
	<-e.d.Done()
	e.db.Close()
	e.d, e.db = nil, nil
}

// job is a job of the default test shape for platform p.
func (e *env) job(p broker.Platform, prio int) broker.NewJob {
	return broker.NewJob{PlatformID: p.ID, Name: "j", Priority: prio, Tags: []string{"py"},
		Timeout: 10 * time.Second, JobData: []byte(`{"n":1}`), TypeIDs: []int64{e.typeID}}
}

// submit queues n jobs for platform p and returns their ids.
func (e *env) submit(p broker.Platform, n, prio int) []int64 {
	e.t.Helper()
	jobs := make([]broker.NewJob, n)
	for i := range jobs {
		jobs[i] = e.job(p, prio)
	}
	return e.submitJobs(jobs...)
}

// submitJobs queues jobs and returns their ids.
func (e *env) submitJobs(jobs ...broker.NewJob) []int64 {
	e.t.Helper()
	ins, err := e.d.Submit(context.Background(), jobs, nil, "platform:test")
	if err != nil {
		e.t.Fatal(err)
	}
	ids := make([]int64, len(ins))
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

// waitState waits until job id reaches want.
func (e *env) waitState(id int64, want broker.JobState) {
	e.t.Helper()
	testutil.Eventually(e.t, fmt.Sprintf("job %d %s", id, want), func() bool { return e.state(id) == want })
}

// getJob reads a job with its history.
func (e *env) getJob(id int64) broker.Job {
	e.t.Helper()
	j, err := e.db.GetJob(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

// settle waits until the writer has committed everything queued so far and
// run what follows each commit: every Assign and Ack those changes send is
// then in its session's outbox.
func (e *env) settle() { e.d.w.flush() }

// fakeServer is a grading server's session driven by the test.
type fakeServer struct {
	t    *testing.T
	e    *env
	name string
	sess *Session
	w    Welcome
	in   []Message // taken from the session, not yet looked at
	kept []Message // skipped by wait, returned by next
}

// connect opens a session as server name with Hello{slots, held}.
func (e *env) connect(name string, slots int, held ...LeaseRef) *fakeServer {
	e.t.Helper()
	sess, w, err := e.d.Open(context.Background(), fingerprint(name), Hello{Slots: slots, Held: held, Hostname: name, Version: "test"})
	if err != nil {
		e.t.Fatalf("Open as %s: %v", name, err)
	}
	fs := &fakeServer{t: e.t, e: e, name: name, sess: sess, w: w}
	e.t.Cleanup(fs.close)
	return fs
}

// close ends the session from the server's side, as a broken stream does.
func (fs *fakeServer) close() { fs.sess.Close(nil) }

// next returns the next message (kept ones first), waiting for one.
func (fs *fakeServer) next() Message {
	fs.t.Helper()
	if len(fs.kept) > 0 {
		m := fs.kept[0]
		fs.kept = fs.kept[1:]
		return m
	}
	return fs.recv()
}

func (fs *fakeServer) recv() Message {
	fs.t.Helper()
	testutil.Eventually(fs.t, fs.name+"'s next message", func() bool {
		if len(fs.in) == 0 {
			fs.in = fs.sess.Messages()
		}
		return len(fs.in) > 0
	})
	m := fs.in[0]
	fs.in = fs.in[1:]
	return m
}

// wait returns the first message (kept ones first) that ok accepts,
// keeping the others for next.
func (fs *fakeServer) wait(ok func(Message) bool) Message {
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
func (fs *fakeServer) nextAssign() *Assign {
	fs.t.Helper()
	return fs.wait(func(m Message) bool { _, ok := m.(*Assign); return ok }).(*Assign)
}

// nextCancel returns the next Cancel, keeping other messages.
func (fs *fakeServer) nextCancel() *Cancel {
	fs.t.Helper()
	return fs.wait(func(m Message) bool { _, ok := m.(*Cancel); return ok }).(*Cancel)
}

// awaitAckOrReject returns the first Ack or Reject, keeping other messages.
func (fs *fakeServer) awaitAckOrReject() Message {
	fs.t.Helper()
	return fs.wait(func(m Message) bool {
		switch m.(type) {
		case *Ack, *Reject:
			return true
		}
		return false
	})
}

// none checks that the server got nothing but acks once the dispatcher
// committed everything queued so far.
func (fs *fakeServer) none() {
	fs.t.Helper()
	fs.e.settle()
	msgs := append(append(fs.kept, fs.in...), fs.sess.Messages()...)
	fs.kept, fs.in = nil, nil
	for _, m := range msgs {
		if _, ok := m.(*Ack); !ok {
			fs.t.Fatalf("%s: unexpected message %#v", fs.name, m)
		}
	}
}

func (fs *fakeServer) result(a *Assign, outcome broker.Outcome, result any) {
	fs.t.Helper()
	var b []byte
	switch v := result.(type) {
	case nil:
	case []byte:
		b = v
	default:
		b, _ = json.Marshal(v)
	}
	fs.sess.Result(Result{Lease: a.Lease, Outcome: outcome, Result: b})
}

// running sends a heartbeat listing leases.
// runJobs takes the next n assignments one at a time, reporting each done,
// and returns their jobs in the order they came.
func (fs *fakeServer) runJobs(n int) []int64 {
	fs.t.Helper()
	var ids []int64
	for range n {
		a := fs.nextAssign()
		ids = append(ids, a.Lease.JobID)
		fs.result(a, broker.OutcomeOK, map[string]int{"x": 1})
	}
	return ids
}

func (fs *fakeServer) running(leases ...LeaseRef) {
	fs.sess.Heartbeat(Heartbeat{Running: leases})
}

// pendingOps returns how many ops wait for the writer.
func (e *env) pendingOps() int {
	e.d.w.mu.Lock()
	defer e.d.w.mu.Unlock()
	return len(e.d.w.pending)
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
