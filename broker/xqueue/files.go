package xqueue

import (
	"errors"
	"mime"
	"net/http"
	"strconv"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// file serves a submission's file to the grader that pulled it, at the
// link get_submission gave (xqueue_files), without a session: the link's
// MAC says the broker made it, and it works while the pull's lease is the
// job's (or its late result may still be taken) and not past its deadline.
func (s *Service) file(w http.ResponseWriter, r *http.Request) {
	l, err := s.macs.parseFileToken(r.PathValue("token"), s.cfg.Now())
	if err != nil {
		http.Error(w, "no such file, or its link expired: pull the submission again", http.StatusNotFound)
		return
	}
	a, err := s.db.Attachment(r.Context(), l.Attachment)
	if errors.Is(err, broker.ErrNotFound) {
		http.Error(w, "no such file: its submission is gone", http.StatusNotFound)
		return
	}
	if err != nil {
		s.log.Error("reading a submission's file", "attachment", l.Attachment, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if _, _, ok := s.d.LeaseHolder(dispatch.LeaseRef{JobID: a.JobID, LeaseID: l.Lease}); !ok {
		http.Error(w, "this file's link ended with its pull: pull the submission again", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.Name}))
	w.Header().Set("Content-Length", strconv.Itoa(len(a.Data)))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(a.Data)
}
