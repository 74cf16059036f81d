package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// latencySpec is an open-loop run: jobs go in through Dispatcher.Submit at
// a fixed rate, batch jobs per call, each call in its own goroutine on a
// fixed schedule (a slow commit does not slow the schedule down).
type latencySpec struct {
	pki      *PKI
	dir      string
	servers  []ServerCert
	slots    int
	rate     float64 // jobs/s
	batch    int     // jobs per Submit
	warmup   time.Duration
	duration time.Duration // measured part, after warm-up
	logLevel string
	logFile  string
	progress io.Writer
}

// latencyResult is the latency from a job becoming eligible (the end of the
// group commit that stores it) to its Assign's arrival at a fake graderd,
// with two brackets: from Submit's return (after the commit and its
// follow-up work: shorter) and from Submit's call (before the commit: longer).
type latencyResult struct {
	Rate        float64 // asked
	Achieved    float64 // submitted in the measured part / its length
	Drained     float64 // acks/s over the measured part
	Batch       int
	Jobs        int // measured jobs
	Commit      dist
	Return      dist
	Call        dist
	Negative    int           // Assign seen before its commit ended (clamped to 0)
	SubmitP50   time.Duration // Submit call time (waits for the group commit)
	SubmitP99   time.Duration
	Missing     int // measured jobs whose Assign never came
	Over        int // jobs over the p99 target, from the commit
	OverPeriods int // distinct 100 ms periods (by commit) they fall in
	Periods     int // 100 ms periods measured
	OpsPerBatch float64
	// Leases written in the measured part, and how many of them in the
	// commit that stored their job: the job found a free slot at once.
	Leases, Inline uint64
	Slots          int
	// Group commits that began in the measured part: how long each took
	// (begin to commit), and how many took 5 ms or more.
	Commits, SlowCommits int
	CommitTime           dist
}

// dist is a latency distribution's summary.
type dist struct {
	P50, P90, P99, P999, Max time.Duration
}

func distOf(ds []time.Duration) dist {
	slices.Sort(ds)
	if len(ds) == 0 {
		return dist{}
	}
	return dist{P50: quantile(ds, 0.50), P90: quantile(ds, 0.90), P99: quantile(ds, 0.99),
		P999: quantile(ds, 0.999), Max: ds[len(ds)-1]}
}

// commitMark is one group commit on the tally clock.
type commitMark struct{ begin, end int64 }

// commitOf returns the end of the commit that stored an op enqueued at or
// after t: the first commit that began after t. (An op enqueued just after
// a commit began, inside the same nanoseconds, would be in the next one; the
// error is then on the side of a longer latency.)
func commitOf(commits []commitMark, t int64) (int64, bool) {
	i, _ := slices.BinarySearchFunc(commits, t, func(c commitMark, t int64) int { return cmp.Compare(c.begin, t) })
	if i == len(commits) {
		return 0, false
	}
	return commits[i].end, true
}

type submitted struct {
	sched int64 // tally clock: when the call was due
	start int64
	ret   int64
	ids   []int64
	err   error
}

