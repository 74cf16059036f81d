package wakeup_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/wakeup"
	"github.com/gradebroker/gradebroker/wakeupmsg"
)

var _ wakeup.Store = (*store.DB)(nil)

var testLog = slog.New(slog.DiscardHandler)

func testKey() []byte {
	k := make([]byte, wakeupmsg.KeySize)
	for i := range k {
		k[i] = byte(100 + i)
	}
	return k
}

type result struct {
	server string
	ok     bool
}

// env is a Waker over a real SQLite database with servers registered.
type env struct {
	db      *store.DB
	w       *wakeup.Waker
	results chan result
	sent    chan result
}

func setup(t *testing.T, cfg wakeup.Config, servers ...string) *env {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "gb.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.AddTag(ctx, "py", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddServerType(ctx, "pytype", []string{"py"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range servers {
		if _, err := db.AddServer(ctx, broker.Server{Name: name, Type: "pytype", MaxConcurrentJobs: 2, WakeupURL: "udp://127.0.0.1:9",
			Cert: broker.CertIdentity{Serial: "s" + name, Issuer: "CN=CA", Subject: "CN=" + name, Fingerprint: "fp" + name, NotAfter: time.Now().Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{db: db, results: make(chan result, 100), sent: make(chan result, 100)}
	cfg.Broker = "testbroker"
	cfg.OnResult = func(s string, ok bool) { e.results <- result{s, ok} }
	cfg.OnSent = func(s string, ok bool) { e.sent <- result{s, ok} }
	if cfg.UDPTimeout == 0 {
		cfg.UDPTimeout = 100 * time.Millisecond
	}
	e.w, err = wakeup.New(cfg, db, testLog)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.w.Stop)
	return e
}

// wake sends one wakeup and returns its result.
func (e *env) wake(t *testing.T, server, url string) bool {
	t.Helper()
	e.w.Wake(server, url, 3)
	select {
	case r := <-e.results:
		if r.server != server {
			t.Fatalf("result for %s, want %s", r.server, server)
		}
		return r.ok
	case <-time.After(10 * time.Second):
		t.Fatal("no wakeup result within 10 s")
	}
	return false
}

func (e *env) fails(t *testing.T, server string) int {
	t.Helper()
	s, err := e.db.ServerByName(context.Background(), server)
	if err != nil {
		t.Fatal(err)
	}
	return s.WakeupFails
}

func TestHTTPWakeupIsSigned(t *testing.T) {
	t.Parallel()
	type got struct {
		method, ctype, sig string
		body               []byte
	}
	reqs := make(chan got, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs <- got{r.Method, r.Header.Get("Content-Type"), r.Header.Get(wakeupmsg.SignatureHeader), b}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	e := setup(t, wakeup.Config{Key: testKey()}, "g1")
	before := time.Now().Unix()
	if !e.wake(t, "g1", srv.URL+"/wake") {
		t.Fatal("HTTP wakeup answered 202 counted as failed")
	}
	r := <-reqs
	if r.method != http.MethodPost || r.ctype != "application/json" {
		t.Errorf("request %s with Content-Type %q, want POST application/json", r.method, r.ctype)
	}
	secret := wakeupmsg.DeriveSecret(testKey(), "g1")
	if !strings.HasPrefix(r.sig, "sha256=") || !wakeupmsg.CheckSignature(secret, r.body, r.sig) {
		t.Errorf("signature %q does not verify over %s", r.sig, r.body)
	}
	if wakeupmsg.CheckSignature(wakeupmsg.DeriveSecret(testKey(), "g2"), r.body, r.sig) {
		t.Error("signature verifies with another server's secret")
	}
	var b wakeupmsg.Body
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatal(err)
	}
	if b.Server != "g1" || b.Broker != "testbroker" || b.Waiting != 3 || len(b.Nonce) != 32 || b.TS < before || b.TS > time.Now().Unix() {
		t.Errorf("body %s", r.body)
	}
	if st := e.w.Stats(); st.Sent != 1 || st.OK != 1 || st.Servers["g1"].OK != 1 {
		t.Errorf("stats %+v", st)
	}
	if r := <-e.sent; r != (result{"g1", true}) {
		t.Errorf("OnSent got %+v", r)
	}
}

// udpResponder is graderd's side of a UDP wakeup, answering with reply
// (nil: check the datagram; "": never answer).
func udpResponder(t *testing.T, secret []byte, reply *string) (url string, got *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got = &atomic.Int32{}
	v := wakeupmsg.NewVerifier(secret)
	go func() {
		buf := make([]byte, 1024)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got.Add(1)
			ans := wakeupmsg.ReplyOK
			if _, err := v.Check(buf[:n], time.Now()); err != nil {
				ans = wakeupmsg.ReplyNo
			}
			if reply != nil {
				ans = *reply
			}
			if ans != "" {
				_, _ = pc.WriteTo([]byte(ans), from)
			}
		}
	}()
	return "udp://" + pc.LocalAddr().String(), got
}

func TestUDPWakeup(t *testing.T) {
	t.Parallel()
	secret := wakeupmsg.DeriveSecret(testKey(), "g1")
	silent, no := "", wakeupmsg.ReplyNo
	for _, tc := range []struct {
		name   string
		secret []byte
		reply  *string
		ok     bool
		tries  int32
	}{
		{"valid", secret, nil, true, 1},
		{"wrong secret on graderd", wakeupmsg.DeriveSecret(testKey(), "g2"), nil, false, 1},
		{"refused", secret, &no, false, 1},
		{"no reply: two tries", secret, &silent, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, wakeup.Config{Key: testKey()}, "g1")
			url, got := udpResponder(t, tc.secret, tc.reply)
			if ok := e.wake(t, "g1", url); ok != tc.ok {
				t.Errorf("wakeup ok = %v, want %v", ok, tc.ok)
			}
			if n := got.Load(); n != tc.tries {
				t.Errorf("graderd got %d datagrams, want %d", n, tc.tries)
			}
		})
	}
}

