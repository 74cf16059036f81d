package delivery

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

const brokerName = "gb-test"

// testKeys are made once per test binary: RSA key generation is the slowest
// thing these tests would otherwise do.
var testKeys = sync.OnceValue(func() struct{ broker, platform, other *rsa.PrivateKey } {
	var ks struct{ broker, platform, other *rsa.PrivateKey }
	var wg sync.WaitGroup
	for _, p := range []**rsa.PrivateKey{&ks.broker, &ks.platform, &ks.other} {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			*p = k
		})
	}
	wg.Wait()
	return ks
})

func publicPEM(tb testing.TB, k *rsa.PrivateKey) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// clock is a fake clock shared by the store, the worker and the receivers.
type clock = testutil.Clock

// syncBuffer collects log output from many goroutines.
type syncBuffer = testutil.SyncBuffer

// env is one test's broker side: a database on a fake clock, the broker's
// key ring and a log.
type env struct {
	t    testing.TB
	path string
	db   *store.DB
	clk  *clock
	ring *token.KeyRing
	logs *syncBuffer
	log  *slog.Logger
}

func setup(tb testing.TB) *env {
	tb.Helper()
	ring, err := token.NewKeyRing(testKeys().broker, nil)
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{t: tb, path: filepath.Join(tb.TempDir(), "gb.db"), clk: testutil.NewClock(time.Unix(1_800_000_000, 0)), ring: ring, logs: &syncBuffer{}}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.open()
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("worker log:\n%s", e.logs.String())
		}
	})
	return e
}

// open (re)opens the database, as a restarted broker would.
func (e *env) open() {
	e.t.Helper()
	db, err := store.Open(context.Background(), e.path, store.Options{Now: e.clk.Now})
	if err != nil {
		e.t.Fatalf("store.Open: %v", err)
	}
	e.db = db
	e.t.Cleanup(func() { db.Close() })
}

// worker starts a worker with test-sized defaults; cfg's non-zero fields
// win. It is stopped when the test ends.
func (e *env) worker(cfg Config) *Worker {
	e.t.Helper()
	if cfg.Broker == "" {
		cfg.Broker = brokerName
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = e.clk.Now
	}
	w, err := New(e.db, e.ring, cfg, e.log)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	if err := w.Start(context.Background()); err != nil {
		e.t.Fatalf("Start: %v", err)
	}
	e.t.Cleanup(w.Stop)
	return w
}

func (e *env) platform(name, returnURL, keyPEM string) int64 {
	e.t.Helper()
	if keyPEM == "" {
		keyPEM = publicPEM(e.t, testKeys().platform)
	}
	p, err := e.db.AddPlatform(context.Background(), broker.Platform{Name: name, PublicKeyPEM: keyPEM, ReturnURL: returnURL})
	if err != nil {
		e.t.Fatalf("AddPlatform: %v", err)
	}
	return p.ID
}

// finalJob queues a job, runs one attempt of it on server "g1" and makes it
// final with f, as the dispatcher would; Finish creates the delivery. It
// returns the job's and the delivery's ids.
func (e *env) finalJob(platformID int64, name, key string, f store.Final) (int64, int64) {
	e.t.Helper()
	return e.finalRun(platformID, name, key, f, nil, "")
}

// finalRun is finalJob whose one attempt's run used u and ended on limit.
func (e *env) finalRun(platformID int64, name, key string, f store.Final, u *broker.Usage, limit broker.Limit) (int64, int64) {
	e.t.Helper()
	tx, err := e.db.BeginJobs(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: platformID, Name: name, IdempotencyKey: key,
		Timeout: time.Minute, JobData: []byte(`{"task":1}`), MaxAttempts: 3}, "platform:test")
	if err != nil {
		e.t.Fatalf("InsertJob: %v", err)
	}
	leaseID := in.ID * 10
	if _, err := tx.Assign(in.ID, leaseID, 1, "g1", 1, tx.Now().Add(time.Minute)); err != nil {
		e.t.Fatalf("Assign: %v", err)
	}
	end := broker.EndFatal
	if f.State == broker.JobDone {
		end = broker.EndOK
	}
	if err := tx.EndLeaseRun(leaseID, end, f.Error, u, limit); err != nil {
		e.t.Fatalf("EndLeaseRun: %v", err)
	}
	f.LeaseID = leaseID
	if f.Actor == "" {
		f.Actor = "test"
	}
	did, err := tx.Finish(in.ID, f)
	if err != nil {
		e.t.Fatalf("Finish: %v", err)
	}
	if err := tx.Commit(); err != nil {
		e.t.Fatal(err)
	}
	return in.ID, did
}

