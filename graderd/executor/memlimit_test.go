package executor

import (
	"testing"
)

// fakeCgroupFS lays out files under a temp directory the way a cgroup2
// mount and /proc/self/cgroup would look; writes to them succeed as plain
// file writes, which is enough to check which files setupCgroupParent
// reads and writes.
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
