package e2e

import (
	"bytes"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// debianPython is the interpreter Debian's python3-jwcrypto and
// python3-requests are installed for, whatever python3 is first in PATH
// (a pyenv shim, say).
const debianPython = "/usr/bin/python3"

// needPythonPackages fails the test unless Debian's python3 has jwcrypto
// and requests, naming the packages to install.
func needPythonPackages(t *testing.T) {
	t.Helper()
	out, err := exec.Command(debianPython, "-c", "import jwcrypto, requests").CombinedOutput()
	if err != nil {
		t.Fatalf("the Python platform example needs %s with Debian's python3-jwcrypto and python3-requests (apt-get install python3-jwcrypto python3-requests): %v\n%s",
			debianPython, err, out)
	}
}

// TestPythonPlatformExample runs examples/platform-python against a real
// broker and graderd grading with the sample grader: the Python client
// makes its tokens with jwcrypto, sends a job through the REST gateway,
// polls getjob, and receives the encrypted callback at its return_url and
// verifies it. Its verify command refuses callbacks that are not the
// broker's, for this platform, fresh.
func TestPythonPlatformExample(t *testing.T) {
	t.Parallel()
	needPythonPackages(t)
	grader := buildSampleGrader(t)
	e := setupPlatform(t)
	listen := freeAddr(t)
	e.b.mustAdmin(t, "platform", "update", "demo", "--return-url", "http://"+listen+"/cb")
	e.b.mustAdmin(t, "server", "add", "grader1", "--cert", filepath.Join(e.b.dir, "clients", "grader1.crt"), "--type", "py")
	startGraderdInProcess(t, e.b, "grader1", []string{grader})
	solution, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "solutions", "sum_wrong.py"))
	if err != nil {
		t.Fatal(err)
	}
	jobdata, _ := json.Marshal(map[string]string{"task": "sum", "lang": "python3", "solution": string(solution)})
	script := filepath.Join(repoRoot(t), "examples", "platform-python", "gradebroker_platform.py")
	common := []string{script, "--url", e.url, "--ca", filepath.Join(e.b.dir, "ca.crt"), "--platform", "demo",
		"--key", filepath.Join(e.b.dir, "demo-token.key")}

	var stdout, stderr bytes.Buffer
	cmd := exec.Command(debianPython, append(common, "run", "--listen", listen, "--tags", "python3", "--jobname", "sum",
		"--idempotency-key", "student-7/sum", "--jobdata", string(jobdata), "--timeout", "60")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the Python example: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var out struct {
		JobID    int64 `json:"job_id"`
		Job      map[string]any
		Callback map[string]any
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("the example printed %q: %v", stdout.String(), err)
	}
	if out.Job["state"] != "JOB_STATE_DONE" || out.Job["server"] != "grader1" {
		t.Errorf("getjob said %v", out.Job)
	}
	result, _ := out.Callback["result"].(map[string]any)
	if out.Callback["status"] != "done" || out.Callback["aud"] != "demo" || out.Callback["idempotency_key"] != "student-7/sum" ||
		result["score"] != float64(40) || out.Callback["job_id"] != float64(out.JobID) {
		t.Errorf("the callback the example verified: %v", out.Callback)
	}
	testutil.Eventually(t, "the callback acknowledged", func() bool {
		st := e.b.Delivery().Stats()
		return st.Delivered == 1 && st.InFlight == 0
	})

	// Its verify command: the broker's callback passes once, anything else
	// is refused.
	brokerKey, err := token.LoadPrivateKeyPEM(mustRead(t, filepath.Join(e.b.dir, "broker-token.key")))
	if err != nil {
		t.Fatal(err)
	}
	seal := func(kid string, key *rsa.PrivateKey, payload map[string]any) string {
		b, _ := json.Marshal(payload)
		tok, err := token.Seal(b, kid, key, &e.demoKey.PublicKey, "", false)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	callback := func(payload map[string]any) string { return seal("gradebroker", brokerKey, payload) }
	now := time.Now().Unix()
	good := map[string]any{"job_id": 1, "status": "done", "delivery_id": 9, "iat": now, "exp": now + 300, "jti": token.NewJTI(), "aud": "demo", "iss": "gradebroker"}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for key, val := range good {
			m[key] = val
		}
		m["jti"] = token.NewJTI()
		m[k] = v
		return m
	}
	verify := func(tok string) (string, error) {
		var o, e bytes.Buffer
		c := exec.Command(debianPython, append(common, "verify", "--token", tok)...)
		c.Stdout, c.Stderr = &o, &e
		err := c.Run()
		return o.String() + e.String(), err
	}
	if out, err := verify(callback(good)); err != nil || !strings.Contains(out, `"delivery_id": 9`) {
		t.Errorf("verify of the broker's callback: %v\n%s", err, out)
	}
	for name, tok := range map[string]string{
		"signed by another key":   seal("gradebroker", e.demoKey, good),
		"of another signer":       seal("someone", brokerKey, good),
		"for another platform":    callback(with("aud", "other")),
		"expired":                 callback(with("exp", now-3600)),
		"a request, not a result": callback(with("request", "sendjob")),
		"not a token":             "abc.def",
	} {
		if out, err := verify(tok); err == nil || !strings.Contains(out, "refused") {
			t.Errorf("verify of a callback %s: %v, want it refused\n%s", name, err, out)
		}
	}
}

// needPHP fails the test unless php-cli and Debian's php-phpseclib3 are
// installed, naming the packages.
func needPHP(t *testing.T) {
	t.Helper()
	out, err := exec.Command("php", "-r", `require "/usr/share/php/phpseclib3/autoload.php"; echo class_exists("phpseclib3\\Crypt\\RSA") ? "ok" : "no";`).CombinedOutput()
	if err != nil || string(out) != "ok" {
		t.Fatalf("the PHP platform example needs php-cli and php-phpseclib3 (apt-get install php-cli php-phpseclib3): %v\n%s", err, out)
	}
}

