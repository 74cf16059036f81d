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
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
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
	// Window is how long each rate is measured, in all; default 8 s.
	Window time.Duration
	// Rounds is how many slices Window is cut into. The crypto-only rate
	// and the sendjob rate are measured in turn, slice by slice (crypto,
	// sendjob, sendjob, crypto, ...), so that both see the same machine
	// even when a neighbour takes a core for a while; default 5.
	Rounds int
	// BatchJobs is the jobs per sendjobs token; default 100.
	BatchJobs int
	// Callbacks is how many result callbacks the delivery run sends; default 2,000.
	Callbacks int
	// Child, if set, makes the command that runs ServeChild with args: the
	// sendjob and sendjobs rates are then measured against a broker in a
	// child process, whose own CPU time is read beside the clients'. Nil
	// runs that broker in this process.
	Child func(args []string) *exec.Cmd
	// CPUProfile, if set, is where a CPU profile of one extra sendjob
	// window (not counted in the figures) is written; with more than one
	// key size the size is appended ("api.prof.2048"). With Child it is
	// the broker process's alone.
	CPUProfile string
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
		o.Window = 8 * time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 5
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
	// CryptoCPU is the CPU time of one token, crypto only.
	CryptoCPU time.Duration
	// BrokerCPU is the broker's CPU time per sendjob request. With a
	// child, the child process's (user + system, Go runtime included); in
	// process, the samples of the broker's goroutines in CPU profiles of
	// the measured slices, split further in Open, Writer and the rest.
	BrokerCPU time.Duration
	// Open and Writer are the parts of BrokerCPU in token.Opener.Open (the
	// crypto-only work) and in the dispatcher's writer (SQLite); in
	// process only.
	Open, Writer time.Duration
	// ClientCPU is the benchmark's HTTP clients' CPU time per request: the
	// whole benchmark process's with a child, the clients' profile samples
	// in process.
	ClientCPU time.Duration
	// RuntimeCPU is, in process, the Go runtime's own work per request
	// (garbage collection, scheduler), which broker and clients share.
	RuntimeCPU time.Duration
	// CPURatio is CryptoCPU / BrokerCPU: the share of the broker's CPU
	// that the crypto-only work would take.
	CPURatio float64
	// JobsPerCommit is the sendjob requests per SQLite commit of the
	// dispatcher's writer (group commit).
	JobsPerCommit float64
	// CryptoIdle and SendJobIdle are the shares of the machine's CPU time
	// left idle while each was measured; -1 where /proc/stat is missing.
	CryptoIdle, SendJobIdle float64
	BatchJobs               float64 // jobs per second with BatchJobs jobs per token
	Errors                  int64   // non-2xx answers (should be 0)
}

