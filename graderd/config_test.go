package graderd

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// exampleConfig is what testdata/graderd.yaml (the example of --help) holds.
func exampleConfig() Config {
	cfg := DefaultConfig()
	cfg.Broker = "broker.example.org:7443"
	cfg.ServerName = "broker.example.org"
	cfg.CAFile = "/etc/graderd/ca.pem"
	cfg.CertFile = "/etc/graderd/server.pem"
	cfg.KeyFile = "/etc/graderd/server.key"
	cfg.Hostname = "grader1"
	cfg.WorkRoot = "/var/lib/graderd/work"
	cfg.DockerHost = "unix:///var/run/docker.sock"
	cfg.Sandbox = SandboxSettings{Runtime: "crun", StateDir: "/run/graderd", UIDBase: 2000000000,
		ReadOnlyPaths: []string{"/srv/tasks"}, RestrictRoots: []string{"/srv/tasks"}}
	cfg.Limits = Limits{MemoryLimit: 512 << 20, CPUTime: time.Minute, Pids: 256, OpenFiles: 1024, TmpSize: 64 << 20, WorkSize: 256 << 20,
		MaxStdout: 4 << 20, MaxStderr: 1 << 20, KillGrace: 2 * time.Second}
	cfg.DefaultExecutor = ExecutorSpec{Type: ExecutorExec, Command: []string{"/usr/local/bin/grade", "--strict"}, Env: []string{"LANG=C.UTF-8"}}
	cfg.Executors = map[string]ExecutorSpec{
		"python3": {Type: ExecutorExec, Command: []string{"/opt/graders/python3-grader"}, Limits: Limits{MemoryLimit: 1 << 30},
			ReadOnlyPaths: []string{"/opt/python3.12", "-/etc/python3.12"}, Env: []string{"PATH=/opt/python3.12/bin:/usr/bin:/bin"}},
		"web":    {Type: ExecutorExec, Command: []string{"/opt/graders/web-grader"}, Network: NetworkHost},
		"legacy": {Type: ExecutorExec, Command: []string{"/opt/graders/old-grader"}, Sandbox: SandboxNone},
		"bench":  {Type: ExecutorNoop},
		"containers": {Type: ExecutorDocker, Command: []string{"/usr/local/bin/grade"}, Limits: Limits{MemoryLimit: 512 << 20},
			Containers: Containers{Image: "graders/python:3.12", CPUs: 1, Mounts: []string{"/srv/tasks:/tasks"}}},
		"dbs": {Type: ExecutorScenarios, Limits: Limits{MemoryLimit: 512 << 20}, Containers: Containers{
			Images: []string{"registry.example.org/dbs/*"}, ImageSource: "registry",
			Registry:    RegistrySettings{Address: "registry.example.org", Username: "grader", PasswordFile: "/etc/graderd/registry.pw"},
			RemoveImage: true, ScenarioDir: "/srv/scenarios", Ready: ReadySettings{Path: "/health", Timeout: time.Minute},
			Services: []ServiceSettings{{Name: "db", Image: "postgres:16", Port: 5432, User: "999:999",
				Env:   []string{"POSTGRES_USER={{.User}}", "POSTGRES_PASSWORD={{.Password}}", "POSTGRES_DB={{.Database}}"},
				Tmpfs: map[string]string{"/var/lib/postgresql/data": "size=256m,uid=999,gid=999,mode=0700", "/var/run/postgresql": "size=1m,uid=999,gid=999"}}},
		}},
		"course-6.00x": {Type: ExecutorKubernetes, Command: []string{"/usr/local/bin/grade"},
			Limits: Limits{MemoryLimit: 1 << 30}, Containers: Containers{Image: "registry.example.org/graders/python:3.12", CPUs: 1},
			PodSettings: PodSettings{EphemeralStorage: 256 << 20,
				NodeSelector: map[string]string{"pool": "grading"}, ScheduleTimeout: time.Minute, StartTimeout: 5 * time.Minute}},
	}
	cfg.Kubernetes = KubernetesSettings{Namespace: "gradebroker-grading", EntrypointImage: "registry.example.org/gradebroker/graderd:1.0"}
	return cfg
}

