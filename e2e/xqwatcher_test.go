//go:build xqwatcher

package e2e

// TestRealXQueueWatcher runs the real xqueue-watcher (openedx/xqueue-watcher,
// unchanged) against a whole broker. Its code is not ours to commit and
// PyPI is out of reach where CI runs, so this test runs by hand, with the
// build tag xqwatcher and a copy of the watcher's source:
//
//	git clone https://github.com/openedx/xqueue-watcher /tmp/xqueue-watcher
//	   (or: git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/xqueue-watcher)
//	apt-get install python3 python3-requests
//	XQWATCHER_DIR=/tmp/xqueue-watcher go test -tags xqwatcher -run TestRealXQueueWatcher -v ./e2e/
//
// It needs nothing else: the watcher imports OpenTelemetry at start, which
// Debian does not package, so testdata/xqwatcher/stub holds a no-op
// stand-in put on PYTHONPATH; testdata/xqwatcher/gbgrader.py is the
// handler, xqueue-watcher's own Grader with grade() filled in. The watcher
// trusts the broker's CA through REQUESTS_CA_BUNDLE, as an operator would
// for a private CA. Without XQWATCHER_DIR, python3 or requests the test
// fails saying which is missing.
//
// Verified on 2026-12-02 with openedx/xqueue-watcher cb65c61, Debian's
// python3 3.11 and python3-requests: see the report of issue 14.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradebroker/gradebroker/broker/xqueue/xqueuetest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

func TestRealXQueueWatcher(t *testing.T) {
	src := os.Getenv("XQWATCHER_DIR")
	if src == "" {
		t.Fatal("XQWATCHER_DIR is not set: point it at a copy of openedx/xqueue-watcher's source (see this file's comment)")
	}
	if _, err := os.Stat(filepath.Join(src, "xqueue_watcher", "client.py")); err != nil {
		t.Fatalf("XQWATCHER_DIR=%s holds no xqueue_watcher/client.py: %v", src, err)
	}
	if out, err := exec.Command("python3", "-c", "import requests").CombinedOutput(); err != nil {
		t.Fatalf("python3 with requests is required (apt-get install python3 python3-requests): %v\n%s", err, out)
	}
	fixtures, err := filepath.Abs(filepath.Join("testdata", "xqwatcher"))
	if err != nil {
		t.Fatal(err)
	}

	dir := devPKI(t)
	dbPath := filepath.Join(t.TempDir(), "gb.db")
	httpAddr := freeAddr(t)
	withAddr := func(c *brokerdConfig) { c.Database, c.HTTPAddr = dbPath, httpAddr }
	b := startBroker(t, dir, withAddr)
	bootstrap(t, dir, b.db)
	lms := newLMSCallbacks(t)
	b.registerXQueue(t, "watcher password")

	// The watcher's configuration, as an operator writes it.
	graders := filepath.Join(t.TempDir(), "graders")
	if err := os.MkdirAll(filepath.Join(graders, "ex1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(graders, "ex1", "answer.txt"), []byte("42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "config")
	if err := os.MkdirAll(filepath.Join(conf, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	queueConf := map[string]any{"python-grader": map[string]any{
		"SERVER": "https://" + httpAddr, "AUTH": []string{"watcher", "watcher password"}, "CONNECTIONS": 2,
		"HANDLERS": []any{map[string]any{"HANDLER": "gbgrader.FileGrader", "KWARGS": map[string]any{"grader_root": graders}}},
	}}
	js, _ := json.MarshalIndent(queueConf, "", "  ")
	if err := os.WriteFile(filepath.Join(conf, "conf.d", "python-grader.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	cmd := exec.Command("python3", "-m", "xqueue_watcher", "-d", conf)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+strings.Join([]string{src, filepath.Join(fixtures, "stub"), fixtures}, ":"),
		"REQUESTS_CA_BUNDLE="+filepath.Join(dir, "ca.crt"), "PYTHONUNBUFFERED=1")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		// A manual run: its output is worth reading, passed or not.
		t.Logf("xqueue-watcher's output:\n%s", logs.String())
	})

	hc := devHTTPClient(t, dir)
	base := "https://" + httpAddr
	client := xqueuetest.NewLMS(base, hc.Transport, "lms", "watcher password")
	submit := func(n int, answer string, files []xqueuetest.File) string {
		t.Helper()
		callback := fmt.Sprintf("%s/courses/x/xqueue/%d/p1/score_update", lms.URL, n)
		header := fmt.Sprintf(`{"lms_callback_url": %q, "lms_key": "k%d", "queue_name": "python-grader"}`, callback, n)
		body, _ := json.Marshal(map[string]string{"student_info": "{}", "student_response": answer, "grader_payload": `{"grader": "ex1/answer.txt"}`})
		if code, msg := client.SendToQueue(header, string(body), files); code != 0 {
			t.Fatalf("send_to_queue: %d %q", code, msg)
		}
		return header
	}
	type result struct {
		Correct bool   `json:"correct"`
		Score   int    `json:"score"`
		Msg     string `json:"msg"`
	}
	resultFor := func(header string) (result, bool) {
		for _, f := range lms.got() {
			if f["xqueue_header"] == header {
				var r result
				if err := json.Unmarshal([]byte(f["xqueue_body"]), &r); err != nil {
					t.Fatalf("xqueue_body %q: %v", f["xqueue_body"], err)
				}
				return r, true
			}
		}
		return result{}, false
	}

	file := []byte("print(6 * 7)\n")
	right := submit(1, "42", []xqueuetest.File{{Name: "answer.py", Data: file}})
	wrong := submit(2, "41", nil)
	testutil.Eventually(t, "the watcher's two results at the LMS", func() bool { return len(lms.got()) >= 2 })
	r, ok := resultFor(right)
	sum := sha256.Sum256(file)
	if !ok || !r.Correct || r.Score != 1 || !strings.Contains(r.Msg, "answer.py="+hex.EncodeToString(sum[:])) {
		t.Errorf("the right answer's result = %+v, want correct with its file's SHA-256", r)
	}
	if r, ok := resultFor(wrong); !ok || r.Correct || r.Score != 0 {
		t.Errorf("the wrong answer's result = %+v", r)
	}
	out := b.mustAdmin(t, "server", "list")
	if !regexpish(out, "xq.watcher.python-grader", "xq-python", "yes") {
		t.Errorf("server list:\n%s", out)
	}

	// The broker restarts: the watcher's session is gone; it is answered
	// with the 302, logs in again and goes on grading.
	b.Close()
	b = startBroker(t, dir, withAddr)
	again := submit(3, "42", nil)
	testutil.Eventually(t, "a result after the broker's restart", func() bool { _, ok := resultFor(again); return ok })
	if r, _ := resultFor(again); !r.Correct {
		t.Errorf("the result after the restart = %+v", r)
	}
	var jobs int
	out = b.mustAdmin(t, "job", "list", "--platform", "openedx")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "done") {
			jobs++
		}
	}
	if jobs != 3 {
		t.Errorf("job list: %d done, want 3:\n%s", jobs, out)
	}
}
