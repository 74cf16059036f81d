package cgroups

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// fakeTree lays out files under a temp directory; "@" in a path or content
// stands for that directory. Writes to the fake cgroup files succeed as
// plain file writes, which is enough to check what is read and written.
func fakeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(content, "@", dir)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func probe(dir string) Probe {
	return Probe{Mountinfo: filepath.Join(dir, "mountinfo"), SelfCgroup: filepath.Join(dir, "self"), Root: filepath.Join(dir, "cg"), Pid: 42}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// v2Files is a cgroup v2 host where graderd (pid 42) is alone in /svc.
var v2Files = map[string]string{
	"mountinfo":                     "30 23 0:26 / @/cg rw,nosuid - cgroup2 cgroup2 rw\n",
	"self":                          "0::/svc\n",
	"cg/svc/cgroup.controllers":     "cpu memory pids",
	"cg/svc/cgroup.subtree_control": "",
	"cg/svc/cgroup.procs":           "42\n",
}

func with(base map[string]string, changes map[string]string) map[string]string {
	m := make(map[string]string)
	for k, v := range base {
		m[k] = v
	}
	for k, v := range changes {
		if v == "<none>" {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

func TestDetectV2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		files     map[string]string
		wantErr   string
		wantMoved bool
	}{
		{name: "already enabled", files: with(v2Files, map[string]string{"cg/svc/cgroup.subtree_control": "memory pids"})},
		{name: "alone: moves itself into a leaf", files: v2Files, wantMoved: true},
		{name: "no memory controller", files: with(v2Files, map[string]string{"cg/svc/cgroup.controllers": "cpu pids"}), wantErr: "the memory controller is not available"},
		{name: "no pids controller", files: with(v2Files, map[string]string{"cg/svc/cgroup.controllers": "memory"}), wantErr: "the pids controller is not available"},
		{name: "shared with other processes", files: with(v2Files, map[string]string{"cg/svc/cgroup.procs": "42\n43\n"}), wantErr: "holds other processes (pid 43)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := fakeTree(t, tt.files)
			h, err := Detect(probe(dir))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Detect = %v, %v; want an error containing %q", h, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Version() != 2 || h.v2 != filepath.Join(dir, "cg/svc") {
				t.Errorf("Detect = %v, want v2 under %s", h, filepath.Join(dir, "cg/svc"))
			}
			if tt.wantMoved {
				if got := read(t, filepath.Join(dir, "cg/svc/graderd/cgroup.procs")); got != "42" {
					t.Errorf("leaf cgroup.procs = %q, want 42", got)
				}
				if got := read(t, filepath.Join(dir, "cg/svc/cgroup.subtree_control")); got != "+memory +pids" {
					t.Errorf("subtree_control = %q, want +memory +pids", got)
				}
			}
		})
	}
}

// v1Files is this project's development machine: cgroup v1 with the
// memory cgroup of the session under /process_api/x, and an empty cgroup2
// mount at /sys/fs/cgroup/unified (the "hybrid" layout).
var v1Files = map[string]string{
	"mountinfo": "31 23 0:28 / @/cg rw - tmpfs tmpfs rw\n" +
		"33 31 0:30 / @/cg/cpuacct rw - cgroup cgroup rw,cpuacct\n" +
		"34 31 0:30 / @/cg/cpu,cpuacct2 rw - cgroup cgroup rw,cpu\n" +
		"35 31 0:32 / @/cg/memory rw - cgroup cgroup rw,memory\n" +
		"39 31 0:36 / @/cg/pids rw - cgroup cgroup rw,pids\n" +
		"41 31 0:38 / @/cg/unified rw - cgroup2 cgroup2 rw\n",
	"self":                          "8:pids:/\n4:memory:/process_api/x\n2:cpuacct:/\n1:cpu:/\n0::/\n",
	"cg/pids/tasks":                 "",
	"cg/cpuacct/tasks":              "",
	"cg/memory/process_api/x/tasks": "",
}

