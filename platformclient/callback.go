package platformclient

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker/token"
)

// The statuses of a callback.
const (
	// StatusDone means the grader returned a final result.
	StatusDone = "done"
	// StatusFailed means the job failed for good: a fatal error, or too
	// many attempts.
	StatusFailed = "failed"
	// StatusCancelled means the platform or an operator cancelled the job.
	StatusCancelled = "cancelled"
)

// DefaultBroker is the broker's name unless its operator chose another: the
// kid of its callback tokens.
const DefaultBroker = "gradebroker"

// dedupWindow is how long Handler remembers a delivery it handled. It must
// outlast the broker's retries of one callback, which re-send a delivery
// whose acknowledgement was lost.
const dedupWindow = 7 * 24 * time.Hour

// maxCallbackBody bounds a callback request's body: the largest token the
// token package accepts, plus the JSON around it.
const maxCallbackBody = token.DefaultMaxTokenBytes + 4096

// Callback is a result callback from the broker, decrypted and verified.
type Callback struct {
	// JobID is the job's id, as SendJob returned it.
	JobID int64
	// Jobname is the job's name.
	Jobname string
	// IdempotencyKey is the platform's idempotency key for the job, if any.
	IdempotencyKey string
	// Status is StatusDone, StatusFailed or StatusCancelled.
	Status string
	// Result is the grader's result (JSON), nil when there is none.
	Result json.RawMessage
	// Error says why the job failed or was cancelled.
	Error string
	// Attempts is how many attempts the job took.
	Attempts uint32
	// Server is the server of the last attempt.
	Server string
	// Usage is what the last attempt's run used, as its grading server
	// measured it; nil when it reported nothing (or the job never ran).
	Usage *Usage
	// Limit names the limit that ended the last attempt's run: "wall_time",
	// "cpu_time", "memory", "pids", "output" or "disk"; "" when none did.
	Limit string
	// DeliveryID identifies the delivery: it is the same on every retry of
	// one callback, so a platform can drop duplicates by it.
	DeliveryID int64
	// IssuedAt is the token's iat.
	IssuedAt time.Time
	// Payload is the verified JSON payload as the broker sent it, claims
	// included.
	Payload json.RawMessage
}

// Usage is what one grading run used, all its processes together. The
// callback carries whole milliseconds.
type Usage struct {
	// CPUTime is user and system CPU time.
	CPUTime time.Duration
	// PeakMemoryBytes is the highest memory use seen.
	PeakMemoryBytes int64
	// WallTime is the time from the run's start to its end.
	WallTime time.Duration
}

// flexInt is an integer sent as a JSON number or, as protojson writes
// 64-bit integers, as a string holding one.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := string(bytes.TrimSpace(b))
	if s == "null" {
		return nil
	}
	if len(s) > 0 && s[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("%s is not an integer", s)
	}
	*f = flexInt(v)
	return nil
}

// callbackPayload is the JSON of a callback; see CallbackPayload in
// proto/gradebroker/v1/platform.proto.
type callbackPayload struct {
	JobID          flexInt         `json:"job_id"`
	Jobname        string          `json:"jobname"`
	IdempotencyKey string          `json:"idempotency_key"`
	Status         string          `json:"status"`
	Result         json.RawMessage `json:"result"`
	Error          string          `json:"error"`
	Attempts       flexInt         `json:"attempts"`
	Server         string          `json:"server"`
	Usage          *struct {
		CPUTimeMS       flexInt `json:"cpu_time_ms"`
		PeakMemoryBytes flexInt `json:"peak_memory_bytes"`
		WallTimeMS      flexInt `json:"wall_time_ms"`
	} `json:"usage"`
	Limit      string  `json:"limit"`
	DeliveryID flexInt `json:"delivery_id"`
}

// CallbackReader opens the callbacks a broker sends to one platform: tokens
// encrypted to the platform's key and signed by the broker (RS512, kid = the
// broker's name), whose aud must name the platform. It is safe for
// concurrent use.
type CallbackReader struct {
	platform string
	broker   string
	keys     []*rsa.PublicKey
	ring     *token.KeyRing
	err      error // why the reader cannot work; every Read returns it
	guard    *token.MemoryReplayGuard

	mu        sync.Mutex
	handled   map[string]*handling // by delivery
	nextSweep int
}