// TestPHPPlatformExample runs examples/platform-php against a real broker
// and graderd: platform demo speaks graderqueue's protocol; client.php
// sends its job to api.php as graderqueue's platforms did, with full
// tokens, and asks getjob until it is done; callback.php, served by PHP's
// own web server as the platform's return URL, decrypts and verifies the
// sToken callback, and refuses forged and replayed ones.
func TestPHPPlatformExample(t *testing.T) {
	t.Parallel()
	needPHP(t)
	grader := buildSampleGrader(t)
	e := setupPlatform(t)
	dir := filepath.Join(repoRoot(t), "examples", "platform-php")
	state := t.TempDir()
	listen := freeAddr(t)
	php := exec.Command("php", "-S", listen, filepath.Join(dir, "callback.php"))
	php.Env = append(os.Environ(), "GB_PLATFORM=demo", "GB_PLATFORM_KEY="+filepath.Join(e.b.dir, "demo-token.key"),
		"GB_BROKER_KEY="+filepath.Join(e.b.dir, "broker-token.pub"), "GB_STATE_DIR="+state)
	var phpLog testutil.SyncBuffer
	php.Stdout, php.Stderr = &phpLog, &phpLog
	if err := php.Start(); err != nil {
		t.Fatalf("php -S: %v", err)
	}
	t.Cleanup(func() {
		_ = php.Process.Kill()
		_ = php.Wait()
		if t.Failed() {
			t.Logf("php -S:\n%s", phpLog.String())
		}
	})
	hc := &http.Client{Timeout: 10 * time.Second}
	testutil.Eventually(t, "php -S to listen", func() bool {
		resp, err := hc.Get("http://" + listen + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	e.b.mustAdmin(t, "platform", "update", "demo", "--protocol", "graderqueue", "--return-url", "http://"+listen+"/callback.php")
	e.b.mustAdmin(t, "server", "add", "grader1", "--cert", filepath.Join(e.b.dir, "clients", "grader1.crt"), "--type", "py")
	startGraderdInProcess(t, e.b, "grader1", []string{grader})
	solution, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "solutions", "sum_wrong.py"))
	if err != nil {
		t.Fatal(err)
	}
	jobdata, _ := json.Marshal(map[string]string{"task": "sum", "lang": "python3", "solution": string(solution)})

	var stdout, stderr bytes.Buffer
	cmd := exec.Command("php", filepath.Join(dir, "client.php"), "--url", e.url, "--ca", filepath.Join(e.b.dir, "ca.crt"),
		"--platform", "demo", "--key", filepath.Join(e.b.dir, "demo-token.key"), "--broker-key", filepath.Join(e.b.dir, "broker-token.pub"),
		"--jobdata", string(jobdata), "--tags", "python3", "--jobname", "sum", "--callbacks", filepath.Join(state, "callbacks.jsonl"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("client.php: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var out struct {
		JobID  int64 `json:"jobid"`
		GetJob struct {
			Origin string
			Data   map[string]any
		}
		Callback map[string]any
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("client.php printed %q: %v", stdout.String(), err)
	}
	var resultdata struct{ Score int }
	if rd, _ := out.GetJob.Data["resultdata"].(string); json.Unmarshal([]byte(rd), &resultdata) != nil || out.GetJob.Origin != "done" || resultdata.Score != 40 {
		t.Errorf("getjob answered %+v", out.GetJob)
	}
	result, _ := out.Callback["sResultData"].(map[string]any)
	if out.Callback["sTaskName"] != "sum" || result["score"] != float64(40) || out.Callback["status"] != "done" ||
		out.Callback["date"] != time.Now().Format("02-01-2006") || out.Callback["job_id"] != float64(out.JobID) {
		t.Errorf("the callback callback.php verified: %v", out.Callback)
	}
	testutil.Eventually(t, "the callback acknowledged", func() bool {
		st := e.b.Delivery().Stats()
		return st.Delivered == 1 && st.InFlight == 0
	})

	// callback.php refuses what is not the broker's, once.
	brokerKey, err := token.LoadPrivateKeyPEM(mustRead(t, filepath.Join(e.b.dir, "broker-token.key")))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	seal := func(kid string, key *rsa.PrivateKey, jti string) string {
		b, _ := json.Marshal(map[string]any{"sTaskName": "x", "sResultData": nil, "job_id": 99, "delivery_id": 99,
			"iat": now, "exp": now + 300, "jti": jti, "aud": "demo", "iss": "gradebroker"})
		tok, err := token.Seal(b, kid, key, &e.demoKey.PublicKey, "", true)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	post := func(tok string) (int, string) {
		resp, err := hc.PostForm("http://"+listen+"/callback.php", url.Values{"sToken": {tok}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	good := seal("gradebroker", brokerKey, token.NewJTI())
	if code, body := post(good); code != 200 || !strings.Contains(body, `"bSuccess":true`) {
		t.Errorf("a callback of the broker's: %d %s", code, body)
	}
	for name, tok := range map[string]string{
		"replayed":              good,
		"signed by another key": seal("gradebroker", e.demoKey, token.NewJTI()),
		"of another signer":     seal("someone", brokerKey, token.NewJTI()),
		"not a token":           "a.b.c.d.e",
	} {
		if code, body := post(tok); code != 400 || !strings.Contains(body, `"bSuccess":false`) {
			t.Errorf("a callback %s: %d %s, want 400 and bSuccess false", name, code, body)
		}
	}
}
