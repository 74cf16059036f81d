// Package platform is the platforms' API: PlatformService behind the REST
// gateway. Every request is a token (see package token); this package checks
// what the token asks for, turns it into jobs, and answers.
package platform

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/rpcstatus"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Config tunes the platform API. Zero fields take their defaults.
type Config struct {
	// Broker is the broker's name, the aud a token may carry.
	Broker string
	// MaxJobData bounds one job's data, in bytes; default 1 MiB.
	MaxJobData int
	// MaxBatch bounds the jobs of one sendjobs token; default 1000.
	MaxBatch int
	// MaxPriority bounds |priority|; default 1000.
	MaxPriority int
	// MaxTimeout bounds timeout_sec; default 1 h.
	MaxTimeout time.Duration
	// MaxWait bounds getjob's wait_seconds; default 60 s.
	MaxWait time.Duration
	// Limits bound tokens; zero fields take the token package's defaults.
	Limits token.Limits
	// RequireCerts makes every request also need the platform's registered
	// client certificate.
	RequireCerts bool
	// TokenRefused, if set, is called with RefusalReason of every token
	// refused, for metrics; it must be quick.
	TokenRefused func(reason string)
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.MaxJobData <= 0 {
		c.MaxJobData = 1 << 20
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1000
	}
	if c.MaxPriority <= 0 {
		c.MaxPriority = 1000
	}
	if c.MaxTimeout <= 0 {
		c.MaxTimeout = time.Hour
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 60 * time.Second
	}
	if c.Limits.MaxTokenBytes <= 0 {
		// Room for a batch of a few jobs at the jobdata limit: two layers
		// of base64 make a token about 1.8 times its payload.
		c.Limits.MaxTokenBytes = 8 << 20
	}
	if c.Limits.MaxPlaintextBytes <= 0 {
		c.Limits.MaxPlaintextBytes = 16 << 20
	}
	if c.Limits.Skew <= 0 {
		c.Limits.Skew = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Service implements gradebroker.v1.PlatformService.
type Service struct {
	gbv1.UnimplementedPlatformServiceServer

	cfg    Config
	db     *store.DB
	d      *dispatch.Dispatcher
	keys   *token.KeyRing
	opener *token.Opener
	log    *slog.Logger

	keyCache sync.Map // PEM string → *rsa.PublicKey
	reg      atomic.Pointer[registry]

	waitMu  sync.Mutex
	waiting map[int64]int // job id → getjob calls waiting for it to be final
}

// New returns the platform API over db and d, reading tokens with keys.
func New(cfg Config, db *store.DB, d *dispatch.Dispatcher, keys *token.KeyRing, log *slog.Logger) *Service {
	cfg.setDefaults()
	if log == nil {
		log = slog.Default()
	}
	s := &Service{cfg: cfg, db: db, d: d, keys: keys, log: log}
	s.opener = &token.Opener{Keys: keys, Signers: signers{s}, Replay: deferredReplay{}, Limits: cfg.Limits,
		Audience: cfg.Broker, Now: cfg.Now}
	return s
}

// signers resolves a token's kid to the platform's registered key.
type signers struct{ s *Service }

func (k signers) SignerKey(ctx context.Context, name string) (*rsa.PublicKey, error) {
	p, err := k.s.platformByName(ctx, name)
	if errors.Is(err, broker.ErrNotFound) {
		return nil, fmt.Errorf("%w: no platform is registered as %q", token.ErrUnknownSigner, name)
	}
	if err != nil {
		return nil, err
	}
	if p.PublicKeyPEM == "" {
		// The console's built-in platform: it takes no tokens.
		return nil, fmt.Errorf("%w: platform %q sends no tokens", token.ErrUnknownSigner, name)
	}
	return k.s.publicKey(p)
}

// platformByName answers from the registry snapshot.
func (s *Service) platformByName(ctx context.Context, name string) (broker.Platform, error) {
	reg, err := s.registry(ctx)
	if err != nil {
		return broker.Platform{}, err
	}
	p, ok := reg.platforms[name]
	if !ok {
		return broker.Platform{}, fmt.Errorf("%w: platform %q", broker.ErrNotFound, name)
	}
	return p, nil
}

func (s *Service) publicKey(p broker.Platform) (*rsa.PublicKey, error) {
	if v, ok := s.keyCache.Load(p.PublicKeyPEM); ok {
		return v.(*rsa.PublicKey), nil
	}
	pub, err := token.ParsePublicKeyPEM([]byte(p.PublicKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("platform %s: registered key: %w", p.Name, err)
	}
	s.keyCache.Store(p.PublicKeyPEM, pub)
	return pub, nil
}

// deferredReplay lets Open pass; the jti is recorded by the request itself,
// in the same transaction as what the request stores, so that a refused
// request stores nothing and an accepted one cannot be replayed.
type deferredReplay struct{}

func (deferredReplay) UseJTI(context.Context, string, string, time.Time) error { return nil }

// request is an opened, authenticated request.
type request struct {
	platform broker.Platform
	claims   token.Claims
	payload  []byte
	call     Call
}

func (r request) tokenUse(skew time.Duration) *dispatch.TokenUse {
	return &dispatch.TokenUse{Signer: r.claims.Signer, JTI: r.claims.JTI, Expires: r.claims.Expires.Add(skew)}
}

func (r request) actor() string { return "platform:" + r.platform.Name }

// open checks c's token and finds its platform.
func (s *Service) open(ctx context.Context, c Call) (request, error) {
	if c.Token == "" {
		return request{}, refusal(codes.InvalidArgument, ReasonMalformedBody, "the request body must be "+bodyShape+": it has no token").Err()
	}
	opts := token.OpenOptions{Requests: c.Requests, Signer: c.Platform}
	if c.Dialect == DialectGraderqueue {
		opts.Legacy = s.legacyTokens
	}
	claims, payload, err := s.opener.OpenWith(ctx, c.Token, opts)
	if err != nil {
		return request{}, s.tokenError(ctx, err)
	}
	p, err := s.platformByName(ctx, claims.Signer)
	if err != nil {
		return request{}, s.tokenError(ctx, err)
	}
	if s.cfg.RequireCerts {
		id, ok := peerFromContext(ctx)
		switch {
		case !ok:
			return request{}, status.Error(codes.Unauthenticated, "this broker requires the platform's client certificate; none was presented")
		case p.Cert == nil || p.Cert.Fingerprint != id.Fingerprint:
			return request{}, status.Errorf(codes.PermissionDenied, "client certificate %s is not the one registered for platform %s", id.Subject, p.Name)
		}
	}
	return request{platform: p, claims: claims, payload: payload, call: c}, nil
}

// legacyTokens reports whether platform name may send legacy tokens.
func (s *Service) legacyTokens(ctx context.Context, name string) (bool, error) {
	p, err := s.platformByName(ctx, name)
	if errors.Is(err, broker.ErrNotFound) {
		return false, fmt.Errorf("%w: no platform is registered as %q", token.ErrUnknownSigner, name)
	}
	return p.LegacyTokens, err
}

// decode decodes the payload's own fields into v.
func (r request) decode(v any) error {
	if err := decodePayload(r.payload, v); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

// openAs is open for one request, followed by decoding the payload's own
// fields into v.
func (s *Service) openAs(ctx context.Context, compact, want string, v any) (request, error) {
	r, err := s.open(ctx, Call{Token: compact, Requests: []string{want}})
	if err != nil {
		return request{}, err
	}
	return r, r.decode(v)
}

// tokenError maps a token refusal to a status a platform developer can act on.
func (s *Service) tokenError(ctx context.Context, err error) error {
	reason := RefusalReason(err)
	if reason != "" && s.cfg.TokenRefused != nil {
		s.cfg.TokenRefused(reason)
	}
	// The details name the refusal in one word (EXPIRED, REPLAYED, ...), for
	// a platform to act on without reading the message.
	reason = strings.ToUpper(reason)
	switch {
	case errors.Is(err, token.ErrMalformed), errors.Is(err, token.ErrTooLarge), errors.Is(err, token.ErrAlgorithm),
		errors.Is(err, token.ErrWrongRequest), errors.Is(err, token.ErrMissingJTI), errors.Is(err, token.ErrLifetime):
		return refusal(codes.InvalidArgument, reason, fmt.Sprintf("token refused: %v", err)).Err()
	case errors.Is(err, token.ErrDecrypt), errors.Is(err, token.ErrUnknownSigner), errors.Is(err, token.ErrBadSignature),
		errors.Is(err, token.ErrExpired), errors.Is(err, token.ErrNotYetValid), errors.Is(err, token.ErrReplayed),
		errors.Is(err, token.ErrWrongAudience), errors.Is(err, broker.ErrNotFound):
		return refusal(codes.Unauthenticated, reason, fmt.Sprintf("token refused: %v", err)).Err()
	case errors.Is(err, store.ErrTokenReused):
		return refusal(codes.Unauthenticated, reason, fmt.Sprintf("token refused: replayed: %v", err)).Err()
	}
	return rpcstatus.Error(ctx, s.log, err)
}

// Test implements PlatformService.Test.
func (s *Service) Test(ctx context.Context, req *gbv1.TestRequest) (*gbv1.TestResponse, error) {
	r, err := s.open(ctx, Call{Token: req.GetToken(), Requests: []string{"test"}})
	if err != nil {
		return nil, err
	}
	return s.test(ctx, r)
}

func (s *Service) test(ctx context.Context, r request) (*gbv1.TestResponse, error) {
	if err := s.d.UseToken(ctx, *r.tokenUse(s.cfg.Limits.Skew)); err != nil {
		return nil, s.tokenError(ctx, err)
	}
	return &gbv1.TestResponse{Platform: r.platform.Name, Broker: s.cfg.Broker, ServerTime: timestamppb.New(s.cfg.Now())}, nil
}

// SendJob implements PlatformService.SendJob.
func (s *Service) SendJob(ctx context.Context, req *gbv1.SendJobRequest) (*gbv1.SendJobResponse, error) {
	r, err := s.open(ctx, Call{Token: req.GetToken(), Requests: []string{"sendjob"}})
	if err != nil {
		return nil, err
	}
	return s.sendJob(ctx, r)
}

func (s *Service) sendJob(ctx context.Context, r request) (*gbv1.SendJobResponse, error) {
	var spec jobSpec
	if err := r.decode(&spec); err != nil {
		return nil, err
	}
	var gq graderqueueFields
	if r.call.Dialect == DialectGraderqueue {
		if err := r.decode(&gq); err != nil {
			return nil, err
		}
		if spec.Jobname == "" {
			spec.Jobname = "api-sendjob" // api.php's name
		}
	}
	return s.submitOne(ctx, r, spec, gq)
}

// submitOne queues the job of one sendjob or sendsolution.
func (s *Service) submitOne(ctx context.Context, r request, spec jobSpec, gq graderqueueFields) (*gbv1.SendJobResponse, error) {
	reg, err := s.registry(ctx)
	if err != nil {
		return nil, rpcstatus.Error(ctx, s.log, err)
	}
	nj, err := s.buildJob(r.platform, spec, reg)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if r.call.Dialect == DialectGraderqueue && spec.IdempotencyKey == "" && spec.Jobusertaskid != "" {
		nj.IdempotencyKey = userTaskKey(spec.Jobusertaskid, nj, gq)
	}
	out, err := s.submit(ctx, r, []broker.NewJob{nj})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// SendJobs implements PlatformService.SendJobs: many jobs, one token, all or
// none.
func (s *Service) SendJobs(ctx context.Context, req *gbv1.SendJobsRequest) (*gbv1.SendJobsResponse, error) {
	var p sendJobsPayload
	r, err := s.openAs(ctx, req.GetToken(), "sendjobs", &p)
	if err != nil {
		return nil, err
	}
	if len(p.Jobs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "jobs is required: an array of at least one job")
	}
	if len(p.Jobs) > s.cfg.MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "%d jobs in one token; the limit is %d", len(p.Jobs), s.cfg.MaxBatch)
	}
	reg, err := s.registry(ctx)
	if err != nil {
		return nil, rpcstatus.Error(ctx, s.log, err)
	}
	jobs := make([]broker.NewJob, len(p.Jobs))
	for i, spec := range p.Jobs {
		if jobs[i], err = s.buildJob(r.platform, spec, reg); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "jobs[%d]: %v", i, err)
		}
	}
	out, err := s.submit(ctx, r, jobs)
	if err != nil {
		return nil, err
	}
	return &gbv1.SendJobsResponse{Jobs: out}, nil
}

