package graderd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	// backoff is a small, widely used and well-kept library (the retry
	// policy behind many gRPC and cloud clients); its exponential backoff
	// with randomisation is exactly the reconnect policy graderd needs.
	"github.com/cenkalti/backoff/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// RefusedError is the error of a connection the broker refused because of
// this server's certificate: unknown, not registered, or not a server's.
// Message is the broker's explanation, meant for the operator.
type RefusedError struct {
	// Code is codes.Unauthenticated or codes.PermissionDenied.
	Code codes.Code
	// Message is the broker's explanation.
	Message string
	err     error
}

// Error says that the broker refused the certificate, and why.
func (e *RefusedError) Error() string {
	return "broker refused this server's certificate: " + e.Message
}

// Unwrap returns the gRPC status error.
func (e *RefusedError) Unwrap() error { return e.err }

// connError gives a gRPC failure a readable message (the status message,
// without "rpc error: code = ... desc =") while keeping the status error
// for errors.As and status.Code.
type connError struct {
	msg string
	err error
}

func (e *connError) Error() string { return e.msg }
func (e *connError) Unwrap() error { return e.err }

// describe turns an error from the stream into one an operator can act on.
// welcomed says whether the broker had accepted this server on the stream:
// a connection that closes before the Welcome may be a refused
// certificate, one that closes after it is a broker or a network gone.
func (d *Daemon) describe(what string, err error, welcomed bool) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s broker %s: %w", what, d.cfg.Broker, err)
	}
	switch st.Code() {
	case codes.Unauthenticated, codes.PermissionDenied:
		return &RefusedError{Code: st.Code(), Message: st.Message(), err: err}
	}
	msg := st.Message()
	switch {
	case strings.Contains(msg, "authentication handshake failed") || strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:") || strings.Contains(msg, "certs:"):
		msg = "TLS handshake failed: " + msg
	case !welcomed && st.Code() == codes.Unavailable && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "closed before server preface") || strings.Contains(msg, "EOF")):
		// With TLS 1.3 the client's handshake ends before the broker has
		// checked the client certificate; a broker that rejects it just
		// closes the connection, and which of these errors the client
		// sees is a race. A hint is the best graderd can do here.
		msg += "; the broker closed the connection right after the TLS handshake, which usually means it does not accept this server's certificate (was cert_file issued by the CA the broker trusts?)"
	}
	return &connError{msg: fmt.Sprintf("%s broker %s: %s (%s)", what, d.cfg.Broker, msg, st.Code()), err: err}
}

// dial makes a client connection to the broker. Every session dials anew:
// the connection's own retry policy then never stacks with graderd's
// backoff, and a reloaded certificate is used by the next session for sure.
func (d *Daemon) dial() (*grpc.ClientConn, error) {
	creds := credentials.NewTLS(d.tls.ClientTLSConfig(d.cfg.serverName()))
	conn, err := grpc.NewClient(d.cfg.Broker, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connecting to broker %s: %w", d.cfg.Broker, err)
	}
	return conn, nil
}

// open opens the stream, sends hello and waits for Welcome, at most
// d.welcomeTimeout. ctx must be the stream's own context: open cancels it
// when the Welcome does not come in time.
func (d *Daemon) open(ctx context.Context, cancel context.CancelFunc, conn *grpc.ClientConn, hello *gradebrokerv1.Hello) (gradebrokerv1.GraderService_ConnectClient, *gradebrokerv1.Welcome, error) {
	timedOut := make(chan struct{})
	timer := time.AfterFunc(d.welcomeTimeout, func() {
		close(timedOut)
		cancel()
	})
	defer timer.Stop()
	fail := func(what string, err error) error {
		select {
		case <-timedOut:
			return fmt.Errorf("no Welcome from broker %s within %v: %w", d.cfg.Broker, d.welcomeTimeout, context.DeadlineExceeded)
		default:
		}
		return d.describe(what, err, false)
	}

	stream, err := gradebrokerv1.NewGraderServiceClient(conn).Connect(ctx)
	if err != nil {
		return nil, nil, fail("cannot open a stream to", err)
	}
	if err := stream.Send(&gradebrokerv1.ConnectRequest{Msg: &gradebrokerv1.ConnectRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		// io.EOF means the broker ended the stream; Recv has the reason.
		return nil, nil, fail("cannot send Hello to", err)
	}
	msg, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("the broker closed the stream without a Welcome")
		}
		return nil, nil, fail("no Welcome from", err)
	}
	w := msg.GetWelcome()
	if w == nil {
		return nil, nil, fmt.Errorf("broker %s answered Hello with %T instead of a Welcome", d.cfg.Broker, msg.GetMsg())
	}
	return stream, w, nil
}

