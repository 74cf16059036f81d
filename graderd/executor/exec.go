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

// stopReason is why Run stopped a grader before it exited on its own.
type stopReason int

const (
	notStopped stopReason = iota
	stoppedTimeout
	stoppedCancel
	stoppedOverflow
	stoppedLimit
)

// started is a run Run waits for, with or without the sandbox.
type started struct {
	cmd        *exec.Cmd
	group      *cgroups.Group // nil without a cgroup
	sandbox    *sandboxRun    // nil without the sandbox
	workDir    string         // without the sandbox
	recordPath string         // without the sandbox: the run record (the sandbox keeps its own)
}

// limitsDoc is the "limits" object of the grader's stdin document, so that
// a grader can pass them on to the solution it runs. Zero means none.
type limitsDoc struct {
	CPUTimeSec     float64 `json:"cpu_time_sec"`
	MemoryBytes    int64   `json:"memory_bytes"`
	Pids           int     `json:"pids"`
	OpenFiles      int     `json:"open_files"`
	TmpBytes       int64   `json:"tmp_bytes"`
	WorkBytes      int64   `json:"work_bytes"`
	MaxStdoutBytes int64   `json:"max_stdout_bytes"`
}

func (l Limits) doc() limitsDoc {
	return limitsDoc{l.CPUTime.Seconds(), l.Memory, l.Pids, l.OpenFiles, l.TmpSize, l.WorkSize, l.MaxStdout}
}

