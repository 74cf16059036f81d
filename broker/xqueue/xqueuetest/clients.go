// Package xqueuetest holds the two real clients of XQueue, written again in
// Go from their sources, so that tests and benchmarks speak the protocol as
// they do:
//
//   - LMS is edx-platform's XQueueInterface
//     (xmodule/capa/xqueue_interface.py): a requests.Session that follows
//     redirects, posts submit/ form-encoded without files and multipart
//     with them (each file part named by its file name), sends no CSRF
//     token and no Referer, and logs in again when a reply says
//     "login_required";
//   - Watcher is xqueue-watcher's XQueueClient
//     (xqueue_watcher/client.py, cb65c61): a session that does not follow
//     redirects, with a 1 s timeout on every request, that logs in by
//     clearing its cookies, GETting login/ and POSTing with Referer and
//     X-CSRFToken from the csrftoken cookie, keeps both headers for every
//     later request, and logs in again (once) on 301, 302, 401 or 403.
//
// The real xqueue-watcher itself runs against a whole broker in
// e2e/xqwatcher_test.go (a manual run: see there).
package xqueuetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"time"
)

// Reply is XQueue's answer: {"return_code", "content"}.
type Reply struct {
	ReturnCode int             `json:"return_code"`
	Content    json.RawMessage `json:"content"`
}

// Text is the reply's content as a string (most contents are).
func (r Reply) Text() string {
	var s string
	if json.Unmarshal(r.Content, &s) == nil {
		return s
	}
	return string(r.Content)
}

// LMS is the LMS's XQueue interface.
type LMS struct {
	URL      string
	User, PW string
	HTTP     *http.Client
	// Logins counts the times it logged in.
	Logins int
}

// NewLMS returns the LMS's interface to the XQueue at base (scheme and
// host), over tr.
func NewLMS(base string, tr http.RoundTripper, user, pw string) *LMS {
	jar, _ := cookiejar.New(nil)
	// requests' default: follow redirects (a POST answered 302 is
	// followed with a GET); timeout=(3.05, 10).
	return &LMS{URL: base, User: user, PW: pw, HTTP: &http.Client{Transport: tr, Jar: jar, Timeout: 13 * time.Second}}
}

// File is one of send_to_queue's files_to_upload.
type File struct {
	Name string
	Data []byte
}

// SendToQueue is XQueueInterface.send_to_queue: it returns (error, msg).
func (c *LMS) SendToQueue(header, body string, files []File) (int, string) {
	errCode, msg := c.submit(header, body, files)
	if errCode != 0 && msg == "login_required" {
		if errCode, msg = c.login(); errCode != 0 {
			return errCode, msg
		}
		errCode, msg = c.submit(header, body, files)
	}
	return errCode, msg
}

func (c *LMS) login() (int, string) {
	c.Logins++
	return c.post("/xqueue/login/", url.Values{"username": {c.User}, "password": {c.PW}}, nil)
}

func (c *LMS) submit(header, body string, files []File) (int, string) {
	return c.post("/xqueue/submit/", url.Values{"xqueue_header": {header}, "xqueue_body": {body}}, files)
}

// post is _http_post: requests.post(url, data=data, files=files).
func (c *LMS) post(path string, data url.Values, files []File) (int, string) {
	var body io.Reader
	var ctype string
	if len(files) == 0 {
		body, ctype = strings.NewReader(data.Encode()), "application/x-www-form-urlencoded"
	} else {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for k, vs := range data {
			for _, v := range vs {
				_ = mw.WriteField(k, v)
			}
		}
		for _, f := range files {
			w, _ := mw.CreateFormFile(f.Name, f.Name)
			_, _ = w.Write(f.Data)
		}
		_ = mw.Close()
		body, ctype = &buf, mw.FormDataContentType()
	}
	req, err := http.NewRequest(http.MethodPost, c.URL+path, body)
	if err != nil {
		return 1, err.Error()
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 1, "cannot connect to server"
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 1, fmt.Sprintf("unexpected HTTP status code [%d]", resp.StatusCode)
	}
	var r Reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return 1, "unexpected reply from server"
	}
	return r.ReturnCode, r.Text()
}

// Watcher is xqueue-watcher's XQueueClient for one queue.
type Watcher struct {
	URL      string
	Queue    string
	User, PW string
	Jar      *cookiejar.Jar
	HTTP     *http.Client
	// Headers are session.headers: what every request sends.
	Headers http.Header
	// Logins counts the times it logged in.
	Logins int
}

// NewWatcher returns an xqueue-watcher client of queue at the XQueue at
// base, over tr.
func NewWatcher(base string, tr http.RoundTripper, queue, user, pw string) *Watcher {
	c := &Watcher{URL: base, Queue: queue, User: user, PW: pw, Headers: http.Header{}}
	c.Jar, _ = cookiejar.New(nil)
	c.HTTP = &http.Client{Transport: tr, Jar: c.Jar, Timeout: time.Second, // REQUESTS_TIMEOUT
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }} // FOLLOW_CLIENT_REDIRECTS false
	return c
}

// ErrTimeout is requests.Timeout.
var ErrTimeout = errors.New("timeout")