// Result is a whole run.
type Result struct {
	Rows          []Row
	Clients       int
	Rounds        int
	Window        time.Duration
	Child         bool // the broker ran in a child process
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
	res := Result{Clients: o.Clients, Rounds: o.Rounds, Window: o.Window, Child: o.Child != nil, BatchSize: o.BatchJobs}
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

// env is a broker, in this process or a child, with one platform.
type env struct {
	b          *brokerd.Broker // nil when the broker is a child
	child      *child
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

// newEnv starts a broker whose token keys (broker and platform) have bits:
// a child process if child is set, else in this process.
func newEnv(ctx context.Context, o Options, bits int, returnURL string, child func([]string) *exec.Cmd) (e *env, err error) {
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
	dbFile := filepath.Join(dir, "api.db")
	db, err := store.Open(ctx, dbFile, store.Options{})
	if err != nil {
		return nil, err
	}
	err = func() error {
		defer db.Close()
		if _, err := db.AddTag(ctx, "bench", ""); err != nil {
			return err
		}
		if _, err := db.AddServerType(ctx, "bench", []string{"bench"}); err != nil {
			return err
		}
		p, err := db.AddPlatform(ctx, broker.Platform{Name: "bench", PublicKeyPEM: pubPEM(&e.platKey.PublicKey), ReturnURL: returnURL})
		e.platformID = p.ID
		return err
	}()
	if err != nil {
		return nil, err
	}
	cfg := brokerd.DefaultConfig()
	cfg.Database = dbFile
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CAFile, cfg.CertFile, cfg.KeyFile, cfg.TokenKeyFile = pki.CAFile, pki.BrokerCert, pki.BrokerKey, keyFile
	var addr string
	if child != nil {
		// As `broker serve` runs by default: logging at info, to a file.
		args := []string{"--name", cfg.Name, "--database", cfg.Database, "--grpc-addr", cfg.GRPCAddr,
			"--http-addr", cfg.HTTPAddr, "--metrics-addr", cfg.MetricsAddr, "--ca-file", cfg.CAFile,
			"--cert-file", cfg.CertFile, "--key-file", cfg.KeyFile, "--token-key-file", cfg.TokenKeyFile,
			"--log-level", "info"}
		if e.child, addr, err = startChild(child, args, filepath.Join(dir, "broker.log")); err != nil {
			return nil, err
		}
	} else {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		b, err := brokerd.New(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		// Every goroutine the broker starts inherits the label, which
		// tells its CPU from the clients' in a profile.
		pprof.Do(ctx, brokerLabels, func(ctx context.Context) { err = b.Start(ctx) })
		if err != nil {
			return nil, err
		}
		e.b, addr = b, b.HTTPAddr()
	}
	e.url = "https://" + addr
	tlsConfig, err := certs.GatewayClientTLSConfig(pki.CAFile)
	if err != nil {
		e.close()
		return nil, err
	}
	// No Client.Timeout, which costs a timer and a context per request:
	// the transport's header timeout stops a broker that hangs.
	e.http = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     tlsConfig,
		MaxIdleConnsPerHost: o.Clients, MaxConnsPerHost: o.Clients, ForceAttemptHTTP2: false,
		ResponseHeaderTimeout: time.Minute,
	}}
	return e, nil
}

func (e *env) close() error {
	if e.child != nil {
		return e.child.stop()
	}
	return e.b.Close()
}

// stats reads the broker's CPU time and commits. In process, the CPU time
// is the whole process's, clients included.
func (e *env) stats() (stats, error) {
	if e.child != nil {
		return e.child.stats()
	}
	batches, ops := writerStats(e.b.Metrics().Registry())
	return stats{cpu: processCPU(), batches: batches, ops: ops}, nil
}

// startProfile starts the broker's CPU profile, if asked for.
func (e *env) startProfile(o Options, bits int) (stop func() error, err error) {
	if o.CPUProfile == "" {
		return func() error { return nil }, nil
	}
	path := o.CPUProfile
	if len(o.Bits) > 1 {
		path = fmt.Sprintf("%s.%d", path, bits)
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, err
	}
	o.progressf("%d-bit keys: CPU profile of one more sendjob window (not counted) to %s", bits, path)
	if e.child != nil {
		if _, err := e.child.ask("profile " + path); err != nil {
			return nil, err
		}
		return func() error { _, err := e.child.ask("stop-profile"); return err }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

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

// acceptAll is a replay guard that remembers nothing, so that the
// crypto-only loop can open the same tokens again at full cost.
type acceptAll struct{}

func (acceptAll) UseJTI(context.Context, string, string, time.Time) error { return nil }

// cryptoSlice opens pre-sealed tokens on every core for d: the crypto-only
// ceiling of the API. It returns the tokens opened and the time taken.
func cryptoSlice(o *token.Opener, toks []string, d time.Duration) (int64, time.Duration) {
	var n, next atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				i := int(next.Add(1)-1) % len(toks)
				if _, _, err := o.Open(context.Background(), toks[i], "sendjob"); err == nil {
					n.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return n.Load(), time.Since(start)
}

// sender POSTs pre-made bodies to one path, each body once, from many
// clients at a time. Its clients are meant to cost little, since they share
// the machine with the broker: bodies marshalled beforehand, one request
// template, no per-request timer.
type sender struct {
	e       *env
	req     *http.Request // the template of every request
	bodies  [][]byte
	next    atomic.Int64
	ok, bad atomic.Int64
	stop    atomic.Bool
	wg      sync.WaitGroup
}

func newSender(e *env, path string, toks []string) *sender {
	req, err := http.NewRequest(http.MethodPost, e.url+path, nil)
	if err != nil {
		panic(err) // e.url is ours
	}
	req.Header.Set("Content-Type", "application/json")
	s := &sender{e: e, req: req, bodies: make([][]byte, len(toks))}
	for i, t := range toks {
		s.bodies[i], _ = json.Marshal(map[string]string{"token": t})
	}
	return s
}

// The labels of the broker's and the clients' goroutines in CPU profiles.
var (
	brokerLabels = pprof.Labels(labelKey, brokerValue)
	clientLabel  = pprof.Labels(labelKey, clientValue)
)

// start starts clients goroutines that send until halt or until the
// bodies run out.
func (s *sender) start(clients int) {
	s.stop.Store(false)
	for range clients {
		s.wg.Add(1)
		go pprof.Do(context.Background(), clientLabel, func(context.Context) {
			defer s.wg.Done()
			for !s.stop.Load() {
				i := int(s.next.Add(1) - 1)
				if i >= len(s.bodies) {
					return
				}
				// A new reader each time: the transport may still be
				// reading the last body after Do returns.
				req := *s.req // the header is only read
				req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(s.bodies[i])), int64(len(s.bodies[i]))
				resp, err := s.e.http.Do(&req)
				if err != nil {
					s.bad.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					s.ok.Add(1)
				} else {
					s.bad.Add(1)
				}
			}
		})
	}
}

// halt stops the clients and waits for their last answers.
func (s *sender) halt() {
	s.stop.Store(true)
	s.wg.Wait()
}

// add appends the bodies of more tokens; the clients must be halted.
func (s *sender) add(toks []string) {
	for _, t := range toks {
		b, _ := json.Marshal(map[string]string{"token": t})
		s.bodies = append(s.bodies, b)
	}
}

// exhausted says whether every body has been taken.
func (s *sender) exhausted() bool { return int(s.next.Load()) >= len(s.bodies) }

// run sends for d or until the bodies run out, whichever is first, and
// returns the 2xx answers, the others, and the time taken.
func (s *sender) run(clients int, d time.Duration) (ok, bad int64, took time.Duration) {
	ok0, bad0 := s.ok.Load(), s.bad.Load()
	start := time.Now()
	s.start(clients)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
	s.halt()
	return s.ok.Load() - ok0, s.bad.Load() - bad0, time.Since(start)
}

// sample is the counters at one moment of a sendjob slice.
type sample struct {
	at      time.Time
	ok      int64
	self    time.Duration // this process's CPU time
	broker  stats
	machine machineSample
}

func (s *sender) sample(e *env) (sample, error) {
	st, err := e.stats()
	return sample{at: time.Now(), ok: s.ok.Load(), self: processCPU(), broker: st, machine: sampleMachine()}, err
}

// slice measures sendjob in steady state: the clients start, and once
// ramp has passed (every client has had answers), the answers, the time
// and the CPU times are counted for d; answers still on their way at the
// end are not.
//
// With the broker in process, the counted part is CPU-profiled, and the
// profile split by label and function.
func (s *sender) slice(clients int, ramp, d time.Duration) (from, to sample, split cpuSplit, err error) {
	s.start(clients)
	defer s.halt()
	time.Sleep(ramp)
	var prof bytes.Buffer
	if s.e.child == nil {
		if err = pprof.StartCPUProfile(&prof); err != nil {
			return
		}
	}
	from, err = s.sample(s.e)
	if err == nil {
		time.Sleep(d)
		to, err = s.sample(s.e)
	}
	if s.e.child == nil {
		pprof.StopCPUProfile()
		if err == nil {
			split, err = splitProfile(prof.Bytes())
		}
	}
	if err == nil && s.exhausted() {
		err = errors.New("the sealed tokens ran out during a measurement; seal more")
	}
	return
}

// Bounds of the ramp before a sendjob slice is counted: twice the latency
// the warm-up saw, within these.
const (
	minRamp = 250 * time.Millisecond
	maxRamp = time.Second
)

func runBits(ctx context.Context, o Options, bits int) (row Row, err error) {
	row = Row{Bits: bits}
	where := "in this process"
	if o.Child != nil {
		where = "in a child process"
	}
	o.progressf("%d-bit keys: starting a broker %s", bits, where)
	e, err := newEnv(ctx, o, bits, "", o.Child)
	if err != nil {
		return row, err
	}
	defer func() {
		if cerr := e.close(); err == nil {
			err = cerr
		}
	}()
	job := func(i int) map[string]any {
		return map[string]any{"tags": "bench", "jobname": "api", "jobdata": map[string]any{"i": i}}
	}
	// Tokens are sealed before they are needed (sealing is not timed, and
	// running out is an error), and sealing is most of this scenario's
	// time: first enough for the warm-up at a generous rate per core (this
	// machine's 2 cores open about 1,400 and 300 a second), then, from the
	// rate the warm-up reached, twice what the window, its ramps and a
	// profiled window need (the warm-up's rate includes the TLS handshakes
	// and is lower than the steady one), and never less than the warm-up
	// sealed.
	perSec := 1000.0 * float64(runtime.NumCPU())
	if bits >= 4096 {
		perSec /= 5
	}
	warmup := time.Second
	o.progressf("%d-bit keys: sealing %d tokens for the warm-up (not timed)", bits, int(perSec*warmup.Seconds()))
	toks, err := e.tokens(int(perSec*warmup.Seconds()), "sendjob", job)
	if err != nil {
		return row, err
	}
	ring, err := token.NewKeyRing(e.brokerKey, nil)
	if err != nil {
		return row, err
	}
	opener := &token.Opener{Keys: ring, Signers: token.StaticSigners{"bench": &e.platKey.PublicKey},
		Replay: acceptAll{}, Audience: "gradebroker"}
	s := newSender(e, "/v1/jobs", toks)

	// Warm-up, not timed: TLS handshakes, the database's first pages, and
	// the latency that sets how long each slice ramps up.
	ok, _, took := s.run(o.Clients, warmup)
	if s.exhausted() {
		return row, fmt.Errorf("%d-bit keys: the warm-up used all %d tokens; raise the rate per core in apibench", bits, len(toks))
	}
	secs := o.Window.Seconds() + float64(o.Rounds)*maxRamp.Seconds() + 1
	if o.CPUProfile != "" {
		secs += o.Window.Seconds()
	}
	more := max(len(toks), int(2*float64(ok)/warmup.Seconds()*secs)+o.Clients)
	o.progressf("%d-bit keys: warm-up at %d requests/s; sealing %d more tokens (not timed)", bits, int(float64(ok)/warmup.Seconds()), more)
	extra, err := e.tokens(more, "sendjob", job)
	if err != nil {
		return row, err
	}
	s.add(extra)
	toks = append(toks, extra...)
	ramp := maxRamp
	if ok > 0 {
		ramp = min(maxRamp, max(minRamp, 2*time.Duration(o.Clients)*took/time.Duration(ok)))
	}
	slice := o.Window / time.Duration(o.Rounds)
	o.progressf("%d-bit keys: crypto only and sendjob (%d clients) in turn, %d × %s each (sendjob counted after a %s ramp)",
		bits, o.Clients, o.Rounds, slice, ramp.Round(time.Millisecond))
	var opened, sent int64
	var cryptoWall, sendWall, cryptoCPU, clientCPU, brokerCPU time.Duration
	var batches, ops uint64
	var cryptoIdle, sendIdle idleMeter
	var split cpuSplit
	for r := range 2 * o.Rounds {
		if (r/2+r)%2 == 0 { // crypto, sendjob, sendjob, crypto, ...
			c0, m0 := processCPU(), sampleMachine()
			n, took := cryptoSlice(opener, toks[:min(len(toks), 2000)], slice)
			cryptoCPU += processCPU() - c0
			cryptoIdle.add(m0, sampleMachine())
			opened, cryptoWall = opened+n, cryptoWall+took
			continue
		}
		from, to, sp, err := s.slice(o.Clients, ramp, slice)
		if err != nil {
			return row, err
		}
		split.add(sp)
		sent += to.ok - from.ok
		sendWall += to.at.Sub(from.at)
		clientCPU += to.self - from.self
		brokerCPU += to.broker.cpu - from.broker.cpu
		batches += to.broker.batches - from.broker.batches
		ops += to.broker.ops - from.broker.ops
		sendIdle.add(from.machine, to.machine)
	}
	row.CryptoIdle, row.SendJobIdle = cryptoIdle.idle(), sendIdle.idle()
	row.Errors += s.bad.Load() // the warm-up's too
	row.CryptoRate = float64(opened) / cryptoWall.Seconds()
	row.SendJobRate = float64(sent) / sendWall.Seconds()
	row.Ratio = row.SendJobRate / row.CryptoRate
	if opened > 0 && sent > 0 {
		row.CryptoCPU = cryptoCPU / time.Duration(opened)
		if e.child != nil {
			row.BrokerCPU = brokerCPU / time.Duration(sent)
			row.ClientCPU = clientCPU / time.Duration(sent)
		} else {
			p := split.per(sent)
			row.BrokerCPU, row.Open, row.Writer = p.brokerTotal(), p.Open, p.Writer
			row.ClientCPU, row.RuntimeCPU = p.Clients, p.Runtime
		}
		if row.BrokerCPU > 0 {
			row.CPURatio = float64(row.CryptoCPU) / float64(row.BrokerCPU)
		}
	}
	if batches > 0 {
		row.JobsPerCommit = float64(ops) / float64(batches)
	}
	us := func(d time.Duration) string { return d.Round(time.Microsecond).String() }
	o.progressf("%d-bit keys: crypto only %.0f tokens/s, sendjob %.0f requests/s (%.0f %%); CPU per token %s; per request: broker %s (%.0f %%; Open %s, writer %s), clients %s, runtime %s; %.1f jobs per commit; idle %.1f %% / %.1f %%",
		bits, row.CryptoRate, row.SendJobRate, 100*row.Ratio, us(row.CryptoCPU), us(row.BrokerCPU), 100*row.CPURatio,
		us(row.Open), us(row.Writer), us(row.ClientCPU), us(row.RuntimeCPU), row.JobsPerCommit,
		100*row.CryptoIdle, 100*row.SendJobIdle)

	if o.CPUProfile != "" {
		stop, err := e.startProfile(o, bits)
		if err != nil {
			return row, err
		}
		ok, bad, took := s.run(o.Clients, o.Window)
		row.Errors += bad
		o.progressf("%d-bit keys: profiled window: %.0f requests/s", bits, float64(ok)/took.Seconds())
		if err := stop(); err != nil {
			return row, err
		}
	}

	batchTokens := max(4, int(row.SendJobRate*o.Window.Seconds()/10))
	o.progressf("%d-bit keys: sendjobs, %d batches of %d", bits, batchTokens, o.BatchJobs)
	btoks, err := e.tokens(batchTokens, "sendjobs", func(i int) map[string]any {
		jobs := make([]map[string]any, o.BatchJobs)
		for k := range jobs {
			jobs[k] = job(i*o.BatchJobs + k)
		}
		return map[string]any{"jobs": jobs}
	})
	if err != nil {
		return row, err
	}
	bok, bbad, btook := newSender(e, "/v1/jobs:batch", btoks).run(min(o.Clients, 8), time.Hour)
	row.BatchJobs = float64(bok) / btook.Seconds() * float64(o.BatchJobs)
	row.Errors += bbad
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
	e, err := newEnv(ctx, o, 2048, recv.URL+"/cb", nil)
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
