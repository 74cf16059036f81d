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

type operatorKey struct{}

// OperatorFromContext returns the operator who made the call ctx belongs to,
// as the interceptor put it there.
func OperatorFromContext(ctx context.Context) (broker.Operator, bool) {
	op, ok := ctx.Value(operatorKey{}).(broker.Operator)
	return op, ok
}

// UnaryInterceptor authenticates every AdminService call and passes every
// other call through untouched. The caller must present a client
// certificate of role operator that is registered as an operator; the
// operator then goes into the call's context (see OperatorFromContext) and
// into a log line per call.
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
		resp, err := handler(context.WithValue(ctx, operatorKey{}, op), req)
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
	if id.Role != certs.RoleOperator {
		what := "a certificate without a role"
		if id.Role != "" {
			what = "a " + string(id.Role) + " certificate"
		}
		return broker.Operator{}, fmt.Errorf("%w: %s (CN=%s) may not call the admin API; use an operator certificate (OU=operator)",
			broker.ErrPermissionDenied, what, id.CommonName)
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

// caller returns the operator making the call. The interceptor normally
// put it in the context already; if the Service was registered without the
// interceptor, the call is authenticated here instead, so that a wiring
// mistake fails closed rather than open.
func (s *Service) caller(ctx context.Context) (broker.Operator, error) {
	if op, ok := OperatorFromContext(ctx); ok {
		return op, nil
	}
	return s.authenticate(ctx)
}

// actor names an operator in job events and logs.
func actor(op broker.Operator) string { return "operator:" + op.Name }
