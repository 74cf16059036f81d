package maint

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/startstop"
)

// The kinds of alert.
const (
	// KindJobsFailing: more than FailRatio of the jobs that became final
	// in the last FailWindow failed (at least FailMin final jobs).
	KindJobsFailing = "jobs_failing"
	// KindQueueStale: a job has waited longer than QueueAge for a server.
	KindQueueStale = "queue_stale"
	// KindWakeupFailing: a server failed to wake WakeupFails times in a
	// row (servers.wakeup_fails); one alert per server.
	KindWakeupFailing = "server_wakeup_failing"
	// KindDeliveriesDead: result deliveries died since the last alert and
	// wait for an operator's redelivery.
	KindDeliveriesDead = "deliveries_dead"
	// KindNoServer: jobs wait for a set of server types none of whose
	// servers is connected and taking jobs; one alert per set.
	KindNoServer = "no_server"
)

// Severities.
const (
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// AlertConfig tunes an Alerter. The zero value of each field means its
// default.
type AlertConfig struct {
	// Broker is the broker's name, put in every alert's details.
	Broker string
	// Interval is how often the checks run; default 30 s.
	Interval time.Duration
	// Repeat is the least time between two alerts of the same kind about
	// the same subject; default 1 h.
	Repeat time.Duration
	// RetryFailed is how soon an alert that no notifier could send is
	// tried again; default 5 min (at most Repeat).
	RetryFailed time.Duration
	// FailRatio, FailWindow and FailMin: alert when more than FailRatio of
	// the final jobs of the last FailWindow failed, counting at least
	// FailMin final jobs; defaults 0.2, 15 min, 10.
	FailRatio  float64
	FailWindow time.Duration
	FailMin    int
	// QueueAge: alert when a job has waited longer than this; default 15
	// min.
	QueueAge time.Duration
	// WakeupFails: alert when a server's wakeup failed this many times in a
	// row; default 3.
	WakeupFails int
	// NoServerAfter: alert about jobs no connected server takes once the
	// oldest of them has waited this long, so that a server's reconnect does
	// not raise one; default 1 min.
	NoServerAfter time.Duration
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

func (c *AlertConfig) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = 30 * time.Second
	}
	if c.Repeat <= 0 {
		c.Repeat = time.Hour
	}
	if c.RetryFailed <= 0 {
		c.RetryFailed = 5 * time.Minute
	}
	c.RetryFailed = min(c.RetryFailed, c.Repeat)
	if c.FailRatio <= 0 {
		c.FailRatio = 0.2
	}
	if c.FailWindow <= 0 {
		c.FailWindow = 15 * time.Minute
	}
	if c.FailMin <= 0 {
		c.FailMin = 10
	}
	if c.QueueAge <= 0 {
		c.QueueAge = 15 * time.Minute
	}
	if c.WakeupFails <= 0 {
		c.WakeupFails = 3
	}
	if c.NoServerAfter <= 0 {
		c.NoServerAfter = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Queues is what the alerts need of the dispatcher (broker/dispatch
// implements it).
type Queues interface {
	// Classes lists the classes of waiting jobs with how many servers could
	// take them.
	Classes(ctx context.Context) ([]dispatch.ClassStatus, error)
}

// maxDeadTracked bounds how many dead deliveries one check looks at.
const maxDeadTracked = 1000

// Alerter runs the checks on a timer and sends what they find.
type Alerter struct {
	db        *store.DB
	q         Queues
	notifiers []Notifier
	cfg       AlertConfig
	log       *slog.Logger

	mu       sync.Mutex // one check at a time; guards what follows
	next     map[string]time.Time
	deadSeen map[int64]bool

	life startstop.Base

	firingMu sync.Mutex
	firing   []Alert // what the last check found, sent or held back
}

// NewAlerter returns an Alerter over db and q that sends through
// notifiers; with none, alerts are only logged. log may be nil.
func NewAlerter(db *store.DB, q Queues, notifiers []Notifier, cfg AlertConfig, log *slog.Logger) *Alerter {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Alerter{db: db, q: q, notifiers: notifiers, cfg: cfg, log: log.With("component", "alerts"),
		next: make(map[string]time.Time), deadSeen: make(map[int64]bool)}
}

// Config returns the configuration with defaults filled in.
func (a *Alerter) Config() AlertConfig { return a.cfg }

// Start runs the checks every Interval until Stop. ctx bounds only the
// start (see internal/startstop).
func (a *Alerter) Start(ctx context.Context) error {
	if _, err := a.life.Start(ctx); err != nil {
		return fmt.Errorf("alerts: %w", err)
	}
	if len(a.notifiers) == 0 {
		a.log.Warn("no alert webhook or mail server configured: alerts go to this log only")
	}
	if !a.life.Go(a.loop) {
		return fmt.Errorf("alerts: %w during start", startstop.ErrStopped)
	}
	return nil
}

func (a *Alerter) loop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Check(ctx)
		}
	}
}

