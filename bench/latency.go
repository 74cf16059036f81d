package bench

import (
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

// latencyResult is the latency from a job becoming eligible (the commit that
// stores it) to its Assign's arrival at a fake graderd, bracketed: measured
// from Submit's return (after the commit: a lower bound) and from Submit's
// call (before it: an upper bound).
type latencyResult struct {
	Rate        float64 // asked
	Achieved    float64 // submitted in the measured part / its length
	Drained     float64 // acks/s over the measured part
	Batch       int
	Jobs        int // measured jobs
	Negative    int // Assign seen before Submit returned (clamped to 0)
	P50, P90    time.Duration
	P99, P999   time.Duration
	Max         time.Duration
	SubmitP50   time.Duration // Submit call time (waits for the group commit)
	SubmitP99   time.Duration
	Missing     int // measured jobs whose Assign never came
	Over        int // jobs over the p99 target
	OverPeriods int // distinct 100 ms periods (by Submit return) they fall in
	Periods     int // 100 ms periods measured
	OpsPerBatch float64

	// The same jobs measured from the Submit call instead of its return:
	// an upper bound that also counts the wait for the commit that makes
	// the job eligible (the P fields above are a lower bound).
	CallP50, CallP90  time.Duration
	CallP99, CallP999 time.Duration
	CallMax           time.Duration
}

type submitted struct {
	sched int64 // tally clock: when the call was due
	start int64
	ret   int64
	ids   []int64
	err   error
}

func runLatency(ctx context.Context, s latencySpec) (latencyResult, error) {
	res := latencyResult{Rate: s.rate, Batch: s.batch}
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
	b, err := brokerd.New(ctx, brokerConfig(s.pki, path, s.logLevel), log)
	if err != nil {
		return res, err
	}
	if err := b.Start(ctx); err != nil {
		b.DB().Close()
		return res, err
	}
	defer b.Close()
	disp := b.Dispatcher()
	tally := NewTally(0)
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

	retOf := make(map[int64]int64, n)
	startOf := make(map[int64]int64, n)
	var subDur []time.Duration
	for _, sb := range subs {
		if sb.err != nil {
			return res, fmt.Errorf("submit: %w", sb.err)
		}
		if sb.sched < measureFrom {
			continue
		}
		subDur = append(subDur, time.Duration(sb.ret-sb.start))
		for _, id := range sb.ids {
			retOf[id] = sb.ret
			startOf[id] = sb.start
		}
	}
	res.Jobs = len(retOf)
	lat := make([]time.Duration, 0, len(retOf))
	fromCall := make([]time.Duration, 0, len(retOf))
	seen := make(map[int64]bool, len(retOf))
	overBuckets := make(map[int64]bool)
	for _, c := range clients {
		for _, r := range c.Received() {
			ret, ok := retOf[r.job]
			if !ok || seen[r.job] {
				continue
			}
			seen[r.job] = true
			fromCall = append(fromCall, time.Duration(r.at-startOf[r.job]))
			d := time.Duration(r.at - ret)
			if d < 0 {
				res.Negative++
				d = 0
			}
			if d >= targetP99 {
				res.Over++
				overBuckets[ret/int64(100*time.Millisecond)] = true
			}
			lat = append(lat, d)
		}
	}
	res.Missing = res.Jobs - len(lat)
	res.OverPeriods = len(overBuckets)
	res.Periods = int(s.duration / (100 * time.Millisecond))
	if len(lat) == 0 {
		return res, fmt.Errorf("no Assign arrived for the %d measured jobs", res.Jobs)
	}
	slices.Sort(lat)
	slices.Sort(subDur)
	slices.Sort(fromCall)
	res.CallP50, res.CallP90, res.CallP99 = quantile(fromCall, 0.50), quantile(fromCall, 0.90), quantile(fromCall, 0.99)
	res.CallP999, res.CallMax = quantile(fromCall, 0.999), fromCall[len(fromCall)-1]
	res.P50, res.P90, res.P99, res.P999 = quantile(lat, 0.50), quantile(lat, 0.90), quantile(lat, 0.99), quantile(lat, 0.999)
	res.Max = lat[len(lat)-1]
	res.SubmitP50, res.SubmitP99 = quantile(subDur, 0.50), quantile(subDur, 0.99)
	secs := s.duration.Seconds()
	res.Achieved = float64(res.Jobs) / secs
	res.Drained = float64(ack1-ack0) / secs
	if d := st1.Batches - st0.Batches; d > 0 {
		res.OpsPerBatch = float64(st1.BatchOps-st0.BatchOps) / float64(d)
	}
	progressf(s.progress, "  open loop %.0f jobs/s (%d per Submit): p50 %s p99 %s max %s over %d jobs; %d over 5 ms in %d of %d 100 ms periods; from the Submit call p50 %s p99 %s",
		s.rate, s.batch, fmtDur(res.P50), fmtDur(res.P99), fmtDur(res.Max), res.Jobs, res.Over, res.OverPeriods, res.Periods,
		fmtDur(res.CallP50), fmtDur(res.CallP99))
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
