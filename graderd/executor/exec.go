package executor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	// Env is extra environment for the grader, as "KEY=value", added to
	// graderd's own and overriding it.
	Env []string
	// RunDir, if set, gets a small record of each running grader's process
	// group, so that ReapOrphans in a restarted graderd can kill graders a
	// crashed one left running.
	RunDir string
	// WorkRoot is the parent of the per-job working directories; empty
	// means os.TempDir(). It is created if missing.
	WorkRoot string
	// MemoryLimit caps the grader's memory in bytes; 0 means no limit. It
	// is enforced by a cgroup v2 per run when graderd can create one under
	// its own cgroup, which counts the memory all the run's processes use
	// together; otherwise by RLIMIT_AS set through prlimit(1), which caps
	// each process's address space: runtimes that reserve much address
	// space up front (Go needs about 800 MiB, the JVM more) cannot start
	// under a small RLIMIT_AS. A run over the limit is FATAL, with an Error
	// that says so.
	MemoryLimit int64
	// MaxStdout caps the grader's result in bytes (default 4 MiB); a larger
	// result is FATAL.
	MaxStdout int64
	// MaxStderr caps the kept log in bytes (default 1 MiB); a longer log is
	// cut in the middle, with a marker.
	MaxStderr int64
	// KillGrace is how long a grader has to exit after SIGTERM before its
	// process group gets SIGKILL (default 2s).
	KillGrace time.Duration
	// Logger receives the executor's own logs; nil discards them.
	Logger *slog.Logger
}

var _ Executor = (*Exec)(nil)

// stopReason is why Run stopped a grader before it exited on its own.
type stopReason int

const (
	notStopped stopReason = iota
	stoppedTimeout
	stoppedCancel
	stoppedOverflow
)

// Run runs the grader for job and maps how it ended to a Result. It returns
// only once the grader's process group (and, with a cgroup, every process of
// the run) is dead and the working directory is gone.
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
	stdin, err := stdinDocument(job)
	if err != nil {
		return Result{Outcome: gradebrokerv1.Outcome_OUTCOME_FATAL, Error: err.Error()}
	}
	// Resolve the program here, not in the child: the child starts in the
	// work directory, where a relative path would mean something else, and
	// under prlimit a missing program would look like a grader exiting 1.
	path, err := exec.LookPath(e.Command[0])
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

	workDir, err := e.makeWorkDir(job)
	if err != nil {
		return temporary(err.Error())
	}
	defer removeWorkDir(workDir, log)

	var cg *runCgroup
	argv := append([]string{path}, e.Command[1:]...)
	if e.MemoryLimit > 0 {
		if parent, err := memoryCgroupParent(log); err == nil {
			cg, err = newRunCgroup(parent, filepath.Base(workDir), e.MemoryLimit)
			if err != nil {
				log.Warn("cannot make a cgroup for the run; using RLIMIT_AS", "err", err)
			}
		}
		if cg == nil {
			if argv, err = e.prlimitArgv(argv); err != nil {
				return temporary(err.Error())
			}
		}
	}
	defer func() {
		if cg != nil {
			cg.remove()
		}
	}()

	stdout := newResultBuffer(e.maxStdout())
	stderr := newLogBuffer(e.maxStderr())
	newCmd := func(argv []string, cg *runCgroup) *exec.Cmd {
		cmd := &exec.Cmd{
			Path:        argv[0],
			Args:        argv,
			Dir:         workDir,
			Env:         append(append(os.Environ(), "TMPDIR="+workDir), e.Env...),
			Stdin:       bytes.NewReader(stdin),
			Stdout:      stdout,
			Stderr:      stderr,
			WaitDelay:   pipeGrace,
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		}
		if cg != nil {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(cg.fd.Fd())
		}
		return cmd
	}
	cmd := newCmd(argv, cg)
	start := time.Now()
	err = cmd.Start()
	if err != nil && cg != nil {
		// Starting straight into a cgroup needs clone3 (Linux 5.7); an
		// older kernel can still have the rlimit.
		log.Warn("cannot start the grader in its cgroup; using RLIMIT_AS", "err", err)
		cg.remove()
		cg = nil
		if argv, err = e.prlimitArgv(argv); err == nil {
			cmd = newCmd(argv, nil)
			start = time.Now()
			err = cmd.Start()
		}
	}
	if err != nil {
		return temporary(fmt.Sprintf("cannot start grader: %v", err))
	}
	pid := cmd.Process.Pid
	if rec, err := e.recordRun(job.LeaseID, pid); err != nil {
		log.Warn("cannot record the grader's process group; a crash of graderd would leave it running", "err", err)
	} else if rec != "" {
		defer os.Remove(rec)
	}

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
	select {
	case <-exited:
	case <-timeout:
		stop = stoppedTimeout
	case <-ctx.Done():
		stop = stoppedCancel
	case <-stdout.overflow:
		stop = stoppedOverflow
	}
	if stop != notStopped {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		grace := time.NewTimer(e.killGrace())
		select {
		case <-exited:
		case <-grace.C:
		}
		grace.Stop()
	}
	// The grader has exited or is about to be killed. Its pid is still
	// held (waitExited does not reap), so the group id cannot have been
	// reused and killing it hits only what the grader left behind:
	// background children would otherwise outlive the job and hold its
	// output pipes open.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	if cg != nil {
		cg.killAll()
	}
	<-exited
	duration := time.Since(start)
	if err := cmd.Wait(); err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			log.Warn("waiting for grader", "err", err)
		}
	}

	res = e.classify(cmd.ProcessState, stop, stdout, stderr, job, cg)
	res.Log = stderr.String()
	res.Duration = duration
	log.Debug("grader finished", "outcome", res.Outcome, "error", res.Error, "duration", duration)
	return res
}

