package graderqueue_test

import (
	"context"
	"encoding/json"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	gq "github.com/gradebroker/gradebroker/broker/graderqueue"
	"github.com/gradebroker/gradebroker/broker/token"
)

// France-ioi's platform sends sendjob like this (its submission code): the
// jobdata a JSON string, priority an integer, tags a comma list, a task
// revision and a jobusertaskid of task, user and platform.
func phpSendjob(jobname, jobdata string) map[string]any {
	return map[string]any{"request": "sendjob", "priority": 1, "taskrevision": "1234", "tags": "python3",
		"jobname": jobname, "jobdata": jobdata, "jobusertaskid": "17-42-1"}
}

func TestAPITest(t *testing.T) {
	t.Parallel()
	e := setup(t)
	a := e.form(t, map[string]string{"sToken": e.modernToken(t, map[string]any{"request": "test"}), "sPlatform": "modern"}).ok(t, "a full token")
	if a.Errormsg != "Connected as platform modern." {
		t.Errorf("test: %s", a.raw)
	}
	// sPlatform may be left out when the token names its platform.
	e.form(t, map[string]string{"sToken": e.modernToken(t, map[string]any{"request": "test"})}).ok(t, "a full token without sPlatform")
	e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", map[string]any{"request": "test"}), "sPlatform": "old"}).ok(t, "a legacy token")

	// Every refusal of a token is errorcode 2, as api.php answers "Invalid
	// token" (3 is its web interface's), and HTTP 200.
	for name, tc := range map[string]struct {
		fields map[string]string
		words  string
	}{
		"legacy token where not allowed": {map[string]string{"sToken": e.legacyToken(t, "modern", map[string]any{"request": "test"}), "sPlatform": "modern"},
			"not registered for legacy tokens"},
		"legacy token without sPlatform": {map[string]string{"sToken": e.legacyToken(t, "old", map[string]any{"request": "test"})},
			"names no platform"},
		"legacy token of another key": {map[string]string{"sToken": e.legacyToken(t, "stranger", map[string]any{"request": "test"}), "sPlatform": "old"},
			"does not verify"},
		"sPlatform not the kid": {map[string]string{"sToken": e.modernToken(t, map[string]any{"request": "test"}), "sPlatform": "old"},
			"must be the same"},
		"unknown platform": {map[string]string{"sToken": e.legacyToken(t, "old", map[string]any{"request": "test"}), "sPlatform": "nobody"},
			"no platform is registered"},
		"not a token":   {map[string]string{"sToken": "abc", "sPlatform": "old"}, "not a compact JWE"},
		"no sToken":     {map[string]string{"sPlatform": "old"}, "No valid authentication provided"},
		"a web request": {map[string]string{"sToken": e.modernToken(t, map[string]any{"request": "wakeup"})}, `this endpoint takes one of "test"`},
	} {
		e.form(t, tc.fields).refused(t, name, gq.CodeFatal, tc.words)
	}
	resp, err := e.client.Get(e.url)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(raw), `"errorcode":2`) {
		t.Errorf("GET: HTTP %d %s, want 200 and errorcode 2", resp.StatusCode, raw)
	}
	e.post(t, "application/json", strings.NewReader(`{"token":"x"}`)).refused(t, "a JSON body", gq.CodeFatal, "takes a form POST")
	e.form(t, map[string]string{"sToken": "x", "sPlatform": "old", "sPlatform ": "y"}).refused(t, "junk", gq.CodeFatal, "")
}

