package token

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/gradebroker/gradebroker/broker/token/tokentest"
)

// TestDEFBomb sends 50 MiB of zeros deflated to about 50 kB. It must be
// refused as too large, having allocated a few MiB, not 50.
//
// Not parallel on purpose: parallel tests wait until the sequential ones are
// done, so the allocation count below is this test's alone.
func TestDEFBomb(t *testing.T) {
	f := setup(t, false)
	bomb := deflate(t, make([]byte, 50<<20))
	tok := handJWERaw(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","zip":"DEF","cty":"JWT"}`, bomb, &f.keys.broker.PublicKey)
	t.Logf("bomb: %d bytes deflated, token %d bytes", len(bomb), len(tok))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, _, err := f.opener.Open(context.Background(), tok, "test")
	runtime.ReadMemStats(&after)

	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Open: got %v, want ErrTooLarge", err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %.1f MiB while refusing it", float64(allocated)/(1<<20))
	// The inflate buffer grows by doubling up to MaxPlaintextBytes+1, so
	// about twice the limit in all, plus the token's own decoding.
	if limit := uint64(3*DefaultMaxPlaintextBytes + 4*len(tok)); allocated > limit {
		t.Errorf("allocated %d bytes refusing a DEF bomb; want at most %d", allocated, limit)
	}
}

// TestDEFHighRatio is the other side of the DEF limit: a legitimate payload
// that compresses more than tenfold must open as long as it inflates within
// MaxPlaintextBytes. go-jose's own Decrypt refuses it (it caps inflation at
// ten times the compressed size), which is why this package inflates by
// itself; the second half of the test pins that reason, so a go-jose upgrade
// that changes it shows up here.
func TestDEFHighRatio(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	p := payload(t, map[string]any{"jobdata": strings.Repeat("0", 2<<20)})
	tok := f.seal(t, p, true)
	_, got, err := f.opener.Open(context.Background(), tok, "test")
	if err != nil {
		t.Fatalf("Open of a %d-byte payload in a %d-byte token: %v", len(p), len(tok), err)
	}
	if !bytes.Equal(got, p) {
		t.Error("payload changed on the way")
	}

	jwe, err := jose.ParseEncryptedCompact(tok, []jose.KeyAlgorithm{jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256CBC_HS512})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwe.Decrypt(f.keys.broker); err == nil {
		t.Log("go-jose's Decrypt now inflates this token too; its limit has changed (see doc.go)")
	}
}

func TestInflateLimit(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("abcdefgh"), 1000) // 8000 bytes
	z := deflate(t, data)
	for _, tc := range []struct {
		limit int
		want  error
	}{
		{8000, nil},
		{7999, ErrTooLarge},
		{1, ErrTooLarge},
		{1 << 20, nil},
	} {
		got, err := inflate(z, tc.limit)
		if !errors.Is(err, tc.want) {
			t.Errorf("inflate(limit %d): got %v, want %v", tc.limit, err, tc.want)
		}
		if err == nil && !bytes.Equal(got, data) {
			t.Errorf("inflate(limit %d) returned other data", tc.limit)
		}
	}
	if _, err := inflate(nil, 100); !errors.Is(err, ErrMalformed) {
		t.Errorf("inflate(nil): got %v, want ErrMalformed", err)
	}
}

// TestInflateExactlyTheLimit inflates a plaintext of exactly limit bytes
// into a first buffer of exactly limit bytes, from a stream whose end comes
// after its data (the sender flushed before closing, which sync-flushing
// zlib callers do): the buffer is then full at the limit before inflate
// learns the stream has ended, and that is not past the limit.
func TestInflateExactlyTheLimit(t *testing.T) {
	t.Parallel()
	// inflate's first buffer holds 4*len(deflated)+512 bytes: look for a
	// plaintext that long. Its deflated length hardly changes with it, so
	// this settles in a few rounds.
	n := 512
	var data, z []byte
	for range 20 {
		data = bytes.Repeat([]byte("x"), n)
		z = tokentest.DeflateFlushed(t, data)
		if 4*len(z)+512 == n {
			break
		}
		n = 4*len(z) + 512
	}
	if 4*len(z)+512 != n {
		t.Fatalf("found no plaintext as long as inflate's first buffer (last tried %d bytes)", n)
	}
	got, err := inflate(z, n)
	if err != nil {
		t.Fatalf("inflate(%d bytes, limit %d): %v", n, n, err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("inflate returned other data")
	}
	if _, err := inflate(z, n-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("inflate(%d bytes, limit %d): got %v, want ErrTooLarge", n, n-1, err)
	}
}
