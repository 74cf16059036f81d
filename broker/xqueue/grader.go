package xqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// This file is the graders' side: get_queuelen/, get_submission/ and
// put_result/, as xqueue-watcher calls them. An XQueue user pulling a queue
// is a server of the dispatcher ("xq.USER.QUEUE", made on its first pull,
// of the queue's server type, with the user's max jobs), and its pulls are
// leases of that server's pulling session. xqueue-watcher's requests time
// out after 1 s: get_submission answers at once (a lease is one group
// commit away), and put_result answers once the result is committed; the
// LMS hears of it from the delivery outbox afterwards.

// puller is the open session of one pulling client's server.
type puller struct {
	name     string
	userID   int64
	queue    string
	sess     *dispatch.Session
	lastUsed time.Time
	inflight int // requests using it now
}

// pullSession returns the session of user u pulling queue q, making its
// server on the first pull and opening its session when it has none. The
// caller must call done when its request is over.
func (s *Service) pullSession(ctx context.Context, u broker.XQueueUser, q broker.XQueueQueue) (p *puller, done func(), err error) {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	for _, p := range s.pulls {
		if p.userID == u.ID && p.queue == q.Name {
			return s.usePuller(p)
		}
	}
	srv, made, err := s.db.Puller(ctx, u, q)
	if err != nil {
		return nil, nil, err
	}
	if made {
		s.d.ServerChanged(ctx, srv.Name)
		s.log.Info("server made for a pulling client", "server", srv.Name, "user", u.Name, "queue", q.Name, "type", srv.Type)
	}
	return s.openPuller(ctx, srv.Name, u.ID, q.Name)
}

// pullSessionOf returns the session of the pulling server called name,
// which must be user u's.
func (s *Service) pullSessionOf(ctx context.Context, name string, u broker.XQueueUser) (*puller, func(), error) {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	if p := s.pulls[name]; p != nil {
		if p.userID != u.ID {
			return nil, nil, errBadKey
		}
		return s.usePuller(p)
	}
	userID, queue, err := s.db.PullerOf(ctx, name)
	if errors.Is(err, broker.ErrNotFound) || err == nil && userID != u.ID {
		return nil, nil, errBadKey
	}
	if err != nil {
		return nil, nil, err
	}
	return s.openPuller(ctx, name, userID, queue)
}

// usePuller counts a request on p, reopening its session if the dispatcher
// ended it (a restart of its server's registration, say). s.pullMu is
// held.
func (s *Service) usePuller(p *puller) (*puller, func(), error) {
	select {
	case <-p.sess.Done():
		delete(s.pulls, p.name)
		return s.openPuller(context.Background(), p.name, p.userID, p.queue)
	default:
	}
	p.inflight++
	p.lastUsed = s.cfg.Now()
	return p, s.release(p), nil
}

