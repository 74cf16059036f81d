// Package delivery is the result outbox's worker: it sends each pending
// delivery to its platform, in the form of the platform's protocol (for
// gradebroker's own, a signed and encrypted callback to its return_url),
// and records the outcome in the database.
//
// The database is the queue. A delivery is created pending in the same
// transaction that makes its job final, so a result is never final without
// its callback, and the worker only ever changes the delivery row: a failed
// callback is retried, then marked dead, and never touches or re-grades the
// job. Notify (the dispatcher's final hook) makes a new delivery go out at
// once; a poll every PollInterval finds retries that have come due and
// whatever a previous run left pending.
//
// A platform gets at most PerPlatform requests at once and the worker at
// most Workers in all. Deliveries wait in memory per platform, a few per
// platform at most, and platforms take turns for free workers, so a slow or
// dead platform delays only its own callbacks.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/internal/startstop"
)

// holdFactor times PerPlatform is how many deliveries of one platform the
// worker holds in memory, running or waiting for a slot: enough that a slot
// freed is refilled without a database round trip, few enough that a
// backlog stays in the database.
const holdFactor = 2

// markTimeout bounds recording an outcome. It is independent of Stop, so
// that the result of a request that was sent is recorded even during
// shutdown.
const markTimeout = 30 * time.Second

// Worker sends pending deliveries. Make one with New, then Start it; Stop
// it before closing the database.
type Worker struct {
	db        *store.DB
	cfg       Config
	log       *slog.Logger
	client    *http.Client
	hold      int
	protocols map[broker.Protocol]Protocol

	life startstop.Base

	mu       sync.Mutex
	stopping bool
	queued   map[int64][]store.Delivery // platform → deliveries waiting for a slot
	ring     []int64                    // platforms with waiting deliveries, in turn order
	held     map[int64]int              // platform → deliveries waiting or running
	running  map[int64]int              // platform → requests running
	nrunning int
	inflight map[int64]bool // deliveries waiting or running
	// finished holds deliveries finished since the current poll began: the
	// poll's snapshot may predate their outcome, and they must not be sent
	// again on its word.
	finished map[int64]bool

	wake     chan struct{}
	attempts sync.WaitGroup

	stats struct {
		attempts, delivered, retried, dead, superseded atomic.Uint64
		latencySum, latencyMax                         atomic.Int64
	}
	// polls counts finished polls, so that a test can wait for a few
	// rather than for a while.
	polls atomic.Uint64
}

