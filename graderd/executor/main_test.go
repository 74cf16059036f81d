package executor

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// TestMain fails the run if goroutines outlive the tests: Run must leave
// nothing behind, and every test here waits for its runs.
func TestMain(m *testing.M) {
	before := goroutines()
	code := m.Run()
	if testSandbox.dir != "" {
		os.RemoveAll(testSandbox.dir)
	}
	if code == 0 {
		var check afterTests
		testutil.EventuallyWithin(&check, 5*time.Second, "the tests' goroutines to end", func() bool {
			return goroutines() <= before
		})
		if n := goroutines(); n > before {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			fmt.Fprintf(os.Stderr, "%d goroutines after the tests, %d before:\n%s\n", n, before, strings.TrimSpace(stacks))
			code = 1
		}
	}
	os.Exit(code)
}

// goroutines counts the live goroutines but os/signal's, which the fuzzing
// engine starts (go test -fuzz) and never stops.
func goroutines() int {
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if !strings.Contains(g, "os/signal.loop") {
			n++
		}
	}
	return n
}

// afterTests is the testutil.TB of the check TestMain makes after the
// tests, which have no *testing.T: a time-out shows as goroutines left.
type afterTests struct{}

func (afterTests) Helper()               {}
func (afterTests) Fatalf(string, ...any) {}
