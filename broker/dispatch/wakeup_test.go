package dispatch

import (
	"context"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/wakeup"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/wakeupmsg"
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

// waitWoken waits until n wakeups were asked for, then checks that no more
// come for a few ticks.
func (f *fakeWaker) waitWoken(t *testing.T, n int) []wakeCall {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.woken()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d wakeups asked for, want %d: %v", len(f.woken()), n, f.woken())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(150 * time.Millisecond)
	got := f.woken()
	if len(got) != n {
		t.Fatalf("%d wakeups asked for, want %d: %v", len(got), n, got)
	}
	return got
}

// clock is a settable time for Config.Now.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
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
	e := setup(t, Config{TickInterval: 10 * time.Millisecond})
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	for _, n := range []string{"g3", "g1", "g2"} {
		e.sleeper(n, 2)
	}
	e.submit(e.platform, 3, 0)
	got := fw.waitWoken(t, 2)
	// Ties are broken by name, so that the same servers are woken first.
	if got[0] != (wakeCall{"g1", "udp://g1.lan:7999", 3}) || got[1].server != "g2" {
		t.Errorf("woken %v, want g1 then g2 for 3 waiting jobs", got)
	}
	// Two more jobs: the two woken servers' 4 slots no longer cover 5.
	e.submit(e.platform, 2, 0)
	if got := fw.waitWoken(t, 3); got[2].server != "g3" || got[2].waiting != 5 {
		t.Errorf("third wakeup %v, want g3 for 5 waiting jobs", got[2])
	}
}

func TestNoWakeupWhileAConnectedServerHasAFreeSlot(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: 10 * time.Millisecond}, "busy")
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	e.sleeper("sleepy", 4)
	g := e.connect("busy", 1)
	e.submit(e.platform, 1, 0)
	g.nextAssign()
	fw.waitWoken(t, 0)
	// The only connected server is full now: the next job wakes sleepy.
	e.submit(e.platform, 1, 0)
	if got := fw.waitWoken(t, 1); got[0].server != "sleepy" || got[0].waiting != 1 {
		t.Errorf("woken %v, want sleepy for 1 job", got)
	}
}

func TestWakeAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	clk := newClock()
	e := setup(t, Config{TickInterval: 5 * time.Millisecond, Now: clk.Now})
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Minute)
	e.sleeper("g1", 4)
	e.submit(e.platform, 1, 0)
	fw.waitWoken(t, 1)
	// It failed, but the same server is not woken again within the minute.
	e.d.WakeResult("g1", false)
	clk.Advance(59 * time.Second)
	fw.waitWoken(t, 1)
	clk.Advance(2 * time.Second)
	fw.waitWoken(t, 2)
	// Connected and silent for longer than the interval: woken again.
	g := e.connect("g1", 0) // no slots: the job keeps waiting
	_ = g
	fw.waitWoken(t, 2)
	clk.Advance(61 * time.Second)
	if got := fw.waitWoken(t, 3); got[2].server != "g1" {
		t.Errorf("woken %v", got)
	}
}

func TestFailedWakeupWakesAnotherServer(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: 10 * time.Millisecond})
	fw := &fakeWaker{}
	e.d.SetWaker(fw, time.Hour)
	e.sleeper("a", 4)
	e.sleeper("b", 4)
	e.submit(e.platform, 1, 0)
	if got := fw.waitWoken(t, 1); got[0].server != "a" {
		t.Fatalf("woken %v, want a", got)
	}
	// a's capacity counts as on its way until its wakeup fails.
	e.d.WakeResult("a", false)
	if got := fw.waitWoken(t, 2); got[1].server != "b" {
		t.Errorf("woken %v, want b after a failed", got)
	}
}

func TestNoWakerNoWakeups(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: 10 * time.Millisecond})
	e.sleeper("g1", 4)
	e.submit(e.platform, 1, 0)
	time.Sleep(50 * time.Millisecond) // ticks run without a waker
}

// logTimes records when a daemon logged each message.
type logTimes struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func (l *logTimes) Enabled(context.Context, slog.Level) bool { return true }
func (l *logTimes) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at[r.Message] = append(l.at[r.Message], time.Now())
	return nil
}
func (l *logTimes) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logTimes) WithGroup(string) slog.Handler      { return l }

