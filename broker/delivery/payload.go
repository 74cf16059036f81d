package delivery

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
)

// Payload is the JSON payload of a callback token, as
// gradebroker.v1.CallbackPayload documents it, plus iss. Every field is
// always present except result and usage, which are absent when the job
// has none.
type Payload struct {
	// JobID is the job's id.
	JobID int64 `json:"job_id"`
	// JobName is the job's name.
	JobName string `json:"jobname"`
	// IdempotencyKey is the platform's key for the job; "" if it gave none.
	IdempotencyKey string `json:"idempotency_key"`
	// Status is "done", "failed" or "cancelled".
	Status string `json:"status"`
	// Result is the grader's JSON result, when there is one.
	Result json.RawMessage `json:"result,omitempty"`
	// Error says why the job failed or was cancelled.
	Error string `json:"error"`
	// Attempts counts the grading attempts the job took.
	Attempts uint32 `json:"attempts"`
	// Server is the grading server of the last attempt.
	Server string `json:"server"`
	// Usage is what the last attempt's run used, as its server measured
	// it; absent when it reported nothing (or the job never ran).
	Usage *PayloadUsage `json:"usage,omitempty"`
	// Limit names the limit that ended the last attempt's run ("memory",
	// "cpu_time", "wall_time", "pids", "output", "disk"); "" when none did.
	Limit string `json:"limit"`
	// DeliveryID is the same on every try of one delivery, so that a
	// platform can drop duplicates.
	DeliveryID int64 `json:"delivery_id"`
	// IssuedAt is iat, in seconds since the epoch.
	IssuedAt int64 `json:"iat"`
	// Expires is exp, in seconds since the epoch.
	Expires int64 `json:"exp"`
	// JTI is a fresh random id on every try.
	JTI string `json:"jti"`
	// Audience is aud: the platform's name.
	Audience string `json:"aud"`
	// Issuer is iss: the broker's name, also the JWS kid.
	Issuer string `json:"iss"`
}

// PayloadUsage is what a run used, all its processes together, in a
// callback: whole milliseconds and bytes, for any platform's JSON reader.
type PayloadUsage struct {
	// CPUTimeMS is user and system CPU time, in milliseconds.
	CPUTimeMS int64 `json:"cpu_time_ms"`
	// PeakMemoryBytes is the highest memory use seen, in bytes.
	PeakMemoryBytes int64 `json:"peak_memory_bytes"`
	// WallTimeMS is the time from the run's start to its end, in
	// milliseconds.
	WallTimeMS int64 `json:"wall_time_ms"`
}

// payloadUsage converts what a run used for the callback; nil stays nil.
func payloadUsage(u *broker.Usage) *PayloadUsage {
	if u == nil {
		return nil
	}
	return &PayloadUsage{CPUTimeMS: u.CPUTime.Round(time.Millisecond).Milliseconds(), PeakMemoryBytes: u.PeakMemory,
		WallTimeMS: u.WallTime.Round(time.Millisecond).Milliseconds()}
}

// permanentError is a failure that no retry can fix: the delivery is marked
// dead at once.
type permanentError struct{ msg string }

func (e *permanentError) Error() string { return e.msg }

func permanent(format string, args ...any) error {
	return &permanentError{msg: fmt.Sprintf(format, args...)}
}

// statusOf names a final job state as the callback does.
func statusOf(s broker.JobState) (string, bool) {
	switch s {
	case broker.JobDone:
		return "done", true
	case broker.JobFailed:
		return "failed", true
	case broker.JobCancelled:
		return "cancelled", true
	}
	return "", false
}

// buildPayload makes the callback's JSON for d, issued at now.
func buildPayload(d *store.Delivery, brokerName string, now time.Time, lifetime time.Duration) ([]byte, error) {
	status, ok := statusOf(d.JobState)
	if !ok {
		// Callers check Superseded first; this is a safety net.
		return nil, permanent("job %d is %s, not final", d.JobID, d.JobState)
	}
	var result json.RawMessage
	if len(d.Result) > 0 {
		if !json.Valid(d.Result) {
			// The dispatcher stores only JSON results, so this is damage
			// in the database; resending cannot repair it.
			return nil, permanent("job %d has a stored result that is not JSON", d.JobID)
		}
		result = d.Result
	}
	p := Payload{
		JobID:          d.JobID,
		JobName:        d.JobName,
		IdempotencyKey: d.IdempotencyKey,
		Status:         status,
		Result:         result,
		Error:          d.Error,
		Attempts:       uint32(max(d.Attempts, 0)),
		Server:         d.Server,
		Usage:          payloadUsage(d.Usage),
		Limit:          string(d.Limit),
		DeliveryID:     d.ID,
		IssuedAt:       now.Unix(),
		Expires:        now.Add(lifetime).Unix(),
		JTI:            token.NewJTI(),
		Audience:       d.Platform,
		Issuer:         brokerName,
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, permanent("job %d: encoding the callback: %v", d.JobID, err)
	}
	return b, nil
}

// checkURL accepts what the admin API accepts as a return_url: https://, or
// http:// to a loopback host. A row that got past the API some other way is
// refused here rather than sending results in clear across a network.
func checkURL(raw string) error {
	if raw == "" {
		return permanent("the platform has no return_url")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// Not quoting err: it quotes the URL, whose query may hold a
		// secret the platform uses to recognise us.
		return permanent("return_url does not parse as a URL")
	}
	switch {
	case u.Hostname() == "":
		return permanent("return_url has no host")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	case u.Scheme == "http":
		return permanent("return_url uses http:// to a host that is not loopback; results are sent over https:// only (fix the platform's return_url, then redeliver)")
	}
	return permanent("return_url scheme %q is not https", u.Scheme)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
