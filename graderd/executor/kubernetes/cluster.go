// Package kubernetes is graderd's kubernetes executor: each job runs as one
// Pod in a namespace of an existing cluster, by the exec convention, with
// gbpod (package podentry) as the pod's entrypoint. It is the only package
// of graderd that uses client-go.
//
// A Cluster is graderd's connection to one namespace: one watch of the pods
// labelled with this server's name, shared by its executors, which both
// follows the runs in flight and deletes every other pod of the server
// (left by a graderd that crashed, or whose run graderd no longer holds).
// An Executor is one configured executor: the pod template and the run.
package kubernetes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gradebroker/gradebroker/graderd/executor"
)

// RESTConfig returns the client configuration of graderd's cluster, by
// client-go's conventions: the pod's own ServiceAccount when kubeconfig is
// empty (graderd runs in the cluster), else the kubeconfig file and its
// context (its current one when context is empty).
func RESTConfig(kubeconfig, context string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no in-cluster Kubernetes configuration (%v): outside a cluster, name a kubeconfig file (kubernetes.kubeconfig, flag --kubeconfig)", err)
		}
	} else {
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
		overrides := &clientcmd.ConfigOverrides{CurrentContext: context}
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	}
	// client-go's default of 5 requests a second would make graderd's own
	// client the bottleneck of a busy server: each job costs a few calls.
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "graderd"
	return cfg, nil
}

// ClusterConfig configures a Cluster.
type ClusterConfig struct {
	// Client talks to the API server; nil means one made from Kubeconfig
	// and Context by RESTConfig.
	Client clientset.Interface
	// Kubeconfig and Context: see RESTConfig.
	Kubeconfig string
	Context    string
	// Namespace is where the grading pods and their Secrets go.
	Namespace string
	// Server is this graderd's name (its certificate's common name); pods
	// carry it in their executor.LabelServer label. Every graderd sharing
	// a namespace needs its own: each deletes the others' pods of its name.
	Server string
	// Logger receives the cluster's logs; nil discards them.
	Logger *slog.Logger
}

// Cluster is graderd's connection to one namespace. Make one with
// NewCluster, Start it before running jobs and Stop it at the end.
type Cluster struct {
	client clientset.Interface
	ns     string
	server string // the label value
	log    *slog.Logger

	selector string
	informer cache.SharedIndexInformer
	synced   chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}

	mu       sync.Mutex
	runs     map[string]*run    // in flight, by pod name
	deleting map[types.UID]bool // asked to be deleted, until the watch sees them go
}

// NewCluster makes a Cluster; it contacts nothing until Start.
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Namespace == "" || cfg.Server == "" {
		return nil, errors.New("kubernetes: a cluster needs a namespace and the server's name")
	}
	if cfg.Client == nil {
		rc, err := RESTConfig(cfg.Kubeconfig, cfg.Context)
		if err != nil {
			return nil, err
		}
		if cfg.Client, err = clientset.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
	}
	if errs := validation.IsDNS1123Label(cfg.Namespace); len(errs) > 0 {
		return nil, fmt.Errorf("kubernetes.namespace: %q is not a namespace name: %v", cfg.Namespace, errs)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	server := LabelValue(cfg.Server)
	return &Cluster{
		client:   cfg.Client,
		ns:       cfg.Namespace,
		server:   server,
		log:      log.With("namespace", cfg.Namespace),
		selector: labels.Set{executor.LabelServer: server}.String(),
		synced:   make(chan struct{}),
		done:     make(chan struct{}),
		runs:     make(map[string]*run),
		deleting: make(map[types.UID]bool),
	}, nil
}

// LabelValue returns name as a label value: itself when it is one, else
// "h-" and the start of its SHA-256 (label values are at most 63 letters,
// digits, '-', '_' and '.').
func LabelValue(name string) string {
	if len(validation.IsValidLabelValue(name)) == 0 && name != "" {
		return name
	}
	h := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(h[:16])
}

// Namespace is the namespace of the cluster's pods.
func (c *Cluster) Namespace() string { return c.ns }

