package delivery

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// lmsCallback is an LMS's xqueue_callback: it records each form and its
// basic credentials.
type lmsCallback struct {
	*httptest.Server
	mu    sync.Mutex
	posts []lmsPost
}

type lmsPost struct {
	path, user, pass string
	form             url.Values
}

func newLMS(t *testing.T) *lmsCallback {
	t.Helper()
	l := &lmsCallback{}
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			http.Error(w, "not a form", http.StatusBadRequest)
			return
		}
		_ = r.ParseForm()
		u, p, _ := r.BasicAuth()
		l.mu.Lock()
		l.posts = append(l.posts, lmsPost{path: r.URL.Path, user: u, pass: p, form: r.PostForm})
		l.mu.Unlock()
	}))
	t.Cleanup(l.Close)
	return l
}

func (l *lmsCallback) got() []lmsPost {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lmsPost(nil), l.posts...)
}

// xqueueJob stores an XQueue submission of user u to callback, made final
// with f, and returns its delivery.
func (e *env) xqueueJob(u broker.XQueueUser, callback, header string, f store.Final) int64 {
	e.t.Helper()
	tx, err := e.db.BeginJobs(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback()
	in, err := tx.InsertJob(broker.NewJob{PlatformID: u.PlatformID, Name: "q", Timeout: time.Minute,
		JobData: []byte(`{"student_response":"x"}`), MaxAttempts: 3, Queue: "q"}, "xqueue:"+u.Name)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := tx.InsertXQueueSubmission(in.ID, u.ID, callback, header); err != nil {
		e.t.Fatal(err)
	}
	if f.Actor == "" {
		f.Actor = "test"
	}
	did, err := tx.Finish(in.ID, f)
	if err != nil || did == 0 {
		e.t.Fatalf("Finish = %d, %v", did, err)
	}
	if err := tx.Commit(); err != nil {
		e.t.Fatal(err)
	}
	return did
}

// An XQueue submission's result goes to its lms_callback_url as XQueue
// posts it: a form of the LMS's header verbatim and the grader's reply byte
// for byte, with the user's basic credentials; a failed or cancelled one
// gets XQueue's failure message; a host the user may no longer send to,
// or a removed user, makes the delivery dead.
func TestXQueueCallback(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := newLMS(t)
	ctx := context.Background()
	if _, err := e.db.AddPlatform(ctx, broker.Platform{Name: "edx", Protocol: broker.ProtocolXQueue}); err != nil {
		t.Fatal(err)
	}
	host := strings.Split(strings.TrimPrefix(lms.URL, "http://"), ":")[0]
	u, err := e.db.AddXQueueUser(ctx, broker.XQueueUser{Name: "lms", PasswordHash: "h", Platform: "edx",
		HTTPCallbackHosts: []string{host}, CallbackAuthUser: "xq", CallbackAuthPassword: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	w := e.worker(Config{Protocols: map[broker.Protocol]Protocol{broker.ProtocolXQueue: XQueueProtocol(e.db)}})

	header := `{"lms_callback_url": "` + lms.URL + `/courses/x/xqueue/5/block/score_update", "lms_key": "k1", "queue_name": "q"}`
	reply := `{"correct": true, "score": 1, "msg": "<p>ok</p>"}` + "\n"
	done := e.xqueueJob(u, lms.URL+"/courses/x/xqueue/5/block/score_update", header,
		store.Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: broker.XQueueToJSON([]byte(reply))})
	failed := e.xqueueJob(u, lms.URL+"/cb/2", `{"lms_key": "k2"}`, store.Final{State: broker.JobFailed, Error: "gave up"})
	w.Notify(0, 0)
	testutil.Eventually(t, "both callbacks", func() bool {
		return e.delivery(done).State == broker.DeliveryDelivered && e.delivery(failed).State == broker.DeliveryDelivered
	})
	want := map[string]lmsPost{
		"/courses/x/xqueue/5/block/score_update": {path: "/courses/x/xqueue/5/block/score_update", user: "xq", pass: "s3cret",
			form: url.Values{"xqueue_header": {header}, "xqueue_body": {reply}}},
		"/cb/2": {path: "/cb/2", user: "xq", pass: "s3cret",
			form: url.Values{"xqueue_header": {`{"lms_key": "k2"}`}, "xqueue_body": {broker.XQueueFailureBody}}},
	}
	got := map[string]lmsPost{}
	for _, p := range lms.got() {
		got[p.path] = p
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(lmsPost{})); diff != "" {
		t.Errorf("LMS posts (-want +got):\n%s", diff)
	}

	// The operator took the host away: dead, saying why.
	var none []string
	if _, _, err := e.db.UpdateXQueueUser(ctx, "lms", store.XQueueUserUpdate{HTTPCallbackHosts: &none}); err != nil {
		t.Fatal(err)
	}
	id := e.xqueueJob(u, lms.URL+"/cb/3", `{}`, store.Final{State: broker.JobCancelled, Error: "x"})
	w.Notify(0, 0)
	testutil.Eventually(t, "the delivery to die", func() bool { return e.delivery(id).State == broker.DeliveryDead })
	if d := e.delivery(id); !strings.Contains(d.LastError, "not one XQueue user lms may send results to over http://") {
		t.Errorf("last error = %q", d.LastError)
	}
	if _, err := e.db.RemoveXQueueUser(ctx, "lms"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Redeliver(ctx, store.Redelivery{IDs: []int64{id}}); err != nil {
		t.Fatal(err)
	}
	jobID := e.delivery(id).JobID
	testutil.Eventually(t, "the redelivery to die", func() bool {
		ds, err := e.db.ListDeliveries(ctx, store.DeliveryFilter{JobID: jobID})
		if err != nil {
			t.Fatal(err)
		}
		// Newest first: the redelivery.
		return len(ds) == 2 && ds[0].State == broker.DeliveryDead && strings.Contains(ds[0].LastError, "was removed")
	})
	if n := len(lms.got()); n != 2 {
		t.Errorf("the LMS got %d posts, want 2", n)
	}
	e.idle(w)
}
