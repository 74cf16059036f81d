package kubernetes

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/podentry"
)

// Defaults of Config where it leaves a field zero.
const (
	// DefaultEphemeralStorage is a pod's ephemeral-storage request and
	// limit: the container's log (the result may travel in it) and gbpod.
	DefaultEphemeralStorage = 256 << 20
	// DefaultRunAsUser is the uid (and gid) of the grading containers.
	DefaultRunAsUser = 65534
	// DefaultScheduleTimeout bounds the wait for a node to take the pod.
	DefaultScheduleTimeout = time.Minute
	// DefaultStartTimeout bounds the time from a node taking the pod to its
	// grader running: pulling the images, gbpod's install.
	DefaultStartTimeout = 5 * time.Minute
)

// Names in the pod.
const (
	// GraderContainer is the main container's name: the grader, under gbpod.
	GraderContainer = "grader"
	// InstallContainer is the init container that installs gbpod.
	InstallContainer = "gbpod-install"
	// EntrypointPath is where EntrypointImage holds gbpod.
	EntrypointPath = "/usr/local/bin/gbpod"
	// TerminationMessagePath is where gbpod writes its report.
	TerminationMessagePath = "/dev/termination-log"
	// secretKey is the key of a job document part in its Secret.
	secretKey = "part"
	// binSize bounds the emptyDir gbpod is installed into.
	binSize = 64 << 20
)

// Config configures an Executor.
type Config struct {
	// Cluster is the namespace the pods run in, with its watch.
	Cluster *Cluster
	// Name is the executor's name in graderd's configuration, for the
	// executor.LabelExecutor label.
	Name string
	// Image is the grading image; Command the grader's argv in it; Env
	// its environment as KEY=value, beside executor.DefaultEnv.
	Image   string
	Command []string
	Env     []string
	// EntrypointImage holds gbpod at EntrypointPath: graderd's own image.
	EntrypointImage string
	// Limits bound each run (see the README for which hold on Kubernetes):
	// Memory (executor.DefaultMemory where zero; the /tmp and work
	// directory files count against it, being tmpfs), TmpSize, WorkSize,
	// OpenFiles, MaxStdout and MaxStderr (the defaults of
	// executor.Limits.WithDefaults). CPUTime and Pids must be zero: a pod
	// has neither.
	Limits executor.Limits
	// CPU is the CPU request and limit, as a Kubernetes quantity ("500m");
	// empty means executor.DefaultContainerCPUs.
	CPU string
	// EphemeralStorage is the ephemeral-storage request and limit in bytes;
	// 0 means DefaultEphemeralStorage.
	EphemeralStorage int64
	// NodeSelector, RuntimeClass (e.g. gvisor), ImagePullPolicy and
	// ImagePullSecrets go into the pod spec as they are.
	NodeSelector     map[string]string
	RuntimeClass     string
	ImagePullPolicy  string
	ImagePullSecrets []string
	// RunAsUser and RunAsGroup are the containers' uid and gid; 0 means
	// DefaultRunAsUser (root is never allowed).
	RunAsUser  int64
	RunAsGroup int64
	// ScheduleTimeout and StartTimeout bound a pod's scheduling and its
	// start; past either the run ends TEMPORARY.
	ScheduleTimeout time.Duration
	StartTimeout    time.Duration
	// KillGrace is the pod's termination grace: the time between SIGTERM
	// and SIGKILL when graderd stops it. 0 means executor.DefaultKillGrace.
	KillGrace time.Duration
	// Logger receives the executor's logs; nil discards them.
	Logger *slog.Logger
}

// Executor runs each job as one pod. Make one with New; Run is safe for
// concurrent use.
type Executor struct {
	cfg    Config
	limits executor.Limits
	cpu    resource.Quantity
	log    *slog.Logger
}

var _ executor.Executor = (*Executor)(nil)

