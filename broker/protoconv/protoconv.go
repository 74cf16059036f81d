// Package protoconv turns the broker's domain values into their
// gradebroker.v1 messages and back. It is the one place where they are
// converted, so that a job looks the same to a platform (broker/platform)
// as to an operator (broker/adminapi), and neither adapter needs the other.
package protoconv

import (
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Timestamp converts t, leaving the zero time unset rather than sending
// 1970 or year 1 to a client.
func Timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Count converts a non-negative count; a negative one (never stored) shows
// as 0 instead of wrapping around to four billion.
func Count(n int) uint32 {
	if n < 0 {
		return 0
	}
	return uint32(n)
}

// JobStateToProto converts a job state; the numbers are shared.
func JobStateToProto(s broker.JobState) gradebrokerv1.JobState {
	return gradebrokerv1.JobState(s)
}

// JobStateFromProto converts a job state; JOB_STATE_UNSPECIFIED becomes 0,
// which filters read as "any state".
func JobStateFromProto(s gradebrokerv1.JobState) broker.JobState {
	return broker.JobState(s)
}

// DeliveryStateToProto converts a delivery state; the numbers are shared.
func DeliveryStateToProto(s broker.DeliveryState) gradebrokerv1.DeliveryState {
	return gradebrokerv1.DeliveryState(s)
}

// CertIdentityToProto converts a stored certificate identity.
func CertIdentityToProto(c broker.CertIdentity) *gradebrokerv1.CertIdentity {
	return &gradebrokerv1.CertIdentity{
		Serial:            c.Serial,
		Issuer:            c.Issuer,
		FingerprintSha256: c.Fingerprint,
		Subject:           c.Subject,
		Role:              c.Role,
		NotAfter:          Timestamp(c.NotAfter),
	}
}

// PlatformToProto converts a platform, its public key included (it is
// public) and its certificate if it has one.
func PlatformToProto(p broker.Platform) *gradebrokerv1.Platform {
	out := &gradebrokerv1.Platform{
		Name:          p.Name,
		Protocol:      string(p.Protocol),
		LegacyTokens:  p.LegacyTokens,
		PublicKeyPem:  p.PublicKeyPEM,
		ReturnUrl:     p.ReturnURL,
		RestrictPaths: p.RestrictPaths,
		ForceTag:      p.ForceTag,
		CreatedAt:     Timestamp(p.CreatedAt),
	}
	if p.Cert != nil {
		out.Certificate = CertIdentityToProto(*p.Cert)
	}
	return out
}

// ServerToProto converts a server's registration. The live fields
// (connected, slots, running) are the dispatcher's and are left for the
// caller; last_seen is the stored one.
func ServerToProto(s broker.Server) *gradebrokerv1.Server {
	out := &gradebrokerv1.Server{
		Name:              s.Name,
		Type:              s.Type,
		MaxConcurrentJobs: Count(s.MaxConcurrentJobs),
		WakeupUrl:         s.WakeupURL,
		CreatedAt:         Timestamp(s.CreatedAt),
		LastSeen:          Timestamp(s.LastSeen),
		WakeupFails:       Count(s.WakeupFails),
		Pull:              s.Pull,
	}
	// A pulling client's identity is a placeholder, not a certificate.
	if s.Pull == "" {
		out.Certificate = CertIdentityToProto(s.Cert)
	}
	return out
}

// XQueueQueueToProto converts an XQueue queue; waiting is left for the
// caller.
func XQueueQueueToProto(q broker.XQueueQueue) *gradebrokerv1.XQueueQueue {
	out := &gradebrokerv1.XQueueQueue{Name: q.Name, Tags: q.Tags, Type: q.Type, CreatedAt: Timestamp(q.CreatedAt)}
	if q.Timeout > 0 {
		out.Timeout = durationpb.New(q.Timeout)
	}
	return out
}

// XQueueUserToProto converts an XQueue user, without its password hash or
// its callbacks' password.
func XQueueUserToProto(u broker.XQueueUser) *gradebrokerv1.XQueueUser {
	return &gradebrokerv1.XQueueUser{
		Name:                    u.Name,
		Platform:                u.Platform,
		CallbackHosts:           u.CallbackHosts,
		HttpCallbackHosts:       u.HTTPCallbackHosts,
		CallbackAuthUser:        u.CallbackAuthUser,
		CallbackAuthPasswordSet: u.CallbackAuthPassword != "",
		PullQueues:              u.PullQueues,
		MaxJobs:                 Count(u.MaxJobs),
		CreatedAt:               Timestamp(u.CreatedAt),
		UpdatedAt:               Timestamp(u.UpdatedAt),
	}
}

// TagToProto converts a tag.
func TagToProto(t broker.Tag) *gradebrokerv1.Tag {
	return &gradebrokerv1.Tag{Name: t.Name, Description: t.Description}
}

// ServerTypeToProto converts a server type.
func ServerTypeToProto(t broker.ServerType) *gradebrokerv1.ServerType {
	return &gradebrokerv1.ServerType{Name: t.Name, Tags: t.Tags}
}

// OperatorToProto converts an operator.
func OperatorToProto(o broker.Operator) *gradebrokerv1.Operator {
	return &gradebrokerv1.Operator{
		Name:        o.Name,
		Certificate: CertIdentityToProto(o.Cert),
		CreatedAt:   Timestamp(o.CreatedAt),
	}
}

// AttemptToProto converts one attempt of a job.
func AttemptToProto(a broker.Attempt) *gradebrokerv1.Attempt {
	return &gradebrokerv1.Attempt{
		LeaseId:    a.LeaseID,
		Number:     Count(a.Number),
		Server:     a.Server,
		AssignedAt: Timestamp(a.AssignedAt),
		EndedAt:    Timestamp(a.EndedAt),
		End:        string(a.End),
		Reason:     a.Reason,
		Usage:      UsageToProto(a.Usage),
		Limit:      LimitToProto(a.Limit),
	}
}

// UsageToProto converts what a run used; nil stays unset.
func UsageToProto(u *broker.Usage) *gradebrokerv1.Usage {
	if u == nil {
		return nil
	}
	return &gradebrokerv1.Usage{
		CpuTime:         durationpb.New(u.CPUTime),
		PeakMemoryBytes: uint64(max(u.PeakMemory, 0)),
		WallTime:        durationpb.New(u.WallTime),
	}
}

// UsageFromProto converts what graderd says a run used; unset stays nil.
// A negative duration (never measured so) counts as 0, and a peak beyond
// what an int64 holds as the largest one.
func UsageFromProto(u *gradebrokerv1.Usage) *broker.Usage {
	if u == nil {
		return nil
	}
	return &broker.Usage{
		CPUTime:    max(u.GetCpuTime().AsDuration(), 0),
		PeakMemory: int64(min(u.GetPeakMemoryBytes(), math.MaxInt64)),
		WallTime:   max(u.GetWallTime().AsDuration(), 0),
	}
}

// limits pairs the domain's limits with the protocol's.
var limits = map[broker.Limit]gradebrokerv1.Limit{
	broker.LimitWallTime: gradebrokerv1.Limit_LIMIT_WALL_TIME,
	broker.LimitCPUTime:  gradebrokerv1.Limit_LIMIT_CPU_TIME,
	broker.LimitMemory:   gradebrokerv1.Limit_LIMIT_MEMORY,
	broker.LimitPids:     gradebrokerv1.Limit_LIMIT_PIDS,
	broker.LimitOutput:   gradebrokerv1.Limit_LIMIT_OUTPUT,
	broker.LimitDisk:     gradebrokerv1.Limit_LIMIT_DISK,
}

// LimitToProto converts the limit that ended a run; "" (none) is
// LIMIT_UNSPECIFIED.
func LimitToProto(l broker.Limit) gradebrokerv1.Limit { return limits[l] }

// LimitFromProto converts the limit graderd says ended a run.
// LIMIT_UNSPECIFIED is "" (none); a number this broker does not know (a
// newer graderd's) is LimitUnknown, so that the run still shows it ended
// on a limit.
func LimitFromProto(l gradebrokerv1.Limit) broker.Limit {
	if l == gradebrokerv1.Limit_LIMIT_UNSPECIFIED {
		return ""
	}
	for d, p := range limits {
		if p == l {
			return d
		}
	}
	return broker.LimitUnknown
}

// ExecutorsToProto converts a server's executors.
func ExecutorsToProto(es []broker.Executor) []*gradebrokerv1.ExecutorInfo {
	var out []*gradebrokerv1.ExecutorInfo
	for _, e := range es {
		out = append(out, &gradebrokerv1.ExecutorInfo{Name: e.Name, Type: e.Type, Sandbox: e.Sandbox})
	}
	return out
}

// ExecutorsFromProto converts the executors graderd reports in its Hello.
func ExecutorsFromProto(es []*gradebrokerv1.ExecutorInfo) []broker.Executor {
	var out []broker.Executor
	for _, e := range es {
		out = append(out, broker.Executor{Name: e.GetName(), Type: e.GetType(), Sandbox: e.GetSandbox()})
	}
	return out
}

// EventToProto converts one entry of a job's audit trail.
func EventToProto(e broker.Event) *gradebrokerv1.Event {
	return &gradebrokerv1.Event{
		At:      Timestamp(e.At),
		Kind:    e.Kind,
		Actor:   e.Actor,
		LeaseId: e.LeaseID,
		Detail:  e.Detail,
	}
}

// JobToProto converts a job with whatever j carries: a job from
// store.ListJobs has no data, history or events, one from store.GetJob has
// all of them. A caller that must not show the job data (the platform API
// shows a platform its own job) clears j.JobData first.
func JobToProto(j broker.Job) *gradebrokerv1.Job {
	out := &gradebrokerv1.Job{
		Id:             j.ID,
		Platform:       j.Platform,
		Name:           j.Name,
		State:          JobStateToProto(j.State),
		Priority:       int32(j.Priority),
		Tags:           j.Tags,
		IdempotencyKey: j.IdempotencyKey,
		CreatedAt:      Timestamp(j.CreatedAt),
		UpdatedAt:      Timestamp(j.UpdatedAt),
		FinishedAt:     Timestamp(j.FinishedAt),
		Attempts:       Count(j.Attempts),
		MaxAttempts:    Count(j.MaxAttempts),
		Server:         j.Server,
		Result:         string(j.Result),
		Error:          j.Error,
		Log:            j.Log,
		DeliveryState:  DeliveryStateToProto(j.Delivery),
		RestrictPaths:  j.RestrictPaths,
		Jobdata:        string(j.JobData),
	}
	if j.Timeout > 0 {
		out.Timeout = durationpb.New(j.Timeout)
	}
	for _, a := range j.History {
		out.History = append(out.History, AttemptToProto(a))
	}
	for _, e := range j.Events {
		out.Events = append(out.Events, EventToProto(e))
	}
	return out
}

// DeliveryToProto converts a delivery for the admin API.
func DeliveryToProto(d store.Delivery) *gradebrokerv1.Delivery {
	return &gradebrokerv1.Delivery{
		Id:            d.ID,
		JobId:         d.JobID,
		Platform:      d.Platform,
		State:         DeliveryStateToProto(d.State),
		Tries:         Count(d.Tries),
		NextAttemptAt: Timestamp(d.NextAttemptAt),
		LastError:     d.LastError,
		CreatedAt:     Timestamp(d.CreatedAt),
		DeliveredAt:   Timestamp(d.DeliveredAt),
	}
}
