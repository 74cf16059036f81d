package platformclient

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker/token"
)

// sealCallback makes a callback token as the broker does: the payload plus
// iat, exp, jti and aud, signed by signer as brokerName and encrypted to
// the platform's key. Members of extra replace the defaults.
func sealCallback(t *testing.T, signer *rsa.PrivateKey, to *rsa.PublicKey, recipientKID string, extra map[string]any) string {
	t.Helper()
	now := time.Now().Unix()
	p := map[string]any{
		"job_id": 42, "jobname": "sum", "idempotency_key": "user-1", "status": "done",
		"result": json.RawMessage(`{"score":100,"big":12345678901234567890}`), "error": "", "attempts": 2, "server": "grader1",
		"delivery_id": 9, "iat": now, "exp": now + 300, "jti": token.NewJTI(), "aud": platformName,
	}
	for k, v := range extra {
		if v == nil {
			delete(p, k)
		} else {
			p[k] = v
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Seal(b, brokerName, signer, to, recipientKID, false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCallbackRead(t *testing.T) {
	t.Parallel()
	ks := keysOnce()
	ctx := context.Background()
	r := NewCallbackReader(platformName, ks.platform, brokerName, &ks.broker.PublicKey, &ks.brokerNext.PublicKey)

	tok := sealCallback(t, ks.broker, &ks.platform.PublicKey, "", nil)
	cb, err := r.Read(ctx, tok)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if time.Since(cb.IssuedAt) > time.Minute || cb.Payload == nil {
		t.Fatalf("IssuedAt %s, Payload %s", cb.IssuedAt, cb.Payload)
	}
	cb.IssuedAt, cb.Payload = time.Time{}, nil
	want := Callback{JobID: 42, Jobname: "sum", IdempotencyKey: "user-1", Status: StatusDone,
		Result: json.RawMessage(`{"score":100,"big":12345678901234567890}`), Attempts: 2, Server: "grader1", DeliveryID: 9}
	if diff := cmp.Diff(want, cb); diff != "" {
		t.Fatalf("Read (-want +got):\n%s", diff)
	}

	if _, err := r.Read(ctx, tok); !errors.Is(err, token.ErrReplayed) {
		t.Fatalf("Read of the same token again: %v; want ErrReplayed", err)
	}

	for _, tc := range []struct {
		name string
		tok  string
		want error
	}{
		{"signed by a stranger", sealCallback(t, ks.stranger, &ks.platform.PublicKey, "", nil), token.ErrBadSignature},
		{"for another platform", sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"aud": otherPlatform}), token.ErrWrongAudience},
		{"without aud", sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"aud": nil}), token.ErrWrongAudience},
		{"encrypted to another key", sealCallback(t, ks.broker, &ks.other.PublicKey, "", nil), token.ErrDecrypt},
		{"expired", sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"iat": time.Now().Unix() - 900, "exp": time.Now().Unix() - 600}), token.ErrExpired},
		{"a request, not a callback", sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"request": "test"}), token.ErrWrongRequest},
		{"not a token", "hello", token.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.Read(ctx, tc.tok); !errors.Is(err, tc.want) {
				t.Fatalf("Read: %v; want %v", err, tc.want)
			}
		})
	}

	t.Run("signed with the broker's next key", func(t *testing.T) {
		if _, err := r.Read(ctx, sealCallback(t, ks.brokerNext, &ks.platform.PublicKey, "", nil)); err != nil {
			t.Fatalf("Read: %v", err)
		}
	})

	t.Run("JWE kid is the key's thumbprint", func(t *testing.T) {
		kid, err := token.Thumbprint(&ks.platform.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(ctx, sealCallback(t, ks.broker, &ks.platform.PublicKey, kid, nil)); err != nil {
			t.Fatalf("Read: %v", err)
		}
	})

	t.Run("what the last run used and the limit that ended it", func(t *testing.T) {
		cb, err := r.Read(ctx, sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"status": "failed", "limit": "memory",
			"usage": map[string]any{"cpu_time_ms": 1235, "peak_memory_bytes": "1073741824", "wall_time_ms": 2001}}))
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		want := &Usage{CPUTime: 1235 * time.Millisecond, PeakMemoryBytes: 1 << 30, WallTime: 2001 * time.Millisecond}
		if diff := cmp.Diff(want, cb.Usage); diff != "" || cb.Limit != "memory" {
			t.Fatalf("Usage (-want +got):\n%s\nLimit %q, want memory", diff, cb.Limit)
		}
	})

	t.Run("protojson-style numbers and no result", func(t *testing.T) {
		cb, err := r.Read(ctx, sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{
			"job_id": "9007199254740993", "delivery_id": "11", "attempts": 3, "status": "failed", "result": json.RawMessage("null"), "error": "too many attempts"}))
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if cb.JobID != 9007199254740993 || cb.DeliveryID != 11 || cb.Result != nil || cb.Status != StatusFailed || cb.Error != "too many attempts" {
			t.Fatalf("Read = %+v", cb)
		}
	})
}

