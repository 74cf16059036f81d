package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/password"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/xqueue/xqueuetest"
	"github.com/gradebroker/gradebroker/certs"
)

// The XQueue scenario: the XQueue interface on the broker's HTTPS gateway,
// spoken by the clients of broker/xqueue/xqueuetest (the LMS's
// XQueueInterface and xqueue-watcher's XQueueClient as their sources
// write them), beside the native stream's drain with as many slots, in the
// same run:
//
//   - LMS submit: Clients LMS sessions post submit/ (form-encoded, a
//     typical capa body, each to its own callback URL) as fast as they
//     are answered;
//   - pull → put_result: Clients xqueue-watcher sessions of one user (its
//     server has Clients max jobs) each get_submission, then put_result,
//     again and again; a round trip counts when put_result is answered
//     (the result committed). Every result also goes to a local LMS
//     callback endpoint through the outbox, which the native stream's
//     platform (no return URL) does not do;
//   - the native stream: a fake graderd with Clients slots over gRPC
//     (the throughput scenario's 1 × 16 when Clients is 16).

// xqueueCapaBody is an LMS body of the usual size.
const xqueueCapaBody = `{"student_info": "{\"anonymous_student_id\": \"6d07814a4ece5cdda54af1558a6dfec0\", \"submission_time\": ` +
	`\"20261202221030\", \"random_seed\": 1}", "grader_payload": "{\"grader\": \"ps1/fib.py\"}", "student_response": ` +
	`"def fib(n):\r\n    a, b = 0, 1\r\n    for _ in range(n):\r\n        a, b = b, a + b\r\n    return a\r\n"}`

// xqueueReply is what the stock xqueue-watcher Grader posts.
var xqueueReply = map[string]any{"correct": true, "score": 1,
	"msg": "<div class=\"test\">\n<header>Test results</header>\n  <section>\n    <div class=\"shortform\">\n    CORRECT\n    </div>\n  </section>\n</div>\n"}

// xqueueRate is one client loop's measurement.
type xqueueRate struct {
	Rate     float64       // completed calls per second in the window
	Count    int64         // completed in the window
	Measured time.Duration // the window
	Drained  bool          // the queue emptied before the window ended
	P50, P99 time.Duration // of one call (submit) or round trip (pull + put_result)
	Errors   int64         // failed calls (timeouts included) in the whole run
	CPU      time.Duration // process CPU in the window
}

// xqueueResult is what the XQueue scenario measured.
type xqueueResult struct {
	Clients   int
	Native    drainResult
	Submit    xqueueRate
	Pull      xqueueRate
	Queued    int   // jobs waiting when the pull phase began
	Delivered int64 // LMS callbacks received during the pull phase
	LoadAvg   string
}

