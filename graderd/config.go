package graderd

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
)

// Defaults of Config, as DefaultConfig sets them.
const (
	// DefaultSlots is how many jobs graderd runs at once by default.
	DefaultSlots = 4
	// DefaultSpoolDir is where results wait for the broker's Ack by default.
	DefaultSpoolDir = "/var/lib/graderd/spool"
	// DefaultDrainTimeout is how long a shutdown waits for running jobs by
	// default.
	DefaultDrainTimeout = 5 * time.Minute
	// DefaultReconnectMin is the default first wait before a reconnection.
	DefaultReconnectMin = 500 * time.Millisecond
	// DefaultReconnectMax is the default longest wait between reconnections.
	DefaultReconnectMax = 30 * time.Second
)

// maxSlots bounds Config.Slots: more jobs than this on one machine is a typo,
// not a plan, and the broker's counters are 32-bit.
const maxSlots = 4096

// Executor types of an ExecutorSpec.
const (
	// ExecutorExec runs an external grader program per job (executor.Exec).
	ExecutorExec = "exec"
	// ExecutorNoop answers every job with OK {"noop":true} (executor.Noop).
	ExecutorNoop = "noop"
	// ExecutorDocker runs each job's grader in a container (docker.Executor).
	ExecutorDocker = "docker"
	// ExecutorScenarios grades a student's service image by HTTP scenarios
	// (docker.Scenarios).
	ExecutorScenarios = "scenarios"
	// ExecutorKubernetes runs each job as a pod of a Kubernetes cluster
	// (kubernetes.Executor).
	ExecutorKubernetes = "kubernetes"
)

// executorTypes lists the executor types, for messages.
var executorTypes = []string{ExecutorExec, ExecutorDocker, ExecutorScenarios, ExecutorKubernetes, ExecutorNoop}

// DefaultKubernetesNamespace is where kubernetes executors run their pods
// unless kubernetes.namespace says otherwise; deploy/kubernetes makes it.
const DefaultKubernetesNamespace = "gradebroker-grading"

// Config is everything graderd needs to run. DefaultConfig gives the
// defaults; LoadConfigFile, environment variables and flags fill in the rest
// (see ParseCommandLine), and Validate checks the result.
type Config struct {
	// Broker is the broker's grader endpoint, as host:port.
	Broker string `yaml:"broker"`
	// ServerName is the name the broker's certificate must carry; empty
	// means the host part of Broker.
	ServerName string `yaml:"server_name"`
	// CAFile is the PEM file of the CA that issued the broker's certificate.
	CAFile string `yaml:"ca_file"`
	// CertFile is the PEM file of this server's client certificate.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM file of CertFile's private key.
	KeyFile string `yaml:"key_file"`
	// Hostname is sent to the broker in Hello, for its logs; empty means
	// os.Hostname().
	Hostname string `yaml:"hostname"`

	// Slots is how many jobs graderd runs at once.
	Slots int `yaml:"slots"`
	// SpoolDir keeps results until the broker has acknowledged them.
	SpoolDir string `yaml:"spool_dir"`
	// WorkRoot is the parent of the jobs' working directories; empty means
	// the system's temporary directory.
	WorkRoot string `yaml:"work_root"`

	// Sandbox is how exec executors isolate their runs (unless an executor
	// says sandbox: none).
	Sandbox SandboxSettings `yaml:"sandbox"`
	// DockerHost is the Docker engine of the docker and scenarios
	// executors ("unix:///var/run/docker.sock", "tcp://..."); empty means
	// DOCKER_HOST, else the local socket.
	DockerHost string `yaml:"docker_host"`
	// Limits apply to every executor (exec, docker, scenarios,
	// kubernetes) that does not set its own; kubernetes executors leave
	// out pids and cpu_time, which a pod cannot have.
	Limits Limits `yaml:"limits"`
	// Kubernetes is the cluster of the kubernetes executors.
	Kubernetes KubernetesSettings `yaml:"kubernetes"`
	// DefaultExecutor runs jobs none of whose tags has an executor in
	// Executors. Its zero value (no type) means there is no default: such
	// jobs are handed back to the broker as TEMPORARY.
	DefaultExecutor ExecutorSpec `yaml:"default_executor"`
	// Executors maps a tag to the executor of the jobs that carry it; a job
	// runs with the executor of the first of its tags found here.
	Executors map[string]ExecutorSpec `yaml:"executors"`

	// DrainTimeout is how long a shutdown waits for running jobs before it
	// cancels them; 0 cancels them at once.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// ReconnectMin is the first wait before reconnecting after the stream
	// broke; the wait grows up to ReconnectMax, with jitter.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	// ReconnectMax caps the wait between reconnections; a broker that
	// refuses the certificate is retried this often.
	ReconnectMax time.Duration `yaml:"reconnect_max"`

	// IdleExit, when positive, ends the connection once graderd has been
	// idle (no running job, no unacknowledged result) that long while
	// connected: with WakeupListen it then waits for a wakeup, without it
	// it exits (see idle.go). 0 never does.
	IdleExit time.Duration `yaml:"idle_exit"`
	// WakeupListen is the UDP host:port where graderd takes the broker's
	// wakeups; empty means none.
	WakeupListen string `yaml:"wakeup_listen"`
	// WakeupSecret is this server's wakeup secret in hex, as `broker
	// wakeup-secret` prints it; WakeupSecretFile names a file holding it
	// instead.
	WakeupSecret     string `yaml:"wakeup_secret"`
	WakeupSecretFile string `yaml:"wakeup_secret_file"`

	// TestBehavior makes graderd a deliberately faulty server, for testing
	// the broker (0 = normal; see the TestBehavior constants).
	TestBehavior int `yaml:"testbehavior"`

	// Executor, when set, runs every job and replaces DefaultExecutor and
	// Executors. It is for tests and benchmarks and cannot come from a file.
	Executor executor.Executor `yaml:"-"`
	// ConfigFile is the file the configuration was read from, if any: the
	// sandbox never shows it to a run.
	ConfigFile string `yaml:"-"`
}

