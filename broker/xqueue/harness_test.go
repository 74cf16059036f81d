package xqueue

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/delivery"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/broker/xqueue/xqueuetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The tests' users and their passwords.
const (
	lmsUser     = "lms"
	lmsPass     = "lms-password"
	watcherUser = "watcher"
	watcherPass = "watcher-password"
	queueName   = "python-grader"
)

// env is a broker's XQueue side over a real SQLite file: the store, the
// dispatcher, the delivery worker and the XQueue interface on an HTTPS
// server on 127.0.0.1, and an LMS's callback endpoint.
type env struct {
	t    *testing.T
	db   *store.DB
	d    *dispatch.Dispatcher
	svc  *Service
	srv  *httptest.Server
	lms  *lmsEndpoint
	clk  *testutil.Clock
	logs *testutil.SyncBuffer
}

// setup starts everything. The dispatcher and the XQueue interface run on
// clk (the delivery worker on real time); jobs of the queue time out after
// 10 s (lease: 11 s).
func setup(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, clk: testutil.NewClock(time.Now()), logs: &testutil.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", e.logs.String())
		}
	})
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "gb.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	t.Cleanup(func() { db.Close() })
	e.lms = newLMSEndpoint(t)
	lmsURL, err := url.Parse(e.lms.URL)
	if err != nil {
		t.Fatal(err)
	}
	lmsHost := lmsURL.Hostname()
	must(t)(db.AddTag(ctx, "py", ""))
	must(t)(db.AddServerType(ctx, "pytype", []string{"py"}))
	must(t)(db.AddPlatform(ctx, broker.Platform{Name: "edx", Protocol: broker.ProtocolXQueue}))
	must(t)(db.AddXQueueQueue(ctx, broker.XQueueQueue{Name: queueName, Tags: []string{"py"}, Type: "pytype", Timeout: 10 * time.Second}))
	must(t)(db.AddXQueueUser(ctx, broker.XQueueUser{Name: lmsUser, PasswordHash: hash(t, lmsPass), Platform: "edx",
		HTTPCallbackHosts: []string{lmsHost}, CallbackAuthUser: "xqueue", CallbackAuthPassword: "lms-basic"}))
	must(t)(db.AddXQueueUser(ctx, broker.XQueueUser{Name: watcherUser, PasswordHash: hash(t, watcherPass),
		PullQueues: []string{queueName}, MaxJobs: 2}))

	e.d = dispatch.New(db, dispatch.Config{Now: e.clk.Now, TickInterval: 5 * time.Millisecond, LeaseGrace: time.Second,
		AvoidFor: time.Millisecond}, log)
	if err := e.d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.d.Stop)
	ring, err := token.NewKeyRing(testKey(), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := delivery.New(db, ring, delivery.Config{Broker: "gb", PollInterval: 10 * time.Millisecond, MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 20 * time.Millisecond, Protocols: map[broker.Protocol]delivery.Protocol{broker.ProtocolXQueue: delivery.XQueueProtocol(db)}}, log)
	if err != nil {
		t.Fatal(err)
	}
	e.d.SetFinalHook(w.Notify)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	e.svc = New(Config{Now: e.clk.Now, MaxFiles: 1 << 10}, db, e.d, log)
	if err := e.svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.svc.Stop)
	mux := http.NewServeMux()
	mux.Handle("/xqueue/", e.svc.Handler())
	e.srv = httptest.NewUnstartedServer(mux)
	e.srv.Config.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

// must fails the test on the error of a call that returns a value too.
func must(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// testKey is the broker's token key, which the delivery worker needs; made
// once per test binary.
var testKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// hash is a bcrypt hash at the lowest cost, to keep the tests quick.
func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// lms is the LMS's XQueue interface, logged in as lmsUser.
func (e *env) lmsClient() *xqueuetest.LMS {
	return xqueuetest.NewLMS(e.srv.URL, e.srv.Client().Transport, lmsUser, lmsPass)
}

// watcher is an xqueue-watcher thread on the queue, as watcherUser.
func (e *env) watcher() *xqueuetest.Watcher {
	return xqueuetest.NewWatcher(e.srv.URL, e.srv.Client().Transport, queueName, watcherUser, watcherPass)
}

// header is the LMS's make_xheader for student n's problem.
func (e *env) header(n int, key string) (header, callback string) {
	callback = e.lms.URL + "/courses/course-v1:edX+DemoX+Demo/xqueue/" + strconv.Itoa(n) + "/block-v1:edX+DemoX+type@problem+block@p1/score_update"
	b := `{"lms_callback_url": "` + callback + `", "lms_key": "` + key + `", "queue_name": "` + queueName + `"}`
	return b, callback
}

// submitted submits student n's problem with lms_key key, as a fresh LMS
// client, failing the test if it is refused; it returns the header.
func (e *env) submitted(n int, key string) string {
	e.t.Helper()
	header, _ := e.header(n, key)
	if code, msg := e.lmsClient().SendToQueue(header, studentBody, nil); code != 0 {
		e.t.Fatalf("send_to_queue = %d %q", code, msg)
	}
	return header
}

// lmsEndpoint is the LMS's xqueue_callback: it records each post, and
// answers 503 while down.
type lmsEndpoint struct {
	*httptest.Server
	mu    sync.Mutex
	posts []lmsPost
	down  bool
}

type lmsPost struct {
	path       string
	header     string
	body       string
	user, pass string
}

func newLMSEndpoint(t *testing.T) *lmsEndpoint {
	l := &lmsEndpoint{}
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		down := l.down
		l.mu.Unlock()
		if down {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		// block_render.xqueue_callback: both fields, else 404.
		_ = r.ParseForm()
		if !r.PostForm.Has("xqueue_header") || !r.PostForm.Has("xqueue_body") {
			http.NotFound(w, r)
			return
		}
		u, p, _ := r.BasicAuth()
		l.mu.Lock()
		l.posts = append(l.posts, lmsPost{path: r.URL.Path, header: r.PostForm.Get("xqueue_header"),
			body: r.PostForm.Get("xqueue_body"), user: u, pass: p})
		l.mu.Unlock()
		_, _ = io.WriteString(w, "")
	}))
	t.Cleanup(l.Close)
	return l
}

func (l *lmsEndpoint) setDown(down bool) {
	l.mu.Lock()
	l.down = down
	l.mu.Unlock()
}

func (l *lmsEndpoint) got() []lmsPost {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lmsPost(nil), l.posts...)
}

// job reads a job.
func (e *env) job(id int64) broker.Job {
	e.t.Helper()
	j, err := e.db.GetJob(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

// storeDeliveries selects one job's deliveries.
func storeDeliveries(jobID int64) store.DeliveryFilter { return store.DeliveryFilter{JobID: jobID} }