// handling is one delivery as Handler saw it.
type handling struct {
	done chan struct{} // closed when the first handling of it ended
	ok   bool          // fn succeeded; set before done is closed
	at   time.Time     // when it succeeded
}

// NewCallbackReader returns a reader for callbacks to platform, decrypted
// with key, the platform's token private key, and signed by broker (its
// name; empty means DefaultBroker) with one of brokerKeys: the broker's
// current token key, and during a rotation its next one too. If a key is
// missing or unusable, every Read says why.
func NewCallbackReader(platform string, key *rsa.PrivateKey, broker string, brokerKeys ...*rsa.PublicKey) *CallbackReader {
	if broker == "" {
		broker = DefaultBroker
	}
	r := &CallbackReader{platform: platform, broker: broker, guard: token.NewMemoryReplayGuard(), handled: map[string]*handling{}}
	for _, k := range brokerKeys {
		if k != nil {
			r.keys = append(r.keys, k)
		}
	}
	switch {
	case platform == "":
		r.err = errors.New("the platform's name is required: callbacks must carry it as aud")
	case key == nil:
		r.err = errors.New("the platform's private key is required")
	case len(r.keys) == 0:
		r.err = errors.New("the broker's public key is required: it signs the callbacks")
	default:
		// The ring publishes the key under its RFC 7638 thumbprint, which
		// is the kid a broker puts in the JWE header when it names one.
		if r.ring, r.err = token.NewKeyRing(key, nil); r.err != nil {
			r.err = fmt.Errorf("the platform's private key: %w", r.err)
		}
	}
	if r.err != nil {
		r.err = fmt.Errorf("platformclient: callback reader: %w", r.err)
	}
	return r
}

// Read decrypts and verifies a callback token and returns its content. It
// refuses a token that is not from the broker, is not for this platform, has
// expired, or was read before (an error wrapping token.ErrReplayed); token
// errors wrap the token package's sentinels.
func (r *CallbackReader) Read(ctx context.Context, compactToken string) (Callback, error) {
	cb, _, err := r.open(ctx, compactToken, r.guard)
	return cb, err
}

// open reads a callback, recording its jti in guard.
func (r *CallbackReader) open(ctx context.Context, compact string, guard token.ReplayGuard) (Callback, token.Claims, error) {
	if r.err != nil {
		return Callback{}, token.Claims{}, r.err
	}
	var err error
	for _, k := range r.keys {
		o := &token.Opener{Keys: r.ring, Signers: token.StaticSigners{r.broker: k}, Replay: guard, Audience: r.platform}
		var (
			claims  token.Claims
			payload []byte
		)
		claims, payload, err = o.OpenCallback(ctx, compact)
		if errors.Is(err, token.ErrBadSignature) {
			// Perhaps signed with the broker's other key; the jti is only
			// recorded once a signature verifies, so trying again is safe.
			continue
		}
		if err != nil {
			break
		}
		var p callbackPayload
		if err := json.Unmarshal(payload, &p); err != nil {
			return Callback{}, claims, fmt.Errorf("platformclient: callback payload: %w", err)
		}
		if string(bytes.TrimSpace(p.Result)) == "null" {
			p.Result = nil
		}
		if p.Attempts < 0 || p.Attempts > 1<<32-1 {
			return Callback{}, claims, fmt.Errorf("platformclient: callback payload: attempts %d is out of range", p.Attempts)
		}
		var usage *Usage
		if u := p.Usage; u != nil {
			usage = &Usage{CPUTime: time.Duration(u.CPUTimeMS) * time.Millisecond, PeakMemoryBytes: int64(u.PeakMemoryBytes),
				WallTime: time.Duration(u.WallTimeMS) * time.Millisecond}
		}
		return Callback{
			JobID:          int64(p.JobID),
			Jobname:        p.Jobname,
			IdempotencyKey: p.IdempotencyKey,
			Status:         p.Status,
			Result:         p.Result,
			Error:          p.Error,
			Attempts:       uint32(p.Attempts),
			Server:         p.Server,
			Usage:          usage,
			Limit:          p.Limit,
			DeliveryID:     int64(p.DeliveryID),
			IssuedAt:       claims.IssuedAt,
			Payload:        payload,
		}, claims, nil
	}
	return Callback{}, token.Claims{}, fmt.Errorf("platformclient: callback refused: %w", err)
}

