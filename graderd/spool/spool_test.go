package spool

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

func result(lease int64) *gradebrokerv1.Result {
	return &gradebrokerv1.Result{
		JobId:    lease * 10,
		LeaseId:  lease,
		Outcome:  gradebrokerv1.Outcome_OUTCOME_OK,
		Result:   []byte(fmt.Sprintf(`{"score":%d}`, lease)),
		Log:      "graded \u2713",
		Duration: durationpb.New(1500 * time.Millisecond),
	}
}

// setup opens a spool in a fresh directory.
func setup(t *testing.T) *Spool {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func list(t *testing.T, s *Spool) []*gradebrokerv1.Result {
	t.Helper()
	got, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return got
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestOpenCreatesPrivateDir(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "a", "spool")
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("spool directory mode %v, want 0700", perm)
	}
}

func TestPutListRemove(t *testing.T) {
	t.Parallel()
	s := setup(t)
	for _, lease := range []int64{30, 2, 100, 7} {
		if err := s.Put(result(lease)); err != nil {
			t.Fatalf("Put(%d): %v", lease, err)
		}
	}
	want := []*gradebrokerv1.Result{result(2), result(7), result(30), result(100)}
	if diff := cmp.Diff(want, list(t, s), protocmp.Transform()); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if got := s.Len(); got != 4 {
		t.Errorf("Len = %d, want 4", got)
	}

	// A second Put for a lease replaces the first.
	replaced := result(7)
	replaced.Outcome = gradebrokerv1.Outcome_OUTCOME_FATAL
	replaced.Error = "changed my mind"
	if err := s.Put(replaced); err != nil {
		t.Fatal(err)
	}
	for _, lease := range []int64{30, 30, 999} { // twice, and never stored: both fine
		if err := s.Remove(lease); err != nil {
			t.Errorf("Remove(%d): %v", lease, err)
		}
	}
	want = []*gradebrokerv1.Result{result(2), replaced, result(100)}
	if diff := cmp.Diff(want, list(t, s), protocmp.Transform()); diff != "" {
		t.Errorf("List after replace and remove (-want +got):\n%s", diff)
	}
	if got := s.Len(); got != 3 {
		t.Errorf("Len = %d, want 3", got)
	}

	// Another Open of the same directory sees the same results.
	s2, err := Open(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Len(); got != 3 {
		t.Errorf("Len after reopening = %d, want 3", got)
	}
	if diff := cmp.Diff(want, list(t, s2), protocmp.Transform()); diff != "" {
		t.Errorf("List after reopening (-want +got):\n%s", diff)
	}
}

func TestPutRefusesResultWithoutLease(t *testing.T) {
	t.Parallel()
	s := setup(t)
	for _, r := range []*gradebrokerv1.Result{nil, {JobId: 1}, {JobId: 1, LeaseId: -4}} {
		if err := s.Put(r); err != ErrNoLease {
			t.Errorf("Put(%v) = %v, want ErrNoLease", r, err)
		}
	}
	if names := dirNames(t, s.dir); len(names) != 0 {
		t.Errorf("spool holds %q after refused Puts, want nothing", names)
	}
}

func TestPutRefusesInvalidUTF8(t *testing.T) {
	t.Parallel()
	s := setup(t)
	r := result(1)
	r.Log = "\xff"
	if err := s.Put(r); err == nil {
		t.Fatal("Put of a log that is not UTF-8 succeeded, want an encoding error")
	}
	if names := dirNames(t, s.dir); len(names) != 0 {
		t.Errorf("spool holds %q after a failed Put, want nothing", names)
	}
}

func TestOpenRemovesLeftoverTempFiles(t *testing.T) {
	t.Parallel()
	s := setup(t)
	if err := s.Put(result(5)); err != nil {
		t.Fatal(err)
	}
	// What a crash between CreateTemp and Rename leaves behind.
	half, _ := proto.Marshal(result(6))
	for name, data := range map[string][]byte{".put-123.tmp": half[:len(half)/2], ".put-456.tmp": nil} {
		if err := os.WriteFile(filepath.Join(s.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := Open(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"5.result"}, dirNames(t, s.dir)); diff != "" {
		t.Errorf("files after Open (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*gradebrokerv1.Result{result(5)}, list(t, s2), protocmp.Transform()); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestListMovesCorruptFilesAside(t *testing.T) {
	t.Parallel()
	valid, _ := proto.Marshal(result(3))
	tests := []struct {
		name string
		file string
		data []byte
	}{
		{"garbage", "9.result", []byte("\xff\xff\xff\xff not protobuf")},
		{"truncated", "3.result", valid[:len(valid)-3]},
		{"empty", "3.result", nil},
		{"another lease", "4.result", valid},
		{"not a number", "abc.result", valid},
		{"non-canonical number", "03.result", valid},
		{"zero", "0.result", valid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := setup(t)
			if err := s.Put(result(1)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(s.dir, tt.file), tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]*gradebrokerv1.Result{result(1)}, list(t, s), protocmp.Transform()); diff != "" {
				t.Errorf("List (-want +got):\n%s", diff)
			}
			want := []string{"1.result", tt.file + ".corrupt"}
			slices.Sort(want)
			if diff := cmp.Diff(want, dirNames(t, s.dir)); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			if got := s.Len(); got != 1 {
				t.Errorf("Len = %d, want 1", got)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	s := setup(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				lease := int64(w*100 + i + 1)
				if err := s.Put(result(lease)); err != nil {
					t.Errorf("Put(%d): %v", lease, err)
					return
				}
				if _, err := s.List(); err != nil {
					t.Errorf("List: %v", err)
				}
				_ = s.Len()
				if i%2 == 0 {
					if err := s.Remove(lease); err != nil {
						t.Errorf("Remove(%d): %v", lease, err)
					}
				}
			}
		})
	}
	wg.Wait()
	got := list(t, s)
	if len(got) != 80 || s.Len() != 80 {
		t.Errorf("after the workers: List has %d results and Len is %d, want 80 and 80", len(got), s.Len())
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].LeaseId >= got[i].LeaseId {
			t.Fatalf("List is not sorted by lease id: %d before %d", got[i-1].LeaseId, got[i].LeaseId)
		}
	}
}

// crashDirEnv names the spool directory of the crash helper process.
const crashDirEnv = "GRADEBROKER_SPOOL_CRASH_DIR"

// TestCrashHelper is the child of TestCrashSafety: it stores results, says
// so, and waits to be killed. It does nothing in a normal test run.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("runs only as TestCrashSafety's child")
	}
	s, err := Open(dir)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for lease := int64(1); lease <= 3; lease++ {
		if err := s.Put(result(lease)); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Println("stored")
	// Keep putting until killed, so the kill may well land inside a Put.
	for lease := int64(1000); ; lease++ {
		_ = s.Put(result(lease))
	}
}

// TestCrashSafety kills a process with SIGKILL right after its Puts returned
// and checks that another process finds every result. A SIGKILL does not
// lose the page cache, so this checks the protocol (temp file, rename,
// cleanup at Open), not the fsyncs, which only a power cut would test.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "spool")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "stored\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q, %v; want \"stored\"", line, err)
	}
	// Let it get into a few more Puts, so that the kill may well land
	// inside one.
	testutil.Eventually(t, "the helper to store more results", func() bool {
		names, _ := filepath.Glob(filepath.Join(dir, "*.result"))
		return len(names) >= 10
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after the crash: %v", err)
	}
	got := list(t, s)
	if len(got) < 3 {
		t.Fatalf("List after the crash has %d results, want at least 3", len(got))
	}
	if diff := cmp.Diff([]*gradebrokerv1.Result{result(1), result(2), result(3)}, got[:3], protocmp.Transform()); diff != "" {
		t.Errorf("List after the crash (-want +got):\n%s", diff)
	}
	// Whatever Put the kill interrupted left no temporary file behind Open,
	// and every later result is whole.
	for _, name := range dirNames(t, dir) {
		if filepath.Ext(name) != ".result" {
			t.Errorf("file %q left after Open", name)
		}
	}
	for _, r := range got[3:] {
		if diff := cmp.Diff(result(r.LeaseId), r, protocmp.Transform()); diff != "" {
			t.Errorf("result of lease %d (-want +got):\n%s", r.LeaseId, diff)
		}
	}
	if s.Len() != len(got) {
		t.Errorf("Len = %d, List has %d", s.Len(), len(got))
	}
}

// FuzzList checks that whatever a result file holds, List neither panics nor
// fails: it returns the result or moves the file aside.
func FuzzList(f *testing.F) {
	valid, _ := proto.Marshal(result(7))
	f.Add(valid)
	f.Add([]byte{})
	f.Add(valid[:len(valid)/2])
	f.Add([]byte("\x10\x07\x1a\x02{}"))
	f.Add([]byte("\x32\x03\xff\xfe\xfd")) // a log that is not UTF-8
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "7.result"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.List()
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		names := dirNames(t, dir)
		switch {
		case len(got) == 1 && got[0].GetLeaseId() == 7 && slices.Equal(names, []string{"7.result"}):
		case len(got) == 0 && slices.Equal(names, []string{"7.result.corrupt"}):
		default:
			t.Fatalf("List = %v with files %q; want lease 7 kept, or the file moved aside", got, names)
		}
		if s.Len() != len(got) {
			t.Errorf("Len = %d, List has %d", s.Len(), len(got))
		}
	})
}
