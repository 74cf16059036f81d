// Package docker runs grading jobs in containers of a Docker engine: the
// docker executor (Executor) runs a grader image per job by the exec
// convention, hardened by default; the scenarios executor (Scenarios) grades
// a student's own service image by HTTP scenarios, beside the service
// containers it needs.
//
// graderd talks to the engine over the Docker Engine API with
// github.com/moby/moby/client, negotiating the API version, so that the
// same graderd drives Debian's docker.io (20.10, API 1.41) and current
// engines.
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/cgroups"
)

// LabelRole says what a container is to its run, beside executor.RunLabels:
// RoleGrader, RoleStudent, RoleService or RoleRunner.
const LabelRole = "gradebroker.io/role"

// Roles of a run's containers (LabelRole).
const (
	// RoleGrader is the docker executor's grader container.
	RoleGrader = "grader"
	// RoleStudent is the student's service, graded by scenarios.
	RoleStudent = "student"
	// RoleService is a service container the student's service uses (a
	// database).
	RoleService = "service"
	// RoleRunner is the scenario runner, which holds the run's network
	// namespace and makes the scenarios' requests.
	RoleRunner = "runner"
)

// Engine is a connection to a Docker engine, shared by the executors that
// use it. It is safe for concurrent use.
type Engine struct {
	cli  *client.Client
	host string
}

// NewEngine connects to the engine at host ("unix:///var/run/docker.sock",
// "tcp://...", or "" for DOCKER_HOST and the usual default), negotiates the
// API version and checks that the engine answers; the error says what to do
// when it does not.
func NewEngine(ctx context.Context, host string) (*Engine, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	e := &Engine{cli: cli, host: cli.DaemonHost()}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("no Docker engine answers at %s: %w; start dockerd (apt-get install docker.io), or set docker_host in graderd's configuration (or DOCKER_HOST)", e.host, err)
	}
	return e, nil
}

// Close closes the connection.
func (e *Engine) Close() error { return e.cli.Close() }

// Local reports whether the engine is reached through a unix socket, and so
// runs on this machine and sees its file systems.
func (e *Engine) Local() bool { return strings.HasPrefix(e.host, "unix://") }

// String names the engine and the API version in use, for logs.
func (e *Engine) String() string {
	return fmt.Sprintf("Docker engine at %s, API %s", e.host, e.cli.ClientVersion())
}

// Client returns the engine's API client, for tests and tools that need
// more than the executors do.
func (e *Engine) Client() *client.Client { return e.cli }

// cleanupTimeout bounds the calls that remove what a run made: they run
// after the job's own context may have ended.
const cleanupTimeout = 30 * time.Second

// cleanupContext returns a context for removing a run's containers: not
// cancelled with the job (a cancelled job must still be cleaned up), but
// bounded.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// box is one container of a run, from its creation to its removal.
type box struct {
	e    *Engine
	id   string
	role string

	attach *client.HijackedResponse // nil when not attached
	exit   <-chan container.WaitResponse
	werr   <-chan error
	pid    int

	copied chan struct{} // closed when the attached output has been copied
}

// create creates a container and attaches to its standard streams (stdin
// when cfg.OpenStdin) before anything runs, so that no output is lost.
// Each VOLUME of the image that hc does not mount gets a tmpfs of
// volumeSize bytes (see coverImageVolumes).
func (e *Engine) create(ctx context.Context, role string, cfg *container.Config, hc *container.HostConfig, volumeSize int64, stdout, stderr io.Writer) (*box, error) {
	if err := e.coverImageVolumes(ctx, cfg.Image, hc, volumeSize); err != nil {
		return nil, err
	}
	cfg.AttachStdout, cfg.AttachStderr = true, true
	cfg.AttachStdin, cfg.StdinOnce = cfg.OpenStdin, cfg.OpenStdin
	created, err := e.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: hc})
	if err != nil {
		return nil, err
	}
	b := &box{e: e, id: created.ID, role: role, copied: make(chan struct{})}
	att, err := e.cli.ContainerAttach(ctx, b.id, client.ContainerAttachOptions{Stream: true, Stdin: cfg.OpenStdin, Stdout: true, Stderr: true})
	if err != nil {
		close(b.copied)
		return b, fmt.Errorf("attaching to the %s container: %w", role, err)
	}
	b.attach = &att.HijackedResponse
	go func() {
		defer close(b.copied)
		_, _ = stdcopy.StdCopy(stdout, stderr, att.Reader)
	}()
	return b, nil
}

