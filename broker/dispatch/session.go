package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

var errShuttingDown = status.Error(codes.Unavailable, "broker is shutting down; reconnect later")

// session is one live Connect stream. Messages to the server go through its
// outbox, drained by one sender goroutine, so that nobody holding the
// dispatcher's lock ever blocks on the network.
type session struct {
	srv *server

	mu     sync.Mutex
	queue  []*gbv1.ConnectResponse
	acks   []*gbv1.LeaseRef
	notify chan struct{}
	done   chan struct{}
	err    error
}

func newSession(srv *server) *session {
	return &session{srv: srv, notify: make(chan struct{}, 1), done: make(chan struct{})}
}

func (s *session) push(m *gbv1.ConnectResponse) {
	s.mu.Lock()
	if s.err == nil {
		s.queue = append(s.queue, m)
	}
	s.mu.Unlock()
	s.poke()
}

func (s *session) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// close ends the stream with err (a gRPC status). It is idempotent.
func (s *session) close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
}

func (s *session) closedErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *session) sendAssign(l *lease, aj store.AssignedJob, timeout time.Duration) {
	if s == nil {
		return
	}
	s.push(&gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Assign{Assign: &gbv1.Assign{
		JobId: l.jobID, LeaseId: l.id, Attempt: uint32(l.attempt), Name: aj.Name, Jobdata: aj.JobData,
		Tags: aj.Tags, Timeout: durationpb.New(timeout), Deadline: timestamppb.New(l.deadline),
	}}})
}

func (s *session) sendCancel(l *lease, reason string) {
	if s == nil {
		return
	}
	s.push(&gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Cancel{Cancel: &gbv1.Cancel{
		Lease: &gbv1.LeaseRef{JobId: l.jobID, LeaseId: l.id}, Reason: reason}}})
}

// sendAck queues an acknowledgement; consecutive acks leave as one message.
func (s *session) sendAck(jobID, leaseID int64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.err == nil {
		s.acks = append(s.acks, &gbv1.LeaseRef{JobId: jobID, LeaseId: leaseID})
	}
	s.mu.Unlock()
	s.poke()
}

func (s *session) sendReject(jobID, leaseID int64, code codes.Code, msg string) {
	s.push(&gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Reject{Reject: &gbv1.Reject{
		Lease: &gbv1.LeaseRef{JobId: jobID, LeaseId: leaseID}, Code: int32(code), Message: msg}}})
}

// take returns what is waiting to be sent.
func (s *session) take() []*gbv1.ConnectResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.queue
	s.queue = nil
	if len(s.acks) > 0 {
		out = append(out, &gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Ack{Ack: &gbv1.Ack{Leases: s.acks}}})
		s.acks = nil
	}
	return out
}

// Connect implements gradebroker.v1.GraderService/Connect.
func (d *Dispatcher) Connect(stream gbv1.GraderService_ConnectServer) error {
	ctx := stream.Context()
	id, err := certs.PeerIdentityFromContext(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "no verified client certificate: %v", err)
	}
	if id.Role != certs.RoleServer {
		return status.Errorf(codes.PermissionDenied, "certificate %s has role %q; only server certificates may connect as a grading server", id.Subject, id.Role)
	}
	rec, err := d.db.ServerByFingerprint(ctx, id.Fingerprint)
	if errors.Is(err, broker.ErrNotFound) {
		return status.Errorf(codes.Unauthenticated, "certificate %s (serial %s) is not registered as a server; register it with 'broker admin server add NAME --cert FILE --type TYPE'", id.Subject, id.Serial)
	}
	if err != nil {
		d.log.Error("look up server certificate", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	types, err := d.db.ListServerTypes(ctx)
	if err != nil {
		d.log.Error("list server types", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	var tags []string
	for _, t := range types {
		if t.ID == rec.TypeID {
			tags = t.Tags
		}
	}

	helloCh := make(chan *gbv1.ConnectRequest, 1)
	errCh := make(chan error, 1)
	go func() {
		m, err := stream.Recv()
		if err != nil {
			errCh <- err
			return
		}
		helloCh <- m
	}()
	var hello *gbv1.Hello
	select {
	case m := <-helloCh:
		hello = m.GetHello()
		if hello == nil {
			return status.Error(codes.InvalidArgument, "the first message on the stream must be Hello")
		}
	case err := <-errCh:
		return err
	case <-time.After(30 * time.Second):
		return status.Error(codes.DeadlineExceeded, "no Hello within 30 s")
	case <-ctx.Done():
		return ctx.Err()
	}

	log := d.log.With("server", rec.Name)
	if hello.Probe {
		// A connection test: answer and leave the live stream alone.
		log.Info("connection test passed", "hostname", hello.Hostname, "version", hello.Version)
		d.mu.Lock()
		maxJobs := rec.MaxConcurrentJobs
		if s := d.servers[rec.ID]; s != nil {
			maxJobs = s.maxJobs
		}
		d.mu.Unlock()
		return stream.Send(&gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Welcome{Welcome: &gbv1.Welcome{
			Server: rec.Name, Type: rec.Type, Tags: tags, HeartbeatInterval: durationpb.New(d.cfg.HeartbeatInterval),
			MaxConcurrentJobs: uint32(maxJobs)}}})
	}
	sess, err := d.attach(rec, tags, hello)
	if err != nil {
		return err
	}
	log.Info("server connected", "type", rec.Type, "slots", hello.Slots, "running", len(hello.Running),
		"hostname", hello.Hostname, "version", hello.Version)

	// One sender goroutine per stream.
	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-sess.done:
				sendErr <- nil
				return
			case <-ctx.Done():
				sendErr <- nil
				return
			case <-sess.notify:
			}
			for _, m := range sess.take() {
				if err := stream.Send(m); err != nil {
					sendErr <- err
					return
				}
			}
		}
	}()
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if err := d.handle(sess, m); err != nil {
				recvErr <- err
				return
			}
		}
	}()

	var end error
	select {
	case err := <-recvErr:
		end = err
	case err := <-sendErr:
		end = err
	case <-sess.done:
	}
	sess.close(status.Error(codes.Canceled, "stream ended"))
	d.detach(sess)
	if cerr := sess.closedErr(); end == nil && cerr != nil && status.Code(cerr) != codes.Canceled {
		end = cerr
	}
	// Flush what the sender had not sent yet (a final Reject, say) is not
	// possible once the stream is done; graderd re-sends spooled results.
	log.Info("server disconnected", "reason", errString(end))
	if end != nil && (errors.Is(end, context.Canceled) || status.Code(end) == codes.Canceled) {
		return nil
	}
	return end
}

