package executor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// crashHelperEnv makes the test binary act as a graderd that starts a long
// grader and is then killed.
const crashHelperEnv = "GRADERD_EXECUTOR_CRASH_HELPER"

func TestHelperProcessGraderdCrash(t *testing.T) {
	dir := os.Getenv(crashHelperEnv)
	if dir == "" {
		return // only meaningful as the helper process below
	}
	e := &Exec{
		Command: []string{"/bin/sh", "-c", `echo $$ > "$0/grader.pid"; sleep 300 & echo $! > "$0/child.pid"; wait`, dir},
		RunDir:  filepath.Join(dir, "running"),
	}
	e.Run(context.Background(), Job{JobID: 1, LeaseID: 7, Timeout: time.Hour})
}

// waitPid waits for a test grader to write its pid to path.
func waitPid(t *testing.T, path string) int {
	t.Helper()
	testutil.Eventually(t, path+" to be written", func() bool {
		b, err := os.ReadFile(path)
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	return readPid(t, path)
}

// TestReapOrphansAfterCrash kills a "graderd" in the middle of a run, as
// SIGKILL would, and checks that the grader and its child outlive it, then
// that ReapOrphans in the next graderd kills them and clears the record.
func TestReapOrphansAfterCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcessGraderdCrash$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	grader := waitPid(t, filepath.Join(dir, "grader.pid"))
	child := waitPid(t, filepath.Join(dir, "child.pid"))
	cmd.Process.Kill()
	cmd.Wait()
	t.Cleanup(func() { syscall.Kill(-grader, syscall.SIGKILL) })
	// The "graderd" is dead and reaped; its grader must have outlived it.
	// Were they to die a little later, ReapOrphans would find less than
	// two processes to kill, which the end of the test checks.
	if !alive(grader) || !alive(child) {
		t.Fatalf("grader %d alive=%v, child %d alive=%v: the crash should have left them running", grader, alive(grader), child, alive(child))
	}
	n, err := ReapOrphans(filepath.Join(dir, "running"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Errorf("ReapOrphans killed %d process(es), want the grader and its child", n)
	}
	testutil.Eventually(t, "the grader and its child to die", func() bool { return !alive(grader) && !alive(child) })
	if left, _ := filepath.Glob(filepath.Join(dir, "running", "*.run")); len(left) != 0 {
		t.Errorf("records left: %v", left)
	}
}

// TestReapOrphansLeavesOthersAlone checks that a record whose leader was
// replaced by another process (a reused pid) kills nothing.
func TestReapOrphansLeavesOthersAlone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	other := exec.Command("sleep", "30")
	other.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	_, start, err := procStat(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// A record for the same pid with another start time: a reused pid.
	rec := bootID() + " " + strconv.Itoa(other.Process.Pid) + " " + strconv.FormatUint(start+1000, 10) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "lease-1-pid-x.run"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	// And one from another boot.
	if err := os.WriteFile(filepath.Join(dir, "lease-2-pid-y.run"), []byte("other-boot "+strconv.Itoa(other.Process.Pid)+" 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := ReapOrphans(dir, nil); err != nil || n != 0 {
		t.Fatalf("ReapOrphans = %d, %v; want nothing killed", n, err)
	}
	if !alive(other.Process.Pid) {
		t.Error("an unrelated process was killed")
	}
}
