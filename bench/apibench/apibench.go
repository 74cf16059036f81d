// Package apibench measures the platform side of the broker: REST sendjob
// requests per second over HTTPS with valid tokens from many concurrent
// clients, beside the pure crypto cost of the same requests (one RSA-OAEP
// decryption and one RS512 verification each); batch submission; and result
// callbacks delivered per second to a local receiver. gbbench runs it as the
// "api" scenario.
package apibench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/bench"
	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/delivery"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
)

// Options tune a run. Zero fields take their defaults.
type Options struct {
	// Dir is the work directory (databases, keys); required.
	Dir string
	// Bits are the RSA key sizes to measure; default 2048 and 4096.
	Bits []int
	// Clients is how many concurrent HTTP clients send; default 64.
	Clients int
	// Window is how long each rate is measured; default 10 s.
	Window time.Duration
	// BatchJobs is the jobs per sendjobs token; default 100.
	BatchJobs int
	// Callbacks is how many result callbacks the delivery run sends; default 2,000.
	Callbacks int
	// Progress, if set, gets a line per step.
	Progress io.Writer
}

func (o *Options) defaults() {
	if len(o.Bits) == 0 {
		o.Bits = []int{2048, 4096}
	}
	if o.Clients <= 0 {
		o.Clients = 64
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Second
	}
	if o.BatchJobs <= 0 {
		o.BatchJobs = 100
	}
	if o.Callbacks <= 0 {
		o.Callbacks = 2000
	}
}

// Row is one key size's figures.
type Row struct {
	Bits        int
	CryptoRate  float64 // tokens opened per second, crypto only, on every core
	SendJobRate float64 // sendjob requests per second through the gateway
	Ratio       float64 // SendJobRate / CryptoRate
	BatchJobs   float64 // jobs per second with BatchJobs jobs per token
	Errors      int64   // non-2xx answers (should be 0)
}

// Result is a whole run.
type Result struct {
	Rows          []Row
	Clients       int
	BatchSize     int
	CallbackRate  float64 // callbacks acknowledged per second (2048-bit keys)
	CallbackCount int
}

func (o Options) progressf(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "apibench: "+format+"\n", args...)
	}
}

