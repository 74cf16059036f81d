package docker

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/template"
	"time"

	"github.com/moby/moby/api/types/container"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/scenarios"
)

// How a scenarios run is laid out. Every container of a run shares one
// network namespace that has a loopback and nothing else, so that the
// student's service reaches its services and is reached by the runner on
// 127.0.0.1, and nothing reaches out: no bridge, no user-defined network
// (which an engine started with --bridge=none, as CI's is, cannot make).
//
//  1. The runner container starts first, with no network (a loopback of
//     its own): it holds the namespace for the others, which join it
//     (network mode container:<runner>). It is a static binary of ours in
//     an image of its own (cmd gb-scenario-runner): a container, not
//     graderd entering the namespace with setns, because a container works
//     with any engine graderd can reach (a remote one, a rootless one, one
//     in a VM), needs none of graderd's powers, parses the student's
//     answers outside graderd, and is what a Kubernetes pod does with a
//     sidecar; it costs one more container start per job.
//  2. The service containers (a database) start, with their image's own
//     user and writable tmpfs directories as their configuration says,
//     fresh credentials in their environment, and limits; the runner waits
//     until their ports accept connections.
//  3. The student's container (created meanwhile) starts, hardened as a
//     grader's is (read-only root, no capabilities, no_new_privs, the
//     default seccomp profile, a non-root user, limits), with the
//     credentials in its environment.
//  4. The runner probes it with backoff up to the readiness bound, then
//     makes the scenarios' requests in order and reports the answers;
//     graderd judges them.
//  5. Everything is removed (killed: a service's answers no longer matter
//     once the run is over), whatever happened: in the run's own cleanup,
//     or, after a crash of graderd, by the next graderd's ReapOrphans
//     (every container carries the run's labels).

// Defaults of Scenarios.
const (
	// DefaultServicePort is where the student's service is expected to
	// listen.
	DefaultServicePort = 8000
	// DefaultReadyTimeout bounds the wait for the student's service.
	DefaultReadyTimeout = time.Minute
	// DefaultServicesTimeout bounds the wait for the service containers.
	DefaultServicesTimeout = time.Minute
	// DefaultScenarioTimeout bounds a scenario without its own timeout.
	DefaultScenarioTimeout = 10 * time.Second
	// DefaultMaxBody is how much of an answer's body is compared.
	DefaultMaxBody = 1 << 20
	// DefaultServiceTmpfs is the size of a service's writable directory.
	DefaultServiceTmpfs = 256 << 20
)

// Scenarios grades a student's service image by HTTP scenarios (type
// scenarios in graderd's configuration): see the comment at the top of
// scenarios.go for the layout of a run. The job's jobdata names the image
// and the scenario set:
//
//	{"image": "registry.example.org/dbs/alice:1",   // or image_archive, as for Executor
//	 "scenarios": "assignment-2",                   // a set on the grading server, or an inline set
//	 "public_only": true}                           // run and report the public scenarios only
//
// The result is a scenarios.Result; the job's log is the student's
// container's output.
type Scenarios struct {
	// Engine runs the containers.
	Engine *Engine
	// Server and Name are graderd's name and the executor's: the labels.
	Server, Name string
	// Images says which student images a job may name (Images.Allowed
	// must match them) and where they come from.
	Images Images
	// RunnerImage is the runner's image (see EnsureRunnerImage).
	RunnerImage string
	// Port is where the student's service listens; 0 means
	// DefaultServicePort.
	Port int
	// Ready is the readiness probe; its Path defaults to "/". It is
	// retried with backoff for ReadyTimeout (0: DefaultReadyTimeout).
	Ready        scenarios.Probe
	ReadyTimeout time.Duration
	// ScenarioTimeout bounds scenarios without their own timeout; 0
	// means DefaultScenarioTimeout.
	ScenarioTimeout time.Duration
	// SetsDir holds the scenario sets jobs may name.
	SetsDir string
	// NoInlineSets refuses scenario sets carried in jobdata.
	NoInlineSets bool
	// Services are the service containers of each run.
	Services []Service
	// ServicesTimeout bounds the wait for their ports; 0 means
	// DefaultServicesTimeout.
	ServicesTimeout time.Duration
	// StudentEnv is the student's environment, as KEY=template (see
	// Credentials); nil means the FIIT variables for the first service
	// (DATABASE_HOST, _PORT, _NAME, _USER, _PASSWORD).
	StudentEnv []string
	// User is the student's container's numeric uid:gid; "" means
	// DefaultUser.
	User string
	// Limits bound the student's container (CPUTime too, watched as for
	// Executor); CPUs is its CPU quota.
	Limits executor.Limits
	CPUs   float64
	// MaxBody is how much of an answer's body is read and compared; 0
	// means DefaultMaxBody.
	MaxBody int64
	// Logger receives the executor's own logs; nil discards them.
	Logger *slog.Logger
}

