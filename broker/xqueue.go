package broker

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ProtocolXQueue is Open edX's XQueue, for an LMS and xqueue-watcher
// (broker/xqueue): submissions come as XQueue's submit/ form, each naming
// the URL its result goes to (lms_callback_url); a result goes back as
// XQueue posts it, a form with xqueue_header and xqueue_body. A platform of
// this protocol needs neither key nor return URL.
const ProtocolXQueue Protocol = "xqueue"

// PullXQueue is Server.Pull of an XQueue user pulling one queue
// (xqueue-watcher's get_submission).
const PullXQueue = "xqueue"

// AnyQueue in XQueueUser.PullQueues lets the user pull from every queue.
const AnyQueue = "*"

// Attachment is a file that came with a job (a file part of XQueue's
// submit/), stored with it and deleted with it.
type Attachment struct {
	ID    int64
	JobID int64
	Name  string
	Size  int64
	Data  []byte // nil in listings
}

// XQueueQueue is an XQueue queue_name as an operator mapped it: the tags
// its submissions get, the server type its pulling clients get, and their
// timeout.
type XQueueQueue struct {
	ID   int64
	Name string
	Tags []string
	// Type is the server type of the queue's pulling clients; it covers
	// Tags.
	Type   string
	TypeID int64
	// Timeout is its jobs' timeout; 0 means the broker's default.
	Timeout   time.Duration
	CreatedAt time.Time
}

// XQueueUser is a client of the XQueue interface, which logs in with a
// password: an LMS that submits, an xqueue-watcher that pulls, or both.
type XQueueUser struct {
	ID           int64
	Name         string
	PasswordHash string
	// Platform is the platform its submissions belong to; a user without
	// one may not submit.
	Platform   string
	PlatformID int64
	// CallbackHosts are the hosts its submissions' lms_callback_url may
	// name over https://; HTTPCallbackHosts those it may name over http://
	// (and https://).
	CallbackHosts     []string
	HTTPCallbackHosts []string
	// CallbackAuthUser and CallbackAuthPassword, when set, are the HTTP
	// basic credentials of its results' callbacks (XQueue's
	// REQUESTS_BASIC_AUTH).
	CallbackAuthUser     string
	CallbackAuthPassword string
	// PullQueues are the queues it may pull from; AnyQueue allows all.
	PullQueues []string
	// MaxJobs is max_concurrent_jobs of the servers made for it, one per
	// queue it pulls from.
	MaxJobs   int
	CreatedAt time.Time
	UpdatedAt time.Time
}

// MayPull reports whether the user may pull submissions from queue.
func (u XQueueUser) MayPull(queue string) bool {
	return slices.Contains(u.PullQueues, AnyQueue) || slices.Contains(u.PullQueues, queue)
}

// CheckCallbackURL checks a submission's lms_callback_url against the
// user's allow-list: its host must be listed for the user, and an http://
// URL must name a host listed for http://. The broker posts results to
// this URL; without the list, anyone with an XQueue login could make the
// broker post anywhere. The error says what to ask the operator for.
func (u XQueueUser) CheckCallbackURL(raw string) error {
	cu, err := url.Parse(raw)
	if err != nil || cu.Host == "" || cu.Opaque != "" {
		return fmt.Errorf("%w: lms_callback_url is not an absolute http(s) URL", ErrInvalid)
	}
	if cu.User != nil {
		return fmt.Errorf("%w: lms_callback_url carries credentials; the user's callback credentials are the operator's to set", ErrInvalid)
	}
	host := strings.ToLower(cu.Hostname())
	switch cu.Scheme {
	case "https":
		if slices.Contains(u.CallbackHosts, host) || slices.Contains(u.HTTPCallbackHosts, host) {
			return nil
		}
		return fmt.Errorf("%w: lms_callback_url host %q is not one XQueue user %s may send results to; ask the operator to add it (broker admin xqueue user update %s --callback-host %s)",
			ErrPermissionDenied, host, u.Name, u.Name, host)
	case "http":
		if slices.Contains(u.HTTPCallbackHosts, host) {
			return nil
		}
		return fmt.Errorf("%w: lms_callback_url host %q is not one XQueue user %s may send results to over http://; ask the operator to allow it (broker admin xqueue user update %s --http-callback-host %s)",
			ErrPermissionDenied, host, u.Name, u.Name, host)
	}
	return fmt.Errorf("%w: lms_callback_url scheme %q is not http or https", ErrInvalid, cu.Scheme)
}

// hostPattern is a DNS name, as callback hosts are written.
var hostPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$`)

// CheckHost checks a callback host as an operator lists it: a lower-case
// DNS name or an IP address, without scheme, port or path.
func CheckHost(h string) error {
	if ip := net.ParseIP(h); ip != nil && !strings.Contains(h, "%") {
		return nil
	}
	if len(h) > 253 || !hostPattern.MatchString(h) {
		return fmt.Errorf("%w: callback host %q must be a lower-case host name or an IP address, without scheme, port or path", ErrInvalid, h)
	}
	return nil
}

// XQueueToJSON turns an XQueue body, which XQueue treats as opaque text,
// into the JSON that a job's data or result must be: the text itself when
// it is JSON other than a string (what an LMS and xqueue-watcher send,
// kept byte for byte), else a JSON string holding it. XQueueFromJSON
// undoes it.
func XQueueToJSON(body []byte) []byte {
	if json.Valid(body) && firstByte(body) != '"' {
		return body
	}
	b, _ := json.Marshal(string(body))
	return b
}

// XQueueFromJSON is the text XQueueToJSON was given: a JSON string's
// value, any other JSON as it is. A job's data that did not come through
// XQueue (another platform's job, pulled by an XQueue client) comes out as
// its JSON text.
func XQueueFromJSON(data []byte) []byte {
	if firstByte(data) == '"' {
		var s string
		if json.Unmarshal(data, &s) == nil {
			return []byte(s)
		}
	}
	return data
}

// firstByte is the first byte of b that is not JSON white space, or 0.
func firstByte(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c
	}
	return 0
}

// XQueueFailureBody is the xqueue_body XQueue posts to the LMS for a
// submission it gives up on (submission_queue/consumer.py,
// post_failure_to_lms, as json.dumps writes it), so that the student sees
// that grading failed.
const XQueueFailureBody = `{"correct": null, "score": 0, "msg": "<div class=\"capa_alert\">Your submission could not be graded. ` +
	`Please recheck your submission and try again. If the problem persists, please notify the course staff.</div>"}`