// coverImageVolumes mounts a tmpfs of size bytes (mode 1777, as /tmp) at
// each VOLUME that the image declares and hc does not mount already. The
// engine would otherwise give each an anonymous volume on its own disk,
// writable whatever the read-only root file system and bound by no size:
// an image a job or a student brings could fill the engine's disk. What
// the image holds at those paths is not shown (the engine copies it into a
// volume, never into a tmpfs). A missing image returns the engine's error,
// as creating the container would.
func (e *Engine) coverImageVolumes(ctx context.Context, image string, hc *container.HostConfig, size int64) error {
	in, err := e.cli.ImageInspect(ctx, image)
	if err != nil {
		return err
	}
	if in.Config == nil {
		return nil
	}
	covered := make(map[string]bool)
	for target := range hc.Tmpfs {
		covered[path.Clean(target)] = true
	}
	for _, m := range hc.Mounts {
		covered[path.Clean(m.Target)] = true
	}
	for vol := range in.Config.Volumes {
		vol = path.Clean(vol)
		if covered[vol] {
			continue
		}
		if hc.Tmpfs == nil {
			hc.Tmpfs = make(map[string]string)
		}
		hc.Tmpfs[vol] = tmpfsOptions(size, "1777")
	}
	return nil
}

// start starts the container, having asked first to be told of its exit,
// and reads its pid.
func (b *box) start(ctx context.Context) error {
	w := b.e.cli.ContainerWait(ctx, b.id, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	b.exit, b.werr = w.Result, w.Error
	if _, err := b.e.cli.ContainerStart(ctx, b.id, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("starting the %s container: %w", b.role, err)
	}
	in, err := b.e.cli.ContainerInspect(ctx, b.id, client.ContainerInspectOptions{})
	if err == nil && in.Container.State != nil {
		b.pid = in.Container.State.Pid
	}
	return nil
}

// feed writes the container's standard input and closes it.
func (b *box) feed(in []byte) error {
	if b.attach == nil {
		return errors.New("not attached")
	}
	_, err := b.attach.Conn.Write(in)
	if cerr := b.attach.CloseWrite(); err == nil {
		err = cerr
	}
	return err
}

// exited returns a channel closed when the container has exited (or the
// engine said it cannot tell), and a func that returns its exit code
// afterwards, -1 when unknown.
func (b *box) exited() (<-chan struct{}, func() (int, error)) {
	done := make(chan struct{})
	var code int
	var err error
	go func() {
		defer close(done)
		select {
		case r := <-b.exit:
			code = int(r.StatusCode)
			if r.Error != nil && r.Error.Message != "" {
				err = errors.New(r.Error.Message)
			}
		case err = <-b.werr:
			code = -1
		}
	}()
	return done, func() (int, error) { return code, err }
}

// signal sends sig ("TERM", "KILL") to the container's first process.
func (b *box) signal(ctx context.Context, sig string) error {
	_, err := b.e.cli.ContainerKill(ctx, b.id, client.ContainerKillOptions{Signal: sig})
	if errdefs.IsNotFound(err) || errdefs.IsConflict(err) {
		return nil // already gone or no longer running
	}
	return err
}

// oomKilled reports whether the engine saw the kernel kill the container
// for its memory limit.
func (b *box) oomKilled(ctx context.Context) bool {
	in, err := b.e.cli.ContainerInspect(ctx, b.id, client.ContainerInspectOptions{})
	return err == nil && in.Container.State != nil && in.Container.State.OOMKilled
}

// outputDone waits, a little at most, for the attached output to be
// copied: the streams end when the container's last process closed them,
// which a process it left behind may delay until the container is removed.
func (b *box) outputDone() {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-b.copied:
	case <-t.C:
	}
}