// New makes a Worker that reads deliveries from db and signs gradebroker's
// callbacks with keys.Current(). It fills in cfg's defaults, and fails when cfg is invalid
// or CAFile cannot be read. log may be nil.
func New(db *store.DB, keys *token.KeyRing, cfg Config, log *slog.Logger) (*Worker, error) {
	if db == nil || keys == nil {
		return nil, errors.New("delivery: New needs a database and the broker's key ring")
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	client := cfg.HTTPClient
	if client == nil {
		var err error
		if client, err = newHTTPClient(&cfg); err != nil {
			return nil, err
		}
	}
	// A copy, so that the caller's client keeps its own redirect policy.
	c := *client
	c.CheckRedirect = noRedirect
	protocols := map[broker.Protocol]Protocol{broker.ProtocolGradebroker: &jweCallback{keys: keys, broker: cfg.Broker,
		lifetime: cfg.TokenLifetime, compress: cfg.Compress}}
	for name, p := range cfg.Protocols {
		if name == broker.ProtocolGradebroker || p == nil {
			return nil, fmt.Errorf("delivery config: Protocols: %q cannot be replaced or left without a Protocol", name)
		}
		protocols[name] = p
	}
	return &Worker{
		db:        db,
		cfg:       cfg,
		log:       log.With("component", "delivery"),
		client:    &c,
		hold:      holdFactor * cfg.PerPlatform,
		protocols: protocols,
		queued:    make(map[int64][]store.Delivery),
		held:      make(map[int64]int),
		running:   make(map[int64]int),
		inflight:  make(map[int64]bool),
		finished:  make(map[int64]bool),
		wake:      make(chan struct{}, 1),
	}, nil
}

// Config returns the worker's configuration with defaults filled in.
func (w *Worker) Config() Config { return w.cfg }

// Protocols lists the platform protocols the worker sends results in, in
// order: gradebroker's own, and those of Config.Protocols. A platform may
// be registered with these only (adminapi.Service.SetProtocols).
func (w *Worker) Protocols() []broker.Protocol {
	out := make([]broker.Protocol, 0, len(w.protocols))
	for p := range w.protocols {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Start starts the worker and returns. Every delivery left pending in the
// database, by this run or an earlier one, is sent when it is due: the first
// poll runs at once. ctx bounds only the start itself; the worker runs until
// Stop (see internal/startstop). A worker cannot be started twice, nor after
// Stop.
func (w *Worker) Start(ctx context.Context) error {
	if _, err := w.life.Start(ctx); err != nil {
		return fmt.Errorf("delivery: %w", err)
	}
	counts, err := w.db.DeliveryCounts(ctx)
	if err != nil {
		w.Stop()
		return fmt.Errorf("start delivery worker: %w", err)
	}
	if n := counts[broker.DeliveryPending]; n > 0 {
		w.log.Info("resuming pending deliveries", "pending", n)
	}
	if !w.life.Go(w.loop) {
		return fmt.Errorf("delivery: %w during start", startstop.ErrStopped)
	}
	return nil
}

// Stop stops polling, drops the deliveries waiting for a slot (they stay
// pending in the database) and waits for the requests under way, each
// bounded by Timeout, and for their outcomes to be recorded. It is
// idempotent, and safe before Start.
func (w *Worker) Stop() {
	w.life.Stop(w.dropQueued)
	w.attempts.Wait()
}

// Done is closed once the worker has stopped.
func (w *Worker) Done() <-chan struct{} { return w.life.Done() }

// dropQueued stops starting requests and forgets the deliveries waiting for
// a slot.
func (w *Worker) dropQueued() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopping = true
	for p, q := range w.queued {
		for _, d := range q {
			delete(w.inflight, d.ID)
		}
		if w.held[p] -= len(q); w.held[p] <= 0 {
			delete(w.held, p)
		}
	}
	clear(w.queued)
	w.ring = nil
}

// Notify tells the worker that a job became final with a delivery to make,
// so that it is sent at once rather than at the next poll. It never blocks:
// it is meant for dispatch.Dispatcher.SetFinalHook, which runs on the
// dispatcher's writer.
func (w *Worker) Notify(jobID, deliveryID int64) {
	w.log.Debug("new delivery", "job_id", jobID, "delivery_id", deliveryID)
	w.poke()
}

// Redeliver schedules deliveries again as store.DB.Redeliver describes, and
// sends them at once. It returns how many were scheduled.
func (w *Worker) Redeliver(ctx context.Context, sel store.Redelivery) (int, error) {
	n, err := w.db.Redeliver(ctx, sel)
	if n > 0 {
		w.poke()
	}
	return n, err
}

// Stats are the worker's counters since New, for metrics.
type Stats struct {
	// Attempts counts requests made (each try that got as far as sending).
	Attempts uint64
	// Delivered counts deliveries a platform acknowledged.
	Delivered uint64
	// Retried counts failed tries scheduled to be tried again.
	Retried uint64
	// Dead counts deliveries given up: past their window, or unsendable.
	Dead uint64
	// Superseded counts deliveries dropped, unsent, because a newer
	// delivery of the same job exists or the job was reopened.
	Superseded uint64
	// InFlight is how many deliveries are running or waiting for a slot.
	InFlight int
	// LatencySum adds up, over Delivered, the time from a delivery's
	// creation to its acknowledgement; LatencySum / Delivered is the mean.
	LatencySum time.Duration
	// LatencyMax is the longest of those times.
	LatencyMax time.Duration
}

// Stats returns the worker's counters.
func (w *Worker) Stats() Stats {
	w.mu.Lock()
	inflight := len(w.inflight)
	w.mu.Unlock()
	return Stats{
		Attempts:   w.stats.attempts.Load(),
		Delivered:  w.stats.delivered.Load(),
		Retried:    w.stats.retried.Load(),
		Dead:       w.stats.dead.Load(),
		Superseded: w.stats.superseded.Load(),
		InFlight:   inflight,
		LatencySum: time.Duration(w.stats.latencySum.Load()),
		LatencyMax: time.Duration(w.stats.latencyMax.Load()),
	}
}

// poke makes the loop poll now, coalescing with a poll already asked for.
func (w *Worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Worker) loop(ctx context.Context) {
	t := time.NewTicker(w.cfg.PollInterval)
	defer t.Stop()
	for {
		w.poll()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.wake:
		}
	}
}

// poll loads due deliveries the worker does not hold yet and starts what
// the limits allow.
func (w *Worker) poll() {
	defer w.polls.Add(1)
	w.mu.Lock()
	if w.stopping {
		w.mu.Unlock()
		return
	}
	clear(w.finished)
	// The deliveries held are due too and come back first; ask for enough
	// beyond them to fill every worker twice.
	limit := len(w.inflight) + 2*w.cfg.Workers
	w.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	ds, err := w.db.DueDeliveries(ctx, w.cfg.Now(), limit, w.hold)
	cancel()
	if err != nil {
		// The next poll tries again; nothing is lost, the rows stay pending.
		w.log.Error("cannot read due deliveries", "err", err)
		return
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return
	}
	for _, d := range ds {
		if w.inflight[d.ID] || w.finished[d.ID] || w.held[d.PlatformID] >= w.hold {
			continue
		}
		w.inflight[d.ID] = true
		w.held[d.PlatformID]++
		if len(w.queued[d.PlatformID]) == 0 {
			w.ring = append(w.ring, d.PlatformID)
		}
		w.queued[d.PlatformID] = append(w.queued[d.PlatformID], d)
	}
	w.pumpLocked()
}

// pumpLocked starts waiting deliveries while workers are free, giving
// platforms turns: a platform that starts one goes to the back of the ring,
// and one at its PerPlatform limit is passed over. w.mu must be held.
func (w *Worker) pumpLocked() {
	for !w.stopping && w.nrunning < w.cfg.Workers {
		i := 0
		for i < len(w.ring) && w.running[w.ring[i]] >= w.cfg.PerPlatform {
			i++
		}
		if i == len(w.ring) {
			return
		}
		p := w.ring[i]
		q := w.queued[p]
		d := q[0]
		q[0] = store.Delivery{} // let the result be collected once sent
		q = q[1:]
		w.ring = append(w.ring[:i], w.ring[i+1:]...)
		if len(q) > 0 {
			w.queued[p] = q
			w.ring = append(w.ring, p)
		} else {
			delete(w.queued, p)
		}
		w.running[p]++
		w.nrunning++
		w.attempts.Add(1)
		go w.attempt(d)
	}
}

// attempt runs one try of d and frees its slot.
func (w *Worker) attempt(d store.Delivery) {
	defer w.attempts.Done()
	w.deliver(&d)

	p := d.PlatformID
	w.mu.Lock()
	if w.running[p]--; w.running[p] <= 0 {
		delete(w.running, p)
	}
	if w.held[p]--; w.held[p] <= 0 {
		delete(w.held, p)
	}
	w.nrunning--
	delete(w.inflight, d.ID)
	w.finished[d.ID] = true
	// The platform can take more than it has waiting: its backlog, if any,
	// is in the database.
	more := !w.stopping && w.held[p] < w.cfg.PerPlatform
	w.pumpLocked()
	w.mu.Unlock()
	if more {
		w.poke()
	}
}

// deliver tries d once and records the outcome.
func (w *Worker) deliver(d *store.Delivery) {
	log := w.log.With("delivery_id", d.ID, "job_id", d.JobID, "platform", d.Platform)
	if d.Superseded || !d.JobState.Final() {
		msg := "superseded: a newer delivery of this job exists"
		if !d.JobState.Final() {
			msg = fmt.Sprintf("superseded: the job was reopened and is %s; its next final state gets a new delivery", d.JobState)
		}
		// Tries stay as they were: nothing was sent.
		if w.record(log, w.db.MarkDead, d.ID, d.Tries, msg) {
			w.stats.superseded.Add(1)
			log.Info("delivery superseded; not sent", "reason", msg)
		}
		return
	}

	tries := d.Tries + 1
	start := w.cfg.Now()
	status, err := w.send(d, start)
	now := w.cfg.Now()
	var pe *permanentError
	switch {
	case err == nil:
		ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
		merr := w.db.MarkDelivered(ctx, d.ID, tries, now)
		cancel()
		if w.markFailed(log, merr) {
			return
		}
		lat := max(now.Sub(d.CreatedAt), 0)
		w.stats.delivered.Add(1)
		if f := w.cfg.OnDelivered; f != nil {
			f(lat)
		}
		w.stats.latencySum.Add(int64(lat))
		for {
			old := w.stats.latencyMax.Load()
			if int64(lat) <= old || w.stats.latencyMax.CompareAndSwap(old, int64(lat)) {
				break
			}
		}
		level := slog.LevelDebug
		if tries > 1 {
			level = slog.LevelInfo
		}
		log.Log(context.Background(), level, "result delivered", "tries", tries, "status", status, "latency", lat)

	case errors.As(err, &pe):
		if w.record(log, w.db.MarkDead, d.ID, tries, err.Error()) {
			w.stats.dead.Add(1)
			log.Error("delivery dead: it cannot be sent as it is", "tries", tries, "err", err)
		}

	case start.Sub(d.CreatedAt) >= w.cfg.Window:
		// Judged by when the try began, so that the last try is one that
		// began at or after the window's end, whatever it took.
		msg := fmt.Sprintf("gave up after %d tries in %s: %v", tries, w.cfg.Window, err)
		if w.record(log, w.db.MarkDead, d.ID, tries, msg) {
			w.stats.dead.Add(1)
			log.Error("delivery dead: retry window over; an operator may redeliver it", "tries", tries, "status", status, "err", err)
		}

	default:
		next := now.Add(Backoff(tries, w.cfg.MinBackoff, w.cfg.MaxBackoff, rand.Float64()))
		// One last try right at the end of the window, rather than a retry
		// scheduled after it that could only mark the delivery dead.
		if end := d.CreatedAt.Add(w.cfg.Window); next.After(end) {
			next = end
			if next.Before(now) {
				next = now
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
		merr := w.db.MarkRetry(ctx, d.ID, tries, next, err.Error())
		cancel()
		if w.markFailed(log, merr) {
			return
		}
		w.stats.retried.Add(1)
		log.Warn("callback failed; will retry", "tries", tries, "status", status, "retry_in", next.Sub(now), "err", err)
	}
}

// record calls a MarkDead-shaped store method and reports whether it
// recorded the outcome.
func (w *Worker) record(log *slog.Logger, mark func(context.Context, int64, int, string) error, id int64, tries int, msg string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	defer cancel()
	return !w.markFailed(log, mark(ctx, id, tries, msg))
}

// markFailed logs a failure to record an outcome and reports whether there
// was one.
func (w *Worker) markFailed(log *slog.Logger, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, broker.ErrFailedPrecondition), errors.Is(err, broker.ErrNotFound):
		// Another try finished it, or its job (and so it) was removed.
		log.Info("delivery changed while it was being sent; outcome not recorded", "err", err)
	default:
		// The row stays pending and due, so it is tried again: a platform
		// may see the callback twice, with the same delivery_id.
		log.Error("cannot record the outcome of a delivery; it will be tried again", "err", err)
	}
	return true
}

// send makes one callback request for d, issued at now, in the form of its
// platform's protocol, and returns the response's status.
// Errors wrapping *permanentError cannot be fixed by retrying.
func (w *Worker) send(d *store.Delivery, now time.Time) (int, error) {
	p := w.protocols[d.Protocol]
	if p == nil {
		// Retried, not dead: an operator can change the platform's
		// protocol within the window, or run a broker that has it.
		return 0, fmt.Errorf("this broker cannot send results in protocol %q, the platform's; change the platform's protocol", d.Protocol)
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	req, err := p.Request(ctx, d, now)
	if err != nil {
		return 0, err
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "gradebroker-delivery")
	}
	w.stats.attempts.Add(1)
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, w.describe(err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	// Drain a little more so that the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		return resp.StatusCode, nil
	case resp.StatusCode >= 300 && resp.StatusCode <= 399:
		return resp.StatusCode, fmt.Errorf("HTTP %d: a redirect, which is not followed; register the address it points to instead", resp.StatusCode)
	}
	if s := printable(snippet, 200); s != "" {
		return resp.StatusCode, fmt.Errorf("HTTP %d: %s", resp.StatusCode, s)
	}
	return resp.StatusCode, fmt.Errorf("HTTP %d", resp.StatusCode)
}

// describe turns a transport error into a message without the URL, which
// may hold a secret in its query.
func (w *Worker) describe(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %s", w.cfg.Timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("no answer within %s", w.cfg.Timeout)
		}
		return ue.Err
	}
	return err
}

