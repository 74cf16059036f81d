package kubetest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Docker is a Runtime that runs a pod's containers in the Docker engine
// (the docker command and its default daemon), translating the pod spec
// as a kubelet's container runtime would: the user, the read-only root,
// the dropped capabilities, no_new_privs (allowPrivilegeEscalation false),
// Docker's default seccomp profile (RuntimeDefault), the memory and CPU
// limits, memory-backed emptyDirs as tmpfs of their sizeLimit, other
// emptyDirs and the projected Secrets as directories, the termination
// message file. The network is "none", as the namespace's NetworkPolicy
// makes it. Images maps the pod's image names to local images.
type Docker struct {
	Images map[string]string
}

// CheckDocker fails, saying what to do, when the Docker engine cannot be
// used.
func CheckDocker() error {
	out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	if err != nil {
		return fmt.Errorf("the Docker engine is needed for the tests that run real pods: docker info: %v: %s (apt-get install docker.io; start dockerd)", err, out)
	}
	return nil
}

// ImportImage makes the local image name from files, a map of paths in
// the image to files on the host (made executable), and the empty
// directories dirs (mode 1777: Docker's tmpfs takes its mode from the
// image's directory, where a kubelet makes emptyDirs writable for all),
// with docker import: no registry, no base image.
func ImportImage(name string, files map[string]string, dirs []string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o1777}); err != nil {
			return err
		}
	}
	for path, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(path, "/"), Mode: 0o755, Size: int64(len(b))}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	cmd := exec.Command("docker", "import", "-", name)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("docker import %s: %v: %s", name, err, out)
	}
	return nil
}

// Run implements Runtime.
func (d Docker) Run(ctx context.Context, pod *corev1.Pod, secrets map[string]*corev1.Secret) Exit {
	dir, err := os.MkdirTemp("", "gbk8s-pod-")
	if err != nil {
		return failed(err)
	}
	defer os.RemoveAll(dir)
	vols, err := d.volumes(dir, pod, secrets)
	if err != nil {
		return failed(err)
	}
	for i, c := range pod.Spec.InitContainers {
		e := d.container(ctx, fmt.Sprintf("%s-init-%d", pod.Name, i), pod, c, vols, dir)
		if e.Code != 0 {
			return Exit{Init: &e}
		}
	}
	return d.container(ctx, pod.Name, pod, pod.Spec.Containers[0], vols, dir)
}

func failed(err error) Exit {
	return Exit{Code: 128, Reason: "Error", Log: []byte(err.Error())}
}

// volumes makes the host side of each volume: a directory, or for a
// memory-backed emptyDir the tmpfs options ("tmpfs:SIZE").
func (d Docker) volumes(dir string, pod *corev1.Pod, secrets map[string]*corev1.Secret) (map[string]string, error) {
	vols := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory:
			vols[v.Name] = "tmpfs:" + strconv.FormatInt(v.EmptyDir.SizeLimit.Value(), 10)
		case v.EmptyDir != nil:
			p := filepath.Join(dir, v.Name)
			if err := os.Mkdir(p, 0o777); err != nil {
				return nil, err
			}
			// The kubelet makes emptyDirs writable for everyone.
			if err := os.Chmod(p, 0o777); err != nil {
				return nil, err
			}
			vols[v.Name] = p
		case v.Projected != nil:
			p := filepath.Join(dir, v.Name)
			if err := os.Mkdir(p, 0o755); err != nil {
				return nil, err
			}
			for _, s := range v.Projected.Sources {
				for _, item := range s.Secret.Items {
					sec := secrets[s.Secret.Name]
					if sec == nil {
						return nil, fmt.Errorf("secret %s missing", s.Secret.Name)
					}
					if err := os.WriteFile(filepath.Join(p, item.Path), sec.Data[item.Key], 0o444); err != nil {
						return nil, err
					}
				}
			}
			vols[v.Name] = p
		default:
			return nil, fmt.Errorf("volume %s: the Docker runtime knows emptyDir and projected Secrets only", v.Name)
		}
	}
	return vols, nil
}

