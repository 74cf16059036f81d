package metrics

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultCacheFor is how long answers from the database are reused between
// scrapes, so that several Prometheus servers scraping at once cost one
// query.
const DefaultCacheFor = 5 * time.Second

// storeTimeout bounds one database read at scrape time.
const storeTimeout = 3 * time.Second

// TypeGauges are one server type's numbers at one moment.
type TypeGauges struct {
	// Queued is how many jobs wait that this type may take.
	Queued int
	// OldestQueued is when the oldest of them was submitted; zero if none.
	OldestQueued time.Time
	// Running is how many leases this type's servers hold.
	Running int
	// Connected is how many of this type's servers are connected.
	Connected int
	// FreeSlots is how many more jobs the connected ones could take.
	FreeSlots int
}

// DispatchSnapshot is the dispatcher's state as the collector reads it.
type DispatchSnapshot struct {
	// Now is the dispatcher's clock, against which queue age is measured.
	Now time.Time
	// Types are the per-type gauges by server type id.
	Types map[int64]TypeGauges
	// TypeNames names the types the dispatcher knows; Sources.ServerTypes
	// names the others.
	TypeNames map[int64]string
	// Assigned, StaleResults, Expired and Requeued are running totals:
	// leases created, results refused because their lease was not current,
	// leases that passed their deadline, and jobs put back in the queue.
	Assigned, StaleResults, Expired, Requeued uint64
	// Results counts results by outcome label (ok, fatal, temporary,
	// timeout, invalid).
	Results map[string]uint64
	// Finished counts jobs that became final, by state label (done,
	// failed, cancelled).
	Finished map[string]uint64
	// AssignAttempts counts assignments by attempt number: index n-1 for
	// the n-th attempt; the last index holds that attempt and all later.
	AssignAttempts []uint64
}

// DeliveryStats are the delivery worker's counters.
type DeliveryStats struct {
	// Attempts counts callback requests made.
	Attempts uint64
	// Retried counts failed tries scheduled again.
	Retried uint64
	// Dead counts deliveries given up.
	Dead uint64
	// Superseded counts deliveries dropped unsent for a newer one.
	Superseded uint64
	// InFlight is how many deliveries are running or waiting for a slot.
	InFlight int
}

// Sources are what the collector reads at scrape time. A nil field leaves
// its series out.
type Sources struct {
	// Dispatch returns the dispatcher's state; it is called once a scrape.
	Dispatch func() DispatchSnapshot
	// Delivery returns the delivery worker's counters.
	Delivery func() DeliveryStats
	// DeliveryCounts returns how many deliveries the outbox holds, by state
	// label (pending, delivered, dead). Its answer is cached for CacheFor.
	DeliveryCounts func(context.Context) (map[string]int, error)
	// DeadUnresolved returns how many dead deliveries are still their
	// job's newest (no redelivery since). Cached for CacheFor.
	DeadUnresolved func(context.Context) (int, error)
	// ServerTypes returns every registered server type's name by id, so
	// that a type with queued jobs but no server has its name. Cached for
	// CacheFor.
	ServerTypes func(context.Context) (map[int64]string, error)
	// CacheFor is how long database answers are reused; 0 means
	// DefaultCacheFor.
	CacheFor time.Duration
}

