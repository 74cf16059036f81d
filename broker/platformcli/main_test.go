package platformcli

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs/certstest"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/platformclient"
)

// keys are made once per test binary: RSA key generation is the slowest
// thing the tests would otherwise do.
var keys = sync.OnceValue(func() (ks struct{ broker, platform *rsa.PrivateKey }) {
	var wg sync.WaitGroup
	for _, p := range []**rsa.PrivateKey{&ks.broker, &ks.platform} {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			*p = k
		})
	}
	wg.Wait()
	return ks
})

// syncBuffer is a bytes.Buffer that Main may write from several goroutines
// while the test reads it.
type syncBuffer = testutil.SyncBuffer

// files are the PEM files a platform operator holds.
type files struct {
	dir         string
	ca          string
	platformKey string
	brokerPub   string
}

func writePEM(t *testing.T, path, typ string, der []byte) string {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pkcs8(t *testing.T, k *rsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func spki(t *testing.T, k *rsa.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// newFiles writes the platform's key, the broker's public key and a CA.
func newFiles(t *testing.T) (files, *certstest.CA) {
	t.Helper()
	ks := keys()
	dir := t.TempDir()
	ca := certstest.NewCA(t, "platformcli test")
	return files{
		dir:         dir,
		ca:          ca.CertFile,
		platformKey: writePEM(t, filepath.Join(dir, "demo-token.key"), "PRIVATE KEY", pkcs8(t, ks.platform)),
		brokerPub:   writePEM(t, filepath.Join(dir, "broker-token.pub"), "PUBLIC KEY", spki(t, &ks.broker.PublicKey)),
	}, ca
}

// startBroker starts a broker in-process over real TLS with a temporary
// database, with tag python3, a server type covering it and platform demo.
func startBroker(t *testing.T) (*brokerd.Broker, files) {
	t.Helper()
	ctx := context.Background()
	ks := keys()
	f, ca := newFiles(t)
	bf := ca.Broker(t)
	cfg := brokerd.DefaultConfig()
	cfg.Database = filepath.Join(f.dir, "broker.db")
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = ca.CertFile, bf.CertFile, bf.KeyFile
	cfg.TokenKeyFile = writePEM(t, filepath.Join(f.dir, "broker-token.key"), "PRIVATE KEY", pkcs8(t, ks.broker))
	cfg.ShutdownTimeout = 5 * time.Second
	b, err := brokerd.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("brokerd.New: %v", err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatalf("broker Start: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("broker Close: %v", err)
		}
	})
	if _, err := b.DB().AddTag(ctx, "python3", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DB().AddServerType(ctx, "py", []string{"python3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DB().AddPlatform(ctx, broker.Platform{Name: "demo", ReturnURL: "http://127.0.0.1:9/callback",
		PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki(t, &ks.platform.PublicKey)}))}); err != nil {
		t.Fatal(err)
	}
	return b, f
}