// Run measures every key size, then callbacks.
func Run(ctx context.Context, o Options) (Result, error) {
	o.defaults()
	dir, err := os.MkdirTemp(o.Dir, "apibench-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	o.Dir = dir
	res := Result{Clients: o.Clients, BatchSize: o.BatchJobs}
	for _, bits := range o.Bits {
		row, err := runBits(ctx, o, bits)
		if err != nil {
			return res, fmt.Errorf("%d-bit keys: %w", bits, err)
		}
		res.Rows = append(res.Rows, row)
	}
	rate, err := runCallbacks(ctx, o)
	if err != nil {
		return res, fmt.Errorf("callbacks: %w", err)
	}
	res.CallbackRate, res.CallbackCount = rate, o.Callbacks
	return res, nil
}

// env is a broker in-process with one platform.
type env struct {
	b          *brokerd.Broker
	url        string
	http       *http.Client
	brokerPub  *rsa.PublicKey
	brokerKey  *rsa.PrivateKey
	platKey    *rsa.PrivateKey
	platformID int64
}

func writeKey(path string, k *rsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func pubPEM(k *rsa.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(k)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// newEnv starts a broker whose token keys (broker and platform) have bits.
func newEnv(ctx context.Context, o Options, bits int, returnURL string) (e *env, err error) {
	dir, err := os.MkdirTemp(o.Dir, fmt.Sprintf("api%d-", bits))
	if err != nil {
		return nil, err
	}
	pki, err := bench.NewPKI(dir)
	if err != nil {
		return nil, err
	}
	e = &env{}
	if e.brokerKey, err = rsa.GenerateKey(rand.Reader, bits); err != nil {
		return nil, err
	}
	if e.platKey, err = rsa.GenerateKey(rand.Reader, bits); err != nil {
		return nil, err
	}
	e.brokerPub = &e.brokerKey.PublicKey
	keyFile := filepath.Join(dir, "broker-token.key")
	if err := writeKey(keyFile, e.brokerKey); err != nil {
		return nil, err
	}
	cfg := brokerd.DefaultConfig()
	cfg.Database = filepath.Join(dir, "api.db")
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.CAFile, cfg.CertFile, cfg.KeyFile, cfg.TokenKeyFile = pki.CAFile, pki.BrokerCert, pki.BrokerKey, keyFile
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := brokerd.New(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	db := b.DB()
	if _, err := db.AddTag(ctx, "bench", ""); err != nil {
		return nil, err
	}
	if _, err := db.AddServerType(ctx, "bench", []string{"bench"}); err != nil {
		return nil, err
	}
	p, err := db.AddPlatform(ctx, broker.Platform{Name: "bench", PublicKeyPEM: pubPEM(&e.platKey.PublicKey), ReturnURL: returnURL})
	if err != nil {
		return nil, err
	}
	e.platformID = p.ID
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	e.b = b
	e.url = "https://" + b.HTTPAddr()
	pool, err := certs.LoadCAPool(pki.CAFile)
	if err != nil {
		return nil, err
	}
	e.http = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		MaxIdleConnsPerHost: o.Clients, MaxConnsPerHost: o.Clients, ForceAttemptHTTP2: false,
	}}
	return e, nil
}

func (e *env) close() { e.b.Close() }

// tokens seals n tokens for request with fields, on every core.
func (e *env) tokens(n int, request string, fields func(i int) map[string]any) ([]string, error) {
	out := make([]string, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				now := time.Now()
				p := map[string]any{"request": request, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(), "jti": token.NewJTI()}
				for k, v := range fields(i) {
					p[k] = v
				}
				b, _ := json.Marshal(p)
				t, err := token.Seal(b, "bench", e.platKey, e.brokerPub, "", false)
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				out[i] = t
			}
		}()
	}
	wg.Wait()
	return out, firstErr
}

