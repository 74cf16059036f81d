package token

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
)

var consoleKey = bytes.Repeat([]byte{7}, 32)

func TestConsoleLoginRoundTrip(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	in := ConsoleLogin{JTI: "j1", Expires: now.Add(5 * time.Minute), Name: "TA Bob", Role: "viewer",
		Tags: []string{"course-a"}, SessionTTL: 8 * time.Hour, CreatedBy: "alice"}
	tok, err := SignConsoleLogin(consoleKey, in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyConsoleLogin(consoleKey, tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, got); diff != "" {
		t.Errorf("claims read back (-signed +verified):\n%s", diff)
	}

	other := bytes.Repeat([]byte{8}, 32)
	hs512, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS512, Key: append(consoleKey, consoleKey...)}, (&jose.SignerOptions{}).WithType(consoleLoginType))
	sig512, _ := hs512.Sign([]byte(`{"jti":"j","exp":9999999999,"role":"operator","name":"x"}`))
	tok512, _ := sig512.CompactSerialize()
	untyped, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: consoleKey}, nil)
	sigU, _ := untyped.Sign([]byte(`{"jti":"j","exp":9999999999,"role":"operator","name":"x"}`))
	tokU, _ := sigU.CompactSerialize()
	parts := strings.Split(tok, ".")
	for _, c := range []struct {
		name string
		key  []byte
		tok  string
		at   time.Time
		want error
	}{
		{"expired", consoleKey, tok, now.Add(5 * time.Minute), ErrExpired},
		{"another key", other, tok, now, ErrBadSignature},
		{"altered claims", consoleKey, parts[0] + "." + parts[1] + "x." + parts[2], now, ErrBadSignature},
		{"HS512", consoleKey, tok512, now, ErrMalformed},
		{"no typ", consoleKey, tokU, now, ErrMalformed},
		{"garbage", consoleKey, "a.b.c", now, ErrMalformed},
		{"too large", consoleKey, strings.Repeat("a", 5000), now, ErrTooLarge},
	} {
		if _, err := VerifyConsoleLogin(c.key, c.tok, c.at); !errors.Is(err, c.want) {
			t.Errorf("%s: VerifyConsoleLogin = %v; want %v", c.name, err, c.want)
		}
	}
	if _, err := SignConsoleLogin(consoleKey[:16], in); err == nil {
		t.Error("a 16-byte key was accepted")
	}
}

// TestConsoleLoginAtTheSizeLimit verifies a login token of exactly the
// largest size accepted, and refuses one a byte longer.
func TestConsoleLoginAtTheSizeLimit(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	// A long name makes a long token; base64 skips some lengths, so look
	// for the name that makes it exactly the limit.
	var tok string
	for n := 0; n < maxConsoleLoginBytes && len(tok) < maxConsoleLoginBytes; n++ {
		var err error
		tok, err = SignConsoleLogin(consoleKey, ConsoleLogin{JTI: "j1", Expires: now.Add(time.Minute), Name: strings.Repeat("n", n), Role: "viewer"})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(tok) != maxConsoleLoginBytes {
		t.Fatalf("made no login token of exactly %d bytes (the nearest was %d)", maxConsoleLoginBytes, len(tok))
	}
	if _, err := VerifyConsoleLogin(consoleKey, tok, now); err != nil {
		t.Errorf("a token of exactly %d bytes: %v", len(tok), err)
	}
	if _, err := VerifyConsoleLogin(consoleKey, tok+"x", now); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a token of %d bytes: got %v, want ErrTooLarge", len(tok)+1, err)
	}
}

// FuzzVerifyConsoleLogin feeds VerifyConsoleLogin what a browser may post:
// it must never panic, and never accept what the key did not sign.
func FuzzVerifyConsoleLogin(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	tok, err := SignConsoleLogin(consoleKey, ConsoleLogin{JTI: "j", Expires: now.Add(time.Minute), Name: "n", Role: "operator"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := VerifyConsoleLogin(consoleKey, s, now)
		if err == nil && s != tok {
			// Another serialisation of the same signed payload is fine;
			// anything else verifying would be a forgery.
			if l.JTI != "j" {
				t.Fatalf("accepted a token the key did not sign: %q", s)
			}
		}
	})
}
