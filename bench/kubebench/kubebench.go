// Package kubebench measures the kubernetes executor's own cost per job
// against a real API server (envtest's kube-apiserver and etcd) with the
// test node agent playing the scheduler and kubelet and a grader that
// answers at once: the pod lifecycle (create → running → result →
// deleted) and the API calls per job, beside a baseline measured in the
// same run: the bare pod (the same spec, no Secret, created, watched to its
// end and deleted by hand).
package kubebench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/kubetest"
)

// Options of a run.
type Options struct {
	// Runs is how many jobs of each kind (default 200).
	Runs int
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
}

// Result is what Run measured.
type Result struct {
	Runs int
	// Run is the executor's Run (create → result), Deleted until the pod
	// is gone; Bare the baseline's create → gone.
	Run, Deleted, Bare []time.Duration
	// Calls counts the executor's API requests during the runs by verb and
	// resource; Startup those of its watch's start (not per job).
	Calls, Startup map[string]int
}

// counter counts requests by "VERB resource".
type counter struct {
	mu sync.Mutex
	n  map[string]int
	rt http.RoundTripper
}

func (c *counter) RoundTrip(r *http.Request) (*http.Response, error) {
	verb := r.Method
	if r.URL.Query().Get("watch") == "true" {
		verb = "WATCH"
	}
	c.mu.Lock()
	c.n[verb+" "+resource(r.URL.Path)]++
	c.mu.Unlock()
	return c.rt.RoundTrip(r)
}

func (c *counter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

// resource names a request's resource: /api/v1/namespaces/NS/pods/NAME/log
// is "pods/log", a collection "secrets".
func resource(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		if p == "namespaces" && i+2 < len(parts) {
			rest := parts[i+2:]
			switch len(rest) {
			case 1, 2:
				return rest[0]
			default:
				return rest[0] + "/" + rest[2]
			}
		}
	}
	return path
}

// Run measures.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Runs <= 0 {
		o.Runs = 200
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "kubernetes: "+format+"\n", args...)
		}
	}
	progress("starting kube-apiserver and etcd")
	env, err := kubetest.Start()
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = env.Stop() }()
	const ns = "bench"
	if err := env.Namespace(ctx, ns, "restricted"); err != nil {
		return Result{}, err
	}
	agent, err := kubetest.StartAgent(ctx, kubetest.AgentConfig{Client: env.Client, Namespace: ns, Node: "bench-node",
		Runtime: kubetest.FakeGrader(func(context.Context, kubetest.Grading) (int, []byte, []byte) { return 0, []byte(`{}`), nil })})
	if err != nil {
		return Result{}, err
	}
	defer agent.Stop()

	cnt := &counter{n: map[string]int{}}
	rc := *env.Config
	rc.QPS, rc.Burst = 50, 100 // what graderd uses
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { cnt.rt = rt; return cnt })
	client, err := clientset.NewForConfig(&rc)
	if err != nil {
		return Result{}, err
	}
	cluster, err := kubernetes.NewCluster(kubernetes.ClusterConfig{Client: client, Namespace: ns, Server: "bench"})
	if err != nil {
		return Result{}, err
	}
	cluster.Start(ctx)
	defer cluster.Stop()
	e, err := kubernetes.New(kubernetes.Config{Cluster: cluster, Name: "bench", Image: "grader", Command: []string{"/grade"}, EntrypointImage: "graderd"})
	if err != nil {
		return Result{}, err
	}
	// The watch of the bench itself, which sees each pod go.
	gone, err := newGoneWatch(ctx, env.Client, ns)
	if err != nil {
		return Result{}, err
	}
	defer gone.stop()

	res := Result{Runs: o.Runs}
	// Warm up (the watch's start, the connections), then count afresh.
	for i := range 5 {
		if r := e.Run(ctx, job(int64(1_000_000+i))); r.Error != "" {
			return res, fmt.Errorf("warm-up job: %s", r.Error)
		}
	}
	res.Startup = cnt.take()
	progress("%d jobs through the executor and %d bare pods, alternating", o.Runs, o.Runs)
	bare := barePod(gone)
	if bare == nil {
		return res, fmt.Errorf("the bench's watch saw none of the executor's pods")
	}
	for i := range o.Runs {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		j := job(int64(i + 1))
		start := time.Now()
		ch := gone.expect(fmt.Sprintf("gb-%d-", j.LeaseID))
		r := e.Run(ctx, j)
		res.Run = append(res.Run, time.Since(start))
		if r.Error != "" {
			return res, fmt.Errorf("job %d: %s", i, r.Error)
		}
		<-ch
		res.Deleted = append(res.Deleted, time.Since(start))

		calls := cnt.take()
		for k, v := range calls {
			if res.Calls == nil {
				res.Calls = map[string]int{}
			}
			res.Calls[k] += v
		}
		d, err := bare(ctx, env.Client, ns, i, gone)
		if err != nil {
			return res, err
		}
		res.Bare = append(res.Bare, d)
		_ = cnt.take() // the bare pod's calls are the bench's own client's, not counted
	}
	return res, nil
}

func job(lease int64) executor.Job {
	return executor.Job{JobID: lease, LeaseID: lease, Attempt: 1, JobData: []byte(`{"task":"noop"}`), Timeout: time.Minute}
}

