package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/broker/token/tokentest"
	gd "github.com/gradebroker/gradebroker/graderd"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// standInTaskgrader is taskgrader as far as graderd can tell: it reads the
// job on stdin, reads its task's defaultParams.json under the taskPath it
// was given, and prints a report of what it got.
const standInTaskgrader = `#!/usr/bin/python3
import json, os, sys
job = json.load(sys.stdin)
params = json.load(open(os.path.join(job["taskPath"], "defaultParams.json")))
print(json.dumps({"executions": [{"name": "exec0", "testsReports": [{"checker": {"stdout": {"data": "100"}}}]}],
                  "rootPath": job["rootPath"], "taskPath": job["taskPath"], "solution": job["extraParams"]["solutionContent"],
                  "task": params["name"]}))
`

// gqPlatformReceiver is a graderqueue platform's return URL: the form field
// sToken, opened with the platform's key.
type gqPlatformReceiver struct {
	srv    *httptest.Server
	opener *token.Opener
	mu     sync.Mutex
	got    []map[string]json.RawMessage
}

// TestGraderqueueDropIn moves a France-ioi platform and its taskgrader to
// gradebroker: the platform keeps its legacy tokens (no kid, iat, exp or
// jti; a date) and its form POSTs to api.php, changing only the URL; the
// grading server runs graderd with its taskgrader in taskgrader mode. The
// job is graded by the stand-in taskgrader with the task from root_path,
// getjob answers as api.php did, and the result comes back as
// sendresults.php sent it: sToken holding sTaskName and taskgrader's report.
func TestGraderqueueDropIn(t *testing.T) {
	t.Parallel()
	e := setupPlatform(t)
	tasks := t.TempDir()
	if err := os.Chmod(tasks, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tasks, "sum"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tasks, "sum", "defaultParams.json"), []byte(`{"name":"sum"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	taskgrader := filepath.Join(t.TempDir(), "taskgrader.py")
	if err := os.WriteFile(taskgrader, []byte(standInTaskgrader), 0o755); err != nil {
		t.Fatal(err)
	}

	ring, err := token.NewKeyRing(e.otherKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	rcv := &gqPlatformReceiver{opener: &token.Opener{Keys: ring, Signers: token.StaticSigners{"gradebroker": e.brokerPub},
		Replay: token.NewMemoryReplayGuard(), Audience: "fioi"}}
	rcv.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, payload, err := rcv.opener.OpenCallback(r.Context(), r.PostFormValue("sToken"))
		if err != nil {
			t.Errorf("the platform refused a callback: %v", err)
			http.Error(w, err.Error(), 400)
			return
		}
		var p map[string]json.RawMessage
		_ = json.Unmarshal(payload, &p)
		rcv.mu.Lock()
		rcv.got = append(rcv.got, p)
		rcv.mu.Unlock()
		_, _ = io.WriteString(w, `{"bSuccess":true}`)
	}))
	t.Cleanup(rcv.srv.Close)
	e.b.mustAdmin(t, "platform", "add", "fioi", "--protocol", "graderqueue", "--key", filepath.Join(e.b.dir, "other-token.pub"),
		"--return-url", rcv.srv.URL+"/returnUrl.php", "--legacy-tokens")
	e.b.mustAdmin(t, "server", "add", "grader1", "--cert", filepath.Join(e.b.dir, "clients", "grader1.crt"), "--type", "py")
	startGraderdWith(t, e.b, "grader1", gd.ExecutorSpec{Type: gd.ExecutorExec, Command: []string{taskgrader},
		Taskgrader: &gd.TaskgraderSettings{RootPath: tasks}})

	// The platform's request, as TokenGenerator::encodeJWES makes it.
	post := func(claims map[string]any) map[string]any {
		t.Helper()
		claims["date"] = time.Now().Format(token.LegacyDateLayout)
		p, _ := json.Marshal(claims)
		jws := tokentest.JWS(`{"alg":"RS512"}`, p, tokentest.RS512(e.otherKey))
		tok := tokentest.JWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","zip":"DEF"}`, []byte(jws), e.brokerPub)
		resp, err := e.http.PostForm(e.url+"/api.php", url.Values{"sToken": {tok}, "sPlatform": {"fioi"}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out["errorcode"] != float64(0) {
			t.Fatalf("api.php: %v %v", out, err)
		}
		return out
	}
	jobdata := `{"taskPath":"$ROOT_PATH/sum","extraParams":{"solutionContent":"print(42)"}}`
	sent := post(map[string]any{"request": "sendjob", "priority": 1, "tags": "python3", "taskrevision": "17",
		"jobname": "501", "jobdata": jobdata, "jobusertaskid": "3-7-1"})
	jobid := sent["jobid"]

	report := `{"executions": [{"name": "exec0", "testsReports": [{"checker": {"stdout": {"data": "100"}}}]}], "rootPath": "` +
		tasks + `", "taskPath": "` + tasks + `/sum", "solution": "print(42)", "task": "sum"}`
	testutil.Eventually(t, "the result callback", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.got) > 0
	})
	rcv.mu.Lock()
	cb := rcv.got[0]
	rcv.mu.Unlock()
	// The token's JSON is compact; the report's members and numbers are
	// taskgrader's.
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(report)); err != nil {
		t.Fatal(err)
	}
	if string(cb["sTaskName"]) != `"501"` || string(cb["sResultData"]) != compact.String() {
		t.Errorf("callback sTaskName %s sResultData %s\nwant \"501\" and %s", cb["sTaskName"], cb["sResultData"], compact.String())
	}
	got := post(map[string]any{"request": "getjob", "jobid": jobid})
	data, _ := got["data"].(map[string]any)
	var rd struct {
		Errorcode int
		Errormsg  string
		Jobdata   json.RawMessage
	}
	if got["origin"] != "done" || json.Unmarshal([]byte(data["resultdata"].(string)), &rd) != nil || rd.Errorcode != 0 ||
		!strings.Contains(rd.Errormsg, "Taskgrader executed successfully") || string(rd.Jobdata) != report {
		t.Errorf("getjob: %v", got)
	}
}
