// Package sandboxbench measures what graderd's sandbox costs a run: a no-op
// grader run by the exec executor with and without the sandbox, alternately
// in one process, so that both see the machine in the same state.
package sandboxbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
)

// Options of a run.
type Options struct {
	// Runs is how many runs of each kind (default 300).
	Runs int
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
}

// Result is what Run measured.
type Result struct {
	Runs       int
	None, Sand series
	Machine    string
	Load       [2]string // load average before and after
	Crun       string
}

// series is one kind of run's measurements.
type series struct {
	wall, cpu []time.Duration
}

func (s *series) add(wall, cpu time.Duration) {
	s.wall = append(s.wall, wall)
	s.cpu = append(s.cpu, cpu)
}

// Pct is the p-th percentile of ds.
func Pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// Mean is the mean of ds.
func Mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// noop is the grader: it answers {} at once (the exec convention's
// smallest valid grader; /bin/echo does not read stdin, which the executor
// allows).
var noop = []string{"/bin/echo", "{}"}

// Run measures. It needs root and crun, as graderd's sandbox does.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Runs <= 0 {
		o.Runs = 300
	}
	state, err := os.MkdirTemp("", "gbbench-sandbox-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(state)
	sb, err := executor.NewSandbox(executor.SandboxConfig{Slots: 1, StateDir: state})
	if err != nil {
		return Result{}, fmt.Errorf("the sandbox benchmark needs graderd's sandbox (root, crun): %w", err)
	}
	none := &executor.Exec{Command: noop, WorkRoot: state}
	sand := &executor.Exec{Command: noop, Sandbox: sb}
	r := Result{Runs: o.Runs, Machine: Machine(), Load: [2]string{LoadAvg(), ""}, Crun: crunVersion()}
	job := executor.Job{JobID: 1, LeaseID: 1, JobData: []byte(`{}`), Timeout: time.Minute}
	// Warm up: the first runs load binaries and libraries into the cache.
	for range 10 {
		none.Run(ctx, job)
		sand.Run(ctx, job)
	}
	for i := range o.Runs {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		for _, k := range []struct {
			e *executor.Exec
			s *series
		}{{none, &r.None}, {sand, &r.Sand}} {
			t := time.Now()
			res := k.e.Run(ctx, job)
			wall := time.Since(t)
			if res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK {
				return r, fmt.Errorf("a no-op run failed: %s", res.Error)
			}
			k.s.add(wall, res.Usage.CPUTime)
		}
		if o.Progress != nil && (i+1)%100 == 0 {
			fmt.Fprintf(o.Progress, "sandbox: %d/%d runs of each\n", i+1, o.Runs)
		}
	}
	r.Load[1] = LoadAvg()
	return r, nil
}

// Write prints the report as markdown.
func (r Result) Write(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Sandbox overhead per run\n\n")
	fmt.Fprintf(&b, "%s; %s; load average %s before, %s after; %d runs of each kind, alternating.\n\n", r.Machine, r.Crun, r.Load[0], r.Load[1], r.Runs)
	fmt.Fprintf(&b, "No-op grader (`/bin/echo {}`) run by the exec executor, from Run's call to its return (work directory or sandbox set up and removed, cgroup, stdin document, result read).\n\n")
	fmt.Fprintf(&b, "| run | p50 | p99 | mean | CPU per run (cgroup: the grader and crun) |\n| --- | ---: | ---: | ---: | ---: |\n")
	row := func(name string, s series) {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, MS(Pct(s.wall, 50)), MS(Pct(s.wall, 99)), MS(Mean(s.wall)), MS(Mean(s.cpu)))
	}
	row("without the sandbox (sandbox: none)", r.None)
	row("in the sandbox (crun)", r.Sand)
	fmt.Fprintf(&b, "| **overhead** | **%s** | %s | %s | |\n", MS(Pct(r.Sand.wall, 50)-Pct(r.None.wall, 50)), MS(Pct(r.Sand.wall, 99)-Pct(r.None.wall, 99)), MS(Mean(r.Sand.wall)-Mean(r.None.wall)))
	fmt.Fprintf(&b, "\nTarget: p50 overhead at most 25 ms.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// MS writes d in milliseconds with one decimal.
func MS(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// Machine describes the machine: CPU, CPU count, kernel, cgroup version.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	cg := "cgroup v1"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cg = "cgroup v2"
	}
	return fmt.Sprintf("%s, %d CPUs, Linux %s, %s", model, cpus(), strings.TrimSpace(string(kernel)), cg)
}

func cpus() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\nprocessor") + 1
}

// LoadAvg is the one-minute load average.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func crunVersion() string {
	out, err := exec.Command("crun", "--version").Output()
	if err != nil {
		return "crun: " + err.Error()
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}
