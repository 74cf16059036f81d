package graderd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// The command line uses the standard flag package rather than pflag or
// cobra: graderd has one command and a couple of dozen flags, flag accepts
// both -flag and --flag, and it adds no dependency to a daemon that runs
// as root next to untrusted graders.

// EnvPrefix starts the environment variables that set flags: GRADERD_BROKER
// sets --broker, GRADERD_SPOOL_DIR sets --spool-dir, and so on.
const EnvPrefix = "GRADERD_"

// DaemonizedEnv is set in the environment of the detached process --daemon
// starts, so that it runs instead of detaching again.
const DaemonizedEnv = EnvPrefix + "DAEMONIZED"

// notFromEnv lists the flags no environment variable sets: an inherited
// GRADERD_T or GRADERD_DAEMON would change what the command does rather than
// how.
var notFromEnv = map[string]bool{"t": true, "daemon": true, "help": true, "h": true}

// CommandLine is a parsed graderd command line.
type CommandLine struct {
	// Config is the daemon's configuration: defaults, then the file, then
	// GRADERD_* variables, then flags. It is not validated yet.
	Config Config
	// ConfigFile is the --config file, if any.
	ConfigFile string
	// Test asks for a connection test (-t) instead of running.
	Test bool
	// Daemon asks to detach from the terminal (--daemon).
	Daemon bool
	// PIDFile is where to write the daemon's pid (--pid-file).
	PIDFile string
	// LogFile receives the logs instead of standard error (--log-file).
	LogFile string
	// LogFormat is "text" or "json" (--log-format).
	LogFormat string
	// LogLevel is the lowest level logged (--log-level).
	LogLevel slog.Level
}

// ParseCommandLine parses graderd's arguments (without the program name).
// Settings come from, in increasing priority: DefaultConfig, the --config
// file, GRADERD_* environment variables (looked up with getenv) and flags.
// On --help it writes the usage to out and returns flag.ErrHelp. Parse errors
// are returned, not printed.
func ParseCommandLine(args []string, getenv func(string) string, out io.Writer) (*CommandLine, error) {
	// First pass over built-in defaults: it finds --config (which must be
	// read before flags can override it) and --help, whose text then shows
	// the built-in defaults rather than the file's.
	first := newCommandLine()
	fs, _ := newFlagSet(first)
	if err := parse(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			writeUsage(fs, out)
		}
		return nil, err
	}

	cl := newCommandLine()
	if first.ConfigFile != "" {
		if err := LoadConfigFile(first.ConfigFile, &cl.Config); err != nil {
			return nil, err
		}
		cl.Config.ConfigFile = first.ConfigFile
	}
	fs, noop := newFlagSet(cl)
	if err := parse(fs, args, getenv); err != nil {
		return nil, err
	}
	if *noop {
		cl.Config.DefaultExecutor = ExecutorSpec{Type: ExecutorNoop}
		cl.Config.Executors = nil
	}
	switch cl.LogFormat {
	case "text", "json":
	default:
		return nil, fmt.Errorf("--log-format: must be text or json, got %q", cl.LogFormat)
	}
	return cl, nil
}

func newCommandLine() *CommandLine {
	return &CommandLine{Config: DefaultConfig(), LogFormat: "text", LogLevel: slog.LevelInfo}
}

// parse applies the environment, then the arguments, to fs.
func parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if envErr != nil || notFromEnv[f.Name] {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("environment variable %s: %w", name, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: graderd takes only flags (see graderd --help)", fs.Arg(0))
	}
	return nil
}