// New checks cfg and fills in its defaults.
func New(cfg Config) (*Executor, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("kubernetes executor: no cluster")
	}
	switch {
	case cfg.Image == "":
		return nil, errors.New("image: missing; a kubernetes executor needs the grading image")
	case len(cfg.Command) == 0 || cfg.Command[0] == "":
		return nil, errors.New("command: missing; a kubernetes executor needs the grader's argv in the image, e.g. [/usr/local/bin/grade]")
	case cfg.EntrypointImage == "":
		return nil, errors.New("kubernetes.entrypoint_image: missing; name the image that holds gbpod at " + EntrypointPath + " (graderd's own)")
	case cfg.Limits.CPUTime != 0:
		return nil, errors.New("cpu_time: a pod has a CPU rate limit (cpus), not a CPU-time budget; leave cpu_time out (the job's timeout bounds CPU time to timeout × cpus)")
	case cfg.Limits.Pids != 0:
		return nil, errors.New("pids: a pod has no process limit of its own; the kubelet's podPidsLimit sets one for every pod of a node")
	case cfg.RunAsUser < 0 || cfg.RunAsGroup < 0:
		return nil, fmt.Errorf("user: %d:%d is not a uid and gid", cfg.RunAsUser, cfg.RunAsGroup)
	}
	if errs := validation.IsValidLabelValue(cfg.Name); len(errs) > 0 {
		return nil, fmt.Errorf("executor name %q cannot be a label value: %v", cfg.Name, errs)
	}
	for _, e := range cfg.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, fmt.Errorf("env: %q is not KEY=value", e)
		}
	}
	switch corev1.PullPolicy(cfg.ImagePullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return nil, fmt.Errorf("image_pull_policy: %q is not Always, IfNotPresent or Never", cfg.ImagePullPolicy)
	}
	cpu := *resource.NewMilliQuantity(int64(executor.DefaultContainerCPUs*1000), resource.DecimalSI)
	if cfg.CPU != "" {
		var err error
		if cpu, err = resource.ParseQuantity(cfg.CPU); err != nil || cpu.Sign() <= 0 {
			return nil, fmt.Errorf("cpu: %q is not a positive CPU quantity such as 500m or 2", cfg.CPU)
		}
	}
	l := cfg.Limits.WithDefaults()
	l.Memory = cmp.Or(l.Memory, executor.DefaultMemory)
	// A pod has no process limit of its own (the kubelet's podPidsLimit
	// is the node's): the grader is not told of one.
	l.Pids = 0
	cfg.EphemeralStorage = cmp.Or(cfg.EphemeralStorage, DefaultEphemeralStorage)
	cfg.RunAsUser = cmp.Or(cfg.RunAsUser, DefaultRunAsUser)
	cfg.RunAsGroup = cmp.Or(cfg.RunAsGroup, cfg.RunAsUser)
	cfg.ScheduleTimeout = cmp.Or(cfg.ScheduleTimeout, DefaultScheduleTimeout)
	cfg.StartTimeout = cmp.Or(cfg.StartTimeout, DefaultStartTimeout)
	cfg.KillGrace = cmp.Or(cfg.KillGrace, executor.DefaultKillGrace)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Executor{cfg: cfg, limits: l, cpu: cpu, log: log.With("executor", cfg.Name)}, nil
}

// Limits returns the limits each run gets, defaults filled in.
func (e *Executor) Limits() executor.Limits { return e.limits }

// secrets returns the Secrets that carry doc into pod name.
func (e *Executor) secrets(name string, job executor.Job, doc []byte) []*corev1.Secret {
	immutable := true
	var out []*corev1.Secret
	for i := 0; i == 0 || i*podentry.PartSize < len(doc); i++ {
		part := doc[i*podentry.PartSize : min((i+1)*podentry.PartSize, len(doc))]
		out = append(out, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, i), Labels: e.labels(job)},
			// Immutable: the kubelet need not watch it for changes.
			Immutable: &immutable,
			Type:      corev1.SecretTypeOpaque,
			Data:      map[string][]byte{secretKey: part},
		})
	}
	return out
}

func (e *Executor) labels(job executor.Job) map[string]string {
	l := executor.RunLabels(e.cfg.Cluster.server, e.cfg.Name, job)
	l["app.kubernetes.io/managed-by"] = "graderd"
	return l
}

