package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// brokerConfig is the broker's configuration for a benchmark database: the
// defaults (dispatcher defaults included: MaxBatch 4096), loopback ports.
func brokerConfig(p *PKI, dbPath, logLevel string) brokerd.Config {
	cfg := brokerd.DefaultConfig()
	cfg.Name = "gbbench"
	cfg.Database = dbPath
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CAFile, cfg.CertFile, cfg.KeyFile, cfg.TokenKeyFile = p.CAFile, p.BrokerCert, p.BrokerKey, p.TokenKey
	if logLevel != "" {
		cfg.LogLevel = logLevel
	}
	return cfg
}

// drainSpec is one drain measurement: a broker in-process over a seeded
// database, fake graderds over mTLS, everything queued before start; with
// hold, a feeder keeps the queue topped up while it drains (steady state).
type drainSpec struct {
	pki      *PKI
	dbPath   string
	servers  []ServerCert
	slots    int
	jobs     int64 // queued in the database
	warmup   time.Duration
	window   time.Duration
	logLevel string
	logFile  string // broker log; empty for none
	profile  string // CPU profile of the measurement window
	progress io.Writer
	// start and stop, if set, run when the servers get their slots and
	// when the measurement ends (for testing.B's timer).
	start, stop func()
	// hold, if > 0, is the queue depth a feeder goroutine keeps up during
	// the whole run by submitting fx.NewJob jobs through Dispatcher.Submit
	// whenever Stats().Queued falls feedMin or more below it. The run then
	// never drains: it is timed over the window like a deep queue.
	hold int
	fx   Fixture
	// configure, if set, changes the broker's config; started, if set,
	// runs once the broker is up and returns what to undo before it
	// stops (the console scenario's browsers).
	configure func(*brokerd.Config)
	started   func(*brokerd.Broker) (func(), error)
}

// drainResult is what a drain measured.
type drainResult struct {
	Servers, Slots int
	Queued         int64
	Load           time.Duration // brokerd.New + Start (Start loads the queue)
	Rate           float64       // jobs acked (result committed) per second
	Measured       time.Duration // the window the rate is over
	Acked          int64         // in the window
	Whole          bool          // queue emptied before warm-up ended: rate over the whole drain
	Drained        bool          // queue emptied before the window ended: window cut at 95 %
	Batches, Ops   uint64        // writer commits and ops in the window
	CPU            time.Duration // CPU time of the whole process (broker and clients) in the window
	Rejected       int64
	LoadAvg        string        // 1-minute load average when the run started
	Verified       int           // sampled acked jobs found done in the database
	DrainTime      time.Duration // Whole: from the slots to the last Ack

	// With drainSpec.hold: the depth held, Stats().Queued sampled every
	// 100 ms in the window, and the jobs the feeder submitted in it.
	Hold             int
	HoldMin, HoldMax int
	HoldAvg          float64
	HoldSamples      int
	Fed              int64 // jobs submitted by the feeder in the window
	FedCalls         int64 // Submit calls in the window
}

// fedRate is the feeder's submissions per second in the window.
func (r drainResult) fedRate() float64 {
	if r.Measured <= 0 {
		return 0
	}
	return float64(r.Fed) / r.Measured.Seconds()
}

// The feeder of a held queue submits when the queue is at least feedMin
// below the depth, at most feedMax jobs per Submit call, and otherwise
// looks again after feedPoll. The same for every depth.
const (
	feedMin  = 32
	feedMax  = 1024
	feedPoll = time.Millisecond
)

// feeder keeps a dispatcher's queue at a depth (see drainSpec.hold).
type feeder struct {
	fed, calls atomic.Int64
	err        error
	stop       context.CancelFunc
	done       chan struct{}
}

func startFeeder(ctx context.Context, disp *dispatch.Dispatcher, fx Fixture, depth int, firstName int) *feeder {
	fctx, cancel := context.WithCancel(ctx)
	f := &feeder{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		name := firstName
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			deficit := depth - disp.Stats().Queued
			if deficit < min(feedMin, depth) {
				t.Reset(feedPoll)
				select {
				case <-fctx.Done():
					return
				case <-t.C:
				}
				continue
			}
			jobs := make([]broker.NewJob, min(deficit, feedMax))
			for i := range jobs {
				jobs[i] = fx.NewJob(name)
				name++
			}
			if _, err := disp.Submit(fctx, jobs, nil, benchActor); err != nil {
				if fctx.Err() == nil {
					f.err = fmt.Errorf("feeder: submit: %w", err)
				}
				return
			}
			f.fed.Add(int64(len(jobs)))
			f.calls.Add(1)
		}
	}()
	return f
}