// printable keeps the first n characters of a response body, as one line of
// printable text, for last_error and the log.
func printable(b []byte, n int) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		if unicode.IsSpace(r) {
			return ' '
		}
		return -1
	}, strings.ToValidUTF8(string(b), ""))
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		s = string(r[:n]) + "…"
	}
	return s
}

// Backoff returns the delay before the next try of a delivery whose tries-th
// try just failed: "full jitter" with a floor,
//
//	ceiling = min(maxBackoff, minBackoff × 2^tries)
//	delay   = minBackoff + r × (ceiling − minBackoff),  r uniform in [0, 1)
//
// so with the defaults (1 s, 10 min) the first retry comes 1–2 s after the
// first failure, the second 1–4 s after the second, and from the tenth on
// anywhere in 1 s–10 min. The jitter spreads out the retries of a platform
// that was down, so that they do not all arrive the moment it is back; the
// floor keeps a failing platform from being retried in a tight loop.
func Backoff(tries int, minBackoff, maxBackoff time.Duration, r float64) time.Duration {
	ceiling := minBackoff
	for i := 0; i < tries && ceiling < maxBackoff; i++ {
		if ceiling > maxBackoff/2 {
			ceiling = maxBackoff
			break
		}
		ceiling *= 2
	}
	ceiling = min(ceiling, maxBackoff)
	r = min(max(r, 0), 1)
	return minBackoff + time.Duration(r*float64(ceiling-minBackoff))
}