// Service is a container a student's service uses, started fresh for each
// run: a database, say.
type Service struct {
	// Name names it in logs, errors and templates ({{.Ports.db}}).
	Name string
	// Image is its image, which must be on the engine.
	Image string
	// Command replaces its image's entrypoint and command; empty keeps
	// them.
	Command []string
	// Env is its environment, as KEY=template (see Credentials).
	Env []string
	// Port is the port it listens on; the runner waits until it accepts
	// connections before the student's service starts.
	Port int
	// User is the user it runs as; "" keeps its image's.
	User string
	// Tmpfs are its writable directories, as path -> tmpfs options
	// ("size=256m,uid=999,gid=999,mode=0700"); a size is added when the
	// options have none (DefaultServiceTmpfs). /tmp always is one.
	Tmpfs map[string]string
	// CapAdd are the capabilities its image needs (an entrypoint that
	// changes users needs SETUID and SETGID); none by default.
	CapAdd []string
	// WritableRoot leaves its root file system writable, for an image
	// that writes outside its data directories.
	WritableRoot bool
	// Limits bound it (Memory, Pids, OpenFiles, TmpSize); CPUs is its CPU
	// quota.
	Limits executor.Limits
	CPUs   float64
}

// Credentials are what a run's services and student share, fresh for each
// run: the values of the environment templates ({{.User}}, {{.Password}},
// {{.Database}}, {{.Host}}, {{.Ports.NAME}}).
type Credentials struct {
	User, Password, Database string
	// Host is where the services listen for the student: the shared
	// loopback.
	Host string
	// Ports maps each service's name to its port.
	Ports map[string]int
}

// newCredentials makes fresh random credentials.
func newCredentials(services []Service) Credentials {
	r := func(n int) string {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}
	c := Credentials{User: "u" + r(6), Password: r(16), Database: "db" + r(6), Host: "127.0.0.1", Ports: map[string]int{}}
	for _, s := range services {
		c.Ports[s.Name] = s.Port
	}
	return c
}

// fiitEnv is the student's environment by default: the variables the FIIT
// tester passes, for the first service.
func fiitEnv(services []Service) []string {
	if len(services) == 0 {
		return nil
	}
	return []string{
		"DATABASE_HOST={{.Host}}",
		"DATABASE_PORT={{index .Ports " + fmt.Sprintf("%q", services[0].Name) + "}}",
		"DATABASE_NAME={{.Database}}",
		"DATABASE_USER={{.User}}",
		"DATABASE_PASSWORD={{.Password}}",
	}
}

// RenderEnv expands KEY=template entries with c; the error names the bad
// entry. graderd checks its configuration with it.
func RenderEnv(env []string, c Credentials) ([]string, error) {
	out := make([]string, 0, len(env))
	for _, e := range env {
		k, v, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not KEY=value", e)
		}
		t, err := template.New(k).Option("missingkey=error").Parse(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		var b strings.Builder
		if err := t.Execute(&b, c); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out = append(out, k+"="+b.String())
	}
	return out, nil
}

var (
	_ executor.Executor = (*Scenarios)(nil)
	_ executor.Reaper   = (*Scenarios)(nil)
)

// ReapOrphans removes what runs of this server left (see
// Engine.ReapOrphans).
func (s *Scenarios) ReapOrphans(ctx context.Context) (int, error) {
	return s.Engine.ReapOrphans(ctx, s.Server, s.logger())
}

func (s *Scenarios) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// scenariosJob is a scenarios job's jobdata.
type scenariosJob struct {
	imageRequest
	Scenarios  json.RawMessage `json:"scenarios"`
	PublicOnly bool            `json:"public_only"`
}