// Stop stops the feeder, waits for it and returns its error, if any.
func (f *feeder) Stop() error {
	if f == nil {
		return nil
	}
	f.stop()
	<-f.done
	return f.err
}

func (r drainResult) opsPerCommit() float64 {
	if r.Batches == 0 {
		return 0
	}
	return float64(r.Ops) / float64(r.Batches)
}

// cpuPerJob is the process's CPU time (broker and fake clients) per job.
func (r drainResult) cpuPerJob() time.Duration {
	n := r.Acked
	if r.Whole {
		n = r.Queued // CPU is over the whole drain
	}
	if n == 0 {
		return 0
	}
	return r.CPU / time.Duration(n)
}

func (r drainResult) commitsPerSec() float64 {
	if r.Measured <= 0 {
		return 0
	}
	return float64(r.Batches) / r.Measured.Seconds()
}

type sample struct {
	at           int64 // tally clock
	acked        int64
	fed, calls   int64 // by the feeder, if any
	batches, ops uint64
	cpu          time.Duration // this process's user+system CPU time
}

// processCPU returns the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func openLog(path, level string) (*slog.Logger, func(), error) {
	if path == "" {
		return slog.New(slog.DiscardHandler), func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cfg := brokerd.DefaultConfig()
	cfg.LogLevel = level
	return brokerd.NewLogger(cfg, f), func() { f.Close() }, nil
}