// Stop stops the checks, waiting for one in progress. It is idempotent, and
// safe before Start.
func (a *Alerter) Stop() { a.life.Stop(nil) }

// Done is closed once the checks have stopped.
func (a *Alerter) Done() <-chan struct{} { return a.life.Done() }

// Check runs every check once and sends what is due, and returns the alerts
// it raised (sent, or tried and failed), for tests and tools.
func (a *Alerter) Check(ctx context.Context) []Alert {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	for k, t := range a.next {
		if !now.Before(t) {
			delete(a.next, k)
		}
	}
	var raised, found []Alert
	raise := func(al Alert) bool {
		found = append(found, Alert{Kind: al.Kind, Severity: al.Severity, Summary: al.Summary, Subject: al.Subject, At: now})
		sent, tried := a.raise(ctx, now, al)
		if tried {
			al.At = now
			raised = append(raised, al)
		}
		return sent
	}
	for _, c := range []struct {
		name string
		fn   func(context.Context, time.Time, func(Alert) bool) error
	}{
		{"failing jobs", a.checkFailing},
		{"queue", a.checkQueue},
		{"wakeups", a.checkWakeups},
		{"dead deliveries", a.checkDead},
	} {
		if err := c.fn(ctx, now, raise); err != nil && ctx.Err() == nil {
			a.log.Error("alert check failed", "check", c.name, "err", err)
		}
	}
	a.firingMu.Lock()
	a.firing = found
	a.firingMu.Unlock()
	return raised
}

// Firing returns the alerts whose condition held at the last check, whether
// they were sent then or held back by the rate limit: what an operator's
// console shows as firing.
func (a *Alerter) Firing() []Alert {
	a.firingMu.Lock()
	defer a.firingMu.Unlock()
	return slices.Clone(a.firing)
}

// raise sends al unless an alert of its kind and subject went out less than
// Repeat ago. It reports whether some notifier took it, and whether it was
// tried at all.
func (a *Alerter) raise(ctx context.Context, now time.Time, al Alert) (sent, tried bool) {
	key := al.Kind + "\x00" + al.Subject
	if t, ok := a.next[key]; ok && now.Before(t) {
		a.log.Debug("alert held back by the rate limit", "alert", al.Kind, "subject", al.Subject, "until", t)
		return false, false
	}
	al.At = now
	if al.Details == nil {
		al.Details = map[string]any{}
	}
	if a.cfg.Broker != "" {
		al.Details["broker"] = a.cfg.Broker
	}
	attrs := []any{"alert", al.Kind, "severity", al.Severity, "subject", al.Subject, "summary", al.Summary}
	if len(a.notifiers) == 0 {
		a.log.Warn("alert (no notifier configured)", attrs...)
		a.next[key] = now.Add(a.cfg.Repeat)
		return true, true
	}
	for _, n := range a.notifiers {
		if err := n.Notify(ctx, al); err != nil {
			a.log.Error("alert not sent", append(attrs, "via", n.Name(), "err", err)...)
			continue
		}
		a.log.Info("alert sent", append(attrs, "via", n.Name())...)
		sent = true
	}
	if sent {
		a.next[key] = now.Add(a.cfg.Repeat)
	} else {
		a.next[key] = now.Add(a.cfg.RetryFailed)
	}
	return sent, true
}

// checkFailing raises KindJobsFailing.
func (a *Alerter) checkFailing(ctx context.Context, now time.Time, raise func(Alert) bool) error {
	counts, err := a.db.FinalCounts(ctx, now.Add(-a.cfg.FailWindow))
	if err != nil {
		return err
	}
	failed := counts[broker.JobFailed]
	final := failed + counts[broker.JobDone] + counts[broker.JobCancelled]
	if final < a.cfg.FailMin || final == 0 {
		return nil
	}
	ratio := float64(failed) / float64(final)
	if ratio <= a.cfg.FailRatio {
		return nil
	}
	raise(Alert{
		Kind:     KindJobsFailing,
		Severity: SeverityCritical,
		Summary: fmt.Sprintf("%.0f%% of the jobs that finished in the last %s failed (%d of %d; threshold %.0f%%); see 'broker admin job list --state failed'",
			100*ratio, a.cfg.FailWindow, failed, final, 100*a.cfg.FailRatio),
		Details: map[string]any{"window": a.cfg.FailWindow.String(), "final": final, "failed": failed,
			"done": counts[broker.JobDone], "cancelled": counts[broker.JobCancelled],
			"ratio": ratio, "threshold": a.cfg.FailRatio},
	})
	return nil
}

