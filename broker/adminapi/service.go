// Package adminapi implements gradebroker.v1.AdminService, the operators'
// API: it checks who is calling, validates requests, calls the store and the
// dispatcher, and translates between protobuf and the domain. It holds no
// state and no SQL of its own.
package adminapi

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/rpcstatus"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Dispatcher is what the admin API needs of the live dispatcher
// (broker/dispatch implements it): it must hear of every change to a
// server's registration, and it alone moves jobs between states.
type Dispatcher interface {
	// ServerChanged re-reads the registration of server name and applies
	// it to the live connection, if any: a replaced certificate closes the
	// stream, a new type or limit changes what the server gets next. It is
	// called after the store committed an added or updated server, and for
	// every server of a server type whose tags changed. A name no longer
	// registered is treated as removed.
	ServerChanged(ctx context.Context, name string)
	// ServerRemoved closes the stream of server name and requeues the jobs
	// it was running, returning how many. It is called after the server's
	// registration was deleted, so that it cannot reconnect in between.
	ServerRemoved(ctx context.Context, name string) (requeued int)
	// ServerStatus tells whether server name is connected, the slots it
	// offers, how many jobs it runs and when it was last heard from; a
	// server the dispatcher does not know is not connected.
	ServerStatus(name string) (connected bool, slots, running int, lastSeen time.Time)
	// ServerHello returns the version and executors graderd reported when
	// server name last connected; both empty before it did.
	ServerHello(name string) (version string, executors []broker.Executor)
	// RequeueJob puts job id back in the queue on behalf of actor. It
	// returns ErrNotFound for an unknown job and ErrFailedPrecondition for
	// a job that cannot be requeued (done, or already queued).
	RequeueJob(ctx context.Context, id int64, actor string) error
	// CancelJob cancels job id on behalf of actor. It returns ErrNotFound
	// for an unknown job and ErrFailedPrecondition for a final one.
	CancelJob(ctx context.Context, id int64, actor string) error
	// QueueLength tells how many jobs of pull queue queue (an XQueue
	// queue) wait for a grader.
	QueueLength(queue string) int
	// IncidentDispatcher (ops.go) serves the incident commands.
	IncidentDispatcher
}

// Service implements gradebroker.v1.AdminService. Register it on a gRPC
// server whose unary interceptors include UnaryInterceptor.
type Service struct {
	gradebrokerv1.UnimplementedAdminServiceServer

	db  *store.DB
	ca  func() *x509.CertPool
	d   Dispatcher
	rd  Redeliverer
	log *slog.Logger
	now func() time.Time

	console *consoleState // console.go; nil while the console is off
	jobs    jobsState     // jobs.go
	// protocols are the platform protocols the broker delivers results
	// in; a platform may be registered with these only.
	protocols atomic.Pointer[[]broker.Protocol]
}

// Redeliverer schedules result callbacks again; the delivery worker
// implements it, so that a redelivery is tried at once rather than at the
// worker's next poll.
type Redeliverer interface {
	Redeliver(ctx context.Context, sel store.Redelivery) (int, error)
}

// SetRedeliverer sets what RedeliverDeliveries calls; without one, it only
// updates the database and the worker finds the deliveries at its next poll.
func (s *Service) SetRedeliverer(r Redeliverer) { s.rd = r }

// New returns the admin service. ca returns the CA pool that registered
// certificates must chain to; it is a function because the broker reloads
// its CA file without a restart (pass certs.Source.CAPool). log may be nil.
func New(db *store.DB, ca func() *x509.CertPool, d Dispatcher, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{db: db, ca: ca, d: d, log: log, now: time.Now}
	s.SetProtocols(broker.ProtocolGradebroker)
	return s
}

// SetProtocols sets the platform protocols the broker can deliver results
// in (the delivery worker's list), which platforms may be registered with;
// without a call, gradebroker's own only. Call it before serving.
func (s *Service) SetProtocols(ps ...broker.Protocol) {
	ps = slices.Clone(ps)
	s.protocols.Store(&ps)
}

