// Package cgroups gives each grading run a control group of its own, on
// cgroup v1 and v2 hosts alike: it limits the run's memory (swap off) and
// its number of processes, reads what the run used (CPU time, peak memory)
// and what hit a limit (out-of-memory kills, refused forks), and kills every
// process of the run.
//
// It only reads and writes cgroup files; which files live where is taken
// from /proc/self/mountinfo and /proc/self/cgroup, whose paths are
// parameters (see Probe) so that tests can lay out a fake tree.
//
// Runs go under graderd's own cgroup, in each hierarchy: limits configured
// for graderd's service (and, here, for the machine's session) then cover
// its runs too.
package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The v1 controllers a run needs: memory for the memory limit and its
// accounting, pids for the process limit and for listing the run's
// processes, cpuacct for its CPU time.
var v1Controllers = []string{"memory", "pids", "cpuacct"}

// v2Leaf is where graderd moves itself on a cgroup v2 host, so that its
// own cgroup may enable controllers for its runs' cgroups: cgroup v2
// forbids processes in a cgroup whose children have controllers.
const v2Leaf = "graderd"

// Probe says where to read the system's cgroup layout. The zero value means
// the real files.
type Probe struct {
	// Mountinfo is /proc/self/mountinfo.
	Mountinfo string
	// SelfCgroup is /proc/self/cgroup.
	SelfCgroup string
	// Root is where the cgroup file systems are mounted, /sys/fs/cgroup:
	// a cgroup2 mount there means a cgroup v2 host.
	Root string
	// Pid is graderd's pid, for the v2 move into a leaf; 0 means os.Getpid().
	Pid int
}

func (p Probe) withDefaults() Probe {
	if p.Mountinfo == "" {
		p.Mountinfo = "/proc/self/mountinfo"
	}
	if p.SelfCgroup == "" {
		p.SelfCgroup = "/proc/self/cgroup"
	}
	if p.Root == "" {
		p.Root = "/sys/fs/cgroup"
	}
	if p.Pid == 0 {
		p.Pid = os.Getpid()
	}
	return p
}

// Hierarchy is where runs' cgroups are made. Make one with Detect.
type Hierarchy struct {
	// v2 is the directory under which run cgroups are made on a cgroup v2
	// host; empty on a v1 host.
	v2 string
	// v1 maps each of v1Controllers to the directory under which run
	// cgroups are made (graderd's own cgroup in that hierarchy).
	v1 map[string]string
}

// Version returns 1 or 2.
func (h *Hierarchy) Version() int {
	if h.v2 != "" {
		return 2
	}
	return 1
}

// String describes the hierarchy for logs: its version and parent
// directories.
func (h *Hierarchy) String() string {
	if h.v2 != "" {
		return "cgroup v2 under " + h.v2
	}
	return fmt.Sprintf("cgroup v1 under %s, %s, %s", h.v1["memory"], h.v1["pids"], h.v1["cpuacct"])
}

// mount is one cgroup file system from mountinfo.
type mount struct {
	dir     string   // where it is mounted
	root    string   // which cgroup of the hierarchy appears there
	v2      bool     // cgroup2
	options []string // v1: the controllers (super options)
}

// Detect finds where runs' cgroups can be made. On a host whose
// /sys/fs/cgroup is a cgroup2 mount (the "unified" layout of current
// distributions) it uses cgroup v2 and needs the memory and pids
// controllers in graderd's own cgroup; if graderd is alone in that cgroup
// it moves itself into a leaf child (v2Leaf) once, so that the controllers
// can be enabled for its runs, as a delegated systemd service does. On
// other hosts it uses the v1 hierarchies of the memory, pids and cpuacct
// controllers (a cgroup2 mount beside them, the "hybrid" layout, is
// ignored). The error names what is missing.
func Detect(p Probe) (*Hierarchy, error) {
	p = p.withDefaults()
	self, v2, v1, err := readLayout(p)
	if err != nil {
		return nil, err
	}
	if v2 != nil {
		dir, err := setupV2(*v2, self[""], p.Pid)
		if err != nil {
			return nil, err
		}
		return &Hierarchy{v2: dir}, nil
	}
	var missing []string
	h := &Hierarchy{v1: make(map[string]string)}
	for _, c := range v1Controllers {
		m, ok := v1[c]
		if !ok {
			missing = append(missing, c)
			continue
		}
		own, ok := self[c]
		if !ok {
			return nil, fmt.Errorf("%s does not list the %s controller although it is mounted at %s", p.SelfCgroup, c, m.dir)
		}
		dir, err := under(m, own)
		if err != nil {
			return nil, err
		}
		h.v1[c] = dir
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("no cgroup v2 mount at %s and no cgroup v1 hierarchy of the %s controller(s): runs need a cgroup v2 mount or the memory, pids and cpuacct controllers of cgroup v1", p.Root, strings.Join(missing, ", "))
	}
	return h, nil
}

