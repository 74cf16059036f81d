package token

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker/token/tokentest"
)

const (
	brokerName   = "gradebroker-test"
	platformName = "france-ioi"
)

// testNow is the fixed clock of every Opener in the tests.
var testNow = time.Unix(1_800_000_000, 0)

func clock() time.Time { return testNow }

// testKeys are generated once per test binary: RSA key generation is the
// slowest thing these tests would otherwise do.
type testKeySet struct {
	broker, brokerNext, platform, stranger *rsa.PrivateKey
}

var keysOnce = sync.OnceValue(func() testKeySet {
	gen := func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	}
	var ks testKeySet
	var wg sync.WaitGroup
	for _, p := range []**rsa.PrivateKey{&ks.broker, &ks.brokerNext, &ks.platform, &ks.stranger} {
		wg.Go(func() { *p = gen() })
	}
	wg.Wait()
	return ks
})

func testKeys(tb testing.TB) testKeySet {
	tb.Helper()
	return keysOnce()
}

// countingGuard counts calls, so tests can check that refused tokens never
// reach the replay guard.
type countingGuard struct {
	inner ReplayGuard
	calls atomic.Int64
}

var _ ReplayGuard = (*countingGuard)(nil)

func (g *countingGuard) UseJTI(ctx context.Context, signer, jti string, expires time.Time) error {
	g.calls.Add(1)
	return g.inner.UseJTI(ctx, signer, jti, expires)
}

// acceptAll is a ReplayGuard that never refuses, for fuzzing and benchmarks
// that open the same token many times.
type acceptAll struct{}

func (acceptAll) UseJTI(context.Context, string, string, time.Time) error { return nil }

type fixture struct {
	keys   testKeySet
	ring   *KeyRing
	guard  *countingGuard
	opener *Opener
}

// setup returns an Opener for the broker side: the broker's current key
// (and next, if withNext), the test platform as the only signer, and a fresh
// replay guard on the test clock.
func setup(tb testing.TB, withNext bool) *fixture {
	tb.Helper()
	ks := testKeys(tb)
	var next *rsa.PrivateKey
	if withNext {
		next = ks.brokerNext
	}
	ring, err := NewKeyRing(ks.broker, next)
	if err != nil {
		tb.Fatal(err)
	}
	guard := &countingGuard{inner: &MemoryReplayGuard{Now: clock}}
	return &fixture{
		keys:  ks,
		ring:  ring,
		guard: guard,
		opener: &Opener{
			Keys:     ring,
			Signers:  StaticSigners{platformName: &ks.platform.PublicKey},
			Replay:   guard,
			Audience: brokerName,
			Now:      clock,
		},
	}
}

// omit marks a claim to leave out of payload.
type omitted struct{}

var omit = omitted{}

// payload returns a valid "test" request payload with the given claims
// changed (or, with omit, removed).
func payload(tb testing.TB, changes map[string]any) []byte {
	tb.Helper()
	m := map[string]any{
		"request": "test",
		"iat":     testNow.Unix(),
		"exp":     testNow.Add(5 * time.Minute).Unix(),
		"jti":     NewJTI(),
	}
	for k, v := range changes {
		if v == omit {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// seal is Seal from the test platform to the broker's current key.
func (f *fixture) seal(tb testing.TB, p []byte, compress bool) string {
	tb.Helper()
	tok, err := Seal(p, platformName, f.keys.platform, &f.keys.broker.PublicKey, f.ring.CurrentKID(), compress)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func b64(b []byte) string { return tokentest.B64(b) }

func handJWS(header string, p []byte, sign func(input []byte) []byte) string {
	return tokentest.JWS(header, p, sign)
}

func rs512(key *rsa.PrivateKey) func([]byte) []byte { return tokentest.RS512(key) }

func handJWE(tb testing.TB, header string, plaintext []byte, to *rsa.PublicKey) string {
	tb.Helper()
	return tokentest.JWE(tb, header, plaintext, to)
}

func handJWERaw(tb testing.TB, header string, content []byte, to *rsa.PublicKey) string {
	tb.Helper()
	return tokentest.JWERaw(tb, header, content, to)
}

func deflate(tb testing.TB, p []byte) []byte {
	tb.Helper()
	return tokentest.Deflate(tb, p)
}

func segment(compact string, i int, with string) string { return tokentest.Segment(compact, i, with) }

func flipByte(tb testing.TB, compact string, i, at int) string {
	tb.Helper()
	return tokentest.FlipByte(tb, compact, i, at)
}