// SendSolution implements PlatformService.SendSolution.
func (s *Service) SendSolution(ctx context.Context, req *gbv1.SendSolutionRequest) (*gbv1.SendSolutionResponse, error) {
	r, err := s.open(ctx, Call{Token: req.GetToken(), Requests: []string{"sendsolution"}})
	if err != nil {
		return nil, err
	}
	return s.sendSolution(ctx, r)
}

func (s *Service) sendSolution(ctx context.Context, r request) (*gbv1.SendSolutionResponse, error) {
	var p sendSolutionPayload
	if err := r.decode(&p); err != nil {
		return nil, err
	}
	var gq graderqueueFields
	var jd []byte
	var err error
	switch {
	case r.call.Solfile != nil && !r.claims.Legacy:
		return nil, status.Error(codes.InvalidArgument, "a solfile sent beside the token is outside its signature, and is accepted only in a legacy token "+
			"from a platform registered for them; put the solution in the token instead: solcontent, or solfile as {\"name\", \"content_base64\"}")
	case r.call.Dialect == DialectGraderqueue:
		if err := r.decode(&gq); err != nil {
			return nil, err
		}
		var name string
		jd, name, err = graderqueueSolutionJobdata(p, r.call.Solfile)
		if p.Jobname == "" {
			p.Jobname = "api-" + name // api.php's name
		}
	default:
		jd, err = solutionJobdata(p)
	}
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := s.submitOne(ctx, r, jobSpec{Jobdata: jd, Jobname: p.Jobname, Priority: p.Priority, Tags: p.Tags,
		IdempotencyKey: p.IdempotencyKey, Jobusertaskid: p.Jobusertaskid, TimeoutSec: p.TimeoutSec}, gq)
	if err != nil {
		return nil, err
	}
	return &gbv1.SendSolutionResponse{JobId: out.JobId, Duplicate: out.Duplicate, State: out.State}, nil
}