func errString(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// attach registers a new stream for a server, replacing any older one.
func (d *Dispatcher) attach(rec broker.Server, tags []string, hello *gbv1.Hello) (*session, error) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errShuttingDown
	}
	s := d.servers[rec.ID]
	if s == nil {
		s = d.addServer(rec, tags, now)
	}
	s.name, s.typeID, s.typeName, s.tags, s.maxJobs, s.fp = rec.Name, rec.TypeID, rec.Type, tags, rec.MaxConcurrentJobs, rec.Cert.Fingerprint
	if s.sess != nil {
		old := s.sess
		d.detachLocked(old)
		old.close(status.Error(codes.Aborted, "replaced by a newer connection from the same server"))
	}
	sess := newSession(s)
	s.sess = sess
	s.slots = int(hello.Slots)
	s.lastSeen = now
	d.connectedByType[s.typeID]++

	running := make(map[int64]bool, len(hello.Running))
	for _, r := range hello.Running {
		running[r.LeaseId] = true
	}
	sess.push(&gbv1.ConnectResponse{Msg: &gbv1.ConnectResponse_Welcome{Welcome: &gbv1.Welcome{
		Server: s.name, Type: s.typeName, Tags: tags, HeartbeatInterval: durationpb.New(d.cfg.HeartbeatInterval),
		MaxConcurrentJobs: uint32(s.maxJobs),
	}}})
	for _, l := range s.leases {
		switch {
		case running[l.id]:
			// Still running there: keep it.
		case l.zombie:
			delete(s.leases, l.id)
		default:
			d.endAttempt(l, broker.EndLost, "server reconnected without it (graderd restarted?)", "server:"+s.name)
		}
	}
	d.fill(s, now)
	return sess, nil
}

// detach forgets a stream that ended. Its leases wait for the reconnect grace.
func (d *Dispatcher) detach(sess *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.detachLocked(sess)
}

func (d *Dispatcher) detachLocked(sess *session) {
	s := sess.srv
	if s.sess != sess {
		return
	}
	s.sess = nil
	s.disconnectedAt = d.cfg.Now()
	d.connectedByType[s.typeID]--
	d.updateFree(s)
}

// handle processes one message from graderd.
func (d *Dispatcher) handle(sess *session, m *gbv1.ConnectRequest) error {
	switch msg := m.Msg.(type) {
	case *gbv1.ConnectRequest_Result:
		d.result(sess, msg.Result)
	case *gbv1.ConnectRequest_Heartbeat:
		d.heartbeat(sess, msg.Heartbeat)
	case *gbv1.ConnectRequest_Slots:
		d.setSlots(sess, int(msg.Slots.Slots))
	case *gbv1.ConnectRequest_Hello:
		return status.Error(codes.InvalidArgument, "Hello may only be the first message")
	default:
		return status.Error(codes.InvalidArgument, "empty or unknown message")
	}
	return nil
}

