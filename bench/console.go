package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The console scenario: how long the console takes to render its pages
// over a million jobs, and what 50 browsers on the live overview cost the
// dispatcher.

// consoleCourses is how many course tags the seeded jobs spread over.
const consoleCourses = 20

// consoleOperator is the operator the benchmark logs in as.
const consoleOperator = "gbbench"

// renderRow is one page's server-side render times.
type renderRow struct {
	Page     string
	N        int
	P50, P99 time.Duration
	Bytes    int // of the last response
}

// consoleResult is what the console scenario measured.
type consoleResult struct {
	Jobs     int
	SeedTime time.Duration
	Renders  []renderRow
	// Drains alternate: without browsers, with SSEClients on the
	// overview, and so on.
	Drains     []consoleDrain
	SSEClients int
}

type consoleDrain struct {
	Clients int
	drainResult
	Events int64 // overview updates the browsers received in the window
}

// seedConsoleDB makes a database of n jobs as a term leaves it: most done
// with a result, some failed or cancelled, a few queued; each with the
// bench tag and one of consoleCourses course tags. Jobs are written through
// the store's job API (InsertJob, Finish), 20,000 per transaction.
func seedConsoleDB(ctx context.Context, path string, p *PKI, servers []ServerCert, n int) error {
	db, fx, err := CreateDB(ctx, path, p, servers, 16)
	if err != nil {
		return err
	}
	defer db.Close()
	tags := []string{benchTag}
	for i := range consoleCourses {
		t := "course-" + strconv.Itoa(i)
		if _, err := db.AddTag(ctx, t, ""); err != nil {
			return err
		}
		tags = append(tags, t)
	}
	if _, err := db.UpdateServerType(ctx, benchType, tags); err != nil {
		return err
	}
	if err := addConsoleOperator(ctx, db); err != nil {
		return err
	}
	result := []byte(`{"score": 80, "passed": 4, "total": 5, "tests": [{"name": "t1", "ok": true}, {"name": "t2", "ok": false}]}`)
	for done := 0; done < n; {
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			return err
		}
		end := min(n, done+20000)
		for i := done; i < end; i++ {
			nj := fx.NewJob(i)
			// Courses in blocks of 100 jobs, so that every course has jobs
			// in every state (the states go round every 100 jobs).
			nj.Tags = []string{benchTag, "course-" + strconv.Itoa(i/100%consoleCourses)}
			nj.IdempotencyKey = "key-" + strconv.Itoa(i)
			in, err := tx.InsertJob(nj, benchActor)
			if err != nil {
				tx.Rollback()
				return err
			}
			var f store.Final
			switch r := i % 100; {
			case r < 90:
				f = store.Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: result, Actor: benchActor}
			case r < 93:
				f = store.Final{State: broker.JobFailed, Outcome: broker.OutcomeFatal, Error: "too many attempts", Actor: benchActor}
			case r < 95:
				f = store.Final{State: broker.JobCancelled, Error: "cancelled by gbbench", Actor: benchActor}
			default:
				continue // stays queued
			}
			f.PlatformID = fx.PlatformID
			if _, err := tx.Finish(in.ID, f); err != nil {
				tx.Rollback()
				return err
			}
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		done = end
	}
	return nil
}

// consoleSession logs the benchmark's operator in, as a login link would,
// and returns the session's secret.
func consoleSession(ctx context.Context, b *brokerd.Broker) (string, error) {
	admin := b.Admin()
	op := adminapi.WithPrincipal(ctx, adminapi.Principal{Name: consoleOperator, Role: adminapi.RoleOperator, Via: adminapi.ViaAdminAPI})
	resp, err := admin.ConsoleLogin(op, &gbv1.ConsoleLoginRequest{})
	if err != nil {
		return "", err
	}
	u, err := url.Parse(resp.GetUrl())
	if err != nil {
		return "", err
	}
	secret, _, err := admin.StartConsoleSession(ctx, u.Query().Get("token"))
	return secret, err
}

// consoleOn turns the console on, on loopback.
func consoleOn(c *brokerd.Config) {
	c.Console.ConsoleAddr = "127.0.0.1:0"
}

