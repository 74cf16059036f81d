package docker

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"golang.org/x/sys/unix"

	"github.com/gradebroker/gradebroker/graderd/executor"
)

// Executor runs each job's grader in a container of its own, by the exec
// convention (see package executor): the job document on the container's
// standard input (and, with JobFile, as a read-only file), the result on
// its standard output, its standard error kept as the log, its exit status
// mapped to the outcome. The container gets the hardened profile (see
// hardening.go) with no option to loosen it, carries the run's labels
// (executor.RunLabels) and is removed after the run.
//
// Limits it enforces, for all the container's processes together: Memory
// (the engine's cgroup, swap off; an OOM kill is reported as the memory
// limit), Pids, the job's timeout (the container is killed), CPUTime
// (graderd watches the container's CPU time, from its cgroup when the
// engine is local, else from the engine's statistics, once a second, so
// that the run may pass its limit by up to a second's worth of CPUs),
// MaxStdout and MaxStderr, TmpSize and WorkSize (tmpfs sizes), OpenFiles
// (per process). A run that fills /tmp or the work directory is reported as
// the disk limit only when the engine is local. With a remote engine a
// refused fork is not reported as the process limit either: the grader's
// exit status says what happened.
type Executor struct {
	// Engine runs the containers.
	Engine *Engine
	// Server is graderd's name (its certificate's), and Name the
	// executor's in graderd's configuration: the containers' labels.
	Server, Name string
	// Image is the grader's image. A job may name another in its jobdata
	// ("image") only where Images.Allowed allows it.
	Image string
	// Images says which images jobs may name and where images come from.
	Images Images
	// Command replaces the image's entrypoint and command; empty keeps
	// them.
	Command []string
	// Env is added to the image's environment, as KEY=value, after
	// HOME=/job and TMPDIR=/tmp.
	Env []string
	// User is the numeric uid:gid the grader runs as; "" means
	// DefaultUser. Never root.
	User string
	// Limits bound each run; zero fields take the hardened profile's
	// defaults (executor.Limits.WithDefaults, and
	// executor.DefaultMemory).
	Limits executor.Limits
	// CPUs is the container's CPU quota, in CPUs; 0 means
	// executor.DefaultContainerCPUs.
	CPUs float64
	// Mounts are host paths shown read-only in the container.
	Mounts []Mount
	// JobFile, if set, is a path in the container where the job document
	// is also shown, read-only, byte for byte as on stdin. It needs a
	// local engine (a bind mount of a file graderd writes in WorkRoot).
	JobFile string
	// WorkRoot holds JobFile's files and downloaded image archives; ""
	// means the system's temporary directory.
	WorkRoot string
	// KillGrace is the time between SIGTERM and SIGKILL when a run is
	// stopped (timeout, cancel); 0 means executor.DefaultKillGrace.
	KillGrace time.Duration
	// Logger receives the executor's own logs; nil discards them.
	Logger *slog.Logger
}

var (
	_ executor.Executor = (*Executor)(nil)
	_ executor.Reaper   = (*Executor)(nil)
)

// ReapOrphans removes what runs of this server left (see
// Engine.ReapOrphans).
func (e *Executor) ReapOrphans(ctx context.Context) (int, error) {
	return e.Engine.ReapOrphans(ctx, e.Server, e.logger())
}

func (e *Executor) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// limits returns e.Limits with the hardened defaults.
func (e *Executor) limits() executor.Limits {
	l := e.Limits.WithDefaults()
	l.Memory = cmp.Or(l.Memory, executor.DefaultMemory)
	return l
}

