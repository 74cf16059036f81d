package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
)

// GraderqueuePayload is the payload of a graderqueue platform's callback
// token: what graderqueue's sendresults.php signed (sTaskName, sResultData,
// date) and, beside it, what a platform needs to recognise a try it has
// seen and to check the token's age as gradebroker's own tokens allow.
type GraderqueuePayload struct {
	// TaskName is the job's name, which graderqueue's platforms set to
	// their submission's id.
	TaskName string `json:"sTaskName"`
	// ResultData is what graderserver put under jobdata in its result:
	// taskgrader's output in graderd's taskgrader mode (see ResultData).
	ResultData json.RawMessage `json:"sResultData"`
	// Date is the day the token was made, d-m-Y in the broker's local
	// time, as graderqueue wrote it.
	Date string `json:"date"`
	// JobID is the job's id (getjob's jobid).
	JobID int64 `json:"job_id"`
	// Status is "done", "failed" or "cancelled".
	Status string `json:"status"`
	// DeliveryID is the same on every try of one delivery.
	DeliveryID int64 `json:"delivery_id"`
	// IssuedAt, Expires, JTI, Audience and Issuer are iat, exp, jti, aud
	// (the platform's name) and iss (the broker's).
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
	JTI      string `json:"jti"`
	Audience string `json:"aud"`
	Issuer   string `json:"iss"`
}

// graderqueueCallback is graderqueue's protocol (broker.ProtocolGraderqueue):
// the form field sToken, a token of a GraderqueuePayload, signed RS512 by
// the broker (kid its name) and encrypted to the platform's key with zip DEF
// as sendresults.php made it, POSTed to return_url as
// application/x-www-form-urlencoded. graderqueue tried once and only logged
// the platform's answer ({"bSuccess", "sError"}); here, like every
// delivery, it is retried until a 2xx.
type graderqueueCallback struct {
	keys     *token.KeyRing
	broker   string
	lifetime time.Duration
}

// NewGraderqueueCallback returns the Protocol of graderqueue's platforms,
// for Config.Protocols: callbacks signed with keys.Current() as broker,
// their tokens valid for lifetime (0: DefaultTokenLifetime).
func NewGraderqueueCallback(keys *token.KeyRing, brokerName string, lifetime time.Duration) Protocol {
	if lifetime <= 0 {
		lifetime = DefaultTokenLifetime
	}
	return &graderqueueCallback{keys: keys, broker: brokerName, lifetime: lifetime}
}

// Request builds the callback of d.
func (c *graderqueueCallback) Request(ctx context.Context, d *store.Delivery, now time.Time) (*http.Request, error) {
	if err := checkURL(d.ReturnURL); err != nil {
		return nil, err
	}
	pub, err := token.ParsePublicKeyPEM([]byte(d.PublicKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("the platform's registered key is unusable (%w); update the platform's key", err)
	}
	status, ok := statusOf(d.JobState)
	if !ok {
		return nil, permanent("job %d is %s, not final", d.JobID, d.JobState)
	}
	if len(d.Result) > 0 && !json.Valid(d.Result) {
		return nil, permanent("job %d has a stored result that is not JSON", d.JobID)
	}
	payload, err := json.Marshal(GraderqueuePayload{
		TaskName: d.JobName, ResultData: ResultData(d.Result), Date: now.Format(token.LegacyDateLayout),
		JobID: d.JobID, Status: status, DeliveryID: d.ID,
		IssuedAt: now.Unix(), Expires: now.Add(c.lifetime).Unix(), JTI: token.NewJTI(), Audience: d.Platform, Issuer: c.broker,
	})
	if err != nil {
		return nil, permanent("job %d: encoding the callback: %v", d.JobID, err)
	}
	tok, err := token.Seal(payload, c.broker, c.keys.Current(), pub, "", true)
	if err != nil {
		return nil, fmt.Errorf("sealing the callback: %w", err)
	}
	body := url.Values{"sToken": {tok}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.ReturnURL, strings.NewReader(body))
	if err != nil {
		return nil, permanent("return_url cannot make a request")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// ResultData is a job's result as graderqueue's callback carries it,
// sResultData: sendresults.php sent the jobdata member of graderserver's
// result, {"errorcode", "errormsg", "jobdata"}, which graderd's taskgrader
// mode makes; a result of that shape without jobdata (a fatal error) and
// no result at all are null. Any other result, a grader's that is not
// taskgrader, is sent whole.
func ResultData(result []byte) json.RawMessage {
	if len(bytes.TrimSpace(result)) == 0 {
		return json.RawMessage("null")
	}
	var envelope struct {
		Errorcode *json.Number    `json:"errorcode"`
		Jobdata   json.RawMessage `json:"jobdata"`
	}
	if json.Unmarshal(result, &envelope) != nil || envelope.Errorcode == nil {
		return result
	}
	if _, err := envelope.Errorcode.Int64(); err != nil {
		return result
	}
	if len(envelope.Jobdata) == 0 {
		return json.RawMessage("null")
	}
	return envelope.Jobdata
}

var _ Protocol = (*graderqueueCallback)(nil)
