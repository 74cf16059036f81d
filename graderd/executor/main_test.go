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
	before := runtime.NumGoroutine()
	code := m.Run()
	if testSandbox.dir != "" {
		os.RemoveAll(testSandbox.dir)
	}
	if code == 0 {
		var check afterTests
		testutil.EventuallyWithin(&check, 5*time.Second, "the tests' goroutines to end", func() bool {
			return runtime.NumGoroutine() <= before
		})
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			fmt.Fprintf(os.Stderr, "%d goroutines after the tests, %d before:\n%s\n", n, before, strings.TrimSpace(stacks))
			code = 1
		}
	}
	os.Exit(code)
}

// afterTests is the testutil.TB of the check TestMain makes after the
// tests, which have no *testing.T: a time-out shows as goroutines left.
type afterTests struct{}

func (afterTests) Helper()               {}
func (afterTests) Fatalf(string, ...any) {}
