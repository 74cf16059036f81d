package xqueue

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
	"testing"
	"time"
)

// This file holds the two real clients of XQueue, written again in Go from
// their sources, so that the tests speak the protocol as they do:
//
//   - lmsClient is edx-platform's XQueueInterface
//     (xmodule/capa/xqueue_interface.py): a requests.Session that follows
//     redirects, posts submit/ form-encoded without files and multipart
//     with them (each file part named by its file name), sends no CSRF
//     token and no Referer, and logs in again when a reply says
//     "login_required";
//   - watcherClient is xqueue-watcher's XQueueClient
//     (xqueue_watcher/client.py, cb65c61): a session that does not follow
//     redirects, with a 1 s timeout on every request, that logs in by
//     clearing its cookies, GETting login/ and POSTing with Referer and
//     X-CSRFToken from the csrftoken cookie, keeps both headers for every
//     later request, and logs in again (once) on 301, 302, 401 or 403.
//
// The real xqueue-watcher itself runs against a whole broker in
// e2e/xqwatcher_test.go (a manual run: see there).

// xreply is XQueue's answer.
type xreply struct {
	ReturnCode int             `json:"return_code"`
	Content    json.RawMessage `json:"content"`
}

// text is the reply's content as a string (most contents are).
func (r xreply) text() string {
	var s string
	if json.Unmarshal(r.Content, &s) == nil {
		return s
	}
	return string(r.Content)
}

// lmsClient is the LMS's XQueue interface.
type lmsClient struct {
	t        testing.TB
	url      string
	user, pw string
	http     *http.Client
	// logins counts the times it logged in.
	logins int
}

func newLMSClient(t testing.TB, base string, tr http.RoundTripper, user, pw string) *lmsClient {
	jar, _ := cookiejar.New(nil)
	// requests' default: follow redirects (a POST answered 302 is
	// followed with a GET); timeout=(3.05, 10).
	return &lmsClient{t: t, url: base, user: user, pw: pw,
		http: &http.Client{Transport: tr, Jar: jar, Timeout: 13 * time.Second}}
}

// file is one of files_to_upload.
type upload struct {
	name string
	data []byte
}

// sendToQueue is XQueueInterface.send_to_queue: it returns (error, msg).
func (c *lmsClient) sendToQueue(header, body string, files []upload) (int, string) {
	errCode, msg := c.submit(header, body, files)
	if errCode != 0 && msg == "login_required" {
		if errCode, msg = c.login(); errCode != 0 {
			return errCode, msg
		}
		errCode, msg = c.submit(header, body, files)
	}
	return errCode, msg
}

func (c *lmsClient) login() (int, string) {
	c.logins++
	return c.post("/xqueue/login/", url.Values{"username": {c.user}, "password": {c.pw}}, nil)
}

func (c *lmsClient) submit(header, body string, files []upload) (int, string) {
	return c.post("/xqueue/submit/", url.Values{"xqueue_header": {header}, "xqueue_body": {body}}, files)
}

// post is _http_post: requests.post(url, data=data, files=files).
func (c *lmsClient) post(path string, data url.Values, files []upload) (int, string) {
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
			w, _ := mw.CreateFormFile(f.name, f.name)
			_, _ = w.Write(f.data)
		}
		_ = mw.Close()
		body, ctype = &buf, mw.FormDataContentType()
	}
	req, err := http.NewRequest(http.MethodPost, c.url+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := c.http.Do(req)
	if err != nil {
		return 1, "cannot connect to server"
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 1, fmt.Sprintf("unexpected HTTP status code [%d]", resp.StatusCode)
	}
	var r xreply
	if err := json.Unmarshal(raw, &r); err != nil {
		return 1, "unexpected reply from server"
	}
	return r.ReturnCode, r.text()
}

// watcherClient is xqueue-watcher's XQueueClient for one queue.
type watcherClient struct {
	t        testing.TB
	url      string
	queue    string
	user, pw string
	jar      *cookiejar.Jar
	http     *http.Client
	headers  http.Header // session.headers
	// logins counts the times it logged in.
	logins int
}

func newWatcher(t testing.TB, base string, tr http.RoundTripper, queue, user, pw string) *watcherClient {
	c := &watcherClient{t: t, url: base, queue: queue, user: user, pw: pw, headers: http.Header{}}
	c.jar, _ = cookiejar.New(nil)
	c.http = &http.Client{Transport: tr, Jar: c.jar, Timeout: time.Second, // REQUESTS_TIMEOUT
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }} // FOLLOW_CLIENT_REDIRECTS false
	return c
}

