package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/podentry"
)

// stopWait bounds the wait for a deleted pod to be gone beyond its grace:
// a node that went away never confirms, and the slot must come back.
const stopWait = 30 * time.Second

// run is one job's pod, as the watch reports it.
type run struct {
	job    executor.Job
	name   string
	notify chan struct{}

	mu   sync.Mutex
	pod  *corev1.Pod
	gone bool
}

// update records the latest state of the run's pod.
func (r *run) update(pod *corev1.Pod, gone bool) {
	r.mu.Lock()
	r.pod, r.gone = pod, r.gone || gone
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *run) latest() (*corev1.Pod, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pod, r.gone
}

// Run runs job as a pod and returns how it ended. It returns once the
// pod's grader has stopped; the pod and its Secrets are deleted.
func (e *Executor) Run(ctx context.Context, job executor.Job) (res executor.Result) {
	log := e.log.With("job_id", job.JobID, "lease_id", job.LeaseID)
	defer func() {
		if p := recover(); p != nil {
			log.Error("executor panicked", "panic", p)
			res = executor.Temporary(fmt.Sprintf("internal error in graderd's kubernetes executor: %v", p))
		}
	}()
	if ctx.Err() != nil {
		return executor.Temporary(executor.ErrorCancelled)
	}
	doc, err := executor.JobDocument(job, e.limits)
	if err != nil {
		return executor.Fatal(err.Error())
	}
	c := e.cfg.Cluster
	if err := c.waitSynced(ctx, e.cfg.StartTimeout); err != nil {
		if ctx.Err() != nil {
			return executor.Temporary(executor.ErrorCancelled)
		}
		return executor.Temporary(err.Error())
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	r := &run{job: job, name: podName(job, hex.EncodeToString(suffix[:])), notify: make(chan struct{}, 1)}
	c.add(r)
	defer c.remove(r)
	lease := fmt.Sprint(job.LeaseID)

	// The calls that set the run up are not the job's to cancel halfway:
	// a cancel is handled once the pod exists, by deleting it.
	setup, cancelSetup := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancelSetup()
	secrets := e.secrets(r.name, job, doc)
	for _, s := range secrets {
		if _, err := c.client.CoreV1().Secrets(c.ns).Create(setup, s, metav1.CreateOptions{}); err != nil {
			c.deleteSecrets(setup, c.leaseSelector(lease))
			return executor.Temporary(fmt.Sprintf("cannot create the Secret that carries the job document into the pod: %v", err))
		}
	}
	created, err := c.client.CoreV1().Pods(c.ns).Create(setup, e.pod(r.name, job, doc, len(secrets)), metav1.CreateOptions{})
	if err != nil {
		c.deleteSecrets(setup, c.leaseSelector(lease))
		return executor.Temporary(fmt.Sprintf("the API server refused the grading pod: %v", err))
	}
	log = log.With("pod", r.name)
	log.Debug("pod created")
	defer func() {
		cleanup, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.deleteSecrets(cleanup, c.leaseSelector(lease))
	}()
	return e.follow(ctx, r, created.UID, log)
}

// follow waits for the pod's end, or ends it, and returns the run's result.
func (e *Executor) follow(ctx context.Context, r *run, uid types.UID, log *slog.Logger) executor.Result {
	created := time.Now()
	schedule := time.NewTimer(e.cfg.ScheduleTimeout)
	defer schedule.Stop()
	var start, timeout <-chan time.Time
	var ranAt time.Time
	var last progress
	stop := func(why executor.Result) executor.Result {
		e.stopPod(r, uid, log)
		return why
	}
	for {
		select {
		case <-r.notify:
			pod, gone := r.latest()
			p := e.progressOf(pod, gone)
			if p.ended {
				if p.term != nil {
					res := e.resultOf(pod, p.term)
					// The grader has ended: nothing is left to wait for.
					e.deleteEnded(r, uid)
					return res
				}
				if gone {
					return p.res
				}
				return stop(p.res)
			}
			if p.scheduled && !last.scheduled {
				schedule.Stop()
				t := time.NewTimer(e.cfg.StartTimeout)
				defer t.Stop()
				start = t.C
			}
			if p.running && !last.running {
				start = nil
				ranAt = time.Now()
				if r.job.Timeout > 0 {
					t := time.NewTimer(r.job.Timeout)
					defer t.Stop()
					timeout = t.C
				}
			}
			last = p
		case <-schedule.C:
			if last.scheduled {
				continue
			}
			why := "no scheduler assigned it a node"
			if last.unschedulable != "" {
				why = last.unschedulable
			}
			return stop(executor.Temporary(fmt.Sprintf("unschedulable: no node took the grading pod within %v: %s", e.cfg.ScheduleTimeout, why)))
		case <-start:
			why := ""
			if last.waiting != "" {
				why = ": " + last.waiting
			}
			return stop(executor.Temporary(fmt.Sprintf("the grading pod did not start within %v of being scheduled%s", e.cfg.StartTimeout, why)))
		case <-timeout:
			// The pod may have ended meanwhile; its own end wins.
			if pod, gone := r.latest(); !gone {
				if p := e.progressOf(pod, false); p.ended && p.term != nil {
					res := e.resultOf(pod, p.term)
					e.deleteEnded(r, uid)
					return res
				}
			}
			res := executor.LimitResult(executor.LimitWallTime, e.limits, r.job.Timeout, "")
			res.Duration = time.Since(ranAt)
			res.Usage.WallTime = res.Duration
			return stop(res)
		case <-ctx.Done():
			log.Debug("run cancelled; deleting its pod", "after", time.Since(created))
			return stop(executor.Temporary(executor.ErrorCancelled))
		}
	}
}

// deleteEnded deletes the pod of a run whose grader has ended, without
// waiting: nothing of it runs any more.
func (e *Executor) deleteEnded(r *run, uid types.UID) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.cfg.Cluster.deletePod(ctx, r.name, uid, 1)
}

