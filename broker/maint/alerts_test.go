package maint

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/store"
)

// alerter returns an Alerter over e that posts to a new webhook, and the
// webhook.
func (e *env) alerter(q Queues, cfg AlertConfig) (*Alerter, *webhook) {
	e.t.Helper()
	wh := newWebhook(e.t)
	n, err := NewWebhook(wh.URL+"/hook?secret=s3cr3t", time.Second)
	e.must(err)
	cfg.Now = e.clk.Now
	cfg.Broker = "gb-test"
	return NewAlerter(e.db, q, []Notifier{n}, cfg, e.log), wh
}

// dispatcher starts a real dispatcher on e's database and clock.
func (e *env) dispatcher() *dispatch.Dispatcher {
	e.t.Helper()
	d := dispatch.New(e.db, dispatch.Config{Now: e.clk.Now}, e.log)
	e.must(d.Start(context.Background()))
	e.t.Cleanup(d.Stop)
	return d
}

// fakeQueues answers Classes with fixed classes.
type fakeQueues []dispatch.ClassStatus

func (f fakeQueues) Classes(context.Context) ([]dispatch.ClassStatus, error) { return f, nil }

var _ Queues = fakeQueues(nil)
var _ Queues = (*dispatch.Dispatcher)(nil)

// only fails unless alerts are exactly one of kind, and returns it.
func only(t *testing.T, alerts []map[string]any, kind string) map[string]any {
	t.Helper()
	if len(alerts) != 1 || alerts[0]["alert"] != kind {
		t.Fatalf("webhook got %v, want one %s alert", kinds(alerts), kind)
	}
	a := alerts[0]
	for _, f := range []string{"severity", "summary", "details", "at"} {
		if _, ok := a[f]; !ok {
			t.Errorf("%s alert has no %q: %v", kind, f, a)
		}
	}
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(a["at"])); err != nil {
		t.Errorf("%s alert: at %v is not RFC 3339", kind, a["at"])
	}
	if d, _ := a["details"].(map[string]any); d["broker"] != "gb-test" {
		t.Errorf("%s alert details %v lack the broker's name", kind, a["details"])
	}
	return a
}

func TestAlertJobsFailing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	a, wh := e.alerter(nil, AlertConfig{})
	for i := range 9 {
		state := broker.JobDone
		if i < 3 {
			state = broker.JobFailed
		}
		e.finished(e.quiet, state, nil)
	}
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("9 final jobs (fewer than the minimum 10): %v", kinds(got))
	}
	e.finished(e.quiet, broker.JobDone, nil) // 3 of 10 failed: 30 % > 20 %
	a.Check(ctx)
	al := only(t, wh.take(), KindJobsFailing)
	d := al["details"].(map[string]any)
	if d["failed"] != 3.0 || d["final"] != 10.0 || al["severity"] != SeverityCritical || !strings.Contains(fmt.Sprint(al["summary"]), "30%") {
		t.Errorf("alert %v", al)
	}
	// Not again within the hour, though the jobs still fail.
	e.clk.Add(10 * time.Minute)
	e.finished(e.quiet, broker.JobFailed, nil)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("a second alert within the rate limit: %v", kinds(got))
	}
	// Held back by the rate limit, it still fires (the console shows it).
	if f := a.Firing(); len(f) != 1 || f[0].Kind != KindJobsFailing {
		t.Errorf("Firing() = %v; want the jobs_failing alert held back", f)
	}
	// An hour on, failures in the new window alert again.
	e.clk.Add(55 * time.Minute)
	for range 10 {
		e.finished(e.quiet, broker.JobFailed, nil)
	}
	a.Check(ctx)
	only(t, wh.take(), KindJobsFailing)
	// Below the ratio: quiet.
	e.clk.Add(2 * time.Hour)
	for i := range 20 {
		if i == 0 {
			e.finished(e.quiet, broker.JobFailed, nil)
		} else {
			e.finished(e.quiet, broker.JobDone, nil)
		}
	}
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("5%% failed: %v", kinds(got))
	}
	if f := a.Firing(); len(f) != 0 {
		t.Errorf("Firing() = %v once the condition passed; want none", f)
	}
	if !strings.Contains(e.logs.String(), "alert sent") || strings.Contains(e.logs.String(), "s3cr3t") {
		t.Errorf("log lacks 'alert sent' or shows the webhook's secret:\n%s", e.logs.String())
	}
}