// errTimeout is requests.Timeout.
var errTimeout = errors.New("timeout")

// do is session.request with the session's headers.
func (c *watcherClient) do(method, path string, params, data url.Values, headers http.Header) (*http.Response, []byte, error) {
	u := c.url + path
	if params != nil {
		u += "?" + params.Encode()
	}
	var body io.Reader
	if data != nil {
		body = strings.NewReader(data.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if data != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range c.headers {
		req.Header[k] = v
	}
	for k, v := range headers {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ue.Timeout() {
			return nil, nil, errTimeout
		}
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp, raw, err
}

// csrf is session.cookies.get('csrftoken') or ...get('edx-csrftoken').
func (c *watcherClient) csrf() string {
	u, _ := url.Parse(c.url + "/xqueue/login/")
	for _, name := range []string{"csrftoken", "edx-csrftoken"} {
		for _, ck := range c.jar.Cookies(u) {
			if ck.Name == name {
				return ck.Value
			}
		}
	}
	return ""
}

// login is XQueueClient._login.
func (c *watcherClient) login() bool {
	c.logins++
	loginURL := c.url + "/xqueue/login/"
	c.jar, _ = cookiejar.New(nil) // self.session.cookies.clear()
	c.http.Jar = c.jar
	c.headers.Del("X-CSRFToken")
	if _, _, err := c.do(http.MethodGet, "/xqueue/login/", nil, nil, nil); err != nil {
		return false
	}
	h := http.Header{"Referer": {loginURL}}
	if tok := c.csrf(); tok != "" {
		h.Set("X-CSRFToken", tok)
	}
	resp, raw, err := c.do(http.MethodPost, "/xqueue/login/", nil, url.Values{"username": {c.user}, "password": {c.pw}}, h)
	if err != nil || resp.StatusCode != http.StatusOK {
		return false
	}
	c.headers.Set("Referer", c.url)
	if tok := c.csrf(); tok != "" {
		c.headers.Set("X-CSRFToken", tok)
	}
	var r xreply
	return json.Unmarshal(raw, &r) == nil && r.ReturnCode == 0
}

// request is XQueueClient._request: (success, content).
func (c *watcherClient) request(method, path string, params, data url.Values) (bool, string, error) {
	reauthenticated := false
	for {
		resp, raw, err := c.do(method, path, params, data, nil)
		if err != nil {
			return false, "", err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			var r xreply
			if err := json.Unmarshal(raw, &r); err != nil {
				return false, "Could not parse xreply.", nil
			}
			return r.ReturnCode == 0, r.text(), nil
		case http.StatusMovedPermanently, http.StatusFound, http.StatusUnauthorized, http.StatusForbidden:
			if reauthenticated {
				return false, fmt.Sprintf("Received %d after re-authentication", resp.StatusCode), nil
			}
			reauthenticated = true
			if !c.login() {
				return false, "Could not log in", nil
			}
		default:
			return false, fmt.Sprintf("Received unexpected response status code, %d", resp.StatusCode), nil
		}
	}
}

// pulled is a submission as a handler gets it: get_submission's content,
// json.loads'd.
type pulled struct {
	Header string `json:"xqueue_header"`
	Body   string `json:"xqueue_body"`
	Files  string `json:"xqueue_files"`
}

// getSubmission is the first half of process_one.
func (c *watcherClient) getSubmission() (*pulled, string, error) {
	ok, content, err := c.request(http.MethodGet, "/xqueue/get_submission/", url.Values{"queue_name": {c.queue}}, nil)
	if err != nil || !ok {
		return nil, content, err
	}
	var p pulled
	if err := json.Unmarshal([]byte(content), &p); err != nil {
		c.t.Fatalf("get_submission's content is not a JSON string of the submission: %v\n%s", err, content)
	}
	return &p, content, nil
}

// putResult is _handle_submission's post: the header verbatim, the
// handler's result json.dumps'd.
func (c *watcherClient) putResult(header string, result any) (bool, string, error) {
	body, err := json.Marshal(result)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.request(http.MethodPost, "/xqueue/put_result/", nil, url.Values{"xqueue_header": {header}, "xqueue_body": {string(body)}})
}
