package apibench

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// childEnv makes the test binary serve as the benchmark's child broker.
const childEnv = "GB_APIBENCH_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(ServeChild(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestRunSmoke runs every measurement briefly, so that the benchmark keeps
// working; the figures themselves come from `make bench`.
func TestRunSmoke(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		child func([]string) *exec.Cmd
	}{
		{"in process", nil},
		{"child process", func(args []string) *exec.Cmd {
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), childEnv+"=1")
			return cmd
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			res, err := Run(context.Background(), Options{Dir: dir, Bits: []int{2048}, Clients: 8, Rounds: 2,
				Window: 500 * time.Millisecond, BatchJobs: 20, Callbacks: 50, Child: tc.child,
				CPUProfile: dir + "/api.prof"})
			if err != nil {
				t.Fatal(err)
			}
			r := res.Rows[0]
			if r.Errors != 0 {
				t.Errorf("%d requests failed", r.Errors)
			}
			if r.CryptoRate <= 0 || r.SendJobRate <= 0 || r.BatchJobs <= 0 || res.CallbackRate <= 0 ||
				r.CryptoCPU <= 0 || r.ClientCPU <= 0 || r.JobsPerCommit < 1 {
				t.Errorf("a figure is zero: %+v, callbacks %.0f/s", r, res.CallbackRate)
			}
			if r.BrokerCPU <= 0 || r.CPURatio <= 0 {
				t.Errorf("broker CPU %s, ratio %.2f; want both", r.BrokerCPU, r.CPURatio)
			}
			if inProcess := tc.child == nil; inProcess != (r.Open > 0) {
				t.Errorf("Open %s: want it exactly in process (the profile split)", r.Open)
			}
			if fi, err := os.Stat(dir + "/api.prof"); err != nil || fi.Size() == 0 {
				t.Errorf("no CPU profile: %v", err)
			}
			t.Logf("crypto %.0f/s, sendjob %.0f/s (%.0f%%), CPU/token %s, broker CPU/request %s (%.0f%%; Open %s, writer %s), clients %s, runtime %s, %.1f jobs/commit, batch %.0f jobs/s, callbacks %.0f/s",
				r.CryptoRate, r.SendJobRate, 100*r.Ratio, r.CryptoCPU, r.BrokerCPU, 100*r.CPURatio, r.Open, r.Writer,
				r.ClientCPU, r.RuntimeCPU, r.JobsPerCommit, r.BatchJobs, res.CallbackRate)
		})
	}
}
