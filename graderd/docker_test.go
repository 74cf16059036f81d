package graderd

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
	"github.com/gradebroker/gradebroker/graderd/executor/docker/dockertest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// containersOf lists the engine's containers, running or not, labelled
// with server, by role.
func containersOf(t *testing.T, eng *docker.Engine, server string) map[string][]string {
	t.Helper()
	list, err := eng.Client().ContainerList(context.Background(), client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", executor.LabelServer+"="+server),
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, c := range list.Items {
		out[c.Labels[docker.LabelRole]] = append(out[c.Labels[docker.LabelRole]], string(c.State))
	}
	return out
}

// TestDockerExecutorsThroughGraderd runs a graderd process whose default
// executor is docker and whose "svc" executor is scenarios, grades a job
// with each, then kills graderd (SIGKILL) while both kinds of runs go on:
// the restarted graderd removes every container the killed one left.
func TestDockerExecutorsThroughGraderd(t *testing.T) {
	t.Parallel()
	eng := dockertest.Engine(t)
	server := dockertest.Name("gbtest-")
	probe := dockertest.GoImage(t, eng, "probe", "./graderd/executor/docker/dockertest/probe", "")
	kvdb := dockertest.GoImage(t, eng, "kvdb", "./examples/kvdb", "")
	todo := dockertest.GoImage(t, eng, "todoservice", "./examples/todoservice", "")
	runner := dockertest.Binary(t, "./graderd/cmd/gb-scenario-runner", "")
	sets, err := filepath.Abs("../examples/scenarios")
	if err != nil {
		t.Fatal(err)
	}
	d := layoutFor(t, server)
	d.writeConfig(t, fmt.Sprintf(`slots: 4
drain_timeout: 1s
limits: {kill_grace: 200ms}
default_executor:
  type: docker
  image: %s
executors:
  svc:
    type: scenarios
    images: ["gradebroker-test/todoservice:*"]
    runner_binary: %s
    scenario_dir: %s
    ready: {path: /health}
    services: &services
      - name: db
        image: %s
        port: 5984
        user: "65534:65534"
        env: ["KVDB_USER={{.User}}", "KVDB_PASSWORD={{.Password}}", "KVDB_DATABASE={{.Database}}"]
        tmpfs: {/data: "size=16m,uid=65534,gid=65534,mode=0700"}
  hang:
    type: scenarios
    images: ["gradebroker-test/todoservice:*"]
    runner_binary: %[2]s
    scenario_dir: %[3]s
    ready: {path: /health, status: 299, timeout: 10m}  # never ready: /health answers 200
    services: *services
`, probe, runner, sets, kvdb))
	t.Cleanup(func() {
		if left := containersOf(t, eng, server); len(left) > 0 {
			t.Errorf("containers left after the test: %v", left)
		}
	})
	d.start(t)
	bs := d.fb.nextStream(t)

	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Jobdata: []byte(`{"probe": "exit", "code": 0, "stdout": "{\"graded\": true}"}`), Timeout: durationpb.New(time.Minute)})
	if res.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK || string(res.GetResult()) != `{"graded": true}` {
		t.Errorf("docker job: outcome %v result %s error %q", res.GetOutcome(), res.GetResult(), res.GetError())
	}
	jd, _ := json.Marshal(map[string]any{"image": todo, "scenarios": "todo", "public_only": true})
	res = d.job(t, bs, &gradebrokerv1.Assign{JobId: 2, LeaseId: 2, Tags: []string{"svc"}, Jobdata: jd, Timeout: durationpb.New(time.Minute)})
	var doc struct{ Score float64 }
	resultOf(t, res, &doc)
	if doc.Score != 1 {
		t.Errorf("scenarios job: %s", res.GetResult())
	}
	if left := containersOf(t, eng, server); len(left) > 0 {
		t.Errorf("containers left after the jobs: %v", left)
	}

	// Runs that never end: a grader that hangs, a service that is never
	// ready (its probe wants a status it never answers).
	bs.assign(&gradebrokerv1.Assign{JobId: 3, LeaseId: 3, Jobdata: []byte(`{"probe": "hang"}`), Timeout: durationpb.New(time.Hour)})
	bs.assign(&gradebrokerv1.Assign{JobId: 4, LeaseId: 4, Tags: []string{"hang"}, Jobdata: jd, Timeout: durationpb.New(time.Hour)})
	testutil.Eventually(t, "the runs' containers to run", func() bool {
		c := containersOf(t, eng, server)
		return strings.Join(c[docker.RoleGrader], ",") == "running" && strings.Join(c[docker.RoleStudent], ",") == "running" &&
			strings.Join(c[docker.RoleService], ",") == "running" && strings.Join(c[docker.RoleRunner], ",") == "running"
	})
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	if left := containersOf(t, eng, server); len(left) != 4 {
		t.Fatalf("after graderd's SIGKILL the containers are %v: this test no longer tests the restart", left)
	}
	d.start(t)
	d.fb.nextStream(t)
	if left := containersOf(t, eng, server); len(left) > 0 {
		t.Errorf("containers %v that a killed graderd left are still there after its restart", left)
	}
}

// A docker executor's mount whose source has a writable file system mounted
// below it is refused at start: the engine's read-only bind would leave that
// submount writable to every run.
func TestDockerMountWithWritableSubmountRefused(t *testing.T) {
	t.Parallel()
	eng := dockertest.Engine(t)
	probe := dockertest.GoImage(t, eng, "probe", "./graderd/executor/docker/dockertest/probe", "")
	d := layoutFor(t, dockertest.Name("gbtest-"))
	tasks := filepath.Join(d.varLib, "tasks")
	sub := filepath.Join(tasks, "scratch")
	mountTmpfs(t, sub)
	d.writeConfig(t, fmt.Sprintf("default_executor:\n  type: docker\n  image: %s\n  mounts: [\"%s:/tasks\"]\n", probe, tasks))
	d.start(t)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		t.Fatalf("graderd still runs with a mount whose submount %s is writable; log:\n%s", sub, d.logs.String())
	}
	if want := "has a file system mounted below it (" + sub + ")"; !strings.Contains(d.logs.String(), want) {
		t.Errorf("graderd's log does not say %q:\n%s", want, d.logs.String())
	}
	if d.cmd.ProcessState.Success() {
		t.Error("graderd exited 0")
	}
}
