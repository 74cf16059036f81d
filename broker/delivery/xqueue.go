package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// XQueueProtocol returns the Protocol of platforms that speak XQueue's
// (broker.ProtocolXQueue): the result of a submission is POSTed to its
// lms_callback_url as a form of xqueue_header (the LMS's header, verbatim)
// and xqueue_body (the grader's reply), as XQueue's post_grade_to_lms does,
// with the submitting user's HTTP basic credentials if the operator set
// them. A submission that failed or was cancelled gets the failure message
// XQueue's retire_failed_submissions posts. The callback URL is checked
// against the user's allow-list again at each try: the list may have
// changed since the submission.
func XQueueProtocol(db *store.DB) Protocol { return &xqueueForm{db: db} }

type xqueueForm struct{ db *store.DB }

func (x *xqueueForm) Request(ctx context.Context, d *store.Delivery, _ time.Time) (*http.Request, error) {
	cb, err := x.db.XQueueCallback(ctx, d.JobID)
	if errors.Is(err, broker.ErrNotFound) {
		return nil, permanent("job %d was not submitted through XQueue, so it has no callback URL", d.JobID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the submission's callback: %w", err)
	}
	if !cb.HasUser {
		return nil, permanent("the XQueue user that submitted job %d was removed, and with it the hosts its results may go to", d.JobID)
	}
	if err := cb.User.CheckCallbackURL(cb.URL); err != nil {
		// Permanent: an operator who allows the host redelivers it.
		return nil, permanent("%v", err)
	}
	var body string
	switch d.JobState {
	case broker.JobDone:
		if len(d.Result) == 0 {
			return nil, permanent("job %d is done without a result", d.JobID)
		}
		body = string(broker.XQueueFromJSON(d.Result))
	case broker.JobFailed, broker.JobCancelled:
		body = broker.XQueueFailureBody
	default:
		return nil, permanent("job %d is %s, not final", d.JobID, d.JobState)
	}
	form := url.Values{"xqueue_header": {cb.Header}, "xqueue_body": {body}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cb.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, permanent("lms_callback_url cannot make a request")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if cb.User.CallbackAuthUser != "" {
		req.SetBasicAuth(cb.User.CallbackAuthUser, cb.User.CallbackAuthPassword)
	}
	return req, nil
}
