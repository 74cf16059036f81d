// Package bench is gradebroker's performance benchmark: the whole broker
// in-process (or, for memory, in a child process) over real mTLS with fake
// graderd clients that answer every Assign at once, results committed with
// synchronous=FULL. cmd/gbbench runs it and prints a markdown table.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Options choose what runs and for how long. Preset fills the zero fields.
type Options struct {
	// Preset is "default" (under five minutes), "quick" (about a minute,
	// smaller sizes) or "full" (longer windows, repeats).
	Preset string
	// Scenarios to run: throughput, latency, scale, rss; empty for all.
	Scenarios []string
	// Dir is where the work directory goes (databases, PKI, logs); it must
	// be on a real disk for synchronous=FULL to mean anything.
	Dir  string
	Keep bool
	// CPUProfile, if set, is written for the measurement window of the
	// 4 × 16 throughput run.
	CPUProfile string

	Warmup, Window time.Duration
	Servers        []int // throughput: server counts
	Slots          int
	ThroughputJobs int // queued for each throughput run

	LatRate  float64 // jobs/s; 0: half the measured 4 × 16 peak
	LatBatch int     // jobs per Submit
	// LatSlots is the slots of each of the latency run's 4 servers: enough
	// that a job finds a free slot when it is stored, which is what the
	// latency is defined on; with 16, at half the peak, some jobs wait for
	// a slot to free (counted in the report).
	LatSlots    int
	LatDuration time.Duration

	// ScaleSizes are the queue depths the scale scenario holds while it
	// drains, each measured ScaleRepeats times, the depths in turn (the
	// report shows the median; of an even number, the mean of the middle
	// two).
	ScaleSizes   []int
	ScaleRepeats int

	RSSJobs    int
	RSSStreams int
	RSSSlots   int
	RSSWindow  time.Duration
	BrokerBin  string   // "" re-executes gbbench as the broker
	RSSEnv     []string // extra KEY=VALUE for the child broker

	// ConsoleJobs is the size of the console scenario's database;
	// ConsoleRenders the requests timed per page; ConsoleSSE the browsers
	// on the live overview; ConsoleRepeats the pairs of drains (without
	// browsers, with them).
	ConsoleJobs    int
	ConsoleRenders int
	ConsoleSSE     int
	ConsoleRepeats int

	// XQueueClients is the XQueue scenario's concurrent LMS and
	// xqueue-watcher clients (and the native stream's slots beside them).
	XQueueClients int

	LogLevel   string // the broker's log level in the drains
	InfoLogRow bool   // add a 4 × 16 run at log level info (to a file)

	Command  string    // how gbbench was run, for the report
	Progress io.Writer // progress lines; nil for none
}

// Defaults fills the zero fields from the preset.
func (o *Options) Defaults() error {
	type preset struct {
		warm, window, lat, rssWindow time.Duration
		scale                        []int
		rssJobs, repeats             int
		consoleJobs                  int
	}
	presets := map[string]preset{
		"default": {2 * time.Second, 10 * time.Second, 15 * time.Second, 8 * time.Second, []int{1_000, 100_000, 1_000_000}, 1_000_000, 2, 1_000_000},
		"quick":   {time.Second, 4 * time.Second, 6 * time.Second, 4 * time.Second, []int{1_000, 20_000, 100_000}, 100_000, 1, 100_000},
		"full":    {3 * time.Second, 30 * time.Second, 60 * time.Second, 30 * time.Second, []int{1_000, 100_000, 1_000_000}, 1_000_000, 3, 1_000_000},
	}
	if o.Preset == "" {
		o.Preset = "default"
	}
	p, ok := presets[o.Preset]
	if !ok {
		return fmt.Errorf("preset %q: want default, quick or full", o.Preset)
	}
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	seti := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	set(&o.Warmup, p.warm)
	set(&o.Window, p.window)
	set(&o.LatDuration, p.lat)
	set(&o.RSSWindow, p.rssWindow)
	if len(o.Servers) == 0 {
		o.Servers = []int{1, 4, 16}
	}
	seti(&o.Slots, 16)
	// Enough for the window at 20,000 jobs/s; a faster broker drains it
	// early and the table says so.
	seti(&o.ThroughputJobs, int(20000*(o.Warmup+o.Window).Seconds()))
	seti(&o.LatBatch, 4)
	seti(&o.LatSlots, 64)
	if len(o.ScaleSizes) == 0 {
		o.ScaleSizes = p.scale
	}
	seti(&o.ScaleRepeats, p.repeats)
	seti(&o.RSSJobs, p.rssJobs)
	seti(&o.RSSStreams, 1000)
	seti(&o.RSSSlots, 1)
	seti(&o.ConsoleJobs, p.consoleJobs)
	seti(&o.ConsoleRenders, 200)
	seti(&o.ConsoleSSE, 50)
	seti(&o.ConsoleRepeats, p.repeats)
	seti(&o.XQueueClients, 16)
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	all := []string{"throughput", "latency", "scale", "rss", "console", "xqueue"}
	if len(o.Scenarios) == 0 {
		o.Scenarios = all
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(all, s) {
			return fmt.Errorf("scenario %q: want throughput, latency, scale, rss, console or xqueue", s)
		}
	}
	return nil
}