// cryptoRate opens pre-sealed tokens on every core for the window: the
// crypto-only ceiling of the API.
func cryptoRate(e *env, toks []string, window time.Duration) float64 {
	ring, _ := token.NewKeyRing(e.brokerKey, nil)
	o := &token.Opener{Keys: ring, Signers: token.StaticSigners{"bench": &e.platKey.PublicKey},
		Replay: token.NewMemoryReplayGuard(), Audience: "gradebroker"}
	var n atomic.Int64
	var next atomic.Int64
	deadline := time.Now().Add(window)
	start := time.Now()
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := int(next.Add(1)-1) % len(toks)
				// A fresh guard per pass would be needed to reuse tokens;
				// a replay error still costs the full crypto, which is
				// what is measured here.
				_, _, _ = o.Open(context.Background(), toks[i], "sendjob")
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// post sends tokens from clients goroutines until they run out or the
// window ends; it returns successes per second and failures.
func (e *env) post(path string, toks []string, clients int, window time.Duration) (float64, int64) {
	var next atomic.Int64
	var ok, bad atomic.Int64
	deadline := time.Now().Add(window)
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := int(next.Add(1) - 1)
				if i >= len(toks) {
					return
				}
				body, _ := json.Marshal(map[string]string{"token": toks[i]})
				resp, err := e.http.Post(e.url+path, "application/json", bytes.NewReader(body))
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(ok.Load()) / time.Since(start).Seconds(), bad.Load()
}

func runBits(ctx context.Context, o Options, bits int) (Row, error) {
	row := Row{Bits: bits}
	o.progressf("%d-bit keys: starting a broker", bits)
	e, err := newEnv(ctx, o, bits, "")
	if err != nil {
		return row, err
	}
	defer e.close()
	job := func(i int) map[string]any {
		return map[string]any{"tags": "bench", "jobname": "api", "jobdata": map[string]any{"i": i}}
	}
	// Enough tokens for the window at a generous rate; sealing is not timed.
	want := int(o.Window.Seconds() * 2500)
	if bits >= 4096 {
		want = int(o.Window.Seconds() * 500)
	}
	o.progressf("%d-bit keys: sealing %d tokens (not timed)", bits, want)
	toks, err := e.tokens(want, "sendjob", job)
	if err != nil {
		return row, err
	}
	o.progressf("%d-bit keys: crypto only for %s", bits, o.Window)
	row.CryptoRate = cryptoRate(e, toks[:min(len(toks), 2000)], o.Window)
	o.progressf("%d-bit keys: sendjob through the gateway, %d clients, %s", bits, o.Clients, o.Window)
	row.SendJobRate, row.Errors = e.post("/v1/jobs", toks, o.Clients, o.Window)
	row.Ratio = row.SendJobRate / row.CryptoRate

	batches := max(4, int(row.SendJobRate*o.Window.Seconds()/10))
	o.progressf("%d-bit keys: sendjobs, %d batches of %d", bits, batches, o.BatchJobs)
	btoks, err := e.tokens(batches, "sendjobs", func(i int) map[string]any {
		jobs := make([]map[string]any, o.BatchJobs)
		for k := range jobs {
			jobs[k] = job(i*o.BatchJobs + k)
		}
		return map[string]any{"jobs": jobs}
	})
	if err != nil {
		return row, err
	}
	start := time.Now()
	rate, bad := e.post("/v1/jobs:batch", btoks, min(o.Clients, 8), time.Hour)
	_ = start
	row.BatchJobs = rate * float64(o.BatchJobs)
	row.Errors += bad
	return row, nil
}

// runCallbacks queues final jobs with pending deliveries, starts a broker
// and times until its outbox worker has them all acknowledged by a local
// receiver that answers 204 without reading the token.
func runCallbacks(ctx context.Context, o Options) (float64, error) {
	var got atomic.Int64
	done := make(chan struct{})
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
		if got.Add(1) == int64(o.Callbacks) {
			close(done)
		}
	}))
	defer recv.Close()
	o.progressf("callbacks: starting a broker")
	e, err := newEnv(ctx, o, 2048, recv.URL+"/cb")
	if err != nil {
		return 0, err
	}
	defer e.close()
	// Stop the worker, queue the deliveries, start it again: the timed part
	// is only the sending.
	e.b.Delivery().Stop()
	db := e.b.DB()
	o.progressf("callbacks: making %d final jobs with pending deliveries", o.Callbacks)
	for done := 0; done < o.Callbacks; {
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			return 0, err
		}
		for k := 0; k < 500 && done < o.Callbacks; k++ {
			in, err := tx.InsertJob(broker.NewJob{PlatformID: e.platformID, Name: "cb", Tags: []string{"bench"},
				Timeout: time.Minute, JobData: []byte(`{}`), MaxAttempts: 3}, "apibench")
			if err != nil {
				tx.Rollback()
				return 0, err
			}
			if _, err := tx.Finish(in.ID, store.Final{State: broker.JobDone, Outcome: broker.OutcomeOK,
				Result: []byte(`{"score":100}`), Actor: "apibench"}); err != nil {
				tx.Rollback()
				return 0, err
			}
			done++
		}
		if err := tx.Commit(); err != nil {
			return 0, err
		}
	}
	w, err := delivery.New(db, e.b.KeyRing(), delivery.Config{Broker: "gradebroker"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := w.Start(ctx); err != nil {
		return 0, err
	}
	defer w.Stop()
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("only %d of %d callbacks in 10 minutes", got.Load(), o.Callbacks)
	}
	return float64(o.Callbacks) / time.Since(start).Seconds(), nil
}