// Test connects to the broker, says Hello with 0 slots (so nothing is
// assigned), waits for the Welcome and closes the stream: it checks the
// address, the TLS files and the server's registration. It gives up after
// 10 seconds. The error says what failed; a *RefusedError carries the
// broker's reason for refusing the certificate.
func (d *Daemon) Test(ctx context.Context) (*gradebrokerv1.Welcome, error) {
	conn, err := d.dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, w, err := d.open(sctx, cancel, conn, &gradebrokerv1.Hello{Version: Version, Slots: 0, Hostname: d.hostname, Probe: true, Executors: d.executors})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("testing the connection to broker %s: %w", d.cfg.Broker, ctx.Err())
		}
		return nil, err
	}
	_ = stream.CloseSend()
	return w, nil
}

// connectLoop runs sessions until ctx ends, waiting between them with
// exponential backoff and jitter.
func (d *Daemon) connectLoop(ctx context.Context) {
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     d.cfg.ReconnectMin,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         d.cfg.ReconnectMax,
	}
	bo.Reset()
	for {
		welcomed, idle, err := d.idleSession(ctx)
		if ctx.Err() != nil {
			return
		}
		if idle {
			if !d.sleepUntilWoken(ctx) {
				return
			}
			bo.Reset()
			continue
		}
		if welcomed {
			bo.Reset()
		}
		// The library caps the interval before randomising it, so a
		// randomised wait may pass the maximum; the maximum is a promise.
		wait := min(bo.NextBackOff(), d.cfg.ReconnectMax)
		var refused *RefusedError
		if errors.As(err, &refused) {
			// The operator may be registering the server right now: keep
			// trying, but at the slowest pace, with a little jitter so that a
			// fleet refused at once does not come back at once.
			wait = d.cfg.ReconnectMax - time.Duration(rand.Int64N(int64(d.cfg.ReconnectMax)/5+1))
			d.log.Error("broker refused this server's certificate; retrying in case an operator registers it",
				"broker", d.cfg.Broker, "code", refused.Code.String(), "broker_message", refused.Message, "retry_in", wait)
		} else {
			d.log.Warn("connection to the broker failed; reconnecting", "broker", d.cfg.Broker, "error", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		d.sleep.retries.Add(1)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-d.sleep.wake:
			t.Stop()
			d.log.Info("woken by the broker; reconnecting now")
		}
	}
}

// session runs one stream: Hello, Welcome, then results, heartbeats and
// slot changes out, and assignments, acks, rejects and cancels in. It returns
// when the stream breaks or ctx ends; welcomed says whether the broker
// accepted the server.
func (d *Daemon) session(ctx context.Context) (welcomed bool, err error) {
	conn, err := d.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	// Not derived from ctx: when ctx ends the stream is closed politely
	// (CloseSend) rather than cut.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// A broker that stops reading would block Send, and so the session,
	// for ever: once ctx ends, the polite close gets its time, then the
	// stream is cut.
	defer context.AfterFunc(ctx, func() { time.AfterFunc(2*d.closeTimeout, cancel) })()

	d.mu.Lock()
	slots := d.capacityLocked()
	d.assigns = 0 // a new stream: its Assigns are counted from 0
	d.mu.Unlock()
	hello := &gradebrokerv1.Hello{Version: Version, Slots: uint32(slots), Hostname: d.hostname, Running: d.held(), Executors: d.executors}
	type opened struct {
		stream gradebrokerv1.GraderService_ConnectClient
		w      *gradebrokerv1.Welcome
		err    error
	}
	openc := make(chan opened, 1)
	go func() {
		s, w, err := d.open(sctx, cancel, conn, hello)
		openc <- opened{s, w, err}
	}()
	var o opened
	select {
	case o = <-openc:
	case <-ctx.Done():
		cancel()
		<-openc
		return false, ctx.Err()
	}
	if o.err != nil {
		return false, o.err
	}
	stream, w := o.stream, o.w
	welcomedAt := time.Now()
	interval := w.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		d.log.Warn("broker sent no heartbeat interval; using a default", "heartbeat_interval", fallbackHeartbeat)
		interval = fallbackHeartbeat
	}
	interval = max(interval, minHeartbeat)
	d.log.Info("connected to broker", "broker", d.cfg.Broker, "server", w.GetServer(), "type", w.GetType(),
		"tags", w.GetTags(), "heartbeat_interval", interval, "max_concurrent_jobs", w.GetMaxConcurrentJobs(),
		"slots", slots, "held_leases", len(hello.Running))

	// The receiver must be gone before session returns: it starts jobs,
	// and Run counts on no job starting once the connect loop is over.
	recvErr := make(chan error, 1)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		recvErr <- d.receive(stream)
	}()
	defer func() {
		cancel()
		<-recvDone
	}()

	err = d.sendLoop(ctx, stream, interval, slots, recvErr)
	if ctx.Err() != nil {
		// Shutting down: say goodbye and give the broker a moment to
		// end the stream from its side.
		_ = stream.CloseSend()
		select {
		case <-recvDone:
		case <-time.After(d.closeTimeout):
		}
		return true, ctx.Err()
	}
	return true, fmt.Errorf("%w (the stream had been up for %s)", err, time.Since(welcomedAt).Round(100*time.Millisecond))
}