func (o *Options) want(s string) bool { return slices.Contains(o.Scenarios, s) }

// Run runs the scenarios and writes the markdown report to out.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if err := o.Defaults(); err != nil {
		return err
	}
	started := time.Now()
	dir, err := os.MkdirTemp(o.Dir, "gbbench-")
	if err != nil {
		return err
	}
	if !o.Keep {
		defer os.RemoveAll(dir)
	} else {
		progressf(o.Progress, "work directory %s is kept", dir)
	}
	rep := &Report{Options: o, Machine: Describe(dir), Dir: dir}
	progressf(o.Progress, "work directory %s (%s, fsync p50 %s)", dir, rep.Machine.DirFS, fmtDur(rep.Machine.FsyncP50))
	p, err := NewPKI(dir)
	if err != nil {
		return err
	}
	nBench := max(4, slices.Max(o.Servers))
	bench, err := p.Servers("bench", nBench)
	if err != nil {
		return err
	}
	logFile := filepath.Join(dir, "broker.log")

	// The biggest scale size and the memory run share one seeded file.
	var bigBase string
	var bigFx Fixture
	bigSize := 0
	var rssServers []ServerCert
	needBig := func(size int) (string, error) {
		if bigBase != "" && bigSize == size {
			return bigBase, nil
		}
		path := dbPath(dir, fmt.Sprintf("base-%d", size))
		t := time.Now()
		servers := bench
		if o.want("rss") && size == o.RSSJobs {
			if rssServers == nil {
				if rssServers, err = p.Servers("rss", o.RSSStreams); err != nil {
					return "", err
				}
			}
			servers = append(slices.Clone(bench), rssServers...)
		}
		if bigFx, err = seedWithServers(ctx, path, p, bench, servers, o.Slots, size); err != nil {
			return "", err
		}
		progressf(o.Progress, "seeded %d jobs and %d servers in %s", size, len(servers), time.Since(t).Round(time.Millisecond))
		if rep.SeedRate == 0 {
			rep.SeedRate = float64(size) / time.Since(t).Seconds()
		}
		bigBase, bigSize = path, size
		return path, nil
	}

	if o.want("throughput") {
		progressf(o.Progress, "throughput: seeding %d jobs", o.ThroughputJobs)
		base := dbPath(dir, "throughput-base")
		t := time.Now()
		if _, err := seedWithServers(ctx, base, p, bench, bench, o.Slots, o.ThroughputJobs); err != nil {
			return err
		}
		rep.SeedRate = float64(o.ThroughputJobs) / time.Since(t).Seconds()
		type tpRun struct {
			n     int
			level string
		}
		var runs []tpRun
		for _, n := range o.Servers {
			runs = append(runs, tpRun{n, o.LogLevel})
		}
		if o.InfoLogRow {
			runs = append(runs, tpRun{4, "info"})
		}
		for i, r := range runs {
			path := dbPath(dir, fmt.Sprintf("throughput-%d", i))
			if err := copyFile(base, path); err != nil {
				return err
			}
			prof := ""
			if r.n == 4 && r.level == o.LogLevel && o.CPUProfile != "" {
				prof = o.CPUProfile
			}
			res, err := runDrain(ctx, drainSpec{pki: p, dbPath: path, servers: bench[:r.n], slots: o.Slots,
				jobs: int64(o.ThroughputJobs), warmup: o.Warmup, window: o.Window, logLevel: r.level,
				logFile: logFile, profile: prof, progress: o.Progress})
			if err != nil {
				return fmt.Errorf("throughput %d×%d: %w", r.n, o.Slots, err)
			}
			os.Remove(path)
			rep.Throughput = append(rep.Throughput, throughputRow{drainResult: res, LogLevel: r.level})
			if r.n == 4 && r.level == o.LogLevel {
				rep.Peak4 = res.Rate
			}
		}
		os.Remove(base)
	}

	if o.want("latency") {
		rate := o.LatRate
		if rate == 0 {
			if rep.Peak4 == 0 {
				// No throughput run: measure the 4 × 16 peak briefly.
				progressf(o.Progress, "latency: measuring the 4×16 peak first")
				path := dbPath(dir, "peak")
				n := int(20000 * (time.Second + 4*time.Second).Seconds())
				if _, err := seedWithServers(ctx, path, p, bench, bench, o.Slots, n); err != nil {
					return err
				}
				res, err := runDrain(ctx, drainSpec{pki: p, dbPath: path, servers: bench[:4], slots: o.Slots,
					jobs: int64(n), warmup: time.Second, window: 4 * time.Second, logLevel: o.LogLevel,
					logFile: logFile, progress: o.Progress})
				if err != nil {
					return err
				}
				os.Remove(path)
				rep.Peak4 = res.Rate
			}
			rate = rep.Peak4 / 2
		}
		progressf(o.Progress, "latency: open loop at %.0f jobs/s, %d jobs per Submit, 4 × %d slots", rate, o.LatBatch, o.LatSlots)
		res, err := runLatency(ctx, latencySpec{pki: p, dir: dir, servers: bench[:4], slots: o.LatSlots, rate: rate,
			batch: o.LatBatch, warmup: o.Warmup, duration: o.LatDuration, logLevel: o.LogLevel, logFile: logFile,
			progress: o.Progress})
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		rep.Latency = &res
	}

	if o.want("scale") {
		// Every depth is measured in steady state: seeded to the depth, then
		// held there by a feeder (Dispatcher.Submit) while the fake graderds
		// drain it, so that no queue empties and every rate is over the same
		// warm-up and window. Repeats go round the depths in turn, so that a
		// busy spell on the shared machine does not land on one depth only.
		// Each depth is seeded once, copied for each run.
		type seeded struct {
			path string
			fx   Fixture
		}
		bases := map[int]seeded{}
		scaleBase := func(size int) (string, Fixture, error) {
			if b, ok := bases[size]; ok {
				return b.path, b.fx, nil
			}
			path := dbPath(dir, fmt.Sprintf("scale-base-%d", size))
			fx, err := seedWithServers(ctx, path, p, bench, bench, o.Slots, size)
			if err != nil {
				return "", fx, err
			}
			bases[size] = seeded{path, fx}
			return path, fx, nil
		}
		rows := make([]scaleRow, len(o.ScaleSizes))
		for r := 0; r < o.ScaleRepeats; r++ {
			for i, size := range o.ScaleSizes {
				progressf(o.Progress, "scale: %d queued, held (run %d of %d)", size, r+1, o.ScaleRepeats)
				rows[i].Size = size
				path := dbPath(dir, fmt.Sprintf("scale-%d", size))
				var base string
				var fx Fixture
				if size == slices.Max(o.ScaleSizes) {
					if base, err = needBig(size); err != nil {
						return err
					}
					fx = bigFx
				} else if base, fx, err = scaleBase(size); err != nil {
					return err
				}
				if err := copyFile(base, path); err != nil {
					return err
				}
				res, err := runDrain(ctx, drainSpec{pki: p, dbPath: path, servers: bench[:4], slots: o.Slots,
					jobs: int64(size), hold: size, fx: fx, warmup: o.Warmup, window: o.Window, logLevel: o.LogLevel,
					logFile: logFile, progress: o.Progress})
				if err != nil {
					return fmt.Errorf("scale %d: %w", size, err)
				}
				os.Remove(path)
				os.Remove(path + "-wal")
				os.Remove(path + "-shm")
				rows[i].Runs = append(rows[i].Runs, res)
			}
		}
		for _, b := range bases {
			os.Remove(b.path)
		}
		rep.Scale = rows
	}

	if o.want("rss") {
		progressf(o.Progress, "memory: %d queued, %d streams, broker in a child process", o.RSSJobs, o.RSSStreams)
		base, err := needBig(o.RSSJobs)
		if err != nil {
			return err
		}
		path := dbPath(dir, "rss")
		if err := copyFile(base, path); err != nil {
			return err
		}
		res, err := runRSS(ctx, rssSpec{pki: p, dbPath: path, jobs: int64(o.RSSJobs), streams: rssServers,
			slots: o.RSSSlots, window: o.RSSWindow, brokerBin: o.BrokerBin, env: o.RSSEnv,
			logFile: filepath.Join(dir, "broker-child.log"), progress: o.Progress})
		if err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		rep.RSS = &res
	}
	if o.want("console") {
		if rep.Console, err = runConsole(ctx, o, p, dir, bench, logFile); err != nil {
			return fmt.Errorf("console: %w", err)
		}
	}
	if o.want("xqueue") {
		if rep.XQueue, err = runXQueue(ctx, o, p, dir, bench, logFile); err != nil {
			return fmt.Errorf("xqueue: %w", err)
		}
	}
	rep.Machine.LoadEnd = loadavg()
	rep.Elapsed = time.Since(started)
	return rep.Write(out)
}

// seedWithServers seeds a database at path: the registry, every server in
// servers (bench servers get maxJobs, the others 1), and n jobs. It returns
// the registry's ids.
func seedWithServers(ctx context.Context, path string, p *PKI, bench, servers []ServerCert, maxJobs, n int) (Fixture, error) {
	db, fx, err := CreateDB(ctx, path, p, bench, maxJobs)
	if err != nil {
		return fx, err
	}
	if len(servers) > len(bench) {
		if err := AddServers(ctx, db, servers[len(bench):], 1); err != nil {
			db.Close()
			return fx, err
		}
	}
	if err := Seed(ctx, db, fx, 0, n, 20000); err != nil {
		db.Close()
		return fx, err
	}
	return fx, db.Close()
}
