package delivery

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// gqCallback is one callback a graderqueue platform got.
type gqCallback struct {
	ctype   string
	claims  token.Claims
	payload GraderqueuePayload
	raw     map[string]json.RawMessage
	err     error
	ok      bool // answered 200
}

// gqReceiver is a graderqueue platform's return URL: it reads the form
// field sToken, as $_POST['sToken'], opens it with the platform's key and
// checks the broker's signature.
type gqReceiver struct {
	*httptest.Server
	opener *token.Opener
	up     atomic.Bool
	mu     sync.Mutex
	calls  []gqCallback
}

func (e *env) newGQReceiver(platform string) *gqReceiver {
	e.t.Helper()
	ring, err := token.NewKeyRing(testKeys().platform, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	r := &gqReceiver{opener: &token.Opener{Keys: ring, Signers: token.StaticSigners{brokerName: &testKeys().broker.PublicKey},
		Replay: &token.MemoryReplayGuard{Now: e.clk.Now}, Audience: platform, Now: e.clk.Now}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		cb := gqCallback{ctype: req.Header.Get("Content-Type")}
		form, err := url.ParseQuery(string(body))
		if err == nil {
			var payload []byte
			cb.claims, payload, cb.err = r.opener.OpenCallback(req.Context(), form.Get("sToken"))
			if cb.err == nil {
				_ = json.Unmarshal(payload, &cb.payload)
				_ = json.Unmarshal(payload, &cb.raw)
			}
		} else {
			cb.err = err
		}
		cb.ok = r.up.Load()
		r.mu.Lock()
		r.calls = append(r.calls, cb)
		r.mu.Unlock()
		if !cb.ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		// What graderqueue's platforms answer; only the status counts.
		_, _ = io.WriteString(w, `{"bSuccess":true}`)
	}))
	e.t.Cleanup(r.Close)
	return r
}

func (r *gqReceiver) got() []gqCallback {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]gqCallback(nil), r.calls...)
}

func (e *env) gqPlatform(name, returnURL string) int64 {
	e.t.Helper()
	p, err := e.db.AddPlatform(context.Background(), broker.Platform{Name: name, Protocol: broker.ProtocolGraderqueue,
		PublicKeyPEM: publicPEM(e.t, testKeys().platform), ReturnURL: returnURL})
	if err != nil {
		e.t.Fatal(err)
	}
	return p.ID
}

// TestGraderqueueCallbackThroughOutage: a graderqueue platform's result
// goes out as sendresults.php sent it, a form field sToken holding
// {"sTaskName", "sResultData", "date"}, through the outbox: retried while
// the platform is down, across a restart of the broker, and acknowledged
// once.
func TestGraderqueueCallbackThroughOutage(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newGQReceiver("fioi")
	p := e.gqPlatform("fioi", rcv.URL)
	gq := func() map[broker.Protocol]Protocol {
		return map[broker.Protocol]Protocol{broker.ProtocolGraderqueue: NewGraderqueueCallback(e.ring, brokerName, 0)}
	}
	w := e.worker(Config{MinBackoff: time.Second, MaxBackoff: time.Second, Protocols: gq()})
	result := `{"errorcode":0,"errormsg":"Taskgrader executed successfully.\n","jobdata":{"executions":[{"name":"e","big":12345678901234567890}]}}`
	jobID, id := e.finalJob(p, "submission-501", "17-42-1#x", store.Final{State: broker.JobDone, Outcome: broker.OutcomeOK, Result: []byte(result)})
	w.Notify(jobID, id)
	e.advancing("two refused tries", time.Second, func() bool { return e.delivery(id).Tries >= 2 })

	// The broker restarts while the platform is still down.
	w.Stop()
	e.db.Close()
	e.open()
	e.worker(Config{MinBackoff: time.Second, MaxBackoff: time.Second, Protocols: gq()})
	rcv.up.Store(true)
	e.advancing("the delivery", time.Second, func() bool { return e.delivery(id).State == broker.DeliveryDelivered })

	calls := rcv.got()
	acked := 0
	for _, cb := range calls {
		if cb.err != nil {
			t.Fatalf("a callback does not open: %v", cb.err)
		}
		if cb.ctype != "application/x-www-form-urlencoded" {
			t.Errorf("Content-Type %q, want a form, as curl posts http_build_query's", cb.ctype)
		}
		if cb.payload.DeliveryID != id || cb.payload.TaskName != "submission-501" {
			t.Errorf("callback %+v, want delivery %d of submission-501", cb.payload, id)
		}
		if cb.ok {
			acked++
		}
	}
	if acked != 1 || len(calls) < 3 {
		t.Fatalf("%d callbacks, %d acknowledged; want tries through the outage and one acknowledgement", len(calls), acked)
	}
	last := calls[len(calls)-1]
	if got := string(last.raw["sResultData"]); got != `{"executions":[{"name":"e","big":12345678901234567890}]}` {
		t.Errorf("sResultData = %s, want taskgrader's output", got)
	}
	if got, want := last.payload.Date, e.clk.Now().Format("02-01-2006"); got != want || last.payload.Status != "done" || last.payload.JobID != jobID {
		t.Errorf("date %q status %q job %d, want %q, done, %d", got, last.payload.Status, last.payload.JobID, want, jobID)
	}
	if last.claims.Signer != brokerName {
		t.Errorf("signed by %q, want the broker", last.claims.Signer)
	}
}

// TestGraderqueueFailedJob: a job without a taskgrader result is called
// back with sResultData null, as sendresults.php sent a fatal error.
func TestGraderqueueFailedJob(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rcv := e.newGQReceiver("fioi")
	rcv.up.Store(true)
	p := e.gqPlatform("fioi", rcv.URL)
	w := e.worker(Config{Protocols: map[broker.Protocol]Protocol{broker.ProtocolGraderqueue: NewGraderqueueCallback(e.ring, brokerName, 0)}})
	jobID, id := e.finalJob(p, "s", "", store.Final{State: broker.JobFailed, Outcome: broker.OutcomeFatal,
		Result: []byte(`{"errorcode":1,"errormsg":"Fatal taskgrader error."}`), Error: "grader reported a fatal error"})
	w.Notify(jobID, id)
	testutil.Eventually(t, "the delivery", func() bool { return e.delivery(id).State == broker.DeliveryDelivered })
	calls := rcv.got()
	if len(calls) != 1 || calls[0].err != nil || string(calls[0].raw["sResultData"]) != "null" || calls[0].payload.Status != "failed" {
		t.Errorf("got %+v, want one callback with sResultData null and status failed", calls)
	}
}

func TestResultData(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`{"errorcode":0,"errormsg":"ok","jobdata":{"a":1}}`: `{"a":1}`,
		`{"errorcode":1,"errormsg":"Fatal"}`:                `null`,
		`{"score":1}`:                                       `{"score":1}`,
		`{"errorcode":"x","jobdata":1}`:                     `{"errorcode":"x","jobdata":1}`,
		`[1,2]`:                                             `[1,2]`,
		``:                                                  `null`,
	} {
		if got := string(ResultData([]byte(in))); got != want {
			t.Errorf("ResultData(%s) = %s, want %s", in, got, want)
		}
	}
}
