package docker_test

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
	"github.com/gradebroker/gradebroker/graderd/executor/docker/dockertest"
	"github.com/gradebroker/gradebroker/graderd/executor/scenarios"
)

// The scenarios example's images: the runner, the kvdb database and the
// to-do service in its two variants, built from this module.
type exampleImages struct {
	runner, kvdb, correct, buggy string
}

func buildExample(t *testing.T, eng *docker.Engine) exampleImages {
	t.Helper()
	runner, err := docker.EnsureRunnerImage(context.Background(), eng, dockertest.Binary(t, "./graderd/cmd/gb-scenario-runner", ""))
	if err != nil {
		t.Fatal(err)
	}
	return exampleImages{
		runner:  runner,
		kvdb:    dockertest.GoImage(t, eng, "kvdb", "./examples/kvdb", ""),
		correct: dockertest.GoImage(t, eng, "todoservice", "./examples/todoservice", ""),
		buggy:   dockertest.GoImage(t, eng, "todoservice", "./examples/todoservice", "-X main.variant=buggy"),
	}
}

// setsDir is the example's scenario sets.
func setsDir(t *testing.T) string {
	dir, err := filepath.Abs("../../../examples/scenarios")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// scenariosExecutor grades the example's to-do service with a kvdb
// service, as examples/scenarios/graderd.yaml configures graderd.
func scenariosExecutor(t *testing.T, mutate func(*docker.Scenarios)) (*docker.Scenarios, exampleImages) {
	t.Helper()
	eng := dockertest.Engine(t)
	img := buildExample(t, eng)
	s := &docker.Scenarios{
		Engine:      eng,
		Server:      dockertest.Name("test-"),
		Name:        "todo",
		Images:      docker.Images{Allowed: []string{"gradebroker-test/todoservice:*"}},
		RunnerImage: img.runner,
		Ready:       scenarios.Probe{Path: "/health"},
		SetsDir:     setsDir(t),
		Services: []docker.Service{{
			Name: "db", Image: img.kvdb, Port: 5984, User: "65534:65534",
			Env:   []string{"KVDB_USER={{.User}}", "KVDB_PASSWORD={{.Password}}", "KVDB_DATABASE={{.Database}}"},
			Tmpfs: map[string]string{"/data": "size=16m,uid=65534,gid=65534,mode=0700"},
		}},
	}
	if mutate != nil {
		mutate(s)
	}
	t.Cleanup(func() { assertNoContainers(t, eng, s.Server) })
	return s, img
}

func grade(t *testing.T, s *docker.Scenarios, jobdata any, timeout time.Duration) (executor.Result, scenarios.Result) {
	t.Helper()
	jd, err := json.Marshal(jobdata)
	if err != nil {
		t.Fatal(err)
	}
	res := s.Run(context.Background(), executor.Job{JobID: 3, LeaseID: 30, Attempt: 1, JobData: jd, Timeout: timeout})
	var doc scenarios.Result
	if res.Result != nil {
		if err := json.Unmarshal(res.Result, &doc); err != nil {
			t.Fatalf("result %s: %v", res.Result, err)
		}
	}
	return res, doc
}

// statuses lists each record's name and status.
func statuses(doc scenarios.Result) []string {
	var out []string
	for _, r := range doc.Scenarios {
		out = append(out, r.Name+": "+r.Status)
	}
	return out
}

func TestScenariosCorrectVariant(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, nil)
	res, doc := grade(t, s, map[string]any{"image": img.correct, "scenarios": "todo"}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v error %q\nlog:\n%s", res.Outcome, res.Error, res.Log)
	}
	if doc.Totals.Success != 9 || doc.Totals.Total != 9 || doc.Score != 1 || !doc.Ready {
		t.Errorf("totals %+v score %v ready %v; want all 9 scenarios successful\n%s", doc.Totals, doc.Score, doc.Ready, strings.Join(statuses(doc), "\n"))
	}
	if !strings.Contains(res.Log, "todoservice (correct) on port 8000") {
		t.Errorf("the job's log is not the student's container's output:\n%s", res.Log)
	}
	del := doc.Scenarios[7]
	if del.Got.Status != 204 || del.Got.Body != "" || del.Status != scenarios.StatusSuccess {
		t.Errorf("the empty answer of DELETE: %+v", del)
	}
}