// timeRenders times the console's pages, in-process: the handler's whole
// work (session check, admin calls, SQLite, templates), without TLS or the
// network.
func timeRenders(ctx context.Context, b *brokerd.Broker, secret string, jobs, reps int) ([]renderRow, error) {
	h := b.ConsoleHandler()
	// The time filter takes the minute the middle job was queued in.
	middle, err := b.DB().GetJob(ctx, int64(jobs/2))
	if err != nil {
		return nil, err
	}
	from := middle.CreatedAt.UTC().Truncate(time.Minute)
	ids := rand.New(rand.NewPCG(1, 2))
	pages := []struct {
		name string
		url  func() string
	}{
		{"jobs: newest page", func() string { return "/jobs" }},
		{"jobs: failed", func() string { return "/jobs?state=failed" }},
		{"jobs: done, page 10,000 (keyset)", func() string { return "/jobs?state=done&before=" + strconv.Itoa(jobs/2) }},
		{"jobs: one tag of 20", func() string { return "/jobs?tag=course-7" }},
		{"jobs: one tag, failed", func() string { return "/jobs?tag=course-7&state=failed" }},
		{"jobs: a minute's window", func() string {
			return "/jobs?from=" + from.Format("2006-01-02T15:04") + "&to=" + from.Add(time.Minute).Format("2006-01-02T15:04")
		}},
		{"jobs: search by name prefix", func() string { return "/jobs?q=bench-77777" }},
		{"jobs: search by idempotency key", func() string { return "/jobs?q=key-" + strconv.Itoa(ids.IntN(jobs)) }},
		{"job page (random job)", func() string { return "/jobs/" + strconv.Itoa(1+ids.IntN(jobs)) }},
	}
	var out []renderRow
	for _, pg := range pages {
		row := renderRow{Page: pg.name, N: reps}
		var ds []time.Duration
		for i := 0; i < reps+reps/10; i++ {
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, pg.url(), nil)
			req.AddCookie(&http.Cookie{Name: "__Host-gb-console", Value: secret})
			rec := httptest.NewRecorder()
			t := time.Now()
			h.ServeHTTP(rec, req)
			d := time.Since(t)
			if rec.Code != http.StatusOK {
				return nil, fmt.Errorf("console %s: %d %s", pg.url(), rec.Code, rec.Body.String()[:min(200, rec.Body.Len())])
			}
			if i >= reps/10 { // the first tenth warms caches
				ds = append(ds, d)
			}
			row.Bytes = rec.Body.Len()
		}
		slices.Sort(ds)
		row.P50, row.P99 = quantile(ds, 0.5), quantile(ds, 0.99)
		out = append(out, row)
	}
	return out, nil
}

// openBrowsers opens n live overview streams over HTTPS, as n browsers
// would, and counts the updates they receive until the returned stop.
func openBrowsers(b *brokerd.Broker, caFile string, n int, events *atomic.Int64) (func(), error) {
	secret, err := consoleSession(context.Background(), b)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := certs.OutboundTLSConfig(caFile)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, MaxConnsPerHost: 0, ForceAttemptHTTP2: false}
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ready := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+b.ConsoleAddr()+"/live/overview", nil)
			req.AddCookie(&http.Cookie{Name: "__Host-gb-console", Value: secret})
			resp, err := hc.Do(req)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("live overview: %s", resp.Status)
			}
			ready <- err
			if err != nil {
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			for sc.Scan() {
				if sc.Text() == "event: update" {
					events.Add(1)
				}
			}
		}()
	}
	for range n {
		if err := <-ready; err != nil {
			cancel()
			wg.Wait()
			return nil, err
		}
	}
	return func() {
		cancel()
		wg.Wait()
		tr.CloseIdleConnections()
	}, nil
}

