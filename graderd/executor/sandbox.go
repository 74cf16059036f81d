package executor

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor/cgroups"
)

// How a sandboxed run is set up.
//
// graderd runs as root. For each run it creates a cgroup (memory, pids, CPU
// accounting; package cgroups) and starts the OCI runtime crun in it, with
// a config.json (built from the runtime-spec types) that gives the grader:
// its own pid, mount, network (loopback only), IPC, UTS and cgroup
// namespaces; a read-only root holding only the system directories, a few
// files of /etc and the paths the executor names; a size-limited tmpfs as
// its working directory (SandboxPath), /tmp and /dev/shm; a fresh /proc; a
// minimal /dev; the slot's own unprivileged uid and gid; no capabilities,
// no_new_privs and the seccomp filter of SeccompProfile; the open-file
// limit; and an environment of DefaultEnv and the executor's variables
// only. crun manages no cgroup (--cgroup-manager=disabled): graderd has
// already placed it in the run's.
//
// crun is started from an OS thread of its own (cgroups.Group.Start) that
// first enters a private mount namespace, inherited by crun, where graderd:
//   - mounts a small tmpfs over the one bundle directory every run shares
//     (so runs never see each other's bundles, and a crash leaves none
//     behind), holding config.json, the root directory and crun's log;
//   - mounts the run's writable tmpfs file systems there and keeps a
//     descriptor of each, to tell afterwards whether one filled up;
//   - mounts crun's binary read-only over itself: crun then skips copying
//     itself into memory and re-executing the copy before each run (its
//     defence against CVE-2019-5736, an attack by root in the container on
//     the runtime's binary, which needs a process that a run does not have:
//     nothing in the sandbox is root or can read the runtime's
//     /proc/PID/exe), which halves its start-up time;
//   - on a "hybrid" cgroup host with controllers in the cgroup2 mount at
//     /sys/fs/cgroup/unified (this project's development machine), detaches
//     that mount, which crun otherwise refuses to run beside.

// DefaultStateDir is where the sandbox keeps crun's state and the runs'
// bundle mount point when SandboxConfig.StateDir is empty.
const DefaultStateDir = "/run/graderd"

// SandboxConfig describes the machine's side of the sandbox, shared by every
// exec executor of a graderd.
type SandboxConfig struct {
	// Runtime is crun's path, or a name looked up in PATH; empty means
	// "crun".
	Runtime string
	// StateDir holds crun's state and the bundle mount point; empty means
	// /run/graderd. It must not be visible to runs (it is not, unless an
	// executor exposes it).
	StateDir string
	// UIDBase is the uid and gid of slot 0; slot N runs as UIDBase+N.
	// Zero means DefaultUIDBase.
	UIDBase uint32
	// Slots is how many runs may be sandboxed at once: each holds one uid.
	Slots int
	// ReadOnlyPaths are exposed read-only to every run, beside the system
	// directories and the defaults of /etc. A path starting with "-" is
	// skipped when it does not exist; any other must exist.
	ReadOnlyPaths []string
	// RestrictRoots are where a platform's restrict_paths may point: the
	// part of a job's restrict_paths inside one of these is exposed to its
	// run read-only, the rest is not.
	RestrictRoots []string
	// Secret lists graderd's own files and directories (its configuration,
	// keys, spool, state): NewSandbox and CheckPaths refuse any exposed
	// path that is, holds or lies inside one of them.
	Secret []string
	// Logger receives the sandbox's logs; nil discards them.
	Logger *slog.Logger
}

// Sandbox runs graders in isolation; see the comment at the top of
// sandbox.go. Make one with NewSandbox; it is safe for concurrent use.
type Sandbox struct {
	cfg         SandboxConfig
	runtime     string // crun's absolute path, symlinks resolved
	cgroups     *cgroups.Hierarchy
	bundleDir   string
	crunRoot    string
	hideUnified bool
	uids        chan uint32
	log         *slog.Logger
}