func TestAlertNoServerAndQueueStaleFromTheDispatcher(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	d := e.dispatcher()
	a, wh := e.alerter(d, AlertConfig{})
	if _, err := d.Submit(ctx, []broker.NewJob{{PlatformID: e.mooc, Name: "j", Tags: []string{"py"}, Timeout: time.Minute,
		JobData: []byte(`{}`), TypeIDs: []int64{e.typeID}}}, nil, "platform:mooc"); err != nil {
		t.Fatal(err)
	}
	e.clk.Add(30 * time.Second)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("a job waiting 30 s: %v", kinds(got))
	}
	e.clk.Add(time.Minute)
	a.Check(ctx)
	al := only(t, wh.take(), KindNoServer)
	det := al["details"].(map[string]any)
	if !cmp.Equal(det["types"], []any{"pytype"}) || det["waiting"] != 1.0 || det["servers_connected"] != 0.0 {
		t.Errorf("no_server alert %v", al)
	}
	e.clk.Add(15 * time.Minute)
	a.Check(ctx)
	al = only(t, wh.take(), KindQueueStale) // no_server is held back for the hour
	if det := al["details"].(map[string]any); det["waiting"] != 1.0 || det["oldest_waiting"] != "16m30s" {
		t.Errorf("queue_stale alert %v", al)
	}
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("alerts again within the rate limit: %v", kinds(got))
	}
	e.clk.Add(time.Hour)
	a.Check(ctx)
	got := kinds(wh.take())
	slices.Sort(got)
	if diff := cmp.Diff([]string{KindNoServer, KindQueueStale}, got); diff != "" {
		t.Errorf("an hour later (-want +got):\n%s", diff)
	}
}

func TestAlertQueueStaleWithServersBusy(t *testing.T) {
	t.Parallel()
	e := setup(t)
	q := fakeQueues{{TypeIDs: []int64{1}, Types: []string{"py"}, Waiting: 40, OldestAge: 14 * time.Minute, Connected: 2, Accepting: 2}}
	a, wh := e.alerter(q, AlertConfig{QueueAge: 15 * time.Minute})
	a.Check(context.Background())
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("oldest wait 14 min: %v", kinds(got))
	}
	q[0].OldestAge = 16 * time.Minute
	a.Check(context.Background())
	al := only(t, wh.take(), KindQueueStale)
	if al["severity"] != SeverityWarning || !strings.Contains(fmt.Sprint(al["summary"]), "16m0s") {
		t.Errorf("alert %v", al)
	}
}

func TestAlertServerFailsToWake(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	for _, name := range []string{"g1", "g2"} {
		if _, err := e.db.AddServer(ctx, broker.Server{Name: name, Type: "pytype", MaxConcurrentJobs: 1,
			WakeupURL: "https://" + name + ".lan/wake", Cert: broker.CertIdentity{Serial: name, Issuer: "CN=ca",
				Subject: "CN=" + name, Fingerprint: "fp-" + name, NotAfter: e.clk.Now().Add(day)}}); err != nil {
			t.Fatal(err)
		}
	}
	a, wh := e.alerter(nil, AlertConfig{})
	fail := func(name string, n int) {
		for range n {
			if _, err := e.db.RecordWakeup(ctx, name, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	fail("g1", 2)
	fail("g2", 1)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("2 failed wakeups: %v", kinds(got))
	}
	fail("g1", 1)
	a.Check(ctx)
	al := only(t, wh.take(), KindWakeupFailing)
	if det := al["details"].(map[string]any); det["server"] != "g1" || det["wakeup_fails"] != 3.0 {
		t.Errorf("alert %v", al)
	}
	fail("g1", 1)
	fail("g2", 2)
	a.Check(ctx)
	al = only(t, wh.take(), KindWakeupFailing) // g1 is held back; g2 is another subject
	if det := al["details"].(map[string]any); det["server"] != "g2" {
		t.Errorf("second alert %v, want g2's", al)
	}
}

func TestAlertDeadDeliveries(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	a, wh := e.alerter(nil, AlertConfig{})
	j1 := e.finished(e.mooc, broker.JobDone, nil)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("a pending delivery: %v", kinds(got))
	}
	e.must(e.db.MarkDead(ctx, j1.delivery, 9, "404"))
	a.Check(ctx)
	al := only(t, wh.take(), KindDeliveriesDead)
	if det := al["details"].(map[string]any); det["dead"] != 1.0 || det["new"] != 1.0 || !cmp.Equal(det["new_ids"], []any{float64(j1.delivery)}) {
		t.Errorf("alert %v", al)
	}
	// The same dead delivery an hour later is not news.
	e.clk.Add(2 * time.Hour)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("no new dead delivery: %v", kinds(got))
	}
	// A new one is, but within the hour it waits for the rate limit...
	j2 := e.finished(e.mooc, broker.JobFailed, nil)
	e.must(e.db.MarkDead(ctx, j2.delivery, 9, "410"))
	a.Check(ctx)
	only(t, wh.take(), KindDeliveriesDead)
	j3 := e.finished(e.mooc, broker.JobFailed, nil)
	e.must(e.db.MarkDead(ctx, j3.delivery, 9, "410"))
	e.clk.Add(10 * time.Minute)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("a new dead delivery within the rate limit: %v", kinds(got))
	}
	// ...and is told of once it has passed.
	e.clk.Add(time.Hour)
	a.Check(ctx)
	al = only(t, wh.take(), KindDeliveriesDead)
	if det := al["details"].(map[string]any); det["dead"] != 3.0 || det["new"] != 1.0 {
		t.Errorf("alert after the rate limit %v", al)
	}
	// Redelivered ones are no longer dead deliveries to tell of.
	if _, err := e.db.Redeliver(ctx, store.Redelivery{AllDead: true}); err != nil {
		t.Fatal(err)
	}
	if dead, total, err := e.db.DeadDeliveries(ctx, 10); err != nil || total != 0 || len(dead) != 0 {
		t.Errorf("after redelivery: %v, %d, %v", dead, total, err)
	}
}

