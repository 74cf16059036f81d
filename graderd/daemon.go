// Package graderd is the grading-server daemon as a library: it connects to
// the broker over mutually-authenticated gRPC, runs the jobs the broker
// assigns with the configured executors, and reports their results, keeping
// each result in a local spool until the broker has acknowledged it.
//
// The binary (cmd/graderd) only parses the command line and calls New, then
// Run or Test; tests run the same code in-process against a fake broker.
package graderd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes"
	"github.com/gradebroker/gradebroker/graderd/executor/scenarios"
	"github.com/gradebroker/gradebroker/graderd/spool"
)

// Version is graderd's version, sent to the broker in Hello. Builds set it
// with -ldflags "-X github.com/gradebroker/gradebroker/graderd.Version=...".
var Version = "dev"

// ErrAborted is returned by Run when Abort ended it before the drain
// finished; unacknowledged results stay in the spool for the next start.
var ErrAborted = errors.New("graderd: aborted before the drain finished; unacknowledged results stay in the spool")

// Timings that are not worth a configuration field. Tests shorten some of
// them through the Daemon's unexported fields.
const (
	// welcomeTimeout bounds the wait for Welcome, so that a broker which
	// accepts the stream but never answers does not hold graderd forever.
	welcomeTimeout = 10 * time.Second
	// ackTimeout bounds how long a drain waits for the broker to
	// acknowledge the last results; what is left stays in the spool.
	ackTimeout = 10 * time.Second
	// closeTimeout bounds the wait for the broker to end the stream after
	// graderd closed its side.
	closeTimeout = time.Second
	// slowStartDelay is the wait before each job under TestBehaviorSlowStart.
	slowStartDelay = 60 * time.Second
	// fallbackHeartbeat is used when a broker sends no usable interval.
	fallbackHeartbeat = 10 * time.Second
	// minHeartbeat keeps a bogus tiny interval from turning the sender into
	// a busy loop.
	minHeartbeat = 10 * time.Millisecond
)

// Daemon is one graderd: its configuration, its TLS material and the jobs it
// runs. Make one with New; call Run once, or Test.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	tls      *certs.Source
	hostname string
	// pick returns the executor of a job with these tags, or nil and a
	// reason when there is none.
	pick func(tags []string) (executor.Executor, string)
	// executors describe the executors for Hello.
	executors []*gradebrokerv1.ExecutorInfo
	// reapers are the executors whose runs outlive a crashed graderd
	// (containers): Run has them remove what a previous graderd left.
	reapers []executor.Reaper
	// engine is the container executors' Docker engine, once one needs it.
	engine *docker.Engine
	// cluster is the kubernetes executors' namespace, nil without them;
	// Run starts its watch before taking jobs.
	cluster *kubernetes.Cluster

	// Knobs; New sets the constants above and tests shorten them.
	welcomeTimeout time.Duration
	ackTimeout     time.Duration
	closeTimeout   time.Duration
	slowStart      time.Duration

	spool *spool.Spool // opened by Run

	mu       sync.Mutex
	jobs     map[int64]*job                  // running, by lease id
	unacked  map[int64]*gradebrokerv1.Result // finished, not yet acked, by lease id
	slots    int                             // capacity announced to the broker (SetSlots)
	draining bool
	changed  chan struct{} // closed and replaced whenever the fields above change
	abort    context.CancelFunc
	aborted  bool
	ran      bool

	// assigns, under mu, counts the Assigns received on the current
	// stream; each heartbeat says how many it reflects
	// (Heartbeat.assigns_received).
	assigns uint64

	jobsWG sync.WaitGroup

	sleep sleepState // idle disconnections and wakeups (idle.go)
}

// job is one running lease.
type job struct {
	ref    *gradebrokerv1.LeaseRef
	cancel context.CancelFunc
	log    *slog.Logger
}

