package adminapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/rpcstatus"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// methodPrefix selects the calls the interceptor guards: the broker's one
// gRPC server also carries GraderService, whose callers are servers.
var methodPrefix = "/" + gradebrokerv1.AdminService_ServiceDesc.ServiceName + "/"

type principalKey struct{}

// Role is what a caller of the admin service may do.
type Role string

// The roles.
const (
	// RoleOperator may do everything.
	RoleOperator Role = "operator"
	// RoleViewer may look and change nothing; a viewer may further be
	// scoped to one platform or to a set of tags (Principal.Platform,
	// Principal.Tags).
	RoleViewer Role = "viewer"
)

// The ways a principal reaches the admin service, the first half of the
// actor its actions are recorded under.
const (
	// ViaAdminAPI is the gRPC admin API with an operator certificate.
	ViaAdminAPI = "operator"
	// ViaConsole is a web console session.
	ViaConsole = "console"
)

// Principal is who makes a call: an operator over the admin API, or the
// holder of a web console session, with its role and scope. The admin
// service decides from it what the call may do and see; every action is
// recorded under its Actor.
type Principal struct {
	// Name is the operator's name, or a viewer's.
	Name string
	Role Role
	// Via is ViaAdminAPI or ViaConsole.
	Via string
	// Platform scopes a viewer to one platform's jobs.
	Platform string
	// Tags scope a viewer to the jobs that carry at least one of them.
	Tags []string
	// SessionID is the console session, for ViaConsole.
	SessionID int64
}

// Actor names the principal in job events and logs: "operator:NAME" over
// the admin API, "console:NAME" from the web console.
func (p Principal) Actor() string { return p.Via + ":" + p.Name }

// Scoped reports whether the principal sees only part of the jobs.
func (p Principal) Scoped() bool { return p.Platform != "" || len(p.Tags) > 0 }

// WithPrincipal returns ctx carrying p, for calls made in-process on p's
// behalf (the web console calls the service this way, after checking the
// session; the gRPC interceptor does it after checking the certificate).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFromContext returns who makes the call ctx belongs to.
func PrincipalFromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// UnaryInterceptor authenticates every AdminService call and passes every
// other call through untouched. The caller must present a client
// certificate of role operator that is registered as an operator; the
// operator then goes into the call's context as a Principal (see
// PrincipalFromContext) and into a log line per call.
func (s *Service) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, methodPrefix) {
			return handler(ctx, req)
		}
		start := time.Now()
		op, err := s.authenticate(ctx)
		if err != nil {
			s.log.WarnContext(ctx, "admin call refused", "method", info.FullMethod, "err", err)
			return nil, rpcstatus.Error(ctx, s.log, err)
		}
		resp, err := handler(WithPrincipal(ctx, Principal{Name: op.Name, Role: RoleOperator, Via: ViaAdminAPI}), req)
		s.log.InfoContext(ctx, "admin call", "method", strings.TrimPrefix(info.FullMethod, methodPrefix),
			"operator", op.Name, "code", rpcstatus.Code(err).String(), "duration", time.Since(start))
		return resp, err
	}
}

// authenticate finds the registered operator behind the call's client
// certificate. Its errors are domain errors that say what the caller should
// do.
func (s *Service) authenticate(ctx context.Context) (broker.Operator, error) {
	id, err := certs.PeerIdentityFromContext(ctx)
	if err != nil {
		return broker.Operator{}, fmt.Errorf("%w: %v; the admin API needs an operator certificate issued by the broker's CA (broker admin --cert/--key)",
			broker.ErrUnauthenticated, err)
	}
	return s.operatorOf(ctx, id, "call the admin API")
}

// operatorOf finds the registered operator whose certificate id is; what
// says what the certificate was presented for, in errors.
func (s *Service) operatorOf(ctx context.Context, id certs.Identity, what string) (broker.Operator, error) {
	if id.Role != certs.RoleOperator {
		kind := "a certificate without a role"
		if id.Role != "" {
			kind = "a " + string(id.Role) + " certificate"
		}
		return broker.Operator{}, fmt.Errorf("%w: %s (CN=%s) may not %s; use an operator certificate (OU=operator)",
			broker.ErrPermissionDenied, kind, id.CommonName, what)
	}
	op, err := s.db.OperatorByFingerprint(ctx, id.Fingerprint)
	if errors.Is(err, broker.ErrNotFound) {
		return broker.Operator{}, fmt.Errorf("%w: certificate CN=%s serial %s is not registered as an operator; "+
			"bootstrap one with 'broker admin bootstrap', or have an operator run 'broker admin operator add'",
			broker.ErrUnauthenticated, id.CommonName, id.Serial)
	}
	if err != nil {
		return broker.Operator{}, err
	}
	return op, nil
}

// principal returns who makes the call. The interceptor (or the console)
// normally put it in the context already; if the Service was registered
// without the interceptor, the call is authenticated here instead, so that
// a wiring mistake fails closed rather than open.
func (s *Service) principal(ctx context.Context) (Principal, error) {
	if p, ok := PrincipalFromContext(ctx); ok {
		return p, nil
	}
	op, err := s.authenticate(ctx)
	if err != nil {
		return Principal{}, err
	}
	return Principal{Name: op.Name, Role: RoleOperator, Via: ViaAdminAPI}, nil
}

// caller returns the principal making a call that changes something: it
// must be an operator.
func (s *Service) caller(ctx context.Context) (Principal, error) {
	p, err := s.principal(ctx)
	if err != nil {
		return Principal{}, err
	}
	if p.Role != RoleOperator {
		return Principal{}, fmt.Errorf("%w: %s is a viewer: viewers may look but not change anything; ask an operator",
			broker.ErrPermissionDenied, p.Name)
	}
	return p, nil
}

// reader returns the principal making a call that only reads: an operator
// or a viewer. Views of the whole broker (servers, queues, the registry,
// deliveries, alerts) are closed to a scoped viewer, who sees their own
// jobs and nothing else.
func (s *Service) reader(ctx context.Context, scopedOK bool) (Principal, error) {
	p, err := s.principal(ctx)
	if err != nil {
		return Principal{}, err
	}
	if !scopedOK && p.Scoped() {
		return Principal{}, fmt.Errorf("%w: %s sees only %s; this view shows the whole broker",
			broker.ErrPermissionDenied, p.Name, p.scopeText())
	}
	return p, nil
}

// scopeText says what a scoped principal sees, for messages.
func (p Principal) scopeText() string {
	if p.Platform != "" {
		return "the jobs of platform " + p.Platform
	}
	return "the jobs tagged " + strings.Join(p.Tags, " or ")
}

// actor names a principal in job events and logs.
func actor(p Principal) string { return p.Actor() }