// stopPod deletes the run's pod, its grader getting the kill grace, and
// waits until it is gone, at most the grace and stopWait.
func (e *Executor) stopPod(r *run, uid types.UID, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.KillGrace+stopWait)
	defer cancel()
	e.cfg.Cluster.deletePod(ctx, r.name, uid, int64(e.cfg.KillGrace.Seconds()+0.999))
	for {
		if _, gone := r.latest(); gone {
			return
		}
		select {
		case <-r.notify:
		case <-ctx.Done():
			log.Warn("a deleted grading pod is not gone; its node may be unreachable", "waited", e.cfg.KillGrace+stopWait)
			return
		}
	}
}

// progress is how far a pod got.
type progress struct {
	scheduled bool
	running   bool
	ended     bool
	// term is the grader container's end, when the run ended with it;
	// else res says how the run ended.
	term *corev1.ContainerStateTerminated
	res  executor.Result
	// unschedulable and waiting say why it has not got further, for a
	// timeout's message.
	unschedulable string
	waiting       string
}

// Waiting reasons of a container that will not start by itself.
var cannotStart = map[string]string{
	"ErrImagePull":               "image pull failed",
	"ImagePullBackOff":           "image pull failed",
	"InvalidImageName":           "image pull failed",
	"ErrImageNeverPull":          "image pull failed",
	"CreateContainerConfigError": "cannot create the container",
	"CreateContainerError":       "cannot create the container",
	"RunContainerError":          "cannot start the container",
}

