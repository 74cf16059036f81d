// Package graderqueue serves graderqueue's platform API, api.php, so that a
// platform written for France-ioi's graderqueue sends its jobs to
// gradebroker by changing only the URL it posts to. It is an edge adapter:
// it reads api.php's form, hands the token to the platform service
// (package platform, with platform.DialectGraderqueue) as the REST gateway
// does, and writes the service's answers in graderqueue's envelope,
// {"errorcode": 0|1|2, "errormsg": ..., ...}. It keeps nothing of its own.
//
// The requests are api.php's: test, sendjob, sendsolution and getjob, each
// a token (sToken) of a platform (sPlatform) in a form POST; sendsolution
// may upload its solution as the multipart file solfile. The grading
// servers' side of graderqueue (poll.php, sendresults.php) is not served:
// graderd replaces graderserver (see the README).
package graderqueue

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/gradebroker/gradebroker/broker/platform"
)

// Path is where api.php is served.
const Path = "/api.php"

// DefaultMaxBody bounds a request body when Config.MaxBody is zero: a
// token of the platform service's default largest size and a solution
// file of the largest jobdata, with room for the form around them.
const DefaultMaxBody = 10 << 20

// Config tunes the handler. Zero fields take their defaults.
type Config struct {
	// MaxBody bounds a request body, in bytes.
	MaxBody int64
}

// requests are the requests api.php takes from platforms. (Its wakeup
// request was for its own web interface only.)
var requests = []string{"test", "sendjob", "sendsolution", "getjob"}

// Handler returns api.php over svc. log may be nil.
func Handler(svc *platform.Service, cfg Config, log *slog.Logger) http.Handler {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if log == nil {
		log = slog.Default()
	}
	return &handler{svc: svc, cfg: cfg, log: log.With("component", "graderqueue")}
}

type handler struct {
	svc *platform.Service
	cfg Config
	log *slog.Logger
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		write(w, reply{Errorcode: CodeFatal, Errormsg: "api.php takes a POST of sToken and sPlatform"})
		return
	}
	r = platform.WithPeer(r)
	f, err := parseForm(r.Header.Get("Content-Type"), http.MaxBytesReader(w, r.Body, h.cfg.MaxBody), h.cfg.MaxBody)
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, errTooLarge), errors.As(err, &tooBig):
		write(w, reply{Errorcode: CodeFatal, Errormsg: fmt.Sprintf("the request is larger than the %d bytes this broker accepts", h.cfg.MaxBody)})
		return
	case err != nil:
		write(w, reply{Errorcode: CodeFatal, Errormsg: err.Error()})
		return
	case f.Token == "":
		// api.php's words, for the same case.
		write(w, reply{Errorcode: CodeFatal, Errormsg: "No valid authentication provided: sToken is missing."})
		return
	}
	ctx := r.Context()
	o, err := h.svc.Open(ctx, platform.Call{Token: f.Token, Platform: f.Platform, Requests: requests,
		Dialect: platform.DialectGraderqueue, Solfile: f.Solfile})
	if err != nil {
		write(w, refused(err))
		return
	}
	write(w, h.do(r, o))
}

// do carries out an opened request.
func (h *handler) do(r *http.Request, o *platform.Opened) reply {
	ctx := r.Context()
	switch o.Request() {
	case "test":
		if _, err := o.Test(ctx); err != nil {
			return refused(err)
		}
		return reply{Errorcode: CodeOK, Errormsg: "Connected as platform " + o.Platform() + "."}
	case "sendjob":
		res, err := o.SendJob(ctx)
		if err != nil {
			return refused(err)
		}
		return queued(res.GetJobId(), res.GetDuplicate())
	case "sendsolution":
		res, err := o.SendSolution(ctx)
		if err != nil {
			return refused(err)
		}
		return queued(res.GetJobId(), res.GetDuplicate())
	case "getjob":
		job, err := o.GetJob(ctx)
		if err != nil {
			return refused(err)
		}
		origin, row := jobRow(job)
		return reply{Errorcode: CodeOK, Errormsg: "Success", Origin: origin, Data: row}
	}
	// Open takes only the requests above.
	h.log.Error("an opened request has no handler", "request", o.Request())
	return reply{Errorcode: CodeFatal, Errormsg: "No request made."}
}

// queued is sendjob's and sendsolution's answer.
func queued(id int64, duplicate bool) reply {
	return reply{Errorcode: CodeOK, Errormsg: fmt.Sprintf("Queued as job ID #%d.", id), JobID: &id, Duplicate: duplicate}
}