// Run runs job's grader container and maps how it ended to a Result. It
// returns once the container is removed.
func (e *Executor) Run(ctx context.Context, job executor.Job) (res executor.Result) {
	log := e.logger().With("job_id", job.JobID, "lease_id", job.LeaseID)
	defer func() {
		if p := recover(); p != nil {
			log.Error("executor panicked", "panic", p)
			res = executor.Temporary(fmt.Sprintf("internal error in graderd's docker executor: %v", p))
		}
	}()
	if ctx.Err() != nil {
		return executor.Temporary(executor.ErrorCancelled)
	}
	limits := e.limits()
	doc, err := executor.JobDocument(job, limits)
	if err != nil {
		return executor.Fatal(err.Error())
	}
	req, err := parseImageRequest(job.JobData)
	if err != nil {
		return resultOf(err)
	}
	img, err := e.Images.prepare(ctx, e.Engine, e.Image, req, loadedName(e.Server, job))
	if err != nil {
		return failed(ctx, resultOf(err))
	}
	defer func() {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if err := img.release(cctx, e.Engine); err != nil {
			log.Warn("cannot remove the run's image", "image", img.ref, "err", err)
		}
	}()

	user := cmp.Or(e.User, DefaultUser)
	p := profile{limits: limits, cpus: e.CPUs, user: user, network: container.NetworkMode("none"), workDir: WorkDir, mounts: e.Mounts}
	labels := executor.RunLabels(e.Server, e.Name, job)
	labels[LabelRole] = RoleGrader
	if e.JobFile != "" {
		file, err := e.writeJobFile(job, doc, user)
		if err != nil {
			return executor.Temporary(fmt.Sprintf("cannot write the job file: %v", err))
		}
		defer os.RemoveAll(filepath.Dir(file))
		p.mounts = append(p.mounts, Mount{Source: file, Target: e.JobFile})
	}
	cfg := &container.Config{
		Image:      img.ref,
		User:       user,
		Env:        append([]string{"HOME=" + WorkDir, "TMPDIR=/tmp"}, e.Env...),
		WorkingDir: WorkDir,
		Hostname:   "grader",
		Labels:     labels,
		OpenStdin:  true,
	}
	if len(e.Command) > 0 {
		cfg.Entrypoint, cfg.Cmd = e.Command, nil
	}
	stdout := executor.NewResultBuffer(limits.MaxStdout)
	stderr := executor.NewLogBuffer(limits.MaxStderr)
	b, err := e.Engine.create(ctx, RoleGrader, cfg, p.hostConfig(), limits.TmpSize, stdout, stderr)
	if b != nil {
		defer func() {
			cctx, cancel := cleanupContext(ctx)
			defer cancel()
			if err := b.remove(cctx); err != nil {
				log.Warn("cannot remove the grader's container; a restarted graderd removes it", "container", b.id, "err", err)
			}
		}()
	}
	if err != nil {
		if errdefs.IsNotFound(err) && img.ref != e.Image {
			return executor.Fatal(fmt.Sprintf("image %s is not on the grading server's engine", img.ref))
		}
		return failed(ctx, executor.Temporary(fmt.Sprintf("cannot create the grader's container: %v", err)))
	}
	start := time.Now()
	if err := b.start(ctx); err != nil {
		return failed(ctx, executor.Temporary(err.Error()))
	}
	disks := openDisks(b.pid, b.id, p)
	defer disks.close()
	go func() {
		if err := b.feed(doc); err != nil {
			log.Debug("the grader did not read all its input", "err", err)
		}
	}()

	meter, stopMeter := b.meter(ctx)
	defer stopMeter()
	watch := executor.StartWatch(meter, limits.CPUTime, start)
	exited, exitCode := b.exited()

	stop, hit := executor.Supervise(ctx, exited, job.Timeout, stdout, watch)
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if stop != executor.NotStopped {
		e.stopContainer(cctx, b, exited, stop == executor.StoppedLimit, log)
	}
	<-exited
	usage, seen := watch.Stop()
	stopMeter()
	b.outputDone()
	if stop != executor.NotStopped {
		res = executor.StoppedResult(stop, hit, limits, job.Timeout)
	} else {
		code, err := exitCode()
		res = e.classify(cctx, b, code, err, seen, disks, stdout, stderr, limits, job)
	}
	res.Log = stderr.String()
	res.Duration = usage.WallTime
	res.Usage = usage
	log.Debug("grader container finished", "outcome", res.Outcome, "error", res.Error, "limit", res.Limit.String(), "duration", usage.WallTime, "cpu", usage.CPUTime, "peak_memory", usage.PeakMemory)
	return res
}

// failed is res, or "cancelled" when the job was cancelled meanwhile: the
// engine's calls then fail for that reason alone.
func failed(ctx context.Context, res executor.Result) executor.Result {
	if ctx.Err() != nil {
		return executor.Temporary(executor.ErrorCancelled)
	}
	return res
}