var doneOK = store.Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(`{"score":1}`)}

func (e *env) delivery(id int64) store.Delivery {
	e.t.Helper()
	d, err := e.db.Delivery(context.Background(), id)
	if err != nil {
		e.t.Fatalf("Delivery(%d): %v", id, err)
	}
	return d
}

// advancing waits until cond holds, moving the fake clock by step before
// each new look, so that retries come due.
func (e *env) advancing(what string, step time.Duration, cond func() bool) {
	e.t.Helper()
	testutil.Eventually(e.t, what, func() bool {
		if cond() {
			return true
		}
		e.clk.Add(step)
		return false
	})
}

// idle waits until w holds no delivery: the outcomes of the tries a test
// saw in the database are then counted in Stats too.
func (e *env) idle(w *Worker) {
	e.t.Helper()
	testutil.Eventually(e.t, "the worker to be idle", func() bool { return w.Stats().InFlight == 0 })
}

// polls waits until w has polled the database n more times.
func (e *env) polls(w *Worker, n uint64) {
	e.t.Helper()
	from := w.polls.Load()
	testutil.Eventually(e.t, fmt.Sprintf("%d more polls", n), func() bool { return w.polls.Load() >= from+n })
}

// callback is one request a receiver got, opened and verified.
type callback struct {
	payload Payload
	raw     map[string]any
	token   string
	err     error // why it did not open, if it did not
	ctype   string
}

// receiver is a platform's endpoint: it opens every callback with the
// platform's key, checks the broker's signature, and answers what respond
// says for the n-th request (from 1).
type receiver struct {
	*httptest.Server
	opener *token.Opener

	mu       sync.Mutex
	calls    []callback
	respond  func(n int) int
	active   int
	maxConc  int
	delay    func() // runs before answering, while the request counts as active
	verifies bool
}

func (e *env) newReceiver(platform string, respond func(n int) int) *receiver {
	e.t.Helper()
	r := e.unstartedReceiver(platform, respond)
	r.Start()
	e.t.Cleanup(r.Close)
	return r
}

func (e *env) unstartedReceiver(platform string, respond func(n int) int) *receiver {
	e.t.Helper()
	pring, err := token.NewKeyRing(testKeys().platform, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if respond == nil {
		respond = func(int) int { return http.StatusOK }
	}
	r := &receiver{
		respond:  respond,
		verifies: true,
		opener: &token.Opener{
			Keys:     pring,
			Signers:  token.StaticSigners{brokerName: &testKeys().broker.PublicKey},
			Replay:   &token.MemoryReplayGuard{Now: e.clk.Now},
			Audience: platform,
			Now:      e.clk.Now,
		},
	}
	r.Server = httptest.NewUnstartedServer(r)
	// Handshakes refused on purpose would otherwise be printed to stderr.
	r.Config.ErrorLog = log.New(io.Discard, "", 0)
	return r
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	cb := callback{ctype: req.Header.Get("Content-Type")}
	var in struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		cb.err = err
	} else if r.verifies {
		cb.token = in.Token
		_, payload, err := r.opener.OpenCallback(req.Context(), in.Token)
		cb.err = err
		if err == nil {
			_ = json.Unmarshal(payload, &cb.payload)
			_ = json.Unmarshal(payload, &cb.raw)
		}
	}
	r.mu.Lock()
	r.calls = append(r.calls, cb)
	n := len(r.calls)
	r.active++
	r.maxConc = max(r.maxConc, r.active)
	delay := r.delay
	r.mu.Unlock()
	if delay != nil {
		delay()
	}
	r.mu.Lock()
	r.active--
	r.mu.Unlock()
	status := r.respond(n)
	w.WriteHeader(status)
	if status >= 300 {
		_, _ = io.WriteString(w, "try\x00 again\nlater")
	}
}

func (r *receiver) got() []callback {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]callback(nil), r.calls...)
}