// progressOf reads a pod's state. gone says the pod was deleted.
func (e *Executor) progressOf(pod *corev1.Pod, gone bool) progress {
	var p progress
	if pod == nil {
		return p
	}
	p.scheduled = pod.Spec.NodeName != ""
	for _, c := range pod.Status.Conditions {
		switch {
		case c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable:
			p.unschedulable = c.Message
		case c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue:
			p.ended = true
			p.res = executor.Temporary(fmt.Sprintf("the grading pod was disrupted (%s): %s", c.Reason, c.Message))
		}
	}
	// The pod's own end comes first: an evicted pod's grader was killed
	// too, and its exit says nothing of the grader.
	if pod.Status.Phase == corev1.PodFailed {
		switch pod.Status.Reason {
		case "Evicted":
			p.ended = true
			msg := pod.Status.Message
			if strings.Contains(msg, "EmptyDir") || strings.Contains(msg, "ephemeral") {
				p.res = executor.LimitResult(executor.LimitDisk, e.limits, 0, "ephemeral storage: "+msg)
			} else {
				p.res = executor.Temporary("evicted: the node evicted the grading pod: " + msg)
			}
			return p
		case "DeadlineExceeded":
			p.ended = true
			p.res = executor.LimitResult(executor.LimitWallTime, e.limits, time.Duration(deref(pod.Spec.ActiveDeadlineSeconds))*time.Second, "")
			p.res.Error += " (the kubelet's activeDeadlineSeconds, which counts from the pod's start on its node)"
			return p
		}
	}
	if p.ended {
		return p
	}
	for _, s := range pod.Status.InitContainerStatuses {
		if t := s.State.Terminated; t != nil && t.ExitCode != 0 {
			p.ended = true
			p.res = executor.Temporary(fmt.Sprintf("gbpod's install (init container, image %s) failed: exit code %d, %s %s", s.Image, t.ExitCode, t.Reason, strings.TrimSpace(t.Message)))
			return p
		}
		if w := s.State.Waiting; w != nil {
			if what, bad := cannotStart[w.Reason]; bad {
				p.ended = true
				p.res = executor.Temporary(fmt.Sprintf("%s: init container %s (image %s): %s: %s", what, s.Name, s.Image, w.Reason, w.Message))
				return p
			}
			p.waiting = w.Reason + " " + w.Message
		}
	}
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name != GraderContainer {
			continue
		}
		switch {
		case s.State.Terminated != nil:
			p.scheduled, p.running, p.ended, p.term = true, true, true, s.State.Terminated
			return p
		case s.State.Running != nil:
			p.scheduled, p.running = true, true
		case s.State.Waiting != nil:
			w := s.State.Waiting
			if what, bad := cannotStart[w.Reason]; bad {
				p.ended = true
				p.res = executor.Temporary(fmt.Sprintf("%s: container %s (image %s): %s: %s", what, s.Name, s.Image, w.Reason, w.Message))
				return p
			}
			if w.Reason != "" {
				p.waiting = strings.TrimSpace(w.Reason + " " + w.Message)
			}
		}
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		p.ended = true
		p.res = executor.Temporary(fmt.Sprintf("the grading pod ended (%s %s: %s) without its grader's status", pod.Status.Phase, pod.Status.Reason, pod.Status.Message))
		return p
	}
	if gone || pod.DeletionTimestamp != nil {
		// Not by graderd: its own deletions end the run first.
		p.ended = true
		p.res = executor.Temporary("the grading pod was deleted by someone else (an operator, a drain, the node going away) before its grader finished")
	}
	return p
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// resultOf maps the grader container's end to the run's result by the
// exec convention, from gbpod's report and, when the report could not hold
// them, the container's log.
func (e *Executor) resultOf(pod *corev1.Pod, term *corev1.ContainerStateTerminated) executor.Result {
	rep, err := podentry.ParseReport([]byte(term.Message))
	if err != nil {
		if term.Reason == "OOMKilled" {
			return executor.LimitResult(executor.LimitMemory, e.limits, 0, "")
		}
		return executor.Temporary(fmt.Sprintf("the grader's container ended (exit code %d, %s) without gbpod's report: %v", term.ExitCode, term.Reason, err))
	}
	if rep.Error != "" {
		return executor.Temporary("gbpod could not run the grader: " + rep.Error)
	}
	log, result := []byte(rep.LogTail), rep.Result
	if !rep.InlineResult() || !rep.LogComplete() {
		full, err := e.readLog(pod, rep)
		if err == nil {
			log, result, err = podentry.SplitLog(rep, full)
		}
		if err != nil {
			if !rep.InlineResult() {
				return executor.Temporary(fmt.Sprintf("the result (%d bytes) was too large for the termination message (%d bytes) and the container's log did not yield it: %v", rep.ResultLen, podentry.MaxReport, err))
			}
			log = fmt.Appendf(nil, "[graderd could not read the grader's log (%v); here are its last %d of %d bytes]\n%s", err, len(rep.LogTail), rep.LogLen, rep.LogTail)
			result = rep.Result
		}
	}

	var res executor.Result
	failed := rep.Exit != 0 || rep.Signal != 0
	switch {
	case rep.StdoutOver:
		res = executor.LimitResult(executor.LimitOutput, e.limits, 0, "")
	case failed && term.Reason == "OOMKilled":
		res = executor.LimitResult(executor.LimitMemory, e.limits, 0, "")
	case failed && rep.Full != "":
		res = executor.LimitResult(executor.LimitDisk, e.limits, 0, rep.Full)
	case rep.Signal != 0:
		sig := syscall.Signal(rep.Signal)
		res = executor.Temporary(fmt.Sprintf("grader was killed by signal %d (%v)", int(sig), sig))
	default:
		res = executor.ExitResult(rep.Exit, result, string(log))
	}
	if res.Limit != executor.LimitNone && rep.Exit == 1 {
		res.Result = executor.JSONOrNil(result)
	}
	res.Log = strings.ToValidUTF8(string(log), "\uFFFD")
	res.Usage = executor.Usage{CPUTime: time.Duration(rep.CPU), PeakMemory: rep.MaxRSS, WallTime: time.Duration(rep.Wall)}
	res.Duration = res.Usage.WallTime
	return res
}

// readLog reads the grader container's log, as much as gbpod wrote.
func (e *Executor) readLog(pod *corev1.Pod, rep podentry.Report) ([]byte, error) {
	limit := int64(rep.LogLen) + int64(len("\n"+podentry.TrailerPrefix+"\n")+base64.StdEncoding.EncodedLen(rep.ResultLen)) + 1
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := e.cfg.Cluster
	return c.client.CoreV1().Pods(c.ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: GraderContainer, LimitBytes: &limit}).DoRaw(ctx)
}
