package scenarios

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const yamlSet = `
name: todo
scenarios:
  - name: create a todo
    public: true
    method: POST
    path: /v1/todos
    headers: {X-Test: "1"}
    body: {"title": "milk"}
    timeout: 2s
    expect:
      status: 201
      json: {"id": 1, "title": "milk", "done": false}
      ignore: [created_at]
  - name: list
    path: /v1/todos?done=false
    points: 2
    expect:
      json: [{"title": "milk"}]
      ignore: [id, created_at, done]
      unordered: true
  - name: health
    path: /health
    expect: {text: "ok\n"}
`

func TestParseYAMLAndJSONAlike(t *testing.T) {
	t.Parallel()
	fromYAML, err := Parse([]byte(yamlSet))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(fromYAML)
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := Parse(b)
	if err != nil {
		t.Fatalf("the set written back as JSON does not parse: %v\n%s", err, b)
	}
	if diff := cmp.Diff(fromYAML, fromJSON); diff != "" {
		t.Errorf("YAML and JSON read differently (-yaml +json):\n%s", diff)
	}
	sc := fromYAML.Scenarios
	if sc[0].Method != "POST" || sc[1].Method != "GET" || sc[1].Expect.Status != 200 || time.Duration(sc[0].Timeout) != 2*time.Second {
		t.Errorf("defaults or fields not read: %+v", sc)
	}
	if sc[1].points() != 2 || sc[0].points() != 1 {
		t.Errorf("points %v and %v, want 1 and 2", sc[0].points(), sc[1].points())
	}
	arr, err := ParseJSON([]byte(`[{"name": "a", "path": "/"}]`))
	if err != nil || len(arr.Scenarios) != 1 {
		t.Errorf("an array of scenarios: %v, %v", arr, err)
	}
}

func TestParseRefusesBadSets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ set, wantErr string }{
		{`{"scenarios": []}`, "no scenarios"},
		{`{"scenarios": [{"path": "/"}]}`, "name: missing"},
		{`{"scenarios": [{"name": "a", "path": "http://evil/"}]}`, "path"},
		{`{"scenarios": [{"name": "a", "path": "//evil/x"}]}`, "path"},
		{`{"scenarios": [{"name": "a", "path": "/", "method": "get me"}]}`, "method"},
		{`{"scenarios": [{"name": "a", "path": "/", "headers": {"Bad Name": "x"}}]}`, "headers"},
		{`{"scenarios": [{"name": "a", "path": "/", "headers": {"X": "a\r\nB: c"}}]}`, "headers"},
		{`{"scenarios": [{"name": "a", "path": "/", "expect": {"status": 999}}]}`, "status"},
		{`{"scenarios": [{"name": "a", "path": "/", "expect": {"regex": "("}}]}`, "regex"},
		{`{"scenarios": [{"name": "a", "path": "/", "expect": {"json": 1, "text": "1"}}]}`, "at most one"},
		{`{"scenarios": [{"name": "a", "path": "/", "expect": {"ignore": ["id"]}}]}`, "json only"},
		{`{"scenarios": [{"name": "a", "path": "/", "timeout": "1h"}]}`, "timeout"},
		{`{"scenarios": [{"name": "a", "path": "/", "body": 1, "body_text": "x"}]}`, "one of them"},
		{`{"scenarios": [{"name": "a", "path": "/", "colour": "red"}]}`, "unknown field"},
		{`{"scenarios": [{"name": "a", "path": "/"}]} {}`, "after the set"},
		{"scenarios:\n  - {name: a, path: /}\n  - {1: x}", "not a string"},
		{"[1, 2", "malformed"},
	} {
		_, err := Parse([]byte(tc.set))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", tc.set, err, tc.wantErr)
		}
	}
}

