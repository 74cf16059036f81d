package executor

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor/cgroups"
)

const (
	// DefaultMaxStdout is the cap on a grader's result when Exec.MaxStdout is 0.
	DefaultMaxStdout = 4 << 20
	// DefaultMaxStderr is the cap on a grader's kept log when Exec.MaxStderr is 0.
	DefaultMaxStderr = 1 << 20
	// DefaultKillGrace is the time between SIGTERM and SIGKILL when Exec.KillGrace is 0.
	DefaultKillGrace = 2 * time.Second
)

// pipeGrace bounds how long Run waits for a grader's output pipes to close
// after every process it could kill is dead: a process that escaped the
// process group (setsid) may still hold them, and must not hold Run.
const pipeGrace = 500 * time.Millisecond

// Exec is an Executor that runs an external grader program per job,
// following the exec convention described in the package documentation. Its
// fields are read-only once Run is called; Run is safe for concurrent use.
type Exec struct {
	// Command is the grader's argv; Command[0] is looked up in PATH.
	Command []string
	// Env is the grader's environment, as "KEY=value": in the sandbox,
	// added to DefaultEnv (replacing its variables of the same name);
	// without it, added to graderd's own environment.
	Env []string
	// Sandbox runs each grader in isolation (see sandbox.go); nil runs it
	// as graderd's own child, with graderd's powers ("sandbox: none").
	Sandbox *Sandbox
	// ReadOnlyPaths are exposed to the sandboxed run read-only, beside the
	// sandbox's own; a path starting with "-" is skipped when missing.
	ReadOnlyPaths []string
	// HostNetwork gives the sandboxed run the host's network instead of a
	// loopback of its own.
	HostNetwork bool
	// Limits bound each run. In the sandbox all are enforced (zero Pids,
	// OpenFiles, TmpSize and WorkSize take the Default* values). Without
	// it: Memory and Pids through a cgroup per run when graderd may make
	// one (root), Memory else through RLIMIT_AS set by prlimit(1), which
	// caps each process's address space (runtimes that reserve much of it
	// up front, Go and the JVM, cannot start under a small one); CPUTime,
	// MaxStdout and MaxStderr always. A run over a limit ends FATAL, with
	// Result.Limit set and an Error that names the limit.
	Limits Limits
	// RunDir, if set, gets a small record of each running grader (its
	// process group, cgroups, crun state), so that ReapOrphans in a
	// restarted graderd can kill graders a crashed one left running.
	RunDir string
	// WorkRoot is the parent of the per-job working directories of runs
	// without the sandbox; empty means os.TempDir(). It is created if
	// missing. Sandboxed runs work in a tmpfs of their own.
	WorkRoot string
	// KillGrace is how long a grader has to exit after SIGTERM before
	// every process of the run gets SIGKILL (default 2s).
	KillGrace time.Duration
	// Logger receives the executor's own logs; nil discards them.
	Logger *slog.Logger
	// Taskgrader, if set, makes the run graderqueue's graderserver
	// running France-ioi's taskgrader: the grader reads the bare jobdata
	// and its output becomes graderserver's result (see Taskgrader).
	Taskgrader *Taskgrader
}

var _ Executor = (*Exec)(nil)

// started is a run Run waits for, with or without the sandbox.
type started struct {
	cmd        *exec.Cmd
	group      *cgroups.Group // nil without a cgroup
	sandbox    *sandboxRun    // nil without the sandbox
	workDir    string         // without the sandbox
	recordPath string         // without the sandbox: the run record (the sandbox keeps its own)
}

// limits returns e.Limits with the defaults filled in: the output caps
// always, the rest in the sandbox only (without it, zero means none).
func (e *Exec) limits() Limits {
	if e.Sandbox != nil {
		return e.Limits.WithDefaults()
	}
	l := e.Limits
	l.MaxStdout = cmp.Or(l.MaxStdout, DefaultMaxStdout)
	l.MaxStderr = cmp.Or(l.MaxStderr, DefaultMaxStderr)
	return l
}

