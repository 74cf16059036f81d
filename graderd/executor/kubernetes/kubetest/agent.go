package kubetest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// Runtime runs a pod's containers for the Agent, as a kubelet's container
// runtime would: the init containers, then the main one.
type Runtime interface {
	// Run runs pod, whose projected Secrets are in secrets (by name), and
	// returns how its main container ended. ctx ends when the pod is
	// deleted: the runtime then stops the containers (SIGTERM, and SIGKILL
	// after the pod's grace) and returns.
	Run(ctx context.Context, pod *corev1.Pod, secrets map[string]*corev1.Secret) Exit
}

// Exit is how a pod's main container ended.
type Exit struct {
	// Code and Reason are the container's exit code and reason
	// ("Completed", "Error", "OOMKilled").
	Code   int32
	Reason string
	// Message is the termination message file's content (the agent keeps
	// its first 4096 bytes, as the kubelet does).
	Message []byte
	// Log is everything the container wrote, served as its log.
	Log []byte
	// Init, when not nil, is a failed init container's end instead.
	Init *Exit
}

// AgentConfig configures an Agent.
type AgentConfig struct {
	// Client is the agent's (an administrator's) client.
	Client clientset.Interface
	// Namespace is the only namespace it schedules and runs pods of, so
	// that tests in other namespaces have agents of their own.
	Namespace string
	// Node names the agent's node; Labels are the node's labels, which a
	// pod's nodeSelector must match.
	Node   string
	Labels map[string]string
	// Runtime runs the pods.
	Runtime Runtime
	// Pull, when set, is asked for each container's image before the pod
	// runs; an error leaves the container waiting in ErrImagePull with
	// the error as message, as a kubelet whose pull failed.
	Pull func(image string) error
	// NoLogs leaves the node without a log endpoint: the API server
	// answers every request for a container's log with an error, as on a
	// cluster whose kubelets it cannot reach.
	NoLogs bool
}

// Agent plays the scheduler and the kubelet of one node: it binds the
// pods of its namespace whose nodeSelector its node matches (and marks the
// others unschedulable), runs the bound ones through its Runtime, writes
// their status through the status subresource, serves their logs on a
// kubelet-like HTTPS endpoint that the API server proxies to, and on a
// deletion stops the containers and then removes the pod, as a kubelet
// confirms one.
type Agent struct {
	cfg    AgentConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup
	srv    *httptest.Server

	mu      sync.Mutex
	running map[types.UID]context.CancelFunc
	logs    map[string][]byte // by namespace/pod/container
	marked  map[types.UID]bool
	// Runs counts the pods the agent ran.
	runs int
}

// StartAgent registers the node and starts the agent; Stop stops it.
func StartAgent(ctx context.Context, cfg AgentConfig) (*Agent, error) {
	a := &Agent{cfg: cfg, running: map[types.UID]context.CancelFunc{}, logs: map[string][]byte{}, marked: map[types.UID]bool{}}
	port := int32(1) // nothing listens there: logs cannot be had
	if !cfg.NoLogs {
		// httptest's own certificate: the API server, like most, is not
		// told a kubelet CA and does not check it.
		a.srv = httptest.NewTLSServer(http.HandlerFunc(a.serveLog))
		_, p, _ := net.SplitHostPort(a.srv.Listener.Addr().String())
		n, _ := strconv.Atoi(p)
		port = int32(n)
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.Node, Labels: cfg.Labels},
	}
	if _, err := cfg.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		a.close()
		return nil, fmt.Errorf("registering node %s: %w", cfg.Node, err)
	}
	node, err := cfg.Client.CoreV1().Nodes().Get(ctx, cfg.Node, metav1.GetOptions{})
	if err != nil {
		a.close()
		return nil, err
	}
	node.Status = corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: port}},
		Conditions:      []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()}},
	}
	if _, err := cfg.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		a.close()
		return nil, fmt.Errorf("node %s status: %w", cfg.Node, err)
	}

	ctx, a.cancel = context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(cfg.Namespace))
	pods := factory.Core().V1().Pods().Informer()
	_, _ = pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.observe(ctx, obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { a.observe(ctx, obj.(*corev1.Pod)) },
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.HasSynced) {
		a.Stop()
		return nil, fmt.Errorf("the agent's watch of namespace %s did not start", cfg.Namespace)
	}
	return a, nil
}