// checkQueue raises KindQueueStale and KindNoServer from one look at the
// dispatcher's classes.
func (a *Alerter) checkQueue(ctx context.Context, _ time.Time, raise func(Alert) bool) error {
	if a.q == nil {
		return nil
	}
	classes, err := a.q.Classes(ctx)
	if err != nil {
		return err
	}
	var oldest time.Duration
	waiting := 0
	var stale []map[string]any
	for _, c := range classes {
		waiting += c.Waiting
		oldest = max(oldest, c.OldestAge)
		if c.OldestAge > a.cfg.QueueAge {
			stale = append(stale, map[string]any{"types": c.Types, "waiting": c.Waiting,
				"oldest_waiting": c.OldestAge.Round(time.Second).String(), "servers_connected": c.Connected, "servers_accepting": c.Accepting})
		}
	}
	if len(stale) > 0 {
		raise(Alert{
			Kind:     KindQueueStale,
			Severity: SeverityWarning,
			Summary: fmt.Sprintf("a job has waited %s for a server (threshold %s); %d job(s) waiting; see 'broker admin queue'",
				oldest.Round(time.Second), a.cfg.QueueAge, waiting),
			Details: map[string]any{"oldest_waiting": oldest.Round(time.Second).String(), "threshold": a.cfg.QueueAge.String(),
				"waiting": waiting, "classes": stale},
		})
	}
	for _, c := range classes {
		if c.Accepting > 0 || c.Waiting == 0 || c.OldestAge < a.cfg.NoServerAfter {
			continue
		}
		types := strings.Join(c.Types, ", ")
		why := "no server of these types is connected"
		if c.Connected > 0 {
			why = fmt.Sprintf("its %d connected server(s) are drained or offer no slots", c.Connected)
		}
		raise(Alert{
			Kind:     KindNoServer,
			Severity: SeverityCritical,
			Summary: fmt.Sprintf("%d job(s) for server type(s) %s wait, oldest for %s, and %s",
				c.Waiting, types, c.OldestAge.Round(time.Second), why),
			Details: map[string]any{"types": c.Types, "waiting": c.Waiting, "oldest_waiting": c.OldestAge.Round(time.Second).String(),
				"servers_connected": c.Connected, "servers_accepting": c.Accepting},
			Subject: strings.Join(c.Types, ","),
		})
	}
	return nil
}

// checkWakeups raises KindWakeupFailing, once per server.
func (a *Alerter) checkWakeups(ctx context.Context, _ time.Time, raise func(Alert) bool) error {
	servers, err := a.db.ListServers(ctx)
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.WakeupFails < a.cfg.WakeupFails {
			continue
		}
		details := map[string]any{"server": s.Name, "type": s.Type, "wakeup_fails": s.WakeupFails, "threshold": a.cfg.WakeupFails}
		if !s.LastSeen.IsZero() {
			details["last_seen"] = s.LastSeen.UTC().Format(time.RFC3339)
		}
		raise(Alert{
			Kind:     KindWakeupFailing,
			Severity: SeverityWarning,
			Summary: fmt.Sprintf("server %s did not wake up %d times in a row; check the machine and its wakeup URL",
				s.Name, s.WakeupFails),
			Details: details,
			Subject: s.Name,
		})
	}
	return nil
}

// checkDead raises KindDeliveriesDead when a dead delivery appeared that no
// alert has told of yet. Dead deliveries never come back to life (a
// redelivery makes a new one), so the ones already told of are remembered
// until they are superseded or deleted; after a restart they are told of
// once more.
func (a *Alerter) checkDead(ctx context.Context, _ time.Time, raise func(Alert) bool) error {
	dead, total, err := a.db.DeadDeliveries(ctx, maxDeadTracked)
	if err != nil {
		return err
	}
	current := make(map[int64]bool, len(dead))
	var fresh []int64
	platforms := map[string]int{}
	for _, d := range dead {
		current[d.ID] = true
		if !a.deadSeen[d.ID] {
			fresh = append(fresh, d.ID)
			platforms[d.Platform]++
		}
	}
	for id := range a.deadSeen {
		if !current[id] {
			delete(a.deadSeen, id)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	slices.Sort(fresh)
	shown := fresh
	if len(shown) > 20 {
		shown = shown[:20]
	}
	sent := raise(Alert{
		Kind:     KindDeliveriesDead,
		Severity: SeverityCritical,
		Summary: fmt.Sprintf("%d result deliver%s dead (%d new): platforms did not get these results; "+
			"see 'broker admin delivery list --state dead', then 'broker admin delivery redeliver --all-dead'",
			total, plural(total, "y is", "ies are"), len(fresh)),
		Details: map[string]any{"dead": total, "new": len(fresh), "new_ids": shown, "new_by_platform": platforms},
	})
	if sent {
		for id := range current {
			a.deadSeen[id] = true
		}
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