func TestDetectV1(t *testing.T) {
	t.Parallel()
	dir := fakeTree(t, v1Files)
	h, err := Detect(probe(dir))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"memory":  filepath.Join(dir, "cg/memory/process_api/x"),
		"pids":    filepath.Join(dir, "cg/pids"),
		"cpuacct": filepath.Join(dir, "cg/cpuacct"),
	}
	if diff := cmp.Diff(want, h.v1); h.Version() != 1 || diff != "" {
		t.Errorf("Detect: version %d, dirs (-want +got):\n%s", h.Version(), diff)
	}

	// A missing controller is named.
	dir = fakeTree(t, with(v1Files, map[string]string{"mountinfo": strings.Replace(v1Files["mountinfo"], "rw,pids", "rw,net_cls", 1)}))
	if _, err := Detect(probe(dir)); err == nil || !strings.Contains(err.Error(), "of the pids controller") {
		t.Errorf("Detect without pids = %v, want an error naming pids", err)
	}
	// A cgroup namespace that shows only part of a hierarchy.
	dir = fakeTree(t, with(v1Files, map[string]string{"mountinfo": strings.Replace(v1Files["mountinfo"], "0:32 / ", "0:32 /process_api ", 1)}))
	h, err = Detect(probe(dir))
	if err != nil || h.v1["memory"] != filepath.Join(dir, "cg/memory/x") {
		t.Errorf("Detect with a memory mount rooted at /process_api = %v, %v; want the memory dir %s", h, err, filepath.Join(dir, "cg/memory/x"))
	}
}