// NewSandbox checks that runs can be sandboxed on this machine (root, crun,
// cgroups, the paths to expose) and makes a trial run; the error says what
// is missing.
func NewSandbox(cfg SandboxConfig) (*Sandbox, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Runtime == "" {
		cfg.Runtime = "crun"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = DefaultUIDBase
	}
	// crun runs from /, and the bundle's paths are its arguments.
	state, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("sandbox: state directory: %w", err)
	}
	cfg.StateDir = state
	if cfg.Slots < 1 {
		return nil, errors.New("sandbox: at least one slot is needed")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("sandbox: graderd must run as root to sandbox its runs (it gives each run its own uid, cgroup and namespaces); run it as root (the shipped systemd unit does), or set sandbox: none on each executor to run graders unconfined")
	}
	var rt string
	rt, err = exec.LookPath(cfg.Runtime)
	if err == nil {
		rt, err = filepath.EvalSymlinks(rt)
	}
	if err == nil {
		rt, err = filepath.Abs(rt)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox: the OCI runtime %q is not installed (Debian, Ubuntu: apt-get install crun): %w", cfg.Runtime, err)
	}
	h, err := cgroups.Detect(cgroups.Probe{})
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	s := &Sandbox{
		cfg:       cfg,
		runtime:   rt,
		cgroups:   h,
		bundleDir: filepath.Join(cfg.StateDir, "bundle"),
		crunRoot:  filepath.Join(cfg.StateDir, "crun"),
		uids:      make(chan uint32, cfg.Slots),
		log:       cfg.Logger,
	}
	for i := range cfg.Slots {
		s.uids <- cfg.UIDBase + uint32(i)
	}
	s.hideUnified = hybridWithControllers()
	for _, d := range []string{s.bundleDir, s.crunRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("sandbox: creating state directory: %w", err)
		}
	}
	if err := s.CheckPaths("sandbox.read_only_paths", cfg.ReadOnlyPaths); err != nil {
		return nil, err
	}
	if err := s.CheckPaths("sandbox.restrict_roots", cfg.RestrictRoots); err != nil {
		return nil, err
	}
	var fixed []string
	for _, p := range append(slices.Clone(systemDirs), etcDefaults...) {
		fixed = append(fixed, "-"+p)
	}
	if err := s.CheckPaths("the system directories every run sees", fixed); err != nil {
		return nil, err
	}
	if err := s.trial(); err != nil {
		return nil, fmt.Errorf("sandbox: a trial run failed: %w", err)
	}
	return s, nil
}

// String describes the sandbox for logs and graderd -t.
func (s *Sandbox) String() string {
	return fmt.Sprintf("crun (%s), %s, uids %d-%d", s.runtime, s.cgroups, s.cfg.UIDBase, s.cfg.UIDBase+uint32(s.cfg.Slots)-1)
}

// hybridWithControllers reports whether crun would refuse to run because
// the cgroup2 mount of a hybrid host has controllers.
func hybridWithControllers() bool {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) != nil || st.Type != unix.TMPFS_MAGIC {
		return false
	}
	if unix.Statfs("/sys/fs/cgroup/unified", &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return false
	}
	b, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	return err == nil && len(bytes.TrimSpace(b)) > 0
}

// CheckPaths checks paths an executor exposes to its runs (field names
// them in errors): each must be absolute, exist unless it starts with "-",
// and neither be, hold nor lie inside one of SandboxConfig.Secret.
func (s *Sandbox) CheckPaths(field string, paths []string) error {
	return CheckExposedPaths(field, paths, s.cfg.Secret)
}

// CheckExposedPaths checks host paths any executor shows its runs (the
// sandbox's read-only paths, a container's bind mounts; field names them in
// errors): each must be absolute, exist unless it starts with "-", and
// neither be, hold nor lie inside one of secret, graderd's own files.
func CheckExposedPaths(field string, paths, secret []string) error {
	for _, p := range paths {
		path, optional := strings.CutPrefix(p, "-")
		if !filepath.IsAbs(path) {
			return fmt.Errorf("%s: %q is not an absolute path", field, path)
		}
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			if optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("%s: %w (start the path with - to skip it when missing)", field, err)
		}
		for _, sec := range secret {
			if sec == "" {
				continue
			}
			sr, err := filepath.EvalSymlinks(sec)
			if err != nil {
				sr = filepath.Clean(sec)
			}
			if within(sr, real) || within(real, sr) {
				return fmt.Errorf("%s: %s would show graderd's own %s to every run; expose narrower paths, or keep graderd's files elsewhere", field, path, sec)
			}
		}
	}
	return nil
}