// limits returns e.Limits with the defaults filled in: the output caps
// always, the rest in the sandbox only (without it, zero means none).
func (e *Exec) limits() Limits {
	l := e.Limits
	l.MaxStdout = cmp.Or(l.MaxStdout, DefaultMaxStdout)
	l.MaxStderr = cmp.Or(l.MaxStderr, DefaultMaxStderr)
	if e.Sandbox != nil {
		l.Pids = cmp.Or(l.Pids, DefaultPids)
		l.OpenFiles = cmp.Or(l.OpenFiles, DefaultOpenFiles)
		l.TmpSize = cmp.Or(l.TmpSize, DefaultTmpSize)
		l.WorkSize = cmp.Or(l.WorkSize, DefaultWorkSize)
	}
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
			res = temporary(fmt.Sprintf("internal error in graderd's executor: %v", p))
		}
	}()
	if ctx.Err() != nil {
		return temporary(ErrorCancelled)
	}
	if len(e.Command) == 0 || e.Command[0] == "" {
		return temporary("graderd has no grader command configured")
	}
	limits := e.limits()
	var stdin []byte
	var err error
	if e.Taskgrader != nil {
		stdin, err = e.Taskgrader.input(job)
	} else {
		stdin, err = stdinDocument(job, limits)
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
		return temporary(fmt.Sprintf("cannot find grader command %q: %v", e.Command[0], err))
	}
	argv := append([]string{path}, e.Command[1:]...)

	stdout := newResultBuffer(limits.MaxStdout)
	stderr := newLogBuffer(limits.MaxStderr)
	var st started
	if e.Sandbox != nil {
		st.sandbox, err = e.Sandbox.start(runSpec{
			argv: argv, env: e.Env, readOnly: e.ReadOnlyPaths, restrict: job.RestrictPaths,
			hostNetwork: e.HostNetwork, limits: limits,
			stdin: bytes.NewReader(stdin), stdout: stdout, stderr: stderr,
			leaseID: job.LeaseID, recordRunFile: e.recordFile(job.LeaseID),
		})
		if err != nil {
			return temporary(fmt.Sprintf("cannot set up the sandbox: %v", err))
		}
		defer st.sandbox.finish()
		st.cmd, st.group = st.sandbox.cmd, st.sandbox.group
	} else {
		if err := e.startUnconfined(&st, job, argv, limits, bytes.NewReader(stdin), stdout, stderr, log); err != nil {
			return temporary(err.Error())
		}
		defer func() {
			if st.group != nil {
				_ = st.group.Remove()
			}
			if st.recordPath != "" {
				_ = os.Remove(st.recordPath)
			}
			removeWorkDir(st.workDir, log)
		}()
	}
	start := time.Now()
	pid := st.cmd.Process.Pid

	var meter Meter
	if st.group != nil {
		g := st.group
		meter = Meter{CPU: g.CPUUsage, Memory: g.MemoryPeak, Events: func() (uint64, uint64, error) {
			ev, err := g.Events()
			return ev.OOMKills, ev.PidsRefused, err
		}}
	}
	watch := StartWatch(meter, limits.CPUTime, start)

	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExited(pid)
	}()

	var timeout <-chan time.Time
	if job.Timeout > 0 {
		t := time.NewTimer(job.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	stop := notStopped
	hit := LimitNone
	select {
	case <-exited:
	case <-timeout:
		stop, hit = stoppedTimeout, LimitWallTime
	case <-ctx.Done():
		stop = stoppedCancel
	case <-stdout.overflow:
		stop, hit = stoppedOverflow, LimitOutput
	case hit = <-watch.Hit():
		stop = stoppedLimit
	}
	if stop == stoppedLimit {
		// A limit ends the run at once: there is nothing to wait for.
		e.killAll(st, pid)
	} else if stop != notStopped {
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
	if limits.CPUTime > 0 && usage.CPUTime > limits.CPUTime && hit == LimitNone && stop == notStopped {
		seen = LimitCPUTime
	}

	res = e.classify(st, stop, hit, seen, stdout, stderr, job, limits)
	res.Log = stderr.String()
	if e.Taskgrader != nil {
		out, _ := stdout.bytes()
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
	if st.group != nil {
		err = st.group.Start(st.cmd, nil)
	} else {
		err = st.cmd.Start()
	}
	if err != nil {
		return fmt.Errorf("cannot start grader: %v", err)
	}
	if e.RunDir != "" {
		rec := runRecord{bootID: bootID(), pgid: st.cmd.Process.Pid}
		if st.group != nil {
			rec.cgroups = st.group.Dirs()
		}
		if _, start, err := procStat(rec.pgid); err == nil {
			rec.start = start
		}
		if path, err := e.recordFile(job.LeaseID)(rec); err != nil {
			log.Warn("cannot record the grader's process group; a crash of graderd would leave it running", "err", err)
		} else {
			st.recordPath = path
		}
	}
	return nil
}

// classify maps how the run ended to a Result (without Log, Duration and
// Usage).
func (e *Exec) classify(st started, stop stopReason, hit, seen Limit, stdout *resultBuffer, stderr *logBuffer, job Job, limits Limits) Result {
	if st.sandbox != nil {
		if msg := st.sandbox.crunError(); msg != "" {
			// crun failed, not the grader (a missing program, a path the
			// sandbox could not mount): another server may do better.
			return temporary("the sandbox could not run the grader: " + msg)
		}
	}
	limitResult := func(l Limit, detail string) Result {
		r := fatal(LimitError(l, limits, job.Timeout, detail))
		r.Limit = l
		if l == LimitWallTime {
			r.Outcome = gradebrokerv1.Outcome_OUTCOME_TIMEOUT
		}
		return r
	}
	switch stop {
	case stoppedCancel:
		return temporary(ErrorCancelled)
	case stoppedTimeout, stoppedOverflow, stoppedLimit:
		return limitResult(hit, "")
	}
	out, over := stdout.bytes()
	if over {
		return limitResult(LimitOutput, "")
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
			r := limitResult(l, full)
			if code == 1 {
				r.Result = jsonOrNil(out)
			}
			return r
		}
	}

	switch {
	case sig != 0:
		return temporary(fmt.Sprintf("grader was killed by signal %d (%v)", int(sig), sig))
	case code == 0:
		doc := bytes.TrimSpace(out)
		if len(doc) == 0 {
			return fatal("grader exited with status 0 but printed no result on stdout")
		}
		if !json.Valid(doc) {
			return fatal(notJSON(doc, 0))
		}
		return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: doc}
	case code == 1:
		doc := bytes.TrimSpace(out)
		if len(doc) > 0 && !json.Valid(doc) {
			return fatal(notJSON(doc, 1))
		}
		r := fatal("grader reported a fatal error (exit status 1)" + lastLine(stderr.String()))
		if len(doc) > 0 {
			r.Result = doc
		}
		return r
	case code == 2:
		return temporary("grader asked for a retry (exit status 2)" + lastLine(stderr.String()))
	default:
		return temporary(fmt.Sprintf("grader exited with status %d", code) + lastLine(stderr.String()))
	}
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

// stdinDocument builds the JSON object the grader reads on stdin. jobdata is
// spliced in byte for byte: encoding/json would compact and HTML-escape it.
func stdinDocument(job Job, limits Limits) ([]byte, error) {
	jobdata := bytes.TrimSpace(job.JobData)
	if len(jobdata) == 0 {
		jobdata = []byte("null")
	}
	if !json.Valid(jobdata) {
		return nil, errors.New("jobdata is not valid JSON")
	}
	tags := job.Tags
	if tags == nil {
		tags = []string{}
	}
	timeout := 0.0
	if job.Timeout > 0 {
		timeout = job.Timeout.Seconds()
	}
	restrict := job.RestrictPaths
	if restrict == nil {
		restrict = []string{}
	}
	head, err := json.Marshal(struct {
		JobID           int64     `json:"job_id"`
		LeaseID         int64     `json:"lease_id"`
		Attempt         uint32    `json:"attempt"`
		Name            string    `json:"name"`
		Tags            []string  `json:"tags"`
		TimeoutSec      float64   `json:"timeout_sec"`
		Limits          limitsDoc `json:"limits"`
		RestrictToPaths []string  `json:"restrictToPaths"`
	}{job.JobID, job.LeaseID, job.Attempt, job.Name, tags, timeout, limits.doc(), restrict})
	if err != nil {
		return nil, fmt.Errorf("encoding the grader's input: %w", err)
	}
	doc := append(head[:len(head)-1], `,"jobdata":`...)
	doc = append(doc, jobdata...)
	return append(doc, "}\n"...), nil
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

func notJSON(doc []byte, code int) string {
	const show = 64
	if len(doc) > show {
		doc = doc[:show]
	}
	return fmt.Sprintf("grader printed something that is not JSON on stdout (exit status %d); it starts with %s",
		code, strconv.Quote(string(doc)))
}

// lastLine returns ": " and the last non-empty line of a log, cut short, to
// make an Error say something useful without the whole log.
func lastLine(log string) string {
	log = strings.TrimSpace(log)
	if log == "" {
		return ""
	}
	if i := strings.LastIndexByte(log, '\n'); i >= 0 {
		log = log[i+1:]
	}
	const max = 200
	if len(log) > max {
		log = strings.ToValidUTF8(log[:max], "") + "..."
	}
	return ": " + log
}

func jsonOrNil(out []byte) []byte {
	doc := bytes.TrimSpace(out)
	if len(doc) == 0 || !json.Valid(doc) {
		return nil
	}
	return doc
}

func temporary(msg string) Result {
	return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_TEMPORARY, Error: msg}
}

func fatal(msg string) Result {
	return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_FATAL, Error: msg}
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