// TestGroupFilesV1 and TestGroupFilesV2 check which files New writes and
// how usage and events are read, on fake trees (the kernel's files are
// plain files there).
func TestGroupFilesV1(t *testing.T) {
	t.Parallel()
	dir := fakeTree(t, v1Files)
	h, err := Detect(probe(dir))
	if err != nil {
		t.Fatal(err)
	}
	mem := filepath.Join(dir, "cg/memory/process_api/x/run1")
	// memsw exists only with swap accounting: New writes it when present.
	if err := os.MkdirAll(mem, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mem, "memory.memsw.limit_in_bytes"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mem); err == nil {
		t.Fatal("the fake memsw file did not hold the directory")
	}
	if err := os.RemoveAll(mem); err != nil {
		t.Fatal(err)
	}
	g, err := h.New("run1", Resources{Memory: 64 << 20, Pids: 32})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{
		"memory.limit_in_bytes": read(t, filepath.Join(mem, "memory.limit_in_bytes")),
		"pids.max":              read(t, filepath.Join(dir, "cg/pids/run1/pids.max")),
	}
	want := map[string]string{"memory.limit_in_bytes": "67108864", "pids.max": "32"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}
	files := map[string]string{
		"cg/cpuacct/run1/cpuacct.usage":                          "1500000000\n",
		"cg/memory/process_api/x/run1/memory.max_usage_in_bytes": "1048576\n",
		"cg/memory/process_api/x/run1/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"cg/pids/run1/pids.events":                               "max 7\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkUsage(t, g, 1500*time.Millisecond, 1<<20, true, Events{OOMKills: 2, PidsRefused: 7})
	if diff := cmp.Diff([]string{filepath.Join(dir, "cg/memory/process_api/x/run1"), filepath.Join(dir, "cg/pids/run1"), filepath.Join(dir, "cg/cpuacct/run1")}, g.Dirs()); diff != "" {
		t.Errorf("Dirs (-want +got):\n%s", diff)
	}
}

func TestGroupFilesV2(t *testing.T) {
	t.Parallel()
	dir := fakeTree(t, with(v2Files, map[string]string{"cg/svc/cgroup.subtree_control": "memory pids"}))
	h, err := Detect(probe(dir))
	if err != nil {
		t.Fatal(err)
	}
	g, err := h.New("run1", Resources{Memory: 64 << 20, Pids: 32})
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "cg/svc/run1")
	got := map[string]string{}
	for _, f := range []string{"memory.max", "memory.swap.max", "memory.oom.group", "pids.max"} {
		got[f] = read(t, filepath.Join(run, f))
	}
	want := map[string]string{"memory.max": "67108864", "memory.swap.max": "0", "memory.oom.group": "1", "pids.max": "32"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}
	files := map[string]string{
		"cpu.stat":      "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
		"memory.events": "low 0\nhigh 0\nmax 9\noom 1\noom_kill 3\noom_group_kill 1\n",
		"pids.events":   "max 4\n",
		// No memory.peak (before Linux 5.19): memory.current serves.
		"memory.current": "2097152\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(run, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkUsage(t, g, 2500*time.Millisecond, 2<<20, false, Events{OOMKills: 3, PidsRefused: 4})
	if err := os.WriteFile(filepath.Join(run, "memory.peak"), []byte("4194304\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if peak, exact, err := g.MemoryPeak(); peak != 4<<20 || !exact || err != nil {
		t.Errorf("MemoryPeak with memory.peak = %d, %v, %v; want %d, true", peak, exact, err, 4<<20)
	}
	if g.V2Dir() != run {
		t.Errorf("V2Dir = %q, want %q", g.V2Dir(), run)
	}
}

func checkUsage(t *testing.T, g *Group, cpu time.Duration, peak int64, exact bool, ev Events) {
	t.Helper()
	if got, err := g.CPUUsage(); got != cpu || err != nil {
		t.Errorf("CPUUsage = %v, %v; want %v", got, err, cpu)
	}
	if got, ex, err := g.MemoryPeak(); got != peak || ex != exact || err != nil {
		t.Errorf("MemoryPeak = %d, %v, %v; want %d, %v", got, ex, err, peak, exact)
	}
	if got, err := g.Events(); got != ev || err != nil {
		t.Errorf("Events = %+v, %v; want %+v", got, err, ev)
	}
}

func TestNewRefusesBadNames(t *testing.T) {
	t.Parallel()
	h := &Hierarchy{v2: t.TempDir()}
	for _, name := range []string{"", ".", "..", "a/b"} {
		if _, err := h.New(name, Resources{}); err == nil {
			t.Errorf("New(%q) succeeded", name)
		}
	}
}

// The tests below use this machine's real cgroups (graderd runs as root;
// so does CI).

func realGroup(t *testing.T, r Resources) *Group {
	t.Helper()
	h, err := Detect(Probe{})
	if err != nil {
		t.Fatalf("this machine has no usable cgroups (graderd's sandbox needs them): %v", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	g, err := h.New("gbtest-"+hex.EncodeToString(b[:]), r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
		for _, d := range g.Dirs() {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("%s still exists after Remove", d)
			}
		}
	})
	return g
}

func startIn(t *testing.T, g *Group, script string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	if err := g.Start(cmd, nil); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func TestRealMemoryLimit(t *testing.T) {
	t.Parallel()
	g := realGroup(t, Resources{Memory: 32 << 20})
	// 64 MiB of touched memory in one process under 32 MiB.
	cmd := startIn(t, g, `exec python3 -c 'b = bytearray(64 << 20); print(len(b))'`)
	err := cmd.Wait()
	if err == nil {
		t.Fatal("a process using 64 MiB under a 32 MiB limit exited 0")
	}
	ev, err := g.Events()
	if err != nil {
		t.Fatal(err)
	}
	if ev.OOMKills == 0 {
		t.Errorf("Events = %+v after an out-of-memory kill, want OOMKills > 0", ev)
	}
	peak, _, err := g.MemoryPeak()
	if err != nil || peak < 16<<20 || peak > 33<<20 {
		t.Errorf("MemoryPeak = %d, %v; want between 16 MiB and the 32 MiB limit", peak, err)
	}
}

func TestRealPidsLimitAndKill(t *testing.T) {
	t.Parallel()
	g := realGroup(t, Resources{Pids: 8})
	// More background sleeps than the limit allows, then wait for ever.
	cmd := startIn(t, g, `for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1000 & done; exec sleep 1000`)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testutil.Eventually(t, "the pids limit to refuse a fork", func() bool {
		ev, err := g.Events()
		return err == nil && ev.PidsRefused > 0
	})
	// The shell may give up at its first failed fork; its children stay.
	if pids, err := g.Procs(); err != nil || len(pids) == 0 || len(pids) > 8 {
		t.Errorf("Procs = %v, %v; want 1 to 8 processes", pids, err)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	<-done
	if pids, err := g.Procs(); err != nil || len(pids) != 0 {
		t.Errorf("Procs after Kill = %v, %v; want none", pids, err)
	}
}

func TestRealCPUUsage(t *testing.T) {
	t.Parallel()
	g := realGroup(t, Resources{})
	cmd := startIn(t, g, `i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done`)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	cpu, err := g.CPUUsage()
	if err != nil {
		t.Fatal(err)
	}
	// The loop's own CPU time, as the kernel counted it for the process.
	own := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if cpu < own/2 || cpu == 0 {
		t.Errorf("CPUUsage = %v, the process's own rusage says %v", cpu, own)
	}
}

func TestReapDirs(t *testing.T) {
	t.Parallel()
	g := realGroup(t, Resources{Pids: 16})
	cmd := startIn(t, g, `sleep 1000 & sleep 1000 & exec sleep 1000`)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testutil.Eventually(t, "three processes in the group", func() bool {
		pids, _ := g.Procs()
		return len(pids) == 3
	})
	n, err := ReapDirs(g.Dirs())
	if err != nil || n != 3 {
		t.Errorf("ReapDirs = %d, %v; want 3", n, err)
	}
	<-done
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s still exists after ReapDirs", d)
		}
	}
}

// TestOpen reads another process's cgroup (a container's, on a fake tree
// laid out as Docker's cgroupfs driver makes it) and refuses to change it.
func TestOpen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		files map[string]string
		dirs  []string
	}{
		{"v1", with(v1Files, map[string]string{
			"container":                                        "8:pids:/docker/c1\n4:memory:/docker/c1\n2:cpuacct:/docker/c1\n1:cpu:/docker/c1\n0::/\n",
			"cg/cpuacct/docker/c1/cpuacct.usage":               "1500000000\n",
			"cg/memory/docker/c1/memory.max_usage_in_bytes":    "1048576\n",
			"cg/memory/docker/c1/memory.oom_control":           "oom_kill 2\n",
			"cg/pids/docker/c1/pids.events":                    "max 7\n",
			"cg/pids/docker/c1/cgroup.procs":                   "1234\n",
			"cg/memory/process_api/x/docker-is-not-here/tasks": "",
		}), []string{"cg/memory/docker/c1", "cg/pids/docker/c1", "cg/cpuacct/docker/c1"}},
		{"v2", with(v2Files, map[string]string{
			"container": "0::/system.slice/docker-c1.scope\n",
			"cg/system.slice/docker-c1.scope/cpu.stat":      "usage_usec 1500000\n",
			"cg/system.slice/docker-c1.scope/memory.peak":   "1048576\n",
			"cg/system.slice/docker-c1.scope/memory.events": "oom_kill 2\n",
			"cg/system.slice/docker-c1.scope/pids.events":   "max 7\n",
			"cg/system.slice/docker-c1.scope/cgroup.procs":  "1234\n",
		}), []string{"cg/system.slice/docker-c1.scope"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := fakeTree(t, tc.files)
			p := probe(dir)
			p.SelfCgroup = filepath.Join(dir, "container")
			g, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, d := range tc.dirs {
				want = append(want, filepath.Join(dir, d))
			}
			if diff := cmp.Diff(want, g.Dirs()); diff != "" {
				t.Errorf("Dirs (-want +got):\n%s", diff)
			}
			checkUsage(t, g, 1500*time.Millisecond, 1<<20, true, Events{OOMKills: 2, PidsRefused: 7})
			for name, err := range map[string]error{"Kill": g.Kill(), "Remove": g.Remove(), "JoinThread": g.JoinThread(), "Start": g.Start(exec.Command("true"), nil)} {
				if err != ErrForeign {
					t.Errorf("%s on an opened group = %v, want ErrForeign", name, err)
				}
			}
			for _, d := range want {
				if _, err := os.Stat(d); err != nil {
					t.Errorf("the engine's cgroup %s went: %v", d, err)
				}
			}
		})
	}
}

// TestOpenReal opens the test's own cgroup through /proc/PID/cgroup and
// reads its CPU time, which the test has used some of.
func TestOpenReal(t *testing.T) {
	t.Parallel()
	g, err := Open(Probe{SelfCgroup: "/proc/" + strconv.Itoa(os.Getpid()) + "/cgroup"})
	if err != nil {
		t.Fatalf("opening the test's own cgroup: %v", err)
	}
	if cpu, err := g.CPUUsage(); err != nil || cpu <= 0 {
		t.Errorf("CPUUsage of the test's own cgroup = %v, %v; want some CPU time", cpu, err)
	}
}
