package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	gb "github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	gd "github.com/gradebroker/gradebroker/graderd"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// consoleGrader is the grader of the console tests: it answers a job's
// "result" (or its whole data), and fails the job (FATAL) while the file
// named by "fail_unless" does not exist.
const consoleGrader = `import json, os, sys
d = json.load(sys.stdin)["jobdata"]
if not isinstance(d, dict):
    d = {"data": d}
need = d.get("fail_unless")
if need and not os.path.exists(need):
    print(json.dumps({"error": "missing " + need}))
    sys.exit(1)
print(json.dumps(d.get("result", d)))
`

// consoleWriteTimeout is the console's write timeout in these tests: short,
// so that the live updates are seen to outlive it.
const consoleWriteTimeout = 2 * time.Second

// consoleEnv is a broker with its console on, one graderd (grader1, type
// py: python3, course-a, course-b) and the platforms demo (whose callbacks
// go to rcv) and other.
type consoleEnv struct {
	*platformEnv
	console string
	rcv     *receiver
	pin     string
	// flags is where the tests leave files the grader looks for
	// (fail_unless); its sandboxed runs see it read-only.
	flags string
}

func setupConsole(t *testing.T) *consoleEnv {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("python3 is required by the console tests' grader: %v", err)
	}
	e := setupPlatformWith(t, func(c *brokerdConfig) {
		c.Console.ConsoleAddr = "127.0.0.1:0"
		c.Console.ConsoleLiveEvery = 200 * time.Millisecond
		c.Console.ConsoleSampleEvery = 200 * time.Millisecond
		c.Console.ConsoleLinkTTL = 10 * time.Second
		c.Console.ConsoleWriteTimeout = consoleWriteTimeout
		c.DeliveryWindow = 2 * time.Second
	})
	ce := &consoleEnv{platformEnv: e, console: "https://" + e.b.ConsoleAddr(), pin: spkiPin(t, filepath.Join(e.b.dir, "broker.crt"))}
	e.b.mustAdmin(t, "tag", "add", "course-a")
	e.b.mustAdmin(t, "tag", "add", "course-b")
	e.b.mustAdmin(t, "type", "update", "py", "--tags", "python3,course-a,course-b")
	e.b.mustAdmin(t, "server", "add", "grader1", "--cert", filepath.Join(e.b.dir, "clients", "grader1.crt"), "--type", "py", "--max-jobs", "4")
	ce.rcv = newReceiver(t, "demo", e.demoKey, e.brokerPub)
	e.b.mustAdmin(t, "platform", "update", "demo", "--return-url", ce.rcv.srv.URL+"/cb")
	ce.flags = t.TempDir()
	if err := os.Chmod(ce.flags, 0o755); err != nil { // the runs' uids look in it
		t.Fatal(err)
	}
	startGraderdInProcess(t, e.b, "grader1", []string{"python3", "-c", consoleGrader}, ce.flags)
	testutil.Eventually(t, "grader1 connects", func() bool {
		return strings.Contains(e.b.mustAdmin(t, "server", "list"), "yes")
	})
	return ce
}

