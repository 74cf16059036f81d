package graderqueue_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/graderqueue"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/broker/token/tokentest"
	"github.com/gradebroker/gradebroker/certs/certstest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The tests talk to a whole broker over HTTPS on 127.0.0.1, as
// graderqueue's PHP platforms talk to api.php: curl posting
// http_build_query's form, or a multipart form with a CURLFile, and tokens
// made as France-ioi's TokenGenerator.php makes them.

// testKeys are the broker's and the platforms' token keys, made once per
// test binary: RSA key generation is slow.
var testKeys = sync.OnceValue(func() map[string]*rsa.PrivateKey {
	keys := map[string]*rsa.PrivateKey{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range []string{"broker", "modern", "old", "stranger"} {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			mu.Lock()
			keys[name] = k
			mu.Unlock()
		})
	}
	wg.Wait()
	return keys
})

// env is a broker with tag python3 (server type py), tag gpu (no type),
// platforms "modern" (tokens with kid, iat, exp and jti only) and "old"
// (legacy tokens allowed), and server s1 of type py, not connected.
type env struct {
	b      *brokerd.Broker
	cfg    brokerd.Config
	url    string
	client *http.Client
	keys   map[string]*rsa.PrivateKey
}

func pemFile(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func setup(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	e := &env{keys: testKeys()}
	ca := certstest.NewCA(t, "graderqueue test")
	bf := ca.Broker(t)
	der, err := x509.MarshalPKCS8PrivateKey(e.keys["broker"])
	if err != nil {
		t.Fatal(err)
	}
	pemFile(t, filepath.Join(dir, "broker-token.key"), "PRIVATE KEY", der)
	e.cfg = brokerd.DefaultConfig()
	e.cfg.Database = filepath.Join(dir, "gb.db")
	e.cfg.GRPCAddr, e.cfg.HTTPAddr, e.cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	e.cfg.CAFile, e.cfg.CertFile, e.cfg.KeyFile = ca.CertFile, bf.CertFile, bf.KeyFile
	e.cfg.TokenKeyFile = filepath.Join(dir, "broker-token.key")
	e.start(t)
	db := e.b.DB()
	for _, tag := range []string{"python3", "gpu"} {
		if _, err := db.AddTag(ctx, tag, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.AddServerType(ctx, "py", []string{"python3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddServer(ctx, broker.Server{Name: "s1", Type: "py", MaxConcurrentJobs: 4,
		Cert: broker.CertIdentity{Serial: "1", Issuer: "CN=test", Subject: "CN=s1", Fingerprint: "fp-s1", Role: "server", NotAfter: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"modern", "old"} {
		der, err := x509.MarshalPKIXPublicKey(&e.keys[name].PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		if _, err := db.AddPlatform(ctx, broker.Platform{Name: name, PublicKeyPEM: pub, LegacyTokens: name == "old"}); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	e.client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	return e
}

// start starts a broker on e.cfg.
func (e *env) start(t *testing.T) {
	t.Helper()
	b, err := brokerd.New(context.Background(), e.cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatalf("brokerd.New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	e.b, e.url = b, "https://"+b.HTTPAddr()+graderqueue.Path
}

// restart stops the broker and starts another on the same database.
func (e *env) restart(t *testing.T) {
	t.Helper()
	e.b.Close()
	e.start(t)
}

// testWriter sends logs to t.Log, so they show only for failing tests.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// modernToken is a token of platform "modern" with claims and fresh iat,
// exp and jti, made as the REST API's platforms make theirs.
func (e *env) modernToken(t *testing.T, claims map[string]any) string {
	t.Helper()
	now := time.Now()
	p := map[string]any{"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": token.NewJTI()}
	for k, v := range claims {
		p[k] = v
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Seal(b, "modern", e.keys["modern"], &e.keys["broker"].PublicKey, "", false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// legacyToken is a token of platform signer as France-ioi's
// TokenGenerator::encodeJWES makes it: claims plus date (d-m-Y, today
// unless claims say otherwise) in a JWS with header {"alg":"RS512"}, in a
// JWE with alg, enc and zip DEF and no kid or cty.
func (e *env) legacyToken(t *testing.T, signer string, claims map[string]any) string {
	t.Helper()
	p := map[string]any{"date": time.Now().Format(token.LegacyDateLayout)}
	for k, v := range claims {
		p[k] = v
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	jws := tokentest.JWS(`{"alg":"RS512"}`, b, tokentest.RS512(e.keys[signer]))
	return tokentest.JWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","zip":"DEF"}`, []byte(jws), &e.keys["broker"].PublicKey)
}

// answer is api.php's reply as a platform decodes it, and as sent.
type answer struct {
	Errorcode int            `json:"errorcode"`
	Errormsg  string         `json:"errormsg"`
	JobID     json.Number    `json:"jobid"`
	Duplicate bool           `json:"duplicate"`
	Origin    string         `json:"origin"`
	Data      map[string]any `json:"data"`
	raw       string
}

// post sends body with contentType and decodes the answer, which must be
// HTTP 200 with JSON whatever it says.
func (e *env) post(t *testing.T, contentType string, body io.Reader) answer {
	t.Helper()
	resp, err := e.client.Post(e.url, contentType, body)
	if err != nil {
		t.Fatalf("POST %s: %v", graderqueue.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("POST %s: HTTP %d, Content-Type %q; want 200 and JSON, as api.php answers everything", graderqueue.Path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var a answer
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("POST %s: the answer is not JSON: %q", graderqueue.Path, raw)
	}
	a.raw = string(raw)
	return a
}

// form posts fields as curl posts http_build_query's string.
func (e *env) form(t *testing.T, fields map[string]string) answer {
	t.Helper()
	v := url.Values{}
	for k, f := range fields {
		v.Set(k, f)
	}
	return e.post(t, "application/x-www-form-urlencoded", strings.NewReader(v.Encode()))
}

// multipartForm posts fields and a file as curl posts an array with a
// CURLFile: multipart/form-data, the file as application/octet-stream.
func (e *env) multipartForm(t *testing.T, fields map[string]string, fileField, fileName string, content []byte) answer {
	t.Helper()
	var list [][2]string
	for k, v := range fields {
		list = append(list, [2]string{k, v})
	}
	ct, body := graderqueue.MultipartBody(t, list, fileField, fileName, string(content))
	return e.post(t, ct, strings.NewReader(body))
}

// ok fails the test unless a says errorcode 0.
func (a answer) ok(t *testing.T, what string) answer {
	t.Helper()
	if a.Errorcode != graderqueue.CodeOK {
		t.Fatalf("%s: %s, want errorcode 0", what, a.raw)
	}
	return a
}

// refused fails the test unless a says errorcode code with a message
// containing words.
func (a answer) refused(t *testing.T, what string, code int, words string) {
	t.Helper()
	if a.Errorcode != code || !strings.Contains(a.Errormsg, words) {
		t.Errorf("%s: %s, want errorcode %d saying %q", what, a.raw, code, words)
	}
}

// jobID is the answer's jobid.
func (a answer) jobID(t *testing.T) int64 {
	t.Helper()
	id, err := a.JobID.Int64()
	if err != nil || id <= 0 {
		t.Fatalf("jobid in %s: %v", a.raw, err)
	}
	return id
}

// server is s1 connected through the dispatcher's session API.
type server struct {
	t    *testing.T
	sess *dispatch.Session
	in   []dispatch.Message
}

func (e *env) connect(t *testing.T) *server {
	t.Helper()
	sess, _, err := e.b.Dispatcher().Open(context.Background(), "fp-s1", dispatch.Hello{Slots: 4, Hostname: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(nil) })
	return &server{t: t, sess: sess}
}

// assign waits for the next Assign.
func (s *server) assign() *dispatch.Assign {
	s.t.Helper()
	var a *dispatch.Assign
	testutil.Eventually(s.t, "an Assign for s1", func() bool {
		s.in = append(s.in, s.sess.Messages()...)
		for i, m := range s.in {
			if as, ok := m.(*dispatch.Assign); ok {
				a = as
				s.in = append(s.in[:i], s.in[i+1:]...)
				return true
			}
		}
		return false
	})
	return a
}

// finish reports a's result.
func (s *server) finish(a *dispatch.Assign, outcome broker.Outcome, result, errMsg string) {
	s.t.Helper()
	var res []byte
	if result != "" {
		res = []byte(result)
	}
	s.sess.Result(dispatch.Result{Lease: a.Lease, Outcome: outcome, Result: res, Error: errMsg})
}

// waitState waits until job id is in state.
func (e *env) waitState(t *testing.T, id int64, state broker.JobState) {
	t.Helper()
	testutil.Eventually(t, "job "+state.String(), func() bool {
		st, _, err := e.b.DB().JobState(context.Background(), id)
		return err == nil && st == state
	})
}
