package docker_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
	"github.com/gradebroker/gradebroker/graderd/executor/docker/dockertest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

const probePkg = "./graderd/executor/docker/dockertest/probe"

// probeExecutor is a docker executor running the probe grader, as a
// server of its own (so that the test's containers are told apart by
// their labels).
func probeExecutor(t *testing.T, mutate func(*docker.Executor)) *docker.Executor {
	t.Helper()
	eng := dockertest.Engine(t)
	e := &docker.Executor{
		Engine:    eng,
		Server:    dockertest.Name("test-"),
		Name:      "probe",
		Image:     dockertest.GoImage(t, eng, "probe", probePkg, ""),
		KillGrace: 200 * time.Millisecond,
		WorkRoot:  t.TempDir(),
	}
	if mutate != nil {
		mutate(e)
	}
	t.Cleanup(func() { assertNoContainers(t, eng, e.Server) })
	return e
}

// containersOf lists the containers, running or not, labelled with server.
func containersOf(t *testing.T, eng *docker.Engine, server string) []string {
	t.Helper()
	list, err := eng.Client().ContainerList(context.Background(), client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", executor.LabelServer+"="+server),
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range list.Items {
		ids = append(ids, c.ID[:12]+" "+string(c.State))
	}
	return ids
}

func assertNoContainers(t *testing.T, eng *docker.Engine, server string) {
	t.Helper()
	if left := containersOf(t, eng, server); len(left) > 0 {
		t.Errorf("containers left after the run: %v", left)
	}
}

// run runs one job with the given jobdata.
func run(t *testing.T, e *docker.Executor, jobdata string, timeout time.Duration) executor.Result {
	t.Helper()
	return e.Run(context.Background(), executor.Job{JobID: 7, LeaseID: 70, Attempt: 1, Name: "probe", JobData: []byte(jobdata), Timeout: timeout})
}

func decode(t *testing.T, res executor.Result, v any) {
	t.Helper()
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v, error %q, log:\n%s", res.Outcome, res.Error, res.Log)
	}
	if err := json.Unmarshal(res.Result, v); err != nil {
		t.Fatalf("result %q: %v", res.Result, err)
	}
}

func TestJobDocumentOnStdinAndInAFile(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, func(e *docker.Executor) { e.JobFile = "/job-input/job.json" })
	jobdata := `{"probe": "echo",  "file": "/job-input/job.json", "x": "<&>"}`
	res := run(t, e, jobdata, time.Minute)
	var got struct{ Doc, File string }
	decode(t, res, &got)
	want, err := executor.JobDocument(executor.Job{JobID: 7, LeaseID: 70, Attempt: 1, Name: "probe", JobData: []byte(jobdata), Timeout: time.Minute}, limitsOf(e))
	if err != nil {
		t.Fatal(err)
	}
	if got.Doc != string(want) {
		t.Errorf("stdin:\n%s\nwant:\n%s", got.Doc, want)
	}
	if got.File != string(want) {
		t.Errorf("job file:\n%s\nwant:\n%s", got.File, want)
	}
	if !strings.Contains(got.Doc, jobdata) {
		t.Errorf("jobdata was not passed byte for byte: %s", got.Doc)
	}
}

// limitsOf is the limits the executor gives a run, as the document shows
// them.
func limitsOf(e *docker.Executor) executor.Limits {
	l := e.Limits.WithDefaults()
	if l.Memory == 0 {
		l.Memory = executor.DefaultMemory
	}
	return l
}

func TestExitStatusConvention(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	for _, tc := range []struct {
		code    int
		stdout  string
		outcome gradebrokerv1.Outcome
		errPart string
	}{
		{0, `{"score": 1}`, gradebrokerv1.Outcome_OUTCOME_OK, ""},
		{0, `not json`, gradebrokerv1.Outcome_OUTCOME_FATAL, "not JSON"},
		{1, `{"why": "bad"}`, gradebrokerv1.Outcome_OUTCOME_FATAL, "exit status 1"},
		{2, ``, gradebrokerv1.Outcome_OUTCOME_TEMPORARY, "asked for a retry"},
		{5, ``, gradebrokerv1.Outcome_OUTCOME_TEMPORARY, "status 5"},
	} {
		jd, _ := json.Marshal(map[string]any{"probe": "exit", "code": tc.code, "stdout": tc.stdout})
		res := run(t, e, string(jd), time.Minute)
		if res.Outcome != tc.outcome || !strings.Contains(res.Error, tc.errPart) {
			t.Errorf("exit %d with %q: outcome %v error %q, want %v with %q", tc.code, tc.stdout, res.Outcome, res.Error, tc.outcome, tc.errPart)
		}
		if !strings.Contains(res.Log, "exiting with") {
			t.Errorf("exit %d: log %q lacks the grader's stderr", tc.code, res.Log)
		}
		if tc.code == 1 && string(res.Result) != tc.stdout {
			t.Errorf("exit 1: result %q, want the grader's %q kept", res.Result, tc.stdout)
		}
	}
}

