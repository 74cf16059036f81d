package dispatch

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/wakeup"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// fakeWaker records the wakeups the dispatcher asks for.
type fakeWaker struct {
	mu    sync.Mutex
	calls []wakeCall
}

type wakeCall struct {
	server, url string
	waiting     int
}

var (
	_ Waker = (*fakeWaker)(nil)
	_ Waker = (*wakeup.Waker)(nil)
)

func (f *fakeWaker) Wake(server, url string, waiting int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, wakeCall{server, url, waiting})
}

func (f *fakeWaker) woken() []wakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wakeCall(nil), f.calls...)
}

// noTicks is a tick interval no test waits for: the tests call onTick
// themselves, so that what the dispatcher decided is known when they look.
const noTicks = time.Hour

// tick runs one tick of the dispatcher now.
func (e *env) tick() { e.d.onTick(e.d.cfg.Now()) }

// wokenExactly checks that exactly n wakeups were asked for, and returns
// them.
func (f *fakeWaker) wokenExactly(t *testing.T, n int) []wakeCall {
	t.Helper()
	got := f.woken()
	if len(got) != n {
		t.Fatalf("%d wakeups asked for, want %d: %v", len(got), n, got)
	}
	return got
}

func (e *env) sleeper(name string, maxJobs int) {
	e.sleeperURL(name, maxJobs, "udp://"+name+".lan:7999")
}

// sleeperURL registers a server with a wakeup URL that is not connected.
func (e *env) sleeperURL(name string, maxJobs int, url string) {
	e.t.Helper()
	e.addServer(name, maxJobs)
	if _, err := e.db.UpdateServer(context.Background(), name, store.ServerUpdate{WakeupURL: &url}); err != nil {
		e.t.Fatal(err)
	}
	e.d.ServerChanged(context.Background(), name)
}

func TestWakeEnoughServersToCoverWaitingJobs(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: noTicks})
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	for _, n := range []string{"g3", "g1", "g2"} {
		e.sleeper(n, 2)
	}
	// A Submit looks for servers to wake once its jobs are stored.
	e.submit(e.platform, 3, 0)
	got := fw.wokenExactly(t, 2)
	// Ties are broken by name, so that the same servers are woken first.
	if got[0] != (wakeCall{"g1", "udp://g1.lan:7999", 3}) || got[1].server != "g2" {
		t.Errorf("woken %v, want g1 then g2 for 3 waiting jobs", got)
	}
	// Their 4 slots are on their way: a tick wakes nobody more.
	e.tick()
	fw.wokenExactly(t, 2)
	// Two more jobs: the two woken servers' 4 slots no longer cover 5.
	e.submit(e.platform, 2, 0)
	if got := fw.wokenExactly(t, 3); got[2].server != "g3" || got[2].waiting != 5 {
		t.Errorf("third wakeup %v, want g3 for 5 waiting jobs", got[2])
	}
}

func TestNoWakeupWhileAConnectedServerHasAFreeSlot(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: noTicks}, "busy")
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	e.sleeper("sleepy", 4)
	g := e.connect("busy", 1)
	e.submit(e.platform, 1, 0)
	g.nextAssign()
	e.tick()
	fw.wokenExactly(t, 0)
	// The only connected server is full now: the next job wakes sleepy.
	e.submit(e.platform, 1, 0)
	if got := fw.wokenExactly(t, 1); got[0].server != "sleepy" || got[0].waiting != 1 {
		t.Errorf("woken %v, want sleepy for 1 job", got)
	}
}

func TestWakeAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	clk := testutil.NewClock(time.Now())
	e := setup(t, Config{TickInterval: noTicks, Now: clk.Now})
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Minute)
	e.sleeper("g1", 4)
	e.submit(e.platform, 1, 0)
	fw.wokenExactly(t, 1)
	// It failed, but the same server is not woken again within the minute.
	e.d.WakeResult("g1", false)
	clk.Add(59 * time.Second)
	e.tick()
	fw.wokenExactly(t, 1)
	clk.Add(2 * time.Second)
	e.tick()
	fw.wokenExactly(t, 2)
	// Connected and silent for longer than the interval: woken again.
	e.connect("g1", 0) // no slots: the job keeps waiting
	e.tick()
	fw.wokenExactly(t, 2)
	clk.Add(61 * time.Second)
	e.tick()
	if got := fw.wokenExactly(t, 3); got[2].server != "g1" {
		t.Errorf("woken %v", got)
	}
}

func TestFailedWakeupWakesAnotherServer(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: noTicks})
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	e.sleeper("a", 4)
	e.sleeper("b", 4)
	e.submit(e.platform, 1, 0)
	if got := fw.wokenExactly(t, 1); got[0].server != "a" {
		t.Fatalf("woken %v, want a", got)
	}
	// a's capacity counts as on its way until its wakeup fails.
	e.tick()
	fw.wokenExactly(t, 1)
	e.d.WakeResult("a", false)
	e.tick()
	if got := fw.wokenExactly(t, 2); got[1].server != "b" {
		t.Errorf("woken %v, want b after a failed", got)
	}
}

// A broker without a waker (no wakeup key) decides no wakeups and keeps no
// memory of them: once a waker is set, the next tick wakes the server at
// once rather than after an interval.
func TestNoWakerNoWakeups(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: noTicks})
	e.sleeper("g1", 4)
	e.submit(e.platform, 1, 0)
	e.tick()
	e.d.mu.Lock()
	remembered := len(e.d.wake.servers)
	e.d.mu.Unlock()
	if remembered != 0 {
		t.Fatalf("without a waker the dispatcher remembers %d wakeup(s), want none", remembered)
	}
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	e.tick()
	if got := fw.wokenExactly(t, 1); got[0].server != "g1" || got[0].waiting != 1 {
		t.Errorf("woken %v, want g1 for the job that waited", got)
	}
}

// Jobs cancelled while queued stay in their queue until a server reaches
// them, but they wait for nothing: they wake no server, and do not count
// among the jobs a wakeup is for.
func TestCancelledJobsWakeNobody(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: noTicks})
	e.sleeper("g1", 1)
	e.sleeper("g2", 1)
	ids := e.submit(e.platform, 3, 0)
	for _, id := range ids[:2] {
		if err := e.d.CancelJob(context.Background(), id, "platform:plat"); err != nil {
			t.Fatal(err)
		}
	}
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	e.tick()
	if got := fw.wokenExactly(t, 1); got[0].waiting != 1 {
		t.Errorf("woken %v, want one server for the one job that waits", got)
	}
	if err := e.d.CancelJob(context.Background(), ids[2], "platform:plat"); err != nil {
		t.Fatal(err)
	}
	fw2 := &fakeWaker{}
	e.d.SetWaker(fw2, time.Hour)
	e.tick()
	fw2.wokenExactly(t, 0)
}
