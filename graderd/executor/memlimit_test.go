package executor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeCgroupFS lays out files under a temp directory the way a cgroup2
// mount and /proc/self/cgroup would look; writes to them succeed as plain
// file writes, which is enough to check which files setupCgroupParent
// reads and writes.
func fakeCgroupFS(t *testing.T, files map[string]string) (root, self string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "cgroup")
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, filepath.Join(dir, "self")
}

func TestSetupCgroupParent(t *testing.T) {
	t.Parallel()
	v2 := map[string]string{
		"self":                              "0::/svc\n",
		"cgroup/cgroup.controllers":         "cpu memory pids",
		"cgroup/svc/cgroup.controllers":     "cpu memory pids",
		"cgroup/svc/cgroup.subtree_control": "",
		"cgroup/svc/cgroup.procs":           "42\n",
	}
	with := func(changes map[string]string) map[string]string {
		m := make(map[string]string)
		for k, v := range v2 {
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
	tests := []struct {
		name      string
		files     map[string]string
		wantDir   string // relative to the fake root
		wantErr   string
		wantMoved bool
	}{
		{
			name:    "cgroup v1",
			files:   with(map[string]string{"cgroup/cgroup.controllers": "<none>", "self": "4:memory:/x\n0::/\n"}),
			wantErr: "is not a cgroup v2 mount",
		},
		{
			name:    "no v2 line",
			files:   with(map[string]string{"self": "4:memory:/x\n"}),
			wantErr: "lists no cgroup v2 hierarchy",
		},
		{
			name:    "no memory controller",
			files:   with(map[string]string{"cgroup/svc/cgroup.controllers": "cpu pids"}),
			wantErr: "memory controller not available",
		},
		{
			name:    "already enabled",
			files:   with(map[string]string{"cgroup/svc/cgroup.subtree_control": "cpu memory"}),
			wantDir: "svc",
		},
		{
			name:    "shared with other processes",
			files:   with(map[string]string{"cgroup/svc/cgroup.procs": "42\n43\n"}),
			wantErr: "holds other processes (pid 43)",
		},
		{
			name:      "alone: moves itself into a leaf",
			files:     v2,
			wantDir:   "svc",
			wantMoved: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root, self := fakeCgroupFS(t, tt.files)
			dir, err := setupCgroupParent(root, self, 42)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("setupCgroupParent = %q, %v; want error containing %q", dir, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("setupCgroupParent: %v", err)
			}
			if diff := cmp.Diff(filepath.Join(root, tt.wantDir), dir); diff != "" {
				t.Errorf("dir (-want +got):\n%s", diff)
			}
			if tt.wantMoved {
				procs, _ := os.ReadFile(filepath.Join(root, "svc/graderd/cgroup.procs"))
				subtree, _ := os.ReadFile(filepath.Join(root, "svc/cgroup.subtree_control"))
				if string(procs) != "42" || string(subtree) != "+memory" {
					t.Errorf("leaf procs %q and subtree_control %q, want \"42\" and \"+memory\"", procs, subtree)
				}
			}
		})
	}
}

func TestRunCgroupOnFakeTree(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	cg, err := newRunCgroup(parent, "job1-lease2-ab", 100<<20)
	if err != nil {
		t.Fatal(err)
	}
	limit, _ := os.ReadFile(filepath.Join(cg.dir, "memory.max"))
	if string(limit) != "104857600" {
		t.Errorf("memory.max = %q, want 104857600", limit)
	}
	if cg.oomKilled() {
		t.Error("oomKilled without memory.events")
	}
	events := "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
	if err := os.WriteFile(filepath.Join(cg.dir, "memory.events"), []byte(events), 0o644); err != nil {
		t.Fatal(err)
	}
	if !cg.oomKilled() {
		t.Errorf("oomKilled = false with events %q", events)
	}
	cg.fd.Close()
}

func TestSaysOutOfMemory(t *testing.T) {
	t.Parallel()
	tests := []struct {
		log  string
		want bool
	}{
		{"Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nMemoryError\n", true},
		{"terminate called after throwing an instance of 'std::bad_alloc'", true},
		{"fatal error: runtime: out of memory", true},
		{"Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space", true},
		{"memory allocation of 1048576 bytes failed", true},
		{"mmap: Cannot allocate memory", true},
		{"FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory", true},
		{"AssertionError: expected 3, got 4", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := saysOutOfMemory(tt.log); got != tt.want {
			t.Errorf("saysOutOfMemory(%q) = %v, want %v", tt.log, got, tt.want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{100 << 20: "100 MiB", 1000: "1000 bytes", 1<<20 + 1: "1048577 bytes"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
