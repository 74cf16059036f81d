package testutil

import "testing"

// Slow marks a test of the slow suites: a whole broker with real processes
// (e2e), openssl making keys, the benchmark's smoke run, Python graders,
// built binaries. `go test -short` (make test-short) skips it, naming what
// makes it slow; `make test` and CI run it. CONTRIBUTING.md lists them with
// the times measured.
func Slow(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("slow (%s); runs without -short, as in make test", why)
	}
}