// Stop stops the agent and waits for the pods it runs to stop.
func (a *Agent) Stop() {
	a.cancel()
	a.wg.Wait()
	a.close()
}

func (a *Agent) close() {
	if a.srv != nil {
		a.srv.Close()
	}
}

// Runs returns how many pods the agent ran.
func (a *Agent) Runs() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs
}

// observe schedules, starts or stops a pod.
func (a *Agent) observe(ctx context.Context, pod *corev1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil:
		if a.marked[pod.UID] {
			return
		}
		a.marked[pod.UID] = true
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.schedule(ctx, pod) }()
	case pod.Spec.NodeName != a.cfg.Node:
	case pod.DeletionTimestamp != nil:
		if stop := a.running[pod.UID]; stop != nil {
			stop()
			delete(a.running, pod.UID)
		} else if !a.marked[pod.UID] || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			// Nothing runs: confirm the deletion, as a kubelet does.
			a.marked[pod.UID] = true
			a.wg.Add(1)
			go func() { defer a.wg.Done(); a.confirmDeletion(ctx, pod) }()
		}
	case pod.Status.Phase == corev1.PodPending && !a.started(pod.UID):
		runCtx, stop := context.WithCancel(ctx)
		a.running[pod.UID] = stop
		a.runs++
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.run(ctx, runCtx, pod) }()
	}
}

// started is under a.mu: whether the agent has taken the pod already.
func (a *Agent) started(uid types.UID) bool {
	if a.running[uid] != nil {
		return true
	}
	// A pod that has run and is not deleted yet.
	if a.marked["ran:"+uid] {
		return true
	}
	return false
}

// schedule binds the pod to the node, or marks it unschedulable.
func (a *Agent) schedule(ctx context.Context, pod *corev1.Pod) {
	if labels.SelectorFromSet(pod.Spec.NodeSelector).Matches(labels.Set(a.cfg.Labels)) {
		err := a.cfg.Client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: a.cfg.Node},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
			panic(fmt.Sprintf("binding %s: %v", pod.Name, err))
		}
		return
	}
	a.status(ctx, pod, func(p *corev1.Pod) {
		setCondition(p, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
			Message: "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."})
	})
}

// run runs a bound pod and reports its end. runCtx ends when the pod is
// deleted; the agent then removes it once the runtime stopped it.
func (a *Agent) run(ctx, runCtx context.Context, pod *corev1.Pod) {
	secrets := map[string]*corev1.Secret{}
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.Secret == nil {
				continue
			}
			got, err := a.cfg.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, s.Secret.Name, metav1.GetOptions{})
			if err != nil {
				a.finish(ctx, pod, Exit{Code: 1, Reason: "Error", Init: &Exit{Code: 1, Reason: "CreateContainerConfigError"}})
				return
			}
			secrets[s.Secret.Name] = got
		}
	}
	now := metav1.Now()
	if a.cfg.Pull != nil {
		for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
			if err := a.cfg.Pull(c.Image); err != nil {
				a.status(ctx, pod, func(p *corev1.Pod) {
					setCondition(p, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue})
					p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: c.Image,
						State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: err.Error()}}}}
				})
				<-runCtx.Done()
				a.mu.Lock()
				delete(a.running, pod.UID)
				a.mu.Unlock()
				if ctx.Err() == nil {
					a.confirmDeletion(ctx, pod)
				}
				return
			}
		}
	}
	a.status(ctx, pod, func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodRunning
		p.Status.StartTime = &now
		setCondition(p, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue})
		setCondition(p, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
		p.Status.InitContainerStatuses = nil
		for _, c := range p.Spec.InitContainers {
			p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}}})
		}
		p.Status.ContainerStatuses = nil
		for _, c := range p.Spec.Containers {
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image, Ready: true, Started: ptr(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}})
		}
	})
	exit := a.cfg.Runtime.Run(runCtx, pod, secrets)
	a.mu.Lock()
	delete(a.running, pod.UID)
	a.marked["ran:"+pod.UID] = true
	a.logs[pod.Namespace+"/"+pod.Name+"/"+pod.Spec.Containers[0].Name] = exit.Log
	a.mu.Unlock()
	if runCtx.Err() != nil && ctx.Err() == nil {
		a.confirmDeletion(ctx, pod)
		return
	}
	a.finish(ctx, pod, exit)
}