// link runs `broker admin console-login` with args and returns the link
// and when it expires.
func (e *consoleEnv) link(t *testing.T, args ...string) (string, time.Time) {
	t.Helper()
	out := e.b.mustAdmin(t, append([]string{"console-login", "--json"}, args...)...)
	var resp struct {
		URL       string    `json:"url"`
		ExpiresAt time.Time `json:"expiresAt"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || !strings.HasPrefix(resp.URL, e.console+"/login?token=") {
		t.Fatalf("console-login printed %q (%v); want a link to %s/login", out, err, e.console)
	}
	return resp.URL, resp.ExpiresAt
}

// login opens a session in a new browser context through a fresh link.
func (e *consoleEnv) login(t *testing.T, b *browser, args ...string) *tab {
	t.Helper()
	u, _ := e.link(t, args...)
	tb := b.session(t)
	tb.open(u)
	tb.click("#login")
	if who := tb.text("#who"); who == "" {
		t.Fatalf("after logging in the page shows no user: %s", tb.text("main"))
	}
	return tb
}

// send queues a job of platform demo (or other) and returns its id and the
// state sendjob answered.
func (e *consoleEnv) send(t *testing.T, platform string, fields map[string]any) (int64, string) {
	t.Helper()
	key := e.demoKey
	if platform == "other" {
		key = e.otherKey
	}
	code, out := e.post(t, "/v1/jobs", e.seal(t, platform, key, e.claims("sendjob", fields)))
	if code != 200 {
		t.Fatalf("sendjob %v: %d %v", fields, code, out)
	}
	return jsonID(t, out["job_id"]), fmt.Sprint(out["state"])
}

// waitJob waits until job id is in state.
func (e *consoleEnv) waitJob(t *testing.T, id int64, state gb.JobState) gb.Job {
	t.Helper()
	var j gb.Job
	testutil.Eventually(t, fmt.Sprintf("job %d %s", id, state), func() bool {
		var err error
		j, err = e.b.DB().GetJob(context.Background(), id)
		return err == nil && j.State == state
	})
	return j
}

// client is an HTTP client of the console: it trusts the dev CA, keeps
// cookies and does not follow redirects.
func (e *consoleEnv) client(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := devHTTPClient(t, e.b.dir)
	hc.Jar = jar
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return hc
}

// TestConsoleInBrowser is the console in a real browser: logging in, live
// updates, drain, requeue, redelivery, roles and scopes, escaping, and the
// refusals. The subtests share one broker and run in order.
func TestConsoleInBrowser(t *testing.T) {
	e := setupConsole(t)
	b := newBrowser(t, e.pin)
	op0 := e.login(t, b)

	t.Run("login link works once and expires", func(t *testing.T) {
		u, expires := e.link(t)
		// Opening the link (what a chat preview does) shows a button and
		// opens nothing.
		first := b.session(t)
		first.open(u)
		if first.count("#login") != 1 || first.text("#who") != "" {
			t.Fatalf("GET of the link did more than show the button: %s", first.text("main"))
		}
		first.screenshot("login", 0)
		first.click("#login")
		if !strings.Contains(first.text("#who"), "admin") {
			t.Fatalf("the button did not log in: %s", first.text("main"))
		}
		second := b.session(t)
		second.open(u)
		second.click("#login")
		if msg := second.text("#message"); !strings.Contains(msg, "already used") {
			t.Errorf("a used link: page says %q; want 'already used'", msg)
		}
		// An expired link: wait until the time it names has passed.
		u2, expires2 := e.link(t)
		if !expires2.After(expires) {
			t.Fatalf("second link expires %s, not after the first's %s", expires2, expires)
		}
		late := b.session(t)
		late.open(u2)
		testutil.Eventually(t, "the link's expiry", func() bool { return time.Now().After(expires2.Add(time.Second)) })
		late.click("#login")
		if msg := late.text("#message"); !strings.Contains(msg, "expired") {
			t.Errorf("an expired link: page says %q; want 'expired'", msg)
		}
	})

	t.Run("a submitted job goes queued then done without a reload", func(t *testing.T) {
		op := op0.in(t)
		op.open(e.console + "/jobs")
		op.eval(`(window.__noReload = "yes")`)
		opened := time.Now()
		e.b.mustAdmin(t, "server", "drain", "grader1")
		// The stream has outlived the console's write timeout before the
		// job is sent: its updates must still arrive.
		testutil.Eventually(t, "the write timeout to pass", func() bool {
			return time.Since(opened) > 2*consoleWriteTimeout
		})
		id, state := e.send(t, "demo", map[string]any{"jobname": "live", "tags": "python3", "jobdata": map[string]any{"result": map[string]any{"score": 7}}})
		if state != "JOB_STATE_QUEUED" {
			t.Fatalf("sendjob to a drained server answered %s", state)
		}
		sel := "#job-" + strconv.FormatInt(id, 10) + " .state"
		op.waitText(sel, "queued")
		e.b.mustAdmin(t, "server", "drain", "grader1", "--undrain")
		op.waitText(sel, "done")
		if op.eval(`String(window.__noReload)`) != "yes" {
			t.Error("the page was reloaded")
		}
		op.screenshot("jobs", 0)
		op.screenshot("jobs-390", 390)
	})

	t.Run("drain a server and see it refuse new jobs", func(t *testing.T) {
		op := op0.in(t)
		op.open(e.console + "/servers")
		op.click(`form[action="/servers/grader1/drain"] button`)
		op.waitText("#server-grader1 .state", "drained")
		// Undrained however this ends (the test undrains it through the
		// console below): the subtests after it need grader1.
		t.Cleanup(func() { e.b.mustAdmin(t, "server", "drain", "grader1", "--undrain") })
		// What graderd said of itself: its version, and how its one
		// executor isolates runs.
		if v, ex := op.text("#server-grader1 .version"), op.text("#server-grader1 .executors"); v != gd.Version || ex != "default: exec (crun)" {
			t.Errorf("grader1 shows graderd %q with executors %q; want %q and default: exec (crun)", v, ex, gd.Version)
		}
		op.screenshot("servers", 0)
		id, state := e.send(t, "demo", map[string]any{"tags": "python3", "jobdata": map[string]any{"x": 1}})
		if state != "JOB_STATE_QUEUED" {
			t.Errorf("a job sent while grader1 is drained was %s at once; want queued", state)
		}
		op.open(e.console + "/")
		op.waitText("#total-waiting", "1")
		// The pause button stops the updates, and says so.
		op.tick("#pause")
		if op.eval(`document.getElementById("pause").getAttribute("aria-pressed")`) != "true" || op.text("#livestate") != "Paused" {
			t.Errorf("after pause: aria-pressed %s, state %q", op.eval(`document.getElementById("pause").getAttribute("aria-pressed")`), op.text("#livestate"))
		}
		op.tick("#pause")
		op.screenshot("overview", 0)
		op.screenshot("overview-390", 390)
		op.open(e.console + "/servers")
		op.click(`form[action="/servers/grader1/undrain"] button`)
		e.waitJob(t, id, gb.JobDone)
		op.waitText("#server-grader1 .state", "connected")
		if strings.Contains(op.text("#server-grader1 .state"), "drained") {
			t.Error("grader1 still shows drained")
		}
	})

	t.Run("cancel what a filter selects, after a count", func(t *testing.T) {
		op := op0.in(t)
		e.b.mustAdmin(t, "server", "drain", "grader1")
		// Undrained however this ends: the subtests after it need grader1.
		t.Cleanup(func() { e.b.mustAdmin(t, "server", "drain", "grader1", "--undrain") })
		var ids []int64
		for i := range 3 {
			id, _ := e.send(t, "demo", map[string]any{"jobname": "bulk-" + strconv.Itoa(i), "tags": "course-b", "jobdata": map[string]any{"i": i}})
			ids = append(ids, id)
		}
		op.open(e.console + "/jobs?state=queued&tag=course-b")
		op.waitText("#job-"+strconv.FormatInt(ids[2], 10)+" .state", "queued")
		op.click(`a[href^="/bulk?action=cancel"]`)
		if c := op.text("#count"); !strings.Contains(c, "cancel 3 job(s)") {
			t.Fatalf("the confirmation says %q; want it to count 3 jobs", c)
		}
		op.screenshot("bulk", 0)
		op.click("#confirm")
		if f := op.text(".flash"); !strings.Contains(f, "3 job(s) cancelled") {
			t.Errorf("after the bulk cancel the page says %q", f)
		}
		for _, id := range ids {
			if j := e.waitJob(t, id, gb.JobCancelled); !strings.Contains(j.Error, "console:admin") {
				t.Errorf("job %d: %q; want it cancelled by console:admin", id, j.Error)
			}
		}
	})

	t.Run("requeue a failed job", func(t *testing.T) {
		op := op0.in(t)
		flag := filepath.Join(e.flags, "fixed")
		id, _ := e.send(t, "demo", map[string]any{"jobname": "flaky", "tags": "python3", "jobdata": map[string]any{"fail_unless": flag}})
		e.waitJob(t, id, gb.JobFailed)
		op.open(e.console + "/jobs/" + strconv.FormatInt(id, 10))
		op.waitText("#state", "failed")
		if err := os.WriteFile(flag, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		op.click("#requeue")
		op.waitText("#state", "done")
		// Each attempt shows what its sandboxed run used.
		for _, col := range []string{"cpu", "mem", "wall"} {
			if v := op.text("#attempts tbody tr:last-child ." + col); v == "" || v == "–" {
				t.Errorf("the last attempt's %s shows %q; want what the run used", col, v)
			}
		}
		if ev := op.text("#events"); !strings.Contains(ev, "console:admin") {
			t.Errorf("the event trail does not name who requeued: %s", ev)
		}
		op.screenshot("job", 0)
		op.screenshot("job-390", 390)
	})

	t.Run("results, messages and names are shown as text", func(t *testing.T) {
		op := op0.in(t)
		id, _ := e.send(t, "demo", map[string]any{"jobname": "<i>name</i>", "tags": "python3", "jobdata": map[string]any{"result": map[string]any{
			"correct": false, "score": 0,
			"msg":   `<p>Wrong</p><img src=x onerror="window.__pwned='img'"><script>window.__pwned='script'</script>`,
			"tests": []map[string]any{{"name": "<script>window.__pwned='cell'</script>", "ok": false}},
		}}})
		e.waitJob(t, id, gb.JobDone)
		op.open(e.console + "/jobs/" + strconv.FormatInt(id, 10))
		if msg := op.text("#result-msg"); !strings.Contains(msg, `<img src=x onerror=`) || !strings.Contains(msg, "<p>Wrong</p>") {
			t.Errorf("the grader's msg is not shown as its text: %q", msg)
		}
		if n := op.count("#result-msg *, .result-table td *, img"); n != 0 {
			t.Errorf("the result made %d elements; it must stay text", n)
		}
		if v := op.eval(`String(window.__pwned)`); v != "undefined" {
			t.Errorf("the result ran script: window.__pwned = %s", v)
		}
		if cell := op.text(".result-table td"); !strings.Contains(cell, "<script>") {
			t.Errorf("the per-test table shows %q", cell)
		}
		op.screenshot("job-result", 0)
		op.open(e.console + "/jobs")
		if op.count("#jobs i") != 0 || !strings.Contains(op.text("#job-"+strconv.FormatInt(id, 10)), "<i>name</i>") {
			t.Errorf("the job's name is not escaped in the list")
		}
	})

	t.Run("redeliver a dead delivery", func(t *testing.T) {
		op := op0.in(t)
		e.rcv.mu.Lock()
		e.rcv.fail = 1_000_000
		e.rcv.mu.Unlock()
		id, _ := e.send(t, "demo", map[string]any{"tags": "python3", "jobdata": map[string]any{"result": map[string]any{"ok": true}}})
		e.waitJob(t, id, gb.JobDone)
		var dead store.Delivery
		testutil.Eventually(t, "the delivery to die", func() bool {
			ds, err := e.b.DB().ListDeliveries(context.Background(), store.DeliveryFilter{JobID: id})
			if err == nil && len(ds) > 0 && ds[0].State == gb.DeliveryDead {
				dead = ds[0]
				return true
			}
			return false
		})
		e.rcv.mu.Lock()
		e.rcv.fail = 0
		e.rcv.mu.Unlock()
		op.open(e.console + "/deliveries?state=dead")
		op.screenshot("deliveries", 0)
		op.click(fmt.Sprintf("#delivery-%d .redeliver", dead.ID))
		if f := op.text(".flash"); !strings.Contains(f, "1 delivery") {
			t.Errorf("after redeliver the page says %q", f)
		}
		testutil.Eventually(t, "the callback", func() bool {
			for _, cb := range e.rcv.callbacks() {
				if cb["job_id"] == strconv.FormatInt(id, 10) || cb["job_id"] == float64(id) {
					return true
				}
			}
			return false
		})
		op.open(e.console + "/jobs/" + strconv.FormatInt(id, 10))
		op.waitText("#delivery", "delivered")
	})

	t.Run("redeliver all dead deliveries", func(t *testing.T) {
		op := op0.in(t)
		e.rcv.mu.Lock()
		e.rcv.fail = 1_000_000
		e.rcv.mu.Unlock()
		var ids []int64
		for range 2 {
			id, _ := e.send(t, "demo", map[string]any{"tags": "python3", "jobdata": map[string]any{"result": map[string]any{"ok": true}}})
			e.waitJob(t, id, gb.JobDone)
			ids = append(ids, id)
		}
		testutil.Eventually(t, "both deliveries to die", func() bool {
			for _, id := range ids {
				ds, err := e.b.DB().ListDeliveries(context.Background(), store.DeliveryFilter{JobID: id})
				if err != nil || len(ds) == 0 || ds[0].State != gb.DeliveryDead {
					return false
				}
			}
			return true
		})
		e.rcv.mu.Lock()
		e.rcv.fail = 0
		e.rcv.mu.Unlock()
		op.open(e.console + "/deliveries?state=dead")
		op.click("#redeliver-all")
		if f := op.text(".flash"); !strings.Contains(f, "2 delivery") {
			t.Errorf("after redeliver all the page says %q; want 2 deliveries", f)
		}
		for _, id := range ids {
			testutil.Eventually(t, fmt.Sprintf("job %d's callback", id), func() bool {
				for _, cb := range e.rcv.callbacks() {
					if cb["job_id"] == strconv.FormatInt(id, 10) || cb["job_id"] == float64(id) {
						return true
					}
				}
				return false
			})
		}
	})

	t.Run("send a test job and watch it run", func(t *testing.T) {
		op := op0.in(t)
		op.open(e.console + "/test")
		op.do(setValue("#name", "try it"), setValue("#jobdata", `{"result": {"score": 100, "tests": [{"name": "t1", "ok": true}]}}`))
		op.tick(`input[name=tag][value=python3]`)
		op.screenshot("test", 0)
		op.click("#send")
		op.waitText("#state", "done")
		if fields := op.text("#result-fields"); !strings.Contains(fields, "100") {
			t.Errorf("the test job's result is not shown: %q", fields)
		}
		if !strings.Contains(op.text("main"), gb.ConsolePlatform) || !strings.Contains(op.text("#delivery"), "–") {
			t.Errorf("a test job should be the console platform's, delivered nowhere: %s", op.text("main"))
		}
	})

	t.Run("a viewer sees no buttons and cannot post the forms", func(t *testing.T) {
		id, _ := e.send(t, "demo", map[string]any{"tags": "python3", "jobdata": map[string]any{"fail_unless": "/nonexistent"}})
		e.waitJob(t, id, gb.JobFailed)
		v := e.login(t, b, "--viewer", "--name", "Auditor")
		for _, p := range []string{"/", "/servers", "/jobs", "/jobs/" + strconv.FormatInt(id, 10), "/deliveries", "/registry"} {
			v.open(e.console + p)
			if n := v.count(`main form[method=post]`); n != 0 {
				t.Errorf("a viewer sees %d forms that change something on %s", n, p)
			}
		}
		if v.count(`a[href="/test"]`) != 0 {
			t.Error("a viewer is offered to send test jobs")
		}
		// The forms, posted anyway with the viewer's own anti-forgery token.
		for _, p := range []string{"/servers/grader1/drain", "/jobs/" + strconv.FormatInt(id, 10) + "/requeue", "/registry/tags/add"} {
			code := v.eval(`fetch(` + jsString(p) + `, {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"},
				body: "name=x&csrf=" + encodeURIComponent(document.querySelector("input[name=csrf]").value)}).then(r => String(r.status))`)
			if code != "403" {
				t.Errorf("a viewer's POST %s answered %s; want 403", p, code)
			}
		}
		if j := e.waitJob(t, id, gb.JobFailed); j.State != gb.JobFailed {
			t.Errorf("the viewer's requeue changed the job")
		}
	})

	t.Run("a viewer scoped to one platform sees no other platform's job", func(t *testing.T) {
		mine, _ := e.send(t, "other", map[string]any{"jobname": "other's", "tags": "python3", "jobdata": map[string]any{"a": 1}})
		theirs, _ := e.send(t, "demo", map[string]any{"jobname": "demo's", "tags": "python3", "jobdata": map[string]any{"a": 2}})
		e.waitJob(t, theirs, gb.JobDone)
		v := e.login(t, b, "--viewer", "--name", "Other staff", "--platform", "other")
		v.open(e.console + "/")
		if v.count("#jobs") != 1 {
			t.Fatalf("a scoped viewer's start page is not the job list: %s", v.text("main"))
		}
		if v.count("#job-"+strconv.FormatInt(mine, 10)) != 1 {
			t.Errorf("the scoped viewer does not see its platform's job %d", mine)
		}
		if n := v.count("#jobs tbody tr[id]"); n == 0 || v.count("#job-"+strconv.FormatInt(theirs, 10)) != 0 {
			t.Errorf("the scoped viewer sees job %d of another platform (or nothing)", theirs)
		}
		for _, row := range strings.Split(v.text("#jobs tbody"), "\n") {
			if strings.Contains(row, "demo") {
				t.Errorf("a row of platform demo is shown: %q", row)
			}
		}
		v.screenshot("jobs-scoped-viewer", 0)
		v.open(e.console + "/jobs/" + strconv.FormatInt(theirs, 10))
		if msg := v.text("#message"); !strings.Contains(msg, "not found") {
			t.Errorf("another platform's job page says %q; want not found", msg)
		}
		v.open(e.console + "/jobs?platform=demo")
		if !strings.Contains(v.text("main"), "sees only") {
			t.Errorf("asking for another platform's jobs: %s", v.text("main"))
		}
	})

	t.Run("forms without the anti-forgery token and requests without a session are refused", func(t *testing.T) {
		op := op0.in(t)
		op.open(e.console + "/servers")
		code := op.eval(`fetch("/servers/grader1/drain", {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "x=1"}).then(r => String(r.status))`)
		if code != "403" {
			t.Errorf("POST without the token answered %s; want 403", code)
		}
		nobody := b.session(t)
		nobody.open(e.console + "/jobs")
		if nobody.count("#jobs") != 0 || nobody.count("main") != 1 || !strings.Contains(nobody.text("main"), "console-login") {
			t.Errorf("a request without a session was not sent to log in: %s", nobody.text("main"))
		}
		if e.b.Dispatcher().ServerDrained("grader1") {
			t.Error("the refused POST drained grader1")
		}
	})

	t.Run("sessions and registry pages", func(t *testing.T) {
		op := op0.in(t)
		op.open(e.console + "/sessions")
		if !strings.Contains(op.text("#sessions"), "Auditor") {
			t.Errorf("the sessions page does not list the viewer: %s", op.text("#sessions"))
		}
		op.screenshot("sessions", 0)
		op.open(e.console + "/registry")
		op.screenshot("registry", 0)
		// The admin API's checks and messages, through the console.
		op.do(setValue(`form[action="/registry/types/add"] input[name=name]`, "gpu"),
			setValue(`form[action="/registry/types/add"] input[name=tags]`, "cuda"))
		op.click(`form[action="/registry/types/add"] button`)
		if msg := op.text(".flash.error"); !strings.Contains(msg, "cuda") {
			t.Errorf("adding a type with an unknown tag says %q; want it to name the tag", msg)
		}
		// Every field is labelled, on every page.
		for _, p := range []string{"/", "/servers", "/jobs", "/deliveries", "/registry", "/test", "/sessions"} {
			op.open(e.console + p)
			unlabelled := op.eval(`Array.from(document.querySelectorAll("input:not([type=hidden]), select, textarea")).filter(
				e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).map(e => e.name).join(",")`)
			if unlabelled != "" {
				t.Errorf("%s: fields without a label: %s", p, unlabelled)
			}
		}
	})
}

// TestConsoleHTTP checks, without a browser, what every response carries
// and what a request without a session or from another site gets, and that
// live updates outlive the write timeout.
func TestConsoleHTTP(t *testing.T) {
	e := setupConsole(t)
	hc := e.client(t)
	resp, err := hc.Get(e.console + "/jobs")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /jobs without a session: %d; want 401", resp.StatusCode)
	}
	for h, want := range map[string]string{
		"Content-Security-Policy": "script-src 'self'", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
	} {
		if got := resp.Header.Get(h); !strings.Contains(got, want) {
			t.Errorf("%s: %q; want %q", h, got, want)
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q must forbid framing and inline script", csp)
	}
	if resp.TLS == nil || resp.TLS.Version != 0x0304 {
		t.Errorf("the console is not TLS 1.3")
	}

	// Log in as a browser would: the link's page, then its form.
	u, _ := e.link(t)
	page, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	csrf := hiddenValue(string(body), "csrf")
	tok := hiddenValue(string(body), "token")
	form := url.Values{"csrf": {csrf}, "token": {tok}}
	// From another site, the login form is refused, and the link survives.
	req, _ := http.NewRequest(http.MethodPost, e.console+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a login posted from another origin: %v %v; want 403", resp.StatusCode, err)
	}
	resp, err = hc.PostForm(e.console+"/login", form)
	if err != nil || resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %v %v", resp.Status, err)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "__Host-gb-console" {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" || cookie.Domain != "" {
		t.Fatalf("session cookie %+v; want __Host-gb-console, HttpOnly, Secure, SameSite=Strict, Path=/", cookie)
	}

	// An operator's client certificate opens an operator's session.
	cert, err := tls.LoadX509KeyPair(filepath.Join(e.b.dir, "clients", "admin.crt"), filepath.Join(e.b.dir, "clients", "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	withCert := e.client(t)
	withCert.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	page, err = withCert.Get(e.console + "/login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(page.Body)
	page.Body.Close()
	if !strings.Contains(string(body), "certlogin") {
		t.Fatalf("the login page does not offer the presented certificate: %s", body)
	}
	resp, err = withCert.PostForm(e.console+"/login/cert", url.Values{"csrf": {hiddenValue(string(body), "csrf")}})
	if err != nil || resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("certificate login: %v %v", resp.Status, err)
	}
	if resp, err := withCert.Get(e.console + "/servers"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("after certificate login /servers: %v %v", resp.Status, err)
	}
	// A server's certificate is from the same CA, but not an operator's.
	srvCert, _ := tls.LoadX509KeyPair(filepath.Join(e.b.dir, "clients", "grader1.crt"), filepath.Join(e.b.dir, "clients", "grader1.key"))
	asServer := e.client(t)
	asServer.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{srvCert}
	page, _ = asServer.Get(e.console + "/login")
	body, _ = io.ReadAll(page.Body)
	page.Body.Close()
	if resp, err := asServer.PostForm(e.console+"/login/cert", url.Values{"csrf": {hiddenValue(string(body), "csrf")}}); err != nil || resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a server certificate logging in: %v %v; want refused", resp.Status, err)
	}

	// A live stream keeps going past the write timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, e.console+"/live/overview", nil)
	live, err := hc.Do(req)
	if err != nil || live.StatusCode != 200 || live.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /live/overview: %v %v", live, err)
	}
	defer live.Body.Close()
	start := time.Now()
	sc := bufio.NewScanner(live.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sawUpdate, lasted := false, false
	for sc.Scan() {
		if sc.Text() == "event: update" {
			sawUpdate = true
		}
		if time.Since(start) > 3*consoleWriteTimeout {
			lasted = true
			break
		}
	}
	if !sawUpdate || !lasted {
		t.Errorf("live stream: update seen %v, still open after %s: %v (%v)", sawUpdate, 3*consoleWriteTimeout, lasted, sc.Err())
	}

	// Revoking the session ends its stream and its next request.
	sessions := strings.Split(e.b.mustAdmin(t, "console", "sessions"), "\n")
	id := strings.Fields(sessions[len(sessions)-2])[0] // the oldest: the link's
	e.b.mustAdmin(t, "console", "revoke", id)
	for sc.Scan() {
		if sc.Text() == "event: ended" {
			break
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the revoked session's stream: %v", err)
	}
	if resp, err := hc.Get(e.console + "/jobs"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a revoked session's request: %v %v; want 401", resp.StatusCode, err)
	}
}

// hiddenValue finds the value of the hidden input name in a page.
func hiddenValue(page, name string) string {
	i := strings.Index(page, `name="`+name+`" value="`)
	if i < 0 {
		return ""
	}
	rest := page[i+len(`name="`+name+`" value="`):]
	return html.UnescapeString(rest[:strings.Index(rest, `"`)])
}

// setValue types v into the field sel.
func setValue(sel, v string) chromedp.Action[chromedp.Void] {
	return chromedp.SetValue(chromedp.CSS(sel), v)
}

// TestConsoleOwnCertificate serves the console with a certificate of its
// own, from a CA the broker does not use (as a public CA's would be): a
// browser trusting only that CA reaches the console, and operators' client
// certificates are still checked against the broker's CA.
func TestConsoleOwnCertificate(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	public := t.TempDir()
	script(t, "gb-ca.sh", "--dir", public, "--name", "console")
	b := startBroker(t, dir, func(c *brokerdConfig) {
		c.Console.ConsoleAddr = "127.0.0.1:0"
		c.Console.ConsoleCertFile = filepath.Join(public, "broker.crt")
		c.Console.ConsoleKeyFile = filepath.Join(public, "broker.key")
	})
	bootstrap(t, dir, b.db)
	hc := devHTTPClient(t, public) // trusts the other CA only
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "clients", "admin.crt"), filepath.Join(dir, "clients", "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	hc.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	resp, err := hc.Get("https://" + b.ConsoleAddr() + "/login")
	if err != nil {
		t.Fatalf("the console with its own certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "certlogin") {
		t.Errorf("the operator's certificate (broker's CA) is not offered for login: %s", body)
	}
	if got := resp.TLS.PeerCertificates[0].Issuer.String(); strings.Contains(got, "gradebroker") {
		t.Errorf("the console presented a certificate issued by %s; want the console's own", got)
	}
	// The gRPC and gateway ports keep the broker's certificate.
	if _, err := devHTTPClient(t, public).Get("https://" + b.HTTPAddr() + "/healthz"); err == nil {
		t.Error("the gateway presented the console's certificate")
	}
}