// remove removes the container and what the engine keeps of it (its
// anonymous volumes), killing it first if it still runs.
func (b *box) remove(ctx context.Context) error {
	if b.attach != nil {
		b.attach.Close()
	}
	_, err := b.e.cli.ContainerRemove(ctx, b.id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// meter returns how to measure the container: from its cgroup when the
// engine is local (its pid is graderd's to see), else from the engine's
// statistics, which come once a second. stop ends the measuring.
func (b *box) meter(ctx context.Context) (m executor.Meter, stop func()) {
	if g := b.localCgroup(); g != nil {
		return latchGroup(g, b.pid)
	}
	return b.e.statsMeter(ctx, b.id)
}

// latch measures a local container from its cgroup, which the engine
// removes as soon as the container has stopped, a little before graderd
// hears of it: the last readings are kept (a reading of a removed cgroup
// returns them), and one more is taken the moment the container's first
// process exits, seen through a pidfd, while the cgroup still holds the
// counts of the limits that struck at the end (a fork refused just before
// the grader gave up).
type latch struct {
	g *cgroups.Group

	mu        sync.Mutex
	cpu       time.Duration
	peak      int64
	exact     bool
	oom, pids uint64
}

func latchGroup(g *cgroups.Group, pid int) (executor.Meter, func()) {
	l := &latch{g: g}
	done := make(chan struct{})
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		go func() {
			defer unix.Close(fd)
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				select {
				case <-done:
					return
				default:
				}
				if n, err := unix.Poll(fds, 100); n > 0 || (err != nil && err != unix.EINTR) {
					l.cpuTime()
					l.memory()
					l.events()
					return
				}
			}
		}()
	}
	var once sync.Once
	return executor.Meter{CPU: l.cpuTime, Memory: l.memory, Events: l.events}, func() { once.Do(func() { close(done) }) }
}

func (l *latch) cpuTime() (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v, err := l.g.CPUUsage(); err == nil {
		l.cpu = max(l.cpu, v)
	}
	return l.cpu, nil
}

func (l *latch) memory() (int64, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v, exact, err := l.g.MemoryPeak(); err == nil {
		l.peak, l.exact = max(l.peak, v), exact
	}
	return l.peak, l.exact, nil
}

func (l *latch) events() (uint64, uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev, err := l.g.Events(); err == nil {
		l.oom, l.pids = max(l.oom, ev.OOMKills), max(l.pids, ev.PidsRefused)
	}
	return l.oom, l.pids, nil
}

// localCgroup opens the container's cgroup through /proc when the engine
// runs on this machine, in graderd's pid namespace: the cgroup path the
// kernel shows for the container's pid must name the container, or the pid
// is another machine's (an engine in a VM) and nil is returned.
func (b *box) localCgroup() *cgroups.Group {
	if b.pid <= 0 {
		return nil
	}
	path := "/proc/" + strconv.Itoa(b.pid) + "/cgroup"
	raw, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(raw), b.id) {
		return nil
	}
	g, err := cgroups.Open(cgroups.Probe{SelfCgroup: path})
	if err != nil {
		return nil
	}
	return g
}

// statsMeter measures a container from the engine's statistics stream,
// which the engine sends once a second: a CPU time limit may then be
// passed by up to a second's worth of the container's CPUs before Watch
// sees it, and out-of-memory kills and refused forks are not counted (the
// engine reports an OOM kill after the exit; see box.oomKilled).
func (e *Engine) statsMeter(ctx context.Context, id string) (executor.Meter, func()) {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var cpu time.Duration
	var peak int64
	res, err := e.cli.ContainerStats(ctx, id, client.ContainerStatsOptions{Stream: true})
	if err != nil {
		cancel()
		return executor.Meter{}, func() {}
	}
	go func() {
		defer res.Body.Close()
		dec := json.NewDecoder(res.Body)
		for {
			var s container.StatsResponse
			if dec.Decode(&s) != nil {
				return
			}
			mu.Lock()
			cpu = max(cpu, time.Duration(s.CPUStats.CPUUsage.TotalUsage))
			peak = max(peak, int64(s.MemoryStats.MaxUsage), int64(s.MemoryStats.Usage))
			mu.Unlock()
		}
	}()
	return executor.Meter{
		CPU: func() (time.Duration, error) {
			mu.Lock()
			defer mu.Unlock()
			return cpu, nil
		},
		Memory: func() (int64, bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return peak, false, nil
		},
	}, cancel
}
