package e2e

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/broker/token/tokentest"
)

// platformEnv is a broker with tag python3 (type py), tag gpu (no type
// covers python3+gpu), and platforms demo and other.
type platformEnv struct {
	b         *broker
	url       string
	http      *http.Client
	brokerPub *rsa.PublicKey
	demoKey   *rsa.PrivateKey
	otherKey  *rsa.PrivateKey
	now       func() time.Time
}

func setupPlatform(t *testing.T) *platformEnv {
	t.Helper()
	return setupPlatformWith(t, nil)
}

// setupPlatformWith is setupPlatform with the broker's config changed by mod.
func setupPlatformWith(t *testing.T, mod func(*brokerdConfig)) *platformEnv {
	t.Helper()
	dir := devPKI(t)
	script(t, "gb-keys.sh", "--out", filepath.Join(dir, "other-token"))
	b := startBroker(t, dir, mod)
	bootstrap(t, dir, b.db)
	b.mustAdmin(t, "tag", "add", "python3")
	b.mustAdmin(t, "tag", "add", "gpu")
	b.mustAdmin(t, "type", "add", "py", "--tags", "python3")
	b.mustAdmin(t, "type", "add", "cuda", "--tags", "gpu")
	b.mustAdmin(t, "platform", "add", "demo", "--key", filepath.Join(dir, "demo-token.pub"), "--return-url", "http://127.0.0.1:9/cb")
	b.mustAdmin(t, "platform", "add", "other", "--key", filepath.Join(dir, "other-token.pub"), "--return-url", "http://127.0.0.1:9/cb")
	e := &platformEnv{b: b, now: time.Now}
	e.url = "https://" + b.HTTPAddr()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(mustRead(t, filepath.Join(dir, "ca.crt")))
	e.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	var err error
	if e.brokerPub, err = token.ParsePublicKeyPEM(mustRead(t, filepath.Join(dir, "broker-token.pub"))); err != nil {
		t.Fatal(err)
	}
	if e.demoKey, err = token.LoadPrivateKeyPEM(mustRead(t, filepath.Join(dir, "demo-token.key"))); err != nil {
		t.Fatal(err)
	}
	if e.otherKey, err = token.LoadPrivateKeyPEM(mustRead(t, filepath.Join(dir, "other-token.key"))); err != nil {
		t.Fatal(err)
	}
	return e
}

