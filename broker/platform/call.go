package platform

import (
	"context"

	"github.com/gradebroker/gradebroker/broker"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Dialect is how a request's fields are read where the protocols that
// carry platform requests differ.
type Dialect int

const (
	// DialectGradebroker is the REST gateway's, documented in
	// platform.proto.
	DialectGradebroker Dialect = iota
	// DialectGraderqueue is graderqueue's api.php, for the platforms
	// written for it: legacy tokens from the platforms registered for
	// them, a solfile uploaded beside the token (legacy tokens only),
	// api.php's default job names and sendsolution jobdata, and
	// jobusertaskid naming a user's task rather than one submission (see
	// userTaskKey).
	DialectGraderqueue
)

// Call is one platform request as an edge adapter received it: the token
// and what its transport carried beside it.
type Call struct {
	// Token is the compact JWE.
	Token string
	// Platform is the platform as the transport names it beside the
	// token (graderqueue's sPlatform), or "" when it names none. The
	// token's kid must be the same name; a legacy token's key is chosen
	// by it.
	Platform string
	// Requests are the request claims the address takes.
	Requests []string
	// Dialect is how the request's fields are read.
	Dialect Dialect
	// Solfile is a solution file sent beside the token (graderqueue's
	// multipart solfile), or nil.
	Solfile *Upload
}

// Upload is a file a platform sent beside its token.
type Upload struct {
	// Name is the file's name as the platform sent it.
	Name string
	// Content is the file.
	Content []byte
}

// Opened is a platform request whose token the service has checked: an
// edge adapter gets one from Open and carries it out with the method its
// request names. Nothing of it is recorded until then, so a request
// refused by its method leaves its token unused.
type Opened struct {
	s *Service
	r request
}

// Open checks c's token and finds its platform, as every request of the
// REST gateway does. Its errors are status errors with the codes and
// details the gateway answers (see tokenError).
func (s *Service) Open(ctx context.Context, c Call) (*Opened, error) {
	r, err := s.open(ctx, c)
	if err != nil {
		return nil, err
	}
	return &Opened{s: s, r: r}, nil
}

// Request is the token's request claim: one of the Call's Requests.
func (o *Opened) Request() string { return o.r.claims.Request }

// Platform is the name of the platform that signed the token.
func (o *Opened) Platform() string { return o.r.platform.Name }

// Legacy reports whether the token was a legacy token.
func (o *Opened) Legacy() bool { return o.r.claims.Legacy }

// Test carries out a test request.
func (o *Opened) Test(ctx context.Context) (*gbv1.TestResponse, error) { return o.s.test(ctx, o.r) }

// SendJob carries out a sendjob request.
func (o *Opened) SendJob(ctx context.Context) (*gbv1.SendJobResponse, error) {
	return o.s.sendJob(ctx, o.r)
}

// SendSolution carries out a sendsolution request.
func (o *Opened) SendSolution(ctx context.Context) (*gbv1.SendSolutionResponse, error) {
	return o.s.sendSolution(ctx, o.r)
}

// GetJob carries out a getjob request: the job as stored, with its result,
// attempts and delivery state, once final if the request asks to wait.
func (o *Opened) GetJob(ctx context.Context) (broker.Job, error) { return o.s.getJob(ctx, o.r) }
