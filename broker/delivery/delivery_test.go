package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs/certstest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

func TestDeliveredOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newReceiver("mooc", nil)
	p := e.platform("mooc", rcv.URL+"/cb?secret=s3cret", "")
	w := e.worker(Config{})
	jobID, id := e.finalJob(p, "ex1", "user-7-task-3", doneOK)
	w.Notify(jobID, id)

	testutil.Eventually(t, "the delivery to be delivered", func() bool { return e.delivery(id).State == broker.DeliveryDelivered })
	// Several more polls must not send it again.
	e.polls(w, 3)
	calls := rcv.got()
	if len(calls) != 1 {
		t.Fatalf("the receiver got %d callbacks, want 1", len(calls))
	}
	cb := calls[0]
	if cb.err != nil {
		t.Fatalf("the callback does not open: %v", cb.err)
	}
	if cb.ctype != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", cb.ctype)
	}
	now := e.clk.Now()
	want := Payload{
		JobID: jobID, JobName: "ex1", IdempotencyKey: "user-7-task-3", Status: "done",
		Result: json.RawMessage(`{"score":1}`), Attempts: 1, Server: "g1", DeliveryID: id,
		IssuedAt: now.Unix(), Expires: now.Add(DefaultTokenLifetime).Unix(), JTI: cb.payload.JTI,
		Audience: "mooc", Issuer: brokerName,
	}
	if diff := cmp.Diff(want, cb.payload); diff != "" {
		t.Errorf("payload (-want +got):\n%s", diff)
	}
	if len(cb.payload.JTI) < 20 {
		t.Errorf("jti %q is too short to be unique", cb.payload.JTI)
	}
	// Every field of CallbackPayload is present, even when empty.
	for _, k := range []string{"job_id", "jobname", "idempotency_key", "status", "result", "error", "attempts",
		"server", "limit", "delivery_id", "iat", "exp", "jti", "aud", "iss"} {
		if _, ok := cb.raw[k]; !ok {
			t.Errorf("payload has no %q: %v", k, cb.raw)
		}
	}
	if _, ok := cb.raw["usage"]; ok {
		t.Errorf("payload has a usage though the run reported none: %v", cb.raw)
	}
	d := e.delivery(id)
	if d.Tries != 1 || !d.DeliveredAt.Equal(now) || d.LastError != "" {
		t.Errorf("delivery after success = %+v, want 1 try, delivered now, no error", d)
	}
	e.idle(w)
	if s := w.Stats(); s.Delivered != 1 || s.Attempts != 1 || s.Retried != 0 || s.Dead != 0 {
		t.Errorf("Stats = %+v", s)
	}
	if logs := e.logs.String(); strings.Contains(logs, cb.token) || strings.Contains(logs, "s3cret") {
		t.Errorf("the log holds the token or the return_url's secret:\n%s", logs)
	}
}

// A failed job's callback has its error and no result; a cancelled one too.
func TestFailedAndCancelledPayloads(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newReceiver("mooc", nil)
	p := e.platform("mooc", rcv.URL, "")
	w := e.worker(Config{})
	_, failed := e.finalJob(p, "f", "", store.Final{State: broker.JobFailed, Outcome: broker.OutcomeFatal, Error: "compiler crashed"})
	_, cancelled := e.finalJob(p, "c", "", store.Final{State: broker.JobCancelled, Error: "cancelled by op"})
	w.Notify(0, cancelled)
	testutil.Eventually(t, "two callbacks", func() bool { return len(rcv.got()) == 2 })
	byID := map[int64]callback{}
	for _, cb := range rcv.got() {
		if cb.err != nil {
			t.Fatalf("callback does not open: %v", cb.err)
		}
		byID[cb.payload.DeliveryID] = cb
	}
	for id, want := range map[int64][2]string{failed: {"failed", "compiler crashed"}, cancelled: {"cancelled", "cancelled by op"}} {
		cb := byID[id]
		if cb.payload.Status != want[0] || cb.payload.Error != want[1] {
			t.Errorf("delivery %d: status %q error %q, want %q %q", id, cb.payload.Status, cb.payload.Error, want[0], want[1])
		}
		if _, ok := cb.raw["result"]; ok {
			t.Errorf("delivery %d: payload has a result: %v", id, cb.raw)
		}
	}
}