func runDrain(ctx context.Context, s drainSpec) (res drainResult, err error) {
	res = drainResult{Servers: len(s.servers), Slots: s.slots, Queued: s.jobs, LoadAvg: loadavg1()}
	log, closeLog, err := openLog(s.logFile, s.logLevel)
	if err != nil {
		return res, err
	}
	defer closeLog()
	t := time.Now()
	cfg := brokerConfig(s.pki, s.dbPath, s.logLevel)
	if s.configure != nil {
		s.configure(&cfg)
	}
	b, err := brokerd.New(ctx, cfg, log)
	if err != nil {
		return res, err
	}
	if err := b.Start(ctx); err != nil {
		return res, err
	}
	defer b.Close()
	if s.started != nil {
		undo, err := s.started(b)
		if err != nil {
			return res, err
		}
		defer undo()
	}
	res.Load = time.Since(t)
	disp := b.Dispatcher()
	if st := disp.Stats(); int64(st.Queued) != s.jobs {
		return res, fmt.Errorf("broker loaded %d queued jobs, want %d", st.Queued, s.jobs)
	}

	target := s.jobs
	if s.hold > 0 {
		target = 0 // never drains: no end, no 95 % mark
	}
	tally := NewTally(target)
	clients, err := DialAll(ctx, b.GRPCAddr(), s.pki, s.servers, tally, DialOptions{Slots: 0}, 8)
	if err != nil {
		return res, err
	}
	defer CloseAll(clients)

	// Start from a quiet process: what earlier runs left behind (garbage,
	// closing connections) is not this run's cost.
	runtime.GC()
	time.Sleep(300 * time.Millisecond)

	var feed *feeder
	defer func() { feed.Stop() }() // before b.Close
	snap := func() sample {
		st := disp.Stats()
		sm := sample{at: tally.now(), acked: tally.Acked(), batches: st.Batches, ops: st.BatchOps, cpu: processCPU()}
		if feed != nil {
			sm.fed, sm.calls = feed.fed.Load(), feed.calls.Load()
		}
		return sm
	}
	if s.start != nil {
		s.start()
	}
	if s.hold > 0 {
		feed = startFeeder(ctx, disp, s.fx, s.hold, int(s.jobs))
	}
	start := snap()
	t0 := start.at
	for _, c := range clients {
		c.SetSlots(uint32(s.slots))
	}
	warmEnd := t0 + int64(s.warmup)
	end := warmEnd + int64(s.window)
	var a sample
	haveA := false
	var samples []sample
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	// The depth actually held: Queued every 100 ms of the window.
	var depthTick <-chan time.Time
	if s.hold > 0 {
		dt := time.NewTicker(100 * time.Millisecond)
		defer dt.Stop()
		depthTick = dt.C
	}
	var depths []int
	var profFile *os.File
	stopProfile := func() {
		if profFile != nil {
			pprof.StopCPUProfile()
			profFile.Close()
			profFile = nil
		}
	}
	defer stopProfile()
loop:
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tally.Done():
			break loop
		case <-b.Failed():
			return res, fmt.Errorf("broker failed: %w", b.Err())
		case <-depthTick:
			if now := tally.now(); now >= warmEnd && now < end {
				depths = append(depths, disp.Stats().Queued)
			}
			continue
		case <-tick.C:
		}
		sm := snap()
		samples = append(samples, sm)
		if !haveA && sm.at >= warmEnd {
			a, haveA = sm, true
			if s.profile != "" {
				if profFile, err = os.Create(s.profile); err != nil {
					return res, err
				}
				if err := pprof.StartCPUProfile(profFile); err != nil {
					return res, err
				}
			}
		}
		if sm.at >= end {
			break
		}
	}
	stopProfile()
	if s.stop != nil {
		s.stop()
	}
	final := snap()
	if err := feed.Stop(); err != nil {
		return res, err
	}
	for _, c := range clients {
		if err := c.Err(); err != nil {
			return res, fmt.Errorf("fake graderd %s: %w", c.Name, err)
		}
	}
	res.Rejected = tally.rejected.Load()
	// An Ack must mean the result is on disk: check a sample of acked jobs.
	for _, id := range tally.Sampled() {
		j, err := b.DB().GetJob(ctx, id)
		if err != nil {
			return res, fmt.Errorf("acked job %d: %w", id, err)
		}
		if j.State != broker.JobDone {
			return res, fmt.Errorf("job %d was acked but is %s in the database", id, j.State)
		}
		res.Verified++
	}
	switch {
	case !haveA:
		// Drained during warm-up: timed from the first Ack to the one that
		// reached 95 %, so that neither the start (the first assigns'
		// commit and round trip) nor the last leases in flight count.
		res.Whole = true
		tally.firstMu.Lock()
		firstAt, firstN, at95, n95 := tally.firstAt, tally.firstN, tally.at95, tally.n95
		tally.firstMu.Unlock()
		res.Measured = time.Duration(at95 - firstAt)
		res.Acked = n95 - firstN
		res.DrainTime = time.Duration(tally.doneAt.Load() - t0)
		if res.Measured <= 0 || res.Acked <= 0 {
			res.Measured, res.Acked = res.DrainTime, s.jobs
		}
		res.Batches, res.Ops = final.batches, final.ops
		res.CPU = final.cpu - start.cpu
	default:
		b := final
		if s.hold == 0 && final.acked >= s.jobs {
			// Drained inside the window: stop at 95 % so that the
			// ramp-down of the last leases does not count.
			res.Drained = true
			for _, sm := range samples {
				if sm.at > a.at && sm.acked >= s.jobs*95/100 {
					b = sm
					break
				}
			}
		}
		res.Measured = time.Duration(b.at - a.at)
		res.Acked = b.acked - a.acked
		res.Batches, res.Ops = b.batches-a.batches, b.ops-a.ops
		res.CPU = b.cpu - a.cpu
		res.Fed, res.FedCalls = b.fed-a.fed, b.calls-a.calls
	}
	if res.Measured > 0 {
		res.Rate = float64(res.Acked) / res.Measured.Seconds()
	}
	if s.hold > 0 {
		res.Hold = s.hold
		if len(depths) == 0 {
			return res, fmt.Errorf("no queue depth sampled in the window")
		}
		res.HoldSamples = len(depths)
		res.HoldMin, res.HoldMax = slices.Min(depths), slices.Max(depths)
		sum := 0
		for _, d := range depths {
			sum += d
		}
		res.HoldAvg = float64(sum) / float64(len(depths))
		progressf(s.progress, "  %d×%d, %d held: %.0f jobs/s over %s (load %s, %.1f ops/commit, %s CPU/job; queued min %d avg %.0f max %d; fed %.0f jobs/s in %d calls)",
			res.Servers, res.Slots, s.hold, res.Rate, res.Measured.Round(time.Millisecond), res.Load.Round(time.Millisecond), res.opsPerCommit(), fmtDur(res.cpuPerJob()),
			res.HoldMin, res.HoldAvg, res.HoldMax, res.fedRate(), res.FedCalls)
		return res, nil
	}
	progressf(s.progress, "  %d×%d, %d queued: %.0f jobs/s over %s (load %s, %.1f ops/commit, %s CPU/job)",
		res.Servers, res.Slots, res.Queued, res.Rate, res.Measured.Round(time.Millisecond), res.Load.Round(time.Millisecond), res.opsPerCommit(), fmtDur(res.cpuPerJob()))
	return res, nil
}

func progressf(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, "gbbench: "+format+"\n", args...)
	}
}

// seedDB makes a database at path with the registry, servers and n queued
// jobs, and closes it.
func seedDB(ctx context.Context, path string, p *PKI, servers []ServerCert, maxJobs, n int) (Fixture, error) {
	db, fx, err := CreateDB(ctx, path, p, servers, maxJobs)
	if err != nil {
		return fx, err
	}
	if err := Seed(ctx, db, fx, 0, n, 20000); err != nil {
		db.Close()
		return fx, err
	}
	return fx, db.Close()
}

func dbPath(dir, name string) string { return filepath.Join(dir, name+".db") }