// anyJTI lets every jti through: Handler drops duplicates by delivery
// instead, which also covers a broker that re-sends the very same token
// after a failure, when refusing its jti would lose the result.
type anyJTI struct{}

func (anyJTI) UseJTI(context.Context, string, string, time.Time) error { return nil }

// Handler returns the http.Handler to serve at the platform's return_url. It
// reads {"token": "..."} from a POST, opens the token and calls fn with the
// callback. It answers 200 when fn succeeds, 400 (413 if too large) for a
// request or token it refuses, and 500 when fn fails or the reader is
// misconfigured, so that the broker retries later. A delivery already
// handled successfully (the same delivery_id, in this process, within a
// week) is answered 200 without calling fn again, and a copy that arrives
// while the first is being handled waits for its outcome. Unlike Read,
// Handler does not refuse a token whose jti it has seen: a token sent again
// after fn failed must still be processed, so duplicates are dropped by
// delivery instead. A platform that must never see a result twice across
// restarts should also check DeliveryID or JobID in its own database.
func (r *CallbackReader) Handler(fn func(context.Context, Callback) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "callbacks are POSTed", http.StatusMethodNotAllowed)
			return
		}
		if r.err != nil {
			http.Error(w, "the platform cannot read callbacks yet: its callback reader is misconfigured", http.StatusInternalServerError)
			return
		}
		var body struct {
			Token string `json:"token"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxCallbackBody)).Decode(&body); err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				http.Error(w, fmt.Sprintf("the body is larger than %d bytes", maxCallbackBody), http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, `the body must be {"token": "<compact JWE>"}`, http.StatusBadRequest)
			return
		}
		if body.Token == "" {
			http.Error(w, `the body must be {"token": "<compact JWE>"}`, http.StatusBadRequest)
			return
		}
		cb, claims, err := r.open(req.Context(), body.Token, anyJTI{})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		key := "delivery:" + strconv.FormatInt(cb.DeliveryID, 10)
		if cb.DeliveryID == 0 {
			key = "jti:" + claims.JTI
		}
		dup, err := r.handle(req.Context(), key, func() error { return fn(req.Context(), cb) })
		switch {
		case err != nil:
			// fn's error is the platform's business, not the broker's.
			http.Error(w, "the platform could not process the callback; retry later", http.StatusInternalServerError)
		case dup:
			fmt.Fprintf(w, "duplicate: delivery %d was already processed\n", cb.DeliveryID)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
}

// handle runs process for the delivery named key unless it already
// succeeded (dup is then true). A concurrent duplicate waits for the first
// and shares its outcome.
func (r *CallbackReader) handle(ctx context.Context, key string, process func() error) (dup bool, err error) {
	r.mu.Lock()
	if h, ok := r.handled[key]; ok {
		r.mu.Unlock()
		select {
		case <-h.done:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		if !h.ok {
			return false, errors.New("a concurrent delivery of the same callback failed")
		}
		return true, nil
	}
	h := &handling{done: make(chan struct{})}
	r.handled[key] = h
	r.sweepLocked(time.Now())
	r.mu.Unlock()

	succeeded := false
	// Deferred so that a panicking fn (which net/http recovers) does not
	// leave the delivery marked as in progress for ever.
	defer func() {
		r.mu.Lock()
		if succeeded {
			h.ok, h.at = true, time.Now()
		} else {
			delete(r.handled, key)
		}
		r.mu.Unlock()
		close(h.done)
	}()
	err = process()
	succeeded = err == nil
	return false, err
}

// sweepLocked forgets deliveries handled longer than dedupWindow ago, when
// the map has doubled since the last sweep, so that the cost stays O(1) per
// callback. r.mu must be held.
func (r *CallbackReader) sweepLocked(now time.Time) {
	if len(r.handled) < r.nextSweep {
		return
	}
	for k, h := range r.handled {
		if h.ok && now.Sub(h.at) > dedupWindow {
			delete(r.handled, k)
		}
	}
	r.nextSweep = max(1024, 2*len(r.handled))
}
