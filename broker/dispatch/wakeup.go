package dispatch

import (
	"cmp"
	"slices"
	"time"
)

// Waker sends wakeups to grading servers. The dispatcher decides whom to
// wake, under its lock; the Waker does the network I/O somewhere else, so
// Wake must never block. *wakeup.Waker implements it.
type Waker interface {
	// Wake asks for server to be woken through wakeupURL; waiting is how
	// many jobs wait for servers of its kind.
	Wake(server, wakeupURL string, waiting int)
}

// DefaultWakeupInterval is how often a server is woken at most, and how long
// a connected server may stay silent before it counts as asleep.
const DefaultWakeupInterval = 60 * time.Second

// wakeState is the dispatcher's memory of the wakeups it asked for.
type wakeState struct {
	waker    Waker
	interval time.Duration
	servers  map[int64]*wakeInfo
}

type wakeInfo struct {
	at     time.Time // when the dispatcher last asked to wake it
	failed bool      // the last wakeup failed
	fails  int       // consecutive failures, to try reliable servers first
}

// SetWaker makes the dispatcher wake registered servers with a wakeup URL
// when jobs wait and no connected server may take them. interval (0 for
// DefaultWakeupInterval) is both how often one server is woken at most and
// how long a connected server may be silent before it counts as asleep.
// The waker's results come back through WakeResult.
func (d *Dispatcher) SetWaker(w Waker, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWakeupInterval
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wake = wakeState{waker: w, interval: interval, servers: make(map[int64]*wakeInfo)}
}

// WakeResult tells the dispatcher how a wakeup of server went. A failed
// wakeup no longer counts as capacity on its way, so that another server is
// woken at the next tick; the failed server itself waits for its interval.
func (d *Dispatcher) WakeResult(server string, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.byName[server]
	if s == nil || d.wake.servers == nil {
		return
	}
	wi := d.wake.servers[s.id]
	if wi == nil {
		wi = &wakeInfo{}
		d.wake.servers[s.id] = wi
	}
	wi.failed = !ok
	if ok {
		wi.fails = 0
	} else {
		wi.fails++
	}
}

// wakeIdle wakes sleeping servers for every class of jobs that waits with no
// free slot on a connected server that may take it: enough servers, by
// their max_concurrent_jobs, to cover the waiting jobs, counting the
// capacity of servers already woken within the interval and not yet
// connected. Called with d.mu held; the waker only queues.
func (d *Dispatcher) wakeIdle(now time.Time) {
	ws := &d.wake
	if ws.waker == nil || d.closed {
		return
	}
	for id := range ws.servers {
		if d.servers[id] == nil {
			delete(ws.servers, id) // removed by an operator
		}
	}
	var cands []*server
	for _, c := range d.classes {
		waiting := c.waiting()
		if waiting == 0 || d.freeFor(c) > 0 {
			continue
		}
		pending := 0
		cands = cands[:0]
		for _, s := range d.servers {
			if s.wakeupURL == "" || s.drained || !slices.Contains(c.types, s.typeID) {
				continue // an operator-drained server is not to get jobs
			}
			asleep := s.sess == nil || now.Sub(s.lastSeen) > ws.interval
			if !asleep {
				continue
			}
			wi := ws.servers[s.id]
			if wi != nil && now.Sub(wi.at) < ws.interval {
				if !wi.failed && s.sess == nil {
					pending += s.maxJobs
				}
				continue
			}
			cands = append(cands, s)
		}
		need := waiting - pending
		if need <= 0 || len(cands) == 0 {
			continue
		}
		slices.SortFunc(cands, func(a, b *server) int {
			return cmp.Or(cmp.Compare(ws.failsOf(a.id), ws.failsOf(b.id)), cmp.Compare(b.maxJobs, a.maxJobs), cmp.Compare(a.name, b.name))
		})
		for _, s := range cands {
			if need <= 0 {
				break
			}
			wi := ws.servers[s.id]
			if wi == nil {
				wi = &wakeInfo{}
				ws.servers[s.id] = wi
			}
			wi.at, wi.failed = now, false
			need -= s.maxJobs
			d.log.Info("waking server", "server", s.name, "type", s.typeName, "waiting", waiting, "connected", s.sess != nil)
			ws.waker.Wake(s.name, s.wakeupURL, waiting)
		}
	}
}

func (ws *wakeState) failsOf(id int64) int {
	if wi := ws.servers[id]; wi != nil {
		return wi.fails
	}
	return 0
}

// freeFor counts the free slots of connected servers that may take class c.
func (d *Dispatcher) freeFor(c *class) int {
	n := 0
	for _, t := range c.types {
		for s := range d.free[t] {
			n += max(0, s.freeSlots())
		}
	}
	return n
}