func (s *Service) submit(ctx context.Context, r request, jobs []broker.NewJob) ([]*gbv1.SendJobResponse, error) {
	ins, err := s.d.Submit(ctx, jobs, r.tokenUse(s.cfg.Limits.Skew), r.actor())
	if err != nil {
		if errors.Is(err, store.ErrTokenReused) {
			return nil, s.tokenError(ctx, err)
		}
		return nil, rpcstatus.Error(ctx, s.log, err)
	}
	out := make([]*gbv1.SendJobResponse, len(ins))
	for i, in := range ins {
		out[i] = &gbv1.SendJobResponse{JobId: in.ID, Duplicate: in.Duplicate, State: protoconv.JobStateToProto(in.State)}
		if !in.Duplicate {
			// The first line of a job's trail at info, before the
			// dispatcher's "job done" or "job failed": one per job, also
			// in a batch, so that an operator can follow a job_id.
			s.log.LogAttrs(ctx, slog.LevelInfo, "job queued", slog.Int64("job_id", in.ID),
				slog.String("platform", r.platform.Name), slog.Any("tags", jobs[i].Tags), slog.Int("priority", jobs[i].Priority))
		}
	}
	return out, nil
}

// registry is what a request is checked against: a snapshot of the tags,
// server types and platforms, taken again only when the store says they
// changed, so that a request reads none of them from SQLite.
type registry struct {
	version   int64
	tags      map[string]bool
	types     []broker.ServerType
	platforms map[string]broker.Platform
}

