// Package graderapi is gradebroker.v1.GraderService: it carries each
// graderd's Connect stream to and from a dispatch.Session. It checks the
// peer's certificate and translates messages; every rule (who the server
// is, which leases it keeps, what it gets next) is the dispatcher's.
package graderapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/rpcstatus"
	"github.com/gradebroker/gradebroker/certs"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// helloTimeout is how long a new stream may take to send its Hello.
const helloTimeout = 30 * time.Second

// Server implements GraderService over a dispatcher.
type Server struct {
	gbv1.UnimplementedGraderServiceServer

	d   *dispatch.Dispatcher
	log *slog.Logger

	stopOnce sync.Once
	stopping chan struct{}
}

// New returns the GraderService of d. log may be nil.
func New(d *dispatch.Dispatcher, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{d: d, log: log, stopping: make(chan struct{})}
}

// Register registers the service on g.
func (s *Server) Register(g *grpc.Server) { gbv1.RegisterGraderServiceServer(g, s) }

// Stop ends every stream, telling graderd that the broker is shutting down
// (Unavailable), and refuses new ones: so that a graceful stop of the gRPC
// server does not wait for streams that last for days. The servers' leases
// wait the reconnect grace as after any disconnection. It is idempotent.
func (s *Server) Stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

var errStopping = status.Error(codes.Unavailable, "the broker is shutting down; reconnect later")

// Connect implements gradebroker.v1.GraderService/Connect.
func (s *Server) Connect(stream gbv1.GraderService_ConnectServer) error {
	ctx := stream.Context()
	id, err := certs.PeerIdentityFromContext(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "no verified client certificate: %v", err)
	}
	if id.Role != certs.RoleServer {
		return status.Errorf(codes.PermissionDenied, "certificate %s has role %q; only server certificates may connect as a grading server", id.Subject, id.Role)
	}
	select {
	case <-s.stopping:
		return errStopping
	default:
	}
	hello, err := recvHello(ctx, stream)
	if err != nil {
		return err
	}
	if hello.GetProbe() {
		// A connection test: answer and leave the live stream alone.
		w, err := s.d.Probe(ctx, id.Fingerprint)
		if err != nil {
			return s.refusal(ctx, id, err)
		}
		return stream.Send(welcome(w))
	}
	sess, w, err := s.d.Open(ctx, id.Fingerprint, helloOf(hello))
	if err != nil {
		return s.refusal(ctx, id, err)
	}
	if err := stream.Send(welcome(w)); err != nil {
		sess.Close(err)
		return err
	}
	return s.serve(ctx, stream, sess)
}

// recvHello waits for the stream's first message, which must be a Hello.
func recvHello(ctx context.Context, stream gbv1.GraderService_ConnectServer) (*gbv1.Hello, error) {
	type recv struct {
		m   *gbv1.ConnectRequest
		err error
	}
	got := make(chan recv, 1)
	go func() {
		m, err := stream.Recv()
		got <- recv{m, err}
	}()
	t := time.NewTimer(helloTimeout)
	defer t.Stop()
	select {
	case r := <-got:
		if r.err != nil {
			return nil, r.err
		}
		if h := r.m.GetHello(); h != nil {
			return h, nil
		}
		return nil, status.Error(codes.InvalidArgument, "the first message on the stream must be Hello")
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %s", helloTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refusal turns the dispatcher's refusal of a session into the stream's
// status.
func (s *Server) refusal(ctx context.Context, id certs.Identity, err error) error {
	if errors.Is(err, broker.ErrNotFound) {
		return status.Errorf(codes.Unauthenticated, "certificate %s (serial %s) is not registered as a server; register it with 'broker admin server add NAME --cert FILE --type TYPE'", id.Subject, id.Serial)
	}
	return rpcstatus.Error(ctx, s.log, err)
}

// serve carries sess over stream until either side ends it.
func (s *Server) serve(ctx context.Context, stream gbv1.GraderService_ConnectServer, sess *dispatch.Session) error {
	sendErr := make(chan error, 1)
	go func() { sendErr <- send(ctx, stream, sess) }()
	recvErr := make(chan error, 1)
	go func() { recvErr <- receive(stream, sess) }()

	var end error
	select {
	case end = <-recvErr:
	case end = <-sendErr:
	case <-sess.Done():
	case <-s.stopping:
		end = errStopping
	}
	sess.Close(end)
	if err := sess.Err(); err != nil {
		// The dispatcher ended the session: say why.
		return rpcstatus.Error(ctx, s.log, err)
	}
	if end == nil || errors.Is(end, io.EOF) || errors.Is(end, context.Canceled) || status.Code(end) == codes.Canceled {
		return nil
	}
	return end
}

// send sends what the session has for the server, as it comes.
func send(ctx context.Context, stream gbv1.GraderService_ConnectServer, sess *dispatch.Session) error {
	for {
		select {
		case <-sess.Done():
			return nil
		case <-ctx.Done():
			return nil
		case <-sess.Ready():
		}
		for _, m := range sess.Messages() {
			if err := stream.Send(response(m)); err != nil {
				return err
			}
		}
	}
}

// receive hands the server's messages to the session until the stream ends.
func receive(stream gbv1.GraderService_ConnectServer, sess *dispatch.Session) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		switch msg := m.Msg.(type) {
		case *gbv1.ConnectRequest_Result:
			sess.Result(resultOf(msg.Result))
		case *gbv1.ConnectRequest_Heartbeat:
			sess.Heartbeat(dispatch.Heartbeat{Running: refsOf(msg.Heartbeat.GetRunning()),
				AssignsReceived: msg.Heartbeat.GetAssignsReceived()})
		case *gbv1.ConnectRequest_Slots:
			sess.SetSlots(int(msg.Slots.GetSlots()))
		case *gbv1.ConnectRequest_Hello:
			return status.Error(codes.InvalidArgument, "Hello may only be the first message")
		default:
			return status.Error(codes.InvalidArgument, "empty or unknown message")
		}
	}
}