func (l *logTimes) times(msg string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.at[msg]...)
}

// stampExecutor records when each job started.
type stampExecutor struct{ started chan time.Time }

var _ executor.Executor = (*stampExecutor)(nil)

func (s *stampExecutor) Run(context.Context, executor.Job) executor.Result {
	s.started <- time.Now()
	return executor.Result{Outcome: gbv1.Outcome_OUTCOME_OK, Result: []byte(`{"woken":true}`)}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSleepingServerIsWokenAndAssigned is the end-to-end test: a job
// for a type whose only server sleeps (a real graderd, disconnected after
// --idle-exit and listening with --wakeup-listen) wakes it over UDP, and the
// job is assigned within a second of the wakeup.
func TestSleepingServerIsWokenAndAssigned(t *testing.T) {
	t.Parallel()
	e := setup(t, Config{TickInterval: 20 * time.Millisecond}, "g1")
	key := make([]byte, wakeupmsg.KeySize)
	copy(key, "a test wakeup key of 32 bytes!!!")
	results := make(chan bool, 10)
	w, err := wakeup.New(wakeup.Config{Broker: "test", Key: key, OnResult: func(s string, ok bool) {
		e.d.WakeResult(s, ok)
		results <- ok
	}}, e.db, testLog)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	e.d.SetWaker(w, time.Minute)

	logs := &logTimes{at: make(map[string][]time.Time)}
	exec := &stampExecutor{started: make(chan time.Time, 10)}
	cfg := graderd.DefaultConfig()
	cfg.Broker = e.addr
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = e.ca.CertFile, e.certs["g1"].CertFile, e.certs["g1"].KeyFile
	cfg.SpoolDir = t.TempDir()
	cfg.Executor = exec
	cfg.ReconnectMin, cfg.ReconnectMax = 50*time.Millisecond, time.Second
	cfg.IdleExit = 300 * time.Millisecond
	cfg.WakeupListen = "127.0.0.1:0"
	cfg.WakeupSecret = hex.EncodeToString(wakeupmsg.DeriveSecret(key, "g1"))
	gd, err := graderd.New(cfg, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- gd.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("graderd Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			gd.Abort()
			t.Error("graderd did not stop")
		}
	})
	eventually(t, "graderd's wakeup port", func() bool { return gd.WakeupAddr() != nil })
	url := "udp://" + gd.WakeupAddr().String()
	if _, err := e.db.UpdateServer(context.Background(), "g1", store.ServerUpdate{WakeupURL: &url}); err != nil {
		t.Fatal(err)
	}
	e.d.ServerChanged(context.Background(), "g1")

	// graderd connects, has nothing to do, and goes to sleep.
	eventually(t, "graderd asleep", func() bool {
		connected, _, _, _ := e.d.ServerStatus("g1")
		return !connected && len(logs.times("idle: disconnected, waiting for a wakeup from the broker")) == 1
	})
	if n := len(logs.times("connected to broker")); n != 1 {
		t.Fatalf("graderd connected %d times before the job, want 1", n)
	}

	ids := e.submit(e.platform, 1, 0)
	var started time.Time
	select {
	case started = <-exec.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the job did not reach the sleeping server within 10 s")
	}
	woken := logs.times("wakeup accepted")
	if len(woken) != 1 {
		t.Fatalf("graderd accepted %d wakeups, want 1", len(woken))
	}
	if ok := <-results; !ok {
		t.Error("the broker counted the wakeup as failed")
	}
	conns := logs.times("connected to broker")
	if len(conns) != 2 || conns[1].Before(woken[0]) {
		t.Errorf("graderd connected at %v, want a second time after the wakeup at %v", conns, woken[0])
	}
	if d := started.Sub(woken[0]); d > time.Second || d < 0 {
		t.Errorf("job assigned %v after the wakeup, want within 1 s", d)
	} else {
		t.Logf("job assigned %v after the wakeup", d)
	}
	e.waitState(ids[0], broker.JobDone)
	if st := w.Stats(); st.OK != 1 || st.Failed != 0 {
		t.Errorf("waker stats %+v", st)
	}
	if s, err := e.db.ServerByName(context.Background(), "g1"); err != nil || s.WakeupFails != 0 {
		t.Errorf("wakeup_fails = %d, %v", s.WakeupFails, err)
	}
}