// New checks cfg, loads the TLS material and builds the executors. It starts
// nothing: Run connects and takes jobs, Test only checks the connection. log
// receives every log line; nil discards them.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	if !cfg.hasExecutor() {
		log.Warn("no executor is configured: every job will be handed back to the broker as TEMPORARY; set default_executor or executors")
	}
	src, err := certs.NewClientSource(cfg.CertFile, cfg.KeyFile, cfg.CAFile, log)
	if err != nil {
		return nil, fmt.Errorf("loading TLS files: %w", err)
	}
	hostname := cfg.Hostname
	if hostname == "" {
		if hostname, err = os.Hostname(); err != nil {
			// The name is only for the broker's logs; the certificate
			// identifies the server.
			hostname = "unknown"
		}
	}
	d := &Daemon{
		cfg:            cfg,
		log:            log,
		tls:            src,
		hostname:       hostname,
		welcomeTimeout: welcomeTimeout,
		ackTimeout:     ackTimeout,
		closeTimeout:   closeTimeout,
		slowStart:      slowStartDelay,
		jobs:           make(map[int64]*job),
		unacked:        make(map[int64]*gradebrokerv1.Result),
		slots:          cfg.Slots,
		changed:        make(chan struct{}),
	}
	if d.pick, err = d.buildExecutors(); err != nil {
		return nil, err
	}
	if err := d.initSleep(); err != nil {
		return nil, err
	}
	return d, nil
}

// buildExecutors turns the configured specs into executors, once, so that
// every job of a tag shares one (they are safe for concurrent use), with one
// sandbox for all of them. It fails when the sandbox cannot be set up.
func (d *Daemon) buildExecutors() (func([]string) (executor.Executor, string), error) {
	if d.cfg.Executor != nil {
		e := d.cfg.Executor
		d.executors = []*gradebrokerv1.ExecutorInfo{{Name: "default", Type: fmt.Sprintf("%T", e), Sandbox: ""}}
		return func([]string) (executor.Executor, string) { return e, "" }, nil
	}
	specs := make(map[string]ExecutorSpec, len(d.cfg.Executors)+1)
	for tag, s := range d.cfg.Executors {
		specs[tag] = s
	}
	if d.cfg.DefaultExecutor.Type != "" {
		specs[defaultName] = d.cfg.DefaultExecutor
	}
	names := slices.Sorted(maps.Keys(specs))
	var sb *executor.Sandbox
	for _, name := range names {
		s := specs[name]
		if s.Type != ExecutorExec || s.Sandbox == SandboxNone || sb != nil {
			continue
		}
		var err error
		sb, err = executor.NewSandbox(executor.SandboxConfig{
			Runtime:       d.cfg.Sandbox.Runtime,
			StateDir:      d.cfg.Sandbox.StateDir,
			UIDBase:       d.cfg.Sandbox.UIDBase,
			Slots:         d.cfg.Slots,
			ReadOnlyPaths: d.cfg.Sandbox.ReadOnlyPaths,
			RestrictRoots: d.cfg.Sandbox.RestrictRoots,
			Secret:        d.secrets(),
			Logger:        d.log,
		})
		if err != nil {
			return nil, fmt.Errorf("%w; to run graders without it, set sandbox: none on the executor (%s)", err, fieldOf(name))
		}
		d.log.Info("runs are sandboxed", "sandbox", sb.String())
	}
	byName := make(map[string]executor.Executor, len(specs))
	d.executors = nil
	for _, name := range names {
		s := specs[name]
		info := &gradebrokerv1.ExecutorInfo{Name: name, Type: s.Type}
		switch s.Type {
		case ExecutorNoop:
			byName[name] = executor.Noop{}
		case ExecutorKubernetes:
			e, err := d.kubernetesExecutor(name, s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", fieldOf(name), err)
			}
			info.Sandbox = "pod"
			byName[name] = e
		case ExecutorExec:
			l := s.Limits.over(d.cfg.Limits)
			e := &executor.Exec{
				Command:       slices.Clone(s.Command),
				Env:           slices.Clone(s.Env),
				ReadOnlyPaths: slices.Clone(s.ReadOnlyPaths),
				HostNetwork:   s.Network == NetworkHost,
				Limits:        l.executor(),
				WorkRoot:      d.cfg.WorkRoot,
				RunDir:        d.runDir(),
				KillGrace:     l.KillGrace,
				Logger:        d.log,
			}
			if tg := s.Taskgrader; tg != nil {
				e.Taskgrader = &executor.Taskgrader{RootPath: tg.RootPath, ZipRoot: tg.ZipRoot,
					Vars: maps.Clone(tg.Vars), RestrictPaths: slices.Clone(tg.RestrictPaths)}
				if s.Sandbox != SandboxNone {
					// The tasks are taskgrader's to read.
					e.ReadOnlyPaths = append(e.ReadOnlyPaths, tg.RootPath)
					if tg.ZipRoot != "" {
						e.ReadOnlyPaths = append(e.ReadOnlyPaths, "-"+tg.ZipRoot)
					}
				}
			}
			info.Sandbox = SandboxNone
			if s.Sandbox != SandboxNone {
				e.Sandbox, info.Sandbox = sb, "crun"
				if err := sb.CheckPaths(fieldOf(name)+".read_only_paths", e.ReadOnlyPaths); err != nil {
					return nil, err
				}
			} else {
				d.log.Warn("an executor runs its graders WITHOUT the sandbox (sandbox: none): they, and the students' code they run, can read graderd's keys and configuration, reach the network and outlive their jobs", "executor", name)
			}
			byName[name] = e
		case ExecutorDocker, ExecutorScenarios:
			e, err := d.containerExecutor(name, s)
			if err != nil {
				return nil, err
			}
			info.Sandbox = "docker"
			byName[name] = e
			d.reapers = append(d.reapers, e)
		}
		d.executors = append(d.executors, info)
	}
	def := byName[defaultName]
	delete(byName, defaultName)
	return func(tags []string) (executor.Executor, string) {
		for _, t := range tags {
			if e := byName[t]; e != nil {
				return e, ""
			}
		}
		if def != nil {
			return def, ""
		}
		return nil, fmt.Sprintf("graderd on %s has no executor for tags %v and no default executor", d.hostname, tags)
	}, nil
}