func envName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// newFlagSet defines every flag over cl, with cl's current values as
// defaults. It returns the --noop flag's variable, which has no field.
func newFlagSet(cl *CommandLine) (*flag.FlagSet, *bool) {
	fs := flag.NewFlagSet("graderd", flag.ContinueOnError)
	// Errors are returned and printed once by the caller; usage is printed
	// only for --help, where it is asked for.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	c := &cl.Config

	fs.StringVar(&cl.ConfigFile, "config", cl.ConfigFile, "read settings from the YAML `file` (format below); flags override it")
	fs.StringVar(&c.Broker, "broker", c.Broker, "the broker's grader endpoint, as `host:port`")
	fs.StringVar(&c.ServerName, "server-name", c.ServerName, "the `name` the broker's certificate must carry (default: the host of --broker)")
	fs.StringVar(&c.CAFile, "ca", c.CAFile, "PEM `file` of the CA that issued the broker's certificate")
	fs.StringVar(&c.CertFile, "cert", c.CertFile, "PEM `file` of this server's client certificate")
	fs.StringVar(&c.KeyFile, "key", c.KeyFile, "PEM `file` of the client certificate's private key")
	fs.StringVar(&c.Hostname, "hostname", c.Hostname, "host `name` sent to the broker for its logs (default: the machine's)")
	fs.IntVar(&c.Slots, "slots", c.Slots, "how many jobs to run at once")
	fs.StringVar(&c.SpoolDir, "spool-dir", c.SpoolDir, "`directory` that keeps results until the broker acknowledges them")
	fs.StringVar(&c.WorkRoot, "work-root", c.WorkRoot, "`directory` under which each job gets its working directory (default: the system's temporary directory)")
	fs.Var(&c.Limits.MemoryLimit, "memory-limit", "memory limit of each grader run, as a `size` such as 512MiB; 0 = 1GiB in the sandbox and containers, none for an unconfined run")
	fs.Var(&c.Limits.MaxStdout, "max-stdout", "largest result a grader may print, as a `size`; 0 = 4MiB")
	fs.Var(&c.Limits.MaxStderr, "max-stderr", "largest grader log kept, as a `size`; 0 = 1MiB")
	fs.DurationVar(&c.Limits.KillGrace, "kill-grace", c.Limits.KillGrace, "time between SIGTERM and SIGKILL when a grader is stopped; 0 = 2s")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "on SIGTERM, how long to wait for running jobs before cancelling them")
	fs.DurationVar(&c.ReconnectMin, "reconnect-min", c.ReconnectMin, "first wait before reconnecting to the broker")
	fs.DurationVar(&c.ReconnectMax, "reconnect-max", c.ReconnectMax, "longest wait between reconnections (also the retry pace when the broker refuses the certificate)")
	fs.DurationVar(&c.IdleExit, "idle-exit", c.IdleExit, "after this long idle, disconnect: exit 0, or with --wakeup-listen wait for a wakeup; 0 = never")
	fs.StringVar(&c.WakeupListen, "wakeup-listen", c.WakeupListen, "UDP `host:port` where the broker's wakeups are taken (needs the wakeup secret)")
	fs.StringVar(&c.WakeupSecretFile, "wakeup-secret-file", c.WakeupSecretFile, "`file` holding this server's wakeup secret in hex (broker wakeup-secret prints it)")
	fs.StringVar(&c.Kubernetes.Kubeconfig, "kubeconfig", c.Kubernetes.Kubeconfig, "kubeconfig `file` of the kubernetes executors' cluster (default: graderd runs in the cluster, with its pod's ServiceAccount)")
	fs.StringVar(&c.Kubernetes.Context, "kube-context", c.Kubernetes.Context, "the kubeconfig's `context` (default: its current one)")
	fs.IntVar(&c.TestBehavior, "testbehavior", c.TestBehavior, "simulate a faulty server `N` (see below); 0 = normal")
	noop := fs.Bool("noop", false, "grade every job with the noop executor (answers OK {\"noop\":true}; for benchmarks)")
	fs.BoolVar(&cl.Test, "t", cl.Test, "test the connection: connect, print who the broker says this server is, and exit (0 = ok, 1 = failed)")
	fs.BoolVar(&cl.Daemon, "daemon", cl.Daemon, "detach from the terminal and run in the background (not needed under systemd)")
	fs.StringVar(&cl.PIDFile, "pid-file", cl.PIDFile, "write the daemon's pid to `file`")
	fs.StringVar(&cl.LogFile, "log-file", cl.LogFile, "append logs to `file` instead of standard error (with --daemon: default /dev/null)")
	fs.StringVar(&cl.LogFormat, "log-format", cl.LogFormat, "log `format`: text or json")
	fs.TextVar(&cl.LogLevel, "log-level", cl.LogLevel, "lowest `level` logged: debug, info, warn or error")
	return fs, noop
}