func (s *Service) registry(ctx context.Context) (*registry, error) {
	v := s.db.RegistryVersion()
	if r := s.reg.Load(); r != nil && r.version == v {
		return r, nil
	}
	tags, err := s.db.ListTags(ctx)
	if err != nil {
		return nil, err
	}
	types, err := s.db.ListServerTypes(ctx)
	if err != nil {
		return nil, err
	}
	platforms, err := s.db.ListPlatforms(ctx)
	if err != nil {
		return nil, err
	}
	r := &registry{version: v, tags: make(map[string]bool, len(tags)), types: types,
		platforms: make(map[string]broker.Platform, len(platforms))}
	for _, t := range tags {
		r.tags[t.Name] = true
	}
	for _, p := range platforms {
		r.platforms[p.Name] = p
	}
	// A change during the reads makes the version differ next time, so the
	// snapshot is never kept past a change it may have missed.
	s.reg.Store(r)
	return r, nil
}

// buildJob validates one job of a platform's request.
func (s *Service) buildJob(p broker.Platform, spec jobSpec, reg *registry) (broker.NewJob, error) {
	data, err := normalizeJobdata(spec.Jobdata)
	if err != nil {
		return broker.NewJob{}, err
	}
	if len(data) > s.cfg.MaxJobData {
		return broker.NewJob{}, fmt.Errorf("jobdata is %d bytes; the limit is %d", len(data), s.cfg.MaxJobData)
	}
	tags := []string(spec.Tags)
	if p.ForceTag != "" {
		tags = append(tags, p.ForceTag)
	}
	tags, err = store.NormalizeTags(tags)
	if err != nil {
		return broker.NewJob{}, err
	}
	typeIDs, err := broker.EligibleTypes(tags, func(t string) bool { return reg.tags[t] }, reg.types)
	if err != nil {
		return broker.NewJob{}, err
	}
	if spec.Priority.v < -int64(s.cfg.MaxPriority) || spec.Priority.v > int64(s.cfg.MaxPriority) {
		return broker.NewJob{}, fmt.Errorf("priority %d is outside [-%d, %d]", spec.Priority.v, s.cfg.MaxPriority, s.cfg.MaxPriority)
	}
	var timeout time.Duration
	if spec.TimeoutSec.set {
		if spec.TimeoutSec.v <= 0 {
			return broker.NewJob{}, fmt.Errorf("timeout_sec must be positive, got %d", spec.TimeoutSec.v)
		}
		timeout = time.Duration(spec.TimeoutSec.v) * time.Second
		if timeout > s.cfg.MaxTimeout {
			return broker.NewJob{}, fmt.Errorf("timeout_sec %d is above this broker's maximum of %d", spec.TimeoutSec.v, int64(s.cfg.MaxTimeout/time.Second))
		}
	}
	key := spec.IdempotencyKey
	if key == "" {
		key = spec.Jobusertaskid
	}
	if len(key) > 256 {
		return broker.NewJob{}, errors.New("idempotency_key is longer than 256 bytes")
	}
	if len(spec.Jobname) > 256 {
		return broker.NewJob{}, errors.New("jobname is longer than 256 bytes")
	}
	return broker.NewJob{PlatformID: p.ID, Name: spec.Jobname, Priority: int(spec.Priority.v), Tags: tags,
		Timeout: timeout, IdempotencyKey: key, JobData: data, RestrictPaths: p.RestrictPaths, TypeIDs: typeIDs}, nil
}