func TestScenariosBuggyVariant(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, nil)
	res, doc := grade(t, s, map[string]any{"image": img.buggy, "scenarios": "todo"}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v error %q\nlog:\n%s", res.Outcome, res.Error, res.Log)
	}
	want := []string{
		"the service is healthy: success",
		"a title is required: success",
		"create the first item: success",
		"create the second item: success",
		"mark the first item done: mismatch",
		"list every item, in any order: mismatch",
		"count the items: mismatch",
		"delete the second item: fail",
		"a deleted item is gone: success",
	}
	if diff := cmp.Diff(want, statuses(doc)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	diffs := map[string]string{
		"mark the first item done":      "$.done: expected true, got false",
		"list every item, in any order": `$[*]: missing (expected an element {"done":true,"title":"buy milk"})`,
		"count the items":               "$.done: expected 1, got 2",
		"delete the second item":        "status: expected 204, got 200",
	}
	for _, r := range doc.Scenarios {
		if want, ok := diffs[r.Name]; ok && !strings.Contains(r.Diff, want) {
			t.Errorf("%s: diff %q, want it to say %q", r.Name, r.Diff, want)
		}
	}
	if doc.Totals != (scenarios.Totals{Total: 9, Success: 5, Mismatch: 3, Fail: 1}) || doc.Score != 0.5556 {
		t.Errorf("totals %+v score %v", doc.Totals, doc.Score)
	}
}

func TestScenariosPublicOnly(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, nil)
	res, doc := grade(t, s, map[string]any{"image": img.buggy, "scenarios": "todo", "public_only": true}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v error %q", res.Outcome, res.Error)
	}
	if len(doc.Scenarios) != 3 || !doc.PublicOnly {
		t.Errorf("records %v; want the 3 public scenarios only", statuses(doc))
	}
	set, err := scenarios.Load(setsDir(t), "todo")
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range set.Scenarios {
		if sc.Public {
			continue
		}
		for _, detail := range []string{sc.Name, sc.Path, string(sc.Expect.JSON)} {
			if detail != "" && detail != "/v1/todos" && strings.Contains(string(res.Result)+res.Error+res.Log, detail) {
				t.Errorf("the public-only result holds %q of private scenario %q:\n%s", detail, sc.Name, res.Result)
			}
		}
	}
}

func TestScenariosInlineSet(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, nil)
	set := []map[string]any{
		{"name": "health by regex", "public": true, "path": "/health", "expect": map[string]any{"regex": "^ok"}},
		{"name": "unknown item", "path": "/v1/todos/42", "timeout": "3s", "expect": map[string]any{"status": 404}},
	}
	res, doc := grade(t, s, map[string]any{"image": img.correct, "scenarios": set}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || doc.Totals.Success != 2 {
		t.Errorf("outcome %v error %q records %v", res.Outcome, res.Error, statuses(doc))
	}
	s.NoInlineSets = true
	res, _ = grade(t, s, map[string]any{"image": img.correct, "scenarios": set}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "by name only") {
		t.Errorf("an inline set where the executor refuses them: outcome %v error %q", res.Outcome, res.Error)
	}
}

// TestScenariosNeverReady: a service that never answers its readiness
// probe as required ends the job FATAL within the readiness bound, saying
// so, and every scenario is recorded as not run.
func TestScenariosNeverReady(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, func(s *docker.Scenarios) {
		s.Ready.Status = 299 // the service answers 200
		s.ReadyTimeout = 2 * time.Second
	})
	start := time.Now()
	res, doc := grade(t, s, map[string]any{"image": img.correct, "scenarios": "todo"}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "did not answer GET /health on port 8000 within 2s") ||
		!strings.Contains(res.Error, "answered 200, not 299") {
		t.Errorf("outcome %v error %q; want FATAL saying the service was not ready in time", res.Outcome, res.Error)
	}
	if doc.Ready || doc.Totals.Error != 9 || doc.Score != 0 {
		t.Errorf("ready %v totals %+v score %v", doc.Ready, doc.Totals, doc.Score)
	}
	if took := time.Since(start); took > time.Minute {
		t.Errorf("the run took %v, far past its 2 s readiness bound", took)
	}
}

// TestScenariosServiceExits: a service that exits at once (here the
// to-do service without its database variables) is reported as such,
// without waiting for the readiness bound.
func TestScenariosServiceExits(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, func(s *docker.Scenarios) {
		s.StudentEnv = []string{"DATABASE_HOST={{.Host}}"}
		s.ReadyTimeout = 10 * time.Minute
	})
	res, _ := grade(t, s, map[string]any{"image": img.correct, "scenarios": "todo"}, 5*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "exited with status 1 before it answered") {
		t.Errorf("outcome %v error %q", res.Outcome, res.Error)
	}
	if !strings.Contains(res.Log, "DATABASE_PORT is not set") {
		t.Errorf("the log does not show why the service stopped:\n%s", res.Log)
	}
}