// within reports whether path is dir or lies inside it; both are clean and
// absolute.
func within(path, dir string) bool {
	return path == dir || dir == "/" || strings.HasPrefix(path, dir+"/")
}

// trial runs /bin/true-like nothing in the sandbox once, so that graderd
// refuses to start when runs would fail.
func (s *Sandbox) trial() error {
	e := &Exec{Command: []string{"/bin/sh", "-c", "cat >/dev/null; echo '{}'"}, Sandbox: s, KillGrace: time.Second}
	res := e.Run(context.Background(), Job{Timeout: time.Minute, JobData: []byte("{}")})
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		return errors.New(res.Error + lastLine(res.Log))
	}
	return nil
}

// runSpec is what one sandboxed run needs beside the machine's sandbox.
type runSpec struct {
	argv          []string
	env           []string
	readOnly      []string // the executor's read_only_paths
	restrict      []string // the job's restrict_paths
	hostNetwork   bool
	limits        Limits
	stdin         io.Reader
	stdout        io.Writer
	stderr        io.Writer
	leaseID       int64
	recordRunFile func(rec runRecord) (string, error)
}

// sandboxRun is one started run.
type sandboxRun struct {
	s      *Sandbox
	id     string
	uid    uint32
	group  *cgroups.Group
	cmd    *exec.Cmd
	bundle *os.File            // the bundle tmpfs, for crun's log
	fs     map[string]*os.File // the writable tmpfs file systems, by path in the sandbox
	record string              // the run record to remove at the end
}

// start sets the run up and starts crun. The caller must call finish.
func (s *Sandbox) start(spec runSpec) (r *sandboxRun, err error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	r = &sandboxRun{s: s, id: fmt.Sprintf("gb-%d-%s", spec.leaseID, hex.EncodeToString(b[:])), fs: make(map[string]*os.File)}
	r.uid = <-s.uids
	defer func() {
		if err != nil {
			r.finish()
			r = nil
		}
	}()
	mounts, err := s.mounts(spec)
	if err != nil {
		return r, err
	}
	pids := spec.limits.Pids
	if pids > 0 {
		pids++ // crun itself stays in the run's cgroup
	}
	r.group, err = s.cgroups.New(r.id, cgroups.Resources{Memory: spec.limits.Memory, Pids: pids})
	if err != nil {
		return r, err
	}
	if spec.recordRunFile != nil {
		r.record, err = spec.recordRunFile(runRecord{bootID: bootID(), cgroups: r.group.Dirs(), crunRoot: s.crunRoot, crunID: r.id, runtime: s.runtime})
		if err != nil {
			s.log.Warn("cannot record the run; a crash of graderd would leave it running until graderd restarts", "err", err)
		}
	}
	cfg := s.config(spec, r.uid, mounts)
	conf, err := json.Marshal(cfg)
	if err != nil {
		return r, fmt.Errorf("encoding the run's config.json: %w", err)
	}
	r.cmd = &exec.Cmd{
		Path:   s.runtime,
		Args:   []string{"crun", "--root", s.crunRoot, "--log", filepath.Join(s.bundleDir, "crun.log"), "--log-format", "json", "--cgroup-manager", "disabled", "run", "--bundle", s.bundleDir, r.id},
		Dir:    "/",
		Env:    []string{}, // crun needs none, and passes none on
		Stdin:  spec.stdin,
		Stdout: spec.stdout,
		Stderr: spec.stderr,
		// Pipes left open by a process that somehow escaped must not hold
		// the run: see pipeGrace.
		WaitDelay: pipeGrace,
	}
	err = r.group.Start(r.cmd, func() error { return r.prepare(spec, conf) })
	if err != nil {
		return r, fmt.Errorf("starting crun: %w", err)
	}
	return r, nil
}