// readLayout reads a process's cgroups (p.SelfCgroup) and the cgroup file
// systems: the cgroup2 mount at p.Root on a v2 host, else the v1 mount of
// each controller (a cgroup2 mount elsewhere, the "hybrid" layout, is
// ignored).
func readLayout(p Probe) (cgroup map[string]string, v2 *mount, v1 map[string]mount, err error) {
	mounts, err := readMounts(p.Mountinfo)
	if err != nil {
		return nil, nil, nil, err
	}
	if cgroup, err = readSelf(p.SelfCgroup); err != nil {
		return nil, nil, nil, err
	}
	v1 = make(map[string]mount)
	for _, m := range mounts {
		if m.v2 {
			if filepath.Clean(m.dir) == filepath.Clean(p.Root) {
				return cgroup, &m, nil, nil
			}
			continue
		}
		for _, o := range m.options {
			v1[o] = m
		}
	}
	return cgroup, nil, v1, nil
}

// under returns the directory of cgroup path own in mount m.
func under(m mount, own string) (string, error) {
	rel, err := filepath.Rel(m.root, own)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("own cgroup %s is outside the part of its hierarchy mounted at %s (%s)", own, m.dir, m.root)
	}
	return filepath.Join(m.dir, rel), nil
}

// readMounts returns the cgroup file systems of a mountinfo file.
func readMounts(path string) ([]mount, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	var out []mount
	for line := range strings.Lines(string(b)) {
		// 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		switch g[0] {
		case "cgroup2":
			out = append(out, mount{dir: unescape(f[4]), root: unescape(f[3]), v2: true})
		case "cgroup":
			out = append(out, mount{dir: unescape(f[4]), root: unescape(f[3]), options: strings.Split(g[2], ",")})
		}
	}
	return out, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readSelf maps each v1 controller of /proc/self/cgroup to its path, and ""