// stopContainer stops a running container: SIGKILL at once for a limit,
// else SIGTERM and SIGKILL after the grace period.
func (e *Executor) stopContainer(ctx context.Context, b *box, exited <-chan struct{}, now bool, log *slog.Logger) {
	if !now {
		if err := b.signal(ctx, "TERM"); err != nil {
			log.Warn("cannot signal the grader's container", "err", err)
		}
		grace := time.NewTimer(cmp.Or(e.KillGrace, executor.DefaultKillGrace))
		defer grace.Stop()
		select {
		case <-exited:
			return
		case <-grace.C:
		}
	}
	if err := b.signal(ctx, "KILL"); err != nil {
		log.Warn("cannot kill the grader's container", "err", err)
	}
}

// classify maps a container that exited on its own to a Result.
func (e *Executor) classify(ctx context.Context, b *box, code int, waitErr error, seen executor.Limit, disks *disks, stdout *executor.ResultBuffer, stderr *executor.LogBuffer, limits executor.Limits, job executor.Job) executor.Result {
	if waitErr != nil {
		return executor.Temporary(fmt.Sprintf("lost track of the grader's container: %v", waitErr))
	}
	out, over := stdout.Bytes()
	if over {
		return executor.LimitResult(executor.LimitOutput, limits, job.Timeout, "")
	}
	if code != 0 {
		// As in the exec executor: a limit is judged only when the
		// grader did not end with a result of its own.
		l, detail := seen, ""
		switch {
		case l == executor.LimitNone && b.oomKilled(ctx):
			l = executor.LimitMemory
		case l == executor.LimitNone:
			if detail = disks.full(); detail != "" {
				l = executor.LimitDisk
			}
		}
		if l != executor.LimitNone {
			r := executor.LimitResult(l, limits, job.Timeout, detail)
			if code == 1 {
				r.Result = executor.JSONOrNil(out)
			}
			return r
		}
	}
	// The engine reports death by a signal as 128 + the signal.
	if code > 128 && code < 128+65 {
		sig := unix.Signal(code - 128)
		return executor.Temporary(fmt.Sprintf("grader was killed by signal %d (%v)", int(sig), sig))
	}
	return executor.ExitResult(code, out, stderr.String())
}

// writeJobFile writes the job document into a directory of its own under
// WorkRoot, readable by the container's user and nobody else's.
func (e *Executor) writeJobFile(job executor.Job, doc []byte, user string) (string, error) {
	root := cmp.Or(e.WorkRoot, os.TempDir())
	if err := os.MkdirAll(root, 0o711); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(root, "docker-job"+strconv.FormatInt(job.JobID, 10)+"-")
	if err != nil {
		return "", err
	}
	uid, gid, _ := ParseUser(user)
	file := filepath.Join(dir, "job.json")
	err = errors.Join(os.WriteFile(file, doc, 0o400), os.Chown(file, uid, gid), os.Chmod(dir, 0o711))
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return file, nil
}

// disks holds descriptors of a local container's writable tmpfs file
// systems, opened through /proc/PID/root while it runs: they keep each file
// system to be asked afterwards whether it filled up, as the sandbox does
// with its own.
type disks struct {
	fs map[string]*os.File
}

// openDisks opens the container's /tmp and work directory when its pid is
// local; a container that already exited leaves nothing to open.
func openDisks(pid int, id string, p profile) *disks {
	d := &disks{fs: map[string]*os.File{}}
	if pid <= 0 {
		return d
	}
	root := "/proc/" + strconv.Itoa(pid)
	if raw, err := os.ReadFile(root + "/cgroup"); err != nil || !bytes.Contains(raw, []byte(id)) {
		return d
	}
	for _, path := range []string{"/tmp", p.workDir} {
		if path == "" {
			continue
		}
		if f, err := os.Open(root + "/root" + path); err == nil {
			d.fs[path] = f
		}
	}
	return d
}

// full returns the path of a file system that has no free block or inode
// left, or "".
func (d *disks) full() string {
	for _, path := range []string{"/tmp", WorkDir} {
		f := d.fs[path]
		if f == nil {
			continue
		}
		var st unix.Statfs_t
		if unix.Fstatfs(int(f.Fd()), &st) == nil && (st.Bavail == 0 || st.Ffree == 0) {
			return path
		}
	}
	return ""
}

func (d *disks) close() {
	for _, f := range d.fs {
		f.Close()
	}
}