func TestLoadConfigFileExample(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	if err := LoadConfigFile("testdata/graderd.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(exampleConfig(), cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestUsageExampleIsTestdata keeps the example in --help loadable: it must
// be testdata/graderd.yaml, indented.
func TestUsageExampleIsTestdata(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if _, err := ParseCommandLine([]string{"--help"}, noEnv, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	usage := out.String()
	_, after, ok := strings.Cut(usage, "unknown keys are an error):\n\n")
	if !ok {
		t.Fatal("usage has no configuration example")
	}
	example, _, _ := strings.Cut(after, "\n\n")
	var got strings.Builder
	for l := range strings.Lines(example) {
		got.WriteString(strings.TrimPrefix(l, "  "))
	}
	file, err := os.ReadFile("testdata/graderd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, want, _ := strings.Cut(string(file), "\n") // drop the file's own first comment
	if diff := cmp.Diff(strings.TrimSpace(want), strings.TrimSpace(got.String())); diff != "" {
		t.Errorf("usage example differs from testdata/graderd.yaml (-file +usage):\n%s", diff)
	}
}

func noEnv(string) string { return "" }

func validConfig() Config {
	cfg := DefaultConfig()
	cfg.Broker = "127.0.0.1:7443"
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = "ca.pem", "c.pem", "c.key"
	cfg.DefaultExecutor = ExecutorSpec{Type: ExecutorNoop}
	return cfg
}

func TestValidateNamesTheBadField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		field  string
		mutate func(*Config)
	}{
		{"broker:", func(c *Config) { c.Broker = "" }},
		{"broker:", func(c *Config) { c.Broker = "no-port" }},
		{"broker:", func(c *Config) { c.Broker = ":7443" }},
		{"broker:", func(c *Config) { c.Broker = "host:http" }},
		{"ca_file:", func(c *Config) { c.CAFile = "" }},
		{"cert_file:", func(c *Config) { c.CertFile = "" }},
		{"key_file:", func(c *Config) { c.KeyFile = "" }},
		{"slots:", func(c *Config) { c.Slots = 0 }},
		{"slots:", func(c *Config) { c.Slots = maxSlots + 1 }},
		{"spool_dir:", func(c *Config) { c.SpoolDir = "" }},
		{"limits.memory_limit:", func(c *Config) { c.Limits.MemoryLimit = -1 }},
		{"limits.kill_grace:", func(c *Config) { c.Limits.KillGrace = -time.Second }},
		{"default_executor.type:", func(c *Config) { c.DefaultExecutor.Type = "podman" }},
		{"default_executor.image:", func(c *Config) { c.DefaultExecutor = ExecutorSpec{Type: ExecutorDocker} }},
		{"default_executor.user:", func(c *Config) { c.DefaultExecutor = dockerSpec(func(s *Containers) { s.User = "0:0" }) }},
		{"default_executor.user:", func(c *Config) { c.DefaultExecutor = dockerSpec(func(s *Containers) { s.User = "nobody" }) }},
		{"default_executor.mounts:", func(c *Config) {
			c.DefaultExecutor = dockerSpec(func(s *Containers) { s.Mounts = []string{"srv:/srv"} })
		}},
		{"default_executor.image_source:", func(c *Config) { c.DefaultExecutor = dockerSpec(func(s *Containers) { s.ImageSource = "ftp" }) }},
		{"default_executor.registry.address:", func(c *Config) { c.DefaultExecutor = dockerSpec(func(s *Containers) { s.ImageSource = "registry" }) }},
		{"default_executor:", func(c *Config) { c.DefaultExecutor = dockerSpec(func(s *Containers) { s.ImageSource = "archive" }) }},
		{"default_executor.archive_urls:", func(c *Config) {
			c.DefaultExecutor = dockerSpec(func(s *Containers) { s.ImageSource, s.ArchiveURLs = "archive", []string{"https://"} })
		}},
		{"default_executor.archive_urls:", func(c *Config) {
			c.DefaultExecutor = dockerSpec(func(s *Containers) {
				s.ImageSource, s.ArchiveURLs = "archive", []string{"https://u:p@files.example.org/"}
			})
		}},
		{"default_executor:", func(c *Config) { c.DefaultExecutor = dockerSpec(func(s *Containers) { s.Port = 80 }) }},
		{"default_executor:", func(c *Config) { d := dockerSpec(nil); d.Network = "host"; c.DefaultExecutor = d }},
		{"default_executor.images:", func(c *Config) { c.DefaultExecutor = ExecutorSpec{Type: ExecutorScenarios} }},
		{"default_executor.image:", func(c *Config) {
			c.DefaultExecutor = scenariosSpec(func(s *Containers) { s.Image = "x" })
		}},
		{"default_executor.services[0].port:", func(c *Config) {
			c.DefaultExecutor = scenariosSpec(func(s *Containers) { s.Services = []ServiceSettings{{Name: "db", Image: "db"}} })
		}},
		{"default_executor.services[1].name:", func(c *Config) {
			c.DefaultExecutor = scenariosSpec(func(s *Containers) {
				s.Services = []ServiceSettings{{Name: "db", Image: "db", Port: 1}, {Name: "db", Image: "db", Port: 2}}
			})
		}},
		{"default_executor.services[0].env:", func(c *Config) {
			c.DefaultExecutor = scenariosSpec(func(s *Containers) {
				s.Services = []ServiceSettings{{Name: "db", Image: "db", Port: 1, Env: []string{"P={{.Nope}}"}}}
			})
		}},
		{"default_executor.student_env:", func(c *Config) {
			c.DefaultExecutor = scenariosSpec(func(s *Containers) { s.StudentEnv = []string{"X={{"} })
		}},
		{"default_executor.scenario_dir:", func(c *Config) {
			no := false
			c.DefaultExecutor = scenariosSpec(func(s *Containers) { s.InlineScenarios = &no })
		}},
		{"default_executor:", func(c *Config) {
			c.DefaultExecutor = ExecutorSpec{Type: ExecutorExec, Command: []string{"g"}, Containers: Containers{Image: "x"}}
		}},
		{"default_executor.command:", func(c *Config) { c.DefaultExecutor = ExecutorSpec{Type: ExecutorExec} }},
		{"default_executor.env:", func(c *Config) {
			c.DefaultExecutor = ExecutorSpec{Type: ExecutorExec, Command: []string{"g"}, Env: []string{"NOEQUALS"}}
		}},
		{"default_executor:", func(c *Config) { c.DefaultExecutor = ExecutorSpec{Type: ExecutorNoop, Command: []string{"x"}} }},
		{"executors.gpu.type:", func(c *Config) { c.Executors = map[string]ExecutorSpec{"gpu": {}} }},
		{"executors.gpu.max_stdout:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorNoop, Limits: Limits{MaxStdout: -1}}}
		}},
		{"executors:", func(c *Config) { c.Executors = map[string]ExecutorSpec{" ": {Type: ExecutorNoop}} }},
		{"limits.cpu_time:", func(c *Config) { c.Limits.CPUTime = -time.Second }},
		{"limits.pids:", func(c *Config) { c.Limits.Pids = -1 }},
		{"sandbox.read_only_paths:", func(c *Config) { c.Sandbox.ReadOnlyPaths = []string{"relative"} }},
		{"sandbox.restrict_roots:", func(c *Config) { c.Sandbox.RestrictRoots = []string{"-srv"} }},
		{"executors.gpu.sandbox:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}, Sandbox: "off"}}
		}},
		{"executors.gpu.network:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}, Network: "bridge"}}
		}},
		{"executors.gpu.read_only_paths:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}, ReadOnlyPaths: []string{"opt"}}}
		}},
		{"executors.gpu:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}, Sandbox: SandboxNone, Network: NetworkHost}}
		}},
		{"executors.k8s.image:", func(c *Config) {
			c.Kubernetes.EntrypointImage = "gbpod"
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Command: []string{"g"}}}
		}},
		{"executors.k8s.command:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i"}}}
		}},
		{"executors.k8s.pids:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i"}, Command: []string{"g"}, Limits: Limits{Pids: 10}}}
		}},
		{"executors.k8s.cpu_time:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i"}, Command: []string{"g"}, Limits: Limits{CPUTime: time.Second}}}
		}},
		{"executors.k8s:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i"}, Command: []string{"g"}, ReadOnlyPaths: []string{"/opt"}}}
		}},
		{"executors.gpu:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}, Containers: Containers{Image: "i"}}}
		}},
		{"executors.gpu:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}, Containers: Containers{CPUs: 1}}}
		}},
		{"executors.k8s.user:", func(c *Config) {
			c.Kubernetes.EntrypointImage = "gbpod"
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Command: []string{"g"}, Containers: Containers{Image: "i", User: "0:0"}}}
		}},
		{"kubernetes.entrypoint_image:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i"}, Command: []string{"g"}}}
		}},
		{"executors.gpu:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorDocker, Containers: Containers{Image: "i"}, PodSettings: PodSettings{NodeSelector: map[string]string{"pool": "grading"}}}}
		}},
		{"executors.k8s:", func(c *Config) {
			c.Kubernetes.EntrypointImage = "gbpod"
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i", Images: []string{"x/*"}}, Command: []string{"g"}}}
		}},
		{"executors.k8s:", func(c *Config) {
			c.Kubernetes.EntrypointImage = "gbpod"
			c.Executors = map[string]ExecutorSpec{"k8s": {Type: ExecutorKubernetes, Containers: Containers{Image: "i"}, Command: []string{"g"}, Taskgrader: &TaskgraderSettings{RootPath: "/srv/tasks"}}}
		}},
		{"executors.tg.taskgrader.root_path:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"tg": {Type: ExecutorExec, Command: []string{"g"}, Taskgrader: &TaskgraderSettings{}}}
		}},
		{"executors.tg.taskgrader.zip_root:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"tg": {Type: ExecutorExec, Command: []string{"g"},
				Taskgrader: &TaskgraderSettings{RootPath: "/srv/tasks", ZipRoot: "zips"}}}
		}},
		{"executors.tg:", func(c *Config) {
			c.Executors = map[string]ExecutorSpec{"tg": {Type: ExecutorNoop, Taskgrader: &TaskgraderSettings{RootPath: "/srv/tasks"}}}
		}},
		{"drain_timeout:", func(c *Config) { c.DrainTimeout = -1 }},
		{"reconnect_min:", func(c *Config) { c.ReconnectMin = 0 }},
		{"reconnect_max:", func(c *Config) { c.ReconnectMax = time.Millisecond }},
		{"testbehavior:", func(c *Config) { c.TestBehavior = 7 }},
	} {
		cfg := validConfig()
		tc.mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("%s: Validate = %v, want an error starting with %q", tc.field, err, tc.field)
		}
	}
	if err := validConfig().Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func dockerSpec(mutate func(*Containers)) ExecutorSpec {
	s := ExecutorSpec{Type: ExecutorDocker, Containers: Containers{Image: "grader:1"}}
	if mutate != nil {
		mutate(&s.Containers)
	}
	return s
}

func scenariosSpec(mutate func(*Containers)) ExecutorSpec {
	s := ExecutorSpec{Type: ExecutorScenarios, Containers: Containers{Images: []string{"students/*"}}}
	if mutate != nil {
		mutate(&s.Containers)
	}
	return s
}

func TestLoadConfigFileErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "brokr: x:1\n", "field brokr not found"},
		{"bad duration", "drain_timeout: soon\n", "line 1: cannot unmarshal !!str `soon` into time.Duration"},
		{"bad size", "limits:\n  memory_limit: lots\n", `"lots" is not a size`},
		{"syntax", "slots: [\n", "yaml"},
	} {
		path := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		err := LoadConfigFile(path, &cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: LoadConfigFile = %v, want an error naming the file and containing %q", tc.name, err, tc.want)
		}
	}
	cfg := DefaultConfig()
	if err := LoadConfigFile(filepath.Join(t.TempDir(), "missing.yaml"), &cfg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func TestParseCommandLinePriority(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "graderd.yaml")
	file := "broker: file:1\nslots: 2\nspool_dir: /file/spool\nwork_root: /file/work\nca_file: /file/ca.pem\n" +
		"executors:\n  gpu: {type: exec, command: [g]}\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"GRADERD_CONFIG":    path,
		"GRADERD_SLOTS":     "3",
		"GRADERD_WORK_ROOT": "/env/work",
		"GRADERD_T":         "true", // ignored: the environment does not change what graderd does
	}
	cl, err := ParseCommandLine([]string{"--slots", "5", "-broker=flag:2", "--memory-limit", "64MiB", "--log-format", "json", "--log-level", "debug"},
		func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Broker = "flag:2"             // flag over file
	want.Slots = 5                     // flag over env over file
	want.WorkRoot = "/env/work"        // env over file
	want.SpoolDir = "/file/spool"      // file over default
	want.CAFile = "/file/ca.pem"       // file
	want.Limits.MemoryLimit = 64 << 20 // flag
	want.Executors = map[string]ExecutorSpec{"gpu": {Type: ExecutorExec, Command: []string{"g"}}}
	want.ConfigFile = path
	if diff := cmp.Diff(want, cl.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if cl.Test || cl.ConfigFile != path || cl.LogFormat != "json" || cl.LogLevel.String() != "DEBUG" {
		t.Errorf("command line = %+v", cl)
	}

	cl, err = ParseCommandLine([]string{"--config", path, "--noop", "-t"}, noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ExecutorSpec{Type: ExecutorNoop}, cl.Config.DefaultExecutor); diff != "" || cl.Config.Executors != nil || !cl.Test {
		t.Errorf("--noop -t: default executor (-want +got):\n%s; executors %v; test %v", diff, cl.Config.Executors, cl.Test)
	}
}

func TestParseCommandLineErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--no-such-flag"}, nil, "no-such-flag"},
		{[]string{"--slots", "many"}, nil, "slots"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
		{[]string{"--log-format", "xml"}, nil, "--log-format"},
		{[]string{"--memory-limit", "1TB"}, nil, "memory-limit"},
		{nil, map[string]string{"GRADERD_SLOTS": "x"}, "GRADERD_SLOTS"},
		{[]string{"--config", "/nonexistent/graderd.yaml"}, nil, "/nonexistent/graderd.yaml"},
	} {
		_, err := ParseCommandLine(tc.args, func(k string) string { return tc.env[k] }, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: err = %v, want one containing %q", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]ByteSize{
		"0": 0, "1048576": 1 << 20, "512K": 512 << 10, "512k": 512 << 10, "64MiB": 64 << 20, "64 MB": 64 << 20,
		"1G": 1 << 30, "2GiB": 2 << 30, "100B": 100,
	} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back, err := ParseByteSize(got.String()); err != nil || back != got {
			t.Errorf("ParseByteSize(%q.String() = %q) = %d, %v", in, got.String(), back, err)
		}
	}
	for _, in := range []string{"", "-1", "1.5G", "lots", "1T", "99999999999G"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", in)
		}
	}
}

// TestExampleConfigsLoad keeps the demos' configurations valid.
func TestExampleConfigsLoad(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"../examples/demo/graderd.yaml", "../examples/scenarios/graderd.yaml"} {
		cfg := DefaultConfig()
		if err := LoadConfigFile(f, &cfg); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