// TestEscape* are the isolation tests of the exec executor's sandbox,
// repeated in the docker executor: each probes one way out.

func TestEscapeKeyInvisible(t *testing.T) {
	t.Parallel()
	// graderd's key sits beside a directory the executor shows: the run
	// sees the directory and not the key.
	dir := t.TempDir()
	shown := filepath.Join(dir, "tasks")
	key := filepath.Join(dir, "graderd.key")
	if err := os.Mkdir(shown, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := probeExecutor(t, func(e *docker.Executor) { e.Mounts = []docker.Mount{{Source: shown, Target: "/tasks"}} })
	jd, _ := json.Marshal(map[string]any{"probe": "look", "paths": []string{key, "/tasks", "/tasks/../graderd.key", "/var/run/docker.sock", "/run/docker.sock", "/etc/graderd"}})
	var got struct {
		Visible []string
		Env     []string
	}
	decode(t, run(t, e, string(jd), time.Minute), &got)
	if strings.Join(got.Visible, " ") != "/tasks" {
		t.Errorf("the run sees %v; want /tasks only", got.Visible)
	}
	for _, v := range got.Env {
		if strings.Contains(v, "GB_") || strings.HasPrefix(v, "DOCKER_") {
			t.Errorf("the run's environment holds graderd's %s", v)
		}
	}
}

func TestEscapeNoNetwork(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	port := lis.Addr().(*net.TCPAddr).Port
	dial := []string{net.JoinHostPort("127.0.0.1", itoa(port))}
	if ip := hostIP(t); ip != "" {
		dial = append(dial, net.JoinHostPort(ip, itoa(port)))
	}
	e := probeExecutor(t, nil)
	jd, _ := json.Marshal(map[string]any{"probe": "look", "dial": dial})
	var got struct {
		Dial       map[string]string
		Interfaces []string
	}
	decode(t, run(t, e, string(jd), time.Minute), &got)
	for addr, r := range got.Dial {
		if r == "connected" {
			t.Errorf("the run connected to the host's listener at %s", addr)
		}
	}
	if strings.Join(got.Interfaces, " ") != "lo" {
		t.Errorf("the run has network interfaces %v; want its own loopback only", got.Interfaces)
	}
}

// hostIP is one of the host's non-loopback addresses, if it has one.
func hostIP(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return ""
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestEscapeNoCapabilityAndReadOnlyRoot(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	jd, _ := json.Marshal(map[string]any{"probe": "look", "write": []string{"/escape", "/app", "/var/tmp/escape", "/tmp/ok", "/job/ok"}})
	var got struct {
		UID, GID   int
		CapEff     string
		CapBnd     string
		NoNewPrivs string
		Seccomp    string
		Written    []string
		Chown      string
		Cwd        string
	}
	decode(t, run(t, e, string(jd), time.Minute), &got)
	if got.UID == 0 || got.GID == 0 {
		t.Errorf("the run is uid %d gid %d; want not root", got.UID, got.GID)
	}
	if got.CapEff != "0000000000000000" || got.CapBnd != "0000000000000000" {
		t.Errorf("the run has capabilities: effective %s, bounding %s", got.CapEff, got.CapBnd)
	}
	if got.NoNewPrivs != "1" || got.Seccomp != "2" {
		t.Errorf("NoNewPrivs %q Seccomp %q; want 1 and 2 (a filter)", got.NoNewPrivs, got.Seccomp)
	}
	if strings.Join(got.Written, " ") != "/tmp/ok /job/ok" {
		t.Errorf("the run wrote %v; want /tmp and its work directory only", got.Written)
	}
	if got.Chown == "ok" {
		t.Error("the run could chown /tmp to root")
	}
	if got.Cwd != "/job" {
		t.Errorf("the run's working directory is %q, want /job", got.Cwd)
	}
}

func TestEscapeImageVolumesAreBounded(t *testing.T) {
	t.Parallel()
	// An image that declares a VOLUME would get an anonymous volume on the
	// engine's disk there: writable despite the read-only root, and bound
	// by no tmpfs size. A job's own image (or a student's service image)
	// is the student's to write.
	eng := dockertest.Engine(t)
	img := dockertest.GoImage(t, eng, "probe", probePkg, "", "VOLUME /var/tmp")
	e := probeExecutor(t, func(e *docker.Executor) {
		e.Image = img
		e.Limits.TmpSize = 8 << 20
	})
	jd, _ := json.Marshal(map[string]any{"probe": "look", "paths": []string{"/var/tmp"}})
	var got struct {
		FS map[string]struct {
			Type string
			Size int64
		}
	}
	decode(t, run(t, e, string(jd), time.Minute), &got)
	if fs, ok := got.FS["/var/tmp"]; !ok || fs.Type != "1021994" || fs.Size > 8<<20 {
		t.Errorf("the image's volume /var/tmp is on %+v (ok %v); want a tmpfs (1021994) of at most the 8 MiB of tmp_size", fs, ok)
	}
}

func TestEscapePidsLimitAsAWhole(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, func(e *docker.Executor) { e.Limits.Pids = 64 })
	res := run(t, e, `{"probe": "fork"}`, time.Minute)
	if res.Limit != executor.LimitPids || !strings.Contains(res.Error, "process limit") {
		t.Errorf("outcome %v limit %v error %q; want the process limit named\nlog: %s", res.Outcome, res.Limit, res.Error, res.Log)
	}
}

func TestEscapeMemoryAsAWhole(t *testing.T) {
	t.Parallel()
	// Three processes of 100 MiB each under 256 MiB: each alone fits.
	e := probeExecutor(t, func(e *docker.Executor) { e.Limits.Memory = 256 << 20 })
	res := run(t, e, `{"probe": "grab", "n": 3, "mib": 100}`, time.Minute)
	if res.Limit != executor.LimitMemory || !strings.Contains(res.Error, "memory limit") {
		t.Errorf("outcome %v limit %v error %q; want the memory limit named\nlog: %s", res.Outcome, res.Limit, res.Error, res.Log)
	}
	if peak := res.Usage.PeakMemory; peak < 200<<20 || peak > 257<<20 {
		t.Errorf("peak memory %d, want about the 256 MiB limit", peak)
	}
}

func TestCPUTimeLimit(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, func(e *docker.Executor) { e.Limits.CPUTime = 500 * time.Millisecond })
	res := run(t, e, `{"probe": "spin"}`, time.Minute)
	if res.Limit != executor.LimitCPUTime || !strings.Contains(res.Error, "CPU time limit") {
		t.Errorf("outcome %v limit %v error %q; want the CPU time limit named", res.Outcome, res.Limit, res.Error)
	}
	if cpu := res.Usage.CPUTime; cpu < 500*time.Millisecond || cpu > 2*time.Second {
		t.Errorf("CPU time %v, want a little over the 500ms limit", cpu)
	}
}