// tmpfsMounts are the run's writable file systems: their path in the
// sandbox and mode.
var tmpfsMounts = []struct {
	path  string
	mode  string
	owned bool // owned by the run's uid
}{
	{SandboxPath, "0700", true},
	{"/tmp", "1777", false},
	{"/dev/shm", "1777", false},
}

func (r *sandboxRun) size(path string, l Limits) int64 {
	if path == SandboxPath {
		return cmp.Or(l.WorkSize, DefaultWorkSize)
	}
	return cmp.Or(l.TmpSize, DefaultTmpSize)
}

// bundleName is where each tmpfs of tmpfsMounts sits in the bundle.
func bundleName(path string) string {
	return "fs-" + strings.ReplaceAll(strings.Trim(path, "/"), "/", "-")
}

// prepare runs on the thread that starts crun: see the comment at the top.
func (r *sandboxRun) prepare(spec runSpec, conf []byte) error {
	s := r.s
	if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("entering a private mount namespace: %w", err)
	}
	// Mounts made here must not propagate back to the host's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if s.hideUnified {
		if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detaching /sys/fs/cgroup/unified: %w", err)
		}
	}
	if err := unix.Mount(s.runtime, s.runtime, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting crun: %w", err)
	}
	if err := unix.Mount("", s.runtime, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("making crun read-only: %w", err)
	}
	if err := unix.Mount("tmpfs", s.bundleDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=4m,nr_inodes=1024,mode=0700"); err != nil {
		return fmt.Errorf("mounting the bundle: %w", err)
	}
	var err error
	if r.bundle, err = os.Open(s.bundleDir); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.bundleDir, "config.json"), conf, 0o600); err != nil {
		return err
	}
	rootfs := filepath.Join(s.bundleDir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		return err
	}
	for name, content := range etcFiles(r.uid) {
		if err := os.WriteFile(filepath.Join(rootfs, "etc", name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	for _, d := range systemDirs {
		if target, err := os.Readlink(d); err == nil {
			if err := os.Symlink(target, filepath.Join(rootfs, d)); err != nil {
				return err
			}
		}
	}
	for _, m := range tmpfsMounts {
		dir := filepath.Join(s.bundleDir, bundleName(m.path))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		size := r.size(m.path, spec.limits)
		opts := fmt.Sprintf("size=%d,nr_inodes=%d,mode=%s", size, max(1024, size/4096), m.mode)
		if m.owned {
			opts += fmt.Sprintf(",uid=%d,gid=%d", r.uid, r.uid)
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("mounting the run's %s: %w", m.path, err)
		}
		f, err := os.Open(dir)
		if err != nil {
			return err
		}
		r.fs[m.path] = f
	}
	return nil
}

// etcFiles are the files of /etc written for each run: its user and group
// (programs that look up their uid find a name and a home), and localhost.
func etcFiles(uid uint32) map[string]string {
	return map[string]string{
		"passwd": fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\ngrader:x:%d:%d:grader:%s:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", uid, uid, SandboxPath),
		"group":  fmt.Sprintf("root:x:0:\ngrader:x:%d:\nnogroup:x:65534:\n", uid),
		"hosts":  "127.0.0.1\tlocalhost grader\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	}
}

// mounts returns the read-only bind mounts of a run: system directories,
// /etc defaults, the grader's program, the sandbox's and the executor's
// read-only paths, and the job's restrict_paths where allowed.
func (s *Sandbox) mounts(spec runSpec) ([]specs.Mount, error) {
	var out []specs.Mount
	seen := make(map[string]bool)
	mountTable, mountErr := os.ReadFile("/proc/self/mountinfo")
	add := func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		opts := []string{"rbind", "ro", "nosuid", "nodev"}
		// ro, nosuid and nodev reach only the top mount of an rbind: a
		// file system mounted below an exposed directory (a tmpfs, an NFS
		// share) would stay writable, shared by every run and kept after
		// it. The recursive forms reach it too, but need mount_setattr
		// (Linux 5.12), and crun refuses them on a file: they are asked
		// for only where such a mount exists (or the table is unreadable),
		// so that an older kernel cannot affect the other runs.
		if mountErr != nil || looseSubmount(mountTable, path) {
			opts = append(opts, "rro", "rnosuid", "rnodev")
		}
		out = append(out, specs.Mount{Destination: path, Type: "bind", Source: path, Options: opts})
	}
	for _, d := range systemDirs {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			add(d)
		}
	}
	for _, p := range etcDefaults {
		if _, err := os.Stat(p); err == nil {
			add(p)
		}
	}
	// The grader's own program, where it is not under a system directory.
	if prog := spec.argv[0]; !underAny(prog, systemDirs) {
		add(prog)
	}
	for _, p := range append(slices.Clone(s.cfg.ReadOnlyPaths), spec.readOnly...) {
		path, optional := strings.CutPrefix(p, "-")
		if _, err := os.Stat(path); err != nil {
			if optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("a read-only path of the sandbox: %w", err)
		}
		add(filepath.Clean(path))
	}
	for _, p := range s.allowedRestrictPaths(spec.restrict) {
		add(p)
	}
	return out, nil
}

// looseSubmount reports whether mountinfo (the kernel's
// /proc/self/mountinfo) lists a mount strictly below dir (clean, absolute)
// that lacks one of ro, nosuid and nodev.
func looseSubmount(mountinfo []byte, dir string) bool {
	return firstLooseSubmount(mountinfo, dir) != ""
}

// firstLooseSubmount returns the first mount point (as mountinfo escapes
// it) that looseSubmount would count, or "".
func firstLooseSubmount(mountinfo []byte, dir string) string {
	// The kernel escapes these characters of mount points in octal.
	prefix := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(strings.TrimSuffix(dir, "/")) + "/"
	for line := range strings.Lines(string(mountinfo)) {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		// Fields are separated by one space; a mount point keeps any other
		// white space (\v, \r) raw, so strings.Fields would split it.
		f := strings.Split(strings.TrimSuffix(line, "\n"), " ")
		if len(f) < 6 || !strings.HasPrefix(f[4], prefix) {
			continue
		}
		opts := strings.Split(f[5], ",")
		if !slices.Contains(opts, "ro") || !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
			return f[4]
		}
	}
	return ""
}