// openPuller opens the pulling session of server name. s.pullMu is held.
func (s *Service) openPuller(ctx context.Context, name string, userID int64, queue string) (*puller, func(), error) {
	sess, _, err := s.d.OpenPull(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	p := &puller{name: name, userID: userID, queue: queue, sess: sess, lastUsed: s.cfg.Now(), inflight: 1}
	s.pulls[name] = p
	return p, s.release(p), nil
}

func (s *Service) release(p *puller) func() {
	return func() {
		s.pullMu.Lock()
		p.inflight--
		p.lastUsed = s.cfg.Now()
		s.pullMu.Unlock()
	}
}

// closeIdle closes the sessions that no request used for PullIdle and
// that hold no lease: their servers show as disconnected until the next
// pull.
func (s *Service) closeIdle(now time.Time) {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	for name, p := range s.pulls {
		if p.inflight > 0 || now.Sub(p.lastUsed) < s.cfg.PullIdle {
			continue
		}
		if _, _, running, _ := s.d.ServerStatus(name); running > 0 {
			continue
		}
		p.sess.Close(fmt.Errorf("no pull for %s", s.cfg.PullIdle))
		delete(s.pulls, name)
	}
}

// queueOf reads the queue_name parameter of a grader's call and the queue
// it names; on failure it has answered.
func (s *Service) queueOf(w http.ResponseWriter, r *http.Request, call string) (broker.XQueueQueue, *registry, bool) {
	name, ok := r.URL.Query()["queue_name"]
	if !ok {
		reply(w, false, fmt.Sprintf("'%s' must provide parameter 'queue_name'", call))
		return broker.XQueueQueue{}, nil, false
	}
	reg, err := s.registry(r.Context())
	if err != nil {
		s.internal(w, r, call, err)
		return broker.XQueueQueue{}, nil, false
	}
	q, ok := reg.queues[name[len(name)-1]]
	if !ok {
		if call == "get_queuelen" {
			names := make([]string, 0, len(reg.queues))
			for n := range reg.queues {
				names = append(names, n)
			}
			slices.Sort(names)
			reply(w, false, "Valid queue names are: "+strings.Join(names, ", "))
		} else {
			reply(w, false, fmt.Sprintf("Queue '%s' not found", name[len(name)-1]))
		}
		return broker.XQueueQueue{}, nil, false
	}
	return q, reg, true
}

// getQueuelen answers get_queuelen/: how many of the queue's submissions
// wait for a grader.
func (s *Service) getQueuelen(w http.ResponseWriter, r *http.Request, _ broker.XQueueUser) {
	q, _, ok := s.queueOf(w, r, "get_queuelen")
	if !ok {
		return
	}
	reply(w, true, s.d.QueueLength(q.Name))
}

// submission is the content of get_submission/, as XQueue builds it: the
// header and the files are JSON strings within it, and the whole is
// another JSON string in the reply.
type submission struct {
	Header string `json:"xqueue_header"`
	Body   string `json:"xqueue_body"`
	Files  string `json:"xqueue_files"`
}

// pullHeader is the xqueue_header a grader gets, and posts back verbatim.
type pullHeader struct {
	SubmissionID  int64  `json:"submission_id"`
	SubmissionKey string `json:"submission_key"`
}

// getSubmission answers get_submission/: a lease of the queue's best
// waiting submission the user may take, whose key is the lease.
func (s *Service) getSubmission(w http.ResponseWriter, r *http.Request, u broker.XQueueUser) {
	q, _, ok := s.queueOf(w, r, "get_submission")
	if !ok {
		return
	}
	if !u.MayPull(q.Name) {
		reply(w, false, fmt.Sprintf("XQueue user %s may not pull from queue '%s'; ask the operator (broker admin xqueue user update %s --pull %s)",
			u.Name, q.Name, u.Name, q.Name))
		return
	}
	ctx := r.Context()
	p, done, err := s.pullSession(ctx, u, q)
	if err != nil {
		s.internal(w, r, "get_submission", err)
		return
	}
	defer done()
	a, err := p.sess.Pull(ctx, q.Name)
	if err != nil {
		if ctx.Err() == nil {
			s.internal(w, r, "get_submission", err)
		}
		return
	}
	if a == nil {
		if n := s.d.QueueLength(q.Name); n > 0 {
			_, slots, running, _ := s.d.ServerStatus(p.name)
			reply(w, false, fmt.Sprintf("Queue '%s' has %d submission(s), none for %s now (%d of its %d slots in use)", q.Name, n, u.Name, running, slots))
			return
		}
		reply(w, false, fmt.Sprintf("Queue '%s' is empty", q.Name))
		return
	}
	content, err := s.submissionContent(r, a)
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		// The client will never see this lease: give it back unused.
		p.sess.Return(a.Lease, "its answer could not be sent: "+err.Error())
		if ctx.Err() == nil {
			s.internal(w, r, "get_submission", err)
		}
		return
	}
	reply(w, true, content)
}