// Watch registers a collector that reads src at every scrape. Call it once.
func (m *Metrics) Watch(src Sources) error {
	if src.CacheFor <= 0 {
		src.CacheFor = DefaultCacheFor
	}
	return m.reg.Register(newCollector(src))
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

var (
	descJobs = desc("jobs", "Jobs not final, by state (queued: waiting in the dispatcher; running: holding a lease) and server type. "+
		"A queued job that several types may take counts in each.", "state", "type")
	descQueueAge = desc("queue_oldest_age_seconds", "Age of the oldest queued job a server type may take, from its submission; 0 when none waits.", "type")
	descFinished = desc("jobs_finished_total", "Jobs that became final, by state: done, failed (fatal result or out of attempts), cancelled.", "state")
	descAssigned = desc("assignments_total", "Jobs handed to a grading server (leases created).")
	descAttempt  = desc("assignment_attempt", "Attempt number of each assignment: 1 is a job's first try, more are retries after a lease ended without a final result.")
	descResults  = desc("results_total", "Results reported by grading servers for a current lease, by outcome (invalid: OK without a JSON result, or an unknown outcome).", "outcome")
	descStale    = desc("stale_results_total", "Results refused because their lease was no longer current (expired, requeued, cancelled or unknown).")
	descExpired  = desc("lease_expiries_total", "Leases that passed their deadline without a result.")
	descRequeued = desc("requeues_total", "Jobs put back in the queue after an attempt ended without a final result, or by an operator.")
	descConn     = desc("servers_connected", "Grading servers with an open stream, by server type.", "type")
	descFree     = desc("free_slots", "Jobs the connected grading servers could take right now, by server type.", "type")
	descDeliv    = desc("deliveries", "Result deliveries in the outbox, by state (pending, delivered, dead). Dead rows stay after a redelivery, as a record.", "state")
	descDeadOpen = desc("deliveries_dead_unresolved", "Dead deliveries that are still their job's newest: results a platform never received and no operator has redelivered.")
	descDAtt     = desc("delivery_attempts_total", "Result callback requests made to platforms.")
	descDRetry   = desc("delivery_retries_total", "Failed result callbacks scheduled to be tried again.")
	descDDead    = desc("delivery_dead_total", "Result deliveries given up: past their retry window, or unsendable.")
	descDSuper   = desc("delivery_superseded_total", "Result deliveries dropped unsent because a newer one of the same job exists.")
	descDFlight  = desc("deliveries_in_flight", "Result deliveries being sent or waiting for a free worker.")
)

// collector reads the Sources at scrape time.
type collector struct {
	src Sources
	now func() time.Time // time.Now; a test's clock

	mu        sync.Mutex
	fetchedAt time.Time
	cached    stored
}

// stored are the database answers a scrape reuses.
type stored struct {
	deliveries map[string]int
	delivErr   error
	deadOpen   int
	deadErr    error
	types      map[int64]string
}

func newCollector(src Sources) *collector { return &collector{src: src, now: time.Now} }

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descQueueAge, descFinished, descAssigned, descAttempt, descResults,
		descStale, descExpired, descRequeued, descConn, descFree, descDeliv, descDeadOpen, descDAtt, descDRetry, descDDead, descDSuper, descDFlight} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	db := c.fromStore()
	if c.src.Dispatch != nil {
		c.collectDispatch(ch, c.src.Dispatch(), db.types)
	}
	if c.src.DeliveryCounts != nil {
		if db.delivErr != nil {
			ch <- prometheus.NewInvalidMetric(descDeliv, db.delivErr)
		} else {
			for _, st := range []string{"pending", "delivered", "dead"} {
				ch <- prometheus.MustNewConstMetric(descDeliv, prometheus.GaugeValue, float64(db.deliveries[st]), st)
			}
		}
	}
	if c.src.DeadUnresolved != nil {
		if db.deadErr != nil {
			ch <- prometheus.NewInvalidMetric(descDeadOpen, db.deadErr)
		} else {
			ch <- prometheus.MustNewConstMetric(descDeadOpen, prometheus.GaugeValue, float64(db.deadOpen))
		}
	}
	if c.src.Delivery != nil {
		ds := c.src.Delivery()
		ch <- prometheus.MustNewConstMetric(descDAtt, prometheus.CounterValue, float64(ds.Attempts))
		ch <- prometheus.MustNewConstMetric(descDRetry, prometheus.CounterValue, float64(ds.Retried))
		ch <- prometheus.MustNewConstMetric(descDDead, prometheus.CounterValue, float64(ds.Dead))
		ch <- prometheus.MustNewConstMetric(descDSuper, prometheus.CounterValue, float64(ds.Superseded))
		ch <- prometheus.MustNewConstMetric(descDFlight, prometheus.GaugeValue, float64(ds.InFlight))
	}
}

