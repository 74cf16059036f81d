package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The runner makes a run's requests from inside its network namespace,
// where the student's service listens on the loopback, and reports what it
// got; graderd judges. It speaks JSON lines: graderd writes a Plan, then,
// once the runner said the services are ready and graderd started the
// student's service, a Go line; the runner writes Events.
//
// The runner never sees what a scenario expects, only what to send: the
// expected bodies of private scenarios stay in graderd.

// Plan is what the runner is to do.
type Plan struct {
	// Services are the ports of the service containers (a database), to
	// wait for before the student's service starts, within ServicesMS.
	Services   []ServicePort `json:"services,omitempty"`
	ServicesMS int64         `json:"services_ms"`
	// Port is where the student's service listens on the loopback.
	Port int `json:"port"`
	// Ready is the readiness probe, tried with backoff for ReadyMS at
	// most.
	Ready   Probe `json:"ready"`
	ReadyMS int64 `json:"ready_ms"`
	// Requests are made in order, each within its TimeoutMS.
	Requests []Request `json:"requests"`
	// MaxBody is how much of each answer's body to report.
	MaxBody int64 `json:"max_body"`
}

// ServicePort is a service container's port.
type ServicePort struct {
	Name string `json:"name"`
	Port int    `json:"port"`
}

// Probe is the readiness probe: an HTTP GET of Path; any answer means
// ready, or, with Status set, an answer with that status.
type Probe struct {
	Path   string `json:"path"`
	Status int    `json:"status,omitempty"`
}

// Request is one scenario's request.
type Request struct {
	Method    string            `json:"method"`
	Path      string            `json:"path"`
	Headers   map[string]string `json:"headers,omitempty"`
	Body      []byte            `json:"body,omitempty"`
	TimeoutMS int64             `json:"timeout_ms"`
}

// Go tells the runner that the student's service has been started.
type Go struct {
	Go bool `json:"go"`
}

// Event kinds.
const (
	EventServicesReady = "services_ready"
	EventServicesFail  = "services_failed"
	EventReady         = "ready"
	EventNotReady      = "not_ready"
	EventResponse      = "response"
	EventDone          = "done"
)

// Event is one line the runner writes.
type Event struct {
	Event string `json:"event"`
	// MS is how long the step took (services, readiness).
	MS int64 `json:"ms,omitempty"`
	// Tries counts readiness probes.
	Tries int `json:"tries,omitempty"`
	// Error says why a step failed.
	Error string `json:"error,omitempty"`
	// Index and Response report a request's answer.
	Index    int       `json:"index,omitempty"`
	Response *Response `json:"response,omitempty"`
}

// PlanFor turns a set into the runner's requests, with defaultTimeout for
// scenarios without their own.
func PlanFor(s *Set, defaultTimeout time.Duration) []Request {
	reqs := make([]Request, len(s.Scenarios))
	for i, sc := range s.Scenarios {
		body, ctype := sc.requestBody()
		h := make(map[string]string, len(sc.Headers)+1)
		hasType := false
		for k, v := range sc.Headers {
			h[k] = v
			if http.CanonicalHeaderKey(k) == "Content-Type" {
				hasType = true
			}
		}
		if ctype != "" && !hasType {
			h["Content-Type"] = ctype
		}
		t := time.Duration(sc.Timeout)
		if t <= 0 {
			t = defaultTimeout
		}
		reqs[i] = Request{Method: sc.Method, Path: sc.Path, Headers: h, Body: body, TimeoutMS: t.Milliseconds()}
	}
	return reqs
}

// Backoff of the readiness probe and the services' wait: the first retry
// after minBackoff, doubling up to maxBackoff.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// maxPlan bounds the plan the runner reads.
const maxPlan = 64 << 20

// Run is the runner: it reads a Plan and a Go line from in, and writes
// Events to out. It returns an error only when it cannot read its plan.
func Run(ctx context.Context, in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(io.LimitReader(in, maxPlan))
	var plan Plan
	if err := dec.Decode(&plan); err != nil {
		return fmt.Errorf("reading the plan: %w", err)
	}
	w := &eventWriter{w: bufio.NewWriter(out)}
	start := time.Now()
	for _, s := range plan.Services {
		if err := retry(ctx, time.Duration(plan.ServicesMS)*time.Millisecond, func(ctx context.Context) error {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)))
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			w.write(Event{Event: EventServicesFail, MS: since(start), Error: fmt.Sprintf("service %s did not accept connections on port %d within %v: %v", s.Name, s.Port, time.Duration(plan.ServicesMS)*time.Millisecond, err)})
			return w.err
		}
	}
	w.write(Event{Event: EventServicesReady, MS: since(start)})
	var g Go
	if err := dec.Decode(&g); err != nil || !g.Go {
		return fmt.Errorf("waiting for graderd's go: %v", err)
	}

	client := &http.Client{
		Transport: &http.Transport{
			Proxy:             nil,
			DialContext:       (&net.Dialer{}).DialContext,
			DisableKeepAlives: true,
		},
		// A scenario expects the redirect itself, not where it leads.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	base := "http://127.0.0.1:" + strconv.Itoa(plan.Port)
	start = time.Now()
	readyFor := time.Duration(plan.ReadyMS) * time.Millisecond
	tries := 0
	err := retry(ctx, readyFor, func(ctx context.Context) error {
		tries++
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+plan.Ready.Path, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if plan.Ready.Status != 0 && resp.StatusCode != plan.Ready.Status {
			return fmt.Errorf("GET %s answered %d, not %d", plan.Ready.Path, resp.StatusCode, plan.Ready.Status)
		}
		return nil
	})
	if err != nil {
		w.write(Event{Event: EventNotReady, MS: since(start), Tries: tries, Error: fmt.Sprintf("the service did not answer GET %s on port %d within %v (%d tries; the last: %v)",
			plan.Ready.Path, plan.Port, readyFor, tries, err)})
		return w.err
	}
	w.write(Event{Event: EventReady, MS: since(start), Tries: tries})
	for i, r := range plan.Requests {
		resp := do(ctx, client, base, r, plan.MaxBody)
		w.write(Event{Event: EventResponse, Index: i, Response: &resp})
	}
	w.write(Event{Event: EventDone})
	return w.err
}

// retry calls try until it succeeds or for, with backoff between tries
// (each try bounded by what is left). It returns the last error.
func retry(ctx context.Context, bound time.Duration, try func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	wait := minBackoff
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// do makes one request and reads its answer.
func do(ctx context.Context, client *http.Client, base string, r Request, maxBody int64) Response {
	timeout := time.Duration(r.TimeoutMS) * time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	fail := func(err error) Response {
		res := Response{Error: err.Error(), DurationMS: since(start)}
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			res.Timeout, res.Error = true, fmt.Sprintf("no complete answer within %v", timeout)
		}
		return res
	}
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, base+r.Path, body)
	if err != nil {
		return fail(err)
	}
	for k, v := range r.Headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fail(err)
	}
	res := Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: b, DurationMS: since(start)}
	if int64(len(b)) > maxBody {
		res.Body, res.Truncated = b[:maxBody], true
	}
	return res
}

func since(t time.Time) int64 { return time.Since(t).Milliseconds() }

// eventWriter writes events, one JSON line each, flushed at once so that
// graderd sees each step as it happens.
type eventWriter struct {
	mu  sync.Mutex
	w   *bufio.Writer
	err error
}

func (e *eventWriter) write(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return
	}
	b, err := json.Marshal(ev)
	if err == nil {
		_, err = e.w.Write(append(b, '\n'))
	}
	if err == nil {
		err = e.w.Flush()
	}
	e.err = err
}