// kubernetesExecutor builds a kubernetes executor, and the cluster
// connection for all of them on the first.
func (d *Daemon) kubernetesExecutor(name string, s ExecutorSpec) (*kubernetes.Executor, error) {
	if d.cluster == nil {
		k := d.cfg.Kubernetes
		// The certificate's name is the server's: two graderds sharing a
		// namespace must have their own, as they must for the broker.
		var err error
		d.cluster, err = kubernetes.NewCluster(kubernetes.ClusterConfig{
			Kubeconfig: k.Kubeconfig, Context: k.Context, Namespace: cmp.Or(k.Namespace, DefaultKubernetesNamespace),
			Server: d.tls.Identity().CommonName, Logger: d.log,
		})
		if err != nil {
			return nil, err
		}
	}
	// Limits inherited from the top-level limits that a pod cannot have
	// are left out; set on the executor itself they are refused (Validate).
	l := s.Limits.over(d.cfg.Limits)
	if l.Pids != 0 || l.CPUTime != 0 {
		d.log.Warn("limits.pids and limits.cpu_time do not apply to kubernetes executors: a pod has neither (see the README)", "executor", name)
		l.Pids, l.CPUTime = 0, 0
	}
	var uid, gid int64
	if s.User != "" {
		u, g, _ := docker.ParseUser(s.User) // checked by Validate
		uid, gid = int64(u), int64(g)
	}
	cpu := ""
	if s.CPUs > 0 {
		cpu = strconv.FormatInt(int64(s.CPUs*1000), 10) + "m"
	}
	return kubernetes.New(kubernetes.Config{
		Cluster: d.cluster, Name: name, Image: s.Image, Command: slices.Clone(s.Command), Env: slices.Clone(s.Env),
		EntrypointImage: d.cfg.Kubernetes.EntrypointImage, Limits: l.executor(),
		CPU: cpu, EphemeralStorage: int64(s.EphemeralStorage), NodeSelector: s.NodeSelector, RuntimeClass: s.RuntimeClass,
		ImagePullPolicy: s.ImagePullPolicy, ImagePullSecrets: s.ImagePullSecrets, RunAsUser: uid, RunAsGroup: gid,
		ScheduleTimeout: s.ScheduleTimeout, StartTimeout: s.StartTimeout, KillGrace: l.KillGrace, Logger: d.log,
	})
}