func TestAlertWebhookDownIsLoggedAndRetried(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	a, wh := e.alerter(fakeQueues{{Types: []string{"py"}, Waiting: 1, OldestAge: time.Hour, Accepting: 1}}, AlertConfig{})
	wh.setStatus(http.StatusServiceUnavailable)
	raised := a.Check(ctx)
	if len(raised) != 1 || raised[0].Kind != KindQueueStale {
		t.Fatalf("Check raised %v", raised)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "alert not sent") || !strings.Contains(logs, "503") || strings.Contains(logs, "s3cr3t") {
		t.Errorf("the failure is not logged as it should be:\n%s", logs)
	}
	wh.setStatus(http.StatusOK)
	e.clk.Add(time.Minute)
	a.Check(ctx)
	if got := wh.take(); len(got) != 0 {
		t.Fatalf("retried before RetryFailed: %v", kinds(got))
	}
	e.clk.Add(5 * time.Minute)
	a.Check(ctx)
	only(t, wh.take(), KindQueueStale)
}

func TestAlertByMail(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	srv := newFakeSMTP(t)
	n, err := NewSMTP(SMTPConfig{Addr: srv.addr, From: "Gradebroker <gb@example.org>", To: []string{"ops@example.org", "oncall@example.org"},
		User: "gb", Password: "hunter2", Hello: "broker.test"})
	e.must(err)
	a := NewAlerter(e.db, fakeQueues{{Types: []string{"gputype"}, Waiting: 3, OldestAge: 5 * time.Minute}},
		[]Notifier{n}, AlertConfig{Broker: "gb-test", Now: e.clk.Now}, e.log)
	a.Check(ctx)
	msgs := srv.messages()
	if len(msgs) != 1 {
		t.Fatalf("the mail server got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if !strings.HasPrefix(m.from, "FROM:<gb@example.org>") || !cmp.Equal(m.to, []string{"TO:<ops@example.org>", "TO:<oncall@example.org>"}) {
		t.Errorf("envelope from %q to %q", m.from, m.to)
	}
	wantAuth := "PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00gb\x00hunter2"))
	if m.auth != wantAuth {
		t.Errorf("AUTH %q, want %q", m.auth, wantAuth)
	}
	if subj := m.header("Subject"); !strings.HasPrefix(subj, "[gradebroker critical] 3 job(s) for server type(s) gputype wait") {
		t.Errorf("Subject %q", subj)
	}
	if m.header("X-Gradebroker-Alert") != KindNoServer || m.header("To") != "ops@example.org, oncall@example.org" {
		t.Errorf("headers of\n%s", m.data)
	}
	for _, part := range []string{"alert:    no_server", `broker: "gb-test"`, `waiting: 3`} {
		if !strings.Contains(m.data, part) {
			t.Errorf("message lacks %q:\n%s", part, m.data)
		}
	}
	if strings.Contains(e.logs.String(), "hunter2") {
		t.Error("the SMTP password is in the log")
	}
	// Rate-limited like any other notifier.
	a.Check(ctx)
	if k := len(srv.messages()); k != 1 {
		t.Errorf("%d messages after a second check, want still 1", k)
	}
}

func TestSMTPConfigChecks(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cfg  SMTPConfig
		part string
	}{
		{SMTPConfig{Addr: "mail", From: "a@b", To: []string{"c@d"}}, "alert_smtp_addr"},
		{SMTPConfig{Addr: "mail:25", From: "nope", To: []string{"c@d"}}, "alert_smtp_from"},
		{SMTPConfig{Addr: "mail:25", From: "a@b"}, "alert_smtp_to"},
		{SMTPConfig{Addr: "mail:25", From: "a@b", To: []string{"c@d", "x"}}, `"x"`},
	} {
		if _, err := NewSMTP(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.part) {
			t.Errorf("NewSMTP(%+v) = %v, want an error naming %s", tt.cfg, err, tt.part)
		}
	}
	if _, err := NewWebhook("ftp://x/y", 0); err == nil {
		t.Error("NewWebhook accepted ftp://")
	}
}
