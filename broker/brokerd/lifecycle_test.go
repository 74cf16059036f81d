package brokerd

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// startSteps are the steps of Start, in order.
// The console is on, so that its steps are among them.
var startSteps = []string{"metrics listener", "grpc listener", "https listener", "console listener", "dispatcher",
	"delivery", "wakeup", "xqueue", "grpc server", "https server", "certificate reload", "dispatcher watch", "metrics server",
	"console", "console server", "retention", "alerts"}

// withConsole turns the web console on, on a port of its own.
func withConsole(c *Config) { c.Console.ConsoleAddr = "127.0.0.1:0" }

// TestStartFailingAtEachStep: a Start that fails after any of its steps
// stops what it had started and closes the database, and no goroutine of
// the broker's is left to use it. Not parallel, so that the goroutine
// check sees no other test's broker.
func TestStartFailingAtEachStep(t *testing.T) {
	injected := errors.New("injected failure")
	for i, step := range startSteps {
		t.Run(step, func(t *testing.T) {
			e := newBroker(t, withConsole)
			var done []string
			e.b.afterStep = func(name string) error {
				done = append(done, name)
				if name == step {
					return injected
				}
				return nil
			}
			if err := e.b.Start(context.Background()); !errors.Is(err, injected) {
				t.Fatalf("Start = %v, want the failure injected after %q", err, step)
			}
			if !slices.Equal(done, startSteps[:i+1]) {
				t.Fatalf("Start went through %q, want %q", done, startSteps[:i+1])
			}
			if _, err := e.b.DB().ListServerTypes(context.Background()); err == nil {
				t.Error("the database still answers after a failed Start")
			}
			if left := brokerGoroutines(); len(left) > 0 {
				t.Fatalf("%d goroutine(s) of the broker left after a Start that failed after %q:\n%s",
					len(left), step, strings.Join(left, "\n\n"))
			}
			services := map[string]<-chan struct{}{"dispatcher": e.b.Dispatcher().Done(), "delivery": e.b.Delivery().Done(),
				"wakeup": e.b.Waker().Done(), "xqueue": e.b.XQueue().Done(), "retention": e.b.Maintainer().Done(),
				"alerts": e.b.Alerter().Done()}
			for name, stopped := range services {
				if !slices.Contains(done, name) {
					continue
				}
				select {
				case <-stopped:
				default:
					t.Errorf("the %s service was started but not stopped", name)
				}
			}
			if err := e.b.Close(); err != nil {
				t.Errorf("Close after a failed Start = %v, want nil", err)
			}
		})
	}
}

// TestCloseStopsEverything: a broker that started runs every step, and
// Close leaves nothing of it running either.
func TestCloseStopsEverything(t *testing.T) {
	e := newBroker(t, withConsole)
	var done []string
	e.b.afterStep = func(name string) error { done = append(done, name); return nil }
	if err := e.b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(done, startSteps) {
		t.Fatalf("Start went through %q, want %q", done, startSteps)
	}
	if left := brokerGoroutines(); len(left) == 0 {
		t.Fatal("no goroutine of the broker's found while it runs: the check would see nothing")
	}
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	if left := brokerGoroutines(); len(left) > 0 {
		t.Fatalf("%d goroutine(s) of the broker left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// brokerGoroutines returns the stacks of the goroutines running code of
// this module outside test files.
func brokerGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(g, "\n")
		for i := 1; i+1 < len(lines); i++ {
			fn, file := lines[i], lines[i+1]
			if strings.HasPrefix(fn, "github.com/gradebroker/gradebroker/") && !strings.Contains(file, "_test.go:") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