// Run runs the grader for job and maps how it ended to a Result. It returns
// only once every process of the run is dead and its files are gone.
func (e *Exec) Run(ctx context.Context, job Job) (res Result) {
	log := e.logger().With("job_id", job.JobID, "lease_id", job.LeaseID)
	defer func() {
		// The daemon runs jobs on its own goroutines; a bug here must
		// cost one job, not every job on the server.
		if p := recover(); p != nil {
			log.Error("executor panicked", "panic", p)
			res = Temporary(fmt.Sprintf("internal error in graderd's executor: %v", p))
		}
	}()
	if ctx.Err() != nil {
		return Temporary(ErrorCancelled)
	}
	if len(e.Command) == 0 || e.Command[0] == "" {
		return Temporary("graderd has no grader command configured")
	}
	limits := e.limits()
	var stdin []byte
	var err error
	if e.Taskgrader != nil {
		stdin, err = e.Taskgrader.input(job)
	} else {
		stdin, err = JobDocument(job, limits)
	}
	if err != nil {
		return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_FATAL, Error: err.Error()}
	}
	// Resolve the program here, not in the child: the child starts in the
	// work directory, where a relative path would mean something else, and
	// under prlimit or crun a missing program would look like a grader
	// exiting with an error.
	path, err := e.lookPath(e.Command[0])
	if err == nil {
		path, err = filepath.Abs(path)
	}
	if err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			err = ee.Err // it would repeat the name
		}
		return Temporary(fmt.Sprintf("cannot find grader command %q: %v", e.Command[0], err))
	}
	argv := append([]string{path}, e.Command[1:]...)

	stdout := NewResultBuffer(limits.MaxStdout)
	stderr := NewLogBuffer(limits.MaxStderr)
	var st started
	if e.Sandbox != nil {
		st.sandbox, err = e.Sandbox.start(runSpec{
			argv: argv, env: e.Env, readOnly: e.ReadOnlyPaths, restrict: job.RestrictPaths,
			hostNetwork: e.HostNetwork, limits: limits,
			stdin: bytes.NewReader(stdin), stdout: stdout, stderr: stderr,
			leaseID: job.LeaseID, recordRunFile: e.recordFile(job.LeaseID),
		})
		if err != nil {
			return Temporary(fmt.Sprintf("cannot set up the sandbox: %v", err))
		}
		defer st.sandbox.finish()
		st.cmd, st.group = st.sandbox.cmd, st.sandbox.group
	} else {
		// Cleaned up also when the start fails half way: the cgroup, the
		// record and the work directory may exist by then.
		defer func() {
			if st.group != nil {
				_ = st.group.Remove()
			}
			if st.recordPath != "" {
				_ = os.Remove(st.recordPath)
			}
			if st.workDir != "" {
				removeWorkDir(st.workDir, log)
			}
		}()
		if err := e.startUnconfined(&st, job, argv, limits, bytes.NewReader(stdin), stdout, stderr, log); err != nil {
			return Temporary(err.Error())
		}
	}
	start := time.Now()
	pid := st.cmd.Process.Pid

	var meter Meter
	if st.group != nil {
		meter = GroupMeter(st.group)
	}
	watch := StartWatch(meter, limits.CPUTime, start)

	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExited(pid)
	}()

	stop, hit := Supervise(ctx, exited, job.Timeout, stdout, watch)
	if stop == StoppedLimit {
		// A limit ends the run at once: there is nothing to wait for.
		e.killAll(st, pid)
	} else if stop != NotStopped {
		e.terminate(st, pid)
		grace := time.NewTimer(e.killGrace())
		select {
		case <-exited:
		case <-grace.C:
		}
		grace.Stop()
	}
	// The grader has exited or is about to be killed: whatever it left
	// behind goes too, or it would outlive the job and hold its output
	// pipes open.
	e.killAll(st, pid)
	<-exited
	usage, seen := watch.Stop()
	if err := st.cmd.Wait(); err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			log.Warn("waiting for grader", "err", err)
		}
	}
	if st.group == nil {
		// Without a cgroup, the grader's own rusage (its waited-for
		// children included) is the best measure there is.
		if ps := st.cmd.ProcessState; ps != nil {
			usage.CPUTime = ps.UserTime() + ps.SystemTime()
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				usage.PeakMemory = ru.Maxrss << 10
			}
		}
	}
	if limits.CPUTime > 0 && usage.CPUTime > limits.CPUTime && hit == LimitNone && stop == NotStopped {
		seen = LimitCPUTime
	}

	res = e.classify(st, stop, hit, seen, stdout, stderr, job, limits)
	res.Log = stderr.String()
	if e.Taskgrader != nil {
		out, _ := stdout.Bytes()
		res = e.Taskgrader.shape(res, out, res.Log)
	}
	res.Duration = usage.WallTime
	res.Usage = usage
	log.Debug("grader finished", "outcome", res.Outcome, "error", res.Error, "limit", res.Limit.String(), "duration", usage.WallTime, "cpu", usage.CPUTime, "peak_memory", usage.PeakMemory)
	return res
}