func TestLoadByName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "todo-1.yaml"), []byte(yamlSet), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir, "todo-1")
	if err != nil || s.Name != "todo" || len(s.Scenarios) != 3 {
		t.Fatalf("Load = %+v, %v", s, err)
	}
	for _, bad := range []string{"../todo-1", "..", "a/b", "", ".hidden"} {
		if _, err := Load(dir, bad); err == nil || !strings.Contains(err.Error(), "not a scenario set's name") {
			t.Errorf("Load(%q) = %v, want the name refused", bad, err)
		}
	}
	if _, err := Load(dir, "missing"); err == nil || !strings.Contains(err.Error(), "no scenario set") {
		t.Errorf("Load(missing) = %v", err)
	}
}

func TestPublicOnly(t *testing.T) {
	t.Parallel()
	s, err := Parse([]byte(yamlSet))
	if err != nil {
		t.Fatal(err)
	}
	p := s.PublicOnly()
	if len(p.Scenarios) != 1 || p.Scenarios[0].Name != "create a todo" {
		t.Errorf("public scenarios: %+v", p.Scenarios)
	}
}

func TestCompareJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		want, got string
		ignore    []string
		unordered bool
		diff      []string
	}{
		{"equal, keys in another order", `{"a": 1, "b": [1, 2]}`, `{"b": [1, 2], "a": 1}`, nil, false, nil},
		{"numbers by value", `{"a": 1, "b": 0.5, "c": 100}`, `{"a": 1.0, "b": 5e-1, "c": 1e2}`, nil, false, nil},
		{"a changed value", `{"items": [{"title": "milk"}]}`, `{"items": [{"title": "bread"}]}`, nil, false,
			[]string{`$.items[0].title: expected "milk", got "bread"`}},
		{"missing and unexpected keys", `{"a": 1, "b": 2}`, `{"a": 1, "c": 3}`, nil, false,
			[]string{`$.b: missing (expected 2)`, `$.c: unexpected (got 3)`}},
		{"ignored at any depth", `{"id": 1, "x": {"id": 2, "v": [{"id": 3, "w": 1}]}}`, `{"id": 9, "x": {"id": 8, "v": [{"id": 7, "w": 1}]}}`, []string{"id"}, false, nil},
		{"ignored keys may be absent", `{"id": 1, "v": 2}`, `{"v": 2}`, []string{"id"}, false, nil},
		{"array order matters by default", `[1, 2]`, `[2, 1]`, nil, false, []string{`$[0]: expected 1, got 2`, `$[1]: expected 2, got 1`}},
		{"arrays in any order, at any depth", `{"a": [[1, 2], [3, 4]]}`, `{"a": [[4, 3], [2, 1]]}`, nil, true, nil},
		{"unordered duplicates count", `[1, 1, 2]`, `[1, 2, 2]`, nil, true, []string{`$[*]: missing (expected an element 1)`, `$[*]: unexpected (got an element 2)`}},
		{"unordered objects with ignored keys", `[{"id": 1, "t": "a"}, {"id": 2, "t": "b"}]`, `[{"id": 5, "t": "b"}, {"id": 6, "t": "a"}]`, []string{"id"}, true, nil},
		{"ignored keys not shown", `[{"id": 1, "t": "a"}]`, `[{"id": 5, "t": "b"}]`, []string{"id"}, true,
			[]string{`$[*]: missing (expected an element {"t":"a"})`, `$[*]: unexpected (got an element {"t":"b"})`}},
		{"array length", `[1]`, `[1, 2]`, nil, false, []string{`$[1]: unexpected (got 2)`}},
		{"type change", `{"a": {"b": 1}}`, `{"a": [1]}`, nil, false, []string{`$.a: expected an object, got [1]`}},
		{"not JSON", `{}`, `<html>`, nil, false, []string{`the body is not JSON (invalid character '<' looking for beginning of value): "<html>"`}},
		{"empty body", `{}`, ``, nil, false, []string{`the body is not JSON (EOF): ""`}},
		{"odd keys", `{"a b": 1}`, `{"a b": 2}`, nil, false, []string{`$["a b"]: expected 1, got 2`}},
		{"null and false differ", `{"a": null}`, `{"a": false}`, nil, false, []string{`$.a: expected null, got false`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CompareJSON([]byte(tc.want), []byte(tc.got), tc.ignore, tc.unordered)
			if diff := cmp.Diff(tc.diff, got); diff != "" {
				t.Errorf("diff (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompareJSONCapsTheDiff(t *testing.T) {
	t.Parallel()
	var want, got []int
	for i := range 100 {
		want, got = append(want, i), append(got, i+1)
	}
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	d := CompareJSON(w, g, nil, false)
	if len(d) != maxDiffLines+1 || d[maxDiffLines] != "... and 60 more differences" {
		t.Errorf("diff of %d lines ending %q", len(d), d[len(d)-1])
	}
}

func TestJudge(t *testing.T) {
	t.Parallel()
	s, err := Parse([]byte(yamlSet))
	if err != nil {
		t.Fatal(err)
	}
	create, health := s.Scenarios[0], s.Scenarios[2]
	for _, tc := range []struct {
		name   string
		sc     Scenario
		resp   Response
		status string
		diff   string
	}{
		{"success", create, Response{Status: 201, Body: []byte(`{"id":1,"title":"milk","done":false,"created_at":"now"}`)}, StatusSuccess, ""},
		{"wrong status", create, Response{Status: 500, Body: []byte(`oops`)}, StatusFail, "status: expected 201, got 500"},
		{"wrong body", create, Response{Status: 201, Body: []byte(`{"id":1,"title":"milk","done":true}`)}, StatusMismatch, "$.done: expected false, got true"},
		{"empty body is recorded", create, Response{Status: 201}, StatusMismatch, `the body is not JSON (EOF): ""`},
		{"timeout", create, Response{Timeout: true, Error: "no complete answer within 2s"}, StatusTimeout, ""},
		{"refused", create, Response{Error: "connection refused"}, StatusError, ""},
		{"text", health, Response{Status: 200, Body: []byte("ok\n")}, StatusSuccess, ""},
		{"text differs", health, Response{Status: 200, Body: []byte("OK\n")}, StatusMismatch, `line 1: expected "ok", got "OK"`},
		{"truncated", create, Response{Status: 201, Body: []byte(`{"id"`), Truncated: true}, StatusMismatch, "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := Judge(tc.sc, tc.resp)
			if rec.Status != tc.status || !strings.Contains(rec.Diff, tc.diff) {
				t.Errorf("status %q diff %q; want %q with %q", rec.Status, rec.Diff, tc.status, tc.diff)
			}
			if rec.Got.Body != string(tc.resp.Body) && !tc.resp.Truncated {
				t.Errorf("got.body %q, want the body as received", rec.Got.Body)
			}
		})
	}
	b, _ := json.Marshal(Judge(create, Response{Status: 201}))
	if !strings.Contains(string(b), `"body":""`) {
		t.Errorf("a record of an empty body leaves it out: %s", b)
	}
}

func TestTally(t *testing.T) {
	t.Parallel()
	r := Result{Scenarios: []Record{{Status: StatusSuccess, Points: 1}, {Status: StatusMismatch, Points: 2}, {Status: StatusSuccess, Points: 1}, {Status: StatusTimeout, Points: 0}}}
	r.Tally()
	want := Totals{Total: 4, Success: 2, Mismatch: 1, Timeout: 1}
	if r.Totals != want || r.Points != 2 || r.MaxPoints != 4 || r.Score != 0.5 {
		t.Errorf("totals %+v points %v/%v score %v", r.Totals, r.Points, r.MaxPoints, r.Score)
	}
}

// startRunner runs the runner against a plan, with pipes for the test.
func startRunner(t *testing.T, plan Plan) (*bufio.Scanner, func(), <-chan error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), inR, outW)
		outW.Close()
	}()
	b, _ := json.Marshal(plan)
	go func() { _, _ = inW.Write(append(b, '\n')) }()
	goLine := func() { _, _ = inW.Write([]byte(`{"go":true}` + "\n")) }
	t.Cleanup(func() { inW.Close(); outR.Close() })
	return bufio.NewScanner(outR), goLine, done
}