// fromStore returns the cached database answers, refreshing them when they
// are older than CacheFor. A failed refresh is retried at the next scrape.
func (c *collector) fromStore() stored {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fetchedAt.IsZero() && c.now().Sub(c.fetchedAt) < c.src.CacheFor {
		return c.cached
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	ok := true
	if c.src.DeliveryCounts != nil {
		d, err := c.src.DeliveryCounts(ctx)
		if err != nil {
			err, ok = errors.Join(errors.New("reading delivery counts"), err), false
			d = nil
		}
		c.cached.deliveries, c.cached.delivErr = d, err
	}
	if c.src.DeadUnresolved != nil {
		n, err := c.src.DeadUnresolved(ctx)
		if err != nil {
			err, ok = errors.Join(errors.New("counting unresolved dead deliveries"), err), false
		}
		c.cached.deadOpen, c.cached.deadErr = n, err
	}
	if c.src.ServerTypes != nil {
		if t, err := c.src.ServerTypes(ctx); err == nil {
			c.cached.types = t
		} else {
			ok = false // keep the names we had
		}
	}
	if ok {
		c.fetchedAt = c.now()
	}
	return c.cached
}

func (c *collector) collectDispatch(ch chan<- prometheus.Metric, s DispatchSnapshot, storeTypes map[int64]string) {
	name := func(id int64) string {
		if n, ok := storeTypes[id]; ok {
			return n
		}
		if n, ok := s.TypeNames[id]; ok {
			return n
		}
		return "type-" + strconv.FormatInt(id, 10)
	}
	// Every registered type gets its series, zeros included, so that an
	// alert can tell "no server" from "no data".
	ids := make(map[int64]bool, len(s.Types)+len(storeTypes))
	for id := range s.Types {
		ids[id] = true
	}
	for id := range storeTypes {
		ids[id] = true
	}
	for id := range ids {
		g, t := s.Types[id], name(id)
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(g.Queued), "queued", t)
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(g.Running), "running", t)
		age := 0.0
		if g.Queued > 0 && !g.OldestQueued.IsZero() {
			age = max(s.Now.Sub(g.OldestQueued).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(descQueueAge, prometheus.GaugeValue, age, t)
		ch <- prometheus.MustNewConstMetric(descConn, prometheus.GaugeValue, float64(g.Connected), t)
		ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(g.FreeSlots), t)
	}
	for _, st := range []string{"done", "failed", "cancelled"} {
		ch <- prometheus.MustNewConstMetric(descFinished, prometheus.CounterValue, float64(s.Finished[st]), st)
	}
	for _, o := range []string{"ok", "fatal", "temporary", "timeout", "invalid", "not_started"} {
		ch <- prometheus.MustNewConstMetric(descResults, prometheus.CounterValue, float64(s.Results[o]), o)
	}
	ch <- prometheus.MustNewConstMetric(descAssigned, prometheus.CounterValue, float64(s.Assigned))
	ch <- prometheus.MustNewConstMetric(descStale, prometheus.CounterValue, float64(s.StaleResults))
	ch <- prometheus.MustNewConstMetric(descExpired, prometheus.CounterValue, float64(s.Expired))
	ch <- prometheus.MustNewConstMetric(descRequeued, prometheus.CounterValue, float64(s.Requeued))

	// A histogram whose bucket n holds the assignments that were attempt n
	// or earlier; the last slot is open-ended, so it is left to +Inf and
	// counts in the sum as its lowest attempt number.
	buckets := make(map[float64]uint64, len(s.AssignAttempts))
	var count uint64
	var sum float64
	for i, n := range s.AssignAttempts {
		count += n
		sum += float64(i+1) * float64(n)
		if i < len(s.AssignAttempts)-1 {
			buckets[float64(i+1)] = count
		}
	}
	ch <- prometheus.MustNewConstHistogram(descAttempt, count, sum, buckets)
}
