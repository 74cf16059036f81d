package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ChildArg is the hidden first argument that makes gbbench run the broker,
// exactly as `broker serve` does, for the memory measurement.
const ChildArg = "__broker-serve"

// rssSpec measures the broker's resident memory in a child process with
// jobs queued and streams connected from the parent.
type rssSpec struct {
	pki       *PKI
	dbPath    string // seeded, closed
	jobs      int64
	streams   []ServerCert
	slots     int           // per stream in the load phase
	window    time.Duration // load phase
	brokerBin string        // "" re-executes gbbench
	env       []string      // extra KEY=VALUE for the child (GOMEMLIMIT, GOGC)
	logFile   string
	progress  io.Writer
}

type rssResult struct {
	Jobs        int64
	Streams     int
	Slots       int
	Bin         string
	Env         []string
	Load        time.Duration // child start to "broker started"
	Loaded      int64         // kB VmRSS after load, no streams
	Idle        int64         // kB VmRSS with every stream connected, 0 slots
	LoadPeak    int64         // kB highest VmRSS sampled in the load phase
	HWM         int64         // kB VmHWM at the end
	LoadRate    float64       // jobs/s acked in the load phase
	ConnectTime time.Duration
}

// childCommand returns how to start `broker serve` with args.
func childCommand(bin string, args []string) (*exec.Cmd, string, error) {
	if bin != "" {
		return exec.Command(bin, append([]string{"serve"}, args...)...), bin + " serve", nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	return exec.Command(self, append([]string{ChildArg}, args...)...), "gbbench (re-executed; runs brokerd.Run as `broker serve` does)", nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func runRSS(ctx context.Context, s rssSpec) (res rssResult, err error) {
	res = rssResult{Jobs: s.jobs, Streams: len(s.streams), Slots: s.slots}
	grpcAddr, err := freePort()
	if err != nil {
		return res, err
	}
	httpAddr, err := freePort()
	if err != nil {
		return res, err
	}
	// Info level: the parent waits for the "broker started" line. No job
	// finishes before the load phase, whose per-job lines go to the file.
	args := []string{"--name", "gbbench", "--database", s.dbPath, "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--ca-file", s.pki.CAFile, "--cert-file", s.pki.BrokerCert, "--key-file", s.pki.BrokerKey,
		"--token-key-file", s.pki.TokenKey, "--log-level", "info"}
	cmd, desc, err := childCommand(s.brokerBin, args)
	if err != nil {
		return res, err
	}
	res.Bin = desc
	res.Env = s.env
	logf, err := os.Create(s.logFile)
	if err != nil {
		return res, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), s.env...)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start broker: %w", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// Stop our child, by its pid only.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	if err := waitLogLine(ctx, s.logFile, `msg="broker started"`, exited, 10*time.Minute); err != nil {
		return res, err
	}
	res.Load = time.Since(t0)
	time.Sleep(time.Second) // let the loader's garbage be collected
	if res.Loaded, _, err = procStatus(pid); err != nil {
		return res, err
	}
	progressf(s.progress, "  child broker loaded %d jobs in %s: VmRSS %d MB", s.jobs, res.Load.Round(time.Millisecond), res.Loaded/1024)

	tally := NewTally(0)
	tc := time.Now()
	clients, err := DialAll(ctx, grpcAddr, s.pki, s.streams, tally, DialOptions{Slots: 0}, 16)
	if err != nil {
		return res, err
	}
	defer CloseAll(clients)
	res.ConnectTime = time.Since(tc)
	time.Sleep(3 * time.Second)
	if res.Idle, _, err = procStatus(pid); err != nil {
		return res, err
	}
	progressf(s.progress, "  %d streams connected (0 slots) in %s: VmRSS %d MB", len(clients), res.ConnectTime.Round(time.Millisecond), res.Idle/1024)

	for _, c := range clients {
		c.SetSlots(uint32(s.slots))
	}
	tl := time.Now()
	warm := min(2*time.Second, s.window/4)
	var a0 int64
	var ta time.Time
	for time.Since(tl) < s.window {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case err := <-exited:
			return res, fmt.Errorf("broker exited: %v (log %s)", err, s.logFile)
		case <-time.After(250 * time.Millisecond):
		}
		rss, _, err := procStatus(pid)
		if err != nil {
			return res, err
		}
		res.LoadPeak = max(res.LoadPeak, rss)
		if ta.IsZero() && time.Since(tl) >= warm {
			a0, ta = tally.Acked(), time.Now()
		}
	}
	if !ta.IsZero() {
		res.LoadRate = float64(tally.Acked()-a0) / time.Since(ta).Seconds()
	}
	_, res.HWM, _ = procStatus(pid)
	progressf(s.progress, "  %d streams × %d slot draining for %s: peak VmRSS %d MB, VmHWM %d MB",
		len(clients), s.slots, s.window, res.LoadPeak/1024, res.HWM/1024)
	return res, nil
}

// waitLogLine polls a log file until a line contains want.
func waitLogLine(ctx context.Context, path, want string, exited <-chan error, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if f, err := os.Open(path); err == nil {
			sc := bufio.NewScanner(f)
			found := false
			for sc.Scan() {
				if strings.Contains(sc.Text(), want) {
					found = true
					break
				}
			}
			f.Close()
			if found {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-exited:
			return fmt.Errorf("broker exited before it started: %v (see %s)", err, path)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("broker did not start within " + limit.String())
}