// pod returns the pod of job, whose document (doc) travels in parts
// Secrets named name-0, name-1, ...
func (e *Executor) pod(name string, job executor.Job, doc []byte, parts int) *corev1.Pod {
	l := e.limits
	yes, no := true, false
	uid, gid := e.cfg.RunAsUser, e.cfg.RunAsGroup
	grace := int64(math.Ceil(e.cfg.KillGrace.Seconds()))
	// The kubelet's clock starts when it takes the pod, before it pulls
	// the images; graderd's own starts when the grader runs, and ends the
	// run at the job's timeout. This deadline stops the pod even when no
	// graderd is left to.
	var deadline *int64
	if job.Timeout > 0 {
		d := int64(math.Ceil((job.Timeout + e.cfg.StartTimeout + e.cfg.KillGrace).Seconds()))
		deadline = &d
	}
	h := sha256.Sum256(doc)
	args := append([]string{"run"}, podentry.Options{
		InputDir: podentry.InputDir, DocLen: int64(len(doc)), DocSHA256: hex.EncodeToString(h[:]),
		Report: TerminationMessagePath, MaxStdout: l.MaxStdout, MaxStderr: l.MaxStderr, OpenFiles: l.OpenFiles,
		CheckFull: []string{"/tmp", executor.SandboxPath}, KillGrace: e.cfg.KillGrace,
		Command: e.cfg.Command,
	}.Args()...)
	hardened := &corev1.SecurityContext{
		RunAsNonRoot:             &yes,
		RunAsUser:                &uid,
		RunAsGroup:               &gid,
		ReadOnlyRootFilesystem:   &yes,
		AllowPrivilegeEscalation: &no,
		Privileged:               &no,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	resources := corev1.ResourceRequirements{Limits: corev1.ResourceList{
		corev1.ResourceMemory:           *resource.NewQuantity(l.Memory, resource.BinarySI),
		corev1.ResourceCPU:              e.cpu,
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(e.cfg.EphemeralStorage, resource.BinarySI),
	}}
	resources.Requests = resources.Limits.DeepCopy()
	// gbpod's install is a copy of a small file; it asks for little, and
	// (as an init container) what it asks for is not added to the grader's.
	installResources := corev1.ResourceRequirements{Limits: corev1.ResourceList{
		corev1.ResourceMemory:           resource.MustParse("32Mi"),
		corev1.ResourceCPU:              resource.MustParse("100m"),
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(binSize, resource.BinarySI),
	}}
	installResources.Requests = installResources.Limits.DeepCopy()

	env := make([]corev1.EnvVar, 0, len(executor.DefaultEnv)+len(e.cfg.Env))
	seen := map[string]int{}
	for _, kv := range append(append([]string{}, executor.DefaultEnv...), e.cfg.Env...) {
		k, v, _ := strings.Cut(kv, "=")
		if i, ok := seen[k]; ok {
			env[i].Value = v
			continue
		}
		seen[k] = len(env)
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	var sources []corev1.VolumeProjection
	for i := range parts {
		sources = append(sources, corev1.VolumeProjection{Secret: &corev1.SecretProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: fmt.Sprintf("%s-%d", name, i)},
			Items:                []corev1.KeyToPath{{Key: secretKey, Path: podentry.PartName(i)}},
		}})
	}
	readable := int32(0o444)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: e.labels(job)},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			ActiveDeadlineSeconds:         deadline,
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			NodeSelector:                  e.cfg.NodeSelector,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				RunAsUser:      &uid,
				RunAsGroup:     &gid,
				FSGroup:        &gid,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			InitContainers: []corev1.Container{{
				Name:                     InstallContainer,
				Image:                    e.cfg.EntrypointImage,
				ImagePullPolicy:          corev1.PullPolicy(e.cfg.ImagePullPolicy),
				Command:                  []string{EntrypointPath, "install", podentry.BinDir},
				SecurityContext:          hardened,
				Resources:                installResources,
				VolumeMounts:             []corev1.VolumeMount{{Name: "gbpod", MountPath: podentry.BinDir}},
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
			Containers: []corev1.Container{{
				Name:                     GraderContainer,
				Image:                    e.cfg.Image,
				ImagePullPolicy:          corev1.PullPolicy(e.cfg.ImagePullPolicy),
				Command:                  []string{podentry.BinDir + "/" + podentry.Binary},
				Args:                     args,
				WorkingDir:               executor.SandboxPath,
				Env:                      env,
				SecurityContext:          hardened,
				Resources:                resources,
				TerminationMessagePath:   TerminationMessagePath,
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
				VolumeMounts: []corev1.VolumeMount{
					{Name: "gbpod", MountPath: podentry.BinDir, ReadOnly: true},
					{Name: "input", MountPath: podentry.InputDir, ReadOnly: true},
					{Name: "tmp", MountPath: "/tmp"},
					{Name: "work", MountPath: executor.SandboxPath},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "gbpod", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: resource.NewQuantity(binSize, resource.BinarySI)}}},
				{Name: "input", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources, DefaultMode: &readable}}},
				// In memory, as the exec executor's sandbox: files count
				// against the memory limit, and a full one is ENOSPC at
				// its size rather than an eviction seconds later.
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: resource.NewQuantity(l.TmpSize, resource.BinarySI)}}},
				{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: resource.NewQuantity(l.WorkSize, resource.BinarySI)}}},
			},
		},
	}
	if e.cfg.RuntimeClass != "" {
		pod.Spec.RuntimeClassName = &e.cfg.RuntimeClass
	}
	for _, s := range e.cfg.ImagePullSecrets {
		pod.Spec.ImagePullSecrets = append(pod.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	return pod
}

// podName is a fresh name for a run's pod: the lease, and random letters
// so that a pod of the same lease still terminating never collides.
func podName(job executor.Job, random string) string {
	return "gb-" + strconv.FormatInt(job.LeaseID, 10) + "-" + random
}
