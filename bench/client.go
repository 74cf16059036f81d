package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/certs"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// resultJSON is what every fake grader answers.
var resultJSON = []byte(`{"score":100}`)

// resultUsage is what every fake grader says its run used: graderd sends
// one with every result, and the broker stores it with the attempt and
// feeds the run histograms with it. (Read-only: one message for all.)
var resultUsage = &gbv1.Usage{CpuTime: durationpb.New(3 * time.Millisecond), PeakMemoryBytes: 8 << 20,
	WallTime: durationpb.New(5 * time.Millisecond)}

// Tally counts what all the fake graders of one run saw. Times are
// nanoseconds on the run's monotonic clock (since Tally.base).
type Tally struct {
	base     time.Time
	assigned atomic.Int64
	acked    atomic.Int64
	rejected atomic.Int64
	cancels  atomic.Int64

	sampleMu sync.Mutex
	sampled  []int64 // every 997th acked job, to check in the database

	target int64 // when acked reaches it, doneAt is set and done closed
	doneAt atomic.Int64
	// The first Ack and the one that reached 95 % of target: a short drain
	// is timed between them, without the start-up and the last leases.
	firstMu   sync.Mutex
	firstAt   int64
	firstN    int64
	at95, n95 int64
	done      chan struct{}
	doneOnce  sync.Once
}

// NewTally starts a tally; target 0 means no target.
func NewTally(target int64) *Tally {
	return &Tally{base: time.Now(), target: target, done: make(chan struct{})}
}

func (t *Tally) now() int64 { return int64(time.Since(t.base)) }

func (t *Tally) ack(n int) {
	v := t.acked.Add(int64(n))
	if t.target > 0 && (v == int64(n) || (v >= t.target*95/100 && v-int64(n) < t.target*95/100)) {
		now := t.now()
		t.firstMu.Lock()
		if v == int64(n) && t.firstAt == 0 {
			t.firstAt, t.firstN = now, v
		}
		if v >= t.target*95/100 && t.at95 == 0 {
			t.at95, t.n95 = now, v
		}
		t.firstMu.Unlock()
	}
	if t.target > 0 && v >= t.target {
		t.doneOnce.Do(func() {
			t.doneAt.Store(t.now())
			close(t.done)
		})
	}
}

// Sampled returns some acked job ids (those divisible by 997).
func (t *Tally) Sampled() []int64 {
	t.sampleMu.Lock()
	defer t.sampleMu.Unlock()
	return slices.Clone(t.sampled)
}

// Acked returns how many results the broker acknowledged (committed).
func (t *Tally) Acked() int64 { return t.acked.Load() }

// Done is closed once the target is reached.
func (t *Tally) Done() <-chan struct{} { return t.done }

// received is one Assign's arrival.
type received struct {
	job int64
	at  int64 // Tally clock
}

// Client is a fake graderd: one ClientConn, one Connect stream, a receive
// goroutine that answers each Assign at once with OUTCOME_OK and a sender
// goroutine that writes the answers.
type Client struct {
	Name    string
	Welcome *gbv1.Welcome

	tally   *Tally
	track   bool // keep every Assign's arrival time
	answer  bool
	conn    *grpc.ClientConn
	stream  gbv1.GraderService_ConnectClient
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	pending []*gbv1.ConnectRequest
	notify  chan struct{}
	recvd   []received
	err     error
}

// DialOptions tune Dial.
type DialOptions struct {
	Slots    uint32
	Track    bool // record the arrival time of every Assign
	NoAnswer bool // hold assigned jobs instead of answering
}

