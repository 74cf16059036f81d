package xqueue

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/xqueue/xqueuetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The LMS's body, as capa's CodeResponse builds it.
const studentBody = `{"student_info": "{\"anonymous_student_id\": \"6d07814a\", \"submission_time\": \"20261202\", \"random_seed\": 1}", ` +
	`"student_response": "def f(x):\r\n    return x * 2\r\n", "grader_payload": "{\"grader\": \"ex1/grade.py\"}"}`

// graderReply is what xqueue-watcher's Grader returns.
var graderReply = map[string]any{"correct": true, "score": 1, "msg": "<div class=\"test\">\n<header>Test results</header>\n</div>"}

// submit → pull → put_result → LMS callback, each client as the real one
// does it: the LMS posts form-encoded and gets the queue length; the
// watcher gets the submission as a JSON string whose header it posts back
// verbatim; the result is committed before put_result answers and reaches
// the LMS through the outbox as XQueue posts it.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := e.lmsClient()
	header, callback := e.header(1, "key-1")
	if code, msg := lms.SendToQueue(header, studentBody, nil); code != 0 || msg != "1" {
		t.Fatalf("send_to_queue = %d %q, want 0 and the queue length 1", code, msg)
	}
	if lms.Logins != 1 {
		t.Errorf("the LMS logged in %d times, want once (after login_required)", lms.Logins)
	}
	w := e.watcher()
	if ok, err := w.Login(); !ok || err != nil {
		t.Fatalf("the watcher could not log in: %v", err)
	}
	ok, n, err := w.Request(http.MethodGet, "/xqueue/get_queuelen/", url.Values{"queue_name": {queueName}}, nil)
	if err != nil || !ok || n != "1" {
		t.Errorf("get_queuelen = %v %q %v", ok, n, err)
	}
	sub, raw, err := w.GetSubmission()
	if err != nil || sub == nil {
		t.Fatalf("get_submission = %v, %q", err, raw)
	}
	if sub.Body != studentBody {
		t.Errorf("xqueue_body = %q, want the LMS's body byte for byte", sub.Body)
	}
	if sub.Files != "{}" {
		t.Errorf("xqueue_files = %q, want {}", sub.Files)
	}
	var h pullHeader
	if err := json.Unmarshal([]byte(sub.Header), &h); err != nil || h.SubmissionID == 0 || h.SubmissionKey == "" {
		t.Fatalf("xqueue_header %q is not a JSON string of submission_id and submission_key: %v", sub.Header, err)
	}
	if j := e.job(h.SubmissionID); j.State != broker.JobAssigned || j.Queue != queueName || j.Server != "xq.watcher.python-grader" {
		t.Errorf("pulled job: %s, queue %q, server %q", j.State, j.Queue, j.Server)
	}
	if ok, msg, err := w.PutResult(sub.Header, graderReply); err != nil || !ok || msg != "" {
		t.Fatalf("put_result = %v %q %v", ok, msg, err)
	}
	j := e.job(h.SubmissionID)
	if j.State != broker.JobDone {
		t.Errorf("the job is %s once put_result answered, want done", j.State)
	}
	testutil.Eventually(t, "the LMS's callback", func() bool { return len(e.lms.got()) == 1 })
	post := e.lms.got()[0]
	wantBody, _ := json.Marshal(graderReply)
	want := lmsPost{path: strings.TrimPrefix(callback, e.lms.URL), header: header, body: string(wantBody), user: "xqueue", pass: "lms-basic"}
	if diff := cmp.Diff(want, post, cmp.AllowUnexported(lmsPost{})); diff != "" {
		t.Errorf("LMS callback (-want +got):\n%s", diff)
	}
	// Nothing more to pull, and the queue is empty.
	if sub, msg, _ := w.GetSubmission(); sub != nil || msg != "Queue '"+queueName+"' is empty" {
		t.Errorf("get_submission of an empty queue = %v %q", sub, msg)
	}
}

