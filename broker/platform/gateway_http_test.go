package platform

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

// gatewayKeys are the broker's and a platform's token keys, made once per
// test binary: RSA key generation is slow.
var gatewayKeys = sync.OnceValues(func() (broker, platform *rsa.PrivateKey) {
	var err error
	if broker, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if platform, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	return broker, platform
})

// gatewayEnv is the REST gateway served over real TLS on 127.0.0.1, over a
// real database with platform "demo" registered.
type gatewayEnv struct {
	url         string
	http        *http.Client
	brokerKey   *rsa.PublicKey
	platformKey *rsa.PrivateKey
}

func startGateway(t *testing.T, cfg Config) *gatewayEnv {
	t.Helper()
	ctx := context.Background()
	brokerKey, platformKey := gatewayKeys()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "gb.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	der, err := x509.MarshalPKIXPublicKey(&platformKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if _, err := db.AddPlatform(ctx, broker.Platform{Name: "demo", PublicKeyPEM: pub}); err != nil {
		t.Fatal(err)
	}
	keys, err := token.NewKeyRing(brokerKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Broker = "gradebroker"
	// The requests of these tests are refused before anything is queued,
	// so the service needs no dispatcher.
	h, err := New(cfg, db, nil, keys, slog.New(slog.DiscardHandler)).Handler(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ca := certstest.NewCA(t, "gateway test")
	bf := ca.Broker(t)
	src, err := certs.NewServerSource(bf.CertFile, bf.KeyFile, ca.CertFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = src.ServerTLSConfigOptionalClient()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tlsConfig, err := certs.GatewayClientTLSConfig(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	return &gatewayEnv{url: srv.URL, http: hc, brokerKey: &brokerKey.PublicKey, platformKey: platformKey}
}

// errorBody is the JSON of a refusal, as a platform reads it.
type errorBody struct {
	Code    *int              `json:"code"`
	Message string            `json:"message"`
	Details *[]map[string]any `json:"details"`
}

// post sends body to path, with its length unknown to the server when
// chunked, and returns the status and the error body read from the wire.
func (e *gatewayEnv) post(t *testing.T, path, body string, chunked bool) (int, errorBody, []byte) {
	t.Helper()
	var r io.Reader = strings.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // hides the length: sent chunked
	}
	resp, err := e.http.Post(e.url+path, "application/json", r)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST %s: Content-Type %q, want application/json", path, ct)
	}
	var eb errorBody
	if err := json.Unmarshal(raw, &eb); err != nil {
		t.Fatalf("POST %s: status %d, body is not JSON: %q", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, eb, raw
}

// seal makes a token of platform demo with the given claims.
func (e *gatewayEnv) seal(t *testing.T, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Seal(b, "demo", e.platformKey, e.brokerKey, "", false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestGatewayErrors reads refusals off the wire as a platform does: the
// HTTP status, and a body {"code", "message", "details"} whose message says
// what was wrong and where, and whose details are always a list, naming the
// reason in a google.rpc.ErrorInfo when there is one.
func TestGatewayErrors(t *testing.T) {
	t.Parallel()
	const maxToken = 2000
	e := startGateway(t, Config{Limits: token.Limits{MaxTokenBytes: maxToken}})
	now := time.Now()
	expired := e.seal(t, map[string]any{"request": "sendjob", "iat": now.Add(-20 * time.Minute).Unix(),
		"exp": now.Add(-15 * time.Minute).Unix(), "jti": token.NewJTI()})
	huge := `{"token": "` + strings.Repeat("x", maxToken+4096) + `"}`
	for _, c := range []struct {
		name, path, body string
		chunked          bool
		status, code     int
		reason           string // "" wants empty details
		msg              string // a part of the message
	}{
		{name: "not JSON", body: `token=t`, status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 1, column 1: expected a JSON object {"token": "<compact JWE>"}, found "t"`},
		{name: "an array", body: `[]`, status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 1, column 1: expected a JSON object {"token": "<compact JWE>"}, found an array`},
		{name: "token a number", body: `{"token": 5}`, status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 1, column 11: expected "token" as a JSON string, found a number`},
		{name: "two objects", body: "{\"token\": \"t\"}\n{}", status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 2, column 1: expected the end of the body after the JSON object (send one object), found an object`},
		{name: "cut short", body: `{"token": "abc`, status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 1, column 15: expected the closing quote of the string, found the end of the body`},
		{name: "token twice", body: `{"token": "t", "token": "u"}`, status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 1, column 16: "token" is given a second time; give it once`},
		{name: "not UTF-8", body: "{\"token\": \"\xff\"}", status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `at line 1, column 12: expected UTF-8 text, found the byte 0xff`},
		{name: "no token", body: `{"tokn": "t"}`, status: 400, code: 3, reason: ReasonMalformedBody,
			msg: `the request body must be {"token": "<compact JWE>"}: it has no token`},
		{name: "too large, length given", body: huge, status: 413, code: 3, reason: ReasonTooLarge,
			msg: "larger than the 6096 bytes this broker accepts"},
		{name: "too large, chunked", body: huge, chunked: true, status: 413, code: 3, reason: ReasonTooLarge,
			msg: "larger than the 6096 bytes this broker accepts"},
		{name: "token too large", body: `{"token": "` + strings.Repeat("x", maxToken+1) + `"}`, status: 413, code: 3,
			reason: ReasonTooLarge, msg: "token refused"},
		{name: "token malformed", body: `{"token": "a.b.c.d.e"}`, status: 400, code: 3, reason: "MALFORMED",
			msg: "token refused: token is malformed"},
		{name: "token expired", body: `{"token": "` + expired + `"}`, status: 401, code: 16, reason: "EXPIRED",
			msg: "token refused"},
		{name: "no such path", path: "/v1/nothing", body: `{}`, status: 404, code: 5, msg: "Not Found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := c.path
			if path == "" {
				path = "/v1/jobs"
			}
			status, got, raw := e.post(t, path, c.body, c.chunked)
			if status != c.status || got.Code == nil || *got.Code != c.code || !strings.Contains(got.Message, c.msg) {
				t.Errorf("HTTP %d %s\nwant HTTP %d, code %d, a message with %q", status, raw, c.status, c.code, c.msg)
			}
			if strings.Contains(got.Message, "proto:") {
				t.Errorf("message %q speaks of the parser", got.Message)
			}
			switch {
			case got.Details == nil:
				t.Errorf("body %s has no details", raw)
			case c.reason == "" && len(*got.Details) != 0:
				t.Errorf("details %v, want []", *got.Details)
			case c.reason != "":
				want := []map[string]any{{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": c.reason, "domain": ErrorDomain}}
				if diff := cmp.Diff(want, *got.Details); diff != "" {
					t.Errorf("details (-want +got):\n%s", diff)
				}
			}
		})
	}
}
