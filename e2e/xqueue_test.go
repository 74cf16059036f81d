package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gradebroker/gradebroker/broker/xqueue/xqueuetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// lmsCallbacks is an LMS's xqueue_callback endpoint: it records the forms
// it gets.
type lmsCallbacks struct {
	*httptest.Server
	mu    sync.Mutex
	forms []map[string]string
}

func newLMSCallbacks(t *testing.T) *lmsCallbacks {
	l := &lmsCallbacks{}
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || !r.PostForm.Has("xqueue_header") || !r.PostForm.Has("xqueue_body") {
			http.NotFound(w, r)
			return
		}
		l.mu.Lock()
		l.forms = append(l.forms, map[string]string{"path": r.URL.Path, "xqueue_header": r.PostForm.Get("xqueue_header"),
			"xqueue_body": r.PostForm.Get("xqueue_body")})
		l.mu.Unlock()
	}))
	t.Cleanup(l.Close)
	return l
}

func (l *lmsCallbacks) got() []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]string(nil), l.forms...)
}

// TestXQueueEndToEnd: an operator registers an XQueue site with `broker
// admin`; an LMS submits with a file through the broker's HTTPS gateway;
// an xqueue-watcher client pulls it, fetches the file and answers; the LMS
// gets the result as XQueue posts it; the pulling client is a server in
// `broker admin server list`.
func TestXQueueEndToEnd(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	b := startBroker(t, dir, nil)
	bootstrap(t, dir, b.db)
	lms := newLMSCallbacks(t)
	b.registerXQueue(t, "xqueue password\n")

	hc := devHTTPClient(t, dir)
	base := "https://" + b.HTTPAddr()
	callback := lms.URL + "/courses/course-v1:edX+DemoX+Demo/xqueue/4/block-v1:edX+DemoX+type@problem+block@p1/score_update"
	header := `{"lms_callback_url": "` + callback + `", "lms_key": "a1b2", "queue_name": "python-grader"}`
	body := `{"student_response": "print(42)", "grader_payload": "{\"grader\": \"p1/grade.py\"}"}`
	client := xqueuetest.NewLMS(base, hc.Transport, "lms", "xqueue password")
	if code, msg := client.SendToQueue(header, body, []xqueuetest.File{{Name: "answer.py", Data: []byte("print(42)\n")}}); code != 0 || msg != "1" {
		t.Fatalf("send_to_queue = %d %q", code, msg)
	}
	out := b.mustAdmin(t, "xqueue", "queue", "list")
	if !strings.Contains(out, "python-grader") || !strings.Contains(out, "1\n") {
		t.Errorf("xqueue queue list:\n%s", out)
	}

	w := xqueuetest.NewWatcher(base, hc.Transport, "python-grader", "watcher", "xqueue password")
	// The first login is a bcrypt check, which under -race on a busy
	// machine may take longer than the watcher's 1 s: it polls again, as
	// the watcher does, and finds the check remembered.
	sub, content, err := w.Pull(30)
	if err != nil || sub == nil {
		t.Fatalf("get_submission = %v %q", err, content)
	}
	if sub.Body != body {
		t.Errorf("xqueue_body = %q, want %q", sub.Body, body)
	}
	var files map[string]string
	if err := json.Unmarshal([]byte(sub.Files), &files); err != nil {
		t.Fatalf("xqueue_files %q: %v", sub.Files, err)
	}
	resp, err := hc.Get(files["answer.py"]) // no session
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(data) != "print(42)\n" {
		t.Errorf("the file: HTTP %d %q", resp.StatusCode, data)
	}
	out = b.mustAdmin(t, "server", "list")
	if !regexpish(out, "xq.watcher.python-grader", "xq-python", "yes", "no", "2", "1", "2") || !strings.Contains(out, "xqueue") {
		t.Errorf("server list while the watcher grades:\n%s", out)
	}
	reply := map[string]any{"correct": true, "score": 1, "msg": "<p>Good</p>"}
	if ok, msg, err := w.PutResult(sub.Header, reply); !ok || err != nil {
		t.Fatalf("put_result = %v %q %v", ok, msg, err)
	}
	testutil.Eventually(t, "the LMS's callback", func() bool { return len(lms.got()) == 1 })
	got := lms.got()[0]
	wantBody, _ := json.Marshal(reply)
	if got["xqueue_header"] != header || got["xqueue_body"] != string(wantBody) || !strings.HasSuffix(callback, got["path"]) {
		t.Errorf("the LMS got %v", got)
	}
	out = b.mustAdmin(t, "job", "list")
	if !regexpish(out, "openedx", "python-grader", "done") {
		t.Errorf("job list:\n%s", out)
	}
	// The XQueue calls are counted by route; file links, one per pull,
	// are not routes.
	resp, err = http.Get("http://" + b.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`path="/xqueue/submit/"`, `path="/xqueue/get_submission/"`, `path="/xqueue/put_result/"`} {
		if !strings.Contains(string(metrics), `gradebroker_http_requests_total{code="200",`+want+`}`) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(string(metrics), "http_requests_total"))
		}
	}
	if strings.Contains(string(metrics), "/xqueue/files/") {
		t.Error("a file link is a metrics label")
	}
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// regexpish reports whether a line of out holds the words in order.
func regexpish(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := line, true
		for _, w := range words {
			i := strings.Index(rest, w)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(w):]
		}
		if ok {
			return true
		}
	}
	return false
}

// registerXQueue registers what an Open edX site needs through broker
// admin: the queue python-grader (tag and type xq-python), the platform
// openedx, its LMS user lms (callbacks to 127.0.0.1 over http allowed) and
// the pulling user watcher (2 jobs at once), both with password.
func (b *broker) registerXQueue(t *testing.T, password string) {
	t.Helper()
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	b.mustAdmin(t, "tag", "add", "xq-python")
	b.mustAdmin(t, "type", "add", "xq-python", "--tags", "xq-python")
	b.mustAdmin(t, "platform", "add", "openedx", "--protocol", "xqueue")
	b.mustAdmin(t, "xqueue", "queue", "add", "python-grader", "--tags", "xq-python", "--type", "xq-python", "--job-timeout", "1m")
	b.mustAdmin(t, "xqueue", "user", "add", "lms", "--password-file", pwFile, "--platform", "openedx", "--http-callback-host", "127.0.0.1")
	b.mustAdmin(t, "xqueue", "user", "add", "watcher", "--password-file", pwFile, "--pull", "python-grader", "--max-jobs", "2")
}
