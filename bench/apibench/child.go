package apibench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradebroker/gradebroker/broker/brokerd"
)

// ChildArg is the hidden first argument with which gbbench runs the broker
// of the api scenario in a child process (ServeChild), so that the broker's
// CPU time is measured apart from the benchmark's HTTP clients.
const ChildArg = "__api-broker"

// ServeChild runs a broker as `broker serve` does with the flags in args,
// logging to stderr, and answers the parent on stdin and stdout, one line
// each way:
//
//	(child)  listening <https host:port>     once the broker serves
//	stats    ok cpu=<ns> batches=<n> ops=<n>  this process's CPU time (user +
//	                                          system) and the writer's commits
//	profile <file>                            start a CPU profile
//	stop-profile                              stop it
//
// Every command is answered "ok ..." or "error ...". The broker stops when
// stdin ends, ctx is cancelled or the broker fails.
func ServeChild(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cfg, err := brokerd.ParseServeFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "apibench broker: %v\n", err)
		return 2
	}
	log := brokerd.NewLogger(cfg, stderr)
	b, err := brokerd.New(ctx, cfg, log)
	if err != nil {
		log.Error("broker did not start", "err", err)
		return 1
	}
	if err := b.Start(ctx); err != nil {
		log.Error("broker did not start", "err", err)
		return 1
	}
	defer b.Close()
	fmt.Fprintf(stdout, "listening %s\n", b.HTTPAddr())

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var prof *os.File
	defer func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
	}()
	for {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
			if !ok {
				return 0
			}
		case <-ctx.Done():
			return 0
		case <-b.Failed():
			log.Error("broker failed", "err", b.Err())
			return 1
		}
		cmd, arg, _ := strings.Cut(line, " ")
		switch {
		case cmd == "stats":
			batches, ops := writerStats(b.Metrics().Registry())
			fmt.Fprintf(stdout, "ok cpu=%d batches=%d ops=%d\n", processCPU(), batches, ops)
		case cmd == "profile" && arg != "" && prof == nil:
			f, err := os.Create(arg)
			if err == nil {
				if err = pprof.StartCPUProfile(f); err != nil {
					f.Close()
				}
			}
			if err != nil {
				fmt.Fprintf(stdout, "error %v\n", err)
				continue
			}
			prof = f
			fmt.Fprintln(stdout, "ok")
		case cmd == "stop-profile" && prof != nil:
			pprof.StopCPUProfile()
			err := prof.Close()
			prof = nil
			if err != nil {
				fmt.Fprintf(stdout, "error %v\n", err)
				continue
			}
			fmt.Fprintln(stdout, "ok")
		default:
			fmt.Fprintf(stdout, "error unknown command %q\n", line)
		}
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writerStats reads how many batches the dispatcher's writer committed and
// how many changes they held, from the broker's metrics.
func writerStats(reg *prometheus.Registry) (batches, ops uint64) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, 0
	}
	for _, mf := range mfs {
		if mf.GetName() != "gradebroker_write_batch_ops" || len(mf.GetMetric()) == 0 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		return h.GetSampleCount(), uint64(h.GetSampleSum())
	}
	return 0, 0
}

// stats are a broker's counters at one moment.
type stats struct {
	cpu          time.Duration // the broker process's CPU time
	batches, ops uint64        // the writer's commits and the changes in them
}

// child is a broker in a child process, started by startChild.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	exited chan error
	log    string
}

// startChild starts the broker with `broker serve` flags args, its log in
// logFile, and returns it with the address of its REST gateway.
func startChild(command func(args []string) *exec.Cmd, args []string, logFile string) (*child, string, error) {
	cmd := command(args)
	logf, err := os.Create(logFile)
	if err != nil {
		return nil, "", err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start broker: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 1), exited: make(chan error, 1), log: logFile}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.exited <- cmd.Wait()
	}()
	first, err := c.read(2 * time.Minute)
	if err != nil {
		c.stop()
		return nil, "", err
	}
	addr, ok := strings.CutPrefix(first, "listening ")
	if !ok {
		c.stop()
		return nil, "", fmt.Errorf("broker child said %q, not listening (log %s)", first, logFile)
	}
	return c, addr, nil
}

func (c *child) read(limit time.Duration) (string, error) {
	select {
	case line, ok := <-c.lines:
		if ok {
			return line, nil
		}
		return "", fmt.Errorf("broker child exited (log %s)", c.log)
	case <-time.After(limit):
		return "", fmt.Errorf("broker child did not answer within %s (log %s)", limit, c.log)
	}
}

// ask sends one command and returns what follows "ok".
func (c *child) ask(command string) (string, error) {
	if _, err := fmt.Fprintln(c.stdin, command); err != nil {
		return "", fmt.Errorf("broker child: %w (log %s)", err, c.log)
	}
	line, err := c.read(time.Minute)
	if err != nil {
		return "", err
	}
	if rest, ok := strings.CutPrefix(line, "ok"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", fmt.Errorf("broker child: %s: %s", command, line)
}

func (c *child) stats() (stats, error) {
	line, err := c.ask("stats")
	if err != nil {
		return stats{}, err
	}
	var s stats
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return stats{}, fmt.Errorf("broker child: stats: %q", line)
		}
		switch k {
		case "cpu":
			s.cpu = time.Duration(n)
		case "batches":
			s.batches = n
		case "ops":
			s.ops = n
		}
	}
	return s, nil
}

// stop ends the child: stdin closed, which stops the broker gracefully, or
// after 30 s a kill of this child's pid.
func (c *child) stop() error {
	c.stdin.Close()
	lines := c.lines
	kill := time.After(30 * time.Second)
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				lines = nil
			}
		case err := <-c.exited:
			if err != nil {
				return fmt.Errorf("broker child: %w (log %s)", err, c.log)
			}
			return nil
		case <-kill:
			_ = c.cmd.Process.Kill()
			for range lines {
			}
			<-c.exited
			return fmt.Errorf("broker child did not stop within 30 s; killed (log %s)", c.log)
		}
	}
}

// machineCPU reads the time all CPUs of the machine spent busy and in all,
// in clock ticks, from /proc/stat; ok is false where there is none. Idle
// and iowait count as idle; guest time is inside user time already.
func machineCPU() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += n
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy, total, true
}

// idleMeter adds up the machine's idle share over several intervals.
type idleMeter struct{ busy, total uint64 }

// machineSample is machineCPU at one moment.
type machineSample struct {
	busy, total uint64
	ok          bool
}

func sampleMachine() machineSample {
	b, t, ok := machineCPU()
	return machineSample{b, t, ok}
}

// add counts the interval from a to b.
func (m *idleMeter) add(a, b machineSample) {
	if a.ok && b.ok && b.total > a.total {
		m.busy += b.busy - a.busy
		m.total += b.total - a.total
	}
}

// idle is the share of the machine's CPU time left idle, or -1 if unknown.
func (m *idleMeter) idle() float64 {
	if m.total == 0 {
		return -1
	}
	return 1 - float64(m.busy)/float64(m.total)
}