// set returns the job's scenario set.
func (s *Scenarios) set(j scenariosJob) (*scenarios.Set, error) {
	raw := bytes.TrimSpace(j.Scenarios)
	var set *scenarios.Set
	var err error
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return nil, jobErrorf("jobdata: scenarios: missing; name a scenario set of the grading server, or give one")
	case raw[0] == '"':
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, jobErrorf("jobdata: scenarios: %v", err)
		}
		if s.SetsDir == "" {
			return nil, jobErrorf("jobdata: scenarios: this executor has no scenario sets of its own (scenario_dir); give the set inline")
		}
		set, err = scenarios.Load(s.SetsDir, name)
	case s.NoInlineSets:
		return nil, jobErrorf("jobdata: scenarios: this executor takes scenario sets by name only (its sets live on the grading server)")
	default:
		set, err = scenarios.ParseJSON(raw)
	}
	if err != nil {
		return nil, jobErrorf("jobdata: scenarios: %v", err)
	}
	if j.PublicOnly {
		set = set.PublicOnly()
		if len(set.Scenarios) == 0 {
			return nil, jobErrorf("jobdata: public_only: the scenario set has no public scenarios")
		}
	}
	return set, nil
}

func (s *Scenarios) port() int { return cmp.Or(s.Port, DefaultServicePort) }

// studentLimits are the student's container's limits with the hardened
// defaults.
func (s *Scenarios) studentLimits() executor.Limits {
	l := s.Limits.WithDefaults()
	l.Memory = cmp.Or(l.Memory, executor.DefaultMemory)
	return l
}

// runnerLimits bound the runner, which holds at most one answer at a time.
var runnerLimits = executor.Limits{Memory: 256 << 20, Pids: 64}.WithDefaults()

// scenarioRun is one run's containers and what they said.
type scenarioRun struct {
	s      *Scenarios
	ctx    context.Context
	log    *slog.Logger
	labels map[string]string
	boxes  []*box

	runner    *box
	events    chan scenarios.Event
	runnerLog *executor.LogBuffer
}

// Run grades one job.
func (s *Scenarios) Run(ctx context.Context, job executor.Job) (res executor.Result) {
	log := s.logger().With("job_id", job.JobID, "lease_id", job.LeaseID)
	defer func() {
		if p := recover(); p != nil {
			log.Error("executor panicked", "panic", p)
			res = executor.Temporary(fmt.Sprintf("internal error in graderd's scenarios executor: %v", p))
		}
	}()
	if ctx.Err() != nil {
		return executor.Temporary(executor.ErrorCancelled)
	}
	start := time.Now()
	if job.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, job.Timeout, errTimeout)
		defer cancel()
	}
	var j scenariosJob
	if err := json.Unmarshal(bytes.TrimSpace(job.JobData), &j); err != nil {
		return executor.Fatal("jobdata: a scenarios job's jobdata is an object with image and scenarios: " + err.Error())
	}
	set, err := s.set(j)
	if err != nil {
		return resultOf(err)
	}
	img, err := s.Images.prepare(ctx, s.Engine, "", j.imageRequest, loadedName(s.Server, job))
	if err != nil {
		return s.stopped(ctx, resultOf(err), job, start)
	}
	defer func() {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if err := img.release(cctx, s.Engine); err != nil {
			log.Warn("cannot remove the student's image", "image", img.ref, "err", err)
		}
	}()
	r := &scenarioRun{s: s, ctx: ctx, log: log, labels: executor.RunLabels(s.Server, s.Name, job)}
	defer r.teardown()
	studentLog := executor.NewLogBuffer(s.studentLimits().MaxStderr)
	out := r.run(set, img.ref, j, studentLog, job)
	out.Log = studentLog.String()
	if ctx.Err() != nil {
		res := s.stopped(ctx, out, job, start)
		res.Log = out.Log
		return res
	}
	out.Duration = time.Since(start)
	out.Usage.WallTime = out.Duration
	if out.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		log.Info("scenarios run ended", "outcome", out.Outcome, "error", out.Error)
	}
	return out
}

// errTimeout is the cause of a run's context ending at the job's timeout.
var errTimeout = errors.New("the job's timeout passed")

// stopped replaces res when the run's context ended: TIMEOUT at the job's
// timeout, TEMPORARY at a cancel (the engine's calls fail for those reasons
// alone).
func (s *Scenarios) stopped(ctx context.Context, res executor.Result, job executor.Job, start time.Time) executor.Result {
	switch {
	case ctx.Err() == nil:
		return res
	case errors.Is(context.Cause(ctx), errTimeout):
		r := executor.LimitResult(executor.LimitWallTime, s.studentLimits(), job.Timeout, "")
		r.Duration, r.Usage = time.Since(start), executor.Usage{WallTime: time.Since(start)}
		return r
	}
	return executor.Temporary(executor.ErrorCancelled)
}

