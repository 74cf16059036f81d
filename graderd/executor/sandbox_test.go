package executor

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestSandboxProfile checks the hardened profile from inside a run: its
// uid, capabilities, no_new_privs, seccomp and what the filter refuses.
func TestSandboxProfile(t *testing.T) {
	t.Parallel()
	e := sandboxed(t, &Exec{Command: []string{"python3", "-c", `
import ctypes, errno, json, os, sys
sys.stdin.read()
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return 0 if r >= 0 else errno.errorcode[ctypes.get_errno()]
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
CLONE_NEWUSER = 0x10000000
r = {
  "uid": os.getuid(), "gid": os.getgid(),
  "capeff": status["CapEff"].strip(), "capbnd": status["CapBnd"].strip(),
  "nonewprivs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
  "clone3": call(435, 0, 0),
  "unshare_user": call(272, CLONE_NEWUSER),
  "clone_newuser": call(56, CLONE_NEWUSER, 0, 0, 0, 0),
  "mount": call(165, b"none", b"/tmp", b"tmpfs", 0, 0),
  "ptrace": call(101, 16, 1, 0, 0),
  "bpf": call(321, 0, 0, 0),
  "keyctl": call(250, 0, 0, 0, 0, 0),
  "perf_event_open": call(298, 0, 0, -1, -1, 0),
  "pid": os.getpid(),
  "cwd": os.getcwd(),
}
print(json.dumps(r))
`}, KillGrace: time.Second})
	res := e.Run(t.Context(), Job{JobData: []byte(`{}`), Timeout: time.Minute})
	var got map[string]any
	if err := json.Unmarshal(res.Result, &got); err != nil {
		t.Fatalf("result %q (%s): %v; log:\n%s", res.Result, res.Error, err, res.Log)
	}
	uid := got["uid"].(float64)
	if uid < DefaultUIDBase || uid >= DefaultUIDBase+64 || got["gid"] != got["uid"] {
		t.Errorf("uid %v gid %v, want one of the slots' from %d", got["uid"], got["gid"], DefaultUIDBase)
	}
	delete(got, "uid")
	delete(got, "gid")
	want := map[string]any{
		"capeff": "0000000000000000", "capbnd": "0000000000000000", "nonewprivs": "1", "seccomp": "2",
		"clone3": "ENOSYS", "unshare_user": "EPERM", "clone_newuser": "EPERM", "mount": "EPERM",
		"ptrace": "EPERM", "bpf": "EPERM", "keyctl": "EPERM", "perf_event_open": "EPERM",
		"pid": float64(1), "cwd": SandboxPath,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("inside the sandbox (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(res.Log, "") || res.Usage.WallTime == 0 || res.Usage.CPUTime == 0 || res.Usage.PeakMemory == 0 {
		t.Errorf("usage %+v, want every field measured", res.Usage)
	}
}

// FuzzLooseSubmount feeds looseSubmount mount tables it was not written
// for: it never panics, and a writable mount added just below the directory
// always counts.
func FuzzLooseSubmount(f *testing.F) {
	f.Add([]byte("31 22 0:40 / /srv/tasks/scratch rw,relatime - tmpfs tmpfs rw\n"), "/srv/tasks")
	f.Add([]byte("33 22 0:42 / /opt/my\\040dir/nfs ro,nosuid - nfs server:/x rw\n"), "/opt/my dir")
	f.Add([]byte(""), "/")
	f.Fuzz(func(t *testing.T, table []byte, dir string) {
		looseSubmount(table, dir)
		if dir == "" || strings.ContainsAny(dir, " \t\n\\") || !strings.HasPrefix(dir, "/") {
			return
		}
		loose := append(append([]byte{}, table...), []byte("\n99 1 0:99 / "+strings.TrimSuffix(dir, "/")+"/fuzz rw - tmpfs tmpfs rw\n")...)
		if !looseSubmount(loose, dir) {
			t.Errorf("a rw tmpfs at %s/fuzz does not count", dir)
		}
	})
}

// TestLooseSubmount reads mount tables as the kernel writes them: only a
// mount strictly below the directory that lacks ro, nosuid or nodev counts.
func TestLooseSubmount(t *testing.T) {
	t.Parallel()
	table := []byte(`22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:0 /usr /usr ro,nosuid,nodev,relatime - ext4 /dev/vda rw
31 22 0:40 / /srv/tasks/scratch rw,relatime - tmpfs tmpfs rw
32 22 0:41 / /srv/tasks2/x ro,nosuid,nodev - tmpfs tmpfs rw
33 22 0:42 / /opt/my\040dir/nfs ro,nosuid - nfs server:/x rw
`)
	for dir, want := range map[string]bool{
		"/usr": false, "/srv/tasks": true, "/srv/tasks/": true, "/srv/tasks/scratch": false,
		"/srv": true, "/srv/task": false, "/srv/tasks2": false, "/opt/my dir": true, "/opt/my": false,
	} {
		if got := looseSubmount(table, dir); got != want {
			t.Errorf("looseSubmount(%q) = %v, want %v", dir, got, want)
		}
	}
}