// Start starts watching the server's pods and returns at once; the first
// listing deletes every pod and Secret a previous graderd of this server
// left (none of their runs is in flight yet), and runs wait for it. The
// watch ends with ctx or Stop.
func (c *Cluster) Start(ctx context.Context) {
	ctx, c.cancel = context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(c.client, resync,
		informers.WithNamespace(c.ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = c.selector }))
	c.informer = factory.Core().V1().Pods().Informer()
	_, _ = c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.observe(obj, false) },
		UpdateFunc: func(_, obj any) { c.observe(obj, false) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			c.observe(obj, true)
		},
	})
	go func() {
		defer close(c.done)
		go c.informer.Run(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
			return
		}
		// Secrets whose pods are gone (a crash between the two calls)
		// are not in the pod watch: clear every Secret of the server
		// that no run in flight owns. None is in flight yet.
		c.deleteSecrets(ctx, c.orphanSecretSelector())
		close(c.synced)
		<-ctx.Done()
	}()
}

// Stop ends the watch. Runs in flight get no more news; stop them first.
func (c *Cluster) Stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
}

// waitSynced waits for the first listing, at most limit.
func (c *Cluster) waitSynced(ctx context.Context, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-c.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		if c.cancel == nil {
			return errors.New("graderd never started its watch of the cluster's pods")
		}
		return fmt.Errorf("graderd could not list its pods in namespace %s within %v: is the API server reachable, and may graderd list pods there?", c.ns, limit)
	}
}

// observe takes one event of the watch: news for a run in flight, or a pod
// of this server that no run holds, which it deletes.
func (c *Cluster) observe(obj any, gone bool) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	c.mu.Lock()
	if gone {
		delete(c.deleting, pod.UID)
	}
	r := c.runs[pod.Name]
	if r != nil {
		c.mu.Unlock()
		r.update(pod, gone)
		return
	}
	if gone || c.deleting[pod.UID] {
		c.mu.Unlock()
		return
	}
	c.deleting[pod.UID] = true
	c.mu.Unlock()
	c.log.Warn("deleting a grading pod whose lease this graderd does not hold (left by a graderd that stopped, or a run that ended)",
		"pod", pod.Name, "job_id", pod.Labels[executor.LabelJob], "lease_id", pod.Labels[executor.LabelLease])
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.deletePod(ctx, pod.Name, pod.UID, reapGrace)
		if lease := pod.Labels[executor.LabelLease]; lease != "" {
			c.deleteSecrets(ctx, c.leaseSelector(lease))
		}
	}()
}

// resync is how often the watch goes over every pod it knows again, so that
// a stray pod whose deletion failed is tried again even if nothing about it
// changes.
const resync = 5 * time.Minute

// reapGrace is the grace, in seconds, of a stray pod's grader.
const reapGrace = 2

// deletePod deletes a pod, the grader getting grace seconds to stop (at
// least one: zero would be a forced deletion, which forgets the pod while
// its containers may still run on the node). Errors are logged, and the
// watch tries again while the pod is there.
func (c *Cluster) deletePod(ctx context.Context, name string, uid types.UID, grace int64) {
	grace = max(grace, 1)
	c.mu.Lock()
	c.deleting[uid] = true
	c.mu.Unlock()
	err := c.client.CoreV1().Pods(c.ns).Delete(ctx, name, metav1.DeleteOptions{
		GracePeriodSeconds: &grace,
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		c.mu.Lock()
		delete(c.deleting, uid)
		c.mu.Unlock()
		c.log.Warn("cannot delete a grading pod; graderd deletes it when its watch next sees it", "pod", name, "err", err)
	}
}

// deleteSecrets deletes the Secrets the selector picks, in one call.
func (c *Cluster) deleteSecrets(ctx context.Context, selector string) {
	err := c.client.CoreV1().Secrets(c.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		c.log.Warn("cannot delete the job documents' Secrets; the next start of graderd deletes them", "selector", selector, "err", err)
	}
}

func (c *Cluster) leaseSelector(lease string) string {
	return labels.Set{executor.LabelServer: c.server, executor.LabelLease: lease}.String()
}

// orphanSecretSelector picks the server's Secrets of no run in flight.
func (c *Cluster) orphanSecretSelector() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	sel := executor.LabelServer + "=" + c.server
	if len(c.runs) > 0 {
		leases := ""
		for _, r := range c.runs {
			if leases != "" {
				leases += ","
			}
			leases += strconv.FormatInt(r.job.LeaseID, 10)
		}
		sel += "," + executor.LabelLease + " notin (" + leases + ")"
	}
	return sel
}

// add registers a run before its pod exists, so that the watch never takes
// the new pod for a stray one.
func (c *Cluster) add(r *run) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs[r.name] = r
}

// remove forgets a run; a pod of it that is still there is a stray from
// now on.
func (c *Cluster) remove(r *run) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.runs, r.name)
}

// InFlight is the number of runs whose pods graderd holds.
func (c *Cluster) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.runs)
}
