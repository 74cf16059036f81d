// Package dockertest gives tests a Docker engine and images built on the
// spot, without a registry: each image is a static Go binary of this module
// alone in a FROM-scratch image (docker import of a one-file root), so that
// no test ever pulls. A test that cannot reach an engine fails with what to
// do; none is skipped.
package dockertest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/graderd/executor/docker"
)

// Engine connects to the engine of DOCKER_HOST (or the default socket) and
// fails the test when none answers.
func Engine(t testing.TB) *docker.Engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := docker.NewEngine(ctx, "")
	if err != nil {
		t.Fatalf("these tests need a Docker engine (they never skip): %v\n"+
			"as root: apt-get install docker.io && dockerd --iptables=false --ip6tables=false --bridge=none &\n"+
			"(.ci/run starts one the same way)", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// Name returns a name no other test uses: for a server, a container, an
// image tag.
func Name(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// moduleRoot is the directory of go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return "", fmt.Errorf("go env GOMOD: %v (the go command must be on PATH, in the module)", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

var (
	importMu sync.Mutex

	buildMu sync.Mutex
	built   = map[string]string{} // package and flags -> binary
)

// Binary builds package pkg of this module (e.g.
// "./graderd/executor/docker/dockertest/probe") as a static binary, once
// per test process, and returns its path.
func Binary(t testing.TB, pkg string, ldflags string) string {
	t.Helper()
	bin, err := BuildBinary(pkg, ldflags)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// BuildBinary is Binary for programs that are not tests (benchmarks).
func BuildBinary(pkg string, ldflags string) (string, error) {
	key := pkg + " " + ldflags
	buildMu.Lock()
	defer buildMu.Unlock()
	if b, ok := built[key]; ok {
		return b, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	// The checkout is part of the name: test processes of other checkouts
	// (worktrees, a CI clone) build the same package from other sources
	// into this shared directory at the same time.
	sum := sha256.Sum256([]byte(root + " " + key))
	dir := filepath.Join(os.TempDir(), "gradebroker-dockertest")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, filepath.Base(pkg)+"-"+hex.EncodeToString(sum[:])[:12])
	tmp := bin + Name(".tmp-")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w "+ldflags, "-o", tmp, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("building %s: %v\n%s", pkg, err, out)
	}
	// Other test processes may build the same binary at the same time.
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	built[key] = bin
	return bin, nil
}

// Image makes an image holding the binary alone as /app, its entrypoint,
// with empty /tmp and /var/tmp (1777, as in distributions' images: a
// writable root file system would let anyone write there) and /job, and
// returns its reference, which names its content: an image already on the
// engine is not made again.
func Image(t testing.TB, e *docker.Engine, name, bin string, changes ...string) string {
	t.Helper()
	ref, err := MakeImage(context.Background(), e, name, bin, changes...)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// MakeImage is Image for programs that are not tests (benchmarks).
func MakeImage(ctx context.Context, e *docker.Engine, name, bin string, changes ...string) (string, error) {
	body, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	files := []docker.File{
		{Name: "app", Mode: 0o755, Body: body},
		{Name: "tmp", Mode: 0o1777, Dir: true},
		{Name: "var", Mode: 0o755, Dir: true},
		{Name: "var/tmp", Mode: 0o1777, Dir: true},
		{Name: "job", Mode: 0o755, Dir: true},
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s %o %v %d\n", f.Name, f.Mode, f.Dir, len(f.Body))
		h.Write(f.Body)
	}
	for _, c := range changes {
		fmt.Fprintf(h, "%s\n", c)
	}
	ref := "gradebroker-test/" + name + ":" + hex.EncodeToString(h.Sum(nil))[:16]
	// One import at a time, in this process and across the test
	// processes of one go test run: two imports of one name leave the
	// first one's image nameless on the engine.
	importMu.Lock()
	defer importMu.Unlock()
	unlock, err := lockFile(filepath.Join(os.TempDir(), "gradebroker-dockertest", "import.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if ok, err := e.HasImage(ctx, ref); err != nil || ok {
		return ref, err
	}
	return ref, e.ImportImage(ctx, ref, files, append([]string{`ENTRYPOINT ["/app"]`}, changes...))
}

// lockFile takes an exclusive lock on path, made if missing, and returns
// how to release it.
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// GoImage builds pkg and makes its image (Binary, then Image).
func GoImage(t testing.TB, e *docker.Engine, name, pkg, ldflags string, changes ...string) string {
	t.Helper()
	return Image(t, e, name, Binary(t, pkg, ldflags), changes...)
}