func runLatency(ctx context.Context, s latencySpec) (latencyResult, error) {
	res := latencyResult{Rate: s.rate, Batch: s.batch, Slots: s.slots}
	path := dbPath(s.dir, "latency")
	db, fx, err := CreateDB(ctx, path, s.pki, s.servers, s.slots)
	if err != nil {
		return res, err
	}
	if err := db.Close(); err != nil {
		return res, err
	}
	log, closeLog, err := openLog(s.logFile, s.logLevel)
	if err != nil {
		return res, err
	}
	defer closeLog()
	tally := NewTally(0)
	// Every group commit's begin and end on the tally clock: a job is
	// eligible when the commit that stores it ends.
	var commitMu sync.Mutex
	var commits []commitMark
	cfg := brokerConfig(s.pki, path, s.logLevel)
	cfg.OnCommit = func(_ int, took time.Duration) {
		end := tally.now()
		commitMu.Lock()
		commits = append(commits, commitMark{begin: end - int64(took), end: end})
		commitMu.Unlock()
	}
	b, err := brokerd.New(ctx, cfg, log)
	if err != nil {
		return res, err
	}
	if err := b.Start(ctx); err != nil {
		return res, err
	}
	defer b.Close()
	disp := b.Dispatcher()
	clients, err := DialAll(ctx, b.GRPCAddr(), s.pki, s.servers, tally, DialOptions{Slots: uint32(s.slots), Track: true}, 8)
	if err != nil {
		return res, err
	}
	defer CloseAll(clients)

	runtime.GC()
	time.Sleep(300 * time.Millisecond)
	interval := time.Duration(float64(s.batch) / s.rate * float64(time.Second))
	var mu sync.Mutex
	var subs []submitted
	var wg sync.WaitGroup
	submit := func(sched int64, first int) {
		defer wg.Done()
		jobs := make([]broker.NewJob, s.batch)
		for i := range jobs {
			jobs[i] = fx.NewJob(first + i)
		}
		sb := submitted{sched: sched, start: tally.now()}
		out, err := disp.Submit(ctx, jobs, nil, benchActor)
		sb.ret = tally.now()
		sb.err = err
		for _, in := range out {
			sb.ids = append(sb.ids, in.ID)
		}
		mu.Lock()
		subs = append(subs, sb)
		mu.Unlock()
	}
	start := tally.now()
	measureFrom := start + int64(s.warmup)
	end := measureFrom + int64(s.duration)
	var st0, st1 dispatch.Stats
	var ack0, ack1 int64
	next := start
	n := 0
	marked := false
	for next < end {
		if d := time.Duration(next - tally.now()); d > 0 {
			time.Sleep(d)
		}
		now := tally.now()
		if !marked && now >= measureFrom {
			st0, ack0, marked = disp.Stats(), tally.Acked(), true
		}
		for next <= now && next < end {
			wg.Add(1)
			go submit(next, n)
			n += s.batch
			next += int64(interval)
		}
		if ctx.Err() != nil {
			break
		}
	}
	st1, ack1 = disp.Stats(), tally.Acked()
	wg.Wait()
	// Let the last jobs through.
	deadline := time.Now().Add(15 * time.Second)
	for tally.Acked() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	CloseAll(clients) // waits for the receive goroutines: Received is safe after

	type times struct{ start, ret, commit int64 }
	timesOf := make(map[int64]times, n)
	var subDur []time.Duration
	for _, sb := range subs {
		if sb.err != nil {
			return res, fmt.Errorf("submit: %w", sb.err)
		}
		if sb.sched < measureFrom {
			continue
		}
		subDur = append(subDur, time.Duration(sb.ret-sb.start))
		commit, ok := commitOf(commits, sb.start)
		if !ok {
			return res, fmt.Errorf("no commit recorded after a Submit call at %s", time.Duration(sb.start))
		}
		for _, id := range sb.ids {
			timesOf[id] = times{sb.start, sb.ret, commit}
		}
	}
	res.Jobs = len(timesOf)
	var fromCommit, fromReturn, fromCall []time.Duration
	seen := make(map[int64]bool, len(timesOf))
	overBuckets := make(map[int64]bool)
	for _, c := range clients {
		for _, r := range c.Received() {
			t, ok := timesOf[r.job]
			if !ok || seen[r.job] {
				continue
			}
			seen[r.job] = true
			d := time.Duration(r.at - t.commit)
			if d < 0 {
				res.Negative++
				d = 0
			}
			if d >= targetP99 {
				res.Over++
				overBuckets[t.commit/int64(100*time.Millisecond)] = true
			}
			fromCommit = append(fromCommit, d)
			fromReturn = append(fromReturn, max(0, time.Duration(r.at-t.ret)))
			fromCall = append(fromCall, time.Duration(r.at-t.start))
		}
	}
	res.Missing = res.Jobs - len(fromCommit)
	res.OverPeriods = len(overBuckets)
	res.Periods = int(s.duration / (100 * time.Millisecond))
	if len(fromCommit) == 0 {
		return res, fmt.Errorf("no Assign arrived for the %d measured jobs", res.Jobs)
	}
	res.Commit, res.Return, res.Call = distOf(fromCommit), distOf(fromReturn), distOf(fromCall)
	var took []time.Duration
	for _, c := range commits {
		if c.begin >= measureFrom && c.begin < end {
			took = append(took, time.Duration(c.end-c.begin))
			if c.end-c.begin >= int64(targetP99) {
				res.SlowCommits++
			}
		}
	}
	res.Commits, res.CommitTime = len(took), distOf(took)
	slices.Sort(subDur)
	res.SubmitP50, res.SubmitP99 = quantile(subDur, 0.50), quantile(subDur, 0.99)
	secs := s.duration.Seconds()
	res.Achieved = float64(res.Jobs) / secs
	res.Drained = float64(ack1-ack0) / secs
	res.Leases, res.Inline = st1.Assigned-st0.Assigned, st1.AssignedInline-st0.AssignedInline
	if d := st1.Batches - st0.Batches; d > 0 {
		res.OpsPerBatch = float64(st1.BatchOps-st0.BatchOps) / float64(d)
	}
	progressf(s.progress, "  open loop %.0f jobs/s (%d per Submit), from the commit: p50 %s p99 %s max %s over %d jobs; %d over 5 ms in %d of %d 100 ms periods; from Submit's return p99 %s, from its call p99 %s",
		s.rate, s.batch, fmtDur(res.Commit.P50), fmtDur(res.Commit.P99), fmtDur(res.Commit.Max), res.Jobs, res.Over, res.OverPeriods, res.Periods,
		fmtDur(res.Return.P99), fmtDur(res.Call.P99))
	progressf(s.progress, "  %d of %d leases written in the commit that stored the job (a slot was free)", res.Inline, res.Leases)
	progressf(s.progress, "  %d commits: p50 %s p99 %s max %s, %d took 5 ms or more",
		res.Commits, fmtDur(res.CommitTime.P50), fmtDur(res.CommitTime.P99), fmtDur(res.CommitTime.Max), res.SlowCommits)
	return res, nil
}

// quantile returns the q-quantile of sorted ds (nearest rank).
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(q*float64(len(ds))+0.999999) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
}