// The callback says what the job's last run used and which limit ended
// it, in whole milliseconds and bytes.
func TestPayloadCarriesUsageAndLimit(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newReceiver("mooc", nil)
	p := e.platform("mooc", rcv.URL, "")
	w := e.worker(Config{})
	u := &broker.Usage{CPUTime: 1234567 * time.Microsecond, PeakMemory: 1 << 30, WallTime: 2*time.Second + 600*time.Microsecond}
	_, id := e.finalRun(p, "ex1", "", store.Final{State: broker.JobFailed, Outcome: broker.OutcomeFatal, Error: "memory limit: 1 GiB"},
		u, broker.LimitMemory)
	w.Notify(0, id)
	testutil.Eventually(t, "the callback", func() bool { return len(rcv.got()) == 1 })
	cb := rcv.got()[0]
	if cb.err != nil {
		t.Fatalf("the callback does not open: %v", cb.err)
	}
	want := &PayloadUsage{CPUTimeMS: 1235, PeakMemoryBytes: 1 << 30, WallTimeMS: 2001}
	if diff := cmp.Diff(want, cb.payload.Usage); diff != "" || cb.payload.Limit != "memory" {
		t.Errorf("usage (-want +got):\n%s\nlimit %q, want memory", diff, cb.payload.Limit)
	}
	raw, _ := cb.raw["usage"].(map[string]any)
	for _, k := range []string{"cpu_time_ms", "peak_memory_bytes", "wall_time_ms"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("usage has no %q: %v", k, cb.raw["usage"])
		}
	}
}

