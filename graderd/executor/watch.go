package executor

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/graderd/executor/cgroups"
)

// What every executor shares about a run's resources: a Meter reads what
// the run used so far from wherever the executor can (a cgroup, a container
// engine's statistics), and Watch turns those readings into the Usage of
// the Result and into "this limit ends the run now".

// Meter reads a run's resource use. Any func may be nil when the executor
// cannot measure that. Each is called from one goroutine at a time.
type Meter struct {
	// CPU returns the CPU time (user + system) of all the run's processes
	// so far, those that ended included.
	CPU func() (time.Duration, error)
	// Memory returns the run's peak memory so far; exact false means it
	// is only the current use, and Watch keeps the highest it sees.
	Memory func() (peak int64, exact bool, err error)
	// Events returns how many processes the OOM killer killed for the
	// memory limit and how many forks the pids limit refused.
	Events func() (oomKills, pidsRefused uint64, err error)
}

// GroupMeter reads a run's use from its cgroup: the exec executor's own
// cgroup per run, or a container's that its engine made.
func GroupMeter(g *cgroups.Group) Meter {
	return Meter{CPU: g.CPUUsage, Memory: g.MemoryPeak, Events: func() (uint64, uint64, error) {
		ev, err := g.Events()
		return ev.OOMKills, ev.PidsRefused, err
	}}
}

// Polling bounds of Watch. A run's CPU time can grow by at most the number
// of CPUs times the wall time, so the next check comes when the rest of the
// budget could be spent at the earliest, within these bounds: the overshoot
// past a CPU limit is at most about minPoll times the CPUs.
const (
	minPoll = 5 * time.Millisecond
	maxPoll = 50 * time.Millisecond
)

// Watch polls m while a run goes on. Hit delivers, once, the limit a reading
// showed passed: LimitCPUTime when CPU passes cpuLimit (0 = none),
// LimitMemory after an OOM kill, LimitPids after a refused fork. The
// executor then ends the run. Stop ends the watch and returns the Usage,
// read one last time.
type Watch struct {
	hit   chan Limit
	stop  chan struct{}
	done  chan struct{}
	m     Meter
	limit time.Duration
	start time.Time

	mu    sync.Mutex
	usage Usage
	ev    [2]uint64
}

// StartWatch starts watching a run that started at start.
func StartWatch(m Meter, cpuLimit time.Duration, start time.Time) *Watch {
	w := &Watch{hit: make(chan Limit, 1), stop: make(chan struct{}), done: make(chan struct{}), m: m, limit: cpuLimit, start: start}
	go w.loop()
	return w
}

// Hit delivers the limit a reading showed passed.
func (w *Watch) Hit() <-chan Limit { return w.hit }

func (w *Watch) loop() {
	defer close(w.done)
	ncpu := time.Duration(runtime.NumCPU())
	wait := minPoll
	for {
		t := time.NewTimer(wait)
		select {
		case <-w.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if l := w.read(); l != LimitNone {
			w.hit <- l
			return
		}
		wait = maxPoll
		if w.limit > 0 && w.m.CPU != nil {
			w.mu.Lock()
			left := w.limit - w.usage.CPUTime
			w.mu.Unlock()
			wait = min(max(left/ncpu, minPoll), maxPoll)
		}
	}
}

// read takes one reading and returns the limit it shows passed.
func (w *Watch) read() Limit {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m.CPU != nil {
		if cpu, err := w.m.CPU(); err == nil {
			w.usage.CPUTime = cpu
		}
	}
	if w.m.Memory != nil {
		if peak, _, err := w.m.Memory(); err == nil {
			w.usage.PeakMemory = max(w.usage.PeakMemory, peak)
		}
	}
	if w.m.Events != nil {
		if oom, pids, err := w.m.Events(); err == nil {
			w.ev = [2]uint64{oom, pids}
		}
	}
	switch {
	case w.ev[0] > 0:
		return LimitMemory
	case w.ev[1] > 0:
		return LimitPids
	case w.limit > 0 && w.usage.CPUTime > w.limit:
		return LimitCPUTime
	}
	return LimitNone
}

// Stop ends the watch, reads the meter once more and returns the run's
// usage (WallTime from start to now) and what its last reading showed
// passed, even when the run ended before Hit said so.
func (w *Watch) Stop() (Usage, Limit) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	l := w.read()
	w.mu.Lock()
	defer w.mu.Unlock()
	u := w.usage
	u.WallTime = time.Since(w.start)
	return u, l
}

// LimitError says in words which limit ended a run, for Result.Error.
// detail adds what the executor knows (the file system that filled up).
func LimitError(l Limit, limits Limits, timeout time.Duration, detail string) string {
	switch l {
	case LimitWallTime:
		return fmt.Sprintf("wall time limit: the grader ran past its time limit of %v and was killed", timeout)
	case LimitCPUTime:
		return fmt.Sprintf("CPU time limit: the run used more than its %v of CPU time and was killed", limits.CPUTime)
	case LimitMemory:
		return fmt.Sprintf("memory limit: the run used more than its %s of memory (tmpfs files included) and was killed", formatBytes(limits.Memory))
	case LimitPids:
		return fmt.Sprintf("process limit: the run tried to have more than %d processes and threads at once and was killed", limits.Pids)
	case LimitOutput:
		return fmt.Sprintf("output size limit: the result was larger than %d bytes", limits.MaxStdout)
	case LimitDisk:
		return fmt.Sprintf("disk limit: the run filled its %s", detail)
	}
	return ""
}