// SandboxSettings configure the sandbox of exec executors (see
// executor.Sandbox).
type SandboxSettings struct {
	// Runtime is the OCI runtime, a path or a name in PATH; default crun.
	Runtime string `yaml:"runtime"`
	// StateDir holds the runtime's state and the runs' bundles; default
	// /run/graderd.
	StateDir string `yaml:"state_dir"`
	// UIDBase is the uid and gid of slot 0; slot N runs as UIDBase+N.
	// Default executor.DefaultUIDBase.
	UIDBase uint32 `yaml:"uid_base"`
	// ReadOnlyPaths are shown read-only to every sandboxed run; a path
	// starting with "-" is skipped when missing.
	ReadOnlyPaths []string `yaml:"read_only_paths"`
	// RestrictRoots are where a platform's restrict_paths may point: their
	// parts inside these roots are shown read-only to the job's run.
	RestrictRoots []string `yaml:"restrict_roots"`
}

// KubernetesSettings configure graderd's cluster, for kubernetes
// executors. All of them share it.
type KubernetesSettings struct {
	// Kubeconfig is a kubeconfig file; empty means graderd runs in the
	// cluster and uses its pod's ServiceAccount (client-go's in-cluster
	// configuration).
	Kubeconfig string `yaml:"kubeconfig"`
	// Context is the kubeconfig's context; empty means its current one.
	Context string `yaml:"context"`
	// Namespace is where the grading pods run; default
	// DefaultKubernetesNamespace.
	Namespace string `yaml:"namespace"`
	// EntrypointImage is the image whose /usr/local/bin/gbpod becomes each
	// pod's entrypoint: graderd's own image.
	EntrypointImage string `yaml:"entrypoint_image"`
}

// PodSettings are a kubernetes executor's settings beside its command, env,
// limits and the image, cpus and user it shares with the container
// executors (Containers); see kubernetes.Config.
type PodSettings struct {
	// EphemeralStorage is the pod's ephemeral-storage request and limit;
	// default 256MiB.
	EphemeralStorage ByteSize `yaml:"ephemeral_storage"`
	// NodeSelector picks the nodes that may run the pods.
	NodeSelector map[string]string `yaml:"node_selector"`
	// RuntimeClass is the pods' RuntimeClass (gvisor, kata), if any.
	RuntimeClass string `yaml:"runtime_class"`
	// ImagePullPolicy is Always, IfNotPresent or Never.
	ImagePullPolicy string `yaml:"image_pull_policy"`
	// ImagePullSecrets name Secrets of the namespace for a private registry.
	ImagePullSecrets []string `yaml:"image_pull_secrets"`
	// ScheduleTimeout bounds the wait for a node (default 1m);
	// StartTimeout the time from a node to a running grader (default 5m).
	ScheduleTimeout time.Duration `yaml:"schedule_timeout"`
	StartTimeout    time.Duration `yaml:"start_timeout"`
}

func (p PodSettings) set() bool {
	return p.EphemeralStorage != 0 || len(p.NodeSelector) > 0 || p.RuntimeClass != "" ||
		p.ImagePullPolicy != "" || len(p.ImagePullSecrets) > 0 || p.ScheduleTimeout != 0 || p.StartTimeout != 0
}

// Values of ExecutorSpec.Sandbox and ExecutorSpec.Network.
const (
	// SandboxNone runs an exec executor's graders unconfined.
	SandboxNone = "none"
	// NetworkHost gives sandboxed runs the host's network.
	NetworkHost = "host"
)

