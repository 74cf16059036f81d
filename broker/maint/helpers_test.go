package maint

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// clock is a settable clock shared by the store, the dispatcher and the
// service under test.
type clock = testutil.Clock

// logBuffer collects a logger's output.
type logBuffer = testutil.SyncBuffer

// env is a database with a fake clock, a platform with a return URL and one
// without, tag "py" and server type "pytype".
type env struct {
	t      *testing.T
	db     *store.DB
	clk    *clock
	logs   *logBuffer
	log    *slog.Logger
	mooc   int64 // has a return URL
	quiet  int64 // has none
	typeID int64
}

func setup(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, clk: testutil.NewClock(time.UnixMilli(1_800_000_000_000)), logs: &logBuffer{}}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "gb.db"), store.Options{Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.db = db
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "mooc", PublicKeyPEM: "k", ReturnURL: "https://mooc.example/cb"})
	if err != nil {
		t.Fatal(err)
	}
	e.mooc = p.ID
	if p, err = db.AddPlatform(ctx, broker.Platform{Name: "quiet", PublicKeyPEM: "k"}); err != nil {
		t.Fatal(err)
	}
	e.quiet = p.ID
	if _, err := db.AddTag(ctx, "py", ""); err != nil {
		t.Fatal(err)
	}
	st, err := db.AddServerType(ctx, "pytype", []string{"py"})
	if err != nil {
		t.Fatal(err)
	}
	e.typeID = st.ID
	return e
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// job is a job made by finished.
type job struct{ id, delivery int64 }

// finished queues a job, runs it under a lease and makes it final, at the
// clock's time: events, a lease, a result and (for mooc) a delivery.
func (e *env) finished(platform int64, state broker.JobState, data []byte) job {
	e.t.Helper()
	tx, err := e.db.BeginJobs(context.Background())
	e.must(err)
	defer tx.Rollback()
	if data == nil {
		data = []byte(`{}`)
	}
	in, err := tx.InsertJob(broker.NewJob{PlatformID: platform, Name: "j", Timeout: time.Minute, JobData: data,
		MaxAttempts: 3, TypeIDs: []int64{e.typeID}}, "test")
	e.must(err)
	lease := in.ID * 10
	_, err = tx.Assign(in.ID, lease, 1, "g1", 1, tx.Now().Add(time.Minute))
	e.must(err)
	e.must(tx.EndLease(lease, "ok", ""))
	f := store.Final{State: state, LeaseID: lease, Outcome: broker.OutcomeOK, Result: data, Log: "log", Actor: "server:g1"}
	if state == broker.JobFailed {
		f.Outcome, f.Error = broker.OutcomeFatal, "broken"
	}
	did, err := tx.Finish(in.ID, f)
	e.must(err)
	e.must(tx.Commit())
	return job{in.ID, did}
}

// cancelledQueued queues a job for quiet and cancels it before it runs.
func (e *env) cancelledQueued() int64 {
	e.t.Helper()
	tx, err := e.db.BeginJobs(context.Background())
	e.must(err)
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: e.quiet, Name: "c", Timeout: time.Minute, JobData: []byte(`{}`),
		MaxAttempts: 3}, "test")
	e.must(err)
	_, err = tx.Finish(in.ID, store.Final{State: broker.JobCancelled, Error: "cancelled", Actor: "platform:quiet"})
	e.must(err)
	e.must(tx.Commit())
	return in.ID
}

// queued queues a job that stays queued.
func (e *env) queued() int64 {
	e.t.Helper()
	tx, err := e.db.BeginJobs(context.Background())
	e.must(err)
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: e.mooc, Name: "q", Timeout: time.Minute, JobData: []byte(`{}`),
		MaxAttempts: 3, TypeIDs: []int64{e.typeID}}, "test")
	e.must(err)
	e.must(tx.Commit())
	return in.ID
}

// webhook is an httptest server that records the alerts POSTed to it.
type webhook struct {
	*httptest.Server
	mu     sync.Mutex
	got    []map[string]any
	status int
}

func newWebhook(t *testing.T) *webhook {
	t.Helper()
	w := &webhook{status: http.StatusNoContent}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var m map[string]any
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(rw, "want a JSON POST", http.StatusBadRequest)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.status >= 300 {
			http.Error(rw, "webhook down", w.status)
			return
		}
		w.got = append(w.got, m)
		rw.WriteHeader(w.status)
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *webhook) setStatus(code int) {
	w.mu.Lock()
	w.status = code
	w.mu.Unlock()
}

// take returns the alerts received since the last take.
func (w *webhook) take() []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.got
	w.got = nil
	return out
}

// kinds lists the "alert" fields of alerts.
func kinds(alerts []map[string]any) []string {
	var out []string
	for _, a := range alerts {
		out = append(out, fmt.Sprint(a["alert"]))
	}
	return out
}

// fakeSMTP is a mail server on 127.0.0.1 that accepts the dialogue and
// records each message, with AUTH PLAIN credentials when sent.
type fakeSMTP struct {
	addr string
	mu   sync.Mutex
	msgs []smtpMessage
}

type smtpMessage struct {
	auth, from string
	to         []string
	data       string
}

func newFakeSMTP(t *testing.T) *fakeSMTP {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	f := &fakeSMTP{addr: lis.Addr().String()}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakeSMTP) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(c)
	reply := func(s string) { _ = tp.PrintfLine("%s", s) }
	reply("220 fake.test ESMTP")
	var m smtpMessage
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO", "HELO":
			reply("250-fake.test")
			reply("250-8BITMIME")
			reply("250 AUTH PLAIN")
		case "AUTH":
			m.auth = arg
			reply("235 2.7.0 ok")
		case "MAIL":
			m.from = arg
			reply("250 ok")
		case "RCPT":
			m.to = append(m.to, arg)
			reply("250 ok")
		case "DATA":
			reply("354 go on")
			b, err := tp.ReadDotBytes()
			if err != nil {
				return
			}
			m.data = string(b)
			f.mu.Lock()
			f.msgs = append(f.msgs, m)
			f.mu.Unlock()
			m = smtpMessage{}
			reply("250 queued")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not here")
		}
	}
}

func (f *fakeSMTP) messages() []smtpMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]smtpMessage(nil), f.msgs...)
}

// header reads a header of a recorded message.
func (m smtpMessage) header(name string) string {
	tp := textproto.NewReader(bufio.NewReader(strings.NewReader(m.data)))
	h, _ := tp.ReadMIMEHeader()
	return h.Get(name)
}
