package executor

import (
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"

	"github.com/gradebroker/gradebroker/graderd/executor/cgroups"
)

// How the limits of a run without the sandbox are enforced, best first:
//
//  1. A cgroup per run (package cgroups), when graderd may make one (it
//     runs as root, or has a delegated cgroup v2): memory (swap off) and
//     pids for all the run's processes together, its CPU time, and the
//     OOM killer's kills counted for sure.
//  2. RLIMIT_AS, set in the child by running the grader through prlimit(1)
//     (util-linux, installed on every Debian): prlimit sets the limit on
//     itself and execs the grader, so the limit is in place before the
//     grader's first instruction and survives into its children. Go's
//     os/exec has no hook to run code between fork and exec, and setting
//     the limit on the child's pid after Start would race with the grader's
//     first allocations. RLIMIT_AS counts address space, not memory in use,
//     and each process separately; the grader sees failed allocations rather
//     than a kill, so Run recognises the usual "out of memory" messages in
//     its stderr.

// unconfined holds the cgroups of runs without the sandbox, found once per
// process because finding them may move graderd itself (cgroup v2).
var unconfined struct {
	once sync.Once
	h    *cgroups.Hierarchy
	why  error
}

// prlimitPath is prlimit(1)'s path, looked up once.
var prlimitPath = sync.OnceValues(func() (string, error) { return exec.LookPath("prlimit") })

func unconfinedCgroups(log *slog.Logger) (*cgroups.Hierarchy, error) {
	unconfined.once.Do(func() {
		unconfined.h, unconfined.why = cgroups.Detect(cgroups.Probe{})
		if unconfined.why != nil {
			log.Info("runs without the sandbox get no cgroup: memory limits use RLIMIT_AS through prlimit", "reason", unconfined.why)
		} else {
			log.Info("runs without the sandbox get a cgroup each", "cgroups", unconfined.h.String())
		}
	})
	return unconfined.h, unconfined.why
}

// outOfMemoryMarkers are what common runtimes print when an allocation
// fails, lower-cased: Python, C (perror/strerror), C++, Java, Go, Rust,
// Node.js.
var outOfMemoryMarkers = []string{
	"memoryerror",
	"cannot allocate memory",
	"bad_alloc",
	"outofmemoryerror",
	"out of memory",
	"memory allocation of",
	"allocation failed",
}

// saysOutOfMemory reports whether a grader's log says an allocation failed.
func saysOutOfMemory(log string) bool {
	l := strings.ToLower(log)
	for _, m := range outOfMemoryMarkers {
		if strings.Contains(l, m) {
			return true
		}
	}
	return false
}

// formatBytes writes n in MiB when it is a whole number of them.
func formatBytes(n int64) string {
	const mib = 1 << 20
	if n > 0 && n%mib == 0 {
		return fmt.Sprintf("%d MiB", n/mib)
	}
	return fmt.Sprintf("%d bytes", n)
}
