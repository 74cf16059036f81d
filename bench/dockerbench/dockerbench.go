// Package dockerbench measures what the container executors cost a job: a
// no-op grader run by the docker executor, beside `docker run --rm` of the
// same image with the same hardening flags on the same engine, alternately
// in one process so that both see the machine and the engine in the same
// state; and a scenarios job of one request, whose time is almost all
// overhead (the runner, a service and the student's containers started,
// the readiness probe, everything removed).
package dockerbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/bench/sandboxbench"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
	"github.com/gradebroker/gradebroker/graderd/executor/docker/dockertest"
	"github.com/gradebroker/gradebroker/graderd/executor/scenarios"
)

// Options of a run.
type Options struct {
	// Runs is how many no-op runs of each kind (default 100).
	Runs int
	// ScenarioRuns is how many scenarios jobs (default 20).
	ScenarioRuns int
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
}

// Result is what Run measured.
type Result struct {
	Runs, ScenarioRuns int
	Executor, CLI      []time.Duration
	ScenarioWall       []time.Duration
	ScenarioReady      []time.Duration
	Machine, Engine    string
	Load               [2]string
}

// noopJob is the probe grader answering {} at once.
var noopJob = executor.Job{JobID: 1, LeaseID: 1, JobData: []byte(`{"probe": "exit", "code": 0, "stdout": "{}"}`), Timeout: time.Minute}

// Run measures. It needs a Docker engine and the go command (it builds the
// images it runs from this module).
func Run(ctx context.Context, o Options) (Result, error) {
	o.Runs = max(o.Runs, 0)
	if o.Runs == 0 {
		o.Runs = 100
	}
	if o.ScenarioRuns == 0 {
		o.ScenarioRuns = 20
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "docker: "+format+"\n", args...)
		}
	}
	eng, err := docker.NewEngine(ctx, "")
	if err != nil {
		return Result{}, fmt.Errorf("the docker benchmark needs a Docker engine: %w", err)
	}
	defer eng.Close()
	progress("building the images")
	image := func(name, pkg, ldflags string) (string, error) {
		bin, err := dockertest.BuildBinary(pkg, ldflags)
		if err != nil {
			return "", err
		}
		return dockertest.MakeImage(ctx, eng, name, bin)
	}
	probe, err := image("probe", "./graderd/executor/docker/dockertest/probe", "")
	if err != nil {
		return Result{}, err
	}
	r := Result{Runs: o.Runs, ScenarioRuns: o.ScenarioRuns, Machine: sandboxbench.Machine(), Engine: eng.String(), Load: [2]string{sandboxbench.LoadAvg(), ""}}
	e := &docker.Executor{Engine: eng, Server: dockertest.Name("gbbench-"), Name: "bench", Image: probe}
	doc, err := executor.JobDocument(noopJob, executor.Limits{}.WithDefaults())
	if err != nil {
		return r, err
	}
	cli := cliArgs(probe)
	// Warm up: the first runs load the image's layers and the runtimes.
	for range 3 {
		if err := runExecutor(ctx, e); err != nil {
			return r, err
		}
		if err := runCLI(ctx, cli, doc); err != nil {
			return r, err
		}
	}
	for i := range o.Runs {
		t := time.Now()
		if err := runExecutor(ctx, e); err != nil {
			return r, err
		}
		r.Executor = append(r.Executor, time.Since(t))
		t = time.Now()
		if err := runCLI(ctx, cli, doc); err != nil {
			return r, err
		}
		r.CLI = append(r.CLI, time.Since(t))
		if (i+1)%25 == 0 {
			progress("%d/%d no-op runs of each", i+1, o.Runs)
		}
	}

	runner, err := dockertest.BuildBinary("./graderd/cmd/gb-scenario-runner", "")
	if err != nil {
		return r, err
	}
	runnerImage, err := docker.EnsureRunnerImage(ctx, eng, runner)
	if err != nil {
		return r, err
	}
	kvdb, err := image("kvdb", "./examples/kvdb", "")
	if err != nil {
		return r, err
	}
	todo, err := image("todoservice", "./examples/todoservice", "")
	if err != nil {
		return r, err
	}
	s := &docker.Scenarios{
		Engine: eng, Server: e.Server, Name: "bench", RunnerImage: runnerImage,
		Images: docker.Images{Allowed: []string{"gradebroker-test/todoservice:*"}},
		Ready:  scenarios.Probe{Path: "/health"},
		Services: []docker.Service{{
			Name: "db", Image: kvdb, Port: 5984, User: docker.DefaultUser,
			Env:   []string{"KVDB_USER={{.User}}", "KVDB_PASSWORD={{.Password}}", "KVDB_DATABASE={{.Database}}"},
			Tmpfs: map[string]string{"/data": "size=16m,uid=65534,gid=65534,mode=0700"},
		}},
	}
	jd, _ := json.Marshal(map[string]any{"image": todo, "scenarios": []map[string]any{{"name": "health", "path": "/health"}}})
	for i := range o.ScenarioRuns {
		t := time.Now()
		res := s.Run(ctx, executor.Job{JobID: 2, LeaseID: int64(2 + i), JobData: jd, Timeout: time.Minute})
		wall := time.Since(t)
		var doc scenarios.Result
		if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || json.Unmarshal(res.Result, &doc) != nil || doc.Totals.Success != 1 {
			return r, fmt.Errorf("a scenarios job failed: %v %s %s", res.Outcome, res.Error, res.Result)
		}
		r.ScenarioWall = append(r.ScenarioWall, wall)
		r.ScenarioReady = append(r.ScenarioReady, time.Duration(doc.ReadyMS)*time.Millisecond)
		if (i+1)%5 == 0 {
			progress("%d/%d scenarios jobs", i+1, o.ScenarioRuns)
		}
	}
	r.Load[1] = sandboxbench.LoadAvg()
	return r, nil
}