func helloOf(h *gbv1.Hello) dispatch.Hello {
	return dispatch.Hello{Slots: int(h.GetSlots()), Held: refsOf(h.GetRunning()), Hostname: h.GetHostname(), Version: h.GetVersion(),
		Executors: protoconv.ExecutorsFromProto(h.GetExecutors())}
}

func refsOf(rs []*gbv1.LeaseRef) []dispatch.LeaseRef {
	out := make([]dispatch.LeaseRef, len(rs))
	for i, r := range rs {
		out[i] = dispatch.LeaseRef{JobID: r.GetJobId(), LeaseID: r.GetLeaseId()}
	}
	return out
}

func resultOf(r *gbv1.Result) dispatch.Result {
	return dispatch.Result{Lease: dispatch.LeaseRef{JobID: r.GetJobId(), LeaseID: r.GetLeaseId()},
		Outcome: broker.Outcome(r.GetOutcome()), Result: r.GetResult(), Log: r.GetLog(), Error: r.GetError(),
		Usage: protoconv.UsageFromProto(r.GetUsage()), Limit: protoconv.LimitFromProto(r.GetLimit())}
}

func ref(r dispatch.LeaseRef) *gbv1.LeaseRef {
	return &gbv1.LeaseRef{JobId: r.JobID, LeaseId: r.LeaseID}
}

func welcome(w dispatch.Welcome) *gbv1.ConnectResponse {
	return &gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Welcome{Welcome: &gbv1.Welcome{
		Server: w.Server, Type: w.Type, Tags: w.Tags, HeartbeatInterval: durationpb.New(w.HeartbeatInterval),
		MaxConcurrentJobs: uint32(w.MaxConcurrentJobs)}}}
}

// response translates one of the session's messages.
func response(m dispatch.Message) *gbv1.ConnectResponse {
	switch m := m.(type) {
	case *dispatch.Assign:
		return &gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Assign{Assign: &gbv1.Assign{
			JobId: m.Lease.JobID, LeaseId: m.Lease.LeaseID, Attempt: uint32(m.Attempt), Name: m.Name, Jobdata: m.JobData,
			Tags: m.Tags, Timeout: durationpb.New(m.Timeout), Deadline: timestamppb.New(m.Deadline), RestrictPaths: m.RestrictPaths}}}
	case *dispatch.Ack:
		leases := make([]*gbv1.LeaseRef, len(m.Leases))
		for i, l := range m.Leases {
			leases[i] = ref(l)
		}
		return &gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Ack{Ack: &gbv1.Ack{Leases: leases}}}
	case *dispatch.Reject:
		return &gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Reject{Reject: &gbv1.Reject{
			Lease: ref(m.Lease), Code: int32(codes.FailedPrecondition), Message: m.Reason}}}
	case *dispatch.Cancel:
		return &gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Cancel{Cancel: &gbv1.Cancel{
			Lease: ref(m.Lease), Reason: m.Reason}}}
	}
	panic("graderapi: unknown dispatch message")
}