// run runs the containers and the scenarios.
func (r *scenarioRun) run(set *scenarios.Set, image string, j scenariosJob, studentLog *executor.LogBuffer, job executor.Job) executor.Result {
	s := r.s
	if err := r.startRunner(); err != nil {
		return executor.Temporary(err.Error())
	}
	creds := newCredentials(s.Services)
	serviceLogs := map[string]*executor.LogBuffer{}
	for _, svc := range s.Services {
		lb := executor.NewLogBuffer(16 << 10)
		serviceLogs[svc.Name] = lb
		if err := r.startService(svc, creds, lb); err != nil {
			return executor.Temporary(err.Error())
		}
	}
	plan := scenarios.Plan{
		ServicesMS: cmp.Or(s.ServicesTimeout, DefaultServicesTimeout).Milliseconds(),
		Port:       s.port(),
		Ready:      scenarios.Probe{Path: cmp.Or(s.Ready.Path, "/"), Status: s.Ready.Status},
		ReadyMS:    cmp.Or(s.ReadyTimeout, DefaultReadyTimeout).Milliseconds(),
		Requests:   scenarios.PlanFor(set, cmp.Or(s.ScenarioTimeout, DefaultScenarioTimeout)),
		MaxBody:    cmp.Or(s.MaxBody, DefaultMaxBody),
	}
	for _, svc := range s.Services {
		plan.Services = append(plan.Services, scenarios.ServicePort{Name: svc.Name, Port: svc.Port})
	}
	if err := r.send(plan); err != nil {
		return executor.Temporary(fmt.Sprintf("cannot give the runner its plan: %v", err))
	}
	// Created while the services start; started once they answer.
	limits := s.studentLimits()
	student, err := r.createStudent(image, creds, limits, studentLog)
	if err != nil {
		return executor.Temporary(err.Error())
	}
	ev, err := r.next()
	if err != nil {
		return executor.Temporary(err.Error())
	}
	if ev.Event != scenarios.EventServicesReady {
		msg := "the scenarios' services did not start: " + ev.Error
		for name, lb := range serviceLogs {
			if l := strings.TrimSpace(lb.String()); l != "" {
				msg += fmt.Sprintf("\n%s's log:\n%s", name, l)
			}
		}
		return executor.Temporary(msg)
	}

	if err := student.start(r.ctx); err != nil {
		return executor.Temporary(fmt.Sprintf("cannot start the student's container: %v", err))
	}
	meter, stopMeter := student.meter(r.ctx)
	defer stopMeter()
	watch := executor.StartWatch(meter, limits.CPUTime, time.Now())
	exited, exitCode := student.exited()
	if err := r.send(scenarios.Go{Go: true}); err != nil {
		return executor.Temporary(fmt.Sprintf("cannot tell the runner to go: %v", err))
	}

	result := scenarios.Result{Image: j.Image, Set: set.Name, PublicOnly: j.PublicOnly, Scenarios: []scenarios.Record{}}
	if result.Image == "" {
		result.Image = "(loaded from the job's image archive)"
	}
	responses := make([]*scenarios.Response, len(set.Scenarios))
	stoppedWhy, hit := "", executor.LimitNone
	ready, died := false, false
read:
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				stoppedWhy = "the scenario runner stopped before the scenarios were done: " + lastLine(r.runnerLog.String())
				break read
			}
			switch ev.Event {
			case scenarios.EventReady:
				ready, result.Ready, result.ReadyMS = true, true, ev.MS
			case scenarios.EventNotReady:
				result.ReadyMS = ev.MS
				stoppedWhy = ev.Error
				break read
			case scenarios.EventResponse:
				if ev.Response != nil && ev.Index >= 0 && ev.Index < len(responses) {
					responses[ev.Index] = ev.Response
				}
			case scenarios.EventDone:
				break read
			}
		case <-exited:
			if !ready {
				code, _ := exitCode()
				stoppedWhy = fmt.Sprintf("the service exited with status %d before it answered on port %d", code, s.port())
				if student.oomKilled(r.ctx) {
					stoppedWhy = fmt.Sprintf("the service was killed for its memory limit (%d MiB) before it answered on port %d", limits.Memory>>20, s.port())
				}
				break read
			}
			exited, died = nil, true // the rest of the requests fail and say so
		case hit = <-watch.Hit():
			break read
		case <-r.ctx.Done():
			break read
		}
	}
	usage, _ := watch.Stop()
	if r.ctx.Err() != nil {
		return executor.Result{} // Run says how it stopped
	}
	if hit != executor.LimitNone {
		res := executor.LimitResult(hit, limits, job.Timeout, "")
		res.Usage = usage
		return res
	}
	for i, sc := range set.Scenarios {
		switch {
		case responses[i] != nil:
			result.Scenarios = append(result.Scenarios, scenarios.Judge(sc, *responses[i]))
		case !ready:
			result.Scenarios = append(result.Scenarios, scenarios.NotRun(sc, "not run: the service never became ready"))
		default:
			result.Scenarios = append(result.Scenarios, scenarios.NotRun(sc, "not run: "+stoppedWhy))
		}
	}
	if died && student.oomKilled(r.ctx) {
		result.Error = fmt.Sprintf("the service was killed for its memory limit (%d MiB) during the scenarios", limits.Memory>>20)
	}
	if !ready {
		result.Error = stoppedWhy
	}
	result.Tally()
	doc, err := json.Marshal(result)
	if err != nil {
		return executor.Temporary(fmt.Sprintf("encoding the result: %v", err))
	}
	var res executor.Result
	if ready {
		res = executor.Result{Outcome: gradebrokerv1.Outcome_OUTCOME_OK, Result: doc}
	} else {
		res = executor.Fatal(stoppedWhy)
		res.Result = doc
	}
	res.Usage = usage
	return res
}