// Limits bound what one grader run may use (see executor.Limits).
type Limits struct {
	// MemoryLimit caps a run's memory in bytes, all its processes and its
	// tmpfs files together; 0 means executor.DefaultMemory (1 GiB) in the
	// sandbox and in containers, and none for an unconfined run.
	MemoryLimit ByteSize `yaml:"memory_limit"`
	// CPUTime caps the CPU time of all a run's processes together; 0
	// means none.
	CPUTime time.Duration `yaml:"cpu_time"`
	// Pids caps a run's processes and threads; 0 means
	// executor.DefaultPids in the sandbox, none without it.
	Pids int `yaml:"pids"`
	// OpenFiles caps each process's open files (sandbox only); 0 means
	// executor.DefaultOpenFiles.
	OpenFiles int `yaml:"open_files"`
	// TmpSize is the size of a sandboxed run's /tmp and /dev/shm; 0 means
	// executor.DefaultTmpSize.
	TmpSize ByteSize `yaml:"tmp_size"`
	// WorkSize is the size of a sandboxed run's working directory; 0
	// means executor.DefaultWorkSize.
	WorkSize ByteSize `yaml:"work_size"`
	// MaxStdout caps a grader's result; 0 means executor.DefaultMaxStdout.
	MaxStdout ByteSize `yaml:"max_stdout"`
	// MaxStderr caps the kept log of a run; 0 means executor.DefaultMaxStderr.
	MaxStderr ByteSize `yaml:"max_stderr"`
	// KillGrace is the time between SIGTERM and SIGKILL when a run is
	// stopped; 0 means executor.DefaultKillGrace.
	KillGrace time.Duration `yaml:"kill_grace"`
}

// ExecutorSpec describes one executor in the configuration.
type ExecutorSpec struct {
	// Type is one of ExecutorExec, ExecutorDocker, ExecutorScenarios,
	// ExecutorKubernetes and ExecutorNoop.
	Type string `yaml:"type"`
	// Command is the grader's argv, for type exec, and for type kubernetes
	// in its image; for type docker it replaces the image's entrypoint and
	// command.
	Command []string `yaml:"command"`
	// Env is the grader's environment, as KEY=value, for types exec and
	// docker: in the sandbox the only variables beside
	// executor.DefaultEnv (which they may replace), without it added to
	// graderd's own, in a container added to the image's.
	Env []string `yaml:"env"`
	// Sandbox is "" (the default: graderd's sandbox) or "none", which runs
	// the graders with graderd's own powers; graderd then warns at every
	// start.
	Sandbox string `yaml:"sandbox"`
	// Network is "" or "none" (a loopback of the run's own) or "host".
	Network string `yaml:"network"`
	// ReadOnlyPaths are shown read-only to the sandboxed runs (an
	// interpreter outside /usr, task data); a path starting with "-" is
	// skipped when missing.
	ReadOnlyPaths []string `yaml:"read_only_paths"`
	// Limits override Config.Limits field by field where they are not zero.
	Limits `yaml:",inline"`
	// Taskgrader, for type exec, runs France-ioi's taskgrader as
	// graderqueue's graderserver did (executor.Taskgrader).
	Taskgrader *TaskgraderSettings `yaml:"taskgrader"`

	// Containers embeds the settings of the docker and scenarios types;
	// image, cpus and user are also a kubernetes executor's.
	Containers `yaml:",inline"`
	// PodSettings are for type kubernetes.
	PodSettings `yaml:",inline"`
}

// TaskgraderSettings are graderserver's settings for an exec executor that
// runs taskgrader; the README's "Moving from graderqueue" puts each beside
// the graderserver key it replaces.
type TaskgraderSettings struct {
	// RootPath is taskgrader's rootPath, what "$ROOT_PATH" in a job's
	// taskPath stands for (CFG_GRADERQUEUE_ROOT). Required; it is shown
	// read-only to sandboxed runs.
	RootPath string `yaml:"root_path"`
	// ZipRoot is where "zip:ID" tasks lie, as ZIP_ROOT/ID/
	// (CFG_ZIP_TARGET); shown read-only to sandboxed runs when it exists.
	ZipRoot string `yaml:"zip_root"`
	// Vars are substituted for $NAME in restrictToPaths
	// (CFG_GRADERQUEUE_VARS).
	Vars map[string]string `yaml:"vars"`
	// RestrictPaths are appended to every job's restrictToPaths
	// (CFG_SERVER_RESTRICT).
	RestrictPaths []string `yaml:"restrict_paths"`
}