func runExecutor(ctx context.Context, e *docker.Executor) error {
	res := e.Run(ctx, noopJob)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		return fmt.Errorf("a no-op run through the executor failed: %s", res.Error)
	}
	return nil
}

// cliArgs is `docker run` of image with the executor's hardening, so that
// both do the same work.
func cliArgs(image string) []string {
	l := executor.Limits{}.WithDefaults()
	return []string{"run", "--rm", "-i", "--network", "none", "--read-only", "--cap-drop", "ALL",
		"--security-opt", "no-new-privileges", "--user", docker.DefaultUser, "--workdir", docker.WorkDir,
		"--pids-limit", fmt.Sprint(l.Pids), "--memory", fmt.Sprint(executor.DefaultMemory), "--memory-swap", fmt.Sprint(executor.DefaultMemory),
		"--cpus", "1", "--ulimit", fmt.Sprintf("nofile=%d:%d", l.OpenFiles, l.OpenFiles), "--ulimit", "core=0",
		"--tmpfs", fmt.Sprintf("/tmp:rw,exec,nosuid,nodev,size=%d,mode=1777", l.TmpSize),
		"--tmpfs", fmt.Sprintf("%s:rw,exec,nosuid,nodev,size=%d,mode=0700,uid=65534,gid=65534", docker.WorkDir, l.WorkSize),
		"--shm-size", fmt.Sprint(l.TmpSize), "--ipc", "private", "--oom-score-adj", "1000", "--log-driver", "none",
		"--env", "HOME=" + docker.WorkDir, "--env", "TMPDIR=/tmp", image}
}

func runCLI(ctx context.Context, args []string, doc []byte) error {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdin = bytes.NewReader(doc)
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != "{}" {
		return fmt.Errorf("docker run of the no-op image: %v: %s", err, out)
	}
	return nil
}

// Write prints the report as markdown.
func (r Result) Write(w io.Writer) error {
	var b strings.Builder
	ms, pct, mean := sandboxbench.MS, sandboxbench.Pct, sandboxbench.Mean
	fmt.Fprintf(&b, "\n## Container executors\n\n")
	fmt.Fprintf(&b, "%s; %s; load average %s before, %s after.\n\n", r.Machine, r.Engine, r.Load[0], r.Load[1])
	fmt.Fprintf(&b, "A no-op grader (a static binary answering `{}`, FROM scratch): the docker executor's Run (image check, create, attach, start, job document on stdin, wait, cgroup reading, remove) beside `docker run --rm -i` of the same image with the same hardening flags, %d runs of each, alternating.\n\n", r.Runs)
	fmt.Fprintf(&b, "| run | p50 | p99 | mean |\n| --- | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| docker executor | %s | %s | %s |\n", ms(pct(r.Executor, 50)), ms(pct(r.Executor, 99)), ms(mean(r.Executor)))
	fmt.Fprintf(&b, "| `docker run --rm` (CLI) | %s | %s | %s |\n", ms(pct(r.CLI, 50)), ms(pct(r.CLI, 99)), ms(mean(r.CLI)))
	fmt.Fprintf(&b, "| **executor − CLI** | **%s** | %s | %s |\n", ms(pct(r.Executor, 50)-pct(r.CLI, 50)), ms(pct(r.Executor, 99)-pct(r.CLI, 99)), ms(mean(r.Executor)-mean(r.CLI)))
	fmt.Fprintf(&b, "\nTarget: the executor no slower than the CLI (executor − CLI ≤ 0 at p50).\n\n")
	fmt.Fprintf(&b, "A scenarios job of one request (GET /health) against the sample service and a kvdb service, %d jobs: its time is the overhead of a scenarios job (runner, service and student containers created and started, the service's port and the readiness probe waited for, everything removed).\n\n", r.ScenarioRuns)
	fmt.Fprintf(&b, "| per job | p50 | p99 | mean |\n| --- | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| whole job, from Run to its return | %s | %s | %s |\n", ms(pct(r.ScenarioWall, 50)), ms(pct(r.ScenarioWall, 99)), ms(mean(r.ScenarioWall)))
	fmt.Fprintf(&b, "| of which readiness (student started → first answer) | %s | %s | %s |\n", ms(pct(r.ScenarioReady, 50)), ms(pct(r.ScenarioReady, 99)), ms(mean(r.ScenarioReady)))
	_, err := io.WriteString(w, b.String())
	return err
}