func TestCallbackReaderMisconfigured(t *testing.T) {
	t.Parallel()
	ks := keysOnce()
	for _, tc := range []struct {
		name string
		r    *CallbackReader
		want string
	}{
		{"no platform", NewCallbackReader("", ks.platform, "", &ks.broker.PublicKey), "platform's name"},
		{"no key", NewCallbackReader(platformName, nil, "", &ks.broker.PublicKey), "private key"},
		{"no broker key", NewCallbackReader(platformName, ks.platform, ""), "broker's public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := tc.r.Read(context.Background(), "x.y.z"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Read: %v; want an error containing %q", err, tc.want)
			}
			rec := httptest.NewRecorder()
			tc.r.Handler(func(context.Context, Callback) error { return nil }).ServeHTTP(rec,
				httptest.NewRequest(http.MethodPost, "/cb", strings.NewReader(`{"token":"x.y.z"}`)))
			if rec.Code != http.StatusInternalServerError {
				t.Fatalf("Handler answered %d; want 500 so that the broker retries once the platform is fixed", rec.Code)
			}
		})
	}
}

func TestCallbackHandler(t *testing.T) {
	t.Parallel()
	ks := keysOnce()
	r := NewCallbackReader(platformName, ks.platform, "", &ks.broker.PublicKey)

	var (
		mu    sync.Mutex
		got   []Callback
		fails atomic.Int32 // how many calls of fn fail from now on
	)
	srv := httptest.NewServer(r.Handler(func(_ context.Context, cb Callback) error {
		if fails.Load() > 0 {
			fails.Add(-1)
			return errors.New("database is down")
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, cb)
		return nil
	}))
	t.Cleanup(srv.Close)

	post := func(t *testing.T, body string) (int, string) {
		t.Helper()
		resp, err := http.Post(srv.URL, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	body := func(tok string) string { return `{"token":"` + tok + `"}` }
	calls := func() []int64 {
		mu.Lock()
		defer mu.Unlock()
		var ids []int64
		for _, cb := range got {
			ids = append(ids, cb.DeliveryID)
		}
		return ids
	}

	// A delivery, then its retry (a new token for the same delivery).
	if code, msg := post(t, body(sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"delivery_id": 1}))); code != http.StatusOK {
		t.Fatalf("first delivery: %d %s", code, msg)
	}
	if code, msg := post(t, body(sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"delivery_id": 1}))); code != http.StatusOK || !strings.Contains(msg, "duplicate") {
		t.Fatalf("retried delivery: %d %s; want 200 duplicate", code, msg)
	}
	if diff := cmp.Diff([]int64{1}, calls()); diff != "" {
		t.Fatalf("fn calls (-want +got):\n%s", diff)
	}

	// fn fails: 500, and the very same token sent again is processed.
	fails.Store(1)
	tok := sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"delivery_id": 2})
	if code, msg := post(t, body(tok)); code != http.StatusInternalServerError || strings.Contains(msg, "database") {
		t.Fatalf("failing fn: %d %q; want 500 without fn's error", code, msg)
	}
	if code, msg := post(t, body(tok)); code != http.StatusOK || strings.Contains(msg, "duplicate") {
		t.Fatalf("same token after a failure: %d %s; want 200, processed", code, msg)
	}
	if code, msg := post(t, body(tok)); code != http.StatusOK || !strings.Contains(msg, "duplicate") {
		t.Fatalf("same token after success: %d %s; want 200 duplicate", code, msg)
	}
	if diff := cmp.Diff([]int64{1, 2}, calls()); diff != "" {
		t.Fatalf("fn calls (-want +got):\n%s", diff)
	}

	// Concurrent copies of one delivery call fn once.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if code, msg := post(t, body(sealCallback(t, ks.broker, &ks.platform.PublicKey, "", map[string]any{"delivery_id": 3}))); code != http.StatusOK {
				t.Errorf("concurrent delivery: %d %s", code, msg)
			}
		})
	}
	wg.Wait()
	if diff := cmp.Diff([]int64{1, 2, 3}, calls()); diff != "" {
		t.Fatalf("fn calls (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"not JSON", "token=abc", http.StatusBadRequest, `{"token"`},
		{"no token", `{}`, http.StatusBadRequest, `{"token"`},
		{"forged", body(sealCallback(t, ks.stranger, &ks.platform.PublicKey, "", map[string]any{"delivery_id": 4})), http.StatusBadRequest, "signature"},
		{"too large", `{"token":"` + strings.Repeat("a", maxCallbackBody) + `"}`, http.StatusRequestEntityTooLarge, "larger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, msg := post(t, tc.body); code != tc.code || !strings.Contains(msg, tc.want) {
				t.Fatalf("got %d %q; want %d containing %q", code, msg, tc.code, tc.want)
			}
		})
	}
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d; want 405", resp.StatusCode)
	}
	if diff := cmp.Diff([]int64{1, 2, 3}, calls()); diff != "" {
		t.Fatalf("refused requests called fn (-want +got):\n%s", diff)
	}
}