func writeUsage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprint(out, `graderd - the gradebroker grading-server daemon

graderd connects to the broker over TLS 1.3 with this server's client
certificate, runs the jobs the broker assigns, and reports their results.
Results are kept in the spool directory until the broker acknowledges them,
so none is lost when the connection or graderd stops.

Usage:
  graderd --config /etc/graderd/graderd.yaml          run in the foreground
  graderd --config /etc/graderd/graderd.yaml -t       test the connection
  graderd --config FILE --daemon --pid-file FILE      run in the background

Flags (-flag and --flag are the same; each flag can also be set by an
environment variable GRADERD_<NAME>, e.g. GRADERD_SPOOL_DIR for --spool-dir,
except -t and --daemon; flags override the environment, which overrides the
file):
`)
	fs.PrintDefaults()
	fmt.Fprint(out, `
Configuration file (YAML; a key may be left out when its default or a flag
serves; unknown keys are an error):

  broker: broker.example.org:7443
  server_name: broker.example.org     # default: the host of broker
  ca_file: /etc/graderd/ca.pem
  cert_file: /etc/graderd/server.pem
  key_file: /etc/graderd/server.key
  hostname: grader1                   # default: the machine's host name
  slots: 4
  spool_dir: /var/lib/graderd/spool
  work_root: /var/lib/graderd/work    # runs without the sandbox only
  drain_timeout: 5m
  reconnect_min: 500ms
  reconnect_max: 30s
  testbehavior: 0
  docker_host: unix:///var/run/docker.sock  # docker and scenarios executors; default DOCKER_HOST
  sandbox:                            # how exec executors isolate runs
    runtime: crun                     # the OCI runtime: a path or a name in PATH
    state_dir: /run/graderd           # the runtime's state and the runs' bundles
    uid_base: 2000000000              # slot N runs as uid and gid uid_base+N
    read_only_paths: [/srv/tasks]     # shown read-only to every run (-/path: if it exists)
    restrict_roots: [/srv/tasks]      # where a platform's restrict_paths may point
  limits:                             # for every executor
    memory_limit: 512MiB              # all the run's processes and tmpfs files; 0 = 1GiB (none unconfined)
    cpu_time: 1m                      # all the run's processes; 0 = none
    pids: 256                         # processes and threads at once
    open_files: 1024                  # per process
    tmp_size: 64MiB                   # /tmp, and /dev/shm
    work_size: 256MiB                 # the working directory, /job
    max_stdout: 4MiB
    max_stderr: 1MiB
    kill_grace: 2s
  # A job runs with the executor of its first tag listed under executors,
  # else with default_executor; with neither it is handed back (TEMPORARY).
  default_executor:
    type: exec                        # exec, docker, scenarios, kubernetes or noop
    command: [/usr/local/bin/grade, --strict]
    env: [LANG=C.UTF-8]               # the whole environment, with PATH, HOME, TMPDIR
  executors:
    python3:
      type: exec
      command: [/opt/graders/python3-grader]
      memory_limit: 1GiB              # overrides limits for this executor
      read_only_paths: [/opt/python3.12, -/etc/python3.12]
      env: [PATH=/opt/python3.12/bin:/usr/bin:/bin]
    web:
      type: exec
      command: [/opt/graders/web-grader]
      network: host                   # default: none, a loopback of its own
    legacy:
      type: exec
      command: [/opt/graders/old-grader]
      sandbox: none                   # UNCONFINED: graderd warns at every start
    course-6.00x:
      type: kubernetes                # a pod per job (see below)
      image: registry.example.org/graders/python:3.12
      command: [/usr/local/bin/grade]
      memory_limit: 1GiB              # the pod's memory request and limit (default 1GiB)
      cpus: 1                         # its CPU request and limit
      ephemeral_storage: 256MiB
      node_selector: {pool: grading}
      runtime_class: ""               # e.g. gvisor
      schedule_timeout: 1m            # no node took the pod: TEMPORARY
      start_timeout: 5m               # pulling images: TEMPORARY past it
    bench:
      type: noop
    containers:
      type: docker                    # each job in a hardened container of the engine
      image: graders/python:3.12
      command: [/usr/local/bin/grade]
      mounts: [/srv/tasks:/tasks]     # host paths shown read-only
      memory_limit: 512MiB
      cpus: 1
    dbs:
      type: scenarios                 # a student's service image, graded by HTTP scenarios
      images: [registry.example.org/dbs/*]
      image_source: registry          # engine (default), registry or archive
      registry: {address: registry.example.org, username: grader, password_file: /etc/graderd/registry.pw}
      remove_image: true
      scenario_dir: /srv/scenarios    # sets jobs name (inline sets too, unless inline_scenarios: false)
      ready: {path: /health, timeout: 1m}
      memory_limit: 512MiB
      services:                       # fresh for each job, in the job's network namespace
        - name: db
          image: postgres:16
          port: 5432
          user: "999:999"
          env: ["POSTGRES_USER={{.User}}", "POSTGRES_PASSWORD={{.Password}}", "POSTGRES_DB={{.Database}}"]
          tmpfs: {/var/lib/postgresql/data: "size=256m,uid=999,gid=999,mode=0700", /var/run/postgresql: "size=1m,uid=999,gid=999"}
  kubernetes:                         # the cluster of kubernetes executors
    kubeconfig: ""                    # default: in-cluster (graderd's pod's ServiceAccount)
    context: ""
    namespace: gradebroker-grading
    entrypoint_image: registry.example.org/gradebroker/graderd:1.0   # holds /usr/local/bin/gbpod

An exec grader reads the job as one JSON object on standard input, prints
its result as JSON on standard output and exits 0 (OK), 1 (FATAL), 2 or
anything else (TEMPORARY: retried elsewhere).

France-ioi's taskgrader, as graderqueue's graderserver ran it: an exec
executor with a taskgrader key gives the grader the bare jobdata, with
rootPath, taskPath ("$ROOT_PATH/..." or "zip:ID" rewritten) and
restrictToPaths as graderserver made them, and turns its output into
graderserver's result, {"errorcode": 0, "errormsg": "...", "jobdata": ...}:

  executors:
    taskgrader:
      type: exec
      command: [/opt/taskgrader/taskgrader.py]
      taskgrader:
        root_path: /srv/tasks         # CFG_GRADERQUEUE_ROOT; shown read-only to the runs
        zip_root: /srv/zips           # CFG_ZIP_TARGET
        vars: {TASKS: /srv/tasks}     # CFG_GRADERQUEUE_VARS, for $TASKS in restrictToPaths
        restrict_paths: [/srv/common] # CFG_SERVER_RESTRICT

Sandbox: graderd runs as root and runs each exec grader in a sandbox made
with crun: a uid of the slot's own, no capabilities, a seccomp filter, its
own pid, mount and network namespaces (loopback only), a read-only view of
/usr and the system directories, a few files of /etc, its own program and
the read_only_paths, a tmpfs /job (its working directory) and /tmp, and only
PATH, HOME, TMPDIR, LANG and the executor's env as environment. Everything
else (graderd's configuration, keys, spool, other runs) is invisible. An
interpreter outside /usr (pyenv under /root/.pyenv, /opt/...) needs its
directory in read_only_paths and its bin directory in PATH. graderd refuses
to start when the sandbox cannot be set up; sandbox: none on an executor
runs its graders unconfined, with a warning at every start.

Kubernetes: a kubernetes executor runs each job as a hardened pod (non-root,
read-only root, no capabilities, RuntimeDefault seccomp, requests and
limits, no ServiceAccount token) in kubernetes.namespace, with gbpod as its
entrypoint; graderd deletes its pods when their runs end and, at start, any
a previous graderd of the same certificate left.

--testbehavior N simulates a faulty server, to test the broker:
  0  normal
  1  accept each job and never answer (heartbeats go on, so the lease stays
     until its deadline)
  2  wait 60 s before starting each job
  3  report every job FATAL with result {"error":"testbehavior 3"}
  4  report every job TEMPORARY
  5  report every job OK with a result that is not JSON
  6  report every job OK with its own jobdata as result

Idle and wakeups: with --idle-exit D, graderd disconnects once it has been
idle (no running job, no result waiting for the broker's Ack) for D. Without
--wakeup-listen it then exits 0, so that an autoscaler may stop the machine
(register an http(s) wakeup URL to start it again). With --wakeup-listen it
stays running, disconnected, until the broker's UDP wakeup arrives (register
the server with --wakeup-url udp://HOST:PORT), then reconnects at once. A
wakeup is signed with this server's secret (wakeup_secret in the file or
--wakeup-secret-file; 'broker wakeup-secret --key-file KEY --server NAME'
prints it); forged, stale (clock off by more than 60 s) and replayed ones are
refused and logged. Without --idle-exit a wakeup only skips the wait before
the next reconnection.

Signals: SIGINT or SIGTERM drains (no new jobs, running jobs finish within
--drain-timeout, results are sent) and exits 0; a second one exits at once,
leaving unacknowledged results in the spool. SIGHUP reloads the certificate
files.

Exit status: 0 on success, 1 on any error.
`)
}

// NewLogger returns a logger writing to w in format "text" or "json".
func NewLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("unknown log format %q: use text or json", format)
}

// WritePIDFile writes pid to path (mode 0644), replacing the file at once so
// that a reader never sees it half written.
func WritePIDFile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d\n", pid), 0o644); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	// WriteFile's mode is filtered by the umask; the pid file is meant to
	// be readable by monitoring tools.
	if err := os.Chmod(tmp, 0o644); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	return nil
}