// startRunner starts the runner, which holds the run's network namespace.
func (r *scenarioRun) startRunner() error {
	s := r.s
	p := profile{limits: runnerLimits, cpus: 1, user: DefaultUser, network: container.NetworkMode("none")}
	pr, pw := io.Pipe()
	r.events = make(chan scenarios.Event, 16)
	r.runnerLog = executor.NewLogBuffer(16 << 10)
	go r.readEvents(pr)
	cfg := &container.Config{Image: s.RunnerImage, User: DefaultUser, Labels: r.roleLabels(RoleRunner), OpenStdin: true}
	b, err := s.Engine.create(r.ctx, RoleRunner, cfg, p.hostConfig(), runnerLimits.TmpSize, pw, r.runnerLog)
	if b != nil {
		r.boxes = append(r.boxes, b)
		go func() {
			<-b.copied
			pw.Close()
		}()
	} else {
		pw.Close()
	}
	if err != nil {
		return fmt.Errorf("cannot create the scenario runner's container (image %s): %w", s.RunnerImage, err)
	}
	r.runner = b
	return b.start(r.ctx)
}

// readEvents turns the runner's output into events; the channel closes
// when the output ends.
func (r *scenarioRun) readEvents(out io.Reader) {
	defer close(r.events)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), int(2*cmp.Or(r.s.MaxBody, DefaultMaxBody)+1<<20))
	for sc.Scan() {
		var ev scenarios.Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		select {
		case r.events <- ev:
		case <-r.ctx.Done():
		}
	}
	// Drain, so that the output's copy never blocks.
	_, _ = io.Copy(io.Discard, out)
}

// next waits for the runner's next event.
func (r *scenarioRun) next() (scenarios.Event, error) {
	select {
	case ev, ok := <-r.events:
		if !ok {
			return ev, fmt.Errorf("the scenario runner stopped: %s", lastLine(r.runnerLog.String()))
		}
		return ev, nil
	case <-r.ctx.Done():
		return scenarios.Event{}, r.ctx.Err()
	}
}

// send writes one JSON line to the runner.
func (r *scenarioRun) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = r.runner.attach.Conn.Write(append(b, '\n'))
	return err
}

func (r *scenarioRun) roleLabels(role string) map[string]string {
	l := make(map[string]string, len(r.labels)+1)
	for k, v := range r.labels {
		l[k] = v
	}
	l[LabelRole] = role
	return l
}

// inRunner is the network mode of the run's containers but the runner's.
func (r *scenarioRun) inRunner() container.NetworkMode {
	return container.NetworkMode("container:" + r.runner.id)
}

