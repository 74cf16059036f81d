package executor

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
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
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			fmt.Fprintf(os.Stderr, "%d goroutines after the tests, %d before:\n%s\n", n, before, strings.TrimSpace(stacks))
			code = 1
		}
	}
	os.Exit(code)
}