// Do is session.request with the session's headers and extra ones.
func (c *Watcher) Do(method, path string, params, data url.Values, headers http.Header) (*http.Response, []byte, error) {
	u := c.URL + path
	if params != nil {
		u += "?" + params.Encode()
	}
	var body io.Reader
	if data != nil {
		body = strings.NewReader(data.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, nil, err
	}
	if data != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range c.Headers {
		req.Header[k] = v
	}
	for k, v := range headers {
		req.Header[k] = v
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ue.Timeout() {
			return nil, nil, ErrTimeout
		}
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp, raw, err
}

// csrf is session.cookies.get('csrftoken') or ...get('edx-csrftoken').
func (c *Watcher) csrf() string {
	u, _ := url.Parse(c.URL + "/xqueue/login/")
	for _, name := range []string{"csrftoken", "edx-csrftoken"} {
		for _, ck := range c.Jar.Cookies(u) {
			if ck.Name == name {
				return ck.Value
			}
		}
	}
	return ""
}

// Login is XQueueClient._login. Like it, it fails (false) on an answer
// other than a successful one, and raises (ErrTimeout, or another error)
// when a request does not complete: the watcher's process_one then polls
// again at once, and run() would end the thread.
func (c *Watcher) Login() (bool, error) {
	c.Logins++
	loginURL := c.URL + "/xqueue/login/"
	c.Jar, _ = cookiejar.New(nil) // self.session.cookies.clear()
	c.HTTP.Jar = c.Jar
	c.Headers.Del("X-CSRFToken")
	if _, _, err := c.Do(http.MethodGet, "/xqueue/login/", nil, nil, nil); err != nil {
		return false, err
	}
	h := http.Header{"Referer": {loginURL}}
	if tok := c.csrf(); tok != "" {
		h.Set("X-CSRFToken", tok)
	}
	resp, raw, err := c.Do(http.MethodPost, "/xqueue/login/", nil, url.Values{"username": {c.User}, "password": {c.PW}}, h)
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, nil
	}
	c.Headers.Set("Referer", c.URL)
	if tok := c.csrf(); tok != "" {
		c.Headers.Set("X-CSRFToken", tok)
	}
	var r Reply
	return json.Unmarshal(raw, &r) == nil && r.ReturnCode == 0, nil
}

// Request is XQueueClient._request: (success, content).
func (c *Watcher) Request(method, path string, params, data url.Values) (bool, string, error) {
	reauthenticated := false
	for {
		resp, raw, err := c.Do(method, path, params, data, nil)
		if err != nil {
			return false, "", err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			var r Reply
			if err := json.Unmarshal(raw, &r); err != nil {
				return false, "Could not parse xreply.", nil
			}
			return r.ReturnCode == 0, r.Text(), nil
		case http.StatusMovedPermanently, http.StatusFound, http.StatusUnauthorized, http.StatusForbidden:
			if reauthenticated {
				return false, fmt.Sprintf("Received %d after re-authentication", resp.StatusCode), nil
			}
			reauthenticated = true
			ok, err := c.Login()
			if err != nil {
				return false, "", err
			}
			if !ok {
				return false, "Could not log in", nil
			}
		default:
			return false, fmt.Sprintf("Received unexpected response status code, %d", resp.StatusCode), nil
		}
	}
}

// Submission is a submission as a handler gets it: get_submission's
// content, json.loads'd.
type Submission struct {
	Header string `json:"xqueue_header"`
	Body   string `json:"xqueue_body"`
	Files  string `json:"xqueue_files"`
}

// GetSubmission is the first half of process_one: a submission, or nil and
// the reply's content when there is none. An error is a request that did
// not complete (ErrTimeout: process_one polls again), or a content that is
// not a JSON string of a submission.
func (c *Watcher) GetSubmission() (*Submission, string, error) {
	ok, content, err := c.Request(http.MethodGet, "/xqueue/get_submission/", url.Values{"queue_name": {c.Queue}}, nil)
	if err != nil || !ok {
		return nil, content, err
	}
	var p Submission
	if err := json.Unmarshal([]byte(content), &p); err != nil {
		return nil, content, fmt.Errorf("get_submission's content is not a JSON string of the submission: %w", err)
	}
	return &p, content, nil
}

// PutResult is _handle_submission's post: the header verbatim, the
// handler's result json.dumps'd.
func (c *Watcher) PutResult(header string, result any) (bool, string, error) {
	body, err := json.Marshal(result)
	if err != nil {
		return false, "", err
	}
	return c.Request(http.MethodPost, "/xqueue/put_result/", nil, url.Values{"xqueue_header": {header}, "xqueue_body": {string(body)}})
}

// Pull is process_one's loop around GetSubmission for a caller that wants
// one submission: a request that timed out is made again at once, as the
// watcher does, up to tries times; no submission is (nil, content, nil).
func (c *Watcher) Pull(tries int) (*Submission, string, error) {
	for i := 1; ; i++ {
		sub, content, err := c.GetSubmission()
		if !errors.Is(err, ErrTimeout) || i >= tries {
			return sub, content, err
		}
	}
}
