package adminapi

import (
	"context"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// IncidentDispatcher is what the incident commands need of the live
// dispatcher (broker/dispatch implements it).
type IncidentDispatcher interface {
	// RequeueServerJobs takes every running job back from server name on
	// behalf of actor, as an operator's requeue of each, and returns how
	// many. It returns ErrNotFound for a server it does not know.
	RequeueServerJobs(ctx context.Context, name, actor string) (int, error)
	// DrainServer stops (drain) or resumes (!drain) giving server name new
	// jobs, on behalf of actor; its running jobs finish. It returns
	// ErrNotFound for a server it does not know.
	DrainServer(ctx context.Context, name string, drain bool, actor string) error
	// ServerDrained reports whether an operator drained server name.
	ServerDrained(name string) bool
	// QueueStats returns the queue per registered server type.
	QueueStats(ctx context.Context) (dispatch.QueueStats, error)
}

// RequeueServerJobs has the dispatcher take every running job back from a
// server.
func (s *Service) RequeueServerJobs(ctx context.Context, req *gradebrokerv1.RequeueServerJobsRequest) (*gradebrokerv1.RequeueServerJobsResponse, error) {
	op, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("server", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	// The registration says "not found" in the store's words, whatever the
	// dispatcher knows.
	if _, err := s.db.ServerByName(ctx, req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	n, err := s.d.RequeueServerJobs(ctx, req.GetName(), actor(op))
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "server's jobs requeued", "server", req.GetName(), "operator", op.Name, "requeued", n)
	return &gradebrokerv1.RequeueServerJobsResponse{Requeued: protoconv.Count(n)}, nil
}

// DrainServer has the dispatcher drain or undrain a server and returns the
// server afterwards.
func (s *Service) DrainServer(ctx context.Context, req *gradebrokerv1.DrainServerRequest) (*gradebrokerv1.DrainServerResponse, error) {
	op, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("server", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	srv, err := s.db.ServerByName(ctx, req.GetName())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.d.DrainServer(ctx, req.GetName(), !req.GetUndrain(), actor(op)); err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "server drain changed", "server", req.GetName(), "operator", op.Name, "drained", !req.GetUndrain())
	return &gradebrokerv1.DrainServerResponse{Server: s.serverToProto(srv)}, nil
}

// GetQueueStats returns the dispatcher's queue per server type.
func (s *Service) GetQueueStats(ctx context.Context, _ *gradebrokerv1.GetQueueStatsRequest) (*gradebrokerv1.GetQueueStatsResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	st, err := s.d.QueueStats(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return QueueStatsToProto(st), nil
}

// QueueStatsToProto converts the dispatcher's queue statistics.
func QueueStatsToProto(st dispatch.QueueStats) *gradebrokerv1.GetQueueStatsResponse {
	out := &gradebrokerv1.GetQueueStatsResponse{Waiting: protoconv.Count(st.Waiting), Running: protoconv.Count(st.Running)}
	for _, t := range st.Types {
		tq := &gradebrokerv1.TypeQueueStats{
			Type:      t.Type,
			Tags:      t.Tags,
			Waiting:   protoconv.Count(t.Waiting),
			Running:   protoconv.Count(t.Running),
			Connected: protoconv.Count(t.Connected),
			Drained:   protoconv.Count(t.Drained),
			FreeSlots: protoconv.Count(t.FreeSlots),
		}
		if t.Waiting > 0 {
			tq.OldestWaiting = durationpb.New(t.OldestAge)
		}
		out.Types = append(out.Types, tq)
	}
	return out
}
