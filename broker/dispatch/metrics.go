package dispatch

import (
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// The kinds of result a server reports, as ResultCounts indexes them.
const (
	ResultOK = iota
	ResultFatal
	ResultTemporary
	ResultTimeout
	// ResultInvalid is an OK without a JSON result, or an unknown outcome.
	ResultInvalid
	// ResultNotStarted is a job handed back for want of a free slot.
	ResultNotStarted
	numResults
)

// ResultNames are the metric labels of the result kinds, by index.
var ResultNames = [numResults]string{"ok", "fatal", "temporary", "timeout", "invalid", "not_started"}

// MaxAttemptBucket is the largest attempt number counted on its own in
// MetricsSnapshot.AssignAttempts; later attempts share the last slot.
const MaxAttemptBucket = 10

// metricCounts are the counters Stats does not keep. They are atomics so
// that a scrape reads them without d.mu; their writers hold d.mu anyway, so
// an increment is one uncontended atomic add on the hot path and nothing
// more.
type metricCounts struct {
	results [numResults]atomic.Uint64
	// final counts jobs that became done, failed or cancelled, by
	// JobState - JobDone.
	final [3]atomic.Uint64
	// attempts counts assignments by attempt number: index n-1 for the
	// n-th attempt, the last index for MaxAttemptBucket and beyond.
	attempts [MaxAttemptBucket]atomic.Uint64
}

func (m *metricCounts) result(kind int) { m.results[kind].Add(1) }

func (m *metricCounts) finalState(s broker.JobState) {
	if i := int(s - broker.JobDone); i >= 0 && i < len(m.final) {
		m.final[i].Add(1)
	}
}

func (m *metricCounts) assigned(attempt int32) {
	i := min(max(int(attempt), 1), MaxAttemptBucket) - 1
	m.attempts[i].Add(1)
}

// TypeGauges are one server type's numbers at one moment. A queued job that
// several types may take counts in each of them.
type TypeGauges struct {
	// Queued is how many jobs wait that a server of this type may take.
	Queued int
	// OldestQueued is when the oldest of them was submitted; zero when
	// none waits.
	OldestQueued time.Time
	// Running is how many leases servers of this type hold (zombies, which
	// were cancelled or taken back but may still run, not included).
	Running int
	// Connected is how many servers of this type have a stream open.
	Connected int
	// FreeSlots is how many more jobs the connected ones could take now.
	FreeSlots int
}

// MetricsSnapshot is what the metrics collector reads at scrape time.
type MetricsSnapshot struct {
	// Now is the dispatcher's clock when the snapshot was taken.
	Now time.Time
	// Stats are the dispatcher's totals.
	Stats Stats
	// Types are the per-type gauges, by server type id, for every type
	// with a registered server or a queued job.
	Types map[int64]TypeGauges
	// TypeNames are the names of the types the dispatcher knows through
	// its servers; a type with jobs but no server is absent.
	TypeNames map[int64]string
	// Results counts results by kind (ResultOK...), index as ResultNames.
	Results [numResults]uint64
	// Final counts jobs that became final: done, failed, cancelled.
	Final map[broker.JobState]uint64
	// AssignAttempts counts assignments by attempt number: index n-1 for
	// the n-th attempt, the last for MaxAttemptBucket and beyond.
	AssignAttempts [MaxAttemptBucket]uint64
}

// MetricsSnapshot returns the dispatcher's gauges and counters. It holds
// the dispatcher's lock for one pass over the queues' heads, the leases and
// the servers: meant for a scrape every few seconds, not for a hot path.
func (d *Dispatcher) MetricsSnapshot() MetricsSnapshot {
	st := d.Stats()
	snap := MetricsSnapshot{Stats: st, Types: make(map[int64]TypeGauges), TypeNames: make(map[int64]string),
		Final: make(map[broker.JobState]uint64, 3)}
	for i := range snap.Results {
		snap.Results[i] = d.mx.results[i].Load()
	}
	for i := range d.mx.final {
		snap.Final[broker.JobDone+broker.JobState(i)] = d.mx.final[i].Load()
	}
	for i := range snap.AssignAttempts {
		snap.AssignAttempts[i] = d.mx.attempts[i].Load()
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	snap.Now = d.cfg.Now()
	oldest := make(map[int64]int64) // type → Unix ms
	for _, c := range d.classes {
		waiting := c.waiting()
		if waiting == 0 {
			continue
		}
		first, _ := d.oldest(c)
		for _, t := range c.types {
			g := snap.Types[t]
			g.Queued += waiting
			snap.Types[t] = g
			if first > 0 && (oldest[t] == 0 || first < oldest[t]) {
				oldest[t] = first
			}
		}
	}
	for t, ms := range oldest {
		g := snap.Types[t]
		g.OldestQueued = time.UnixMilli(ms)
		snap.Types[t] = g
	}
	for _, l := range d.leases {
		if l.srv == nil {
			continue
		}
		g := snap.Types[l.srv.typeID]
		g.Running++
		snap.Types[l.srv.typeID] = g
	}
	for _, s := range d.servers {
		snap.TypeNames[s.typeID] = s.typeName
		g := snap.Types[s.typeID]
		if s.sess != nil {
			g.Connected++
			g.FreeSlots += max(0, s.freeSlots())
		}
		snap.Types[s.typeID] = g
	}
	return snap
}