// container runs one container to its end.
func (d Docker) container(ctx context.Context, name string, pod *corev1.Pod, c corev1.Container, vols map[string]string, dir string) Exit {
	image := c.Image
	if d.Images[image] != "" {
		image = d.Images[image]
	}
	term := filepath.Join(dir, name+".termination-log")
	if err := os.WriteFile(term, nil, 0o666); err != nil {
		return failed(err)
	}
	if err := os.Chmod(term, 0o666); err != nil {
		return failed(err)
	}
	args := []string{"run", "--name", name, "--network", "none", "--pull", "never"}
	psc, sc := pod.Spec.SecurityContext, c.SecurityContext
	if sc != nil && sc.RunAsUser != nil {
		gid := *sc.RunAsUser
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
		args = append(args, "--user", fmt.Sprintf("%d:%d", *sc.RunAsUser, gid))
	} else if psc != nil && psc.RunAsUser != nil {
		args = append(args, "--user", strconv.FormatInt(*psc.RunAsUser, 10))
	}
	if sc != nil {
		if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
			args = append(args, "--read-only")
		}
		if sc.Capabilities != nil {
			for _, cap := range sc.Capabilities.Drop {
				args = append(args, "--cap-drop", string(cap))
			}
		}
		if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
			args = append(args, "--security-opt", "no-new-privileges")
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				args = append(args, "--security-opt", "seccomp=unconfined")
			}
		}
	}
	if m := c.Resources.Limits.Memory(); !m.IsZero() {
		args = append(args, "--memory", strconv.FormatInt(m.Value(), 10), "--memory-swap", strconv.FormatInt(m.Value(), 10))
	}
	if cpu := c.Resources.Limits.Cpu(); !cpu.IsZero() {
		args = append(args, "--cpus", strconv.FormatFloat(float64(cpu.MilliValue())/1000, 'f', 3, 64))
	}
	for _, m := range c.VolumeMounts {
		host := vols[m.Name]
		if size, ok := strings.CutPrefix(host, "tmpfs:"); ok {
			args = append(args, "--tmpfs", m.MountPath+":rw,exec,size="+size+",mode=1777")
			continue
		}
		spec := host + ":" + m.MountPath
		if m.ReadOnly {
			spec += ":ro"
		}
		args = append(args, "-v", spec)
	}
	args = append(args, "-v", term+":"+cmpOr(c.TerminationMessagePath, "/dev/termination-log"))
	if c.WorkingDir != "" {
		args = append(args, "-w", c.WorkingDir)
	}
	for _, e := range c.Env {
		args = append(args, "-e", e.Name+"="+e.Value)
	}
	cmdline := append(append([]string{}, c.Command...), c.Args...)
	args = append(args, "--entrypoint", cmdline[0], image)
	args = append(args, cmdline[1:]...)

	var log bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return failed(err)
	}
	defer func() { _ = exec.Command("docker", "rm", "-f", name).Run() }()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		grace := int64(30)
		if pod.Spec.TerminationGracePeriodSeconds != nil {
			grace = *pod.Spec.TerminationGracePeriodSeconds
		}
		_ = exec.Command("docker", "stop", "-t", strconv.FormatInt(grace, 10), name).Run()
		select {
		case err = <-done:
		case <-time.After(time.Duration(grace)*time.Second + 30*time.Second):
			_ = cmd.Process.Kill()
			err = <-done
		}
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return failed(err)
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	if out, _ := exec.Command("docker", "inspect", "-f", "{{.State.OOMKilled}}", name).Output(); strings.TrimSpace(string(out)) == "true" {
		reason = "OOMKilled"
	}
	msg, _ := os.ReadFile(term)
	return Exit{Code: int32(code), Reason: reason, Message: msg, Log: log.Bytes()}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
