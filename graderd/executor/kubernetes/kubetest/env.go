// Package kubetest runs the kubernetes executor's tests and benchmark
// against a real API server: controller-runtime's envtest starts
// kube-apiserver (built by scripts/kube-apiserver.sh) and Debian's etcd,
// and a node agent (agent.go) plays the scheduler and one kubelet. Only
// tests and bench import it.
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// Env is a running API server with its etcd.
type Env struct {
	env *envtest.Environment
	// Config is an administrator's (system:masters) client configuration.
	Config *rest.Config
	// Client is an administrator's client.
	Client clientset.Interface
}

// Assets returns the directory holding kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS, or the one scripts/kube-apiserver.sh builds and
// caches. It fails, saying what to do, when neither has them.
func Assets() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, checkAssets(dir)
	}
	script, err := findScript()
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script, "--print-dir")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s --print-dir: %v\n%s\nthe Kubernetes tests need kube-apiserver and etcd: run make kube-apiserver (and apt-get install etcd-server), or set KUBEBUILDER_ASSETS", script, err, stderr.String())
	}
	dir := strings.TrimSpace(stdout.String())
	return dir, checkAssets(dir)
}

func checkAssets(dir string) error {
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Errorf("KUBEBUILDER_ASSETS %s has no %s: run make kube-apiserver (and apt-get install etcd-server)", dir, b)
		}
	}
	return nil
}

// findScript finds scripts/kube-apiserver.sh above the working directory
// (go test runs in the package's directory).
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "scripts", "kube-apiserver.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("scripts/kube-apiserver.sh not found above the working directory; set KUBEBUILDER_ASSETS to a directory holding kube-apiserver and etcd")
		}
		dir = parent
	}
}

// Start starts an API server and its etcd. Stop stops them.
func Start() (*Env, error) {
	dir, err := Assets()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{BinaryAssetsDirectory: dir, ControlPlaneStartTimeout: 2 * time.Minute, ControlPlaneStopTimeout: time.Minute}
	// The API server reaches the node agent's log endpoint at the address
	// its Node object gives; the agent's certificate is its own.
	env.ControlPlane.GetAPIServer().Configure().
		Set("kubelet-preferred-address-types", "InternalIP").
		Set("enable-admission-plugins", "PodSecurity")
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", dir, err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := clientset.NewForConfig(cfg)
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{env: env, Config: cfg, Client: client}, nil
}

// Stop stops the API server and etcd.
func (e *Env) Stop() error { return e.env.Stop() }

// UserConfig returns a client configuration that authenticates as user,
// in groups, with a client certificate: what RBAC then allows is only what
// the cluster's roles grant that name. A ServiceAccount's user name is
// system:serviceaccount:NAMESPACE:NAME.
func (e *Env) UserConfig(user string, groups ...string) (*rest.Config, error) {
	u, err := e.env.AddUser(envtest.User{Name: user, Groups: groups}, e.Config)
	if err != nil {
		return nil, err
	}
	cfg := u.Config()
	cfg.QPS, cfg.Burst = 500, 1000
	return cfg, nil
}

// Namespace creates namespace name, enforcing Pod Security level (e.g.
// "restricted") when level is not empty, as deploy/kubernetes labels it.
func (e *Env) Namespace(ctx context.Context, name, level string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	if level != "" {
		ns.Labels["pod-security.kubernetes.io/enforce"] = level
	}
	_, err := e.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// Shared starts one Env for a test binary and returns it to every caller;
// TestMain calls StopShared. A test that cannot have one fails.
func Shared(t testing.TB) *Env {
	t.Helper()
	testutil.Slow(t, "starts kube-apiserver and etcd")
	shared.once.Do(func() { shared.env, shared.err = Start() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.env
}

var shared struct {
	once sync.Once
	env  *Env
	err  error
}

// StopShared stops the Env that Shared started, if any.
func StopShared() {
	if shared.env != nil {
		_ = shared.env.Stop()
	}
}