// Register registers the service on r.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	gradebrokerv1.RegisterAdminServiceServer(r, s)
}

// fail translates err for the client.
func (s *Service) fail(ctx context.Context, err error) error {
	return rpcstatus.Error(ctx, s.log, err)
}

// checkCert verifies a certificate PEM from a request against the current CA.
func (s *Service) checkCert(pemData string, role certs.Role) (broker.CertIdentity, error) {
	return CheckCertificate([]byte(pemData), s.ca(), role, s.now())
}

// --- platforms ---

// AddPlatform registers a platform after checking its name, key, return URL,
// paths, force tag and optional certificate.
func (s *Service) AddPlatform(ctx context.Context, req *gradebrokerv1.AddPlatformRequest) (*gradebrokerv1.AddPlatformResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	p := broker.Platform{
		Name:          req.GetName(),
		Protocol:      broker.Protocol(req.GetProtocol()),
		PublicKeyPEM:  req.GetPublicKeyPem(),
		ReturnURL:     req.GetReturnUrl(),
		RestrictPaths: req.GetRestrictPaths(),
		ForceTag:      req.GetForceTag(),
		LegacyTokens:  req.GetLegacyTokens(),
	}
	if p.Protocol == "" {
		p.Protocol = broker.ProtocolGradebroker
	}
	if p.Protocol == "" {
		p.Protocol = broker.ProtocolGradebroker
	}
	err := firstError(
		func() error { return broker.CheckName("platform", p.Name) },
		func() error { return s.checkProtocol(p.Protocol) },
		func() error { return checkPlatformNeeds(p) },
		func() error { return checkRestrictPaths(p.RestrictPaths) },
		func() error { return checkOptionalTag(p.ForceTag) },
	)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if req.GetCertificatePem() != "" {
		c, err := s.checkCert(req.GetCertificatePem(), certs.RolePlatform)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		p.Cert = &c
	}
	p, err = s.db.AddPlatform(ctx, p)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AddPlatformResponse{Platform: protoconv.PlatformToProto(p)}, nil
}