// ownJob checks that job id belongs to the platform; another platform's job
// is "not found", so that ids reveal nothing.
func (s *Service) ownJob(ctx context.Context, r request, ref jobRef) (int64, error) {
	if !ref.Jobid.set || ref.Jobid.v <= 0 {
		return 0, status.Error(codes.InvalidArgument, "jobid is required: the id sendjob returned")
	}
	_, owner, err := s.db.JobState(ctx, ref.Jobid.v)
	if err == nil && owner != r.platform.ID {
		err = fmt.Errorf("%w: job %d", broker.ErrNotFound, ref.Jobid.v)
	}
	if err != nil {
		return 0, rpcstatus.Error(ctx, s.log, err)
	}
	return ref.Jobid.v, nil
}

// GetJob implements PlatformService.GetJob.
func (s *Service) GetJob(ctx context.Context, req *gbv1.GetJobRequest) (*gbv1.GetJobResponse, error) {
	r, err := s.open(ctx, Call{Token: req.GetToken(), Requests: []string{"getjob"}})
	if err != nil {
		return nil, err
	}
	job, err := s.getJob(ctx, r)
	if err != nil {
		return nil, err
	}
	pj := protoconv.JobToProto(job)
	// The platform sent the data and does not need it back; events are the
	// broker's own trail.
	pj.Jobdata, pj.Events = "", nil
	return &gbv1.GetJobResponse{Job: pj}, nil
}

// getJob reads the job r asks for, once it is final if r asks to wait.
func (s *Service) getJob(ctx context.Context, r request) (broker.Job, error) {
	var ref jobRef
	if err := r.decode(&ref); err != nil {
		return broker.Job{}, err
	}
	id, err := s.ownJob(ctx, r, ref)
	if err != nil {
		return broker.Job{}, err
	}
	if ref.WaitSeconds.v < 0 || time.Duration(ref.WaitSeconds.v)*time.Second > s.cfg.MaxWait {
		return broker.Job{}, status.Errorf(codes.InvalidArgument, "wait_seconds must be between 0 and %d", int64(s.cfg.MaxWait/time.Second))
	}
	if err := s.d.UseToken(ctx, *r.tokenUse(s.cfg.Limits.Skew)); err != nil {
		return broker.Job{}, s.tokenError(ctx, err)
	}
	if ref.WaitSeconds.v > 0 {
		wctx, cancel := context.WithTimeout(ctx, time.Duration(ref.WaitSeconds.v)*time.Second)
		s.countWait(id, 1)
		_, err := s.d.WaitFinal(wctx, id)
		s.countWait(id, -1)
		cancel()
		if err != nil && ctx.Err() != nil {
			return broker.Job{}, rpcstatus.Error(ctx, s.log, ctx.Err())
		}
	}
	job, err := s.db.GetJob(ctx, id)
	if err != nil {
		return broker.Job{}, rpcstatus.Error(ctx, s.log, err)
	}
	return job, nil
}