// to the cgroup v2 path.
func readSelf(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading own cgroup: %w", err)
	}
	out := make(map[string]string)
	for line := range strings.Lines(string(b)) {
		// 4:memory:/x, 1:name=systemd:/y, 0::/z
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

// setupV2 returns the cgroup v2 directory whose children may have memory
// and pids limits, enabling those controllers there if it must.
func setupV2(m mount, rel string, pid int) (string, error) {
	own, err := under(m, rel)
	if err != nil {
		return "", err
	}
	controllers, err := os.ReadFile(filepath.Join(own, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Errorf("reading the controllers of own cgroup: %w", err)
	}
	for _, c := range []string{"memory", "pids"} {
		if !hasWord(controllers, c) {
			return "", fmt.Errorf("the %s controller is not available in own cgroup %s (cgroup v2): run graderd as a systemd service with Delegate=yes (the shipped unit does)", c, own)
		}
	}
	subtree := filepath.Join(own, "cgroup.subtree_control")
	enabled, err := os.ReadFile(subtree)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", subtree, err)
	}
	if hasWord(enabled, "memory") && hasWord(enabled, "pids") {
		return own, nil
	}
	procs, err := os.ReadFile(filepath.Join(own, "cgroup.procs"))
	if err != nil {
		return "", fmt.Errorf("reading the processes of own cgroup: %w", err)
	}
	for _, f := range strings.Fields(string(procs)) {
		if f != strconv.Itoa(pid) {
			return "", fmt.Errorf("own cgroup %s holds other processes (pid %s), so its memory and pids controllers cannot be enabled without moving them: run graderd as a systemd service with Delegate=yes (the shipped unit does)", own, f)
		}
	}
	leaf := filepath.Join(own, v2Leaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating leaf cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return "", fmt.Errorf("moving graderd into %s: %w", leaf, err)
	}
	if err := os.WriteFile(subtree, []byte("+memory +pids"), 0); err != nil {
		return "", fmt.Errorf("enabling the memory and pids controllers in %s: %w", own, err)
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

// Resources are the limits of one run's cgroup. Zero means no limit.
type Resources struct {
	// Memory caps the memory of all the run's processes together, in
	// bytes, tmpfs pages they wrote included; swap is off.
	Memory int64
	// Pids caps the run's processes and threads together.
	Pids int
}

// Group is the cgroup of one run: one directory on cgroup v2, one per
// controller on cgroup v1.
type Group struct {
	v2   string            // the directory, on v2
	v1   map[string]string // controller -> directory, on v1
	home map[string]string // controller -> graderd's own cgroup, on v1
	dirs []string          // every directory, in creation order
	// foreign marks a group someone else made (Open): graderd reads it
	// and never changes, kills or removes it.
	foreign bool
}

// ErrForeign is returned by the Group methods that change a cgroup, for a
// Group that Open found rather than New made.
var ErrForeign = errors.New("cgroups: the group belongs to another program (a container engine): graderd only reads it")

// Open returns the cgroup of an existing process, whose /proc/PID/cgroup
// file p.SelfCgroup names, so that graderd can read what the process and
// the others of its cgroup used (CPUUsage, MemoryPeak, Events): a
// container's, which its engine made. The mount table (p.Mountinfo) must
// be graderd's and the process visible from graderd's cgroup namespace (a
// local engine). The Group refuses every change (Kill, Remove, Start):
// the engine owns it.
func Open(p Probe) (*Group, error) {
	p = p.withDefaults()
	cg, v2, v1, err := readLayout(p)
	if err != nil {
		return nil, err
	}
	g := &Group{foreign: true}
	if v2 != nil {
		if g.v2, err = under(*v2, cg[""]); err != nil {
			return nil, err
		}
		g.dirs = []string{g.v2}
		return g, nil
	}
	g.v1 = make(map[string]string)
	for _, c := range v1Controllers {
		m, ok := v1[c]
		if !ok {
			return nil, fmt.Errorf("no cgroup v2 mount at %s and no cgroup v1 hierarchy of the %s controller", p.Root, c)
		}
		own, ok := cg[c]
		if !ok {
			return nil, fmt.Errorf("%s does not list the %s controller", p.SelfCgroup, c)
		}
		if g.v1[c], err = under(m, own); err != nil {
			return nil, err
		}
		g.dirs = append(g.dirs, g.v1[c])
	}
	return g, nil
}

// New creates the cgroup name for a run, with limits r. name must be a
// single path element, unique among the runs of the machine.
func (h *Hierarchy) New(name string, r Resources) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("invalid cgroup name %q", name)
	}
	g := &Group{}
	if h.v2 != "" {
		g.v2 = filepath.Join(h.v2, name)
		if err := g.mkdir(g.v2); err != nil {
			return nil, err
		}
	} else {
		g.v1, g.home = make(map[string]string), h.v1
		for _, c := range v1Controllers {
			dir := filepath.Join(h.v1[c], name)
			if err := g.mkdir(dir); err != nil {
				g.Remove()
				return nil, err
			}
			g.v1[c] = dir
		}
	}
	if err := g.limit(r); err != nil {
		g.Remove()
		return nil, err
	}
	return g, nil
}

func (g *Group) mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("creating the run's cgroup: %w", err)
	}
	g.dirs = append(g.dirs, dir)
	return nil
}