// sendLoop is the only sender on the stream once Welcome has arrived.
func (d *Daemon) sendLoop(ctx context.Context, stream gradebrokerv1.GraderService_ConnectClient, interval time.Duration, slots int, recvErr <-chan error) error {
	send := func(m *gradebrokerv1.ConnectRequest) error {
		if err := stream.Send(m); err != nil {
			if errors.Is(err, io.EOF) {
				// The stream is over; the receiver has the reason.
				return <-recvErr
			}
			return d.describe("sending to", err, true)
		}
		return nil
	}
	hb := time.NewTicker(interval)
	defer hb.Stop()
	sent := make(map[int64]bool)
	for {
		// Results first: after a reconnect this re-sends the whole spool
		// in lease order before anything else.
		results, capacity, changed := d.toSend(sent)
		for _, r := range results {
			if err := send(&gradebrokerv1.ConnectRequest{Msg: &gradebrokerv1.ConnectRequest_Result{Result: r}}); err != nil {
				return err
			}
			sent[r.GetLeaseId()] = true
			d.log.Debug("result sent", "job_id", r.GetJobId(), "lease_id", r.GetLeaseId(), "outcome", r.GetOutcome().String())
		}
		if capacity != slots {
			if err := send(&gradebrokerv1.ConnectRequest{Msg: &gradebrokerv1.ConnectRequest_Slots{Slots: &gradebrokerv1.Slots{Slots: uint32(capacity)}}}); err != nil {
				return err
			}
			d.log.Info("told the broker the new capacity", "slots", capacity)
			slots = capacity
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return err
		case <-changed:
		case <-hb.C:
			if err := send(&gradebrokerv1.ConnectRequest{Msg: &gradebrokerv1.ConnectRequest_Heartbeat{Heartbeat: d.heartbeat()}}); err != nil {
				return err
			}
		}
	}
}

// receive handles the broker's messages until the stream ends.
func (d *Daemon) receive(stream gradebrokerv1.GraderService_ConnectClient) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("broker %s closed the stream", d.cfg.Broker)
			}
			return d.describe("lost the stream to", err, true)
		}
		switch m := msg.GetMsg().(type) {
		case *gradebrokerv1.ConnectResponse_Assign:
			d.startJob(m.Assign)
		case *gradebrokerv1.ConnectResponse_Ack:
			for _, ref := range m.Ack.GetLeases() {
				d.forget(ref)
				d.log.Info("broker acknowledged the result", "job_id", ref.GetJobId(), "lease_id", ref.GetLeaseId())
			}
		case *gradebrokerv1.ConnectResponse_Reject:
			ref := m.Reject.GetLease()
			d.log.Warn(fmt.Sprintf("broker refused result for job %d lease %d: %s", ref.GetJobId(), ref.GetLeaseId(), m.Reject.GetMessage()),
				"job_id", ref.GetJobId(), "lease_id", ref.GetLeaseId(), "code", codes.Code(m.Reject.GetCode()).String())
			// A refused result is never retried: the lease is stale and the
			// job belongs to someone else now.
			d.forget(ref)
		case *gradebrokerv1.ConnectResponse_Cancel:
			d.cancelJob(m.Cancel)
		case *gradebrokerv1.ConnectResponse_Welcome:
			d.log.Warn("broker sent a second Welcome; ignoring it")
		default:
			d.log.Warn("broker sent a message this graderd does not know; ignoring it", "type", fmt.Sprintf("%T", m))
		}
	}
}