// submissionContent is get_submission's content for lease a.
func (s *Service) submissionContent(r *http.Request, a *dispatch.Assign) (string, error) {
	header, err := json.Marshal(pullHeader{SubmissionID: a.Lease.JobID, SubmissionKey: s.macs.submissionKey(a.Lease)})
	if err != nil {
		return "", err
	}
	atts, err := s.db.Attachments(r.Context(), a.Lease.JobID)
	if err != nil {
		return "", fmt.Errorf("reading the submission's files: %w", err)
	}
	files := make(map[string]string, len(atts))
	for _, at := range atts {
		tok := s.macs.fileToken(fileLink{Attachment: at.ID, Lease: a.Lease.LeaseID, Expires: a.Deadline})
		// The name is for people and tools that name files by their URL;
		// the token alone says which file it is.
		link := url.URL{Scheme: "https", Host: r.Host, Path: "/xqueue/files/" + tok + "/" + at.Name,
			RawPath: "/xqueue/files/" + tok + "/" + url.PathEscape(at.Name)}
		files[at.Name] = link.String()
	}
	filesJSON, err := json.Marshal(files)
	if err != nil {
		return "", err
	}
	content, err := json.Marshal(submission{Header: string(header), Body: string(broker.XQueueFromJSON(a.JobData)), Files: string(filesJSON)})
	return string(content), err
}

// putResult answers put_result/: the grader's reply to a pull, whose key
// must be the lease still current (or expired without anyone pulling the
// submission since: dispatch takes a late result then). The reply is the
// job's result, committed before the answer; the LMS gets it from the
// delivery outbox.
func (s *Service) putResult(w http.ResponseWriter, r *http.Request, u broker.XQueueUser) {
	if r.Method != http.MethodPost {
		reply(w, false, "'put_result' must use HTTP POST")
		return
	}
	lim := Limits{Field: s.cfg.MaxField, Files: 0, Parts: 8}
	r.Body = http.MaxBytesReader(w, r.Body, 2*lim.Field+int64(lim.Parts)*4096)
	f, err := parseForm(r.Header.Get("Content-Type"), r.Body, lim)
	if err != nil {
		reply(w, false, "Incorrect reply format")
		return
	}
	header, hasHeader := f.fields["xqueue_header"]
	body, hasBody := f.fields["xqueue_body"]
	if !hasHeader || !hasBody {
		reply(w, false, "Incorrect reply format")
		return
	}
	h, err := parseGraderHeader(header)
	if err != nil {
		reply(w, false, "Incorrect reply format")
		return
	}
	ctx := r.Context()
	ref, err := s.macs.leaseOf(h.SubmissionID, h.Key)
	if err != nil {
		s.refuseKey(w, r, u, h)
		return
	}
	holder, _, ok := s.d.LeaseHolder(ref)
	if !ok {
		s.refuseKey(w, r, u, h)
		return
	}
	p, done, err := s.pullSessionOf(ctx, holder, u)
	if errors.Is(err, errBadKey) {
		s.refuseKey(w, r, u, h)
		return
	}
	if err != nil {
		s.internal(w, r, "put_result", err)
		return
	}
	defer done()
	err = p.sess.Report(ctx, dispatch.Result{Lease: ref, Outcome: broker.OutcomeOK, Result: broker.XQueueToJSON([]byte(body))})
	switch {
	case err == nil:
		reply(w, true, "")
	case errors.Is(err, broker.ErrFailedPrecondition):
		s.refuseKey(w, r, u, h)
	case ctx.Err() != nil:
		// The client stopped waiting (its 1 s timeout on a loaded
		// broker): the result is committed or refused all the same.
		s.log.Info("put_result: the client left before the answer", "user", u.Name, "job_id", h.SubmissionID)
	default:
		s.internal(w, r, "put_result", err)
	}
}

// refuseKey answers a put_result whose key is not the submission's
// current one, or whose submission does not exist, as XQueue does.
func (s *Service) refuseKey(w http.ResponseWriter, r *http.Request, u broker.XQueueUser, h graderHeader) {
	if _, _, err := s.db.JobState(r.Context(), h.SubmissionID); errors.Is(err, broker.ErrNotFound) {
		reply(w, false, "Submission does not exist")
		return
	}
	s.log.Info("put_result refused: not the submission's current key", "user", u.Name, "job_id", h.SubmissionID)
	reply(w, false, "Incorrect key for submission")
}