// dockerEngine connects to the container executors' engine, once, and
// checks that it can harden their containers.
func (d *Daemon) dockerEngine() (*docker.Engine, error) {
	if d.engine != nil {
		return d.engine, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	eng, err := docker.NewEngine(ctx, d.cfg.DockerHost)
	if err != nil {
		return nil, err
	}
	if err := eng.CheckHardening(ctx); err != nil {
		eng.Close()
		return nil, err
	}
	d.log.Info("container executors use the Docker engine", "engine", eng.String())
	d.engine = eng
	return eng, nil
}

// checkMountsReadOnly refuses a mount source with a writable file system
// mounted below it: Docker's read-only bind leaves such a submount writable
// (a recursive read-only bind needs API 1.44, and Debian's engine has 1.41),
// so every run could write there and leave files for the next. Only a
// local engine's file systems are graderd's to see.
func checkMountsReadOnly(field string, sources []string, eng *docker.Engine) error {
	if !eng.Local() {
		return nil
	}
	for _, src := range sources {
		sub, err := executor.LooseSubmount(src)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		if sub != "" {
			return fmt.Errorf("%s: %s has a file system mounted below it (%s) that is writable or lacks nosuid or nodev, and a container's read-only bind of %s would leave it so: every run could write there. Mount it ro,nosuid,nodev, or show a narrower path", field, src, sub, src)
		}
	}
	return nil
}

// containerExecutor builds a docker or scenarios executor.
func (d *Daemon) containerExecutor(name string, s ExecutorSpec) (executor.Reaper, error) {
	field := fieldOf(name)
	eng, err := d.dockerEngine()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	images := docker.Images{
		Allowed: slices.Clone(s.Images), Source: s.ImageSource, MaxSize: int64(s.MaxImageSize), Remove: s.RemoveImage,
		ArchiveURLs: slices.Clone(s.ArchiveURLs), ArchiveDirs: slices.Clone(s.ArchiveDirs), WorkRoot: d.cfg.WorkRoot,
		Registry: docker.Registry{Address: s.Registry.Address, Username: s.Registry.Username},
	}
	if f := s.Registry.PasswordFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("%s.registry.password_file: %w", field, err)
		}
		images.Registry.Password = strings.TrimSpace(string(b))
	}
	l := s.Limits.over(d.cfg.Limits)
	server := d.tls.Identity().CommonName
	if s.Type == ExecutorDocker {
		e := &docker.Executor{
			Engine: eng, Server: server, Name: name, Image: s.Image, Images: images,
			Command: slices.Clone(s.Command), Env: slices.Clone(s.Env), User: s.User,
			Limits: l.executor(), CPUs: s.CPUs, JobFile: s.JobFile, WorkRoot: d.cfg.WorkRoot,
			KillGrace: l.KillGrace, Logger: d.log,
		}
		var sources []string
		for _, m := range s.Mounts {
			mt, _ := docker.ParseMount(m) // Validate checked it
			e.Mounts = append(e.Mounts, mt)
			sources = append(sources, mt.Source)
		}
		if err := executor.CheckExposedPaths(field+".mounts", sources, d.secrets()); err != nil {
			return nil, err
		}
		if err := checkMountsReadOnly(field+".mounts", sources, eng); err != nil {
			return nil, err
		}
		return e, nil
	}
	runner := s.RunnerImage
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if runner != "" {
		if ok, err := eng.HasImage(ctx, runner); err != nil || !ok {
			return nil, fmt.Errorf("%s.runner_image: %s is not on the engine (%v); leave runner_image out and graderd makes it from gb-scenario-runner", field, runner, err)
		}
	} else {
		bin, err := runnerBinary(s.RunnerBinary)
		if err != nil {
			return nil, fmt.Errorf("%s.runner_binary: %w", field, err)
		}
		if runner, err = docker.EnsureRunnerImage(ctx, eng, bin); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
	}
	sets := s.ScenarioDir
	if sets != "" {
		if sets, err = filepath.Abs(sets); err != nil {
			return nil, fmt.Errorf("%s.scenario_dir: %w", field, err)
		}
	}
	sc := &docker.Scenarios{
		Engine: eng, Server: server, Name: name, Images: images, RunnerImage: runner,
		Port: s.Port, Ready: scenarios.Probe{Path: s.Ready.Path, Status: s.Ready.Status}, ReadyTimeout: s.Ready.Timeout,
		ScenarioTimeout: s.ScenarioTimeout, SetsDir: sets, NoInlineSets: s.InlineScenarios != nil && !*s.InlineScenarios,
		ServicesTimeout: s.ServicesTimeout, StudentEnv: slices.Clone(s.StudentEnv), User: s.User,
		Limits: l.executor(), CPUs: s.CPUs, MaxBody: int64(s.MaxBody), Logger: d.log,
	}
	for _, sv := range s.Services {
		sc.Services = append(sc.Services, docker.Service{
			Name: sv.Name, Image: sv.Image, Command: slices.Clone(sv.Command), Env: slices.Clone(sv.Env), Port: sv.Port,
			User: sv.User, Tmpfs: maps.Clone(sv.Tmpfs), CapAdd: slices.Clone(sv.CapAdd), WritableRoot: sv.WritableRoot,
			Limits: sv.Limits.executor(), CPUs: sv.CPUs,
		})
	}
	return sc, nil
}