// run runs Main and returns its exit code, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr syncBuffer
	code := Main(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func (f files) args(url string, more ...string) []string {
	return append([]string{"--url", url, "--ca", f.ca, "--platform", "demo", "--key", f.platformKey, "--broker-key", f.brokerPub}, more...)
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"no command", nil, ExitUsage, "", "Usage: broker platform"},
		{"help", []string{"-h"}, ExitOK, "Commands:", ""},
		{"help command", []string{"help", "getjob"}, ExitOK, "getjob 12 --wait 30s", ""},
		{"command help", []string{"receive", "-h"}, ExitOK, "--once", ""},
		{"unknown command", []string{"sendjbo"}, ExitUsage, "", `unknown command "sendjbo"`},
		{"unknown flag", []string{"test", "--bogus"}, ExitUsage, "", "flag provided but not defined: -bogus"},
		{"unknown flag before the command", []string{"--bogus", "test"}, ExitUsage, "", "flag provided but not defined: -bogus"},
		{"missing argument", []string{"getjob"}, ExitUsage, "", "missing ID"},
		{"extra argument", []string{"canceljob", "1", "2"}, ExitUsage, "", `unexpected argument "2"`},
		{"bad job id", []string{"getjob", "twelve", "--platform", "demo"}, ExitUsage, "", `job ID "twelve"`},
		{"missing key", []string{"test", "--platform", "demo", "--broker-key", "x"}, ExitUsage, "", "--key is required"},
		{"bad JSON", []string{"sendjob", "{nope", "--platform", "demo", "--key", "k", "--broker-key", "b"}, ExitUsage, "", "JSON must be one object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := run(t, tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout containing %q, stderr containing %q",
					code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

func TestAgainstBroker(t *testing.T) {
	b, f := startBroker(t)
	url := "https://" + b.HTTPAddr()
	ctx := context.Background()

	t.Run("test", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := run(t, f.args(url, "test")...)
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var got gradebrokerv1.TestResponse
		if err := protojson.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatalf("stdout %q: %v", stdout, err)
		}
		if got.GetPlatform() != "demo" || got.GetBroker() != "gradebroker" || !strings.Contains(stdout, "\n  \"server_time\"") {
			t.Fatalf("stdout = %s; want indented JSON naming demo and gradebroker", stdout)
		}
	})

	t.Run("token, sent with another client", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := run(t, f.args(url, "token", "sendjob", `{"jobdata": {"n": 1}, "tags": "python3"}`)...)
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		tok := strings.TrimSpace(stdout)
		if strings.Count(tok, ".") != 4 {
			t.Fatalf("stdout %q is not a compact JWE", stdout)
		}
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(f.ca)
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("CA %s: %v", f.ca, err)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		t.Cleanup(hc.CloseIdleConnections)
		c, err := platformclient.New(url, "demo", keys().platform, &keys().broker.PublicKey, platformclient.Options{HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		var resp gradebrokerv1.SendJobResponse
		if err := c.Post(ctx, platformclient.PathSendJob, tok, &resp); err != nil {
			t.Fatalf("posting the CLI's token: %v", err)
		}
		if resp.GetJobId() <= 0 || resp.GetState() != gradebrokerv1.JobState_JOB_STATE_QUEUED {
			t.Fatalf("response %v; want a queued job", &resp)
		}
	})

	t.Run("sendjob, getjob, canceljob", func(t *testing.T) {
		t.Parallel()
		job := filepath.Join(t.TempDir(), "job.json")
		if err := os.WriteFile(job, []byte(`{"jobdata": {"task": "sum", "n": 12345678901234567890}, "jobname": "cli", "tags": ["python3"], "priority": 3}`), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := run(t, f.args(url, "sendjob", "@"+job)...)
		if code != ExitOK {
			t.Fatalf("sendjob: exit %d: %s", code, stderr)
		}
		var sent gradebrokerv1.SendJobResponse
		if err := protojson.Unmarshal([]byte(stdout), &sent); err != nil || sent.GetJobId() <= 0 {
			t.Fatalf("sendjob stdout %q: %v", stdout, err)
		}
		stored, err := b.DB().GetJob(ctx, sent.GetJobId())
		if err != nil {
			t.Fatal(err)
		}
		// Compacted, but otherwise as written: the large integer is not
		// rounded through a float.
		if want := `{"task":"sum","n":12345678901234567890}`; string(stored.JobData) != want {
			t.Fatalf("stored jobdata %s; want %s", stored.JobData, want)
		}
		id := strconv.FormatInt(sent.GetJobId(), 10)

		code, stdout, stderr = run(t, f.args(url, "getjob", id, "--wait", "0s")...)
		if code != ExitOK {
			t.Fatalf("getjob: exit %d: %s", code, stderr)
		}
		var got gradebrokerv1.GetJobResponse
		if err := protojson.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatalf("getjob stdout %q: %v", stdout, err)
		}
		if j := got.GetJob(); j.GetId() != sent.GetJobId() || j.GetState() != gradebrokerv1.JobState_JOB_STATE_QUEUED || j.GetName() != "cli" || j.GetPriority() != 3 {
			t.Fatalf("getjob = %v; want job %d queued", j, sent.GetJobId())
		}

		code, stdout, stderr = run(t, f.args(url, "canceljob", id)...)
		if code != ExitOK || !strings.Contains(stdout, `"JOB_STATE_CANCELLED"`) {
			t.Fatalf("canceljob: exit %d, stdout %s, stderr %s", code, stdout, stderr)
		}
	})

	t.Run("API error", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := run(t, f.args(url, "sendjob", `{"jobdata": {}, "tags": ["python3", "cobol"]}`)...)
		if want := "error: HTTP 400 InvalidArgument: unknown tag(s): cobol\n"; code != ExitError || stderr != want || stdout != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and stderr %q", code, stdout, stderr, want)
		}
	})

	t.Run("sendjobs with a bare array", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := run(t, f.args(url, "sendjobs", `[{"jobdata": {"i": 1}, "tags": "python3"}, {"jobdata": {"i": 2}, "tags": "python3"}]`)...)
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var got gradebrokerv1.SendJobsResponse
		if err := protojson.Unmarshal([]byte(stdout), &got); err != nil || len(got.GetJobs()) != 2 {
			t.Fatalf("stdout %q: %v; want two jobs", stdout, err)
		}
	})

	t.Run("explicit --broker goes into aud", func(t *testing.T) {
		t.Parallel()
		if code, _, stderr := run(t, f.args(url, "test", "--broker", "gradebroker")...); code != ExitOK {
			t.Fatalf("--broker gradebroker: exit %d: %s", code, stderr)
		}
		code, _, stderr := run(t, f.args(url, "test", "--broker", "elsewhere")...)
		if code != ExitError || !strings.Contains(stderr, "error: HTTP 401 Unauthenticated:") || !strings.Contains(stderr, "elsewhere") {
			t.Fatalf("--broker elsewhere: exit %d, stderr %q; want a 401 naming the audience", code, stderr)
		}
	})

	t.Run("wrong CA", func(t *testing.T) {
		t.Parallel()
		other, _ := newFiles(t)
		code, _, stderr := run(t, append(f.args(url, "test"), "--ca", other.ca)...)
		if code != ExitError || !strings.Contains(stderr, "certificate") || !strings.Contains(stderr, "--ca") {
			t.Fatalf("exit %d, stderr %q; want a certificate error with a hint", code, stderr)
		}
	})
}