// Dial connects a fake graderd for sc to the broker at addr over mTLS,
// sends Hello and waits for Welcome.
func Dial(ctx context.Context, addr string, p *PKI, sc ServerCert, tally *Tally, o DialOptions) (*Client, error) {
	src, err := certs.NewClientSource(sc.CertFile, sc.KeyFile, p.CAFile, nil)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig("localhost"))))
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Client{Name: sc.Name, tally: tally, track: o.Track, answer: !o.NoAnswer, conn: conn, cancel: cancel,
		notify: make(chan struct{}, 1)}
	fail := func(err error) (*Client, error) {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("server %s: %w", sc.Name, err)
	}
	stream, err := gbv1.NewGraderServiceClient(conn).Connect(sctx, grpc.WaitForReady(true))
	if err != nil {
		return fail(err)
	}
	c.stream = stream
	if err := stream.Send(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Hello{Hello: &gbv1.Hello{
		Version: "gbbench", Slots: o.Slots, Hostname: sc.Name}}}); err != nil {
		return fail(err)
	}
	// Wait for Welcome, but give up with ctx.
	type welcome struct {
		m   *gbv1.ConnectResponse
		err error
	}
	wch := make(chan welcome, 1)
	go func() {
		m, err := stream.Recv()
		wch <- welcome{m, err}
	}()
	select {
	case w := <-wch:
		if w.err != nil {
			return fail(w.err)
		}
		if c.Welcome = w.m.GetWelcome(); c.Welcome == nil {
			return fail(fmt.Errorf("first message is not Welcome: %v", w.m))
		}
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	c.wg.Add(2)
	go c.recvLoop()
	go c.sendLoop(sctx)
	return c, nil
}

func (c *Client) queue(m *gbv1.ConnectRequest) {
	c.mu.Lock()
	c.pending = append(c.pending, m)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// SetSlots changes the server's capacity.
func (c *Client) SetSlots(n uint32) {
	c.queue(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Slots{Slots: &gbv1.Slots{Slots: n}}})
}

func (c *Client) recvLoop() {
	defer c.wg.Done()
	for {
		m, err := c.stream.Recv()
		if err != nil {
			c.setErr(err)
			return
		}
		switch x := m.Msg.(type) {
		case *gbv1.ConnectResponse_Assign:
			c.tally.assigned.Add(1)
			if c.track {
				c.recvd = append(c.recvd, received{job: x.Assign.JobId, at: c.tally.now()})
			}
			if c.answer {
				c.queue(&gbv1.ConnectRequest{Msg: &gbv1.ConnectRequest_Result{Result: &gbv1.Result{
					JobId: x.Assign.JobId, LeaseId: x.Assign.LeaseId, Outcome: gbv1.Outcome_OUTCOME_OK, Result: resultJSON,
					Usage: resultUsage}}})
			}
		case *gbv1.ConnectResponse_Ack:
			c.tally.ack(len(x.Ack.Leases))
			for _, l := range x.Ack.Leases {
				if l.JobId%997 == 0 {
					c.tally.sampleMu.Lock()
					c.tally.sampled = append(c.tally.sampled, l.JobId)
					c.tally.sampleMu.Unlock()
				}
			}
		case *gbv1.ConnectResponse_Reject:
			c.tally.rejected.Add(1)
		case *gbv1.ConnectResponse_Cancel:
			c.tally.cancels.Add(1)
		}
	}
}

func (c *Client) sendLoop(ctx context.Context) {
	defer c.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.notify:
		}
		c.mu.Lock()
		batch := c.pending
		c.pending = nil
		c.mu.Unlock()
		for _, m := range batch {
			if err := c.stream.Send(m); err != nil {
				c.setErr(err)
				return
			}
		}
	}
}

func (c *Client) setErr(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
		return
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// Err returns the first unexpected stream error, if any.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the stream and the connection and waits for the goroutines.
func (c *Client) Close() {
	c.cancel()
	c.conn.Close()
	c.wg.Wait()
}

// Received returns the Assign arrival times recorded with Track; call it
// after Close.
func (c *Client) Received() []received { return c.recvd }

// DialAll connects one fake graderd per certificate, par at a time.
func DialAll(ctx context.Context, addr string, p *PKI, scs []ServerCert, tally *Tally, o DialOptions, par int) ([]*Client, error) {
	out := make([]*Client, len(scs))
	errs := make([]error, len(scs))
	sem := make(chan struct{}, max(1, par))
	var wg sync.WaitGroup
	for i, sc := range scs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = Dial(ctx, addr, p, sc, tally, o)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		CloseAll(out)
		return nil, err
	}
	return out, nil
}

// CloseAll closes every client that is not nil.
func CloseAll(cs []*Client) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
	}
	wg.Wait()
}