// runnerBinary finds gb-scenario-runner: the configured path, else beside
// graderd's own executable, else in PATH.
func runnerBinary(configured string) (string, error) {
	const name = "gb-scenario-runner"
	if configured != "" {
		return configured, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is neither beside graderd nor in PATH; build it with CGO_ENABLED=0 go build ./graderd/cmd/gb-scenario-runner (make build does), or name it here", name)
	}
	return p, nil
}

// defaultName names the default executor in Hello and in logs. A tag of the
// same name is shadowed in the sandbox setup's messages only.
const defaultName = "default"

// fieldOf is the configuration key of an executor.
func fieldOf(name string) string {
	if name == defaultName {
		return "default_executor"
	}
	return "executors." + name
}

// secrets are graderd's own files, which the sandbox never shows a run.
func (d *Daemon) secrets() []string {
	state := cmp.Or(d.cfg.Sandbox.StateDir, executor.DefaultStateDir)
	out := []string{d.cfg.ConfigFile, d.cfg.CAFile, d.cfg.CertFile, d.cfg.KeyFile, d.cfg.WakeupSecretFile, d.cfg.SpoolDir, state}
	if d.cfg.WorkRoot != "" {
		out = append(out, d.cfg.WorkRoot)
	}
	for i, p := range out {
		if p != "" {
			if abs, err := filepath.Abs(p); err == nil {
				out[i] = abs
			}
		}
	}
	return out
}

// Executors describes the executors, as Hello sends them and graderd -t
// prints them.
func (d *Daemon) Executors() []*gradebrokerv1.ExecutorInfo { return d.executors }

// Run connects to the broker and runs the jobs it assigns until ctx ends,
// reconnecting with backoff whenever the stream breaks; running jobs carry
// on meanwhile. When ctx ends it drains: it tells the broker it takes no more
// jobs (Slots 0), waits for the running jobs up to Config.DrainTimeout (then
// cancels them), sends their results, waits a little for the broker's
// acknowledgements and closes the stream. It returns nil after a drain,
// ErrAborted after Abort, or an error if the spool cannot be opened. Run may
// be called only once.
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.ran {
		d.mu.Unlock()
		return errors.New("graderd: Run called twice")
	}
	d.ran = true
	// The daemon's own life outlasts ctx: cancelling ctx starts the drain,
	// which still needs the stream.
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	d.abort = stop
	aborted := d.aborted
	d.mu.Unlock()
	if aborted {
		return ErrAborted
	}

	if err := d.openSpool(); err != nil {
		return err
	}
	if d.cluster != nil {
		// Its first listing deletes the pods a previous graderd of this
		// server left; runs wait for it.
		d.cluster.Start(runCtx)
		defer d.cluster.Stop()
	}
	if err := d.listenWakeups(runCtx); err != nil {
		return err
	}
	go d.tls.Watch(runCtx)

	drained := make(chan struct{})
	go func() {
		defer close(drained)
		select {
		case <-ctx.Done():
			d.drain(runCtx)
			stop()
		case <-runCtx.Done():
		}
	}()

	d.connectLoop(runCtx)
	// The loop also ends on an idle exit, with ctx still going.
	stop()

	// Only Abort leaves jobs running here. Their results still reach the
	// spool, for the next start to send.
	d.cancelJobs()
	d.jobsWG.Wait()
	<-drained

	d.mu.Lock()
	defer d.mu.Unlock()
	if n := len(d.unacked); n > 0 {
		d.log.Warn("stopping with results the broker has not acknowledged; they stay in the spool and are sent at the next start", "results", n, "spool_dir", d.cfg.SpoolDir)
	}
	if d.aborted {
		return ErrAborted
	}
	d.log.Info("graderd stopped")
	return nil
}

// Abort ends Run at once, without waiting for jobs or acknowledgements: it
// cancels every running job (their results still go to the spool) and closes
// the stream. The binary calls it on a second SIGINT or SIGTERM.
func (d *Daemon) Abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aborted = true
	if d.abort != nil {
		d.abort()
	}
	for _, j := range d.jobs {
		j.cancel()
	}
}