// runConsole runs the console scenario: renders over a seeded database of
// jobs, then drains with and without browsers on the live overview.
func runConsole(ctx context.Context, o Options, p *PKI, dir string, bench []ServerCert, logFile string) (*consoleResult, error) {
	res := &consoleResult{Jobs: o.ConsoleJobs, SSEClients: o.ConsoleSSE}
	path := dbPath(dir, "console")
	t := time.Now()
	progressf(o.Progress, "console: seeding %d jobs (done, failed, cancelled, queued; %d course tags)", o.ConsoleJobs, consoleCourses)
	if err := seedConsoleDB(ctx, path, p, bench, o.ConsoleJobs); err != nil {
		return nil, fmt.Errorf("console seed: %w", err)
	}
	res.SeedTime = time.Since(t)
	log, closeLog, err := openLog(logFile, o.LogLevel)
	if err != nil {
		return nil, err
	}
	cfg := brokerConfig(p, path, o.LogLevel)
	consoleOn(&cfg)
	b, err := brokerd.New(ctx, cfg, log)
	if err == nil {
		err = b.Start(ctx)
	}
	if err != nil {
		closeLog()
		return nil, err
	}
	secret, err := consoleSession(ctx, b)
	if err == nil {
		progressf(o.Progress, "console: timing pages, %d requests each", o.ConsoleRenders)
		res.Renders, err = timeRenders(ctx, b, secret, o.ConsoleJobs, o.ConsoleRenders)
	}
	b.Close()
	closeLog()
	if err != nil {
		return nil, err
	}

	// Dispatch with and without browsers, in turn, on copies of one
	// seeded queue.
	base := dbPath(dir, "console-drain-base")
	if _, err := seedWithServers(ctx, base, p, bench, bench, o.Slots, o.ThroughputJobs); err != nil {
		return nil, err
	}
	if err := registerOperator(ctx, base); err != nil {
		return nil, err
	}
	for r := 0; r < 2*o.ConsoleRepeats; r++ {
		clients := 0
		if r%2 == 1 {
			clients = o.ConsoleSSE
		}
		progressf(o.Progress, "console: 4×%d drain with %d browsers on the live overview (%d of %d)", o.Slots, clients, r+1, 2*o.ConsoleRepeats)
		run := dbPath(dir, "console-drain")
		if err := copyFile(base, run); err != nil {
			return nil, err
		}
		var events atomic.Int64
		var counted int64
		spec := drainSpec{pki: p, dbPath: run, servers: bench[:4], slots: o.Slots, jobs: int64(o.ThroughputJobs),
			warmup: o.Warmup, window: o.Window, logLevel: o.LogLevel, logFile: logFile, progress: o.Progress,
			configure: consoleOn}
		if clients > 0 {
			spec.started = func(b *brokerd.Broker) (func(), error) { return openBrowsers(b, p.CAFile, clients, &events) }
			spec.start = func() { counted = events.Load() }
			spec.stop = func() { counted = events.Load() - counted }
		}
		d, err := runDrain(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("console drain: %w", err)
		}
		removeDB(run)
		res.Drains = append(res.Drains, consoleDrain{Clients: clients, drainResult: d, Events: counted})
	}
	removeDB(base)
	removeDB(path)
	return res, nil
}

// registerOperator adds the benchmark's console operator to a database.
func registerOperator(ctx context.Context, path string) error {
	db, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		return err
	}
	return errors.Join(addConsoleOperator(ctx, db), db.Close())
}

// addConsoleOperator registers the operator the benchmark logs in as; it
// never calls the admin API, so its certificate is a made-up identity.
func addConsoleOperator(ctx context.Context, db *store.DB) error {
	_, err := db.AddOperator(ctx, consoleOperator, broker.CertIdentity{Serial: "1", Issuer: "CN=gbbench",
		Subject: "CN=gbbench,OU=operator", Fingerprint: "gbbench-console-operator", NotAfter: time.Now().Add(24 * time.Hour)})
	return err
}

func removeDB(path string) {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(path + suffix)
	}
}

// writeConsole writes the console scenario's tables.
func writeConsole(p func(string, ...any), c *consoleResult, o Options) {
	p("### Console")
	p("")
	p("Server-side render time (the handler's whole work in-process: session check, admin calls, SQLite, templates;")
	p("no TLS or network) over **%s jobs** (90 %% done with a result, 3 %% failed, 2 %% cancelled, 5 %% queued; %d course",
		num(float64(c.Jobs)), consoleCourses)
	p("tags; seeded in %s through InsertJob and Finish), %d requests per page after a tenth more to warm up:", c.SeedTime.Round(time.Second), o.ConsoleRenders)
	p("")
	p("| page | p50 | p99 | HTML |")
	p("| --- | ---: | ---: | ---: |")
	for _, r := range c.Renders {
		p("| %s | %s | %s | %s kB |", r.Page, fmtDur(r.P50), fmtDur(r.P99), num(float64(r.Bytes)/1000))
	}
	p("")
	p("Dispatch throughput (4 × %d slots, %s jobs queued, as the throughput rows) with the console on, without and with",
		o.Slots, num(float64(o.ThroughputJobs)))
	p("%d browsers on the live overview (server-sent events over HTTPS, an update every second), in turn:", c.SSEClients)
	p("")
	p("| browsers on the overview | jobs/s | overview updates received (all browsers) |")
	p("| ---: | ---: | ---: |")
	var without, with []float64
	for _, d := range c.Drains {
		note := ""
		if d.Drained {
			note = " (queue emptied before the window ended)"
		}
		p("| %d | %s%s | %s |", d.Clients, num(d.Rate), note, num(float64(d.Events)))
		if d.Clients == 0 {
			without = append(without, d.Rate)
		} else {
			with = append(with, d.Rate)
		}
	}
	if len(without) > 0 && len(with) > 0 {
		p("")
		p("Mean with %d browsers / without: %.0f %%.", c.SSEClients, 100*mean(with)/mean(without))
	}
	p("")
}

func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}