// claims returns a payload for request with fresh iat, exp and jti.
func (e *platformEnv) claims(request string, fields map[string]any) map[string]any {
	now := e.now()
	p := map[string]any{"request": request, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": token.NewJTI()}
	for k, v := range fields {
		p[k] = v
	}
	return p
}

// seal makes a token signed as signer with key, encrypted to the broker.
func (e *platformEnv) seal(t *testing.T, signer string, key *rsa.PrivateKey, payload map[string]any) string {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Seal(b, signer, key, e.brokerPub, "", false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// post sends a token to path and returns the HTTP status and decoded body.
func (e *platformEnv) post(t *testing.T, path, tok string) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"token": tok})
	resp, err := e.http.Post(e.url+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("POST %s: status %d, body is not JSON: %q", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func (e *platformEnv) jobCount(t *testing.T) int {
	t.Helper()
	st := e.b.Dispatcher().Stats()
	return st.Queued + st.Running
}

func TestPlatformRefusals(t *testing.T) {
	t.Parallel()
	e := setupPlatform(t)
	job := map[string]any{"jobdata": map[string]any{"task": "sum"}, "tags": "python3"}
	valid := func() map[string]any { return e.claims("sendjob", job) }

	// One accepted job, to refer to.
	code, ok := e.post(t, "/v1/jobs", e.seal(t, "demo", e.demoKey, valid()))
	if code != 200 {
		t.Fatalf("valid sendjob: %d %v", code, ok)
	}
	jobID := ok["job_id"]

	wrongBroker, _ := rsa.GenerateKey(randReader{}, 2048)
	header := `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","cty":"JWT"}`
	mustJSON := func(v any) []byte { b, _ := json.Marshal(v); return b }
	replayed := e.seal(t, "demo", e.demoKey, valid())
	if code, body := e.post(t, "/v1/jobs", replayed); code != 200 {
		t.Fatalf("first use of the token to replay: %d %v", code, body)
	}
	bomb := valid()
	bomb["pad"] = strings.Repeat("0", 40<<20)

	cases := []struct {
		name     string
		path     string
		tok      string
		wantHTTP int
		wantMsg  string
	}{
		{"not a token", "/v1/jobs", "hello", 400, "token"},
		{"wrong broker key", "/v1/jobs", func() string {
			b, _ := json.Marshal(valid())
			tok, _ := token.Seal(b, "demo", e.demoKey, &wrongBroker.PublicKey, "", false)
			return tok
		}(), 401, "decrypt"},
		{"unknown kid", "/v1/jobs", e.seal(t, "ghost", e.demoKey, valid()), 401, "ghost"},
		{"tampered ciphertext", "/v1/jobs", tokentest.FlipByte(t, e.seal(t, "demo", e.demoKey, valid()), 3, 5), 401, ""},
		{"tampered signature (other key, kid demo)", "/v1/jobs", e.seal(t, "demo", e.otherKey, valid()), 401, "signature"},
		{"alg none", "/v1/jobs", tokentest.JWE(t, header, []byte(tokentest.JWS(`{"alg":"none","kid":"demo"}`, mustJSON(valid()), nil)), e.brokerPub), 400, "alg"},
		{"HS512 with the public key", "/v1/jobs", tokentest.JWE(t, header, []byte(tokentest.JWS(`{"alg":"HS512","kid":"demo"}`, mustJSON(valid()), nil)), e.brokerPub), 400, "alg"},
		{"RSA1_5 JWE", "/v1/jobs", tokentest.JWE(t, `{"alg":"RSA1_5","enc":"A256CBC-HS512"}`, []byte("x"), e.brokerPub), 400, "alg"},
		{"expired", "/v1/jobs", e.seal(t, "demo", e.demoKey, func() map[string]any {
			p := valid()
			p["iat"], p["exp"] = e.now().Add(-20*time.Minute).Unix(), e.now().Add(-15*time.Minute).Unix()
			return p
		}()), 401, "expired"},
		{"iat in the future", "/v1/jobs", e.seal(t, "demo", e.demoKey, func() map[string]any {
			p := valid()
			p["iat"], p["exp"] = e.now().Add(time.Hour).Unix(), e.now().Add(time.Hour+time.Minute).Unix()
			return p
		}()), 401, "ahead"},
		{"lifetime too long", "/v1/jobs", e.seal(t, "demo", e.demoKey, func() map[string]any {
			p := valid()
			p["exp"] = e.now().Add(time.Hour).Unix()
			return p
		}()), 400, "exp"},
		{"replayed jti", "/v1/jobs", replayed, 401, "replay"},
		{"wrong request for the path", "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("getjob", map[string]any{"jobid": jobID})), 400, "request"},
		{"DEF bomb", "/v1/jobs", func() string {
			b, _ := json.Marshal(bomb)
			tok, _ := token.Seal(b, "demo", e.demoKey, e.brokerPub, "", true)
			return tok
		}(), 413, "large"},
		{"oversized jobdata", "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("sendjob", map[string]any{
			"tags": "python3", "jobdata": map[string]any{"x": strings.Repeat("a", 1<<20+10)}})), 400, "limit"},
		{"unknown tag", "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("sendjob", map[string]any{
			"tags": "python3,rust", "jobdata": map[string]any{}})), 400, "rust"},
		{"uncovered tag set", "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("sendjob", map[string]any{
			"tags": []string{"python3", "gpu"}, "jobdata": map[string]any{}})), 400, "no server type covers"},
		{"missing jobdata", "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("sendjob", map[string]any{"tags": "python3"})), 400, "jobdata"},
		{"another platform's job", "/v1/jobs:get", e.seal(t, "other", e.otherKey, e.claims("getjob", map[string]any{"jobid": jobID})), 404, "not found"},
	}
	before := e.jobCount(t)
	for _, c := range cases {
		code, body := e.post(t, c.path, c.tok)
		msg, _ := body["message"].(string)
		if code != c.wantHTTP || !strings.Contains(strings.ToLower(msg), strings.ToLower(c.wantMsg)) {
			t.Errorf("%s: HTTP %d %q; want %d with a message containing %q", c.name, code, msg, c.wantHTTP, c.wantMsg)
		}
		if _, has := body["code"]; !has {
			t.Errorf("%s: error body %v has no gRPC-style code", c.name, body)
		}
	}
	if after := e.jobCount(t); after != before {
		t.Errorf("refused requests stored jobs: %d before, %d after", before, after)
	}

	// A replay is refused after a restart too: the jti is in the database.
	fresh := e.seal(t, "demo", e.demoKey, valid())
	if code, body := e.post(t, "/v1/jobs", fresh); code != 200 {
		t.Fatalf("sendjob: %d %v", code, body)
	}
	e.b.Close()
	e.b = startBroker(t, e.b.dir, func(c *brokerdConfig) { c.Database = e.b.db })
	e.url = "https://" + e.b.HTTPAddr()
	if code, body := e.post(t, "/v1/jobs", fresh); code != 401 {
		t.Errorf("replay after restart: HTTP %d %v, want 401", code, body)
	}
}