// startService starts one service container.
func (r *scenarioRun) startService(svc Service, creds Credentials, lb *executor.LogBuffer) error {
	env, err := RenderEnv(svc.Env, creds)
	if err != nil {
		return fmt.Errorf("service %s: env: %w", svc.Name, err)
	}
	limits := svc.Limits.WithDefaults()
	p := profile{limits: limits, cpus: svc.CPUs, network: r.inRunner()}
	hc := p.hostConfig()
	hc.ReadonlyRootfs = !svc.WritableRoot
	hc.CapAdd = svc.CapAdd
	for path, opts := range svc.Tmpfs {
		if !strings.Contains(opts, "size=") {
			opts = strings.Trim(opts+",size="+fmt.Sprint(DefaultServiceTmpfs), ",")
		}
		hc.Tmpfs[path] = "rw,nosuid,nodev," + opts
	}
	cfg := &container.Config{Image: svc.Image, User: svc.User, Env: env, Labels: r.roleLabels(RoleService)}
	if len(svc.Command) > 0 {
		cfg.Entrypoint = svc.Command
	}
	b, err := r.s.Engine.create(r.ctx, RoleService, cfg, hc, DefaultServiceTmpfs, lb, lb)
	if b != nil {
		r.boxes = append(r.boxes, b)
	}
	if err != nil {
		return fmt.Errorf("cannot create service %s (image %s): %w", svc.Name, svc.Image, err)
	}
	if err := b.start(r.ctx); err != nil {
		return fmt.Errorf("service %s: %w", svc.Name, err)
	}
	return nil
}

// createStudent creates the student's container.
func (r *scenarioRun) createStudent(image string, creds Credentials, limits executor.Limits, log *executor.LogBuffer) (*box, error) {
	s := r.s
	tmpl := s.StudentEnv
	if tmpl == nil {
		tmpl = fiitEnv(s.Services)
	}
	env, err := RenderEnv(tmpl, creds)
	if err != nil {
		return nil, fmt.Errorf("student_env: %w", err)
	}
	env = append(env, fmt.Sprintf("PORT=%d", s.port()))
	user := cmp.Or(s.User, DefaultUser)
	p := profile{limits: limits, cpus: s.CPUs, user: user, network: r.inRunner()}
	cfg := &container.Config{Image: image, User: user, Env: env, Labels: r.roleLabels(RoleStudent)}
	b, err := s.Engine.create(r.ctx, RoleStudent, cfg, p.hostConfig(), limits.TmpSize, log, log)
	if b != nil {
		r.boxes = append(r.boxes, b)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot create the student's container: %w", err)
	}
	return b, nil
}

// teardown removes the run's containers, the runner last (the others use
// its network namespace).
func (r *scenarioRun) teardown() {
	ctx, cancel := cleanupContext(r.ctx)
	defer cancel()
	for i := len(r.boxes) - 1; i >= 0; i-- {
		b := r.boxes[i]
		if err := b.remove(ctx); err != nil {
			r.log.Warn("cannot remove a container of the run; a restarted graderd removes it", "container", b.id, "role", b.role, "err", err)
		}
	}
}

// lastLine is the last non-empty line of a log.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "(it said nothing)"
	}
	return s
}

// EnsureRunnerImage makes the runner's image from its binary (a static
// build of cmd gb-scenario-runner) unless the engine has it, and returns
// its reference, which names the binary's content: a new binary makes a
// new image.
func EnsureRunnerImage(ctx context.Context, e *Engine, binary string) (string, error) {
	body, err := os.ReadFile(binary)
	if err != nil {
		return "", fmt.Errorf("reading the scenario runner: %w (build it with CGO_ENABLED=0 go build ./graderd/cmd/gb-scenario-runner)", err)
	}
	f, err := elf.NewFile(bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("the scenario runner %s is not a Linux program: %w", binary, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("the scenario runner %s is linked dynamically; its image holds nothing else: build it with CGO_ENABLED=0", binary)
		}
	}
	sum := sha256.Sum256(body)
	ref := "gradebroker/scenario-runner:" + hex.EncodeToString(sum[:])[:16]
	if ok, err := e.HasImage(ctx, ref); err != nil || ok {
		return ref, err
	}
	files := []File{{Name: "gb-scenario-runner", Mode: 0o755, Body: body}, {Name: "tmp", Mode: 0o1777, Dir: true}}
	if err := e.ImportImage(ctx, ref, files, []string{`ENTRYPOINT ["/gb-scenario-runner"]`, "USER " + DefaultUser}); err != nil {
		return "", err
	}
	return ref, nil
}
