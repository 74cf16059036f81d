// Command gbbench is gradebroker's performance benchmark: throughput,
// latency, queue-depth scaling and memory of the whole broker over real
// mTLS, printed as a markdown table. `make bench` runs it; see -h.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gradebroker/gradebroker/bench"
	"github.com/gradebroker/gradebroker/bench/apibench"
	"github.com/gradebroker/gradebroker/bench/dockerbench"
	"github.com/gradebroker/gradebroker/bench/kubebench"
	"github.com/gradebroker/gradebroker/bench/sandboxbench"
	"github.com/gradebroker/gradebroker/broker/brokerd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The broker runs in this process (or in a child re-executing it):
	// give it the scheduler setting `broker serve` uses.
	brokerd.AddWriterProc()
	if len(os.Args) > 1 && os.Args[1] == bench.ChildArg {
		os.Exit(serve(ctx, os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == apibench.ChildArg {
		os.Exit(apibench.ServeChild(ctx, os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "gbbench: %v\n", err)
		os.Exit(1)
	}
}

// serve is the child broker of the memory run: `broker serve` with args.
func serve(ctx context.Context, args []string) int {
	cfg, err := brokerd.ParseServeFlags(args, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gbbench broker: %v\n", err)
		return 2
	}
	log := brokerd.NewLogger(cfg, os.Stderr)
	if err := brokerd.Run(ctx, cfg, log); err != nil {
		log.Error("broker stopped with an error", "err", err)
		return 1
	}
	return 0
}

const usage = `Usage: gbbench [flags]

Benchmarks the broker over real mTLS with fake graderd clients and prints a
markdown table (stdout); progress goes to stderr. By default it runs every
scenario in about seven minutes: throughput (1, 4, 16 servers × 16 slots),
latency (open loop at half the 4 × 16 peak, to 4 servers with 64 slots
each so that jobs find a free slot), scale (drain rate with 1,000 / 100,000
/ 1,000,000 jobs queued, each depth held by a feeder while it drains), memory (1,000,000 queued, 1,000 streams, broker in a child
process), the web console (render time of its job pages over 1,000,000 jobs,
and the dispatch rate with 50 browsers on the live overview against none),
the XQueue interface (an LMS's submit/ and xqueue-watcher's pull → put_result
beside the native stream with as many slots), the platform API (REST sendjob
with real tokens beside the crypto-only rate, batch submission, result
callbacks), the sandbox's cost per grading run (a no-op grader with and
without it; needs root and crun), the container executors' (a no-op grader
through the docker executor beside docker run --rm of the same image, and a
scenarios job's overhead; needs a Docker engine), and the kubernetes
executor's pod lifecycle and API calls per job against a real kube-apiserver
(make kube-apiserver) with a fake node agent.

Like ` + "`broker serve`" + `, it runs with one Go processor more than the cores
(GOMAXPROCS cores + 1) unless the GOMAXPROCS environment variable is set.

Flags:
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o bench.Options
	fs := flag.NewFlagSet("gbbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	quick := fs.Bool("quick", false, "smoke run of about a minute: shorter windows, smaller queues (100,000 at most)")
	full := fs.Bool("full", false, "longer windows (30 s) and more repeats")
	only := fs.String("only", "", "comma-separated scenarios: throughput,latency,scale,rss,console,xqueue,api,sandbox,docker,kubernetes (default all)")
	sandboxRuns := fs.Int("sandbox-runs", 300, "sandbox: no-op runs of each kind")
	dockerRuns := fs.Int("docker-runs", 100, "docker: no-op runs of each kind (executor, docker run --rm)")
	scenarioRuns := fs.Int("scenario-runs", 20, "docker: scenarios jobs of one request")
	kubeRuns := fs.Int("kube-runs", 200, "kubernetes: jobs through the executor, and bare pods")
	apiBits := fs.String("api-bits", "2048,4096", "api: RSA key sizes to measure")
	apiClients := fs.Int("api-clients", 64, "api: concurrent HTTP clients")
	apiProfile := fs.String("api-cpuprofile", "", "api: write a CPU profile of one extra sendjob window to `file` (key size appended when several)")
	apiChild := fs.Bool("api-child", false, "api: run the broker in a child process and read its CPU time there (which the switching between the two processes inflates), instead of splitting a profile of one process")
	servers := fs.String("servers", "1,4,16", "throughput: comma-separated server counts")
	scale := fs.String("scale", "", "scale: comma-separated queue depths, each held while it drains (default 1000,100000,1000000)")
	fs.StringVar(&o.Dir, "dir", "", "where to make the work directory (default $TMPDIR); must be a real disk")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work directory (databases, logs)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the 4 × 16 throughput window to `file`")
	fs.DurationVar(&o.Warmup, "warmup", 0, "warm-up before each measurement window (default by preset)")
	fs.DurationVar(&o.Window, "window", 0, "measurement window of each drain (default by preset)")
	fs.IntVar(&o.Slots, "slots", 16, "slots per server")
	fs.IntVar(&o.XQueueClients, "xqueue-clients", 16, "xqueue: concurrent LMS and xqueue-watcher clients (and the native stream's slots)")
	fs.IntVar(&o.ThroughputJobs, "throughput-jobs", 0, "jobs queued for each throughput run (default 20,000/s × (warm-up + window))")
	fs.Float64Var(&o.LatRate, "lat-rate", 0, "latency: offered jobs/s (default half the measured 4 × 16 peak)")
	fs.IntVar(&o.LatBatch, "lat-batch", 4, "latency: jobs per Submit call")
	fs.IntVar(&o.LatSlots, "lat-slots", 64, "latency: slots of each of the 4 fake graderds (16 is the throughput runs' size: at half their peak some jobs then wait for a slot, which the report counts)")
	fs.DurationVar(&o.LatDuration, "lat-duration", 0, "latency: measured duration after warm-up (default by preset)")
	fs.IntVar(&o.RSSJobs, "rss-jobs", 0, "memory: jobs queued (default 1,000,000)")
	fs.IntVar(&o.RSSStreams, "rss-streams", 1000, "memory: connected streams")
	fs.IntVar(&o.RSSSlots, "rss-slots", 1, "memory: slots per stream in the load phase")
	fs.DurationVar(&o.RSSWindow, "rss-window", 0, "memory: length of the load phase (default by preset)")
	fs.StringVar(&o.BrokerBin, "broker-bin", "", "memory: run this `broker` binary (e.g. bin/broker) instead of re-executing gbbench")
	rssEnv := fs.String("rss-env", "", "memory: comma-separated KEY=VALUE for the child broker, e.g. GOMEMLIMIT=150MiB")
	fs.StringVar(&o.LogLevel, "log-level", "warn", "the broker's log level in the in-process runs (info logs a line per job)")
	fs.BoolVar(&o.InfoLogRow, "info-log-row", false, "add a 4 × 16 throughput run with the broker logging at info to a file")
	fs.BoolVar(&o.InfoLogRow, "info-row", false, "same as --info-log-row")
	quiet := fs.Bool("q", false, "no progress on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case *quick && *full:
		return errors.New("--quick and --full exclude each other")
	case *quick:
		o.Preset = "quick"
	case *full:
		o.Preset = "full"
		o.InfoLogRow = true
	}
	var err error
	if o.Servers, err = ints(*servers); err != nil {
		return fmt.Errorf("--servers: %w", err)
	}
	if *scale != "" {
		if o.ScaleSizes, err = ints(*scale); err != nil {
			return fmt.Errorf("--scale: %w", err)
		}
	}
	if *rssEnv != "" {
		o.RSSEnv = strings.Split(*rssEnv, ",")
	}
	wantAPI, wantSandbox, wantDocker, wantKube := *only == "", *only == "", *only == "", *only == ""
	if *only != "" {
		for _, sc := range strings.Split(*only, ",") {
			if sc == "api" {
				wantAPI = true
				continue
			}
			if sc == "kubernetes" {
				wantKube = true
				continue
			}
			if sc == "sandbox" {
				wantSandbox = true
				continue
			}
			if sc == "docker" {
				wantDocker = true
				continue
			}
			o.Scenarios = append(o.Scenarios, sc)
		}
	}
	ao := apibench.Options{Clients: *apiClients, Dir: o.Dir, CPUProfile: *apiProfile}
	if *apiChild {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		ao.Child = func(args []string) *exec.Cmd {
			return exec.Command(self, append([]string{apibench.ChildArg}, args...)...)
		}
	}
	if ao.Bits, err = ints(*apiBits); err != nil {
		return fmt.Errorf("--api-bits: %w", err)
	}
	switch {
	case *quick:
		ao.Window, ao.Bits = 3*time.Second, []int{2048}
	case *full:
		ao.Window = 20 * time.Second
	}
	if !*quiet {
		o.Progress = stderr
	}
	o.Command = strings.Join(append([]string{"gbbench"}, args...), " ")
	start := time.Now()
	if *only == "" || len(o.Scenarios) > 0 {
		err = bench.Run(ctx, o, stdout)
	}
	if err == nil && wantSandbox {
		so := sandboxbench.Options{Runs: *sandboxRuns}
		if *quick {
			so.Runs = 50
		}
		if !*quiet {
			so.Progress = stderr
		}
		var res sandboxbench.Result
		if res, err = sandboxbench.Run(ctx, so); err == nil {
			err = res.Write(stdout)
		}
	}
	if err == nil && wantDocker {
		do := dockerbench.Options{Runs: *dockerRuns, ScenarioRuns: *scenarioRuns}
		if *quick {
			do.Runs, do.ScenarioRuns = 10, 3
		}
		if !*quiet {
			do.Progress = stderr
		}
		var res dockerbench.Result
		if res, err = dockerbench.Run(ctx, do); err == nil {
			err = res.Write(stdout)
		}
	}
	if err == nil && wantKube {
		ko := kubebench.Options{Runs: *kubeRuns}
		if *quick {
			ko.Runs = 30
		}
		if !*quiet {
			ko.Progress = stderr
		}
		var res kubebench.Result
		if res, err = kubebench.Run(ctx, ko); err == nil {
			err = res.Write(stdout)
		}
	}
	if err == nil && wantAPI {
		if !*quiet {
			ao.Progress = stderr
		}
		if ao.Dir == "" {
			ao.Dir = os.TempDir()
		}
		var res apibench.Result
		if res, err = apibench.Run(ctx, ao); err == nil {
			err = res.Write(stdout)
		}
	}
	if !*quiet {
		fmt.Fprintf(stderr, "gbbench: done in %s\n", time.Since(start).Round(time.Second))
	}
	return err
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(strings.ReplaceAll(f, "_", "")))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