// Containers are the settings of the container executors (types docker
// and scenarios; see docker.Executor and docker.Scenarios). A kubernetes
// executor takes Image, CPUs and User from here too, meaning the same for
// its pods.
type Containers struct {
	// Image is a docker or kubernetes executor's grader image.
	Image string `yaml:"image"`
	// Images are the patterns (path.Match) of the images a job may name
	// in its jobdata: another grader image (docker), the student's image
	// (scenarios, which needs some).
	Images []string `yaml:"images"`
	// ImageSource is where images come from: engine (the default),
	// registry or archive.
	ImageSource string `yaml:"image_source"`
	// Registry is where image_source registry pulls from.
	Registry RegistrySettings `yaml:"registry"`
	// MaxImageSize bounds a pulled image or a loaded archive; 0 means
	// docker.DefaultMaxImageSize.
	MaxImageSize ByteSize `yaml:"max_image_size"`
	// RemoveImage removes the job's image after its run (archives'
	// always are).
	RemoveImage bool `yaml:"remove_image"`
	// ArchiveURLs are the URL prefixes and ArchiveDirs the directories
	// image_source archive takes a job's image archive from.
	ArchiveURLs []string `yaml:"archive_urls"`
	ArchiveDirs []string `yaml:"archive_dirs"`
	// User is the grader's or the student's numeric uid:gid; default
	// 65534:65534. Never root.
	User string `yaml:"user"`
	// CPUs is the container's CPU quota (a pod's CPU request and limit),
	// in CPUs; 0 means executor.DefaultContainerCPUs.
	CPUs float64 `yaml:"cpus"`
	// Mounts are host paths shown read-only in a docker executor's
	// containers, as HOST:CONTAINER.
	Mounts []string `yaml:"mounts"`
	// JobFile is a path where a docker executor's containers also find the
	// job document, read-only.
	JobFile string `yaml:"job_file"`

	// Port is where the student's service listens (scenarios); 0 means
	// docker.DefaultServicePort.
	Port int `yaml:"port"`
	// Ready is the readiness probe of the student's service.
	Ready ReadySettings `yaml:"ready"`
	// ScenarioTimeout bounds a scenario without its own timeout.
	ScenarioTimeout time.Duration `yaml:"scenario_timeout"`
	// ScenarioDir holds the scenario sets jobs name (relative to the
	// working directory graderd starts in).
	ScenarioDir string `yaml:"scenario_dir"`
	// InlineScenarios, when false, refuses sets carried in jobdata.
	InlineScenarios *bool `yaml:"inline_scenarios"`
	// RunnerImage is the scenario runner's image, which must be on the
	// engine; empty: graderd makes it from RunnerBinary.
	RunnerImage string `yaml:"runner_image"`
	// RunnerBinary is gb-scenario-runner, a static binary; empty means
	// the one beside graderd's own executable, else in PATH.
	RunnerBinary string `yaml:"runner_binary"`
	// Services are the containers each run of a scenarios executor starts
	// beside the student's.
	Services []ServiceSettings `yaml:"services"`
	// ServicesTimeout bounds the wait for the services' ports.
	ServicesTimeout time.Duration `yaml:"services_timeout"`
	// StudentEnv is the student's environment, KEY=template; default the
	// FIIT tester's DATABASE_* variables for the first service.
	StudentEnv []string `yaml:"student_env"`
	// MaxBody is how much of each answer is read and compared; 0 means
	// docker.DefaultMaxBody.
	MaxBody ByteSize `yaml:"max_body"`
}

// RegistrySettings name a registry and how to log in.
type RegistrySettings struct {
	// Address is the registry's host[:port], as image references name it.
	Address string `yaml:"address"`
	// Username and PasswordFile (a file holding the password) log in;
	// both empty pull anonymously.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// ReadySettings are the readiness probe of a student's service.
type ReadySettings struct {
	// Path is probed with GET; default "/".
	Path string `yaml:"path"`
	// Status, when set, is the status that means ready; else any answer.
	Status int `yaml:"status"`
	// Timeout bounds the wait, with backoff between probes; default 1m.
	Timeout time.Duration `yaml:"timeout"`
}

// ServiceSettings describe a service container of a scenarios executor
// (see docker.Service).
type ServiceSettings struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	// Env is KEY=template: {{.User}}, {{.Password}}, {{.Database}},
	// {{.Host}}, {{index .Ports "NAME"}}.
	Env  []string `yaml:"env"`
	Port int      `yaml:"port"`
	// User is the image's own user it runs as; "" keeps the image's.
	User string `yaml:"user"`
	// Tmpfs maps writable directories to tmpfs options.
	Tmpfs        map[string]string `yaml:"tmpfs"`
	CapAdd       []string          `yaml:"cap_add"`
	WritableRoot bool              `yaml:"writable_root"`
	CPUs         float64           `yaml:"cpus"`
	Limits       `yaml:",inline"`
}

// DefaultConfig returns a Config with every default set. Broker and the TLS
// files have no default.
func DefaultConfig() Config {
	return Config{
		Slots:        DefaultSlots,
		SpoolDir:     DefaultSpoolDir,
		DrainTimeout: DefaultDrainTimeout,
		ReconnectMin: DefaultReconnectMin,
		ReconnectMax: DefaultReconnectMax,
	}
}