// finish writes a pod's end into its status.
func (a *Agent) finish(ctx context.Context, pod *corev1.Pod, exit Exit) {
	now := metav1.Now()
	term := func(e Exit) *corev1.ContainerStateTerminated {
		msg := e.Message
		if len(msg) > 4096 {
			msg = msg[:4096]
		}
		return &corev1.ContainerStateTerminated{ExitCode: e.Code, Reason: e.Reason, Message: string(msg), StartedAt: now, FinishedAt: now}
	}
	a.status(ctx, pod, func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodSucceeded
		if exit.Code != 0 || exit.Init != nil {
			p.Status.Phase = corev1.PodFailed
		}
		setCondition(p, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "PodCompleted"})
		if exit.Init != nil {
			for i := range p.Status.InitContainerStatuses {
				p.Status.InitContainerStatuses[i].State = corev1.ContainerState{Terminated: term(*exit.Init)}
			}
			return
		}
		for i := range p.Status.ContainerStatuses {
			p.Status.ContainerStatuses[i].Ready = false
			p.Status.ContainerStatuses[i].State = corev1.ContainerState{Terminated: term(exit)}
		}
	})
}

// confirmDeletion removes a deleted pod whose containers have stopped.
func (a *Agent) confirmDeletion(ctx context.Context, pod *corev1.Pod) {
	zero := int64(0)
	err := a.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
		panic(fmt.Sprintf("confirming the deletion of %s: %v", pod.Name, err))
	}
	a.mu.Lock()
	delete(a.logs, pod.Namespace+"/"+pod.Name+"/"+pod.Spec.Containers[0].Name)
	a.mu.Unlock()
}

// status changes a pod's status through the status subresource.
func (a *Agent) status(ctx context.Context, pod *corev1.Pod, change func(*corev1.Pod)) {
	pods := a.cfg.Client.CoreV1().Pods(pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != pod.UID {
			return nil
		}
		change(cur)
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		panic(fmt.Sprintf("status of %s: %v", pod.Name, err))
	}
}

// serveLog answers the API server's proxied log requests:
// /containerLogs/NAMESPACE/POD/CONTAINER, with limitBytes.
func (a *Agent) serveLog(w http.ResponseWriter, r *http.Request) {
	key, ok := strings.CutPrefix(r.URL.Path, "/containerLogs/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	a.mu.Lock()
	log, ok := a.logs[key]
	a.mu.Unlock()
	if !ok {
		http.Error(w, "no such container log", http.StatusNotFound)
		return
	}
	if n, err := strconv.ParseInt(r.URL.Query().Get("limitBytes"), 10, 64); err == nil && n < int64(len(log)) {
		log = log[:n]
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write(log)
}

func setCondition(p *corev1.Pod, c corev1.PodCondition) {
	c.LastTransitionTime = metav1.NewTime(time.Now())
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == c.Type {
			p.Status.Conditions[i] = c
			return
		}
	}
	p.Status.Conditions = append(p.Status.Conditions, c)
}

func ptr[T any](v T) *T { return &v }
