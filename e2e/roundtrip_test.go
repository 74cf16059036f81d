package e2e

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker/token"
	gd "github.com/gradebroker/gradebroker/graderd"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// receiver is a platform's callback endpoint: it opens every callback
// token as a platform would and records the payloads.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	opener *token.Opener
	mu     sync.Mutex
	got    []map[string]any
	fail   int // answer 500 to this many requests first
}

func newReceiver(t *testing.T, platform string, key *rsa.PrivateKey, brokerPub *rsa.PublicKey) *receiver {
	t.Helper()
	ring, err := token.NewKeyRing(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{t: t, opener: &token.Opener{Keys: ring,
		Signers: token.StaticSigners{"gradebroker": brokerPub}, Replay: token.NewMemoryReplayGuard(), Audience: platform}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var env struct{ Token string }
	if err := json.Unmarshal(body, &env); err != nil {
		http.Error(w, "bad body", 400)
		return
	}
	_, payload, err := r.opener.OpenCallback(req.Context(), env.Token)
	if err != nil {
		r.t.Errorf("callback token refused: %v", err)
		http.Error(w, err.Error(), 400)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		http.Error(w, "platform busy", 500)
		return
	}
	var p map[string]any
	json.Unmarshal(payload, &p)
	r.got = append(r.got, p)
}

func (r *receiver) callbacks() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

// buildSampleGrader builds examples/samplegrader into a temp dir.
func buildSampleGrader(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "samplegrader")
	cmd := exec.Command("go", "build", "-o", bin, "./examples/samplegrader")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build samplegrader: %v\n%s", err, out)
	}
	return bin
}

// startGraderdInProcess runs graderd in-process as server name with the given
// grader command.
// readOnly are paths shown to its sandboxed runs.
func startGraderdInProcess(t *testing.T, b *broker, name string, command []string, readOnly ...string) {
	t.Helper()
	startGraderdWith(t, b, name, gd.ExecutorSpec{Type: gd.ExecutorExec, Command: command, ReadOnlyPaths: readOnly})
}

// startGraderdWith runs graderd in-process as server name with exec as its
// default executor.
func startGraderdWith(t *testing.T, b *broker, name string, exec gd.ExecutorSpec) {
	t.Helper()
	cfg := gd.DefaultConfig()
	cfg.Broker = b.GRPCAddr()
	cfg.CAFile = filepath.Join(b.dir, "ca.crt")
	cfg.CertFile = filepath.Join(b.dir, "clients", name+".crt")
	cfg.KeyFile = filepath.Join(b.dir, "clients", name+".key")
	cfg.SpoolDir = filepath.Join(t.TempDir(), "spool")
	cfg.WorkRoot = t.TempDir()
	cfg.Slots = 2
	cfg.ReconnectMax = time.Second
	cfg.DefaultExecutor = exec
	d, err := gd.New(cfg, nil)
	if err != nil {
		t.Fatalf("graderd.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("graderd: %v", err)
		}
	})
}

// TestRoundTrip grades a real Python solution with the sample grader:
// sendjob through the REST gateway with a real token, graderd over mTLS,
// getjob's long poll, and the encrypted callback, delivered once although
// the platform first answers 500.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("python3 is required by the sample grader: %v", err)
	}
	grader := buildSampleGrader(t)
	e := setupPlatform(t)
	rcv := newReceiver(t, "demo", e.demoKey, e.brokerPub)
	rcv.fail = 1
	e.b.mustAdmin(t, "platform", "update", "demo", "--return-url", rcv.srv.URL+"/cb")
	e.b.mustAdmin(t, "server", "add", "grader1", "--cert", filepath.Join(e.b.dir, "clients", "grader1.crt"), "--type", "py")
	startGraderdInProcess(t, e.b, "grader1", []string{grader})

	solution, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "solutions", "sum_wrong.py"))
	if err != nil {
		t.Fatal(err)
	}
	code, sent := e.post(t, "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("sendjob", map[string]any{
		"jobname": "sum", "tags": "python3", "idempotency_key": "student-42/sum",
		"jobdata": map[string]any{"task": "sum", "lang": "python3", "solution": string(solution)}})))
	if code != 200 {
		t.Fatalf("sendjob: %d %v", code, sent)
	}
	id := jsonID(t, sent["job_id"])
	code, got := e.post(t, "/v1/jobs:get", e.seal(t, "demo", e.demoKey, e.claims("getjob", map[string]any{"jobid": id, "wait_seconds": 30})))
	if code != 200 {
		t.Fatalf("getjob: %d %v", code, got)
	}
	job := got["job"].(map[string]any)
	if job["state"] != "JOB_STATE_DONE" || job["server"] != "grader1" {
		t.Fatalf("job after getjob wait = %v", job)
	}
	var result struct {
		Score, Passed, Total int
	}
	resultJSON, _ := job["result"].(string)
	if err := json.Unmarshal([]byte(resultJSON), &result); err != nil {
		t.Fatalf("result %v: %v", job["result"], err)
	}
	if result.Score != 40 || result.Total == 0 {
		t.Errorf("sum_wrong.py scored %+v; the sample grader gives it 40", result)
	}

	// The outbox has the callback acknowledged and nothing more to send:
	// the platform got it once.
	testutil.Eventually(t, "the callback acknowledged", func() bool {
		st := e.b.Delivery().Stats()
		return st.Delivered == 1 && st.InFlight == 0
	})
	cbs := rcv.callbacks()
	if len(cbs) != 1 {
		t.Fatalf("platform acknowledged %d callbacks, want exactly 1: %v", len(cbs), cbs)
	}
	cb := cbs[0]
	if cb["status"] != "done" || cb["idempotency_key"] != "student-42/sum" || cb["server"] != "grader1" ||
		cb["aud"] != "demo" || cb["delivery_id"] == nil {
		t.Errorf("callback payload = %v", cb)
	}
	if r, _ := cb["result"].(map[string]any); r["score"] != float64(40) {
		t.Errorf("callback result = %v", cb["result"])
	}
	// The first try failed: the delivery shows two tries.
	out := e.b.mustAdmin(t, "delivery", "list", "--job", strings.TrimSpace(jsonIDString(id)))
	if !strings.Contains(out, "delivered") {
		t.Errorf("delivery list = %s, want it delivered", out)
	}
}