// SetSlots changes how many jobs the broker may give this server at once,
// from 0 (take none) up to Config.Slots, and tells the broker at once if
// connected. Jobs already running are not stopped.
func (d *Daemon) SetSlots(n int) error {
	if n < 0 || n > d.cfg.Slots {
		return fmt.Errorf("slots: must be between 0 and the configured %d, got %d", d.cfg.Slots, n)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.slots = n
	d.notifyLocked()
	return nil
}

func (d *Daemon) openSpool() error {
	sp, err := spool.Open(d.cfg.SpoolDir)
	if err != nil {
		return fmt.Errorf("opening the result spool: %w", err)
	}
	// A graderd that crashed may have left graders running; stop them before
	// taking new jobs.
	if _, err := executor.ReapOrphans(d.runDir(), d.log); err != nil {
		d.log.Warn("cannot check for graders left running by a previous graderd", "err", err)
	}
	for _, r := range d.reapers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if _, err := r.ReapOrphans(ctx); err != nil {
			d.log.Warn("cannot remove everything a previous graderd left in the container engine", "err", err)
		}
		cancel()
	}
	pending, err := sp.List()
	if err != nil {
		return fmt.Errorf("reading the result spool: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.spool = sp
	for _, r := range pending {
		d.unacked[r.GetLeaseId()] = r
	}
	if len(pending) > 0 {
		d.log.Info("results from an earlier run are waiting in the spool; sending them once connected", "results", len(pending))
	}
	return nil
}

// notifyLocked wakes everyone waiting for a change of the daemon's state.
// d.mu must be held.
func (d *Daemon) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// noTimeout makes waitFor wait as long as it takes.
const noTimeout = -1

// waitFor waits until cond (called with d.mu held) is true, ctx ends or
// timeout passes (noTimeout: never; 0: cond is checked once), and reports
// whether cond held.
func (d *Daemon) waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	var expired <-chan time.Time
	if timeout >= 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	for {
		d.mu.Lock()
		ok, ch := cond(), d.changed
		d.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-expired:
			return false
		}
	}
}

// drain stops taking jobs, lets the running ones finish (or cancels them
// after the drain timeout) and waits a little for the last acknowledgements.
func (d *Daemon) drain(ctx context.Context) {
	d.mu.Lock()
	d.draining = true
	running := len(d.jobs)
	d.notifyLocked()
	d.mu.Unlock()
	d.log.Info("draining: taking no new jobs and waiting for the running ones", "running", running, "drain_timeout", d.cfg.DrainTimeout)

	noJobs := func() bool { return len(d.jobs) == 0 }
	if !d.waitFor(ctx, d.cfg.DrainTimeout, noJobs) {
		if ctx.Err() != nil {
			return
		}
		d.mu.Lock()
		left := len(d.jobs)
		d.mu.Unlock()
		d.log.Warn("drain timeout passed; cancelling the jobs still running (the broker will requeue them)", "running", left, "drain_timeout", d.cfg.DrainTimeout)
		d.cancelJobs()
		// Executors return once their processes are dead, so this ends.
		if !d.waitFor(ctx, noTimeout, noJobs) {
			return
		}
	}
	if !d.waitFor(ctx, d.ackTimeout, func() bool { return len(d.unacked) == 0 }) && ctx.Err() == nil {
		d.mu.Lock()
		left := len(d.unacked)
		d.mu.Unlock()
		d.log.Warn("the broker did not acknowledge every result in time", "unacknowledged", left, "waited", d.ackTimeout)
	}
}

func (d *Daemon) cancelJobs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, j := range d.jobs {
		j.cancel()
	}
}

