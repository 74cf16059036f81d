package docker

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"

	"github.com/gradebroker/gradebroker/graderd/executor"
)

// The hardened profile of a grader's or a student's container, the same
// knobs as the exec executor's sandbox in the engine's terms: no network
// (NetworkMode none, or the run's own namespace with only a loopback),
// a read-only root file system, size-limited tmpfs file systems for /tmp,
// the working directory and each VOLUME of the image (Engine.create), no
// capabilities, no_new_privs, the engine's
// default seccomp profile (graderd refuses an engine without seccomp), a
// non-root user, and cgroup limits for all the container's processes
// together: pids, memory with swap equal to memory (no swap), a CPU quota,
// and the per-process open-file limit.

// DefaultUser is the user and group hardened containers run as when their
// executor names none: nobody, which no image's files belong to.
const DefaultUser = "65534:65534"

// WorkDir is the working directory (and HOME) of a grader's container, a
// tmpfs of Limits.WorkSize, as in the sandbox.
const WorkDir = executor.SandboxPath

// Mount is a host path shown read-only in a container.
type Mount struct {
	// Source is the host path, Target the path in the container.
	Source, Target string
}

// ParseMount reads "HOST:CONTAINER" (or one path for both).
func ParseMount(s string) (Mount, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok {
		dst = src
	}
	if !strings.HasPrefix(src, "/") || !strings.HasPrefix(dst, "/") {
		return Mount{}, fmt.Errorf("%q is not HOST:CONTAINER with absolute paths", s)
	}
	return Mount{Source: src, Target: dst}, nil
}

// ParseUser checks a container's or a pod's user: numeric "uid:gid" (with
// a bare uid the engine would pick the image's group for it, or root's),
// never root (uid 0 or gid 0), so that the work directory can be given to
// it before the image is known.
func ParseUser(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(s, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	switch {
	case !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0:
		return 0, 0, fmt.Errorf("%q is not a numeric uid:gid such as %s", s, DefaultUser)
	case uid == 0 || gid == 0:
		return 0, 0, fmt.Errorf("%q is root; containers never run as root", s)
	}
	return uid, gid, nil
}

// profile is how one container is confined.
type profile struct {
	limits  executor.Limits // with defaults
	cpus    float64
	user    string // uid:gid
	network container.NetworkMode
	workDir string // a tmpfs working directory, or ""
	mounts  []Mount
	labels  map[string]string
}

// tmpfsOptions are the options of a writable tmpfs: sized, and, unlike
// Docker's default for --tmpfs, executable (graders compile and run
// solutions there).
func tmpfsOptions(size int64, mode string, extra ...string) string {
	return strings.Join(append([]string{"rw", "exec", "nosuid", "nodev", "size=" + strconv.FormatInt(size, 10), "mode=" + mode}, extra...), ",")
}

// hostConfig is the profile in the engine's terms.
func (p profile) hostConfig() *container.HostConfig {
	l := p.limits
	mem := l.Memory
	if mem <= 0 {
		mem = executor.DefaultMemory
	}
	cpus := p.cpus
	if cpus <= 0 {
		cpus = executor.DefaultContainerCPUs
	}
	pids := int64(l.Pids)
	tmpfs := map[string]string{"/tmp": tmpfsOptions(l.TmpSize, "1777")}
	if p.workDir != "" {
		uid, gid, _ := strings.Cut(p.user, ":")
		tmpfs[p.workDir] = tmpfsOptions(l.WorkSize, "0700", "uid="+uid, "gid="+gid)
	}
	hc := &container.HostConfig{
		NetworkMode:    p.network,
		ReadonlyRootfs: true,
		CapDrop:        []string{"ALL"},
		SecurityOpt:    []string{"no-new-privileges"},
		Tmpfs:          tmpfs,
		ShmSize:        l.TmpSize,
		IpcMode:        container.IPCModePrivate,
		OomScoreAdj:    1000,
		// The executor reads the container's output from its attached
		// streams; a log driver would only write a second copy to disk.
		LogConfig: container.LogConfig{Type: "none"},
		Resources: container.Resources{
			Memory:     mem,
			MemorySwap: mem,
			NanoCPUs:   int64(cpus * 1e9),
			PidsLimit:  &pids,
			Ulimits: []*container.Ulimit{
				{Name: "nofile", Soft: int64(l.OpenFiles), Hard: int64(l.OpenFiles)},
				{Name: "core", Soft: 0, Hard: 0},
			},
		},
	}
	for _, m := range p.mounts {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: true,
			BindOptions: &mount.BindOptions{Propagation: mount.PropagationRPrivate}})
	}
	return hc
}
