package executor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// How a memory limit is enforced, best first:
//
//  1. A cgroup v2 per run, under graderd's own cgroup, with memory.max set to
//     the limit, swap off and memory.oom.group on. The kernel counts every
//     process of the run together (a grader that forks cannot multiply its
//     allowance), and memory.events says for sure whether the OOM killer
//     struck. This needs a writable, delegated cgroup v2 with the memory
//     controller. Cgroup v2 forbids controllers in the subtree of a cgroup
//     that holds processes, so when graderd is alone in its cgroup it moves
//     itself into a leaf child ("graderd") once, the usual move of a
//     delegated service; if other processes share the cgroup it does not
//     touch them and uses the fallback.
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

const (
	cgroupRoot     = "/sys/fs/cgroup"
	cgroupSelfFile = "/proc/self/cgroup"
	// cgroupLeaf is where graderd moves itself so its cgroup may have
	// controllers enabled for the runs' cgroups.
	cgroupLeaf = "graderd"
)

// cgroupParent is the cgroup under which runs get their own cgroup, found
// once per process because finding it may move graderd itself.
var cgroupParent struct {
	once sync.Once
	dir  string // "" when cgroups cannot be used
	why  error  // why not, when dir is ""
}

// prlimitPath is prlimit(1)'s path, looked up once.
var prlimitPath = sync.OnceValues(func() (string, error) { return exec.LookPath("prlimit") })

func memoryCgroupParent(log *slog.Logger) (string, error) {
	cgroupParent.once.Do(func() {
		cgroupParent.dir, cgroupParent.why = setupCgroupParent(cgroupRoot, cgroupSelfFile, os.Getpid())
		if cgroupParent.why != nil {
			log.Info("memory limits use RLIMIT_AS through prlimit: no usable cgroup v2", "reason", cgroupParent.why)
		} else {
			log.Info("memory limits use a cgroup v2 per run", "parent", cgroupParent.dir)
		}
	})
	return cgroupParent.dir, cgroupParent.why
}

// setupCgroupParent returns a cgroup v2 directory whose children may have a
// memory limit, enabling the memory controller there if it must. root is the
// cgroup2 mount and selfFile /proc/self/cgroup; both are parameters so tests
// can use a fake tree.
func setupCgroupParent(root, selfFile string, pid int) (string, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		return "", fmt.Errorf("%s is not a cgroup v2 mount: %w", root, err)
	}
	self, err := os.ReadFile(selfFile)
	if err != nil {
		return "", fmt.Errorf("reading own cgroup: %w", err)
	}
	var rel string
	found := false
	for line := range strings.Lines(string(self)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			rel, found = p, true
		}
	}
	if !found {
		return "", fmt.Errorf("%s lists no cgroup v2 hierarchy", selfFile)
	}
	own := filepath.Join(root, filepath.Clean("/"+rel))
	controllers, err := os.ReadFile(filepath.Join(own, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Errorf("reading controllers of own cgroup: %w", err)
	}
	if !hasWord(controllers, "memory") {
		return "", fmt.Errorf("memory controller not available in %s", own)
	}
	subtree := filepath.Join(own, "cgroup.subtree_control")
	enabled, err := os.ReadFile(subtree)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", subtree, err)
	}
	if hasWord(enabled, "memory") {
		return own, nil
	}
	procs, err := os.ReadFile(filepath.Join(own, "cgroup.procs"))
	if err != nil {
		return "", fmt.Errorf("reading processes of own cgroup: %w", err)
	}
	for _, f := range strings.Fields(string(procs)) {
		if f != strconv.Itoa(pid) {
			return "", fmt.Errorf("own cgroup %s holds other processes (pid %s), so its memory controller cannot be enabled without moving them", own, f)
		}
	}
	leaf := filepath.Join(own, cgroupLeaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating leaf cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return "", fmt.Errorf("moving graderd into %s: %w", leaf, err)
	}
	if err := os.WriteFile(subtree, []byte("+memory"), 0); err != nil {
		return "", fmt.Errorf("enabling the memory controller in %s: %w", own, err)
	}
	return own, nil
}

func hasWord(b []byte, w string) bool {
	for _, f := range strings.Fields(string(b)) {
		if f == w {
			return true
		}
	}
	return false
}

// runCgroup is the cgroup v2 of one run.
type runCgroup struct {
	dir string
	fd  *os.File // the directory, for SysProcAttr.CgroupFD
}

// newRunCgroup creates a cgroup named name under parent with a memory limit.
func newRunCgroup(parent, name string, limit int64) (*runCgroup, error) {
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating run cgroup: %w", err)
	}
	cg := &runCgroup{dir: dir}
	if err := cg.write("memory.max", strconv.FormatInt(limit, 10)); err != nil {
		cg.remove()
		return nil, err
	}
	// Without swap off a run over its limit would swap instead of failing;
	// without oom.group the OOM killer would kill one process and leave a
	// grader waiting on it. Kernels without swap accounting lack the file.
	if err := cg.write("memory.swap.max", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
		cg.remove()
		return nil, err
	}
	if err := cg.write("memory.oom.group", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		cg.remove()
		return nil, err
	}
	fd, err := os.Open(dir)
	if err != nil {
		cg.remove()
		return nil, fmt.Errorf("opening run cgroup: %w", err)
	}
	cg.fd = fd
	return cg, nil
}

func (cg *runCgroup) write(file, value string) error {
	if err := os.WriteFile(filepath.Join(cg.dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("writing %s of run cgroup: %w", file, err)
	}
	return nil
}

// oomKilled reports whether the OOM killer killed a process of the run.
func (cg *runCgroup) oomKilled() bool {
	b, err := os.ReadFile(filepath.Join(cg.dir, "memory.events"))
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && (f[0] == "oom_kill" || f[0] == "oom_group_kill") && f[1] != "0" {
			return true
		}
	}
	return false
}

// killAll kills every process of the run, including any that left the
// grader's process group.
func (cg *runCgroup) killAll() {
	if cg.write("cgroup.kill", "1") == nil {
		return
	}
	// Kernels before 5.14 have no cgroup.kill.
	b, err := os.ReadFile(filepath.Join(cg.dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// remove deletes the cgroup, waiting a little for killed processes to go.
func (cg *runCgroup) remove() {
	if cg.fd != nil {
		cg.fd.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := os.Remove(cg.dir)
		if err == nil || errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
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
