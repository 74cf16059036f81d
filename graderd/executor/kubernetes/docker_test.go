package kubernetes

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/kubetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// dockerImage builds gbpod and the test grader as static programs and
// imports them as a local image: gbpod at EntrypointPath, the grader at
// /usr/local/bin/grade.
func dockerImage(t *testing.T) string {
	t.Helper()
	if err := kubetest.CheckDocker(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for pkg, out := range map[string]string{"../../cmd/gbpod": "gbpod", "./kubetest/testgrader": "grade"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg)
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	name := "gradebroker-test/k8s-grader:" + hex.EncodeToString(r[:])
	err := kubetest.ImportImage(name, map[string]string{EntrypointPath: filepath.Join(dir, "gbpod"), "/usr/local/bin/grade": filepath.Join(dir, "grade")},
		[]string{"/tmp", "/job", "/dev", "/proc", "/sys", "/etc", "/gradebroker", "/gradebroker/bin", "/gradebroker/input"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", name).Run() })
	return name
}

// TestRealPodsUnderDocker runs pods for real: the node agent runs their
// containers in the Docker engine with the pod spec's security settings,
// gbpod installed by the init container and running the grader under
// them. The grader reports what it finds: not root, no capabilities,
// no_new_privs, seccomp on, a read-only root and read-only input, writable
// /tmp and /job, no network but loopback, and its input byte for byte. A
// large result arrives through the container's log; a full /tmp is the
// disk limit; exit 2 is TEMPORARY.
func TestRealPodsUnderDocker(t *testing.T) {
	t.Parallel()
	testutil.Slow(t, "builds an image and runs containers")
	image := dockerImage(t)
	s := newSetup(t, options{grader: nil, modify: func(c *Config) {
		c.Limits.TmpSize = 8 << 20
		c.Limits.Memory = 256 << 20
	}})
	s.agent.Stop()
	agent, err := kubetest.StartAgent(context.Background(), kubetest.AgentConfig{Client: s.client, Namespace: s.ns, Node: "docker-" + s.ns,
		Labels:  map[string]string{"pool": "grading"},
		Runtime: kubetest.Docker{Images: map[string]string{"graders/python:1": image, "gradebroker/graderd:test": image}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)

	j := job(21, `{"mode": "inspect", "pad": "`+strings.Repeat("é", 1000)+`"}`)
	res := s.e.Run(context.Background(), j)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v: %s\nlog: %s", res.Outcome, res.Error, res.Log)
	}
	var got struct {
		Interfaces []string `json:"interfaces"`
	}
	var raw map[string]any
	if err := json.Unmarshal(res.Result, &raw); err != nil {
		t.Fatalf("result %s: %v", res.Result, err)
	}
	_ = json.Unmarshal(res.Result, &got)
	doc, _ := executor.JobDocument(j, s.e.Limits())
	sum := sha256.Sum256(doc)
	checks := map[string]bool{
		"uid and gid 65534":          raw["uid"] == float64(65534) && raw["gid"] == float64(65534),
		"no effective capabilities":  raw["cap_eff"] == "0000000000000000",
		"no bounding capabilities":   raw["cap_bnd"] == "0000000000000000",
		"no_new_privs":               raw["no_new_privs"] == "1",
		"seccomp filter":             raw["seccomp"] == "2",
		"read-only root":             raw["root_writable"] == false,
		"read-only input":            raw["input_writable"] == false,
		"writable /tmp and /job":     raw["tmp_writable"] == true && raw["job_writable"] == true,
		"working directory /job":     raw["cwd"] == "/job" && raw["home"] == "/job",
		"the document byte for byte": raw["doc_len"] == float64(len(doc)) && raw["doc_sha256"] == hex.EncodeToString(sum[:]),
		"loopback only":              len(got.Interfaces) == 1 && got.Interfaces[0] == "lo",
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("in the pod: %s: no; the grader reported %s", what, res.Result)
		}
	}
	if !strings.Contains(res.Log, "testgrader: mode inspect") {
		t.Errorf("log %q", res.Log)
	}

	big := s.e.Run(context.Background(), job(22, `{"mode":"big","size":300000}`))
	if big.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || len(big.Result) != 300000+len(`{"big":""}`) || big.Log != "testgrader: mode big\n" {
		t.Errorf("large result: %v, %d bytes, log %q: %s", big.Outcome, len(big.Result), big.Log, big.Error)
	}
	fill := s.e.Run(context.Background(), job(23, `{"mode":"fill"}`))
	if fill.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || fill.Limit != executor.LimitDisk || !strings.Contains(fill.Error, "disk limit: the run filled its /tmp") {
		t.Errorf("full /tmp: %v %v %s", fill.Outcome, fill.Limit, fill.Error)
	}
	retry := s.e.Run(context.Background(), job(24, `{"mode":"exit","code":2}`))
	if retry.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || !strings.Contains(retry.Error, "exit status 2): exiting with 2") {
		t.Errorf("exit 2: %v %s", retry.Outcome, retry.Error)
	}
	s.waitClean(t)
}