// classify maps how the grader ended to a Result (without Log and Duration).
func (e *Exec) classify(ps *os.ProcessState, stop stopReason, stdout *resultBuffer, stderr *logBuffer, job Job, cg *runCgroup) Result {
	switch stop {
	case stoppedCancel:
		return temporary(ErrorCancelled)
	case stoppedTimeout:
		return Result{
			Outcome: gradebrokerv1.Outcome_OUTCOME_TIMEOUT,
			Error:   fmt.Sprintf("grader ran past its time limit of %v and was killed", job.Timeout),
		}
	}
	out, over := stdout.bytes()
	if over || stop == stoppedOverflow {
		return fatal(fmt.Sprintf("result larger than %d bytes", e.maxStdout()))
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	code := ws.ExitStatus()
	if ws.Signaled() {
		code = -1
	}

	// A memory failure is judged only when the grader did not end with a
	// verdict of its own (0 or 2): a grader may well catch its solution's
	// MemoryError and grade it.
	if e.MemoryLimit > 0 && code != 0 && code != 2 {
		hit := false
		if cg != nil {
			hit = cg.oomKilled()
		} else {
			hit = saysOutOfMemory(stderr.String())
		}
		if hit {
			// FATAL, not TEMPORARY: every server of the type enforces the
			// same limit, so a retry would hit it again and only delay
			// the platform's answer.
			r := fatal(fmt.Sprintf("grader hit the memory limit of %s", formatBytes(e.MemoryLimit)))
			if code == 1 {
				r.Result = jsonOrNil(out)
			}
			return r
		}
	}

	switch {
	case ws.Signaled():
		return temporary(fmt.Sprintf("grader was killed by signal %d (%v)", int(ws.Signal()), ws.Signal()))
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
func (e *Exec) prlimitArgv(argv []string) ([]string, error) {
	pl, err := prlimitPath()
	if err != nil {
		return nil, fmt.Errorf("a memory limit is configured but neither a cgroup v2 nor prlimit(1) is available to enforce it: %w", err)
	}
	return append([]string{pl, "--as=" + strconv.FormatInt(e.MemoryLimit, 10), "--"}, argv...), nil
}

// stdinDocument builds the JSON object the grader reads on stdin. jobdata is
// spliced in byte for byte: encoding/json would compact and HTML-escape it.
func stdinDocument(job Job) ([]byte, error) {
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
	head, err := json.Marshal(struct {
		JobID      int64    `json:"job_id"`
		LeaseID    int64    `json:"lease_id"`
		Attempt    uint32   `json:"attempt"`
		Name       string   `json:"name"`
		Tags       []string `json:"tags"`
		TimeoutSec float64  `json:"timeout_sec"`
	}{job.JobID, job.LeaseID, job.Attempt, job.Name, tags, timeout})
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

func (e *Exec) maxStdout() int64 {
	if e.MaxStdout > 0 {
		return e.MaxStdout
	}
	return DefaultMaxStdout
}

func (e *Exec) maxStderr() int64 {
	if e.MaxStderr > 0 {
		return e.MaxStderr
	}
	return DefaultMaxStderr
}

func (e *Exec) killGrace() time.Duration {
	if e.KillGrace > 0 {
		return e.KillGrace
	}
	return DefaultKillGrace
}