func runXQueue(ctx context.Context, o Options, p *PKI, dir string, bench []ServerCert, logFile string) (*xqueueResult, error) {
	res := &xqueueResult{Clients: o.XQueueClients, LoadAvg: loadavg1()}

	// The native stream, with as many slots.
	progressf(o.Progress, "xqueue: the native stream, 1 × %d slots", o.XQueueClients)
	base := dbPath(dir, "xqueue-native")
	if _, err := seedWithServers(ctx, base, p, bench, bench, o.XQueueClients, o.ThroughputJobs); err != nil {
		return nil, err
	}
	native, err := runDrain(ctx, drainSpec{pki: p, dbPath: base, servers: bench[:1], slots: o.XQueueClients,
		jobs: int64(o.ThroughputJobs), warmup: o.Warmup, window: o.Window, logLevel: o.LogLevel, logFile: logFile,
		progress: o.Progress})
	if err != nil {
		return nil, fmt.Errorf("native stream: %w", err)
	}
	os.Remove(base)
	res.Native = native

	// The XQueue broker.
	path := dbPath(dir, "xqueue")
	if err := seedXQueue(ctx, path, o.XQueueClients); err != nil {
		return nil, err
	}
	log, closeLog, err := openLog(logFile, o.LogLevel)
	if err != nil {
		return nil, err
	}
	defer closeLog()
	b, err := brokerd.New(ctx, brokerConfig(p, path, o.LogLevel), log)
	if err == nil {
		err = b.Start(ctx)
	}
	if err != nil {
		return nil, err
	}
	defer b.Close()
	var delivered atomic.Int64
	lms := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
	}))
	defer lms.Close()
	tlsConfig, err := certs.GatewayClientTLSConfig(p.CAFile)
	if err != nil {
		return nil, err
	}
	// One transport per client, as each xqueue-watcher thread and each LMS
	// worker has its own session.
	transport := func() *http.Transport {
		return &http.Transport{TLSClientConfig: tlsConfig.Clone(), MaxIdleConnsPerHost: 4}
	}
	url := "https://" + b.HTTPAddr()

	progressf(o.Progress, "xqueue: LMS submit, %d clients", o.XQueueClients)
	var seq atomic.Int64
	submit := func(c int) (func() (bool, error), error) {
		lmsc := xqueuetest.NewLMS(url, transport(), "lms", xqueuePassword)
		send := func() (bool, error) {
			n := seq.Add(1)
			header := `{"lms_callback_url": "` + lms.URL + `/courses/bench/xqueue/` + strconv.FormatInt(n, 10) +
				`/p1/score_update", "lms_key": "k` + strconv.FormatInt(n, 10) + `", "queue_name": "bench"}`
			if code, msg := lmsc.SendToQueue(header, xqueueCapaBody, nil); code != 0 {
				return false, errors.New(msg)
			}
			return true, nil
		}
		// The first submission logs the client in (a bcrypt check), before
		// the clock starts.
		if _, err := send(); err != nil {
			return nil, err
		}
		return send, nil
	}
	if res.Submit, err = xqueueLoop(ctx, o, o.XQueueClients, submit); err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}

	// Enough queued for the pull phase at up to xqueuePullCeiling round
	// trips/s, topped up in-process (SubmitWith, as submit/ does).
	want := int(xqueuePullCeiling * (o.Warmup + o.Window).Seconds())
	if n := b.Dispatcher().QueueLength("bench"); n < want {
		progressf(o.Progress, "xqueue: topping the queue up from %d to %d", n, want)
		if err := topUpXQueue(ctx, b, lms.URL, want-n); err != nil {
			return nil, err
		}
	}
	res.Queued = b.Dispatcher().QueueLength("bench")
	progressf(o.Progress, "xqueue: pull → put_result, %d clients, %d queued", o.XQueueClients, res.Queued)
	delivered.Store(0)
	pull := func(int) (func() (bool, error), error) {
		w := xqueuetest.NewWatcher(url, transport(), "bench", "watcher", xqueuePassword)
		if err := loginWatcher(w); err != nil {
			return nil, err
		}
		return func() (bool, error) {
			sub, msg, err := w.GetSubmission()
			if err != nil {
				return false, err
			}
			if sub == nil {
				if b.Dispatcher().QueueLength("bench") == 0 {
					return false, errEmpty
				}
				return false, errors.New(msg)
			}
			ok, msg, err := w.PutResult(sub.Header, xqueueReply)
			if err == nil && !ok {
				err = errors.New(msg)
			}
			return err == nil, err
		}, nil
	}
	if res.Pull, err = xqueueLoop(ctx, o, o.XQueueClients, pull); err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	res.Delivered = delivered.Load()
	return res, nil
}

// loginWatcher logs a watcher in, trying again after a timeout as the
// watcher's loop does (the first check of a password is a bcrypt one).
func loginWatcher(w *xqueuetest.Watcher) error {
	for range 10 {
		ok, err := w.Login()
		switch {
		case errors.Is(err, xqueuetest.ErrTimeout):
			continue
		case err != nil:
			return err
		case !ok:
			return errors.New("the watcher's login was refused")
		}
		return nil
	}
	return errors.New("the watcher's login timed out 10 times")
}