func TestBrokerNotRunning(t *testing.T) {
	t.Parallel()
	f, _ := newFiles(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, _, stderr := run(t, f.args("https://"+addr, "test", "--timeout", "5s")...)
	if code != ExitError || !strings.Contains(stderr, "is the broker running at https://"+addr) {
		t.Fatalf("exit %d, stderr %q; want exit 1 with a hint", code, stderr)
	}
}

// sealCallback makes a callback for platform demo as the broker does.
func sealCallback(t *testing.T, deliveryID int64) string {
	t.Helper()
	ks := keys()
	now := time.Now().Unix()
	payload, err := json.Marshal(map[string]any{"job_id": 7, "jobname": "sum", "status": "done", "result": map[string]any{"score": 100},
		"attempts": 1, "server": "grader1", "delivery_id": deliveryID, "iat": now, "exp": now + 300, "jti": token.NewJTI(), "aud": "demo"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Seal(payload, "gradebroker", ks.broker, &ks.platform.PublicKey, "", false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var listeningRE = regexp.MustCompile(`listening on (\S+)\n`)

func TestReceiveOnce(t *testing.T) {
	t.Parallel()
	f, _ := newFiles(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"receive", "--listen", "127.0.0.1:0", "--once", "--platform", "demo", "--key", f.platformKey, "--broker-key", f.brokerPub},
			&stdout, &stderr)
	}()
	var addr string
	for addr == "" {
		select {
		case code := <-done:
			t.Fatalf("receive exited %d before listening: %s", code, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if m := listeningRE.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
		}
	}

	// A forged callback is refused and not printed.
	resp, err := http.Post("http://"+addr+"/callback", "application/json", strings.NewReader(`{"token": "a.b.c.d.e"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("forged callback: %d; want 400", resp.StatusCode)
	}

	resp, err = http.Post("http://"+addr+"/callback", "application/json", strings.NewReader(`{"token": "`+sealCallback(t, 31)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("callback: %d; want 200", resp.StatusCode)
	}
	select {
	case code := <-done:
		if code != ExitOK {
			t.Fatalf("receive --once exited %d: %s", code, stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("receive --once did not exit after a callback: %s", stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("stdout %q; want one line", stdout.String())
	}
	var got struct {
		JobID      int64           `json:"job_id"`
		Status     string          `json:"status"`
		DeliveryID int64           `json:"delivery_id"`
		Result     json.RawMessage `json:"result"`
		Aud        string          `json:"aud"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("stdout line %q: %v", lines[0], err)
	}
	if got.JobID != 7 || got.Status != "done" || got.DeliveryID != 31 || string(got.Result) != `{"score":100}` || got.Aud != "demo" {
		t.Fatalf("printed %s", lines[0])
	}
	if log := stderr.String(); !strings.Contains(log, "callback: job 7 done, delivery 31") || !strings.Contains(log, "refused POST /callback") {
		t.Fatalf("stderr %q; want the callback and the refusal logged", log)
	}
}

func TestOpen(t *testing.T) {
	t.Parallel()
	f, _ := newFiles(t)
	tok := sealCallback(t, 5)
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, []byte(`{"token": "`+tok+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{tok, "@" + file} {
		code, stdout, stderr := run(t, "open", arg, "--platform", "demo", "--key", f.platformKey, "--broker-key", f.brokerPub)
		if code != ExitOK || !strings.Contains(stdout, "\n  \"delivery_id\": 5,") {
			t.Fatalf("open: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	}
	code, _, stderr := run(t, "open", tok, "--platform", "other", "--key", f.platformKey, "--broker-key", f.brokerPub)
	if code != ExitError || !strings.Contains(stderr, "audience") {
		t.Fatalf("open as another platform: exit %d, stderr %q; want an audience error", code, stderr)
	}
}