func TestScenariosRefusesImagesNotAllowed(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, nil)
	res, _ := grade(t, s, map[string]any{"image": img.kvdb, "scenarios": "todo"}, time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "is not an image this executor may run") {
		t.Errorf("outcome %v error %q", res.Outcome, res.Error)
	}
}

func TestScenariosTimeoutTearsDown(t *testing.T) {
	t.Parallel()
	s, img := scenariosExecutor(t, func(s *docker.Scenarios) { s.Ready.Status = 299 })
	res, _ := grade(t, s, map[string]any{"image": img.correct, "scenarios": "todo"}, 3*time.Second)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TIMEOUT || res.Limit != executor.LimitWallTime {
		t.Errorf("outcome %v limit %v error %q; want TIMEOUT", res.Outcome, res.Limit, res.Error)
	}
}

func TestRunnerImageNeedsAStaticBinary(t *testing.T) {
	t.Parallel()
	eng := dockertest.Engine(t)
	script := filepath.Join(t.TempDir(), "runner.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for bin, want := range map[string]string{
		"/bin/true": "linked dynamically", // Debian's coreutils use the C library
		script:      "not a Linux program",
	} {
		if _, err := docker.EnsureRunnerImage(context.Background(), eng, bin); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a runner image from %s: %v; want %q", bin, err, want)
		}
	}
}

// TestScenariosStudentIsHardened looks at the student's container from
// inside (the probe as a service): it reaches its database and nothing
// else, has no capability, writes only /tmp, and is not root.
func TestScenariosStudentIsHardened(t *testing.T) {
	t.Parallel()
	eng := dockertest.Engine(t)
	student := dockertest.GoImage(t, eng, "probe-serve", probePkg, "", `ENTRYPOINT ["/app", "serve"]`)
	lis, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	port := itoa(lis.Addr().(*net.TCPAddr).Port)
	dial := []string{"127.0.0.1:5984", "127.0.0.1:" + port}
	if ip := hostIP(t); ip != "" {
		dial = append(dial, ip+":"+port)
	}
	q := url.Values{"dial": dial, "write": {"/escape", "/var/tmp/escape", "/tmp/ok"}, "path": {"/var/run/docker.sock", "/run/docker.sock"}}
	s, _ := scenariosExecutor(t, func(s *docker.Scenarios) {
		s.Images.Allowed = []string{"gradebroker-test/probe-serve:*"}
		s.Ready.Path = "/look"
	})
	set := []map[string]any{{"name": "look", "path": "/look?" + q.Encode(), "expect": map[string]any{"status": 200}}}
	res, doc := grade(t, s, map[string]any{"image": student, "scenarios": set}, 2*time.Minute)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || len(doc.Scenarios) != 1 {
		t.Fatalf("outcome %v error %q records %v", res.Outcome, res.Error, statuses(doc))
	}
	var got struct {
		UID, GID   int
		CapEff     string
		CapBnd     string
		NoNewPrivs string
		Seccomp    string
		Written    []string
		Visible    []string
		Dial       map[string]string
		Interfaces []string
	}
	if err := json.Unmarshal([]byte(doc.Scenarios[0].Got.Body), &got); err != nil {
		t.Fatalf("the probe's answer %q: %v", doc.Scenarios[0].Got.Body, err)
	}
	if got.Dial["127.0.0.1:5984"] != "connected" {
		t.Errorf("the student's service cannot reach its database: %v", got.Dial)
	}
	for addr, r := range got.Dial {
		if addr != "127.0.0.1:5984" && r == "connected" {
			t.Errorf("the student's service reached %s, outside its run", addr)
		}
	}
	if strings.Join(got.Interfaces, " ") != "lo" {
		t.Errorf("interfaces %v; want the run's loopback only", got.Interfaces)
	}
	if got.UID == 0 || got.GID == 0 || got.CapEff != "0000000000000000" || got.CapBnd != "0000000000000000" || got.NoNewPrivs != "1" || got.Seccomp != "2" {
		t.Errorf("uid %d gid %d CapEff %s CapBnd %s NoNewPrivs %s Seccomp %s; want hardened", got.UID, got.GID, got.CapEff, got.CapBnd, got.NoNewPrivs, got.Seccomp)
	}
	if strings.Join(got.Written, " ") != "/tmp/ok" || len(got.Visible) > 0 {
		t.Errorf("wrote %v, saw %v; want /tmp only, and no engine socket", got.Written, got.Visible)
	}
}
