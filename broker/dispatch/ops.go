package dispatch

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// This file is what operators and the alerts need of the dispatcher during
// an incident: the queue as each server type sees it, the job classes no
// server takes, taking every job back from a server, and draining one.

// ClassStatus is one class of waiting jobs: the jobs that the same set of
// server types may take.
type ClassStatus struct {
	// TypeIDs and Types are the server types that may take the jobs, by id
	// and by name, sorted by id.
	TypeIDs []int64
	Types   []string
	// Waiting is how many jobs of the class wait.
	Waiting int
	// OldestAge is how long the job that has waited longest has waited,
	// since it was queued or last requeued.
	OldestAge time.Duration
	// Connected counts the connected servers of those types; Accepting
	// those of them that take new jobs (not drained by an operator, slots
	// above 0), busy or not.
	Connected int
	Accepting int
}

// TypeQueue is the queue as one server type sees it.
type TypeQueue struct {
	TypeID int64
	Type   string
	Tags   []string
	// Waiting counts the waiting jobs a server of this type may take; a job
	// several types may take counts in each.
	Waiting int
	// Running counts the jobs running on servers of this type.
	Running int
	// Connected counts its connected servers; Drained those of them an
	// operator drained.
	Connected int
	Drained   int
	// FreeSlots is the free capacity of its connected, undrained servers.
	FreeSlots int
	// OldestAge is how long its longest-waiting job has waited; 0 when none
	// waits.
	OldestAge time.Duration
}

// QueueStats is the queue per server type, plus totals in which every job
// counts once.
type QueueStats struct {
	Types   []TypeQueue
	Waiting int
	Running int
}

// typeNames reads the registered server types: jobs may wait for a type
// that no server of which has ever connected, so the dispatcher alone does
// not know every name.
func (d *Dispatcher) typeNames(ctx context.Context) ([]broker.ServerType, map[int64]string, error) {
	types, err := d.db.ListServerTypes(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list server types: %w", err)
	}
	names := make(map[int64]string, len(types))
	for _, t := range types {
		names[t.ID] = t.Name
	}
	return types, names, nil
}

// oldest finds, among class c's jobs that are not cancelled, the earliest
// submission and the earliest time one started waiting (its last requeue,
// or its submission), both in Unix ms; 0 when none waits. The fifo of each
// platform is in arrival order: its first live job is its oldest.
func (d *Dispatcher) oldest(c *class) (created, since int64) {
	consider := func(j *qjob) {
		if created == 0 || j.created < created {
			created = j.created
		}
		if at := cmp.Or(j.requeuedAt, j.created); since == 0 || at < since {
			since = at
		}
	}
	for _, lv := range c.levels {
		for _, pq := range lv.plats {
			for i := range pq.again {
				if !isCancelled(d.cancelled, pq.again[i].id) {
					consider(&pq.again[i])
				}
			}
			f := &pq.fresh
			for i := 0; i < f.size; i++ {
				if j := &f.buf[(f.head+i)%len(f.buf)]; !isCancelled(d.cancelled, j.id) {
					consider(j)
					break
				}
			}
		}
	}
	return created, since
}

func isCancelled(cancelled map[int64]*class, id int64) bool {
	_, gone := cancelled[id]
	return gone
}

// Classes lists the classes of jobs that wait, with how many servers could
// take them.
func (d *Dispatcher) Classes(ctx context.Context) ([]ClassStatus, error) {
	_, names, err := d.typeNames(ctx)
	if err != nil {
		return nil, err
	}
	now := d.cfg.Now().UnixMilli()
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []ClassStatus
	for _, c := range d.classes {
		waiting := c.waiting()
		if waiting == 0 {
			continue
		}
		_, since := d.oldest(c)
		cs := ClassStatus{TypeIDs: slices.Clone(c.types), Waiting: waiting}
		if since > 0 {
			cs.OldestAge = time.Duration(max(now-since, 0)) * time.Millisecond
		}
		for _, t := range c.types {
			name := names[t]
			if name == "" {
				name = "#" + strconv.FormatInt(t, 10)
			}
			cs.Types = append(cs.Types, name)
		}
		for _, s := range d.servers {
			if s.sess == nil || !slices.Contains(c.types, s.typeID) {
				continue
			}
			cs.Connected++
			if s.capacity() > 0 {
				cs.Accepting++
			}
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b ClassStatus) int { return slices.Compare(a.TypeIDs, b.TypeIDs) })
	return out, nil
}

// Starving lists the classes of waiting jobs that no connected server takes:
// none of their types is connected, or every such server is drained.
func (d *Dispatcher) Starving(ctx context.Context) ([]ClassStatus, error) {
	all, err := d.Classes(ctx)
	if err != nil {
		return nil, err
	}
	var out []ClassStatus
	for _, c := range all {
		if c.Accepting == 0 {
			out = append(out, c)
		}
	}
	return out, nil
}