// LooseSubmount returns a mount point of this machine strictly below dir
// that is writable, or lacks nosuid or nodev ("" when there is none). A
// read-only bind of dir does not reach such a mount where the runtime
// cannot bind recursively read-only (Docker before API 1.44): executors
// that show dir to runs that way refuse it.
func LooseSubmount(dir string) (string, error) {
	table, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading the mount table: %w", err)
	}
	return firstLooseSubmount(table, filepath.Clean(dir)), nil
}

func underAny(path string, dirs []string) bool {
	for _, d := range dirs {
		if within(path, d) {
			return true
		}
	}
	return false
}

// allowedRestrictPaths returns the parts of a job's restrict_paths inside
// SandboxConfig.RestrictRoots, symlinks resolved on both sides so that a
// link cannot point a restrict path elsewhere: a path inside a root is kept,
// a root inside a path is kept (the path covers it), anything else is
// dropped.
func (s *Sandbox) allowedRestrictPaths(restrict []string) []string {
	var out []string
	for _, p := range restrict {
		if !filepath.IsAbs(p) {
			continue
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue
		}
		for _, root := range s.cfg.RestrictRoots {
			rr, err := filepath.EvalSymlinks(root)
			if err != nil {
				continue
			}
			switch {
			case within(real, rr):
				out = append(out, real)
			case within(rr, real):
				out = append(out, rr)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ociVersion is the version config.json declares: every field it uses is
// in the runtime specification 1.0.2 (errnoRet came then), and crun before
// 1.9 refuses any version that does not contain "1.0".
const ociVersion = "1.0.2"

// config builds the run's config.json.
func (s *Sandbox) config(spec runSpec, uid uint32, binds []specs.Mount) *specs.Spec {
	env := mergeEnv(DefaultEnv, spec.env)
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.CgroupNamespace}}
	if !spec.hostNetwork {
		// A network namespace of its own: loopback only, brought up by crun.
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "noexec", "strictatime", "mode=755", "size=64k"}},
	}
	for _, m := range tmpfsMounts {
		mounts = append(mounts, specs.Mount{Destination: m.path, Type: "bind", Source: filepath.Join(s.bundleDir, bundleName(m.path)), Options: []string{"bind", "rw", "nosuid", "nodev"}})
	}
	mounts = append(mounts, binds...)
	return &specs.Spec{
		Version:  ociVersion,
		Process:  processProfile(uid, uid, spec.argv, env, cmp.Or(spec.limits.OpenFiles, DefaultOpenFiles)),
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: "grader",
		Mounts:   mounts,
		Linux: &specs.Linux{
			Namespaces:    ns,
			Seccomp:       SeccompProfile(),
			MaskedPaths:   maskedProcPaths,
			ReadonlyPaths: readonlyProcPaths,
		},
	}
}

