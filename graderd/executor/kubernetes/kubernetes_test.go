package kubernetes

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientset "k8s.io/client-go/kubernetes"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/kubetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.StopShared()
	os.Exit(code)
}

var nsCount atomic.Int64

// setup is one test's namespace (Pod Security "restricted" enforced), node
// agent, cluster and executor.
type setup struct {
	env    *kubetest.Env
	ns     string
	client clientset.Interface
	agent  *kubetest.Agent
	c      *Cluster
	e      *Executor
}

type options struct {
	grader  kubetest.FakeGrader
	noLogs  bool
	modify  func(*Config)
	before  func(s *setup) // before the cluster starts
	server  string
	nodeLbl map[string]string
}

func newSetup(t *testing.T, o options) *setup {
	t.Helper()
	env := kubetest.Shared(t)
	ctx := context.Background()
	s := &setup{env: env, ns: fmt.Sprintf("grading-%d", nsCount.Add(1)), client: env.Client}
	if err := env.Namespace(ctx, s.ns, "restricted"); err != nil {
		t.Fatal(err)
	}
	if o.grader == nil {
		o.grader = kubetest.Echo
	}
	agent, err := kubetest.StartAgent(ctx, kubetest.AgentConfig{
		Client: env.Client, Namespace: s.ns, Node: "node-" + s.ns, Labels: cmpOr(o.nodeLbl, map[string]string{"pool": "grading"}),
		Runtime: o.grader, NoLogs: o.noLogs,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	s.agent = agent
	if o.before != nil {
		o.before(s)
	}
	s.c, err = NewCluster(ClusterConfig{Client: env.Client, Namespace: s.ns, Server: cmpOr(o.server, "grader-1"), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.c.Start(ctx)
	t.Cleanup(s.c.Stop)
	cfg := Config{Cluster: s.c, Name: "python", Image: "graders/python:1", Command: []string{"/usr/local/bin/grade"},
		EntrypointImage: "gradebroker/graderd:test", ScheduleTimeout: 30 * time.Second, StartTimeout: 30 * time.Second,
		NodeSelector: map[string]string{"pool": "grading"}, Logger: testLogger(t)}
	if o.modify != nil {
		o.modify(&cfg)
	}
	if s.e, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return s
}

func cmpOr[T any](v, def T) T {
	if any(v) == nil || fmt.Sprint(v) == fmt.Sprint(*new(T)) {
		return def
	}
	return v
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func job(lease int64, data string) executor.Job {
	return executor.Job{JobID: lease * 10, LeaseID: lease, Attempt: 1, Name: "alice/sum", JobData: []byte(data), Tags: []string{"python3"}, Timeout: time.Minute}
}

// leftovers returns the pods and Secrets of the namespace.
func (s *setup) leftovers(t *testing.T) (pods, secrets int) {
	t.Helper()
	ctx := context.Background()
	p, err := s.client.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := s.client.CoreV1().Secrets(s.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(p.Items), len(sec.Items)
}

func (s *setup) waitClean(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, "the run's pod and Secrets to be deleted", func() bool {
		p, sec := s.leftovers(t)
		return p == 0 && sec == 0
	})
}

// TestJobPodResult: a job becomes a pod whose grader gets the job document
// byte for byte and whose result and log come back apart; the pod and its
// Secret are deleted afterwards.
func TestJobPodResult(t *testing.T) {
	t.Parallel()
	s := newSetup(t, options{})
	j := job(1, `{"task": "sum",  "solution":"print(1)"}`)
	res := s.e.Run(context.Background(), j)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}
	want, _ := executor.JobDocument(j, s.e.Limits())
	if !bytes.Equal(res.Result, bytes.TrimSpace(want)) {
		t.Errorf("result is not the job document:\n got %s\nwant %s", res.Result, want)
	}
	if res.Log != fmt.Sprintf("echoed %d bytes\n", len(want)) {
		t.Errorf("log %q", res.Log)
	}
	s.waitClean(t)
}

// TestLargeDocumentAndResult: a document larger than a Secret holds travels
// in several, and a result larger than a termination message through the
// container's log (the API server proxies the request to the node agent's
// log endpoint).
func TestLargeDocumentAndResult(t *testing.T) {
	t.Parallel()
	s := newSetup(t, options{})
	data := `{"blob":"` + strings.Repeat("0123456789", 250_000) + `"}`
	j := job(2, data)
	res := s.e.Run(context.Background(), j)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}
	want, _ := executor.JobDocument(j, s.e.Limits())
	if !bytes.Equal(res.Result, bytes.TrimSpace(want)) {
		t.Errorf("result of %d bytes is not the %d-byte job document", len(res.Result), len(want))
	}
	if s.agent.Runs() != 1 {
		t.Errorf("agent ran %d pods", s.agent.Runs())
	}
	s.waitClean(t)
}

// TestNoLogEndpoint: where the cluster serves no logs, a result that fits
// the termination message still arrives whole with its log; a larger one
// ends TEMPORARY, saying why.
func TestNoLogEndpoint(t *testing.T) {
	t.Parallel()
	s := newSetup(t, options{noLogs: true, grader: func(_ context.Context, g kubetest.Grading) (int, []byte, []byte) {
		if bytes.Contains(g.Document, []byte("big")) {
			return 0, []byte(`{"x":"` + strings.Repeat("y", 10_000) + `"}`), []byte("log\n")
		}
		return 0, []byte(`{"score":1}`), []byte("all good\n")
	}})
	res := s.e.Run(context.Background(), job(3, `{"small":true}`))
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || string(res.Result) != `{"score":1}` || res.Log != "all good\n" {
		t.Errorf("small result without logs: %v %s %q %s", res.Outcome, res.Result, res.Log, res.Error)
	}
	res = s.e.Run(context.Background(), job(4, `{"big":true}`))
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || !strings.Contains(res.Error, "too large for the termination message") {
		t.Errorf("large result without logs: %v %s", res.Outcome, res.Error)
	}
	s.waitClean(t)
}

// TestExitCodes: the grader's exit maps to the outcome as in the exec
// convention.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	s := newSetup(t, options{grader: func(_ context.Context, g kubetest.Grading) (int, []byte, []byte) {
		switch {
		case bytes.Contains(g.Document, []byte(`"fatal"`)):
			return 1, []byte(`{"why":"no"}`), []byte("bad solution\n")
		case bytes.Contains(g.Document, []byte(`"retry"`)):
			return 2, nil, []byte("database down\n")
		}
		return 0, []byte("not json"), nil
	}})
	for _, tc := range []struct {
		data    string
		outcome gradebrokerv1.Outcome
		err     string
	}{
		{`"fatal"`, gradebrokerv1.Outcome_OUTCOME_FATAL, "exit status 1): bad solution"},
		{`"retry"`, gradebrokerv1.Outcome_OUTCOME_TEMPORARY, "exit status 2): database down"},
		{`"garbage"`, gradebrokerv1.Outcome_OUTCOME_FATAL, "not JSON"},
	} {
		res := s.e.Run(context.Background(), job(5, tc.data))
		if res.Outcome != tc.outcome || !strings.Contains(res.Error, tc.err) {
			t.Errorf("%s: %v %q", tc.data, res.Outcome, res.Error)
		}
	}
}