// LoadConfigFile reads a YAML configuration file over cfg: fields the file
// sets replace cfg's, others keep their value. Unknown keys are an error, so
// that a misspelt key does not silently leave a default in place.
func LoadConfigFile(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config file: %w", err)
	}
	if err := decodeConfig(b, cfg); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

func decodeConfig(b []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// Validate checks cfg and names the first bad field, by its name in the
// configuration file.
func (c Config) Validate() error {
	if c.Broker == "" {
		return errors.New("broker: missing; set the broker's host:port (flag --broker)")
	}
	host, port, err := net.SplitHostPort(c.Broker)
	if err != nil {
		return fmt.Errorf("broker: %q is not host:port: %w", c.Broker, err)
	}
	if host == "" {
		return fmt.Errorf("broker: %q has no host", c.Broker)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("broker: %q has no valid port", c.Broker)
	}
	for _, f := range []struct{ name, value, flag string }{
		{"ca_file", c.CAFile, "--ca"},
		{"cert_file", c.CertFile, "--cert"},
		{"key_file", c.KeyFile, "--key"},
	} {
		if f.value == "" {
			return fmt.Errorf("%s: missing; graderd needs the broker's CA and its own client certificate and key (flag %s)", f.name, f.flag)
		}
	}
	if c.Slots < 1 || c.Slots > maxSlots {
		return fmt.Errorf("slots: must be between 1 and %d, got %d", maxSlots, c.Slots)
	}
	if c.SpoolDir == "" {
		return errors.New("spool_dir: missing")
	}
	if err := c.Limits.validate("limits."); err != nil {
		return err
	}
	if err := absPaths("sandbox.read_only_paths", c.Sandbox.ReadOnlyPaths); err != nil {
		return err
	}
	if err := absPaths("sandbox.restrict_roots", c.Sandbox.RestrictRoots); err != nil {
		return err
	}
	if c.DefaultExecutor.Type != "" {
		if err := c.DefaultExecutor.validate("default_executor"); err != nil {
			return err
		}
	}
	tags := make([]string, 0, len(c.Executors))
	for tag := range c.Executors {
		tags = append(tags, tag)
	}
	slices.Sort(tags) // so the same bad file always names the same field
	for _, tag := range tags {
		if strings.TrimSpace(tag) == "" {
			return errors.New("executors: a tag is empty")
		}
		if err := c.Executors[tag].validate("executors." + tag); err != nil {
			return err
		}
	}
	if c.usesKubernetes() && c.Kubernetes.EntrypointImage == "" {
		return errors.New("kubernetes.entrypoint_image: missing; kubernetes executors need the image that holds gbpod (graderd's own image)")
	}
	if c.DrainTimeout < 0 {
		return fmt.Errorf("drain_timeout: must not be negative, got %v", c.DrainTimeout)
	}
	if c.ReconnectMin <= 0 {
		return fmt.Errorf("reconnect_min: must be positive, got %v", c.ReconnectMin)
	}
	if c.ReconnectMax < c.ReconnectMin {
		return fmt.Errorf("reconnect_max: must be at least reconnect_min (%v), got %v", c.ReconnectMin, c.ReconnectMax)
	}
	if err := c.validateSleep(); err != nil {
		return err
	}
	if c.TestBehavior < 0 || c.TestBehavior > maxTestBehavior {
		return fmt.Errorf("testbehavior: must be between 0 and %d, got %d", maxTestBehavior, c.TestBehavior)
	}
	return nil
}

// usesKubernetes reports whether an executor is of type kubernetes.
func (c Config) usesKubernetes() bool {
	if c.DefaultExecutor.Type == ExecutorKubernetes {
		return true
	}
	for _, s := range c.Executors {
		if s.Type == ExecutorKubernetes {
			return true
		}
	}
	return false
}

// hasExecutor reports whether any job could find an executor.
func (c Config) hasExecutor() bool {
	return c.Executor != nil || c.DefaultExecutor.Type != "" || len(c.Executors) > 0
}

// serverName is the name the broker's certificate is checked against.
func (c Config) serverName() string {
	if c.ServerName != "" {
		return c.ServerName
	}
	host, _, err := net.SplitHostPort(c.Broker)
	if err != nil {
		return c.Broker
	}
	return host
}

func (s ExecutorSpec) validate(field string) error {
	if s.Type != ExecutorKubernetes && s.PodSettings.set() {
		return fmt.Errorf("%s: the pod settings (ephemeral_storage, node_selector, runtime_class, image_pull_*, schedule_timeout, start_timeout) are for type %s", field, ExecutorKubernetes)
	}
	switch s.Type {
	case ExecutorKubernetes:
		if s.Image == "" {
			return fmt.Errorf("%s.image: missing; a kubernetes executor needs the grading image", field)
		}
		if len(s.Command) == 0 || s.Command[0] == "" {
			return fmt.Errorf("%s.command: missing; a kubernetes executor needs the grader's argv in its image, e.g. [/usr/local/bin/grade]", field)
		}
		if err := checkEnv(field+".env", s.Env); err != nil {
			return err
		}
		if s.Sandbox != "" || s.Network != "" || len(s.ReadOnlyPaths) > 0 || s.Taskgrader != nil {
			return fmt.Errorf("%s: sandbox, network, read_only_paths and taskgrader are exec settings; a pod is isolated by its own settings and the namespace's NetworkPolicy", field)
		}
		if s.CPUTime != 0 {
			return fmt.Errorf("%s.cpu_time: a pod has a CPU rate limit (cpus), not a CPU-time budget; leave it out (the job's timeout bounds CPU time to timeout × cpus)", field)
		}
		if s.Pids != 0 {
			return fmt.Errorf("%s.pids: a pod has no process limit of its own; the kubelet's podPidsLimit sets one for every pod of a node", field)
		}
		if s.ScheduleTimeout < 0 || s.StartTimeout < 0 || s.CPUs < 0 {
			return fmt.Errorf("%s: schedule_timeout, start_timeout and cpus must not be negative", field)
		}
		if s.User != "" {
			if _, _, err := docker.ParseUser(s.User); err != nil {
				return fmt.Errorf("%s.user: %w", field, err)
			}
		}
	case ExecutorExec:
		if len(s.Command) == 0 || s.Command[0] == "" {
			return fmt.Errorf("%s.command: missing; an exec executor needs the grader's argv, e.g. [/usr/local/bin/grade]", field)
		}
		if err := checkEnv(field+".env", s.Env); err != nil {
			return err
		}
		switch s.Sandbox {
		case "", "crun", SandboxNone:
		default:
			return fmt.Errorf("%s.sandbox: %q is not a sandbox; leave it out for graderd's sandbox, or say %q", field, s.Sandbox, SandboxNone)
		}
		switch s.Network {
		case "", "none", NetworkHost:
		default:
			return fmt.Errorf("%s.network: %q is not a network; use none (the default) or %q", field, s.Network, NetworkHost)
		}
		if s.Sandbox == SandboxNone && (s.Network != "" || len(s.ReadOnlyPaths) > 0) {
			return fmt.Errorf("%s: network and read_only_paths are sandbox settings; with sandbox: none a grader sees everything graderd sees", field)
		}
		if err := absPaths(field+".read_only_paths", s.ReadOnlyPaths); err != nil {
			return err
		}
		if tg := s.Taskgrader; tg != nil {
			if !filepath.IsAbs(tg.RootPath) {
				return fmt.Errorf("%s.taskgrader.root_path: %q is not an absolute path; it is taskgrader's rootPath (graderserver's CFG_GRADERQUEUE_ROOT)", field, tg.RootPath)
			}
			if tg.ZipRoot != "" && !filepath.IsAbs(tg.ZipRoot) {
				return fmt.Errorf("%s.taskgrader.zip_root: %q is not an absolute path", field, tg.ZipRoot)
			}
		}
	case ExecutorDocker, ExecutorScenarios:
		if s.Sandbox != "" || s.Network != "" || len(s.ReadOnlyPaths) > 0 || s.Taskgrader != nil {
			return fmt.Errorf("%s: sandbox, network, read_only_paths and taskgrader are exec settings; a %s executor's containers are hardened by the engine (mounts shows host paths)", field, s.Type)
		}
		if err := s.Containers.validate(field, s.Type); err != nil {
			return err
		}
		if s.Type == ExecutorScenarios && (len(s.Command) > 0 || len(s.Env) > 0) {
			return fmt.Errorf("%s: a scenarios executor runs the student's image as it is: no command or env (student_env sets its environment)", field)
		}
		if err := checkEnv(field+".env", s.Env); err != nil {
			return err
		}
	case ExecutorNoop:
		if len(s.Command) > 0 || len(s.Env) > 0 || s.Sandbox != "" || s.Network != "" || len(s.ReadOnlyPaths) > 0 || s.Taskgrader != nil {
			return fmt.Errorf("%s: a noop executor takes no command, env, sandbox or taskgrader settings", field)
		}
	case "":
		return fmt.Errorf("%s.type: missing; use one of %q", field, executorTypes)
	default:
		return fmt.Errorf("%s.type: unknown executor type %q; use one of %q", field, s.Type, executorTypes)
	}
	c := s.Containers
	if s.Type == ExecutorKubernetes {
		c.Image, c.CPUs, c.User = "", 0, "" // a pod's too
	}
	if s.Type != ExecutorDocker && s.Type != ExecutorScenarios && !reflect.DeepEqual(c, Containers{}) {
		return fmt.Errorf("%s: image, images, services and the other container settings are for types %s and %s (image, cpus and user also for %s)",
			field, ExecutorDocker, ExecutorScenarios, ExecutorKubernetes)
	}
	return s.Limits.validate(field + ".")
}

// checkEnv checks KEY=value entries.
func checkEnv(field string, env []string) error {
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("%s: %q is not KEY=value", field, e)
		}
	}
	return nil
}