// mergeEnv returns base with over's variables added, replacing base's of
// the same name.
func mergeEnv(base, over []string) []string {
	out := slices.Clone(base)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		out = slices.DeleteFunc(out, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		out = append(out, kv)
	}
	return out
}

// crunError returns the error crun logged, if any: it means the sandbox
// failed, not the grader.
func (r *sandboxRun) crunError() string {
	if r.bundle == nil {
		return ""
	}
	f, err := openAt(r.bundle, "crun.log")
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	var msgs []string
	for line := range strings.Lines(string(b)) {
		var e struct{ Msg, Level string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Level == "error" {
			msgs = append(msgs, e.Msg)
		}
	}
	return strings.Join(msgs, "; ")
}

func openAt(dir *os.File, name string) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// fullFS returns the path in the sandbox of a tmpfs that is full (no free
// block or inode), or "".
func (r *sandboxRun) fullFS() string {
	for _, m := range tmpfsMounts {
		f := r.fs[m.path]
		if f == nil {
			continue
		}
		var st unix.Statfs_t
		if unix.Fstatfs(int(f.Fd()), &st) == nil && (st.Bavail == 0 || st.Ffree == 0) {
			return m.path
		}
	}
	return ""
}

// finish removes what start made: the cgroup (killing anything left in
// it), crun's state if crun did not remove it, the descriptors that keep
// the run's tmpfs file systems alive, the run record; and frees the uid.
func (r *sandboxRun) finish() {
	if r.group != nil {
		if err := r.group.Remove(); err != nil {
			r.s.log.Warn("cannot remove a run's cgroup", "run", r.id, "err", err)
		}
	}
	if r.cmd != nil && r.cmd.Process != nil {
		if _, err := os.Stat(filepath.Join(r.s.crunRoot, r.id)); err == nil {
			// crun was killed before it could clean up after itself.
			out, err := exec.Command(r.s.runtime, "--root", r.s.crunRoot, "delete", "--force", r.id).CombinedOutput()
			if err != nil {
				r.s.log.Warn("cannot delete crun's state of a run", "run", r.id, "err", err, "output", string(out))
			}
		}
	}
	for _, f := range r.fs {
		f.Close()
	}
	if r.bundle != nil {
		r.bundle.Close()
	}
	if r.record != "" {
		_ = os.Remove(r.record)
	}
	r.s.uids <- r.uid
}

// exitStatus maps crun's exit status to the grader's: crun exits with the
// grader's status, or with 128+N when a signal N killed it.
func exitStatus(ws syscall.WaitStatus) (code int, sig syscall.Signal) {
	if ws.Signaled() {
		return -1, ws.Signal()
	}
	code = ws.ExitStatus()
	if code > 128 && code <= 128+64 {
		return -1, syscall.Signal(code - 128)
	}
	return code, 0
}