// QueueStats returns the queue per registered server type, by name.
func (d *Dispatcher) QueueStats(ctx context.Context) (QueueStats, error) {
	types, _, err := d.typeNames(ctx)
	if err != nil {
		return QueueStats{}, err
	}
	now := d.cfg.Now().UnixMilli()
	d.mu.Lock()
	defer d.mu.Unlock()
	var st QueueStats
	byType := make(map[int64]*TypeQueue, len(types))
	st.Types = make([]TypeQueue, len(types))
	for i, t := range types {
		st.Types[i] = TypeQueue{TypeID: t.ID, Type: t.Name, Tags: slices.Clone(t.Tags)}
		byType[t.ID] = &st.Types[i]
	}
	oldest := make(map[int64]int64)
	for _, c := range d.classes {
		waiting := c.waiting()
		if waiting == 0 {
			continue
		}
		_, since := d.oldest(c)
		st.Waiting += waiting
		for _, t := range c.types {
			if tq := byType[t]; tq != nil {
				tq.Waiting += waiting
				if since > 0 && (oldest[t] == 0 || since < oldest[t]) {
					oldest[t] = since
				}
			}
		}
	}
	for t, since := range oldest {
		byType[t].OldestAge = time.Duration(max(now-since, 0)) * time.Millisecond
	}
	st.Running = len(d.leases)
	for _, s := range d.servers {
		tq := byType[s.typeID]
		if tq == nil {
			continue
		}
		for _, l := range s.leases {
			if !l.zombie {
				tq.Running++
			}
		}
		if s.sess == nil {
			continue
		}
		tq.Connected++
		if s.drained {
			tq.Drained++
		}
		tq.FreeSlots += max(0, s.freeSlots())
	}
	return st, nil
}

// RequeueServerJobs takes every running job back from server name, as an
// operator's requeue of each (RequeueJob): the server is told to cancel
// them and their slots stay taken until it lets go; the jobs go back to the
// queue preferring another server for a while; the requeue does not count
// against a job's attempt limit (the limit grows by one, so the attempt the
// server was on is given back). It returns how many jobs it requeued, and
// ErrNotFound for an unknown server.
func (d *Dispatcher) RequeueServerJobs(ctx context.Context, name, actor string) (int, error) {
	now := d.cfg.Now()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return 0, errShuttingDown
	}
	s := d.byName[name]
	if s == nil {
		d.mu.Unlock()
		return 0, fmt.Errorf("%w: server %q; see 'broker admin server list'", broker.ErrNotFound, name)
	}
	var ls []*lease
	for _, l := range s.leases {
		if !l.zombie {
			ls = append(ls, l)
		}
	}
	if len(ls) == 0 {
		d.mu.Unlock()
		return 0, nil
	}
	slices.SortFunc(ls, func(a, b *lease) int { return cmp.Compare(a.id, b.id) })
	reason := "requeued by " + actor + " with every job of server " + name
	type requeued struct {
		l           *lease
		maxAttempts int
	}
	items := make([]requeued, 0, len(ls))
	touched := make(map[*class]bool)
	for _, l := range ls {
		d.revoke(l, reason)
		l.q.maxAttempts++
		items = append(items, requeued{l, int(l.q.maxAttempts)})
		// Avoid the server for a while: the operator took the jobs off it
		// for a reason, and it may still be busy cancelling them.
		d.requeueLocal(l, s.id, now)
		touched[l.cls] = true
	}
	done := make(chan error, 1)
	d.w.enqueue(&op{
		apply: func(tx *store.JobTx) error {
			for _, it := range items {
				if err := tx.EndLease(it.l.id, broker.EndRequeued, reason); err != nil {
					return err
				}
				if err := tx.SetMaxAttempts(it.l.jobID, it.maxAttempts); err != nil {
					return err
				}
				if err := tx.Requeue(it.l.jobID, s.id, actor, it.l.id, reason); err != nil {
					return err
				}
			}
			return nil
		},
		done: done,
	})
	for c := range touched {
		d.fillClass(c, now)
	}
	d.mu.Unlock()
	d.log.Info("server's jobs requeued", "server", name, "actor", actor, "requeued", len(items))
	return len(items), waitDone(ctx, done)
}

// DrainServer stops giving server name new jobs (drain) or starts again
// (!drain), on behalf of actor. The jobs it runs finish as usual. The flag
// outlasts the server's reconnects and is stored, so it outlasts a broker
// restart too. It returns ErrNotFound for an unknown server.
func (d *Dispatcher) DrainServer(ctx context.Context, name string, drain bool, actor string) error {
	now := d.cfg.Now()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errShuttingDown
	}
	s := d.byName[name]
	if s == nil {
		d.mu.Unlock()
		return fmt.Errorf("%w: server %q; see 'broker admin server list'", broker.ErrNotFound, name)
	}
	changed := s.drained != drain
	s.drained = drain
	d.updateFree(s)
	if !drain {
		d.fill(s, now)
	}
	id := s.id
	done := make(chan error, 1)
	d.w.enqueue(&op{apply: func(tx *store.JobTx) error { return tx.SetServerDrained(id, drain) }, done: done})
	d.mu.Unlock()
	if changed {
		verb := "server drained"
		if !drain {
			verb = "server undrained"
		}
		d.log.Info(verb, "server", name, "actor", actor)
	}
	return waitDone(ctx, done)
}

// ServerDrained reports whether an operator drained server name.
func (d *Dispatcher) ServerDrained(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.byName[name]
	return s != nil && s.drained
}

// loadDrained marks the servers drained in the database; load calls it
// with d.mu held.
func (d *Dispatcher) loadDrained(ctx context.Context) error {
	ids, err := d.db.DrainedServers(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if s := d.servers[id]; s != nil {
			s.drained = true
		}
	}
	return nil
}
