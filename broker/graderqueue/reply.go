package graderqueue

import (
	"encoding/json"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The error codes of graderqueue's envelope (www/funcs.inc.php, jsonerror).
const (
	// CodeOK is success.
	CodeOK = 0
	// CodeTemporary is a failure worth retrying as it is: the broker could
	// not do it now.
	CodeTemporary = 1
	// CodeFatal is a refusal: retrying the same request gets the same
	// answer. api.php answers a bad token with it too, and so does this
	// adapter.
	CodeFatal = 2
)

// reply is api.php's answer: the envelope and the fields of the request's
// own answer, in api.php's order.
type reply struct {
	Errorcode int    `json:"errorcode"`
	Errormsg  string `json:"errormsg"`
	// JobID is sendjob's and sendsolution's job, a JSON integer as
	// api.php writes it.
	JobID *int64 `json:"jobid,omitempty"`
	// Duplicate says that the job was submitted before (not in api.php).
	Duplicate bool `json:"duplicate,omitempty"`
	// Origin is getjob's "queue" or "done".
	Origin string `json:"origin,omitempty"`
	// Data is getjob's row.
	Data map[string]any `json:"data,omitempty"`
}

// codeOf is the envelope's errorcode for an error of the platform service.
func codeOf(err error) int {
	switch status.Code(err) {
	case codes.OK:
		return CodeOK
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Canceled:
		return CodeTemporary
	}
	return CodeFatal
}

// refused is the reply for err.
func refused(err error) reply {
	return reply{Errorcode: codeOf(err), Errormsg: status.Convert(err).Message()}
}

// write answers with r: always HTTP 200, as api.php does, so that a
// platform reads the envelope whatever happened.
func write(w http.ResponseWriter, r reply) {
	b, err := json.Marshal(r)
	if err != nil {
		b = []byte(`{"errorcode":1,"errormsg":"internal error: the answer cannot be encoded"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(b, '\n'))
}
