package xqueue

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/xqueue/xqueuetest"
)

// raw sends one request as it is and returns the response and its body.
func (e *env) raw(c *http.Client, method, path, ctype, body string, h http.Header) (*http.Response, xqueuetest.Reply) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r xqueuetest.Reply
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &r); err != nil {
			e.t.Errorf("%s %s: HTTP 200 with %q, not XQueue's reply", method, path, b)
		}
	}
	return resp, r
}

// noRedirects is a client that shows redirects instead of following them.
func (e *env) noRedirects() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Transport: e.srv.Client().Transport, Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// Django's login flow: a call without a session is a 302 to the login
// page, which says login_required; a login sets a session cookie and a
// CSRF cookie of the broker's own names, host-only and Secure.
func TestLoginFlow(t *testing.T) {
	t.Parallel()
	e := setup(t)
	c := e.noRedirects()
	for _, path := range []string{"/xqueue/submit/", "/xqueue/get_submission/?queue_name=x", "/xqueue/get_queuelen/", "/xqueue/put_result/"} {
		resp, _ := e.raw(c, http.MethodPost, path, "", "", nil)
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), "/xqueue/login/?next=") {
			t.Errorf("%s without a session: HTTP %d to %q, want 302 to /xqueue/login/", path, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	resp, r := e.raw(c, http.MethodGet, "/xqueue/login/?next=%2Fxqueue%2Fsubmit%2F", "", "", nil)
	if resp.StatusCode != http.StatusOK || r.ReturnCode != 1 || r.Text() != "login_required" {
		t.Errorf("GET login/ = %d %+v", resp.StatusCode, r)
	}
	csrf := cookieOf(resp, csrfCookie)
	if csrf == nil || csrf.Value == "" || csrf.Domain != "" || !csrf.Secure || csrf.HttpOnly {
		t.Errorf("csrftoken cookie = %+v, want a host-only Secure cookie a client can read", csrf)
	}
	for _, tc := range []struct {
		form url.Values
		want string
	}{
		{url.Values{"username": {lmsUser}, "password": {"wrong"}}, "Incorrect login credentials"},
		{url.Values{"username": {"nobody"}, "password": {lmsPass}}, "Incorrect login credentials"},
		{url.Values{"username": {lmsUser}}, "Insufficient login info"},
	} {
		_, r := e.raw(c, http.MethodPost, "/xqueue/login/", "application/x-www-form-urlencoded", tc.form.Encode(), nil)
		if r.ReturnCode != 1 || r.Text() != tc.want {
			t.Errorf("login %v = %+v, want %q", tc.form, r, tc.want)
		}
	}
	if strings.Contains(e.logs.String(), "wrong") || strings.Contains(e.logs.String(), lmsPass) {
		t.Error("a password is in the log")
	}
	resp, r = e.raw(c, http.MethodPost, "/xqueue/login/", "application/x-www-form-urlencoded",
		url.Values{"username": {lmsUser}, "password": {lmsPass}}.Encode(), nil)
	if r.ReturnCode != 0 || r.Text() != "Logged in" {
		t.Fatalf("login = %+v", r)
	}
	sess := cookieOf(resp, sessionCookie)
	if sess == nil || sess.Domain != "" || !sess.Secure || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode ||
		strings.HasPrefix(sess.Name, "__Host-") || sess.Path != "/xqueue/" {
		t.Errorf("session cookie = %+v", sess)
	}
	// Logged in: the same calls are answered.
	resp, r = e.raw(c, http.MethodGet, "/xqueue/get_queuelen/?queue_name="+queueName, "", "", nil)
	if resp.StatusCode != http.StatusOK || r.ReturnCode != 0 || string(r.Content) != "0" {
		t.Errorf("get_queuelen = %d %s, want 0 and the number 0", resp.StatusCode, r.Content)
	}
	_, r = e.raw(c, http.MethodGet, "/xqueue/get_queuelen/?queue_name=nope", "", "", nil)
	if r.ReturnCode != 1 || r.Text() != "Valid queue names are: "+queueName {
		t.Errorf("get_queuelen of an unknown queue = %+v", r)
	}
	_, r = e.raw(c, http.MethodGet, "/xqueue/get_queuelen/", "", "", nil)
	if r.Text() != "'get_queuelen' must provide parameter 'queue_name'" {
		t.Errorf("get_queuelen without a queue = %+v", r)
	}
	_, r = e.raw(c, http.MethodGet, "/xqueue/submit/", "", "", nil)
	if r.ReturnCode != 1 || r.Text() != "Queue requests should use HTTP POST" {
		t.Errorf("GET submit/ = %+v", r)
	}
	_, r = e.raw(c, http.MethodGet, "/xqueue/put_result/", "", "", nil)
	if r.ReturnCode != 1 || r.Text() != "'put_result' must use HTTP POST" {
		t.Errorf("GET put_result/ = %+v", r)
	}
	// The path without its slash is a 301 to it, as Django's APPEND_SLASH.
	resp, _ = e.raw(c, http.MethodGet, "/xqueue/get_queuelen?queue_name=x", "", "", nil)
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/xqueue/get_queuelen/?queue_name=x" {
		t.Errorf("without the slash: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, r = e.raw(e.srv.Client(), http.MethodGet, "/xqueue/status/", "", "", nil)
	if r.ReturnCode != 0 || r.Text() != "OK" {
		t.Errorf("status/ = %+v", r)
	}
	_, r = e.raw(c, http.MethodPost, "/xqueue/logout/", "", "", nil)
	if r.Text() != "Goodbye" {
		t.Errorf("logout = %+v", r)
	}
	if resp, _ := e.raw(c, http.MethodGet, "/xqueue/get_queuelen/?queue_name="+queueName, "", "", nil); resp.StatusCode != http.StatusFound {
		t.Errorf("after logout: HTTP %d, want 302", resp.StatusCode)
	}
}

func cookieOf(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// xqueue-watcher's CSRF header must match its csrftoken cookie; the LMS
// sends none and needs none.
func TestCSRF(t *testing.T) {
	t.Parallel()
	e := setup(t)
	w := e.watcher()
	if ok, err := w.Login(); !ok || err != nil {
		t.Fatalf("the watcher could not log in: %v", err)
	}
	if w.Headers.Get("X-CSRFToken") == "" || w.Headers.Get("Referer") != e.srv.URL {
		t.Errorf("after login the watcher sends %v, want X-CSRFToken and Referer", w.Headers)
	}
	if ok, _, err := w.Request(http.MethodGet, "/xqueue/get_queuelen/", url.Values{"queue_name": {queueName}}, nil); !ok || err != nil {
		t.Errorf("get_queuelen with the CSRF header: %v %v", ok, err)
	}
	w.Headers.Set("X-CSRFToken", "forged")
	resp, _, err := w.Do(http.MethodPost, "/xqueue/put_result/", nil, url.Values{"xqueue_header": {"{}"}, "xqueue_body": {"{}"}}, nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a forged X-CSRFToken: %v %v, want HTTP 403", resp, err)
	}
	// On a 403 the watcher logs in again, which mends it.
	logins := w.Logins
	if _, _, err := w.Request(http.MethodGet, "/xqueue/get_queuelen/", url.Values{"queue_name": {queueName}}, nil); err != nil || w.Logins != logins+1 {
		t.Errorf("after the 403 the watcher logged in %d more times, %v", w.Logins-logins, err)
	}
}

// The LMS's session ends (a broker restart forgets sessions; a new
// password ends them): its submission is answered with a 302 it follows to
// login_required, and it logs in and submits again, losing nothing.
func TestLMSLogsInAgain(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := e.lmsClient()
	h1, _ := e.header(1, "k1")
	if code, msg := lms.SendToQueue(h1, studentBody, nil); code != 0 {
		t.Fatal(msg)
	}
	// The session expires.
	e.clk.Add(25 * time.Hour)
	h2, _ := e.header(2, "k2")
	if code, msg := lms.SendToQueue(h2, studentBody, nil); code != 0 || msg != "2" {
		t.Fatalf("submission after the session expired = %d %q", code, msg)
	}
	if lms.Logins != 2 {
		t.Errorf("the LMS logged in %d times, want twice", lms.Logins)
	}
	// A new password ends the session; the old one no longer logs in.
	newHash := hash(t, "a new password")
	if _, _, err := e.db.UpdateXQueueUser(context.Background(), lmsUser, store.XQueueUserUpdate{PasswordHash: &newHash}); err != nil {
		t.Fatal(err)
	}
	h3, _ := e.header(3, "k3")
	if code, msg := lms.SendToQueue(h3, studentBody, nil); code != 1 || msg != "Incorrect login credentials" {
		t.Errorf("submission with the old password = %d %q", code, msg)
	}
	lms.PW = "a new password"
	if code, msg := lms.SendToQueue(h3, studentBody, nil); code != 0 {
		t.Errorf("submission with the new password = %d %q", code, msg)
	}
}

// What a submission must have, and what the broker refuses, in XQueue's
// words or in its own saying what to ask for.
func TestSubmitRefusals(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := e.lmsClient()
	good, _ := e.header(1, "k")
	for _, tc := range []struct {
		name         string
		header, body string
		want         string
	}{
		{"not JSON", "lms_key=1", studentBody, "Queue request has invalid format"},
		{"no lms_key", `{"lms_callback_url": "` + e.lms.URL + `/cb", "queue_name": "` + queueName + `"}`, studentBody, "Queue request has invalid format"},
		{"unknown queue", strings.Replace(good, queueName, "nope", 1), studentBody, "Queue 'nope' not found"},
		{"callback elsewhere", `{"lms_callback_url": "https://evil.example/cb", "lms_key": "k", "queue_name": "` + queueName + `"}`, studentBody,
			`"evil.example" is not one XQueue user lms may send results to`},
	} {
		if code, msg := lms.SendToQueue(tc.header, tc.body, nil); code != 1 || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: send_to_queue = %d %q, want %q", tc.name, code, msg, tc.want)
		}
	}
	// A form without xqueue_body.
	_, r := e.raw(lms.HTTP, http.MethodPost, "/xqueue/submit/", "application/x-www-form-urlencoded", url.Values{"xqueue_header": {good}}.Encode(), nil)
	if r.Text() != "Queue request has invalid format" {
		t.Errorf("submit without xqueue_body = %+v", r)
	}
	if n := e.d.QueueLength(queueName); n != 0 {
		t.Errorf("%d submissions stored from refused requests", n)
	}
	// The watcher has no platform: it may not submit; the LMS may not pull.
	w := xqueuetest.NewLMS(e.srv.URL, e.srv.Client().Transport, watcherUser, watcherPass)
	if code, msg := w.SendToQueue(good, studentBody, nil); code != 1 || !strings.Contains(msg, "may not submit") {
		t.Errorf("a user without a platform submits: %d %q", code, msg)
	}
	lmsPull := xqueuetest.NewWatcher(e.srv.URL, e.srv.Client().Transport, queueName, lmsUser, lmsPass)
	if sub, msg, _ := lmsPull.GetSubmission(); sub != nil || !strings.Contains(msg, "may not pull from queue") {
		t.Errorf("a user without the queue pulls: %v %q", sub, msg)
	}
}

// A pulling client is a server of the dispatcher, made on its first pull,
// connected while it pulls, with the user's max jobs; its session closes
// when idle and holding nothing.
func TestPullingClientIsAServer(t *testing.T) {
	t.Parallel()
	e := setup(t)
	lms := e.lmsClient()
	for i := range 3 {
		h, _ := e.header(10+i, "k")
		if code, msg := lms.SendToQueue(h, studentBody, nil); code != 0 {
			t.Fatal(msg)
		}
	}
	w := e.watcher()
	a, _, _ := w.GetSubmission()
	b, _, _ := w.GetSubmission()
	if a == nil || b == nil {
		t.Fatal("two pulls with max jobs 2 did not both get a submission")
	}
	if c, msg, _ := w.GetSubmission(); c != nil || !strings.Contains(msg, "2 of its 2 slots in use") {
		t.Errorf("a third pull = %v %q", c, msg)
	}
	srv, err := e.db.ServerByName(context.Background(), "xq.watcher.python-grader")
	if err != nil || srv.Pull != broker.PullXQueue || srv.MaxConcurrentJobs != 2 || srv.Type != "pytype" {
		t.Fatalf("the puller's server = %+v, %v", srv, err)
	}
	if connected, slots, running, _ := e.d.ServerStatus(srv.Name); !connected || slots != 2 || running != 2 {
		t.Errorf("ServerStatus = %v %d %d", connected, slots, running)
	}
	for _, s := range []*xqueuetest.Submission{a, b} {
		if ok, _, _ := w.PutResult(s.Header, graderReply); !ok {
			t.Fatal("put_result refused")
		}
	}
	e.clk.Add(2 * time.Minute)
	e.svc.closeIdle(e.clk.Now())
	if connected, _, _, _ := e.d.ServerStatus(srv.Name); connected {
		t.Error("an idle pulling session stayed open")
	}
	if c, _, _ := w.GetSubmission(); c == nil {
		t.Error("no pull after the idle session closed")
	}
	if connected, _, _, _ := e.d.ServerStatus(srv.Name); !connected {
		t.Error("pulling again did not open the session")
	}
}