// The LMS sends files multipart; the watcher gets absolute, unguessable
// links it fetches without a session, that end with the pull.
func TestAttachmentsRoundTrip(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := e.lmsClient()
	header, _ := e.header(2, "key-2")
	files := []xqueuetest.File{{Name: "answer.py", Data: []byte("print('hello')\n")}, {Name: "data.bin", Data: []byte{0, 1, 2, 255}}, {Name: "empty.txt", Data: nil}}
	if code, msg := lms.SendToQueue(header, studentBody, files); code != 0 {
		t.Fatalf("send_to_queue with files = %d %q", code, msg)
	}
	w := e.watcher()
	sub, raw, err := w.GetSubmission()
	if err != nil || sub == nil {
		t.Fatalf("get_submission = %v %q", err, raw)
	}
	var links map[string]string
	if err := json.Unmarshal([]byte(sub.Files), &links); err != nil {
		t.Fatalf("xqueue_files %q is not a JSON string of {name: url}: %v", sub.Files, err)
	}
	if len(links) != len(files) {
		t.Fatalf("xqueue_files = %v, want %d files", links, len(files))
	}
	anon := e.srv.Client() // no cookie jar: no session
	fetch := func(link string) (int, []byte) {
		t.Helper()
		resp, err := anon.Get(link)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for _, f := range files {
		link := links[f.Name]
		if !strings.HasPrefix(link, e.srv.URL+"/xqueue/files/") {
			t.Errorf("link of %s = %q, want an absolute URL on the broker", f.Name, link)
		}
		code, b := fetch(link)
		if code != http.StatusOK || string(b) != string(f.Data) {
			t.Errorf("%s: HTTP %d, %q; want %q", f.Name, code, b, f.Data)
		}
	}
	// A made-up or altered link is refused.
	bad := links["answer.py"]
	i := strings.Index(bad, "/xqueue/files/") + len("/xqueue/files/")
	bad = bad[:i] + string(rune(bad[i]^1)) + bad[i+1:]
	if code, _ := fetch(bad); code != http.StatusNotFound {
		t.Errorf("altered link: HTTP %d, want 404", code)
	}
	if ok, _, err := w.PutResult(sub.Header, graderReply); !ok || err != nil {
		t.Fatalf("put_result: %v %v", ok, err)
	}
	if code, _ := fetch(links["answer.py"]); code != http.StatusNotFound {
		t.Errorf("link after put_result: HTTP %d, want 404 (it ends with the pull)", code)
	}
	// Too much: the submission is refused, nothing stored.
	big := []xqueuetest.File{{Name: "big.bin", Data: make([]byte, 2<<10)}}
	if code, msg := lms.SendToQueue(header, studentBody, big); code != 1 || !strings.Contains(msg, "too large") {
		t.Errorf("send_to_queue of 2 KiB with a 1 KiB limit = %d %q", code, msg)
	}
	if n := e.d.QueueLength(queueName); n != 0 {
		t.Errorf("queue length after a refused submission = %d", n)
	}
}

// A key the broker did not make, or one that is no longer the pull's, is
// refused with XQueue's words, and changes nothing.
func TestWrongKey(t *testing.T) {
	t.Parallel()
	e := setup(t)
	header := e.submitted(3, "key-3")
	w := e.watcher()
	sub, _, err := w.GetSubmission()
	if err != nil || sub == nil {
		t.Fatal("no submission")
	}
	var h pullHeader
	_ = json.Unmarshal([]byte(sub.Header), &h)
	lease, mac, _ := strings.Cut(h.SubmissionKey, ".")
	n, _ := strconv.ParseInt(lease, 10, 64)
	for _, tc := range []struct {
		name, header, want string
	}{
		{"another lease", `{"submission_id": ` + strconv.FormatInt(h.SubmissionID, 10) + `, "submission_key": "` + strconv.FormatInt(n+1, 10) + "." + mac + `"}`, "Incorrect key for submission"},
		{"made up", `{"submission_id": ` + strconv.FormatInt(h.SubmissionID, 10) + `, "submission_key": "abc"}`, "Incorrect key for submission"},
		{"another submission", `{"submission_id": 999, "submission_key": "` + h.SubmissionKey + `"}`, "Submission does not exist"},
		{"not JSON", `submission 1`, "Incorrect reply format"},
		{"no key", `{"submission_id": 1}`, "Incorrect reply format"},
	} {
		ok, msg, err := w.Request(http.MethodPost, "/xqueue/put_result/", nil, url.Values{"xqueue_header": {tc.header}, "xqueue_body": {"{}"}})
		if err != nil || ok || msg != tc.want {
			t.Errorf("%s: put_result = %v %q %v; want %q", tc.name, ok, msg, err, tc.want)
		}
	}
	// The id as a string, as Python's int() takes it, is the same key.
	strID := `{"submission_id": "` + strconv.FormatInt(h.SubmissionID, 10) + `", "submission_key": "` + h.SubmissionKey + `"}`
	if ok, msg, err := w.Request(http.MethodPost, "/xqueue/put_result/", nil, url.Values{"xqueue_header": {strID}, "xqueue_body": {`{"correct": false}`}}); !ok || err != nil {
		t.Fatalf("put_result with the id as a string = %v %q %v", ok, msg, err)
	}
	// Used once: the same key again is stale.
	if ok, msg, _ := w.PutResult(sub.Header, graderReply); ok || msg != "Incorrect key for submission" {
		t.Errorf("second put_result = %v %q", ok, msg)
	}
	// Another user's pull cannot be answered by a user who may pull the
	// queue too.
	must(t)(e.db.AddXQueueUser(context.Background(), broker.XQueueUser{Name: "other", PasswordHash: hash(t, "other-password"),
		PullQueues: []string{queueName}}))
	if code, msg := e.lmsClient().SendToQueue(header, studentBody, nil); code != 0 {
		t.Fatal(msg)
	}
	sub, _, _ = w.GetSubmission()
	other := xqueuetest.NewWatcher(e.srv.URL, e.srv.Client().Transport, queueName, "other", "other-password")
	if ok, msg, _ := other.PutResult(sub.Header, graderReply); ok || msg != "Incorrect key for submission" {
		t.Errorf("another user's put_result = %v %q", ok, msg)
	}
}

// A pull not answered within its lease (timeout + grace) returns to the
// queue with an attempt counted; its late result is still taken while
// nobody has pulled it since; after a new pull the old key is stale.
func TestExpiredPullRequeued(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.submitted(4, "key-4")
	w := e.watcher()
	first, _, _ := w.GetSubmission()
	var h pullHeader
	_ = json.Unmarshal([]byte(first.Header), &h)
	e.clk.Add(12 * time.Second)
	testutil.Eventually(t, "the lease to expire", func() bool { return e.job(h.SubmissionID).State == broker.JobQueued })
	if j := e.job(h.SubmissionID); j.Attempts != 1 || j.History[0].End != broker.EndExpired {
		t.Errorf("after the expiry: %d attempts, %+v", j.Attempts, j.History)
	}
	second, _, _ := w.GetSubmission()
	if second == nil || second.Header == first.Header {
		t.Fatalf("re-pull = %+v, want a new key", second)
	}
	if ok, msg, _ := w.PutResult(first.Header, graderReply); ok || msg != "Incorrect key for submission" {
		t.Errorf("put_result with the first pull's key = %v %q, want it refused", ok, msg)
	}
	e.clk.Add(12 * time.Second)
	testutil.Eventually(t, "the second lease to expire", func() bool { return e.job(h.SubmissionID).State == broker.JobQueued })
	// Late, but nobody pulled it since: taken, and graded once.
	if ok, msg, err := w.PutResult(second.Header, graderReply); !ok || err != nil {
		t.Fatalf("late put_result with the current key = %v %q %v, want it taken", ok, msg, err)
	}
	if j := e.job(h.SubmissionID); j.State != broker.JobDone || j.Attempts != 2 {
		t.Errorf("after the late result: %s, %d attempts", j.State, j.Attempts)
	}
	if sub, _, _ := w.GetSubmission(); sub != nil {
		t.Errorf("the job was pulled again after its late result: %+v", sub)
	}
	testutil.Eventually(t, "the LMS's callback", func() bool { return len(e.lms.got()) == 1 })
}

// A new submission to the same callback URL (the same student and problem)
// retires the earlier one, whose result is never posted, whether it
// waited or was being graded.
func TestSupersede(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := e.lmsClient()
	w := e.watcher()
	h1, _ := e.header(5, "key-a")
	if code, msg := lms.SendToQueue(h1, studentBody, nil); code != 0 {
		t.Fatal(msg)
	}
	pulledOld, _, _ := w.GetSubmission()
	h2, _ := e.header(5, "key-b")
	if code, msg := lms.SendToQueue(h2, studentBody, nil); code != 0 {
		t.Fatal(msg)
	}
	h3, _ := e.header(5, "key-c")
	if code, msg := lms.SendToQueue(h3, studentBody, nil); code != 0 || msg != "1" {
		t.Fatalf("third submission = %d %q, want the queue length 1 (only itself)", code, msg)
	}
	// The pull of the first is stale; only the third is left to grade.
	if ok, msg, _ := w.PutResult(pulledOld.Header, graderReply); ok || msg != "Incorrect key for submission" {
		t.Errorf("put_result of a retired submission = %v %q", ok, msg)
	}
	sub, _, _ := w.GetSubmission()
	if sub == nil {
		t.Fatal("nothing to pull")
	}
	if ok, _, _ := w.PutResult(sub.Header, graderReply); !ok {
		t.Fatal("put_result refused")
	}
	if extra, _, _ := w.GetSubmission(); extra != nil {
		t.Errorf("a retired submission was pulled: %+v", extra)
	}
	testutil.Eventually(t, "the LMS's callback", func() bool { return len(e.lms.got()) >= 1 })
	if posts := e.lms.got(); len(posts) != 1 || posts[0].header != h3 {
		t.Errorf("the LMS got %+v, want one post, for the third submission", posts)
	}
	var id pullHeader
	_ = json.Unmarshal([]byte(pulledOld.Header), &id)
	if j := e.job(id.SubmissionID); j.State != broker.JobCancelled || j.Delivery != broker.DeliveryNone || !strings.Contains(j.Error, "retired") {
		t.Errorf("retired job: %s, delivery %v, error %q", j.State, j.Delivery, j.Error)
	}
	// Another problem of the same student is another callback URL: kept.
	h4, _ := e.header(6, "key-d")
	if code, _ := lms.SendToQueue(h4, studentBody, nil); code != 0 {
		t.Fatal("fourth submission refused")
	}
	h5, _ := e.header(7, "key-e")
	if code, msg := lms.SendToQueue(h5, studentBody, nil); code != 0 || msg != "2" {
		t.Errorf("submission to another callback URL = %d %q, want the queue length 2", code, msg)
	}
}

// The LMS is down when the result comes: put_result still answers at once,
// the callback is retried by the outbox until the LMS is back, and the
// submission is graded once.
func TestLMSDown(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.submitted(8, "key-8")
	e.lms.setDown(true)
	w := e.watcher()
	sub, _, _ := w.GetSubmission()
	if ok, _, _ := w.PutResult(sub.Header, graderReply); !ok {
		t.Fatal("put_result refused while the LMS is down")
	}
	var h pullHeader
	_ = json.Unmarshal([]byte(sub.Header), &h)
	testutil.Eventually(t, "a failed try", func() bool {
		ds, err := e.db.ListDeliveries(context.Background(), storeDeliveries(h.SubmissionID))
		return err == nil && len(ds) == 1 && ds[0].Tries >= 2
	})
	if again, _, _ := w.GetSubmission(); again != nil {
		t.Fatalf("the submission was handed out again while its callback failed: %+v", again)
	}
	e.lms.setDown(false)
	testutil.Eventually(t, "the LMS's callback once it is back", func() bool {
		return e.job(h.SubmissionID).Delivery == broker.DeliveryDelivered
	})
	if j := e.job(h.SubmissionID); j.Attempts != 1 || len(e.lms.got()) != 1 {
		t.Errorf("job: %d attempts, %d posts; want graded once, posted once", j.Attempts, len(e.lms.got()))
	}
}