// goneWatch is one watch of the namespace that tells when a pod whose name
// starts with a prefix is deleted.
type goneWatch struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	wait   map[string]chan struct{}
	ended  map[string]chan struct{}
	done   chan struct{}
	// template is the first of the executor's pods seen, the baseline's
	// model.
	template *corev1.Pod
}

func newGoneWatch(ctx context.Context, client clientset.Interface, ns string) (*goneWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	g := &goneWatch{cancel: cancel, wait: map[string]chan struct{}{}, ended: map[string]chan struct{}{}, done: make(chan struct{})}
	// An informer rather than a bare watch: it lists first and restarts
	// its watch as the API server asks (a fresh one may refuse a watch
	// until its cache has caught up).
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			pod := obj.(*corev1.Pod)
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.template == nil && strings.HasPrefix(pod.Name, "gb-") {
				g.template = pod.DeepCopy()
			}
		},
		UpdateFunc: func(_, obj any) {
			pod := obj.(*corev1.Pod)
			if pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed {
				return
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if ch := g.ended[pod.Name]; ch != nil {
				close(ch)
				delete(g.ended, pod.Name)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			pod := obj.(*corev1.Pod)
			g.mu.Lock()
			defer g.mu.Unlock()
			for prefix, ch := range g.wait {
				if strings.HasPrefix(pod.Name, prefix) {
					close(ch)
					delete(g.wait, prefix)
				}
			}
		},
	})
	go func() { defer close(g.done); inf.Run(ctx.Done()) }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		cancel()
		return nil, errors.New("the bench's watch of its pods did not start")
	}
	return g, nil
}

// expect returns a channel closed when a pod whose name starts with prefix
// is deleted.
func (g *goneWatch) expect(prefix string) <-chan struct{} { return g.register(g.wait, prefix) }

// expectEnd returns a channel closed when pod name has ended.
func (g *goneWatch) expectEnd(name string) <-chan struct{} { return g.register(g.ended, name) }

func (g *goneWatch) register(m map[string]chan struct{}, key string) <-chan struct{} {
	ch := make(chan struct{})
	g.mu.Lock()
	m[key] = ch
	g.mu.Unlock()
	return ch
}

func (g *goneWatch) stop() { g.cancel(); <-g.done }

// barePod returns the baseline: the executor's pod spec (as its watch saw
// one) without its labels and its Secret (gbpod's input volume left out),
// created, watched until the agent reports its end, deleted, and watched
// until gone.
func barePod(g *goneWatch) func(context.Context, clientset.Interface, string, int, *goneWatch) (time.Duration, error) {
	g.mu.Lock()
	t := g.template
	g.mu.Unlock()
	if t == nil {
		return nil
	}
	spec := *t.Spec.DeepCopy()
	spec.NodeName = ""
	spec.Volumes = slices.DeleteFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Projected != nil })
	for i := range spec.Containers {
		spec.Containers[i].VolumeMounts = slices.DeleteFunc(spec.Containers[i].VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "input" })
	}
	return func(ctx context.Context, client clientset.Interface, ns string, i int, gone *goneWatch) (time.Duration, error) {
		name := fmt.Sprintf("bare-%d", i)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: *spec.DeepCopy()}
		start := time.Now()
		ch, end := gone.expect(name), gone.expectEnd(name)
		created, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return 0, fmt.Errorf("bare pod: %w", err)
		}
		<-end
		grace := int64(1)
		if err := client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace, Preconditions: &metav1.Preconditions{UID: &created.UID}}); err != nil {
			return 0, err
		}
		<-ch
		return time.Since(start), nil
	}
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// Write prints the result as markdown.
func (r Result) Write(w io.Writer) error {
	fmt.Fprintf(w, "\n### Kubernetes executor: pod lifecycle through kube-apiserver (envtest), fake node agent, %d jobs\n\n", r.Runs)
	fmt.Fprintln(w, "| | p50 | p99 |")
	fmt.Fprintln(w, "| --- | ---: | ---: |")
	fmt.Fprintf(w, "| executor: create → running → result (Run returns) | %s | %s |\n", ms(pct(r.Run, 50)), ms(pct(r.Run, 99)))
	fmt.Fprintf(w, "| executor: create → running → result → deleted | %s | %s |\n", ms(pct(r.Deleted, 50)), ms(pct(r.Deleted, 99)))
	fmt.Fprintf(w, "| baseline: the bare pod, create → ended → deleted | %s | %s |\n", ms(pct(r.Bare, 50)), ms(pct(r.Bare, 99)))
	overhead := make([]time.Duration, len(r.Deleted))
	for i := range r.Deleted {
		overhead[i] = r.Deleted[i] - r.Bare[i]
	}
	fmt.Fprintf(w, "| executor − baseline (pairwise) | %s | %s |\n", ms(pct(overhead, 50)), ms(pct(overhead, 99)))
	total := 0
	keys := make([]string, 0, len(r.Calls))
	for k, v := range r.Calls {
		total += v
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Fprintf(w, "\nAPI calls per job: %.2f (", float64(total)/float64(r.Runs))
	for i, k := range keys {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s %.2f", k, float64(r.Calls[k])/float64(r.Runs))
	}
	fmt.Fprint(w, "); pod status comes over the one watch the executor holds, no call polls it. Its start (once, not per job): ")
	keys = keys[:0]
	for k := range r.Startup {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s %d", k, r.Startup[k])
	}
	_, err := fmt.Fprintln(w, " (with the 5 warm-up jobs).")
	return err
}
