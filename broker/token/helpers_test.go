package token

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	josecipher "github.com/go-jose/go-jose/v4/cipher"
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

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// handJWS builds a compact JWS from a literal header, the way a library in
// another language would, signing the input with sign (nil: no signature).
func handJWS(header string, p []byte, sign func(input []byte) []byte) string {
	input := b64([]byte(header)) + "." + b64(p)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(input))
	}
	return input + "." + b64(sig)
}

// rs512 signs with RSASSA-PKCS1-v1_5 and SHA-512, straight from crypto/rsa.
func rs512(key *rsa.PrivateKey) func([]byte) []byte {
	return func(input []byte) []byte {
		sum := sha512.Sum512(input)
		sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA512, sum[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
}

// handJWE builds a compact JWE from a literal protected header by following
// RFC 7516 §5.1 and RFC 7518 §4.3 and §5.2 step by step: a random CEK
// wrapped with RSA-OAEP-256, A256CBC-HS512 over the plaintext, with the
// protected header's base64url as AAD. If the header has "zip":"DEF" the
// plaintext is deflated first.
func handJWE(tb testing.TB, header string, plaintext []byte, to *rsa.PublicKey) string {
	tb.Helper()
	if strings.Contains(header, `"zip":"DEF"`) {
		plaintext = deflate(tb, plaintext)
	}
	return handJWERaw(tb, header, plaintext, to)
}

// handJWERaw is handJWE without the deflating: content is encrypted as is,
// whatever the header says.
func handJWERaw(tb testing.TB, header string, content []byte, to *rsa.PublicKey) string {
	tb.Helper()
	plaintext := content
	cek := make([]byte, 64)
	iv := make([]byte, 16)
	rand.Read(cek)
	rand.Read(iv)
	ek, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, to, cek, nil)
	if err != nil {
		tb.Fatal(err)
	}
	aead, err := josecipher.NewCBCHMAC(cek, aes.NewCipher)
	if err != nil {
		tb.Fatal(err)
	}
	prot := b64([]byte(header))
	sealed := aead.Seal(nil, iv, plaintext, []byte(prot))
	ct, tag := sealed[:len(sealed)-32], sealed[len(sealed)-32:]
	return strings.Join([]string{prot, b64(ek), b64(iv), b64(ct), b64(tag)}, ".")
}

func deflate(tb testing.TB, p []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		tb.Fatal(err)
	}
	w.Write(p)
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// segment replaces part i of a compact serialization.
func segment(compact string, i int, with string) string {
	parts := strings.Split(compact, ".")
	parts[i] = with
	return strings.Join(parts, ".")
}

// flipByte decodes part i, flips one bit of byte at, and re-encodes it.
func flipByte(tb testing.TB, compact string, i, at int) string {
	tb.Helper()
	parts := strings.Split(compact, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		tb.Fatal(err)
	}
	b[at] ^= 0x01
	parts[i] = b64(b)
	return strings.Join(parts, ".")
}
