package graderd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/kubetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// TestBinaryKubernetesCrashRestart runs the graderd binary with a
// kubernetes executor against a real API server, as the shipped Role
// allows (deploy/kubernetes applied; graderd authenticates as its
// ServiceAccount): a job becomes a pod and its result reaches the broker;
// a second job's pod survives graderd's SIGKILL, and the restarted graderd
// deletes it (its grader is stopped) before taking jobs.
func TestBinaryKubernetesCrashRestart(t *testing.T) {
	t.Parallel()
	bin := graderdBinary(t)
	env := kubetest.Shared(t)
	ctx := context.Background()
	dir, err := kubetest.DeployDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Apply(ctx, filepath.Join(dir, "namespaces.yaml"), filepath.Join(dir, "rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	const ns = DefaultKubernetesNamespace
	started, stopped := make(chan struct{}), make(chan struct{})
	agent, err := kubetest.StartAgent(ctx, kubetest.AgentConfig{Client: env.Client, Namespace: ns, Node: "node-1",
		Runtime: kubetest.FakeGrader(func(ctx context.Context, g kubetest.Grading) (int, []byte, []byte) {
			if !bytes.Contains(g.Document, []byte(`"block"`)) {
				return kubetest.Echo(ctx, g)
			}
			close(started)
			<-ctx.Done()
			close(stopped)
			return 143, nil, nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	rc, err := env.UserConfig("system:serviceaccount:gradebroker:graderd")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	kubeconfig := filepath.Join(work, "kubeconfig")
	if err := kubetest.WriteKubeconfig(kubeconfig, rc); err != nil {
		t.Fatal(err)
	}
	fb := startFakeBroker(t, newTestPKI(t))
	cfgPath := filepath.Join(work, "graderd.yaml")
	cfg := "broker: " + fb.addr + "\nca_file: " + fb.pki.CAFile + "\ncert_file: " + fb.pki.CertFile + "\nkey_file: " + fb.pki.KeyFile +
		"\nspool_dir: " + filepath.Join(work, "spool") +
		"\nkubernetes: {kubeconfig: " + kubeconfig + ", entrypoint_image: gradebroker/graderd:test}" +
		"\ndefault_executor: {type: kubernetes, image: graders/python:1, command: [/usr/local/bin/grade]}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(bin, "--config", cfgPath)
		cmd.Env = cleanEnv()
		var stderr testutil.SyncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
			if t.Failed() {
				t.Logf("graderd's log:\n%s", stderr.String())
			}
		})
		return cmd, done
	}
	pods := func() int {
		l, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: executor.LabelServer + "=grader1"})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}

	cmd, done := start()
	bs := fb.nextStream(t)
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 101, Jobdata: []byte(`{"task":"sum"}`)})
	res := bs.result(t)
	if res.GetOutcome() != gradebrokerv1.Outcome_OUTCOME_OK || !bytes.Contains(res.GetResult(), []byte(`"jobdata":{"task":"sum"}`)) {
		t.Fatalf("first job: %v %s: %s", res.GetOutcome(), res.GetResult(), res.GetError())
	}
	bs.ack(ref(1, 101))

	bs.assign(&gradebrokerv1.Assign{JobId: 2, LeaseId: 102, Jobdata: []byte(`{"block":true}`)})
	testutil.WaitClosed(t, "the second job's grader to run", started)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitClosed(t, "graderd to die", done)
	if n := pods(); n != 1 {
		t.Fatalf("after graderd's SIGKILL %d pods are left, want the running one", n)
	}
	select {
	case <-stopped:
		t.Fatal("the grader stopped when graderd was killed; nothing has deleted its pod yet")
	default:
	}

	start()
	testutil.WaitClosed(t, "the restarted graderd to stop the orphaned grader", stopped)
	testutil.Eventually(t, "the orphaned pod to be gone", func() bool { return pods() == 0 })
	bs = fb.nextStream(t)
	if n := len(bs.hello.GetRunning()); n != 0 {
		t.Errorf("the restarted graderd says it runs %d jobs", n)
	}
}