// xqueuePassword is both bench users' password.
const xqueuePassword = "gbbench-xqueue"

// xqueuePullCeiling is the most round trips per second the pull phase is
// given jobs for; past it the table says the queue emptied.
const xqueuePullCeiling = 4000

// errEmpty ends a client loop: nothing is left to pull.
var errEmpty = errors.New("queue empty")

// seedXQueue makes the XQueue site: tag and type xq, a platform of
// protocol xqueue, queue "bench", user "lms" (submits, callbacks to
// 127.0.0.1 over http) and user "watcher" (pulls, clients max jobs).
func seedXQueue(ctx context.Context, path string, clients int) error {
	db, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	hash, err := password.Hash(xqueuePassword)
	if err != nil {
		return err
	}
	steps := []func() error{
		func() error { _, err := db.AddTag(ctx, "xq", ""); return err },
		func() error { _, err := db.AddServerType(ctx, "xq", []string{"xq"}); return err },
		func() error {
			_, err := db.AddPlatform(ctx, broker.Platform{Name: "lms", Protocol: broker.ProtocolXQueue})
			return err
		},
		func() error {
			_, err := db.AddXQueueQueue(ctx, broker.XQueueQueue{Name: "bench", Tags: []string{"xq"}, Type: "xq", Timeout: time.Minute})
			return err
		},
		func() error {
			_, err := db.AddXQueueUser(ctx, broker.XQueueUser{Name: "lms", PasswordHash: hash, Platform: "lms", HTTPCallbackHosts: []string{"127.0.0.1"}})
			return err
		},
		func() error {
			_, err := db.AddXQueueUser(ctx, broker.XQueueUser{Name: "watcher", PasswordHash: hash, PullQueues: []string{"bench"}, MaxJobs: clients})
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// topUpXQueue queues n more submissions of user lms in-process, in
// batches, each with its callback row, as submit/ stores them.
func topUpXQueue(ctx context.Context, b *brokerd.Broker, lmsURL string, n int) error {
	db := b.DB()
	u, err := db.XQueueUserByName(ctx, "lms")
	if err != nil {
		return err
	}
	q, err := db.XQueueQueueByName(ctx, "bench")
	if err != nil {
		return err
	}
	for done := 0; done < n; {
		batch := min(500, n-done)
		jobs := make([]broker.NewJob, batch)
		for i := range jobs {
			jobs[i] = broker.NewJob{PlatformID: u.PlatformID, Name: "bench", Tags: q.Tags, Timeout: q.Timeout,
				JobData: []byte(xqueueCapaBody), TypeIDs: []int64{q.TypeID}, Queue: q.Name}
		}
		first := done
		_, err := b.Dispatcher().SubmitWith(ctx, jobs, nil, "gbbench", func(tx *store.JobTx, ins []store.Inserted) error {
			for i, in := range ins {
				cb := fmt.Sprintf("%s/courses/bench/xqueue/top-%d/p1/score_update", lmsURL, first+i)
				if err := tx.InsertXQueueSubmission(in.ID, u.ID, cb, `{"lms_callback_url": "`+cb+`", "lms_key": "k", "queue_name": "bench"}`); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		done += batch
	}
	return nil
}

// xqueueLoop runs clients goroutines, each calling the function newClient
// made for it until warm-up + window passed (or errEmpty), and measures
// the completed calls in the window.
func xqueueLoop(ctx context.Context, o Options, clients int, newClient func(int) (func() (bool, error), error)) (xqueueRate, error) {
	calls := make([]func() (bool, error), clients)
	for i := range calls {
		var err error
		if calls[i], err = newClient(i); err != nil {
			return xqueueRate{}, err
		}
	}
	var r xqueueRate
	start := time.Now()
	winStart, winEnd := start.Add(o.Warmup), start.Add(o.Warmup+o.Window)
	var mu sync.Mutex
	var lat []time.Duration
	var count, errs atomic.Int64
	var emptied atomic.Int64 // unix ns when the queue emptied; 0 if it did not
	var cpu0 time.Duration
	cpuTaken := make(chan struct{})
	go func() {
		select {
		case <-time.After(time.Until(winStart)):
		case <-ctx.Done():
		}
		cpu0 = processCPU()
		close(cpuTaken)
	}()
	var wg sync.WaitGroup
	for _, call := range calls {
		wg.Go(func() {
			var mine []time.Duration
			for ctx.Err() == nil && time.Now().Before(winEnd) {
				t := time.Now()
				ok, err := call()
				end := time.Now()
				if errors.Is(err, errEmpty) {
					emptied.CompareAndSwap(0, end.UnixNano())
					break
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				if ok && !t.Before(winStart) && end.Before(winEnd) {
					count.Add(1)
					mine = append(mine, end.Sub(t))
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	<-cpuTaken
	end := winEnd
	if e := emptied.Load(); e != 0 {
		r.Drained = true
		end = time.Unix(0, e)
	}
	r.Measured = end.Sub(winStart)
	r.CPU = processCPU() - cpu0
	if r.Measured <= 0 {
		return r, fmt.Errorf("the queue emptied during the warm-up: queue more")
	}
	r.Count, r.Errors = count.Load(), errs.Load()
	r.Rate = float64(r.Count) / r.Measured.Seconds()
	slices.Sort(lat)
	if len(lat) > 0 {
		r.P50, r.P99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r, ctx.Err()
}

// writeXQueue writes the XQueue scenario's table.
func writeXQueue(p func(string, ...any), x *xqueueResult, o Options) {
	p("### XQueue: the LMS's submit and xqueue-watcher's pull → put_result, beside the native stream")
	p("")
	p("| %d clients | per second | p50 | p99 | CPU per call | measured over | errors |", x.Clients)
	p("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
	n := x.Native
	over := fmt.Sprintf("%.1f s", n.Measured.Seconds())
	if n.Drained {
		over += " (queue emptied)"
	}
	p("| native stream: jobs drained, 1 fake graderd × %d slots (gRPC) | %s | | | %s | %s | |", x.Clients, num(n.Rate), fmtDur(n.cpuPerJob()), over)
	for _, row := range []struct {
		name string
		r    xqueueRate
	}{
		{"XQueue pull → put_result round trips (result committed; callback via the outbox)", x.Pull},
		{"XQueue LMS submit/ (form-encoded, each to its own callback URL)", x.Submit},
	} {
		over := fmt.Sprintf("%.1f s", row.r.Measured.Seconds())
		if row.r.Drained {
			over += " (queue emptied)"
		}
		perCall := time.Duration(0)
		if row.r.Count > 0 {
			perCall = row.r.CPU / time.Duration(row.r.Count)
		}
		p("| %s | %s | %s | %s | %s | %s | %d |", row.name, num(row.r.Rate), fmtDur(row.r.P50), fmtDur(row.r.P99), fmtDur(perCall), over, row.r.Errors)
	}
	p("")
	p("Each XQueue client is one session with its own TLS connection, as each xqueue-watcher thread and LMS worker has,")
	p("written from their sources (broker/xqueue/xqueuetest; the watcher's 1 s timeout included: a timed-out call is an")
	p("error and is tried again). The pull clients are %d threads of one XQueue user, whose server has max jobs %d; %s", x.Clients, x.Clients, num(float64(x.Queued)))
	p("submissions waited when they started. A round trip is get_submission (a lease, committed) then put_result (the")
	p("result, committed); each result also made a delivery that the outbox posted to a local LMS endpoint (%s posts", num(float64(x.Delivered)))
	p("during the pull phase), which the native stream's platform, without a return URL, does not. CPU per call is the")
	p("whole gbbench process's (broker and clients, TLS both ends) over the window / calls completed in it. Window %s after", o.Window)
	p("%s of warm-up, the three runs one after the other; load average %s at the start.", o.Warmup, x.LoadAvg)
	p("")
}