func TestRetriedWithBackoffThenDelivered(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newReceiver("mooc", func(n int) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	p := e.platform("mooc", rcv.URL, "")
	w := e.worker(Config{MinBackoff: time.Second, MaxBackoff: time.Minute})
	jobID, id := e.finalJob(p, "ex1", "", doneOK)
	w.Notify(jobID, id)

	// The first failure: retried 1-2 s later (backoff after one try), with
	// the status and the body's first line in last_error.
	testutil.Eventually(t, "the first try", func() bool { return e.delivery(id).Tries == 1 })
	d := e.delivery(id)
	now := e.clk.Now()
	if d.State != broker.DeliveryPending || d.NextAttemptAt.Before(now.Add(time.Second)) || d.NextAttemptAt.After(now.Add(2*time.Second)) {
		t.Errorf("after one failure: %+v; want pending, next try 1-2 s after %v", d, now)
	}
	if d.LastError != "HTTP 500: try again later" {
		t.Errorf("last_error = %q, want %q", d.LastError, "HTTP 500: try again later")
	}
	// Not due yet: nothing more is sent however often the worker polls.
	e.polls(w, 3)
	if n := len(rcv.got()); n != 1 {
		t.Errorf("%d requests before the retry was due, want 1", n)
	}

	e.advancing("the delivery to be delivered", 500*time.Millisecond, func() bool { return e.delivery(id).State == broker.DeliveryDelivered })
	calls := rcv.got()
	if len(calls) != 3 {
		t.Fatalf("%d requests, want 3 (two 500s, one 200)", len(calls))
	}
	jtis := map[string]bool{}
	for i, cb := range calls {
		if cb.err != nil {
			t.Fatalf("try %d does not open: %v", i+1, cb.err)
		}
		if cb.payload.DeliveryID != id || cb.payload.JobID != jobID {
			t.Errorf("try %d: delivery_id %d job_id %d, want %d %d on every try", i+1, cb.payload.DeliveryID, cb.payload.JobID, id, jobID)
		}
		jtis[cb.payload.JTI] = true
	}
	if len(jtis) != 3 {
		t.Errorf("the tries used %d distinct jtis, want 3 (a platform's replay guard would refuse a repeat)", len(jtis))
	}
	if d := e.delivery(id); d.Tries != 3 {
		t.Errorf("tries = %d, want 3", d.Tries)
	}
	e.idle(w)
	if s := w.Stats(); s.Delivered != 1 || s.Retried != 2 || s.Attempts != 3 {
		t.Errorf("Stats = %+v, want 1 delivered, 2 retried, 3 attempts", s)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "delivery_id=") {
		t.Errorf("no WARN with the delivery's id for a failed try:\n%s", logs)
	}
	for _, cb := range calls {
		if strings.Contains(e.logs.String(), cb.token) {
			t.Fatal("the log holds a token")
		}
	}
}

func TestReceiverDownThenUp(t *testing.T) {
	t.Parallel()
	e := setup(t)
	// Take a free port and close it: connecting is refused until the
	// receiver listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := e.platform("mooc", "http://"+addr+"/cb", "")
	w := e.worker(Config{MinBackoff: time.Second, MaxBackoff: 4 * time.Second})
	jobID, id := e.finalJob(p, "ex1", "", doneOK)
	w.Notify(jobID, id)
	e.advancing("three refused tries", time.Second, func() bool { return e.delivery(id).Tries >= 3 })
	if d := e.delivery(id); d.State != broker.DeliveryPending || !strings.Contains(d.LastError, "refused") {
		t.Fatalf("while down: %+v; want pending with a connection refused error", d)
	}

	rcv := e.unstartedReceiver("mooc", nil)
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	rcv.Listener.Close()
	rcv.Listener = ln
	rcv.Start()
	t.Cleanup(rcv.Close)
	e.advancing("the delivery to be delivered", time.Second, func() bool { return e.delivery(id).State == broker.DeliveryDelivered })
	if calls := rcv.got(); len(calls) != 1 || calls[0].err != nil || calls[0].payload.DeliveryID != id {
		t.Errorf("the receiver got %+v, want one callback of delivery %d", calls, id)
	}
}

// A worker stopped with requests under way, and a new one on a freshly
// opened database: every pending delivery is sent, including one made while
// no worker ran.
func TestResumeAfterRestart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var up atomic.Bool
	release := make(chan struct{})
	rcv := e.newReceiver("mooc", func(int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	rcv.delay = func() {
		if !up.Load() {
			<-release
		}
	}
	p := e.platform("mooc", rcv.URL, "")
	w1 := e.worker(Config{PerPlatform: 2, Workers: 2})
	var ids []int64
	for i := 0; i < 5; i++ {
		_, id := e.finalJob(p, "ex", "", doneOK)
		ids = append(ids, id)
	}
	w1.Notify(0, ids[0])
	testutil.Eventually(t, "two requests under way", func() bool { return len(rcv.got()) == 2 })

	// Stop waits for the two requests; they answer 503 once released.
	stopped := make(chan struct{})
	go func() { w1.Stop(); close(stopped) }()
	// Past its poll loop, Stop waits for the requests, which wait for
	// release.
	<-w1.Done()
	select {
	case <-stopped:
		t.Fatal("Stop returned with requests under way")
	default:
	}
	close(release)
	testutil.WaitClosed(t, "Stop to return after the requests ended", stopped)
	tried := 0
	for _, id := range ids {
		d := e.delivery(id)
		if d.State != broker.DeliveryPending {
			t.Fatalf("delivery %d is %v after a 503, want pending", id, d.State)
		}
		tried += d.Tries
	}
	if tried != 2 {
		t.Fatalf("%d tries recorded, want the 2 under way at Stop", tried)
	}

	// Restart: a fresh store on the same file, a job finished meanwhile,
	// and a new worker that is never notified.
	e.db.Close()
	e.open()
	_, late := e.finalJob(p, "late", "", doneOK)
	ids = append(ids, late)
	up.Store(true)
	e.worker(Config{})
	e.advancing("every delivery to be delivered", time.Second, func() bool {
		for _, id := range ids {
			if e.delivery(id).State != broker.DeliveryDelivered {
				return false
			}
		}
		return true
	})
	acked := map[int64]bool{}
	for _, cb := range rcv.got()[2:] {
		if cb.err != nil {
			t.Fatalf("callback does not open: %v", cb.err)
		}
		if acked[cb.payload.DeliveryID] {
			t.Errorf("delivery %d acknowledged twice", cb.payload.DeliveryID)
		}
		acked[cb.payload.DeliveryID] = true
	}
	if len(acked) != len(ids) {
		t.Errorf("acknowledged %d deliveries, want %d", len(acked), len(ids))
	}
}

func TestDeadAfterWindowThenRedeliver(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var up atomic.Bool
	rcv := e.newReceiver("mooc", func(int) int {
		if up.Load() {
			return http.StatusNoContent
		}
		return http.StatusBadGateway
	})
	p := e.platform("mooc", rcv.URL, "")
	w := e.worker(Config{Window: time.Minute, MinBackoff: time.Second, MaxBackoff: 10 * time.Second})
	jobID, id := e.finalJob(p, "ex1", "", doneOK)
	before, err := e.db.GetJob(context.Background(), jobID)
	if err != nil {
		t.Fatal(err)
	}
	w.Notify(jobID, id)
	e.advancing("the delivery to die", 2*time.Second, func() bool { return e.delivery(id).State == broker.DeliveryDead })
	d := e.delivery(id)
	if !strings.HasPrefix(d.LastError, "gave up after ") || !strings.Contains(d.LastError, "in 1m0s: HTTP 502") {
		t.Errorf("last_error = %q, want it to say it gave up after the window, with the last error", d.LastError)
	}
	// It was tried until the window's end, not given up before.
	calls := rcv.got()
	if last, end := calls[len(calls)-1].payload.IssuedAt, d.CreatedAt.Add(time.Minute).Unix(); last < end {
		t.Errorf("last try at %d, before the window's end %d", last, end)
	}
	e.idle(w)
	if s := w.Stats(); s.Dead != 1 {
		t.Errorf("Stats.Dead = %d, want 1", s.Dead)
	}
	if !strings.Contains(e.logs.String(), "level=ERROR") {
		t.Errorf("no ERROR logged for a dead delivery")
	}
	// The job is untouched: same state, result and audit trail.
	after, err := e.db.GetJob(context.Background(), jobID)
	if err != nil {
		t.Fatal(err)
	}
	if after.State != broker.JobDone || string(after.Result) != `{"score":1}` || len(after.Events) != len(before.Events) || after.Attempts != before.Attempts {
		t.Errorf("a dead callback changed the job: before %+v after %+v", before, after)
	}

	n0 := len(rcv.got())
	up.Store(true)
	n, err := w.Redeliver(context.Background(), store.Redelivery{IDs: []int64{id}})
	if err != nil || n != 1 {
		t.Fatalf("Redeliver = %d, %v", n, err)
	}
	var newID int64
	testutil.Eventually(t, "the redelivery", func() bool {
		calls := rcv.got()
		if len(calls) <= n0 {
			return false
		}
		newID = calls[n0].payload.DeliveryID
		return newID != 0 && e.delivery(newID).State == broker.DeliveryDelivered
	})
	if newID == id || e.delivery(newID).JobID != jobID {
		t.Errorf("redelivered as delivery %d, want a new delivery of job %d", newID, jobID)
	}
	if d := e.delivery(id); d.State != broker.DeliveryDead {
		t.Errorf("the dead row is now %v; it stays dead as the record", d.State)
	}
}

// One slow platform holds at most PerPlatform requests and does not keep
// another platform from being served.
func TestPerPlatformLimit(t *testing.T) {
	t.Parallel()
	e := setup(t)
	release := make(chan struct{})
	slow := e.newReceiver("slow", nil)
	slow.delay = func() { <-release }
	closeRelease := sync.OnceFunc(func() { close(release) })
	t.Cleanup(closeRelease) // should the test fail before it lets them go
	fast := e.newReceiver("fast", nil)
	sp := e.platform("slow", slow.URL, "")
	fp := e.platform("fast", fast.URL, "")
	w := e.worker(Config{PerPlatform: 2, Workers: 3})
	var slowIDs, fastIDs []int64
	for i := 0; i < 8; i++ {
		_, id := e.finalJob(sp, "s", "", doneOK)
		slowIDs = append(slowIDs, id)
	}
	for i := 0; i < 6; i++ {
		_, id := e.finalJob(fp, "f", "", doneOK)
		fastIDs = append(fastIDs, id)
	}
	w.Notify(0, 0)
	testutil.Eventually(t, "every fast delivery", func() bool {
		for _, id := range fastIDs {
			if e.delivery(id).State != broker.DeliveryDelivered {
				return false
			}
		}
		return true
	})
	slow.mu.Lock()
	busy, peak := slow.active, slow.maxConc
	slow.mu.Unlock()
	if busy != 2 || peak != 2 {
		t.Errorf("the slow platform has %d requests running (peak %d), want PerPlatform = 2", busy, peak)
	}
	closeRelease()
	testutil.Eventually(t, "every slow delivery", func() bool {
		for _, id := range slowIDs {
			if e.delivery(id).State != broker.DeliveryDelivered {
				return false
			}
		}
		return true
	})
	slow.mu.Lock()
	peak = slow.maxConc
	slow.mu.Unlock()
	if peak > 2 {
		t.Errorf("the slow platform saw %d requests at once, want at most 2", peak)
	}
	e.idle(w)
	if s := w.Stats(); s.Delivered != 14 {
		t.Errorf("Stats = %+v, want 14 delivered and nothing in flight", s)
	}
}

// A platform whose server has a certificate from a private CA is reached
// when CAFile names that CA, and refused (then retried) when not.
func TestHTTPSWithPrivateCA(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ca := certstest.NewCA(t, "platform")
	files := ca.Issue(t, certstest.Leaf{CommonName: "mooc.test", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	rcv := e.unstartedReceiver("mooc", nil)
	rcv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	rcv.StartTLS()
	t.Cleanup(rcv.Close)
	if !strings.HasPrefix(rcv.URL, "https://127.0.0.1:") {
		t.Fatalf("receiver URL %s", rcv.URL)
	}
	p := e.platform("mooc", rcv.URL+"/cb", "")

	// Without the CA: a TLS error, retried.
	w := e.worker(Config{MinBackoff: time.Hour, MaxBackoff: time.Hour})
	jobID, id := e.finalJob(p, "ex1", "", doneOK)
	w.Notify(jobID, id)
	testutil.Eventually(t, "a refused try", func() bool { return e.delivery(id).Tries == 1 })
	if d := e.delivery(id); d.State != broker.DeliveryPending || !strings.Contains(d.LastError, "certificate") {
		t.Errorf("without the CA: %+v, want pending with a certificate error", d)
	}
	w.Stop()

	// With it: delivered.
	w = e.worker(Config{CAFile: ca.CertFile})
	if _, err := w.Redeliver(context.Background(), store.Redelivery{IDs: []int64{id}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the delivery over https", func() bool { return e.delivery(id).State == broker.DeliveryDelivered })
	if calls := rcv.got(); len(calls) != 1 || calls[0].err != nil {
		t.Errorf("the receiver got %+v, want one good callback", calls)
	}
}

// Failures that retrying cannot fix die at once; those an operator can fix
// (a key) or that may pass (a redirect, an error status) are retried.
func TestFailureKinds(t *testing.T) {
	t.Parallel()
	redirect := httptest.NewServer(http.RedirectHandler("https://elsewhere.example/", http.StatusFound))
	t.Cleanup(redirect.Close)
	for _, tc := range []struct {
		name      string
		url       string
		key       string
		wantState broker.DeliveryState
		wantErr   string
	}{
		{"http to a remote host", "http://platform.example/cb", "", broker.DeliveryDead, "http:// to a host that is not loopback"},
		{"another scheme", "ftp://platform.example/cb", "", broker.DeliveryDead, `scheme "ftp" is not https`},
		{"no host", "https:///cb", "", broker.DeliveryDead, "no host"},
		{"bad key", "https://platform.example/cb", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", broker.DeliveryPending, "the platform's registered key is unusable"},
		{"private key", "https://platform.example/cb", "", broker.DeliveryPending, "this is a private key"},
		{"redirect", redirect.URL, "", broker.DeliveryPending, "HTTP 302: a redirect, which is not followed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			key := tc.key
			if tc.name == "private key" {
				key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
			}
			p := e.platform("mooc", tc.url, key)
			w := e.worker(Config{MinBackoff: time.Hour, MaxBackoff: time.Hour})
			jobID, id := e.finalJob(p, "ex1", "", doneOK)
			w.Notify(jobID, id)
			testutil.Eventually(t, "one try", func() bool { return e.delivery(id).Tries == 1 })
			d := e.delivery(id)
			if d.State != tc.wantState || !strings.Contains(d.LastError, tc.wantErr) {
				t.Errorf("got %v %q, want %v with %q", d.State, d.LastError, tc.wantState, tc.wantErr)
			}
		})
	}
}

// A delivery whose job was reopened is dropped unsent: the job's next final
// state gets its own delivery.
func TestSupersededNotSent(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newReceiver("mooc", nil)
	p := e.platform("mooc", rcv.URL, "")
	jobID, id := e.finalJob(p, "ex1", "", store.Final{State: broker.JobFailed, Error: "boom"})
	tx, err := e.db.BeginJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Reopen(jobID, "op"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	w := e.worker(Config{})
	testutil.Eventually(t, "the delivery to be dropped", func() bool { return e.delivery(id).State == broker.DeliveryDead })
	if d := e.delivery(id); !strings.Contains(d.LastError, "superseded") || d.Tries != 0 {
		t.Errorf("dropped delivery = %+v, want a superseded error and no tries", d)
	}
	if n := len(rcv.got()); n != 0 {
		t.Errorf("the receiver got %d callbacks, want none", n)
	}
	e.idle(w)
	if s := w.Stats(); s.Superseded != 1 || s.Dead != 0 {
		t.Errorf("Stats = %+v, want 1 superseded", s)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	minB, maxB := time.Second, 10*time.Minute
	for tries := 1; tries <= 40; tries++ {
		ceiling := min(maxB, minB<<min(tries, 30))
		if got := Backoff(tries, minB, maxB, 0); got != minB {
			t.Errorf("Backoff(%d, r=0) = %s, want the floor %s", tries, got, minB)
		}
		hi := Backoff(tries, minB, maxB, 0.999999)
		if hi > ceiling || hi < ceiling-ceiling/1000 {
			t.Errorf("Backoff(%d, r→1) = %s, want just under %s", tries, hi, ceiling)
		}
	}
	if got := Backoff(2, time.Second, time.Minute, 0.5); got != 2500*time.Millisecond {
		t.Errorf("Backoff(2, r=.5) = %s, want 2.5s (halfway between 1s and 4s)", got)
	}
	if got := Backoff(3, time.Duration(1<<62), time.Duration(1<<62+1<<61), 1); got != time.Duration(1<<62+1<<61) {
		t.Errorf("Backoff near the largest duration = %d", got)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "Broker"},
		{Config{Broker: "b", MinBackoff: time.Minute, MaxBackoff: time.Second}, "MaxBackoff"},
		{Config{Broker: "b", TokenLifetime: time.Hour}, "TokenLifetime"},
		{Config{Broker: "b", Workers: 2, PerPlatform: 3}, "Workers"},
		{Config{Broker: "b", CAFile: "/nonexistent/ca.pem"}, "CAFile"},
	} {
		if _, err := New(e.db, e.ring, tc.cfg, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	w, err := New(e.db, e.ring, Config{Broker: "b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Stop() // before Start: a no-op
	w.Stop()
	if err := w.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}
	if _, err := New(nil, e.ring, Config{Broker: "b"}, nil); err == nil {
		t.Error("New without a database succeeded")
	}
}

// formProtocol is a protocol of the tests' own: a form with the job's id and
// result POSTed to the URL the platform was registered with, or the error
// fail returns instead.
type formProtocol struct {
	fail func(d *store.Delivery) error
}

var _ Protocol = (*formProtocol)(nil)

func (f *formProtocol) Request(ctx context.Context, d *store.Delivery, _ time.Time) (*http.Request, error) {
	if f.fail != nil {
		if err := f.fail(d); err != nil {
			return nil, err
		}
	}
	form := url.Values{"job": {strconv.FormatInt(d.JobID, 10)}, "result": {string(d.Result)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.ReturnURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// formReceiver records the forms it gets and answers what respond says for
// the n-th (from 1).
type formReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	forms []url.Values
}

func newFormReceiver(t *testing.T, respond func(n int) int) *formReceiver {
	t.Helper()
	r := &formReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_ = req.ParseForm()
		r.mu.Lock()
		r.forms = append(r.forms, req.PostForm)
		n := len(r.forms)
		r.mu.Unlock()
		w.WriteHeader(respond(n))
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *formReceiver) got() []url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.forms)
}

// Each delivery is sent in its platform's protocol, through the one outbox:
// a failed try of any protocol is retried with the same backoff, a protocol
// may declare a delivery unsendable, and a protocol the broker lacks leaves
// the delivery pending with a message saying so.
func TestProtocolChosenPerDelivery(t *testing.T) {
	t.Parallel()
	e := setup(t)
	jwe := e.newReceiver("mooc", nil)
	forms := newFormReceiver(t, func(n int) int {
		if n == 1 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	ctx := context.Background()
	mooc := e.platform("mooc", jwe.URL, "")
	lms, err := e.db.AddPlatform(ctx, broker.Platform{Name: "lms", Protocol: "form", ReturnURL: forms.URL})
	if err != nil {
		t.Fatal(err)
	}
	odd, err := e.db.AddPlatform(ctx, broker.Platform{Name: "odd", Protocol: "unknown", ReturnURL: forms.URL})
	if err != nil {
		t.Fatal(err)
	}
	broken, err := e.db.AddPlatform(ctx, broker.Platform{Name: "broken", Protocol: "broken-form", ReturnURL: forms.URL})
	if err != nil {
		t.Fatal(err)
	}
	w := e.worker(Config{MinBackoff: time.Second, MaxBackoff: time.Second, Protocols: map[broker.Protocol]Protocol{
		"form": &formProtocol{},
		"broken-form": &formProtocol{fail: func(*store.Delivery) error {
			return permanent("this delivery cannot be sent in form")
		}},
	}})
	if diff := cmp.Diff([]broker.Protocol{"broken-form", "form", "gradebroker"}, w.Protocols()); diff != "" {
		t.Errorf("Protocols (-want +got):\n%s", diff)
	}

	_, jweID := e.finalJob(mooc, "ex1", "", doneOK)
	formJob, formID := e.finalJob(lms.ID, "ex2", "", doneOK)
	_, oddID := e.finalJob(odd.ID, "ex3", "", doneOK)
	_, brokenID := e.finalJob(broken.ID, "ex4", "", doneOK)
	w.Notify(0, 0)
	e.advancing("the form delivery, on its second try", time.Second, func() bool {
		return e.delivery(formID).State == broker.DeliveryDelivered
	})
	testutil.Eventually(t, "the JWE delivery", func() bool { return e.delivery(jweID).State == broker.DeliveryDelivered })
	if d := e.delivery(formID); d.Tries != 2 || !strings.Contains(d.LastError, "HTTP 503") {
		t.Errorf("form delivery = %d tries, last error %q; want 2 tries after an HTTP 503", d.Tries, d.LastError)
	}
	want := url.Values{"job": {strconv.FormatInt(formJob, 10)}, "result": {`{"score":1}`}}
	if got := forms.got(); len(got) != 2 || !cmp.Equal(want, got[1]) {
		t.Errorf("the form receiver got %v, want two of %v", got, want)
	}
	if calls := jwe.got(); len(calls) != 1 || calls[0].err != nil || calls[0].payload.JobName != "ex1" {
		t.Errorf("the JWE receiver got %+v, want one good callback of ex1", calls)
	}
	testutil.Eventually(t, "the unsendable delivery to die", func() bool { return e.delivery(brokenID).State == broker.DeliveryDead })
	if d := e.delivery(brokenID); !strings.Contains(d.LastError, "cannot be sent in form") {
		t.Errorf("unsendable delivery's last error = %q", d.LastError)
	}
	testutil.Eventually(t, "a try of the unknown protocol", func() bool { return e.delivery(oddID).Tries >= 1 })
	if d := e.delivery(oddID); d.State != broker.DeliveryPending || !strings.Contains(d.LastError, `cannot send results in protocol "unknown"`) {
		t.Errorf("delivery of an unknown protocol = %v %q, want pending and saying so", d.State, d.LastError)
	}
	e.idle(w)

	if _, err := New(e.db, e.ring, Config{Broker: brokerName, Protocols: map[broker.Protocol]Protocol{broker.ProtocolGradebroker: &formProtocol{}}}, nil); err == nil {
		t.Error("New let Config.Protocols replace gradebroker's own protocol")
	}
}
