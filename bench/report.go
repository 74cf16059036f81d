package bench

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is everything one gbbench run measured.
type Report struct {
	Options    Options
	Machine    Machine
	Dir        string
	SeedRate   float64 // jobs/s through BeginJobs/InsertJob
	Throughput []throughputRow
	Peak4      float64
	Latency    *latencyResult
	Scale      []scaleRow
	RSS        *rssResult
	Console    *consoleResult
	XQueue     *xqueueResult
	Elapsed    time.Duration
}

type throughputRow struct {
	drainResult
	LogLevel string
}

type scaleRow struct {
	Size int
	Runs []drainResult
}

// rate is the median of the runs' rates (of an even number, the mean of the
// middle two).
func (r scaleRow) rate() float64 {
	var v []float64
	for _, x := range r.Runs {
		v = append(v, x.Rate)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[n/2]
}

// cpuPerJob is the median of the runs' CPU per job (of an even number, the
// mean of the middle two).
func (r scaleRow) cpuPerJob() time.Duration {
	var c []time.Duration
	for _, x := range r.Runs {
		c = append(c, x.cpuPerJob())
	}
	slices.Sort(c)
	n := len(c)
	if n%2 == 0 {
		return (c[n/2-1] + c[n/2]) / 2
	}
	return c[n/2]
}

// load is the mean broker start (brokerd.New + Start) of the runs.
func (r scaleRow) load() time.Duration {
	var t time.Duration
	for _, x := range r.Runs {
		t += x.Load
	}
	return t / time.Duration(len(r.Runs))
}

// fedRate is what the feeder submitted per second over all the windows.
func (r scaleRow) fedRate() float64 {
	var n int64
	var t time.Duration
	for _, x := range r.Runs {
		n += x.Fed
		t += x.Measured
	}
	if t <= 0 {
		return 0
	}
	return float64(n) / t.Seconds()
}

// loadAvgs lists the runs' 1-minute load averages at their start.
func (r scaleRow) loadAvgs() string {
	var l []string
	for _, x := range r.Runs {
		l = append(l, x.LoadAvg)
	}
	return strings.Join(l, ", ")
}

// held returns the lowest Queued sampled in any run's window and the mean
// of all the samples.
func (r scaleRow) held() (lo int, avg float64) {
	n := 0
	for i, x := range r.Runs {
		if i == 0 || x.HoldMin < lo {
			lo = x.HoldMin
		}
		avg += x.HoldAvg * float64(x.HoldSamples)
		n += x.HoldSamples
	}
	if n > 0 {
		avg /= float64(n)
	}
	return lo, avg
}

func verified(rows []throughputRow) int {
	n := 0
	for _, r := range rows {
		n += r.Verified
	}
	return n
}

// Targets from the issue.
const (
	targetThroughput = 12000.0
	targetP99        = 5 * time.Millisecond
	targetSpread     = 0.20
	targetRSSBytes   = 200e6
)

// num formats n with thousands separators.
func num(n float64) string {
	s := strconv.FormatInt(int64(n+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func yes(ok bool) string {
	if ok {
		return "**yes**"
	}
	return "**no**"
}

func mb(kb int64) string { return fmt.Sprintf("%.0f MB", float64(kb)*1024/1e6) }

func (r *Report) Write(w io.Writer) error {
	o := r.Options
	m := r.Machine
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("## gradebroker benchmark")
	p("")
	p("`%s` (preset %s) · %s · took %s", o.Command, o.Preset, time.Now().UTC().Format("2006-01-02 15:04 MST"), r.Elapsed.Round(time.Second))
	p("")
	p("| machine | |")
	p("| --- | --- |")
	p("| CPU | %s (nproc %d, GOMAXPROCS %d) |", m.CPUModel, m.NCPU, m.GOMAXPROCS)
	p("| memory | %s |", m.MemTotal)
	p("| kernel | Linux %s |", m.Kernel)
	p("| Go | %s |", m.GoVersion)
	p("| SQLite | %s (mattn/go-sqlite3, cgo), WAL, synchronous=FULL |", m.SQLite)
	p("| database directory | %s; 4 KiB write+fsync p50 %s, p99 %s |", m.DirFS, fmtDur(m.FsyncP50), fmtDur(m.FsyncP99))
	p("| load average (1, 5, 15 min) | %s at start, %s at end |", m.LoadStart, m.LoadEnd)
	p("| 1 ms sleep wakes up late by | p50 %s, p99 %s (scheduling noise at start) |", fmtDur(m.WakeP50), fmtDur(m.WakeP99))
	p("")
	p("> **Pessimistic figures.** The machine is shared with other engineers working on it during the run, and the")
	p("> fake graderd clients run in the same process as the broker (or, for memory, in the parent process), on the")
	p("> same %d cores. A dedicated broker machine would do better.", m.NCPU)
	p("")

	if len(r.Throughput) > 0 {
		t0 := r.Throughput[0]
		p("### Throughput: jobs drained per second (queued → assigned → result committed)")
		p("")
		p("| servers × slots | jobs/s | target | commits/s | ops/commit | CPU per job | measured over | load avg |")
		p("| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |")
		for _, t := range r.Throughput {
			name := fmt.Sprintf("%d × %d", t.Servers, t.Slots)
			if t.LogLevel != o.LogLevel {
				name += fmt.Sprintf(" (broker log %s, to a file)", t.LogLevel)
			}
			target := ""
			if t.Servers == 4 && t.LogLevel == o.LogLevel {
				target = fmt.Sprintf("≥ 12,000: %s (%.0f %%)", yes(t.Rate >= targetThroughput), 100*t.Rate/targetThroughput)
			}
			over := fmt.Sprintf("%.1f s", t.Measured.Seconds())
			if t.Drained {
				over += " (queue emptied; cut at 95 %)"
			}
			p("| %s | %s | %s | %s | %.1f | %s | %s | %s |", name, num(t.Rate), target, num(t.commitsPerSec()), t.opsPerCommit(), fmtDur(t.cpuPerJob()), over, t.LoadAvg)
		}
		p("")
		p("%s jobs queued at start of each run (seeded through store BeginJobs/InsertJob at %s jobs/s, then loaded by",
			num(float64(t0.Queued)), num(r.SeedRate))
		p("the dispatcher at broker start). A job counts when the broker's Ack for its result reaches the fake graderd (the")
		p("broker acks after the commit). Rate = acks in a %s window after %s of warm-up. ops/commit and commits/s come",
			o.Window, o.Warmup)
		p("from the dispatcher's Stats (BatchOps / Batches): each job is two ops, its assign and its finish. CPU per job is")
		p("the user+system CPU time of the whole gbbench process (broker and fake clients) in the window / jobs acked:")
		p("less sensitive than jobs/s to other work on a shared machine. Load avg is the 1-minute load average when the")
		p("run started (this process included). Checked after each run: %s sampled acked jobs (ids divisible by 997) read",
			num(float64(verified(r.Throughput))))
		p("back as done from the database.")
		p("")
	}

	if l := r.Latency; l != nil {
		p("### Latency: job eligible (the commit that stores it) → Assign received by a fake graderd with a free slot")
		p("")
		p("| offered load | measured from | p50 | p90 | p99 | p99.9 | max | target p99 < 5 ms |")
		p("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
		load := fmt.Sprintf("%s jobs/s", num(l.Rate))
		if o.LatRate == 0 {
			load += fmt.Sprintf(" (half the 4 × 16 peak of %s)", num(r.Peak4))
		}
		row := func(load, from string, d dist, judge bool) {
			verdict := ""
			if judge {
				verdict = yes(d.P99 < targetP99)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s |", load, from, fmtDur(d.P50), fmtDur(d.P90), fmtDur(d.P99), fmtDur(d.P999), fmtDur(d.Max), verdict)
		}
		row(load, "the end of the job's commit", l.Commit, true)
		row("", "Submit's return (shorter)", l.Return, false)
		row("", "Submit's call (longer: includes the commit)", l.Call, false)
		p("")
		p("4 × %d fake graderds, queue empty at start. Open loop: Dispatcher.Submit in batches of %d jobs, each call in",
			l.Slots, l.Batch)
		p("its own goroutine on a fixed schedule (%s calls/s), %s measured after %s of warm-up (%s jobs; achieved %s",
			num(l.Rate/float64(l.Batch)), o.LatDuration, o.Warmup, num(float64(l.Jobs)), num(l.Achieved))
		p("jobs/s submitted, %s jobs/s drained, %.1f ops/commit). A job is eligible when the group commit that stores it",
			num(l.Drained), l.OpsPerBatch)
		p("ends: the broker's commit hook records every commit's begin and end, and a job's commit is the first one that")
		p("began after its Submit was called (if that guess is early, the latency comes out longer, never shorter). Its")
		p("latency is the fake client's receive time of its Assign minus that end (same process, monotonic clock). A job")
		p("submitted while a server has a free slot is stored and leased in that one transaction and its Assign is queued")
		p("for the stream right after the commit, before Submit returns: %s of the %s leases of the measured part were",
			num(float64(l.Inline)), num(float64(l.Leases)))
		p("written so (the others waited for a slot to free: the latency is defined for a server with a free slot, which")
		p("is why the servers have %d slots here; with --lat-slots 16 and no-op jobs, slots run out during slow commits).", l.Slots)
		p("Submit itself (it waits for the group commit) took")
		p("p50 %s, p99 %s. %s jobs (%.2f %%) took 5 ms or more from their commit; they fall in %d of the %d 100 ms periods",
			fmtDur(l.SubmitP50), fmtDur(l.SubmitP99), num(float64(l.Over)), 100*float64(l.Over)/float64(max(1, l.Jobs)), l.OverPeriods, l.Periods)
		p("measured (few periods: stalls, e.g. another process or a WAL checkpoint; many: the dispatch path itself is slow).")
		p("The %s group commits of the measured part took p50 %s, p99 %s, max %s from begin to commit; %d took 5 ms or",
			num(float64(l.Commits)), fmtDur(l.CommitTime.P50), fmtDur(l.CommitTime.P99), fmtDur(l.CommitTime.Max), l.SlowCommits)
		p("more (a slow commit delays every job behind it; a tail without slow commits is scheduling on the shared cores).")
		if l.Drained < 0.95*l.Rate || l.Commit.P50 > 50*time.Millisecond {
			p("**The broker did not keep up with the offered load during this run** (a backlog built up): the latency is")
			p("queueing, not the dispatch path. Compare with the throughput table's load average and rerun with --lat-rate.")
		}
		if l.Negative > 0 || l.Missing > 0 {
			p("%d Assigns arrived before their recorded commit end (counted as 0); %d measured jobs got no Assign.", l.Negative, l.Missing)
		}
		p("")
	}

	if len(r.Scale) > 0 {
		runs := len(r.Scale[0].Runs)
		avg := "median"
		switch {
		case runs == 1:
			avg = ""
		case runs == 2:
			avg = "mean"
		case runs%2 == 0:
			avg = "median (mean of the middle two)"
		}
		p("### Scale: drain rate by queue depth, held in steady state (4 × 16)")
		p("")
		p("| queue depth held | queued in the window (lowest / mean) | broker start (loads the queue) | jobs/s | vs best | jobs fed/s | CPU per job | load avg |")
		p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		best, worst := 0.0, 0.0
		cpuLo, cpuHi := time.Duration(0), time.Duration(0)
		for i, s := range r.Scale {
			rate := s.rate()
			if i == 0 || rate > best {
				best = rate
			}
			if i == 0 || rate < worst {
				worst = rate
			}
			if c := s.cpuPerJob(); i == 0 || c < cpuLo {
				cpuLo = c
			}
			if c := s.cpuPerJob(); c > cpuHi {
				cpuHi = c
			}
		}
		for _, s := range r.Scale {
			rate := num(s.rate())
			if len(s.Runs) > 1 {
				lo, hi := s.Runs[0].Rate, s.Runs[0].Rate
				for _, x := range s.Runs {
					lo, hi = min(lo, x.Rate), max(hi, x.Rate)
				}
				rate += fmt.Sprintf(" (%d runs: %s–%s)", len(s.Runs), num(lo), num(hi))
			}
			vs := 0.0
			if best > 0 {
				vs = 100 * (s.rate() - best) / best
			}
			lo, mean := s.held()
			p("| %s | %s / %s | %.2f s | %s | %+.0f %% | %s | %s | %s |", num(float64(s.Size)), num(float64(lo)), num(mean),
				s.load().Seconds(), rate, vs, num(s.fedRate()), fmtDur(s.cpuPerJob()), s.loadAvgs())
		}
		spread := 0.0
		if best > 0 {
			spread = (best - worst) / best
		}
		cpuSpread := 0.0
		if cpuHi > 0 {
			cpuSpread = float64(cpuHi-cpuLo) / float64(cpuHi)
		}
		r0 := r.Scale[0].Runs[0]
		how := "one run per depth"
		if runs > 1 {
			how = fmt.Sprintf("%d runs per depth, taken in turn round the depths so that a busy spell on the machine does not land on one depth only; jobs/s and CPU per job are the %s of the runs, broker start the mean", runs, avg)
		}
		p("")
		p("Within 20 %% of each other: %s by jobs/s (slowest %.0f %% below the fastest); CPU per job differs by %.0f %%",
			yes(spread <= targetSpread), 100*spread, 100*cpuSpread)
		p("(%s by that measure, which other load on the machine disturbs less).", yes(cpuSpread <= targetSpread))
		p("")
		p("Every depth is measured the same way, in steady state. The database is seeded with that many queued jobs")
		p("(store BeginJobs/InsertJob; loaded by the dispatcher at broker start) and, from the moment the fake graderds")
		p("get their slots, a feeder goroutine keeps the queue at that depth: whenever Dispatcher.Stats().Queued is %d",
			feedMin)
		p("or more below it, it submits the difference (at most %s jobs per call) through Dispatcher.Submit, the same",
			num(feedMax))
		p("group-committed path as the platform API; otherwise it looks again after %s. No queue empties, so each rate", feedPoll)
		p("is acks in a %s window after %s of warm-up (%s).", o.Window, o.Warmup, how)
		p("Queued (waiting jobs, not the %d leased ones) is sampled every 100 ms of each window (%d samples per run):",
			r0.Servers*r0.Slots, r0.HoldSamples)
		p("lowest sample of all runs / mean of all samples. Jobs fed/s (over all the windows) should equal jobs/s. CPU per")
		p("job is the whole process's CPU in the window / jobs acked, so it includes inserting the job that replaces each")
		p("one drained. Load avg: the 1-minute load average at the start of each run.")
		p("")
	}

	if s := r.RSS; s != nil {
		p("### Memory: broker resident set (VmRSS) in a child process")
		p("")
		p("| broker state | VmRSS | target |")
		p("| --- | ---: | --- |")
		p("| %s jobs queued, loaded, no stream | %s | |", num(float64(s.Jobs)), mb(s.Loaded))
		p("| + %s streams connected, 0 slots each | %s | < 200 MB: %s |", num(float64(s.Streams)), mb(s.Idle), yes(float64(s.Idle)*1024 < targetRSSBytes))
		worst := max(s.LoadPeak, s.HWM)
		p("| + the streams take %d slot each and drain for %s (highest sample; VmHWM %s) | %s | < 200 MB: %s |",
			s.Slots, o.RSSWindow, mb(s.HWM), mb(s.LoadPeak), yes(float64(worst)*1024 < targetRSSBytes))
		p("")
		p("MB = 10⁶ bytes, from /proc/PID/status. Broker: %s, started in %.1f s with the queue loaded; the %s",
			s.Bin, s.Load.Seconds(), num(float64(s.Streams)))
		p("streams (one TLS connection each, from the parent) connected in %.1f s. Drain rate while %s streams × %d",
			s.ConnectTime.Seconds(), num(float64(s.Streams)), s.Slots)
		p("slot drained: %s jobs/s (broker log level info to a file here: one line per job).", num(s.LoadRate))
		if len(s.Env) > 0 {
			p("Child environment: %s.", strings.Join(s.Env, " "))
		}
		p("")
	}

	if x := r.XQueue; x != nil {
		writeXQueue(p, x, o)
	}
	if c := r.Console; c != nil {
		writeConsole(p, c, o)
	}

	p("### Setup")
	p("")
	p("- Registry: tag `bench`, one server type with it, servers registered with db.AddServer from certstest client")
	p("  certificates (role server), one platform with an **empty return_url**: finishing a job creates no delivery, so")
	p("  no callback work is included.")
	p("- Broker: brokerd.New/Start (gRPC on 127.0.0.1, TLS 1.3, client certificates required), dispatcher defaults")
	p("  (MaxBatch 4096), SQLite WAL with synchronous=FULL, log level %s except where noted.", o.LogLevel)
	p("- Fake graderd: one gRPC ClientConn and one Connect stream per server; Hello, Welcome, then every Assign is")
	p("  answered at once with Result{OUTCOME_OK, `{\"score\":100}`} from a separate sender goroutine. Drains connect")
	p("  with 0 slots and then send Slots{16} to every stream at once, so that all servers start together.")
	p("- Jobs: jobdata `{\"task\":\"bench\",\"i\":N}`, tag bench, timeout 300 s, 3 attempts, one priority, one platform.")
	_, err := io.WriteString(w, b.String())
	return err
}