func TestDiskLimit(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, func(e *docker.Executor) { e.Limits.TmpSize = 8 << 20 })
	res := run(t, e, `{"probe": "fill"}`, time.Minute)
	if res.Limit != executor.LimitDisk || !strings.Contains(res.Error, "disk limit: the run filled its /tmp") {
		t.Errorf("outcome %v limit %v error %q; want the disk limit of /tmp named\nlog: %s", res.Outcome, res.Limit, res.Error, res.Log)
	}
}

func TestTimeoutKillsTheContainer(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	res := run(t, e, `{"probe": "hang"}`, time.Second)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TIMEOUT || res.Limit != executor.LimitWallTime {
		t.Errorf("outcome %v limit %v error %q; want TIMEOUT for the wall time", res.Outcome, res.Limit, res.Error)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan executor.Result)
	go func() {
		done <- e.Run(ctx, executor.Job{JobID: 1, LeaseID: 1, JobData: []byte(`{"probe": "hang"}`), Timeout: time.Minute})
	}()
	eng := e.Engine
	testutil.Eventually(t, "the grader's container to run", func() bool {
		c := containersOf(t, eng, e.Server)
		return len(c) > 0 && strings.HasSuffix(c[0], " running")
	})
	cancel()
	res := <-done
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || res.Error != executor.ErrorCancelled {
		t.Errorf("outcome %v error %q; want TEMPORARY cancelled", res.Outcome, res.Error)
	}
}

func TestOutputLimit(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, func(e *docker.Executor) { e.Limits.MaxStdout = 1000 })
	res := run(t, e, `{"probe": "out", "n": 5000}`, time.Minute)
	if res.Limit != executor.LimitOutput {
		t.Errorf("outcome %v limit %v error %q; want the output limit", res.Outcome, res.Limit, res.Error)
	}
}

func TestPerJobImageOnlyByPattern(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	other := e.Image
	e.Image = "gradebroker-test/not-this:1"
	jd, _ := json.Marshal(map[string]any{"probe": "exit", "code": 0, "stdout": "{}", "image": other})
	res := run(t, e, string(jd), time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "runs its own image") {
		t.Errorf("a job naming an image the executor does not allow: outcome %v error %q; want FATAL saying so", res.Outcome, res.Error)
	}
	e.Images.Allowed = []string{"gradebroker-test/probe:*"}
	if res := run(t, e, string(jd), time.Minute); res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Errorf("a job naming an allowed image: outcome %v error %q", res.Outcome, res.Error)
	}
}