// result handles a Result: only the current lease's result is kept.
func (d *Dispatcher) result(sess *session, r *gbv1.Result) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := sess.srv
	s.lastSeen = now
	l := d.leases[r.LeaseId]
	if l == nil || l.jobID != r.JobId || l.srv != s || s.sess != sess {
		d.stats.StaleResults++
		if z := s.leases[r.LeaseId]; z != nil && z.zombie {
			delete(s.leases, r.LeaseId)
			d.fill(s, now)
		}
		d.log.Warn("refused a result for a lease that is not current", "server", s.name, "job_id", r.JobId, "lease_id", r.LeaseId)
		sess.sendReject(r.JobId, r.LeaseId, codes.FailedPrecondition,
			fmt.Sprintf("lease %d of job %d is not current (expired, requeued, cancelled or unknown); result dropped", r.LeaseId, r.JobId))
		return
	}
	d.dropLease(l)
	ack := func() { sess.sendAck(r.JobId, r.LeaseId) }
	outcome := broker.Outcome(r.Outcome)
	valid := len(r.Result) == 0 || json.Valid(r.Result)
	// The job's attributes go on each call rather than through log.With,
	// which formats them even when the level is off (this runs per job).
	log := d.log
	switch {
	case outcome == broker.OutcomeOK && len(r.Result) > 0 && valid:
		d.mx.result(ResultOK)
		log.Info("job done", "server", s.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt)
		d.finish(l.jobID, l.id, store.Final{PlatformID: l.platform, State: broker.JobDone, Outcome: outcome, Result: r.Result,
			Log: r.Log, Actor: "server:" + s.name}, broker.EndOK, "", ack)
	case outcome == broker.OutcomeFatal:
		msg := r.Error
		if msg == "" {
			msg = "the grader reported a fatal error"
		}
		res := r.Result
		if !valid || len(res) == 0 {
			res = nil
		}
		d.mx.result(ResultFatal)
		log.Info("job failed: fatal result", "server", s.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "error", msg)
		d.finish(l.jobID, l.id, store.Final{PlatformID: l.platform, State: broker.JobFailed, Outcome: outcome, Result: res, Log: r.Log,
			Error: msg, Actor: "server:" + s.name}, broker.EndFatal, msg, ack)
	case outcome == broker.OutcomeTemporary || outcome == broker.OutcomeTimeout:
		reason := r.Error
		if reason == "" {
			reason = "no reason given"
		}
		end := broker.EndTemporary
		if outcome == broker.OutcomeTimeout {
			end = broker.EndTimeout
			d.mx.result(ResultTimeout)
		} else {
			d.mx.result(ResultTemporary)
		}
		log.Info("attempt ended; requeueing", "server", s.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "outcome", end, "reason", reason)
		d.endAttempt(l, end, reason, "server:"+s.name)
		d.w.enqueue(&op{apply: func(*store.JobTx) error { return nil }, after: ack})
	default:
		// An OK without a JSON result, or an unknown outcome: the server is
		// misbehaving. The attempt counts and another server gets the job.
		reason := "server sent an empty or invalid result"
		if !valid {
			reason = "server sent a result that is not JSON"
		}
		d.mx.result(ResultInvalid)
		log.Warn("invalid result; requeueing", "server", s.name, "job_id", l.jobID, "lease_id", l.id, "attempt", l.attempt, "outcome", int32(r.Outcome), "reason", reason)
		d.endAttempt(l, broker.EndInvalid, reason, "server:"+s.name)
		d.w.enqueue(&op{apply: func(*store.JobTx) error { return nil }, after: ack})
	}
	d.fill(s, now)
}

// heartbeat extends the leases graderd still runs and lets go of zombies it
// no longer runs.
func (d *Dispatcher) heartbeat(sess *session, hb *gbv1.Heartbeat) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := sess.srv
	s.lastSeen = now
	running := make(map[int64]bool, len(hb.Running))
	for _, r := range hb.Running {
		running[r.LeaseId] = true
		if l := s.leases[r.LeaseId]; l != nil && !l.zombie {
			ext := now.Add(3 * d.cfg.HeartbeatInterval)
			if ext.After(l.deadline) {
				l.deadline = ext
				if l.deadline.After(l.hard) {
					l.deadline = l.hard
				}
			}
		}
	}
	freed := false
	for id, l := range s.leases {
		if l.zombie && !running[id] {
			delete(s.leases, id)
			freed = true
		}
	}
	if freed {
		d.fill(s, now)
	}
}

// setSlots changes a server's capacity; 0 drains it.
func (d *Dispatcher) setSlots(sess *session, n int) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := sess.srv
	if s.sess != sess {
		return
	}
	s.slots = n
	d.log.Info("server changed its slots", "server", s.name, "slots", n)
	d.fill(s, now)
}