func (g *Group) limit(r Resources) error {
	if g.v2 != "" {
		if r.Memory > 0 {
			if err := write(g.v2, "memory.max", strconv.FormatInt(r.Memory, 10)); err != nil {
				return err
			}
			// Without swap off a run over its limit would swap instead of
			// failing; kernels without swap accounting lack the file.
			if err := write(g.v2, "memory.swap.max", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			// One OOM kill ends the whole run, as on v1 graderd does.
			if err := write(g.v2, "memory.oom.group", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if r.Pids > 0 {
			return write(g.v2, "pids.max", strconv.Itoa(r.Pids))
		}
		return nil
	}
	if r.Memory > 0 {
		mem := g.v1["memory"]
		if err := write(mem, "memory.limit_in_bytes", strconv.FormatInt(r.Memory, 10)); err != nil {
			return err
		}
		// memory+swap at the same value turns swap off for the run; the
		// file exists only with swap accounting, and without it a host
		// with swap lets the run swap (the memory limit still holds).
		if err := write(mem, "memory.memsw.limit_in_bytes", strconv.FormatInt(r.Memory, 10)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if r.Pids > 0 {
		return write(g.v1["pids"], "pids.max", strconv.Itoa(r.Pids))
	}
	return nil
}

func write(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("writing %s of the run's cgroup: %w", file, err)
	}
	return nil
}

// Dirs returns the group's directories, to record for a restarted graderd
// (ReapDirs).
func (g *Group) Dirs() []string { return append([]string(nil), g.dirs...) }

// V2Dir returns the group's directory on cgroup v2, for starting a process
// straight into it (SysProcAttr.CgroupFD), or "" on cgroup v1.
func (g *Group) V2Dir() string { return g.v2 }

// JoinThread moves the calling OS thread into the group on cgroup v1; a
// process it then forks starts inside the group. The caller must have
// locked the goroutine to its thread (runtime.LockOSThread) and let that
// thread die afterwards (return without unlocking), since the thread no
// longer belongs to graderd's own cgroups. It does nothing on cgroup v2,
// where V2Dir serves instead (cgroup v2 moves whole processes only).
//
// Cgroup v1 has no way to start a process inside a cgroup, and moving it
// after it started would race with its first forks; a thread's children
// inherit the thread's cgroups, so a thread that joins first and then forks
// leaves no gap.
func (g *Group) JoinThread() error {
	if g.foreign {
		return ErrForeign
	}
	if g.v2 != "" {
		return nil
	}
	tid := strconv.Itoa(syscall.Gettid())
	for _, c := range v1Controllers {
		if err := write(g.v1[c], "tasks", tid); err != nil {
			return err
		}
	}
	return nil
}

// CPUUsage returns the CPU time (user + system) the group's processes have
// used so far, those that ended included.
func (g *Group) CPUUsage() (time.Duration, error) {
	if g.v2 != "" {
		v, err := readKey(filepath.Join(g.v2, "cpu.stat"), "usage_usec")
		return time.Duration(v) * time.Microsecond, err
	}
	v, err := readUint(filepath.Join(g.v1["cpuacct"], "cpuacct.usage"))
	return time.Duration(v), err
}

// MemoryPeak returns the highest memory use of the group so far, in bytes.
// Kernels before 5.19 have no memory.peak on cgroup v2: it then returns
// the current use and exact false, and the caller keeps the highest value
// it sees.
func (g *Group) MemoryPeak() (peak int64, exact bool, err error) {
	if g.v2 != "" {
		v, err := readUint(filepath.Join(g.v2, "memory.peak"))
		if errors.Is(err, os.ErrNotExist) {
			v, err = readUint(filepath.Join(g.v2, "memory.current"))
			return int64(v), false, err
		}
		return int64(v), true, err
	}
	v, err := readUint(filepath.Join(g.v1["memory"], "memory.max_usage_in_bytes"))
	return int64(v), true, err
}

// Events counts how often the group's limits struck.
type Events struct {
	// OOMKills counts processes the kernel's OOM killer killed for the
	// memory limit.
	OOMKills uint64
	// PidsRefused counts forks the pids limit refused.
	PidsRefused uint64
}

// Events reads the group's limit events.
func (g *Group) Events() (Events, error) {
	var e Events
	var err error
	if g.v2 != "" {
		if e.OOMKills, err = readKey(filepath.Join(g.v2, "memory.events"), "oom_kill"); err != nil {
			return e, err
		}
		e.PidsRefused, err = readKey(filepath.Join(g.v2, "pids.events"), "max")
		return e, err
	}
	// memory.oom_control has counted OOM kills since Linux 4.13.
	if e.OOMKills, err = readKey(filepath.Join(g.v1["memory"], "memory.oom_control"), "oom_kill"); err != nil {
		return e, err
	}
	e.PidsRefused, err = readKey(filepath.Join(g.v1["pids"], "pids.events"), "max")
	return e, err
}

// Procs returns the processes in the group.
func (g *Group) Procs() ([]int, error) {
	dir := g.v2
	if dir == "" {
		dir = g.v1["pids"] // the pids hierarchy holds every process of the run
	}
	return readProcs(dir)
}

func readProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Signal sends sig to every process of the group except those in skip.
func (g *Group) Signal(sig syscall.Signal, skip ...int) {
	pids, _ := g.Procs()
	for _, pid := range pids {
		if !contains(skip, pid) {
			_ = syscall.Kill(pid, sig)
		}
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// killTimeout bounds Kill's loop: every process of the group gets SIGKILL
// until none is left or this passes.
const killTimeout = 5 * time.Second

// Kill kills every process of the group and waits until the group is
// empty (up to a few seconds). On cgroup v2 with cgroup.kill (Linux 5.14)
// the kernel does it at once; otherwise graderd sends SIGKILL to each
// process it lists, again until none is left, which catches processes
// forked in between. (A sandboxed run also has its own pid namespace,
// whose processes all die with its first process.)
func (g *Group) Kill() error {
	if g.foreign {
		return ErrForeign
	}
	return killDirs(g.dirs, g.v2)
}

func killDirs(dirs []string, v2 string) error {
	if v2 != "" {
		_ = os.WriteFile(filepath.Join(v2, "cgroup.kill"), []byte("1"), 0)
	}
	deadline := time.Now().Add(killTimeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		left := 0
		for _, dir := range dirs {
			pids, err := readProcs(dir)
			if err != nil {
				continue
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			left += len(pids)
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes of the run's cgroup are still alive after SIGKILL", left)
		}
		time.Sleep(wait)
	}
}

// Remove kills what is left in the group and deletes its directories.
func (g *Group) Remove() error {
	if g.foreign {
		return ErrForeign
	}
	return removeDirs(g.dirs, g.v2)
}

func removeDirs(dirs []string, v2 string) error {
	err := killDirs(dirs, v2)
	for i := len(dirs) - 1; i >= 0; i-- {
		// A killed process leaves its cgroup only once its parent has
		// reaped it; rmdir fails with EBUSY until then.
		deadline := time.Now().Add(killTimeout)
		for {
			e := os.Remove(dirs[i])
			if e == nil || errors.Is(e, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				err = errors.Join(err, fmt.Errorf("removing the run's cgroup: %w", e))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return err
}

// ReapDirs kills every process in the cgroup directories a crashed graderd
// recorded (Group.Dirs) and removes them. It returns how many processes it
// found. Directories that are gone are skipped.
func ReapDirs(dirs []string) (int, error) {
	n := 0
	var v2 string
	for _, d := range dirs {
		pids, err := readProcs(d)
		if err == nil {
			n = max(n, len(pids))
		}
		if _, err := os.Stat(filepath.Join(d, "cgroup.kill")); err == nil {
			v2 = d
		}
	}
	var existing []string
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			existing = append(existing, d)
		}
	}
	return n, removeDirs(existing, v2)
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// readKey reads the value of key in a flat-keyed file ("key value" lines).
// A missing key reads as 0: older kernels lack some counters.
func readKey(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == key {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, nil
}

// Start starts cmd inside the group. prepare, if not nil, runs first on the
// OS thread that will fork cmd (a thread of its own, which dies afterwards),
// so that it may change what only that thread sees and cmd inherits, such
// as its mount namespace. cmd must not set SysProcAttr.Pdeathsig: that
// signal would come as soon as the thread that forked it ends.
func (g *Group) Start(cmd *exec.Cmd, prepare func() error) error {
	if g.foreign {
		return ErrForeign
	}
	if g.v2 != "" {
		fd, err := os.Open(g.v2)
		if err != nil {
			return fmt.Errorf("opening the run's cgroup: %w", err)
		}
		defer fd.Close()
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(fd.Fd())
	}
	return OnOwnThread(func() error {
		if prepare != nil {
			if err := prepare(); err != nil {
				return err
			}
		}
		if err := g.JoinThread(); err != nil {
			return err
		}
		err := cmd.Start()
		// Back home at once: while this thread is in the run's cgroups,
		// graderd's pid is listed in them, where a kill or the OOM killer
		// would find it.
		if herr := g.leaveThread(); herr != nil && err == nil {
			if cmd.Process != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
			err = herr
		}
		return err
	})
}

// leaveThread moves the calling thread back into graderd's own cgroups on
// cgroup v1.
func (g *Group) leaveThread() error {
	if g.v2 != "" {
		return nil
	}
	tid := strconv.Itoa(syscall.Gettid())
	for _, c := range v1Controllers {
		if err := os.WriteFile(filepath.Join(g.home[c], "tasks"), []byte(tid), 0); err != nil {
			return fmt.Errorf("moving the launching thread back to graderd's cgroup: %w", err)
		}
	}
	return nil
}

// OnOwnThread runs f on an OS thread of its own that is thrown away
// afterwards, for work that changes what the thread is (its namespaces, its
// cgroups) and must not leak into the rest of the process. It never uses
// the process's main thread, which Go keeps alive rather than ending it.
func OnOwnThread(f func() error) error {
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine instead of
		// going back to serve the rest of the program.
		runtime.LockOSThread()
		if syscall.Gettid() == syscall.Getpid() {
			// The main thread, now locked to this goroutine, so the
			// goroutine below gets another one.
			inner := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				inner <- f()
			}()
			err := <-inner
			runtime.UnlockOSThread()
			done <- err
			return
		}
		done <- f()
	}()
	return <-done
}
