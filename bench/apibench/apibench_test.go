package apibench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/gradebroker/gradebroker/internal/testutil"
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
	testutil.Slow(t, "the API benchmark, briefly, twice")
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
				r.CryptoCPU <= 0 || r.JobsPerCommit < 1 {
				t.Errorf("a figure is zero: %+v, callbacks %.0f/s", r, res.CallbackRate)
			}
			// With a child broker the clients' CPU is this process's, from
			// getrusage. In process it comes from the profile, where the
			// clients have a few per cent of the samples: a smoke run's
			// half second may hold none of theirs, and TestProfileSplit
			// proves that their samples are counted as theirs.
			if tc.child != nil && r.ClientCPU <= 0 {
				t.Errorf("clients' CPU %s with a child broker; want it measured", r.ClientCPU)
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

// TestProfileSplit reads real CPU profiles of goroutines labelled as the
// benchmark labels the broker and its clients, until one has samples of
// both (a profile samples at 100 Hz, so a short one may miss a side), and
// checks that each side's samples are counted as its own. Not parallel:
// the CPU profile is the process's, and TestRunSmoke takes it too.
func TestProfileSplit(t *testing.T) {
	var split cpuSplit
	testutil.Eventually(t, "a CPU profile with samples of the broker and of its clients", func() bool {
		var buf bytes.Buffer
		if err := pprof.StartCPUProfile(&buf); err != nil {
			t.Fatal(err)
		}
		// Each side spins on its own counter for 100 ms: the size of the
		// work, not a wait.
		var wg sync.WaitGroup
		var spun [3]atomic.Int64
		for i, labels := range []pprof.LabelSet{brokerLabels, clientLabel, pprof.Labels("other", "x")} {
			wg.Go(func() {
				pprof.Do(context.Background(), labels, func(context.Context) {
					for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
						spun[i].Add(1)
					}
				})
			})
		}
		wg.Wait()
		pprof.StopCPUProfile()
		var err error
		if split, err = splitProfile(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		return split.Broker > 0 && split.Clients > 0 && split.Runtime > 0
	})
	if split.Open != 0 || split.Writer != 0 {
		t.Errorf("split %+v: Open or Writer counted without their functions on the stack", split)
	}
}

// TestSplitProfileFunctions checks the split of the broker's samples by
// the function on their stack, on a profile written by the pprof library:
// token.Opener.Open anywhere on the stack is Open, the dispatcher's writer
// (or a closure of it) is Writer, the rest of the broker's is Broker;
// samples without the broker's label are never the broker's.
func TestSplitProfileFunctions(t *testing.T) {
	t.Parallel()
	fn := map[string]*profile.Function{}
	loc := func(names ...string) []*profile.Location {
		var out []*profile.Location
		for _, n := range names {
			if fn[n] == nil {
				fn[n] = &profile.Function{ID: uint64(len(fn) + 1), Name: n}
			}
			out = append(out, &profile.Location{ID: uint64(len(fn)*10 + len(out) + 1), Line: []profile.Line{{Function: fn[n]}}})
		}
		return out
	}
	broker := map[string][]string{labelKey: {brokerValue}}
	client := map[string][]string{labelKey: {clientValue}}
	ms := int64(time.Millisecond)
	samples := []*profile.Sample{
		{Location: loc("crypto/rsa.decrypt", openFunc, "net/http.(*conn).serve"), Value: []int64{1, 5 * ms}, Label: broker},
		{Location: loc("runtime.cgocall", writerFunc+".func1", writerFunc), Value: []int64{1, 3 * ms}, Label: broker},
		{Location: loc("encoding/json.Marshal", "net/http.(*conn).serve"), Value: []int64{1, 2 * ms}, Label: broker},
		{Location: loc(openFunc), Value: []int64{1, 7 * ms}, Label: client}, // a client opening a token is the client's
		{Location: loc("runtime.gcBgMarkWorker"), Value: []int64{1, 11 * ms}},
	}
	prof := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		Sample:     samples,
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:     10 * ms,
	}
	seen := map[uint64]bool{}
	for _, s := range samples {
		for _, l := range s.Location {
			if !seen[l.ID] {
				seen[l.ID] = true
				prof.Location = append(prof.Location, l)
			}
		}
	}
	for _, f := range fn {
		prof.Function = append(prof.Function, f)
	}
	var buf bytes.Buffer
	if err := prof.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := splitProfile(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := cpuSplit{Open: 5 * time.Millisecond, Writer: 3 * time.Millisecond, Broker: 2 * time.Millisecond,
		Clients: 7 * time.Millisecond, Runtime: 11 * time.Millisecond}
	if got != want {
		t.Errorf("split %+v, want %+v", got, want)
	}
}