// Waiting returns how many getjob calls wait for job jobID to become
// final, so that a test can make the job final once a call waits for it.
func (s *Service) Waiting(jobID int64) int {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	return s.waiting[jobID]
}

func (s *Service) countWait(jobID int64, delta int) {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	if s.waiting == nil {
		s.waiting = make(map[int64]int)
	}
	if s.waiting[jobID] += delta; s.waiting[jobID] <= 0 {
		delete(s.waiting, jobID)
	}
}

// CancelJob implements PlatformService.CancelJob.
func (s *Service) CancelJob(ctx context.Context, req *gbv1.CancelJobRequest) (*gbv1.CancelJobResponse, error) {
	var ref jobRef
	r, err := s.openAs(ctx, req.GetToken(), "canceljob", &ref)
	if err != nil {
		return nil, err
	}
	id, err := s.ownJob(ctx, r, ref)
	if err != nil {
		return nil, err
	}
	if err := s.d.UseToken(ctx, *r.tokenUse(s.cfg.Limits.Skew)); err != nil {
		return nil, s.tokenError(ctx, err)
	}
	cancelled := true
	if err := s.d.CancelJob(ctx, id, r.actor()); err != nil {
		if !errors.Is(err, broker.ErrFailedPrecondition) {
			return nil, rpcstatus.Error(ctx, s.log, err)
		}
		cancelled = false
	}
	st, _, err := s.db.JobState(ctx, id)
	if err != nil {
		return nil, rpcstatus.Error(ctx, s.log, err)
	}
	msg := "cancelled"
	if !cancelled {
		msg = fmt.Sprintf("not cancelled: the job is already %s", st)
	}
	return &gbv1.CancelJobResponse{JobId: id, State: protoconv.JobStateToProto(st), Message: msg}, nil
}

// peerKey carries the gateway caller's verified client certificate.
type peerKey struct{}

func peerFromContext(ctx context.Context) (certs.Identity, bool) {
	id, ok := ctx.Value(peerKey{}).(certs.Identity)
	return id, ok
}

// Handler returns the REST gateway: the PlatformService routes of
// gateway.yaml, GET /v1/keys, and the body size limit. Its errors are
// grpc-gateway's Status JSON with details always present (see
// gatewayError).
func (s *Service) Handler(ctx context.Context) (http.Handler, error) {
	marshaler := newGatewayJSON()
	mux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		runtime.WithErrorHandler(gatewayError))
	if err := gbv1.RegisterPlatformServiceHandlerServer(ctx, mux, s); err != nil {
		return nil, err
	}
	jwks, err := s.keys.JWKSWithSigner(s.cfg.Broker)
	if err != nil {
		return nil, err
	}
	if err := mux.HandlePath(http.MethodGet, "/v1/keys", func(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(jwks)
	}); err != nil {
		return nil, err
	}
	limit := int64(s.cfg.Limits.MaxTokenBytes) + 4096
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			// Refused unread: no use taking in megabytes to say so.
			gatewayError(r.Context(), mux, marshaler, w, r, tooLarge(limit))
			return
		}
		r.Body = &gatewayBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit)}
		mux.ServeHTTP(w, WithPeer(r))
	}), nil
}

// WithPeer returns r with the platform's verified client certificate, if
// it presented one, in its context, where Open looks for it when the
// broker requires platforms' certificates. Every edge adapter that takes
// platform requests over HTTPS passes its requests through it.
func WithPeer(r *http.Request) *http.Request {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		if id, err := certs.PeerIdentity(*r.TLS); err == nil {
			return r.WithContext(context.WithValue(r.Context(), peerKey{}, id))
		}
	}
	return r
}
