package xqueue

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// submit answers submit/, the LMS's send_to_queue: the form's
// xqueue_header and xqueue_body, and its files if multipart, become one
// job of the queue's tags, for the user's platform; the files become the
// job's attachments, and the callback URL and header are stored beside it.
// An earlier unfinished submission to the same callback URL is retired,
// as XQueue does, and its result never posted. The content is the queue's
// length.
func (s *Service) submit(w http.ResponseWriter, r *http.Request, u broker.XQueueUser) {
	if r.Method != http.MethodPost {
		reply(w, false, "Queue requests should use HTTP POST")
		return
	}
	if u.PlatformID == 0 {
		reply(w, false, fmt.Sprintf("XQueue user %s may not submit: it has no platform; ask the operator (broker admin xqueue user update %s --platform PLATFORM)", u.Name, u.Name))
		return
	}
	lim := Limits{Field: s.cfg.MaxField, Files: s.cfg.MaxFiles, Parts: 2 + maxFiles}
	r.Body = http.MaxBytesReader(w, r.Body, lim.Files+2*lim.Field+int64(lim.Parts)*4096)
	f, err := parseForm(r.Header.Get("Content-Type"), r.Body, lim)
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, errTooLarge) || errors.As(err, &mbe):
		reply(w, false, "Submission too large: "+err.Error())
		return
	case err != nil:
		reply(w, false, "Queue request has invalid format")
		return
	}
	header, hasHeader := f.fields["xqueue_header"]
	body, hasBody := f.fields["xqueue_body"]
	if !hasHeader || !hasBody {
		reply(w, false, "Queue request has invalid format")
		return
	}
	h, err := parseLMSHeader(header)
	if err != nil {
		reply(w, false, "Queue request has invalid format")
		return
	}
	ctx := r.Context()
	reg, err := s.registry(ctx)
	if err != nil {
		s.internal(w, r, "submit", err)
		return
	}
	q, ok := reg.queues[h.Queue]
	if !ok {
		reply(w, false, fmt.Sprintf("Queue '%s' not found", h.Queue))
		return
	}
	if err := u.CheckCallbackURL(h.CallbackURL); err != nil {
		reply(w, false, err.Error())
		return
	}
	p := reg.platforms[u.PlatformID]
	tags := q.Tags
	if p.ForceTag != "" {
		tags = append(append([]string(nil), tags...), p.ForceTag)
	}
	if tags, err = store.NormalizeTags(tags); err != nil {
		s.internal(w, r, "submit", err)
		return
	}
	types, err := broker.EligibleTypes(tags, func(t string) bool { return reg.tags[t] }, reg.types)
	if err != nil {
		reply(w, false, fmt.Sprintf("Queue '%s' cannot take submissions now: %v; ask the operator", q.Name, err))
		return
	}
	job := broker.NewJob{PlatformID: u.PlatformID, Name: q.Name, Tags: tags, Timeout: q.Timeout,
		JobData: broker.XQueueToJSON([]byte(body)), RestrictPaths: p.RestrictPaths, TypeIDs: types, Queue: q.Name}
	actor := "xqueue:" + u.Name
	ins, err := s.d.SubmitWith(ctx, []broker.NewJob{job}, nil, actor, func(tx *store.JobTx, ins []store.Inserted) error {
		if err := tx.InsertXQueueSubmission(ins[0].ID, u.ID, h.CallbackURL, header); err != nil {
			return err
		}
		for _, file := range f.files {
			if err := tx.InsertAttachment(ins[0].ID, file.name, file.data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.internal(w, r, "submit", err)
		return
	}
	id := ins[0].ID
	s.log.Info("job queued", "job_id", id, "platform", p.Name, "queue", q.Name, "user", u.Name, "files", len(f.files))
	s.retireEarlier(r, u, h.CallbackURL, id)
	reply(w, true, strconv.Itoa(s.d.QueueLength(q.Name)))
}

// maxFiles bounds the files of one submission.
const maxFiles = 64

// retireEarlier retires the user's platform's unfinished submissions to
// callbackURL older than job id: the callback URL names a student and a
// problem, and only the newest submission of a problem is graded, as
// XQueue's _invalidate_prior_submissions does. A retired submission is
// cancelled without a delivery.
func (s *Service) retireEarlier(r *http.Request, u broker.XQueueUser, callbackURL string, id int64) {
	ctx := r.Context()
	ids, err := s.db.UnfinishedXQueueSubmissions(ctx, u.PlatformID, callbackURL, id)
	if err != nil {
		s.log.Error("finding submissions to retire", "job_id", id, "err", err)
		return
	}
	for _, old := range ids {
		err := s.d.Retire(ctx, old, "xqueue:"+u.Name, fmt.Sprintf("retired: submission %d to the same lms_callback_url replaced it", id))
		switch {
		case err == nil:
			s.log.Info("submission retired by a newer one", "job_id", old, "by", id)
		case errors.Is(err, broker.ErrFailedPrecondition):
			// It finished meanwhile: its result goes to the LMS, which
			// ignores it (its lms_key is stale).
		default:
			s.log.Error("retiring a submission", "job_id", old, "by", id, "err", err)
		}
	}
}