func TestAPISendJob(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	const jobdata = `{"taskPath":"$ROOT_PATH/t1","extraParams":{"solutionContent":"print(1)","big":12345678901234567890}}`
	a := e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", phpSendjob("501", jobdata)), "sPlatform": "old"}).ok(t, "sendjob")
	id := a.jobID(t)
	// jobid is a JSON integer, as api.php writes it.
	if want := `"jobid":` + strconv.FormatInt(id, 10) + `}`; !strings.HasSuffix(strings.TrimSpace(a.raw), want) || a.Errormsg != "Queued as job ID #"+strconv.FormatInt(id, 10)+"." {
		t.Errorf("sendjob answered %s, want errormsg \"Queued as job ID #%d.\" and %s", a.raw, id, want)
	}
	job, err := e.b.DB().GetJob(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if string(job.JobData) != jobdata || job.Name != "501" || strings.Join(job.Tags, ",") != "python3" || job.Priority != 1 ||
		!strings.HasPrefix(job.IdempotencyKey, "17-42-1#") {
		t.Errorf("stored %q named %q, tags %v, priority %d, key %q", job.JobData, job.Name, job.Tags, job.Priority, job.IdempotencyKey)
	}

	// The same submission again (a retry) is the same job; the user's next
	// submission, same jobusertaskid, is a job of its own.
	again := e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", phpSendjob("501", jobdata)), "sPlatform": "old"}).ok(t, "sendjob again")
	if again.jobID(t) != id || !again.Duplicate {
		t.Errorf("the same submission again: %s, want job %d, duplicate", again.raw, id)
	}
	next := e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", phpSendjob("502", `{"taskPath":"t1","v":2}`)), "sPlatform": "old"}).ok(t, "the next submission")
	if next.jobID(t) == id || next.Duplicate {
		t.Errorf("the next submission of the same user and task: %s, want a new job", next.raw)
	}
	// A modern token, jobdata as an object, and api.php's default name.
	m := e.form(t, map[string]string{"sToken": e.modernToken(t, map[string]any{"request": "sendjob", "tags": "python3", "jobdata": map[string]any{"x": 1}})}).ok(t, "a modern sendjob")
	if job, err := e.b.DB().GetJob(ctx, m.jobID(t)); err != nil || job.Name != "api-sendjob" || string(job.JobData) != `{"x":1}` {
		t.Errorf("modern sendjob stored %q as %q (%v)", job.JobData, job.Name, err)
	}

	for name, tc := range map[string]struct {
		claims map[string]any
		words  string
	}{
		"unknown tag":          {map[string]any{"request": "sendjob", "jobdata": "{}", "tags": "cobol"}, "cobol"},
		"no type for the tags": {map[string]any{"request": "sendjob", "jobdata": "{}", "tags": "python3,gpu"}, "gpu"},
		"no jobdata":           {map[string]any{"request": "sendjob", "tags": "python3"}, "jobdata is required"},
		"jobdata not JSON":     {map[string]any{"request": "sendjob", "jobdata": "{not json", "tags": "python3"}, "does not hold valid JSON"},
	} {
		e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", tc.claims), "sPlatform": "old"}).refused(t, name, gq.CodeFatal, tc.words)
	}
	if st := e.b.Dispatcher().Stats(); st.Queued+st.Running != 3 {
		t.Errorf("%d jobs queued, want the 3 accepted", st.Queued+st.Running)
	}
}

func TestAPISendSolution(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	stored := func(a answer) broker.Job {
		t.Helper()
		job, err := e.b.DB().GetJob(ctx, a.jobID(t))
		if err != nil {
			t.Fatal(err)
		}
		return job
	}
	sol := map[string]any{"request": "sendsolution", "tags": "python3", "taskpath": "$ROOT_PATH/t1", "memlimit": "65536",
		"timelimit": 1000, "lang": "py"}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range sol {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	params := `{"getFiles":[],"memoryLimitKb":65536,"stderrTruncateKb":-1,"stdoutTruncateKb":-1,"timeLimitMs":1000,"useCache":true}`
	// api.php's jobdata.
	want := func(name, solution string) string {
		return `{"extraParams":{"defaultSolutionCompParams":` + params + `,"defaultSolutionExecParams":` + params + `,` +
			solution + `,"solutionDependencies":"@defaultDependencies-py","solutionExecId":"exec-` + name + `","solutionFilename":"` + name + `",` +
			`"solutionId":"sol-` + name + `","solutionLanguage":"py"},"taskPath":"$ROOT_PATH/t1"}`
	}
	same := func(got []byte, want string) bool {
		var g, w any
		return json.Unmarshal(got, &g) == nil && json.Unmarshal([]byte(want), &w) == nil && reflect.DeepEqual(g, w)
	}

	// solcontent in the token, as api.php's interface sends it.
	a := e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", with(map[string]any{"solcontent": "print(1)", "solpath": ""})), "sPlatform": "old"}).ok(t, "solcontent")
	if job := stored(a); !same(job.JobData, want("main.py", `"solutionContent":"print(1)"`)) || job.Name != "api-main.py" {
		t.Errorf("solcontent: stored %s named %q\nwant %s", job.JobData, job.Name, want("main.py", `"solutionContent":"print(1)"`))
	}
	// solpath, with a job name.
	a = e.form(t, map[string]string{"sToken": e.modernToken(t, with(map[string]any{"solpath": "/srv/sols/s.py", "jobname": "n"}))}).ok(t, "solpath")
	if job := stored(a); !same(job.JobData, want("s.py", `"solutionPath":"/srv/sols/s.py"`)) || job.Name != "n" {
		t.Errorf("solpath: stored %s named %q", job.JobData, job.Name)
	}
	// solfile uploaded beside a legacy token.
	a = e.multipartForm(t, map[string]string{"sToken": e.legacyToken(t, "old", sol), "sPlatform": "old"}, "solfile", "sol.py", []byte("print(2)\n")).ok(t, "a multipart solfile")
	if job := stored(a); !same(job.JobData, want("sol.py", `"solutionContent":"print(2)\n"`)) || job.Name != "api-sol.py" {
		t.Errorf("solfile: stored %s named %q", job.JobData, job.Name)
	}
	// A multipart form without a file reads as the urlencoded one.
	e.multipartForm(t, map[string]string{"sToken": e.legacyToken(t, "old", with(map[string]any{"solcontent": "x"})), "sPlatform": "old"}, "", "", nil).ok(t, "multipart without a file")

	// The upload is outside the token's signature: refused with a full
	// token, from a platform with legacy tokens too.
	e.multipartForm(t, map[string]string{"sToken": e.modernToken(t, sol), "sPlatform": "modern"}, "solfile", "sol.py", []byte("print(3)")).
		refused(t, "a solfile beside a full token", gq.CodeFatal, "outside its signature")
	for name, tc := range map[string]struct {
		claims map[string]any
		words  string
	}{
		"no memlimit":  {map[string]any{"request": "sendsolution", "taskpath": "t", "timelimit": 1, "lang": "c", "solcontent": "x"}, "memlimit missing"},
		"no lang":      {map[string]any{"request": "sendsolution", "taskpath": "t", "timelimit": 1, "memlimit": 4, "solcontent": "x"}, "lang missing"},
		"no solution":  {with(map[string]any{"solcontent": "", "solpath": ""}), "solution missing"},
		"bad memlimit": {with(map[string]any{"memlimit": "lots", "solcontent": "x"}), `"memlimit": "lots" is not an integer`},
	} {
		e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", tc.claims), "sPlatform": "old"}).refused(t, name, gq.CodeFatal, tc.words)
	}
}

func TestAPIGetJob(t *testing.T) {
	t.Parallel()
	e := setup(t)
	getjob := func(id any) answer {
		t.Helper()
		return e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", map[string]any{"request": "getjob", "jobid": id}), "sPlatform": "old"})
	}
	send := func(jobname string) int64 {
		t.Helper()
		return e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", phpSendjob(jobname, `{"n":"`+jobname+`"}`)), "sPlatform": "old"}).ok(t, "sendjob").jobID(t)
	}
	id := send("a")
	a := getjob(strconv.FormatInt(id, 10)).ok(t, "getjob of a queued job")
	if a.Origin != "queue" || a.Errormsg != "Success" || a.Data["status"] != "queued" || a.Data["id"] != strconv.FormatInt(id, 10) ||
		a.Data["jobdata"] != `{"n":"a"}` || a.Data["name"] != "a" || a.Data["tags"] != "python3" || a.Data["timeout_time"] != nil {
		t.Errorf("getjob of a queued job: %s", a.raw)
	}

	s := e.connect(t)
	as := s.assign()
	a = getjob(id).ok(t, "getjob of a running job")
	if a.Origin != "queue" || a.Data["status"] != "sent" || a.Data["sent_to"] != "s1" || a.Data["timeout_time"] == nil {
		t.Errorf("getjob of a running job: %s", a.raw)
	}
	result := `{"errorcode":0,"errormsg":"Taskgrader executed successfully.\n","jobdata":{"executions":[]}}`
	s.finish(as, broker.OutcomeOK, result, "")
	e.waitState(t, id, broker.JobDone)
	a = getjob(id).ok(t, "getjob of a done job")
	if a.Origin != "done" || a.Data["resultdata"] != result || a.Data["jobid"] != strconv.FormatInt(id, 10) || a.Data["state"] != "done" ||
		a.Data["grading_end_time"] == nil || a.Data["nb_fails"] != "0" {
		t.Errorf("getjob of a done job: %s", a.raw)
	}

	// A job that failed without a result of its grader's.
	failed := send("b")
	as = s.assign()
	s.finish(as, broker.OutcomeFatal, "", "the grader crashed")
	e.waitState(t, failed, broker.JobFailed)
	a = getjob(failed).ok(t, "getjob of a failed job")
	var rd struct {
		Errorcode int
		Errormsg  string
	}
	if err := json.Unmarshal([]byte(a.Data["resultdata"].(string)), &rd); err != nil || a.Origin != "done" || rd.Errorcode != 1 ||
		!strings.Contains(rd.Errormsg, "the grader crashed") || a.Data["state"] != "failed" {
		t.Errorf("getjob of a failed job: %s", a.raw)
	}

	// A cancelled job.
	cancelled := send("c")
	if err := e.b.Dispatcher().CancelJob(context.Background(), cancelled, "test"); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, cancelled, broker.JobCancelled)
	a = getjob(cancelled).ok(t, "getjob of a cancelled job")
	if a.Origin != "done" || a.Data["state"] != "cancelled" || !strings.Contains(a.Data["resultdata"].(string), `"errormsg":"cancelled: `) {
		t.Errorf("getjob of a cancelled job: %s", a.raw)
	}

	// Another platform's job is not found; a jobid must be an integer.
	other := e.form(t, map[string]string{"sToken": e.modernToken(t, map[string]any{"request": "getjob", "jobid": id})})
	other.refused(t, "another platform's job", gq.CodeFatal, "not found")
	getjob("12abc").refused(t, "a jobid that is not an integer", gq.CodeFatal, `payload member "jobid": "12abc" is not an integer`)
	getjob(nil).refused(t, "no jobid", gq.CodeFatal, "jobid is required")
}

// TestAPILegacyReplay: a legacy token is accepted once, also across a
// restart of the broker, and refused when stale; a request refused for
// that stores nothing.
func TestAPILegacyReplay(t *testing.T) {
	t.Parallel()
	e := setup(t)
	tok := e.legacyToken(t, "old", phpSendjob("r", `{}`))
	e.form(t, map[string]string{"sToken": tok, "sPlatform": "old"}).ok(t, "first use")
	e.form(t, map[string]string{"sToken": tok, "sPlatform": "old"}).refused(t, "the same token again", gq.CodeFatal, "replayed")
	getjob := e.legacyToken(t, "old", map[string]any{"request": "getjob", "jobid": 1})
	e.form(t, map[string]string{"sToken": getjob, "sPlatform": "old"}).ok(t, "getjob")
	e.restart(t)
	e.form(t, map[string]string{"sToken": tok, "sPlatform": "old"}).refused(t, "the same sendjob after a restart", gq.CodeFatal, "replayed")
	e.form(t, map[string]string{"sToken": getjob, "sPlatform": "old"}).refused(t, "the same getjob after a restart", gq.CodeFatal, "replayed")
	old := time.Now().AddDate(0, 0, -3).Format(token.LegacyDateLayout)
	e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", map[string]any{"request": "sendjob", "jobdata": "{}", "tags": "python3", "date": old}), "sPlatform": "old"}).
		refused(t, "a token of three days ago", gq.CodeFatal, "more than a day before")
	ahead := time.Now().AddDate(0, 0, 3).Format(token.LegacyDateLayout)
	e.form(t, map[string]string{"sToken": e.legacyToken(t, "old", map[string]any{"request": "test", "date": ahead}), "sPlatform": "old"}).
		refused(t, "a token of three days ahead", gq.CodeFatal, "more than a day after")
	if st := e.b.Dispatcher().Stats(); st.Queued+st.Running != 1 {
		t.Errorf("%d jobs queued, want only the first", st.Queued+st.Running)
	}
}