// lookPath finds the grader's program as the run will: in the sandbox
// along the run's own PATH (DefaultEnv's, or the executor's), else along
// graderd's.
func (e *Exec) lookPath(name string) (string, error) {
	if e.Sandbox == nil || strings.Contains(name, "/") {
		return exec.LookPath(name)
	}
	path := ""
	for _, kv := range mergeEnv(DefaultEnv, e.Env) {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in the run's PATH %s", path)
}

// terminate asks the run to stop: SIGTERM to the grader's process group,
// or in the sandbox to every process of the run but crun (the grader, the
// first process of its pid namespace, gets it only if it handles it, as the
// kernel protects a namespace's init from signals it does not catch).
func (e *Exec) terminate(st started, pid int) {
	if st.sandbox != nil {
		st.group.Signal(syscall.SIGTERM, pid)
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
}

// killAll kills every process of the run. Without the sandbox the
// grader's pid is still held (waitExited does not reap), so its process
// group id cannot have been reused.
func (e *Exec) killAll(st started, pid int) {
	if st.sandbox == nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	if st.group != nil {
		if err := st.group.Kill(); err != nil {
			e.logger().Warn("cannot kill every process of a run", "err", err)
		}
	}
}

// startUnconfined starts the grader as graderd's child, in a fresh work
// directory and a process group of its own, in a cgroup of its own when
// graderd can make one, else under prlimit for a memory limit.
func (e *Exec) startUnconfined(st *started, job Job, argv []string, limits Limits, stdin io.Reader, stdout, stderr io.Writer, log *slog.Logger) error {
	workDir, err := e.makeWorkDir(job)
	if err != nil {
		return err
	}
	st.workDir = workDir
	// A cgroup even without limits: it measures the run, and its kill
	// reaches processes that left the grader's process group.
	if h, err := unconfinedCgroups(log); err == nil {
		st.group, err = h.New(filepath.Base(workDir), cgroups.Resources{Memory: limits.Memory, Pids: limits.Pids})
		if err != nil {
			log.Warn("cannot make a cgroup for the run", "err", err)
		}
	}
	if st.group == nil && limits.Memory > 0 {
		if argv, err = prlimitArgv(argv, limits.Memory); err != nil {
			return err
		}
	}
	st.cmd = &exec.Cmd{
		Path:        argv[0],
		Args:        argv,
		Dir:         workDir,
		Env:         append(append(os.Environ(), "TMPDIR="+workDir), e.Env...),
		Stdin:       stdin,
		Stdout:      stdout,
		Stderr:      stderr,
		WaitDelay:   pipeGrace,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	record := func(rec runRecord) {
		if e.RunDir == "" {
			return
		}
		if path, err := e.recordFile(job.LeaseID)(rec); err != nil {
			log.Warn("cannot record the run; a crash of graderd would leave it running", "err", err)
		} else {
			st.recordPath = path
		}
	}
	if st.group != nil {
		// Recorded before the grader's first instruction: whatever it
		// starts is in the cgroup, and a graderd killed at any moment
		// after this leaves a record that reaches all of it.
		record(runRecord{bootID: bootID(), cgroups: st.group.Dirs()})
		err = st.group.Start(st.cmd, nil)
	} else {
		err = st.cmd.Start()
	}
	if err != nil {
		return fmt.Errorf("cannot start grader: %v", err)
	}
	if st.group == nil {
		// Without a cgroup only the process group can be recorded, once
		// it exists: a crash between the start and this record leaves the
		// grader running (see orphans.go).
		rec := runRecord{bootID: bootID(), pgid: st.cmd.Process.Pid}
		if _, start, err := procStat(rec.pgid); err == nil {
			rec.start = start
		}
		record(rec)
	}
	return nil
}

// classify maps how the run ended to a Result (without Log, Duration and
// Usage).
func (e *Exec) classify(st started, stop Stop, hit, seen Limit, stdout *ResultBuffer, stderr *LogBuffer, job Job, limits Limits) Result {
	if st.sandbox != nil {
		if msg := st.sandbox.crunError(); msg != "" {
			// crun failed, not the grader (a missing program, a path the
			// sandbox could not mount): another server may do better.
			return Temporary("the sandbox could not run the grader: " + msg)
		}
	}
	if stop != NotStopped {
		return StoppedResult(stop, hit, limits, job.Timeout)
	}
	out, over := stdout.Bytes()
	if over {
		return LimitResult(LimitOutput, limits, job.Timeout, "")
	}
	ws, _ := st.cmd.ProcessState.Sys().(syscall.WaitStatus)
	code, sig := ws.ExitStatus(), syscall.Signal(0)
	if ws.Signaled() {
		code, sig = -1, ws.Signal()
	}
	if st.sandbox != nil {
		code, sig = exitStatus(ws)
	}

	// A limit is judged only when the grader did not end with a result of
	// its own (0): a grader may well catch its solution's failure and grade
	// it. A limit that struck before a TEMPORARY exit (2, as shells exit
	// when a fork fails) is the better answer: a retry would strike it
	// again.
	if code != 0 {
		full := ""
		if st.sandbox != nil {
			full = st.sandbox.fullFS()
		}
		l := seen
		switch {
		case l == LimitNone && full != "":
			l = LimitDisk
		case l == LimitNone && st.group == nil && limits.Memory > 0 && saysOutOfMemory(stderr.String()):
			l = LimitMemory
		}
		if l != LimitNone {
			// FATAL, not TEMPORARY: every server of the type enforces the
			// same limits, so a retry would hit them again and only delay
			// the platform's answer.
			r := LimitResult(l, limits, job.Timeout, full)
			if code == 1 {
				r.Result = JSONOrNil(out)
			}
			return r
		}
	}

	if sig != 0 {
		return Temporary(fmt.Sprintf("grader was killed by signal %d (%v)", int(sig), sig))
	}
	return ExitResult(code, out, stderr.String())
}

// prlimitArgv wraps argv in prlimit(1) so that the grader starts with
// RLIMIT_AS set to the memory limit.
func prlimitArgv(argv []string, memory int64) ([]string, error) {
	pl, err := prlimitPath()
	if err != nil {
		return nil, fmt.Errorf("a memory limit is configured but neither a cgroup nor prlimit(1) is available to enforce it: %w", err)
	}
	return append([]string{pl, "--as=" + strconv.FormatInt(memory, 10), "--"}, argv...), nil
}

// makeWorkDir creates the run's working directory. The random suffix keeps a
// retried lease, or a directory a crash left behind, from colliding.
func (e *Exec) makeWorkDir(job Job) (string, error) {
	root := e.WorkRoot
	if root == "" {
		root = os.TempDir()
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("creating work root: %w", err)
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	dir := filepath.Join(root, fmt.Sprintf("job%d-lease%d-%s", job.JobID, job.LeaseID, hex.EncodeToString(suffix[:])))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating work directory: %w", err)
	}
	return dir, nil
}

// removeWorkDir deletes a run's directory even if the grader took away its
// own write permission on parts of it.
func removeWorkDir(dir string, log *slog.Logger) {
	if os.RemoveAll(dir) == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(dir); err != nil {
		log.Warn("cannot remove work directory", "dir", dir, "err", err)
	}
}

// waitExited blocks until process pid has exited, without reaping it, so
// that its pid, and so its process group id, stay reserved until cmd.Wait.
func waitExited(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

func (e *Exec) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (e *Exec) killGrace() time.Duration {
	if e.KillGrace > 0 {
		return e.KillGrace
	}
	return DefaultKillGrace
}