func TestWakeupFailsCountedAndReset(t *testing.T) {
	t.Parallel()
	var status atomic.Int32
	status.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	e := setup(t, wakeup.Config{Key: testKey()}, "g1", "g2")
	for i := 1; i <= 3; i++ {
		if e.wake(t, "g1", srv.URL) {
			t.Fatal("503 counted as success")
		}
		if n := e.fails(t, "g1"); n != i {
			t.Fatalf("after %d failures wakeup_fails = %d", i, n)
		}
	}
	if e.wake(t, "g1", "udp://127.0.0.1:1") { // nobody listens there
		t.Fatal("unanswered UDP wakeup counted as success")
	}
	if n := e.fails(t, "g1"); n != 4 {
		t.Fatalf("wakeup_fails = %d, want 4", n)
	}
	status.Store(http.StatusOK)
	if !e.wake(t, "g1", srv.URL) {
		t.Fatal("200 counted as failure")
	}
	if n := e.fails(t, "g1"); n != 0 {
		t.Errorf("after a success wakeup_fails = %d, want 0", n)
	}
	if n := e.fails(t, "g2"); n != 0 {
		t.Errorf("g2's wakeup_fails = %d, want 0: only g1 was woken", n)
	}
	if st := e.w.Stats(); st.Sent != 5 || st.OK != 1 || st.Failed != 4 {
		t.Errorf("stats %+v", st)
	}
}

func TestNoKeyRefusesToWake(t *testing.T) {
	t.Parallel()
	hit := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hit <- struct{}{} }))
	t.Cleanup(srv.Close)
	e := setup(t, wakeup.Config{}, "g1")
	if e.wake(t, "g1", srv.URL) {
		t.Fatal("a wakeup without a key succeeded")
	}
	select {
	case <-hit:
		t.Fatal("an unsigned wakeup was sent")
	default:
	}
	if st := e.w.Stats(); st.Refused != 1 || st.Sent != 0 {
		t.Errorf("stats %+v", st)
	}
	if n := e.fails(t, "g1"); n != 0 {
		t.Errorf("wakeup_fails = %d; a refusal is the broker's fault, not the server's", n)
	}
	select {
	case r := <-e.sent:
		t.Errorf("OnSent called for a refused wakeup: %+v", r)
	default:
	}
}

func TestRecordWakeupUnknownServer(t *testing.T) {
	t.Parallel()
	e := setup(t, wakeup.Config{Key: testKey()})
	if _, err := e.db.RecordWakeup(context.Background(), "nobody", false); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("RecordWakeup(unknown) = %v, want ErrNotFound", err)
	}
}

func TestStartSaysWhenServersCannotBeWoken(t *testing.T) {
	t.Parallel()
	e := setup(t, wakeup.Config{Key: testKey()}, "g1", "g2")
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	for _, key := range [][]byte{testKey(), nil} {
		w, err := wakeup.New(wakeup.Config{Key: key}, e.db, log)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		w.Stop()
		w.Stop() // idempotent
		warned := strings.Contains(buf.String(), "no wakeup key") && strings.Contains(buf.String(), "servers=g1,g2")
		if warned != (key == nil) {
			t.Errorf("key %v: warned=%v:\n%s", key != nil, warned, buf.String())
		}
	}
}