func nextEvent(t *testing.T, sc *bufio.Scanner) Event {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("the runner wrote no more events: %v", sc.Err())
	}
	var ev Event
	if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
		t.Fatalf("event %q: %v", sc.Text(), err)
	}
	return ev
}

// slowStart is a service that is not ready for its first tries: it
// accepts and drops the first fail connections, as a service that listens
// before it can answer does.
type slowStart struct {
	net.Listener
	fail    int
	dropped atomic.Int32
}

func (l *slowStart) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || int(l.dropped.Load()) >= l.fail {
			return c, err
		}
		l.dropped.Add(1)
		c.Close()
	}
}

// TestRunnerSlowStartIsNotFailure: a service that answers only after
// several probes failed is ready, not failed, while within bound; then the
// requests are made in order and their answers reported, an empty one too.
func TestRunnerSlowStartIsNotFailure(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(b)
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(strings.Repeat("x", 100))) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) })
	srv := &http.Server{Handler: mux}
	slow := &slowStart{Listener: lis, fail: 3}
	go func() { _ = srv.Serve(slow) }()
	t.Cleanup(func() { srv.Close() })

	s, err := Parse([]byte(`{"scenarios": [
		{"name": "echo", "method": "POST", "path": "/echo", "body": {"a": 1}},
		{"name": "empty", "path": "/empty"},
		{"name": "slow", "path": "/slow", "timeout": "200ms"},
		{"name": "big", "path": "/big"},
		{"name": "redirect", "path": "/redirect"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	events, goLine, done := startRunner(t, Plan{Port: port, Ready: Probe{Path: "/health"}, ReadyMS: 30000, Requests: PlanFor(s, 5*time.Second), MaxBody: 10})
	if ev := nextEvent(t, events); ev.Event != EventServicesReady {
		t.Fatalf("first event %+v", ev)
	}
	goLine()
	ev := nextEvent(t, events)
	if ev.Event != EventReady || ev.Tries != 4 || slow.dropped.Load() != 3 {
		t.Fatalf("readiness event %+v after %d dropped connections; want ready at the fourth try", ev, slow.dropped.Load())
	}
	want := []struct {
		status  int
		body    string
		timeout bool
		trunc   bool
	}{{201, `{"a": 1}`, false, false}, {204, ``, false, false}, {0, ``, true, false}, {200, `xxxxxxxxxx`, false, true}, {302, "<a href=\"/elsewhere\">Found</a>.\n\n"[:10], false, true}}
	for i, w := range want {
		ev := nextEvent(t, events)
		r := ev.Response
		if ev.Event != EventResponse || ev.Index != i || r == nil || r.Status != w.status || string(r.Body) != w.body || r.Timeout != w.timeout || r.Truncated != w.trunc {
			t.Errorf("request %d: event %+v response %+v; want status %d body %q timeout %v truncated %v", i, ev, r, w.status, w.body, w.timeout, w.trunc)
		}
	}
	if ev := nextEvent(t, events); ev.Event != EventDone {
		t.Errorf("last event %+v", ev)
	}
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// TestRunnerNeverReady: a service that never answers is reported within
// the bound, with the last error, after several tries with backoff.
func TestRunnerNeverReady(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	events, goLine, done := startRunner(t, Plan{Port: port, Ready: Probe{Path: "/"}, ReadyMS: 1500})
	nextEvent(t, events)
	goLine()
	start := time.Now()
	ev := nextEvent(t, events)
	if ev.Event != EventNotReady || ev.Tries < 3 || !strings.Contains(ev.Error, "connection refused") || !strings.Contains(ev.Error, "within 1.5s") {
		t.Errorf("event %+v; want not_ready after several refused tries", ev)
	}
	if waited := time.Since(start); waited > time.Minute {
		t.Errorf("the runner waited %v", waited)
	}
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestRunnerServicesNotReady(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	events, _, _ := startRunner(t, Plan{Services: []ServicePort{{Name: "db", Port: port}}, ServicesMS: 300})
	ev := nextEvent(t, events)
	if ev.Event != EventServicesFail || !strings.Contains(ev.Error, "service db") {
		t.Errorf("event %+v; want services_failed naming the service", ev)
	}
}