// startJob takes one Assign: it runs the job on its own goroutine, or hands
// it straight back as NOT_STARTED when graderd has no slot for it now (the
// broker then requeues it without using an attempt).
func (d *Daemon) startJob(a *gradebrokerv1.Assign) {
	ref := &gradebrokerv1.LeaseRef{JobId: a.GetJobId(), LeaseId: a.GetLeaseId()}
	log := d.log.With("job_id", ref.JobId, "lease_id", ref.LeaseId)

	d.mu.Lock()
	d.assigns++
	_, running := d.jobs[ref.LeaseId]
	_, done := d.unacked[ref.LeaseId]
	var refuse string
	switch {
	case running || done:
		d.mu.Unlock()
		log.Warn("broker assigned a lease graderd already has; ignoring the second assignment")
		return
	case d.draining:
		refuse = "graderd is shutting down and takes no new jobs"
	case len(d.jobs) >= d.cfg.Slots:
		// The broker should never do this; running the job anyway would
		// break the promise that graderd runs at most Slots jobs.
		refuse = fmt.Sprintf("graderd already runs its %d jobs (all its slots)", d.cfg.Slots)
	}
	if refuse != "" {
		d.mu.Unlock()
		log.Warn("handing job back to the broker", "reason", refuse)
		d.finish(ref, log, &gradebrokerv1.Result{
			JobId: ref.JobId, LeaseId: ref.LeaseId,
			Outcome: gradebrokerv1.Outcome_OUTCOME_NOT_STARTED,
			Error:   refuse,
		})
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{ref: ref, cancel: cancel, log: log}
	d.jobs[ref.LeaseId] = j
	d.jobsWG.Add(1)
	d.notifyLocked()
	d.mu.Unlock()

	log.Info("job assigned", "name", a.GetName(), "attempt", a.GetAttempt(), "tags", a.GetTags(), "timeout", a.GetTimeout().AsDuration())
	go func() {
		defer d.jobsWG.Done()
		defer cancel()
		res, answer := d.execute(ctx, j, a)
		if !answer {
			d.mu.Lock()
			delete(d.jobs, ref.LeaseId)
			d.notifyLocked()
			d.mu.Unlock()
			log.Info("testbehavior 1: dropping the job without a result")
			return
		}
		d.finish(ref, log, res)
	}()
}

// cancelJob stops the job running under ref, if any.
func (d *Daemon) cancelJob(c *gradebrokerv1.Cancel) {
	ref := c.GetLease()
	log := d.log.With("job_id", ref.GetJobId(), "lease_id", ref.GetLeaseId())
	d.mu.Lock()
	j := d.jobs[ref.GetLeaseId()]
	d.mu.Unlock()
	if j == nil {
		log.Info("broker cancelled a job that is not running here; nothing to stop", "reason", c.GetReason())
		return
	}
	log.Info("broker cancelled the job; stopping it", "reason", c.GetReason())
	j.cancel()
}

// execute runs one job, honouring Config.TestBehavior. answer is false when
// the job must end without any result (TestBehaviorHang).
func (d *Daemon) execute(ctx context.Context, j *job, a *gradebrokerv1.Assign) (res *gradebrokerv1.Result, answer bool) {
	res = &gradebrokerv1.Result{JobId: a.GetJobId(), LeaseId: a.GetLeaseId()}
	testMsg := fmt.Sprintf("testbehavior %d", d.cfg.TestBehavior)
	switch d.cfg.TestBehavior {
	case TestBehaviorHang:
		j.log.Info("testbehavior 1: holding the job without ever answering")
		<-ctx.Done()
		return nil, false
	case TestBehaviorFatal:
		res.Outcome = gradebrokerv1.Outcome_OUTCOME_FATAL
		res.Result = []byte(`{"error":"testbehavior 3"}`)
		res.Error = testMsg
		return res, true
	case TestBehaviorTemporary:
		res.Outcome = gradebrokerv1.Outcome_OUTCOME_TEMPORARY
		res.Error = testMsg
		return res, true
	case TestBehaviorInvalidResult:
		res.Outcome = gradebrokerv1.Outcome_OUTCOME_OK
		res.Result = []byte("testbehavior 5: this result is not JSON {")
		return res, true
	case TestBehaviorEcho:
		res.Outcome = gradebrokerv1.Outcome_OUTCOME_OK
		res.Result = slices.Clone(a.GetJobdata())
		return res, true
	case TestBehaviorSlowStart:
		j.log.Info("testbehavior 2: waiting before starting the job", "delay", d.slowStart)
		t := time.NewTimer(d.slowStart)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			res.Outcome = gradebrokerv1.Outcome_OUTCOME_TEMPORARY
			res.Error = executor.ErrorCancelled
			return res, true
		}
	}

	e, why := d.pick(a.GetTags())
	if e == nil {
		j.log.Warn("no executor for the job; handing it back", "reason", why)
		res.Outcome = gradebrokerv1.Outcome_OUTCOME_TEMPORARY
		res.Error = why
		return res, true
	}
	r := e.Run(ctx, executor.Job{
		JobID:         a.GetJobId(),
		LeaseID:       a.GetLeaseId(),
		Attempt:       a.GetAttempt(),
		Name:          a.GetName(),
		JobData:       a.GetJobdata(),
		Tags:          a.GetTags(),
		Timeout:       a.GetTimeout().AsDuration(),
		RestrictPaths: a.GetRestrictPaths(),
	})
	res.Outcome = r.Outcome
	res.Result = r.Result
	res.Log = r.Log
	res.Error = r.Error
	res.Duration = durationpb.New(r.Duration)
	res.Usage = r.Usage.Proto()
	res.Limit = r.Limit.Proto()
	return res, true
}