// UpdatePlatform changes the fields the request sets.
func (s *Service) UpdatePlatform(ctx context.Context, req *gradebrokerv1.UpdatePlatformRequest) (*gradebrokerv1.UpdatePlatformResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("platform", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	var u store.PlatformUpdate
	if req.Protocol != nil {
		proto := broker.Protocol(req.GetProtocol())
		if proto == "" {
			proto = broker.ProtocolGradebroker
		}
		if err := s.checkProtocol(proto); err != nil {
			return nil, s.fail(ctx, err)
		}
		// What the new protocol needs may be in the request or already
		// registered: check the platform as it will be.
		cur, err := s.db.PlatformByName(ctx, req.GetName())
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		cur.Protocol = proto
		if req.PublicKeyPem != nil {
			cur.PublicKeyPEM = req.GetPublicKeyPem()
		}
		if req.ReturnUrl != nil {
			cur.ReturnURL = req.GetReturnUrl()
		}
		if err := checkPlatformNeeds(cur); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.Protocol = &proto
	}
	if req.PublicKeyPem != nil {
		if err := checkPublicKey(req.GetPublicKeyPem()); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.PublicKeyPEM = req.PublicKeyPem
	}
	if req.ReturnUrl != nil {
		if err := checkReturnURL(req.GetReturnUrl()); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.ReturnURL = req.ReturnUrl
	}
	if req.RestrictPaths != nil {
		paths := req.GetRestrictPaths().GetValues()
		if err := checkRestrictPaths(paths); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.RestrictPaths = &paths
	}
	if req.ForceTag != nil {
		if err := checkOptionalTag(req.GetForceTag()); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.ForceTag = req.ForceTag
	}
	if req.CertificatePem != nil {
		var c *broker.CertIdentity
		if req.GetCertificatePem() != "" {
			id, err := s.checkCert(req.GetCertificatePem(), certs.RolePlatform)
			if err != nil {
				return nil, s.fail(ctx, err)
			}
			c = &id
		}
		u.Cert = &c
	}
	u.LegacyTokens = req.LegacyTokens
	p, err := s.db.UpdatePlatform(ctx, req.GetName(), u)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.UpdatePlatformResponse{Platform: protoconv.PlatformToProto(p)}, nil
}

// ListPlatforms lists every registered platform by name (not the
// console's built-in one).
func (s *Service) ListPlatforms(ctx context.Context, _ *gradebrokerv1.ListPlatformsRequest) (*gradebrokerv1.ListPlatformsResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	ps, err := s.db.ListPlatforms(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListPlatformsResponse{}
	for _, p := range ps {
		if p.Name == broker.ConsolePlatform {
			// Built in, not registered: nothing to add, change or remove.
			continue
		}
		out.Platforms = append(out.Platforms, protoconv.PlatformToProto(p))
	}
	return out, nil
}

// RemovePlatform removes a platform that has no unfinished jobs.
func (s *Service) RemovePlatform(ctx context.Context, req *gradebrokerv1.RemovePlatformRequest) (*gradebrokerv1.RemovePlatformResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("platform", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.db.RemovePlatform(ctx, req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.RemovePlatformResponse{}, nil
}

// --- servers ---

// AddServer registers a grading server with its certificate, which must be a
// server certificate from the broker's CA, and tells the dispatcher.
func (s *Service) AddServer(ctx context.Context, req *gradebrokerv1.AddServerRequest) (*gradebrokerv1.AddServerResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	err := firstError(
		func() error { return broker.CheckName("server", req.GetName()) },
		func() error { return broker.CheckName("server type", req.GetType()) },
		func() error { return checkWakeupURL(req.GetWakeupUrl()) },
	)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	c, err := s.checkCert(req.GetCertificatePem(), certs.RoleServer)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	maxJobs := int(req.GetMaxConcurrentJobs())
	if maxJobs == 0 {
		maxJobs = 1
	}
	srv, err := s.db.AddServer(ctx, broker.Server{
		Name:              req.GetName(),
		Cert:              c,
		Type:              req.GetType(),
		MaxConcurrentJobs: maxJobs,
		WakeupURL:         req.GetWakeupUrl(),
	})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.d.ServerChanged(ctx, srv.Name)
	return &gradebrokerv1.AddServerResponse{Server: s.serverToProto(srv)}, nil
}

// UpdateServer changes the fields the request sets and tells the
// dispatcher, which applies them to the live connection.
func (s *Service) UpdateServer(ctx context.Context, req *gradebrokerv1.UpdateServerRequest) (*gradebrokerv1.UpdateServerResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("server", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	var u store.ServerUpdate
	if req.CertificatePem != nil {
		c, err := s.checkCert(req.GetCertificatePem(), certs.RoleServer)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		u.Cert = &c
	}
	if req.Type != nil {
		if err := broker.CheckName("server type", req.GetType()); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.Type = req.Type
	}
	if req.MaxConcurrentJobs != nil {
		n := int(req.GetMaxConcurrentJobs())
		if n == 0 {
			return nil, s.fail(ctx, fmt.Errorf("%w: max_concurrent_jobs must be at least 1; to stop giving a server jobs, remove it or have graderd drain (slots 0)", broker.ErrInvalid))
		}
		u.MaxConcurrentJobs = &n
	}
	if req.WakeupUrl != nil {
		if err := checkWakeupURL(req.GetWakeupUrl()); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.WakeupURL = req.WakeupUrl
	}
	srv, err := s.db.UpdateServer(ctx, req.GetName(), u)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.d.ServerChanged(ctx, srv.Name)
	return &gradebrokerv1.UpdateServerResponse{Server: s.serverToProto(srv)}, nil
}

// ListServers lists every server with its registration and, from the
// dispatcher, its connection state.
func (s *Service) ListServers(ctx context.Context, _ *gradebrokerv1.ListServersRequest) (*gradebrokerv1.ListServersResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	srvs, err := s.db.ListServers(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListServersResponse{}
	for _, srv := range srvs {
		out.Servers = append(out.Servers, s.serverToProto(srv))
	}
	return out, nil
}

// serverToProto adds the dispatcher's live view to a stored server. The
// stored last_seen lags (it is written in batches), so the later of the two
// is shown.
func (s *Service) serverToProto(srv broker.Server) *gradebrokerv1.Server {
	connected, slots, running, lastSeen := s.d.ServerStatus(srv.Name)
	if lastSeen.After(srv.LastSeen) {
		srv.LastSeen = lastSeen
	}
	p := protoconv.ServerToProto(srv)
	p.Connected = connected
	p.Slots = protoconv.Count(slots)
	p.Running = protoconv.Count(running)
	p.Drained = s.d.ServerDrained(srv.Name)
	var executors []broker.Executor
	p.Version, executors = s.d.ServerHello(srv.Name)
	p.Executors = protoconv.ExecutorsToProto(executors)
	return p
}

// RemoveServer deletes a server's registration, then has the dispatcher
// close its stream and requeue its jobs.
func (s *Service) RemoveServer(ctx context.Context, req *gradebrokerv1.RemoveServerRequest) (*gradebrokerv1.RemoveServerResponse, error) {
	op, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("server", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	// Deleting first means that the server, once its stream is closed,
	// cannot reconnect and take new jobs before the row is gone.
	if err := s.db.RemoveServer(ctx, req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	n := s.d.ServerRemoved(ctx, req.GetName())
	s.log.InfoContext(ctx, "server removed", "server", req.GetName(), "operator", op.Name, "requeued", n)
	return &gradebrokerv1.RemoveServerResponse{Requeued: protoconv.Count(n)}, nil
}

// --- tags ---

// AddTag registers a tag.
func (s *Service) AddTag(ctx context.Context, req *gradebrokerv1.AddTagRequest) (*gradebrokerv1.AddTagResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if len(req.GetDescription()) > maxDescription {
		return nil, s.fail(ctx, fmt.Errorf("%w: description is %d bytes; keep it under %d", broker.ErrInvalid, len(req.GetDescription()), maxDescription))
	}
	t, err := s.db.AddTag(ctx, req.GetName(), req.GetDescription())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AddTagResponse{Tag: protoconv.TagToProto(t)}, nil
}

// ListTags lists every tag by name.
func (s *Service) ListTags(ctx context.Context, _ *gradebrokerv1.ListTagsRequest) (*gradebrokerv1.ListTagsResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	tags, err := s.db.ListTags(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListTagsResponse{}
	for _, t := range tags {
		out.Tags = append(out.Tags, protoconv.TagToProto(t))
	}
	return out, nil
}

// RemoveTag removes a tag nothing uses.
func (s *Service) RemoveTag(ctx context.Context, req *gradebrokerv1.RemoveTagRequest) (*gradebrokerv1.RemoveTagResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("tag", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.db.RemoveTag(ctx, req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.RemoveTagResponse{}, nil
}

// --- server types ---

// AddServerType registers a server type; every tag must be registered.
func (s *Service) AddServerType(ctx context.Context, req *gradebrokerv1.AddServerTypeRequest) (*gradebrokerv1.AddServerTypeResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	t, err := s.db.AddServerType(ctx, req.GetName(), req.GetTags())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AddServerTypeResponse{ServerType: protoconv.ServerTypeToProto(t)}, nil
}

// UpdateServerType replaces a type's tags and tells the dispatcher about
// every server of that type, whose coverage just changed.
func (s *Service) UpdateServerType(ctx context.Context, req *gradebrokerv1.UpdateServerTypeRequest) (*gradebrokerv1.UpdateServerTypeResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("server type", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	t, err := s.db.UpdateServerType(ctx, req.GetName(), req.GetTags())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	srvs, err := s.db.ListServers(ctx)
	if err != nil {
		// The change is committed; only the live view lags until the
		// servers reconnect, so report success and log the failure.
		s.log.ErrorContext(ctx, "listing servers after a type change", "type", t.Name, "err", err)
	}
	for _, srv := range srvs {
		if srv.Type == t.Name {
			s.d.ServerChanged(ctx, srv.Name)
		}
	}
	return &gradebrokerv1.UpdateServerTypeResponse{ServerType: protoconv.ServerTypeToProto(t)}, nil
}

// ListServerTypes lists every server type by name.
func (s *Service) ListServerTypes(ctx context.Context, _ *gradebrokerv1.ListServerTypesRequest) (*gradebrokerv1.ListServerTypesResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	types, err := s.db.ListServerTypes(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListServerTypesResponse{}
	for _, t := range types {
		out.ServerTypes = append(out.ServerTypes, protoconv.ServerTypeToProto(t))
	}
	return out, nil
}

// RemoveServerType removes a type no server uses.
func (s *Service) RemoveServerType(ctx context.Context, req *gradebrokerv1.RemoveServerTypeRequest) (*gradebrokerv1.RemoveServerTypeResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("server type", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.db.RemoveServerType(ctx, req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.RemoveServerTypeResponse{}, nil
}

// --- operators ---

// AddOperator registers another operator; the certificate must be an
// operator certificate from the broker's CA.
func (s *Service) AddOperator(ctx context.Context, req *gradebrokerv1.AddOperatorRequest) (*gradebrokerv1.AddOperatorResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("operator", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	c, err := s.checkCert(req.GetCertificatePem(), certs.RoleOperator)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	op, err := s.db.AddOperator(ctx, req.GetName(), c)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AddOperatorResponse{Operator: protoconv.OperatorToProto(op)}, nil
}

// ListOperators lists every operator by name.
func (s *Service) ListOperators(ctx context.Context, _ *gradebrokerv1.ListOperatorsRequest) (*gradebrokerv1.ListOperatorsResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	ops, err := s.db.ListOperators(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListOperatorsResponse{}
	for _, op := range ops {
		out.Operators = append(out.Operators, protoconv.OperatorToProto(op))
	}
	return out, nil
}

// RemoveOperator removes an operator other than the last one.
func (s *Service) RemoveOperator(ctx context.Context, req *gradebrokerv1.RemoveOperatorRequest) (*gradebrokerv1.RemoveOperatorResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("operator", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.db.RemoveOperator(ctx, req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.RemoveOperatorResponse{}, nil
}

// --- jobs ---

// ListJobs lists jobs newest first, filtered and paged as the request says.
func (s *Service) ListJobs(ctx context.Context, req *gradebrokerv1.ListJobsRequest) (*gradebrokerv1.ListJobsResponse, error) {
	p, err := s.reader(ctx, true)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	f := store.JobFilter{
		State:         protoconv.JobStateFromProto(req.GetState()),
		Platform:      req.GetPlatform(),
		Server:        req.GetServer(),
		Tag:           req.GetTag(),
		CreatedAfter:  timeOf(req.GetCreatedAfter()),
		CreatedBefore: timeOf(req.GetCreatedBefore()),
		Search:        req.GetSearch(),
		Limit:         int(req.GetLimit()),
		BeforeID:      req.GetBeforeId(),
		AfterID:       req.GetAfterId(),
	}
	if err := scopeFilter(p, &f); err != nil {
		return nil, s.fail(ctx, err)
	}
	jobs, err := s.db.ListJobs(ctx, f)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListJobsResponse{}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, protoconv.JobToProto(j))
	}
	return out, nil
}

// GetJob shows one job with its data, attempts and events.
func (s *Service) GetJob(ctx context.Context, req *gradebrokerv1.AdminServiceGetJobRequest) (*gradebrokerv1.AdminServiceGetJobResponse, error) {
	p, err := s.reader(ctx, true)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := checkJobID(req.GetId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	j, err := s.visibleJob(ctx, p, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AdminServiceGetJobResponse{Job: protoconv.JobToProto(j)}, nil
}

// RequeueJob has the dispatcher requeue a job and returns it afterwards.
func (s *Service) RequeueJob(ctx context.Context, req *gradebrokerv1.RequeueJobRequest) (*gradebrokerv1.RequeueJobResponse, error) {
	op, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	j, err := s.jobAction(ctx, req.GetId(), func() error { return s.d.RequeueJob(ctx, req.GetId(), actor(op)) })
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.RequeueJobResponse{Job: protoconv.JobToProto(j)}, nil
}

// CancelJob has the dispatcher cancel a job and returns it afterwards.
func (s *Service) CancelJob(ctx context.Context, req *gradebrokerv1.AdminServiceCancelJobRequest) (*gradebrokerv1.AdminServiceCancelJobResponse, error) {
	op, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	j, err := s.jobAction(ctx, req.GetId(), func() error { return s.d.CancelJob(ctx, req.GetId(), actor(op)) })
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AdminServiceCancelJobResponse{Job: protoconv.JobToProto(j)}, nil
}

// jobAction checks id, runs act and reads the job back. The job is looked
// up first so that an unknown id says "job N" whatever the dispatcher's own
// message would be.
func (s *Service) jobAction(ctx context.Context, id int64, act func() error) (broker.Job, error) {
	if err := checkJobID(id); err != nil {
		return broker.Job{}, err
	}
	if _, err := s.db.GetJob(ctx, id); err != nil {
		return broker.Job{}, err
	}
	if err := act(); err != nil {
		return broker.Job{}, err
	}
	return s.db.GetJob(ctx, id)
}

// --- helpers ---

// checkOptionalTag checks a force tag's spelling; the store checks that it
// exists.
func checkOptionalTag(name string) error {
	if name == "" {
		return nil
	}
	return broker.CheckName("tag", name)
}

// firstError runs checks in order and returns the first failure, so that
// the caller hears about the first field that is wrong.
func firstError(checks ...func() error) error {
	for _, c := range checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

// ListDeliveries implements AdminService.ListDeliveries.
func (s *Service) ListDeliveries(ctx context.Context, req *gradebrokerv1.ListDeliveriesRequest) (*gradebrokerv1.ListDeliveriesResponse, error) {
	p, err := s.reader(ctx, true)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if p.Scoped() {
		// A scoped viewer sees the deliveries of a job it may see.
		if req.GetJobId() == 0 {
			return nil, s.fail(ctx, fmt.Errorf("%w: %s sees only %s; ask for the deliveries of one of them", broker.ErrPermissionDenied, p.Name, p.scopeText()))
		}
		if _, err := s.visibleJob(ctx, p, req.GetJobId()); err != nil {
			return nil, s.fail(ctx, err)
		}
	}
	ds, err := s.db.ListDeliveries(ctx, store.DeliveryFilter{State: broker.DeliveryState(req.GetState()),
		Platform: req.GetPlatform(), JobID: req.GetJobId(), Limit: int(req.GetLimit()), BeforeID: req.GetBeforeId()})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListDeliveriesResponse{}
	for _, d := range ds {
		out.Deliveries = append(out.Deliveries, protoconv.DeliveryToProto(d))
	}
	return out, nil
}

// RedeliverDeliveries implements AdminService.RedeliverDeliveries.
func (s *Service) RedeliverDeliveries(ctx context.Context, req *gradebrokerv1.RedeliverDeliveriesRequest) (*gradebrokerv1.RedeliverDeliveriesResponse, error) {
	op, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	sel := store.Redelivery{IDs: req.GetIds(), Platform: req.GetPlatform(), AllDead: req.GetAllDead()}
	var n int
	if s.rd != nil {
		n, err = s.rd.Redeliver(ctx, sel)
	} else {
		n, err = s.db.Redeliver(ctx, sel)
	}
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "deliveries scheduled again", "operator", op.Name, "count", n)
	return &gradebrokerv1.RedeliverDeliveriesResponse{Redelivered: protoconv.Count(n)}, nil
}