// validate checks the container settings of an executor of type typ.
func (c Containers) validate(field, typ string) error {
	f := func(key string) string { return field + "." + key }
	isDocker := typ == ExecutorDocker
	switch {
	case isDocker && c.Image == "":
		return fmt.Errorf("%s: missing; a docker executor needs its grader's image", f("image"))
	case !isDocker && c.Image != "":
		return fmt.Errorf("%s: a scenarios executor runs the image each job names (allowed by images), not one of its own", f("image"))
	case !isDocker && len(c.Images) == 0:
		return fmt.Errorf("%s: missing; a scenarios executor runs the students' images its jobs name: list the allowed ones, e.g. [registry.example.org/course/*]", f("images"))
	case !isDocker && (len(c.Mounts) > 0 || c.JobFile != ""):
		return fmt.Errorf("%s: mounts and job_file are docker settings; a student's service sees nothing of the grading server", field)
	case isDocker && (c.Port != 0 || c.Ready != ReadySettings{} || c.ScenarioTimeout != 0 || c.ScenarioDir != "" || c.InlineScenarios != nil ||
		c.RunnerImage != "" || c.RunnerBinary != "" || len(c.Services) > 0 || c.ServicesTimeout != 0 || len(c.StudentEnv) > 0 || c.MaxBody != 0):
		return fmt.Errorf("%s: port, ready, services and the other scenario settings are for type %s", field, ExecutorScenarios)
	}
	for _, p := range c.Images {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("%s: %q is not a pattern: %v", f("images"), p, err)
		}
	}
	switch c.ImageSource {
	case "", docker.SourceEngine:
	case docker.SourceRegistry:
		if c.Registry.Address == "" {
			return fmt.Errorf("%s: missing; image_source registry pulls from the registry named here", f("registry.address"))
		}
	case docker.SourceArchive:
		if len(c.ArchiveURLs) == 0 && len(c.ArchiveDirs) == 0 {
			return fmt.Errorf("%s: image_source archive needs archive_urls or archive_dirs, where jobs' archives may come from", field)
		}
	default:
		return fmt.Errorf("%s: %q is not an image source; use engine, registry or archive", f("image_source"), c.ImageSource)
	}
	if c.User != "" {
		if _, _, err := docker.ParseUser(c.User); err != nil {
			return fmt.Errorf("%s: %w", f("user"), err)
		}
	}
	if c.CPUs < 0 || c.CPUs > 1024 {
		return fmt.Errorf("%s: %v is not a number of CPUs", f("cpus"), c.CPUs)
	}
	for _, m := range c.Mounts {
		if _, err := docker.ParseMount(m); err != nil {
			return fmt.Errorf("%s: %w", f("mounts"), err)
		}
	}
	if c.JobFile != "" && !strings.HasPrefix(c.JobFile, "/") {
		return fmt.Errorf("%s: %q is not an absolute path", f("job_file"), c.JobFile)
	}
	if err := absPaths(f("archive_dirs"), c.ArchiveDirs); err != nil {
		return err
	}
	for _, a := range c.ArchiveURLs {
		if u, err := url.Parse(a); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			return fmt.Errorf("%s: %q is not an http(s) URL with a host and no credentials, such as https://files.example.org/archives/", f("archive_urls"), a)
		}
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("%s: %d is not a port", f("port"), c.Port)
	}
	if c.Ready.Path != "" && !strings.HasPrefix(c.Ready.Path, "/") {
		return fmt.Errorf("%s: %q does not start with /", f("ready.path"), c.Ready.Path)
	}
	if c.Ready.Status != 0 && (c.Ready.Status < 100 || c.Ready.Status > 599) {
		return fmt.Errorf("%s: %d is not an HTTP status", f("ready.status"), c.Ready.Status)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ready.timeout", c.Ready.Timeout}, {"scenario_timeout", c.ScenarioTimeout}, {"services_timeout", c.ServicesTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%s: must not be negative, got %v", f(d.name), d.v)
		}
	}
	if c.InlineScenarios != nil && !*c.InlineScenarios && c.ScenarioDir == "" {
		return fmt.Errorf("%s: with inline_scenarios false, jobs can only name sets of scenario_dir: set it", f("scenario_dir"))
	}
	creds := docker.Credentials{Ports: map[string]int{}}
	names := map[string]bool{}
	for i, sv := range c.Services {
		sf := fmt.Sprintf("%s[%d]", f("services"), i)
		switch {
		case sv.Name == "" || names[sv.Name]:
			return fmt.Errorf("%s.name: missing or used twice", sf)
		case sv.Image == "":
			return fmt.Errorf("%s.image: missing", sf)
		case sv.Port < 1 || sv.Port > 65535:
			return fmt.Errorf("%s.port: missing; the port the service listens on, which the runner waits for", sf)
		case sv.CPUs < 0:
			return fmt.Errorf("%s.cpus: %v is not a number of CPUs", sf, sv.CPUs)
		}
		names[sv.Name] = true
		creds.Ports[sv.Name] = sv.Port
		if _, err := docker.RenderEnv(sv.Env, creds); err != nil {
			return fmt.Errorf("%s.env: %w", sf, err)
		}
		for p := range sv.Tmpfs {
			if !strings.HasPrefix(p, "/") {
				return fmt.Errorf("%s.tmpfs: %q is not an absolute path", sf, p)
			}
		}
		if err := sv.Limits.validate(sf + "."); err != nil {
			return err
		}
	}
	if _, err := docker.RenderEnv(c.StudentEnv, creds); err != nil {
		return fmt.Errorf("%s: %w", f("student_env"), err)
	}
	return nil
}