// finish records a job's result: first in the spool, so that it survives a
// crash, and only then in unacked, from where the session sends it.
func (d *Daemon) finish(ref *gradebrokerv1.LeaseRef, log *slog.Logger, res *gradebrokerv1.Result) {
	if err := d.spool.Put(res); err != nil {
		// Losing the result to a full disk would be worse than sending a
		// result that a crash could lose: send it anyway.
		log.Error("cannot write the result to the spool; sending it anyway, but it is lost if graderd stops before the broker acknowledges it", "error", err)
	}
	d.mu.Lock()
	delete(d.jobs, ref.LeaseId)
	d.unacked[ref.LeaseId] = res
	d.notifyLocked()
	d.mu.Unlock()
	attrs := []any{"outcome", res.GetOutcome().String(), "duration", res.GetDuration().AsDuration()}
	if res.GetError() != "" {
		attrs = append(attrs, "error", res.GetError())
	}
	log.Info("job finished", attrs...)
}

// forget drops an acknowledged or refused result from the spool.
func (d *Daemon) forget(ref *gradebrokerv1.LeaseRef) {
	d.mu.Lock()
	delete(d.unacked, ref.GetLeaseId())
	d.notifyLocked()
	d.mu.Unlock()
	if err := d.spool.Remove(ref.GetLeaseId()); err != nil {
		d.log.Error("cannot remove a result from the spool; it will be sent again at the next start and refused then",
			"job_id", ref.GetJobId(), "lease_id", ref.GetLeaseId(), "error", err)
	}
}

// held returns the leases graderd still holds: running, or finished with a
// result not yet acknowledged. Hello lists both, so that the broker keeps the
// lease of a result graderd is about to re-send instead of requeueing it and
// refusing the result as stale.
func (d *Daemon) held() []*gradebrokerv1.LeaseRef {
	d.mu.Lock()
	defer d.mu.Unlock()
	refs := d.runningLocked()
	for _, r := range d.unacked {
		refs = append(refs, &gradebrokerv1.LeaseRef{JobId: r.GetJobId(), LeaseId: r.GetLeaseId()})
	}
	sortRefs(refs)
	return refs
}

// heartbeat returns the leases of the running jobs, in lease order, and how
// many Assigns of the stream they reflect.
func (d *Daemon) heartbeat() *gradebrokerv1.Heartbeat {
	d.mu.Lock()
	defer d.mu.Unlock()
	refs := d.runningLocked()
	sortRefs(refs)
	return &gradebrokerv1.Heartbeat{Running: refs, AssignsReceived: d.assigns}
}

func (d *Daemon) runningLocked() []*gradebrokerv1.LeaseRef {
	refs := make([]*gradebrokerv1.LeaseRef, 0, len(d.jobs))
	for _, j := range d.jobs {
		refs = append(refs, &gradebrokerv1.LeaseRef{JobId: j.ref.JobId, LeaseId: j.ref.LeaseId})
	}
	return refs
}

func sortRefs(refs []*gradebrokerv1.LeaseRef) {
	slices.SortFunc(refs, func(a, b *gradebrokerv1.LeaseRef) int { return cmp.Compare(a.LeaseId, b.LeaseId) })
}

// capacityLocked is the slot count to announce: 0 while draining or getting
// ready to disconnect for idleness.
func (d *Daemon) capacityLocked() int {
	if d.draining || d.sleep.idling {
		return 0
	}
	return d.slots
}

// toSend returns the unacknowledged results not yet in sent, in lease order,
// the capacity to announce and the channel that signals the next change. It
// prunes sent of leases no longer pending.
func (d *Daemon) toSend(sent map[int64]bool) ([]*gradebrokerv1.Result, int, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for l := range sent {
		if _, ok := d.unacked[l]; !ok {
			delete(sent, l)
		}
	}
	var out []*gradebrokerv1.Result
	for _, l := range slices.Sorted(maps.Keys(d.unacked)) {
		if !sent[l] {
			out = append(out, d.unacked[l])
		}
	}
	return out, d.capacityLocked(), d.changed
}

// runDir is where exec executors record their graders' process groups: beside
// the results, in the spool directory that survives restarts.
func (d *Daemon) runDir() string { return filepath.Join(d.cfg.SpoolDir, "running") }
