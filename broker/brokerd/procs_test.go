package brokerd

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// AddWriterProc runs in a child process, since GOMAXPROCS is process-wide.
func TestAddWriterProc(t *testing.T) {
	if os.Getenv("GB_TEST_PROCS_CHILD") == "1" {
		before := runtime.GOMAXPROCS(0)
		after := AddWriterProc()
		os.Stdout.WriteString(strconv.Itoa(before) + " " + strconv.Itoa(after) + " " + strconv.Itoa(runtime.GOMAXPROCS(0)) + "\n")
		return
	}
	run := func(env ...string) []int {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestAddWriterProc$")
		cmd.Env = append(os.Environ(), append([]string{"GB_TEST_PROCS_CHILD=1"}, env...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		var got []int
		for _, f := range strings.Fields(strings.SplitN(string(out), "\n", 2)[0]) {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("child printed %q", out)
			}
			got = append(got, n)
		}
		if len(got) != 3 {
			t.Fatalf("child printed %q", out)
		}
		return got
	}
	t.Setenv("GOMAXPROCS", "") // restored after the test
	os.Unsetenv("GOMAXPROCS")
	if got := run(); got[1] != got[0]+1 || got[2] != got[1] {
		t.Errorf("without GOMAXPROCS: before %d, returned %d, in effect %d; want one more", got[0], got[1], got[2])
	}
	if got := run("GOMAXPROCS=1"); got[0] != 1 || got[1] != 1 || got[2] != 1 {
		t.Errorf("with GOMAXPROCS=1: before %d, returned %d, in effect %d; want 1 left alone", got[0], got[1], got[2])
	}
}