func (l Limits) validate(prefix string) error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"memory_limit", int64(l.MemoryLimit)}, {"max_stdout", int64(l.MaxStdout)}, {"max_stderr", int64(l.MaxStderr)},
		{"tmp_size", int64(l.TmpSize)}, {"work_size", int64(l.WorkSize)}, {"pids", int64(l.Pids)}, {"open_files", int64(l.OpenFiles)},
	} {
		if f.v < 0 {
			return fmt.Errorf("%s%s: must not be negative, got %d", prefix, f.name, f.v)
		}
	}
	if l.KillGrace < 0 {
		return fmt.Errorf("%skill_grace: must not be negative, got %v", prefix, l.KillGrace)
	}
	if l.CPUTime < 0 {
		return fmt.Errorf("%scpu_time: must not be negative, got %v", prefix, l.CPUTime)
	}
	return nil
}

// absPaths checks that every path (after an optional "-") is absolute.
func absPaths(field string, paths []string) error {
	for _, p := range paths {
		if q := strings.TrimPrefix(p, "-"); !strings.HasPrefix(q, "/") {
			return fmt.Errorf("%s: %q is not an absolute path", field, q)
		}
	}
	return nil
}

// over returns l with every zero field taken from base.
func (l Limits) over(base Limits) Limits {
	return Limits{
		MemoryLimit: cmp.Or(l.MemoryLimit, base.MemoryLimit),
		CPUTime:     cmp.Or(l.CPUTime, base.CPUTime),
		Pids:        cmp.Or(l.Pids, base.Pids),
		OpenFiles:   cmp.Or(l.OpenFiles, base.OpenFiles),
		TmpSize:     cmp.Or(l.TmpSize, base.TmpSize),
		WorkSize:    cmp.Or(l.WorkSize, base.WorkSize),
		MaxStdout:   cmp.Or(l.MaxStdout, base.MaxStdout),
		MaxStderr:   cmp.Or(l.MaxStderr, base.MaxStderr),
		KillGrace:   cmp.Or(l.KillGrace, base.KillGrace),
	}
}