func TestPlatformRequests(t *testing.T) {
	t.Parallel()
	e := setupPlatform(t)
	send := func(p map[string]any) (int, map[string]any) {
		return e.post(t, "/v1/jobs", e.seal(t, "demo", e.demoKey, e.claims("sendjob", p)))
	}
	// test
	if code, body := e.post(t, "/v1/test", e.seal(t, "demo", e.demoKey, e.claims("test", nil))); code != 200 || body["platform"] != "demo" {
		t.Fatalf("test: %d %v", code, body)
	}
	// jobdata as a JSON string, priority and timeout as strings, tags as a list.
	code, first := send(map[string]any{"jobdata": `{"big": 12345678901234567890}`, "priority": "5", "timeout_sec": "30",
		"tags": []string{"python3"}, "jobusertaskid": "k-1", "jobname": "one"})
	if code != 200 {
		t.Fatalf("sendjob: %d %v", code, first)
	}
	id := jsonID(t, first["job_id"])
	job, err := e.b.DB().GetJob(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if string(job.JobData) != `{"big": 12345678901234567890}` || job.Priority != 5 || job.Timeout != 30*time.Second || job.IdempotencyKey != "k-1" {
		t.Errorf("stored job = data %s priority %d timeout %s key %q", job.JobData, job.Priority, job.Timeout, job.IdempotencyKey)
	}
	// The same idempotency key returns the same job.
	code, again := send(map[string]any{"jobdata": map[string]any{}, "tags": "python3", "idempotency_key": "k-1"})
	if code != 200 || again["job_id"] != first["job_id"] || again["duplicate"] != true {
		t.Errorf("resubmission with the same key: %d %v, want job %v with duplicate true", code, again, first["job_id"])
	}
	// getjob; canceljob of a queued job, then again.
	code, got := e.post(t, "/v1/jobs:get", e.seal(t, "demo", e.demoKey, e.claims("getjob", map[string]any{"jobid": id})))
	if code != 200 || got["job"].(map[string]any)["state"] != "JOB_STATE_QUEUED" {
		t.Errorf("getjob: %d %v", code, got)
	}
	code, c1 := e.post(t, "/v1/jobs:cancel", e.seal(t, "demo", e.demoKey, e.claims("canceljob", map[string]any{"jobid": fmt.Sprint(id)})))
	if code != 200 || c1["state"] != "JOB_STATE_CANCELLED" {
		t.Errorf("canceljob: %d %v", code, c1)
	}
	code, c2 := e.post(t, "/v1/jobs:cancel", e.seal(t, "demo", e.demoKey, e.claims("canceljob", map[string]any{"jobid": id})))
	if code != 200 || !strings.Contains(c2["message"].(string), "already cancelled") {
		t.Errorf("second canceljob: %d %v", code, c2)
	}
	// sendsolution builds the documented taskgrader-style jobdata.
	code, sol := e.post(t, "/v1/solutions", e.seal(t, "demo", e.demoKey, e.claims("sendsolution", map[string]any{
		"tags": "python3", "taskpath": "$ROOT/tasks/sum", "lang": "python3", "memlimit": 65536, "timelimit": "1000",
		"solfile": map[string]any{"name": "sol.py", "content_base64": "cHJpbnQoMSk="}})))
	if code != 200 {
		t.Fatalf("sendsolution: %d %v", code, sol)
	}
	sj, _ := e.b.DB().GetJob(context.Background(), jsonID(t, sol["job_id"]))
	var jd map[string]any
	if err := json.Unmarshal(sj.JobData, &jd); err != nil {
		t.Fatal(err)
	}
	extra := jd["extraParams"].(map[string]any)
	if jd["taskPath"] != "$ROOT/tasks/sum" || extra["solutionContent"] != "print(1)" || extra["solutionFilename"] != "sol.py" ||
		extra["solutionLanguage"] != "python3" || extra["defaultSolutionExecParams"].(map[string]any)["timeLimitMs"] != float64(1000) {
		t.Errorf("sendsolution jobdata = %s", sj.JobData)
	}
	// A batch of 100 jobs in one token.
	jobs := make([]map[string]any, 100)
	for i := range jobs {
		jobs[i] = map[string]any{"jobdata": map[string]any{"i": i}, "tags": "python3"}
	}
	code, batch := e.post(t, "/v1/jobs:batch", e.seal(t, "demo", e.demoKey, e.claims("sendjobs", map[string]any{"jobs": jobs})))
	if code != 200 || len(batch["jobs"].([]any)) != 100 {
		t.Errorf("sendjobs: %d, %d jobs", code, len(batch["jobs"].([]any)))
	}
	// JWKS.
	resp, err := e.http.Get(e.url + "/v1/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil || len(jwks.Keys) != 2 || jwks.Keys[0]["alg"] != "RSA-OAEP-256" ||
		jwks.Keys[1]["kid"] != "gradebroker" || jwks.Keys[1]["use"] != "sig" || jwks.Keys[1]["alg"] != "RS512" {
		t.Errorf("GET /v1/keys: %v %v; want the encryption key, then the signing key with kid gradebroker", jwks, err)
	}
}

// jsonID reads an int64 as protojson writes it: a JSON string.
func jsonID(t *testing.T, v any) int64 {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("job id %v (%T) is not a JSON string as protojson writes int64", v, v)
	}
	var id int64
	if _, err := fmt.Sscan(s, &id); err != nil {
		t.Fatal(err)
	}
	return id
}