// TestTimeout: past the job's timeout graderd deletes the pod (its grader
// stopped) and the run ends TIMEOUT.
func TestTimeout(t *testing.T) {
	t.Parallel()
	stopped := make(chan struct{})
	s := newSetup(t, options{grader: func(ctx context.Context, _ kubetest.Grading) (int, []byte, []byte) {
		<-ctx.Done()
		close(stopped)
		return 143, nil, nil
	}})
	j := job(6, `{}`)
	j.Timeout = 2 * time.Second
	var res executor.Result
	ran := make(chan struct{})
	go func() { defer close(ran); res = s.e.Run(context.Background(), j) }()
	// Nothing else ends this run: no kubelet enforces activeDeadlineSeconds here.
	testutil.WaitClosed(t, "graderd to end the run at its timeout", ran)
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TIMEOUT || res.Limit != executor.LimitWallTime {
		t.Fatalf("outcome %v, limit %v: %s", res.Outcome, res.Limit, res.Error)
	}
	testutil.WaitClosed(t, "the grader to be stopped", stopped)
	s.waitClean(t)
}

// TestCancel: a cancelled run deletes its pod and ends TEMPORARY.
func TestCancel(t *testing.T) {
	t.Parallel()
	running := make(chan struct{})
	s := newSetup(t, options{grader: func(ctx context.Context, _ kubetest.Grading) (int, []byte, []byte) {
		close(running)
		<-ctx.Done()
		return 143, nil, nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-running; cancel() }()
	res := s.e.Run(ctx, job(7, `{}`))
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || res.Error != executor.ErrorCancelled {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}
	s.waitClean(t)
}

// TestUnschedulable: a pod no node takes within the bound ends the run
// TEMPORARY with the scheduler's words.
func TestUnschedulable(t *testing.T) {
	t.Parallel()
	s := newSetup(t, options{modify: func(c *Config) {
		c.NodeSelector = map[string]string{"gpu": "yes"}
		c.ScheduleTimeout = time.Second
	}})
	res := s.e.Run(context.Background(), job(8, `{}`))
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || !strings.Contains(res.Error, "unschedulable") || !strings.Contains(res.Error, "didn't match Pod's node affinity/selector") {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}
	s.waitClean(t)
}

// TestShippedRole: with deploy/kubernetes applied (namespaces, Role,
// NetworkPolicy, graderd's StatefulSet: the API server validates each),
// graderd's ServiceAccount runs a job under the Role and no more: a large
// document and result (several Secrets, deleted by label; the log), and it
// cannot read a Secret.
func TestShippedRole(t *testing.T) {
	t.Parallel()
	env := kubetest.Shared(t)
	ctx := context.Background()
	dir, err := kubetest.DeployDir()
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range []string{"namespaces.yaml", "rbac.yaml", "networkpolicy.yaml", "graderd.yaml"} {
		files = append(files, dir+"/"+f)
	}
	if _, err := env.Apply(ctx, files...); err != nil {
		t.Fatal(err)
	}
	const ns = "gradebroker-grading"
	agent, err := kubetest.StartAgent(ctx, kubetest.AgentConfig{Client: env.Client, Namespace: ns, Node: "node-rbac", Runtime: kubetest.FakeGrader(kubetest.Echo)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	rc, err := env.UserConfig("system:serviceaccount:gradebroker:graderd")
	if err != nil {
		t.Fatal(err)
	}
	client, err := clientset.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCluster(ClusterConfig{Client: client, Namespace: ns, Server: "grader-rbac", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c.Start(ctx)
	t.Cleanup(c.Stop)
	e, err := New(Config{Cluster: c, Name: "default", Image: "graders/python:1", Command: []string{"/grade"}, EntrypointImage: "gradebroker/graderd:test", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	j := job(31, `{"blob":"`+strings.Repeat("x", 1_500_000)+`"}`)
	res := e.Run(ctx, j)
	want, _ := executor.JobDocument(j, e.Limits())
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || !bytes.Equal(res.Result, bytes.TrimSpace(want)) {
		t.Fatalf("under the shipped Role: outcome %v, %d-byte result: %s", res.Outcome, len(res.Result), res.Error)
	}
	s := &setup{client: env.Client, ns: ns}
	s.waitClean(t)
	if _, err := client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err == nil {
		t.Error("graderd's ServiceAccount may list Secrets; the Role should not allow it")
	}
	if _, err := client.CoreV1().Pods("gradebroker").List(ctx, metav1.ListOptions{}); err == nil {
		t.Error("graderd's ServiceAccount may list pods outside the grading namespace")
	}
}

// TestImagePullFailure: an image that cannot be pulled ends the run
// TEMPORARY, saying so.
func TestImagePullFailure(t *testing.T) {
	t.Parallel()
	s := newSetup(t, options{modify: func(c *Config) { c.Image = "registry.example.org/missing:1" }})
	s.agent.Stop()
	agent, err := kubetest.StartAgent(context.Background(), kubetest.AgentConfig{Client: s.client, Namespace: s.ns, Node: "node2-" + s.ns,
		Labels: map[string]string{"pool": "grading"}, Runtime: kubetest.FakeGrader(kubetest.Echo),
		Pull: func(image string) error {
			if strings.Contains(image, "missing") {
				return fmt.Errorf("rpc error: code = NotFound desc = failed to pull and unpack image %q: not found", image)
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	res := s.e.Run(context.Background(), job(9, `{}`))
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || !strings.Contains(res.Error, "image pull failed") || !strings.Contains(res.Error, "registry.example.org/missing:1") {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}
	s.waitClean(t)
}

// TestEvicted: a pod the node evicts ends the run TEMPORARY, saying so.
func TestEvicted(t *testing.T) {
	t.Parallel()
	running := make(chan struct{})
	s := newSetup(t, options{grader: func(ctx context.Context, _ kubetest.Grading) (int, []byte, []byte) {
		close(running)
		<-ctx.Done()
		return 137, nil, nil
	}})
	go func() {
		<-running
		// What a kubelet under memory pressure writes.
		ctx := context.Background()
		pods, err := s.client.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != 1 {
			t.Errorf("pods: %v %d", err, len(pods.Items))
			return
		}
		p := pods.Items[0]
		p.Status.Phase, p.Status.Reason = corev1.PodFailed, "Evicted"
		p.Status.Message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 90Mi."
		if _, err := s.client.CoreV1().Pods(s.ns).UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err != nil {
			t.Error(err)
		}
	}()
	res := s.e.Run(context.Background(), job(10, `{}`))
	if res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY || !strings.Contains(res.Error, "evicted") || !strings.Contains(res.Error, "low on resource: memory") {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}
	s.waitClean(t)
}

// TestStrayPodsReaped: pods and Secrets of this server that no run holds
// (a crashed graderd's) are deleted when the cluster's watch starts; other
// servers' pods are left alone.
func TestStrayPodsReaped(t *testing.T) {
	t.Parallel()
	var stray, other *corev1.Pod
	s := newSetup(t, options{server: "grader-7", before: func(s *setup) {
		ctx := context.Background()
		mk := func(server string, lease int64) *corev1.Pod {
			c, err := NewCluster(ClusterConfig{Client: s.client, Namespace: s.ns, Server: server})
			if err != nil {
				t.Fatal(err)
			}
			e, err := New(Config{Cluster: c, Name: "python", Image: "i", Command: []string{"/g"}, EntrypointImage: "e", NodeSelector: map[string]string{"pool": "none"}})
			if err != nil {
				t.Fatal(err)
			}
			j := job(lease, `{}`)
			doc, _ := executor.JobDocument(j, e.Limits())
			name := podName(j, "stray")
			for _, sec := range e.secrets(name, j, doc) {
				if _, err := s.client.CoreV1().Secrets(s.ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			p, err := s.client.CoreV1().Pods(s.ns).Create(ctx, e.pod(name, j, doc, 1), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		stray, other = mk("grader-7", 70), mk("grader-8", 80)
	}})
	testutil.Eventually(t, "the stray pod and its Secret to be deleted", func() bool {
		_, err := s.client.CoreV1().Pods(s.ns).Get(context.Background(), stray.Name, metav1.GetOptions{})
		sec, _ := s.client.CoreV1().Secrets(s.ns).List(context.Background(), metav1.ListOptions{LabelSelector: executor.LabelServer + "=grader-7"})
		return err != nil && len(sec.Items) == 0
	})
	if _, err := s.client.CoreV1().Pods(s.ns).Get(context.Background(), other.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("another server's pod was deleted: %v", err)
	}
	sec, _ := s.client.CoreV1().Secrets(s.ns).List(context.Background(), metav1.ListOptions{LabelSelector: executor.LabelServer + "=grader-8"})
	if len(sec.Items) != 1 {
		t.Errorf("another server's Secret is gone")
	}
}

// TestPodSecurity: the pod as the API server admitted it into a namespace
// that enforces the restricted Pod Security level carries the hardened
// profile; the same pod without it is refused there.
func TestPodSecurity(t *testing.T) {
	t.Parallel()
	running := make(chan struct{})
	release := make(chan struct{})
	s := newSetup(t, options{grader: func(ctx context.Context, _ kubetest.Grading) (int, []byte, []byte) {
		close(running)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return 0, []byte(`{}`), nil
	}})
	done := make(chan executor.Result, 1)
	j := job(11, `{}`)
	j.Timeout = 90 * time.Second
	go func() { done <- s.e.Run(context.Background(), j) }()
	select {
	case <-running:
	case res := <-done:
		t.Fatalf("the run ended before its grader ran: %v: %s", res.Outcome, res.Error)
	}
	pods, err := s.client.CoreV1().Pods(s.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("pods: %v %d", err, len(pods.Items))
	}
	p := pods.Items[0]
	close(release)
	if res := <-done; res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Error)
	}

	spec := p.Spec
	check := func(what string, ok bool) {
		if !ok {
			t.Errorf("pod spec: %s", what)
		}
	}
	check("restartPolicy Never", spec.RestartPolicy == corev1.RestartPolicyNever)
	check("activeDeadlineSeconds from the timeout (90s + start timeout 30s + grace 2s)", deref(spec.ActiveDeadlineSeconds) == 122)
	check("automountServiceAccountToken false", spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken)
	check("pod seccomp RuntimeDefault", spec.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault)
	check("pod runAsNonRoot", *spec.SecurityContext.RunAsNonRoot && *spec.SecurityContext.RunAsUser == DefaultRunAsUser)
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		sc := c.SecurityContext
		check(c.Name+": runAsNonRoot", sc.RunAsNonRoot != nil && *sc.RunAsNonRoot)
		check(c.Name+": readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem)
		check(c.Name+": allowPrivilegeEscalation false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation)
		check(c.Name+": drop ALL", len(sc.Capabilities.Drop) == 1 && sc.Capabilities.Drop[0] == "ALL" && len(sc.Capabilities.Add) == 0)
		check(c.Name+": seccomp RuntimeDefault", sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault)
		for _, r := range []corev1.ResourceName{corev1.ResourceMemory, corev1.ResourceCPU, corev1.ResourceEphemeralStorage} {
			l, req := c.Resources.Limits[r], c.Resources.Requests[r]
			check(fmt.Sprintf("%s: %s request and limit", c.Name, r), !l.IsZero() && l.Equal(req))
		}
	}
	grader := spec.Containers[0]
	check("memory limit 1GiB", grader.Resources.Limits.Memory().Value() == executor.DefaultMemory)
	sizes := map[string]int64{}
	for _, v := range spec.Volumes {
		if v.EmptyDir != nil {
			check(v.Name+": emptyDir sizeLimit", v.EmptyDir.SizeLimit != nil)
			sizes[v.Name] = v.EmptyDir.SizeLimit.Value()
		}
	}
	check("/tmp and /job emptyDirs of the limits' sizes", sizes["tmp"] == executor.DefaultTmpSize && sizes["work"] == executor.DefaultWorkSize)
	mounts := map[string]bool{}
	for _, m := range grader.VolumeMounts {
		mounts[m.MountPath] = m.ReadOnly
	}
	check("/tmp and /job writable, gbpod and the input read-only", !mounts["/tmp"] && !mounts["/job"] && mounts["/gradebroker/bin"] && mounts["/gradebroker/input"])
	for _, k := range []string{executor.LabelServer, executor.LabelJob, executor.LabelLease, executor.LabelExecutor} {
		check("label "+k, p.Labels[k] != "")
	}
	check("labels' values", p.Labels[executor.LabelLease] == "11" && p.Labels[executor.LabelJob] == "110" && p.Labels[executor.LabelExecutor] == "python")

	// The namespace really enforces "restricted": the same pod without
	// the hardened fields is refused.
	weak := p.DeepCopy()
	weak.ObjectMeta = metav1.ObjectMeta{Name: "weak"}
	weak.Spec.NodeName = ""
	weak.Status = corev1.PodStatus{}
	weak.Spec.SecurityContext.RunAsNonRoot = nil
	weak.Spec.SecurityContext.RunAsUser = nil
	for i := range weak.Spec.Containers {
		weak.Spec.Containers[i].SecurityContext.Capabilities = nil
		weak.Spec.Containers[i].SecurityContext.RunAsNonRoot = nil
		weak.Spec.Containers[i].SecurityContext.RunAsUser = nil
	}
	_, err = s.client.CoreV1().Pods(s.ns).Create(context.Background(), weak, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "violates PodSecurity \"restricted") {
		t.Errorf("a pod without the hardened fields was not refused by Pod Security admission: %v", err)
	}
}