// executor returns l as the executor's limits.
func (l Limits) executor() executor.Limits {
	return executor.Limits{
		CPUTime: l.CPUTime, Memory: int64(l.MemoryLimit), Pids: l.Pids, OpenFiles: l.OpenFiles,
		TmpSize: int64(l.TmpSize), WorkSize: int64(l.WorkSize), MaxStdout: int64(l.MaxStdout), MaxStderr: int64(l.MaxStderr),
	}
}

// ByteSize is a size in bytes. In the configuration file and in flags it is
// a whole number with an optional unit: 1048576, 512K, 64MiB, 1G (K, M, G are
// powers of 1024, as memory limits usually are).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so "MiB" is not read as "B".
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30},
	{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

// ParseByteSize parses a size such as "512MiB"; see ByteSize.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (examples: 1048576, 512K, 64MiB, 1G)", s)
	}
	return ByteSize(n * mult), nil
}

// UnmarshalYAML reads a ByteSize from a number or a string with a unit.
func (b *ByteSize) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a size must be a number or a string like 64MiB", node.Line)
	}
	v, err := ParseByteSize(node.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", node.Line, err)
	}
	*b = v
	return nil
}

// String formats b the way ParseByteSize reads it back.
func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// Set parses a flag value; it makes *ByteSize a flag.Value.
func (b *ByteSize) Set(s string) error {
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}
