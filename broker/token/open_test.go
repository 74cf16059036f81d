package token

import (
	"context"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
)

func TestSealOpenRoundTrip(t *testing.T) {
	t.Parallel()
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			t.Parallel()
			f := setup(t, false)
			p := payload(t, map[string]any{
				"request": "sendjob",
				"aud":     brokerName,
				"jobdata": map[string]any{"source": strings.Repeat("print(42)\n", 500)},
			})
			tok := f.seal(t, p, compress)

			claims, got, err := f.opener.Open(context.Background(), tok, "sendjob")
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			var m map[string]any
			json.Unmarshal(p, &m)
			want := Claims{
				Signer:   platformName,
				Request:  "sendjob",
				IssuedAt: testNow,
				Expires:  testNow.Add(5 * time.Minute),
				JTI:      m["jti"].(string),
				Audience: []string{brokerName},
			}
			if diff := cmp.Diff(want, claims); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
			if string(got) != string(p) {
				t.Errorf("payload changed on the way:\n got %s\nwant %s", got, p)
			}
			if n := f.guard.calls.Load(); n != 1 {
				t.Errorf("replay guard called %d times, want 1", n)
			}
		})
	}
}

// TestOpenRefuses has one case per way a token can be wrong. None of them
// may reach the replay guard.
func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	brokerPub := &ks.broker.PublicKey
	good := func(t *testing.T) []byte { return payload(t, nil) }
	signed := func(t *testing.T, p []byte) []byte {
		return []byte(handJWS(`{"alg":"RS512","kid":"`+platformName+`"}`, p, rs512(ks.platform)))
	}
	const jweHeader = `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","cty":"JWT"}`
	withClaims := func(changes map[string]any) func(t *testing.T, f *fixture) string {
		return func(t *testing.T, f *fixture) string { return f.seal(t, payload(t, changes), false) }
	}
	goJose := func(alg jose.KeyAlgorithm, enc jose.ContentEncryption) func(t *testing.T, f *fixture) string {
		return func(t *testing.T, f *fixture) string {
			e, err := jose.NewEncrypter(enc, jose.Recipient{Algorithm: alg, Key: brokerPub}, nil)
			if err != nil {
				t.Fatal(err)
			}
			obj, err := e.Encrypt(signed(t, good(t)))
			if err != nil {
				t.Fatal(err)
			}
			s, err := obj.CompactSerialize()
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	innerJWS := func(header string, sign func([]byte) []byte) func(t *testing.T, f *fixture) string {
		return func(t *testing.T, f *fixture) string {
			return handJWE(t, jweHeader, []byte(handJWS(header, good(t), sign)), brokerPub)
		}
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&ks.platform.PublicKey))})
	hs512 := func(key []byte) func([]byte) []byte {
		return func(input []byte) []byte {
			m := hmac.New(sha512.New, key)
			m.Write(input)
			return m.Sum(nil)
		}
	}
	deep := strings.Repeat("[", 100) + strings.Repeat("]", 100)

	tests := []struct {
		name    string
		token   func(t *testing.T, f *fixture) string
		want    error
		request string // default "test"
		limits  Limits
	}{
		{"wrong broker key", func(t *testing.T, f *fixture) string {
			tok, err := Seal(good(t), platformName, ks.platform, &ks.stranger.PublicKey, "", false)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, ErrDecrypt, "", Limits{}},
		{"unknown JWE kid", func(t *testing.T, f *fixture) string {
			tok, err := Seal(good(t), platformName, ks.platform, brokerPub, "retired-key", false)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, ErrDecrypt, "", Limits{}},
		{"tampered ciphertext", func(t *testing.T, f *fixture) string {
			return flipByte(t, f.seal(t, good(t), false), 3, 40)
		}, ErrDecrypt, "", Limits{}},
		{"tampered tag", func(t *testing.T, f *fixture) string {
			return flipByte(t, f.seal(t, good(t), false), 4, 0)
		}, ErrDecrypt, "", Limits{}},
		{"tampered IV", func(t *testing.T, f *fixture) string {
			return flipByte(t, f.seal(t, good(t), false), 2, 0)
		}, ErrDecrypt, "", Limits{}},
		{"tampered encrypted key", func(t *testing.T, f *fixture) string {
			return flipByte(t, f.seal(t, good(t), false), 1, 10)
		}, ErrDecrypt, "", Limits{}},
		{"protected header swapped", func(t *testing.T, f *fixture) string {
			// Same alg and enc, but the header is not the one the tag covers.
			return segment(f.seal(t, good(t), false), 0, b64([]byte(`{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512"}`)))
		}, ErrDecrypt, "", Limits{}},
		{"missing JWS kid", innerJWS(`{"alg":"RS512"}`, rs512(ks.platform)), ErrUnknownSigner, "", Limits{}},
		{"empty JWS kid", innerJWS(`{"alg":"RS512","kid":""}`, rs512(ks.platform)), ErrUnknownSigner, "", Limits{}},
		{"unknown JWS kid", innerJWS(`{"alg":"RS512","kid":"someone-else"}`, rs512(ks.platform)), ErrUnknownSigner, "", Limits{}},
		{"signed by a different key", innerJWS(`{"alg":"RS512","kid":"`+platformName+`"}`, rs512(ks.stranger)), ErrBadSignature, "", Limits{}},
		{"JWS payload swapped", func(t *testing.T, f *fixture) string {
			jws := handJWS(`{"alg":"RS512","kid":"`+platformName+`"}`, good(t), rs512(ks.platform))
			jws = segment(jws, 1, b64(payload(t, map[string]any{"request": "canceljob"})))
			return handJWE(t, jweHeader, []byte(jws), brokerPub)
		}, ErrBadSignature, "", Limits{}},
		{"JWS alg none", innerJWS(`{"alg":"none","kid":"`+platformName+`"}`, nil), ErrAlgorithm, "", Limits{}},
		{"JWS alg HS512 keyed with the public key PEM", innerJWS(`{"alg":"HS512","kid":"`+platformName+`"}`, hs512(pubPEM)), ErrAlgorithm, "", Limits{}},
		{"JWS alg HS512 keyed with the public key DER", innerJWS(`{"alg":"HS512","kid":"`+platformName+`"}`, hs512(must(x509.MarshalPKIXPublicKey(&ks.platform.PublicKey)))), ErrAlgorithm, "", Limits{}},
		{"JWS alg RS256", innerJWS(`{"alg":"RS256","kid":"`+platformName+`"}`, rs512(ks.platform)), ErrAlgorithm, "", Limits{}},
		{"JWS alg PS512", innerJWS(`{"alg":"PS512","kid":"`+platformName+`"}`, rs512(ks.platform)), ErrAlgorithm, "", Limits{}},
		{"JWS alg lowercase", innerJWS(`{"alg":"rs512","kid":"`+platformName+`"}`, rs512(ks.platform)), ErrAlgorithm, "", Limits{}},
		{"JWS b64 false", innerJWS(`{"alg":"RS512","kid":"`+platformName+`","b64":false,"crit":["b64"]}`, rs512(ks.platform)), ErrMalformed, "", Limits{}},
		{"JWE alg RSA1_5", goJose(jose.RSA1_5, jose.A256CBC_HS512), ErrAlgorithm, "", Limits{}},
		{"JWE alg RSA-OAEP (SHA-1)", goJose(jose.RSA_OAEP, jose.A256CBC_HS512), ErrAlgorithm, "", Limits{}},
		{"JWE enc A128GCM", goJose(jose.RSA_OAEP_256, jose.A128GCM), ErrAlgorithm, "", Limits{}},
		{"JWE enc A256GCM", goJose(jose.RSA_OAEP_256, jose.A256GCM), ErrAlgorithm, "", Limits{}},
		{"JWE enc A128CBC-HS256", goJose(jose.RSA_OAEP_256, jose.A128CBC_HS256), ErrAlgorithm, "", Limits{}},
		{"JWE alg dir", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 0, b64([]byte(`{"alg":"dir","enc":"A256CBC-HS512"}`)))
		}, ErrAlgorithm, "", Limits{}},
		{"JWE zip GZIP", func(t *testing.T, f *fixture) string {
			return handJWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","zip":"GZIP"}`, signed(t, good(t)), brokerPub)
		}, ErrAlgorithm, "", Limits{}},
		{"JWE crit", func(t *testing.T, f *fixture) string {
			return handJWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","crit":["exp"],"exp":1}`, signed(t, good(t)), brokerPub)
		}, ErrMalformed, "", Limits{}},
		{"JWE cty not JWT", func(t *testing.T, f *fixture) string {
			return handJWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","cty":"JOSE+JSON"}`, signed(t, good(t)), brokerPub)
		}, ErrMalformed, "", Limits{}},
		{"expired", withClaims(map[string]any{"iat": testNow.Add(-8 * time.Minute).Unix(), "exp": testNow.Add(-2 * time.Minute).Unix()}), ErrExpired, "", Limits{}},
		{"expired exactly skew ago", withClaims(map[string]any{"iat": testNow.Add(-5 * time.Minute).Unix(), "exp": testNow.Add(-DefaultSkew).Unix()}), ErrExpired, "", Limits{}},
		{"iat in the future", withClaims(map[string]any{"iat": testNow.Add(2 * time.Minute).Unix(), "exp": testNow.Add(7 * time.Minute).Unix()}), ErrNotYetValid, "", Limits{}},
		{"nbf in the future", withClaims(map[string]any{"nbf": testNow.Add(2 * time.Minute).Unix()}), ErrNotYetValid, "", Limits{}},
		{"lifetime too long", withClaims(map[string]any{"exp": testNow.Add(11 * time.Minute).Unix()}), ErrLifetime, "", Limits{}},
		{"lifetime over a custom maximum", withClaims(nil), ErrLifetime, "", Limits{MaxLifetime: time.Minute}},
		{"exp before iat", withClaims(map[string]any{"exp": testNow.Add(-time.Second).Unix()}), ErrLifetime, "", Limits{}},
		{"missing exp", withClaims(map[string]any{"exp": omit}), ErrLifetime, "", Limits{}},
		{"missing iat", withClaims(map[string]any{"iat": omit}), ErrLifetime, "", Limits{}},
		{"missing jti", withClaims(map[string]any{"jti": omit}), ErrMissingJTI, "", Limits{}},
		{"empty jti", withClaims(map[string]any{"jti": ""}), ErrMissingJTI, "", Limits{}},
		{"jti not a string", withClaims(map[string]any{"jti": 12345}), ErrMalformed, "", Limits{}},
		{"jti too long", withClaims(map[string]any{"jti": strings.Repeat("j", 300)}), ErrMalformed, "", Limits{}},
		{"wrong request", withClaims(map[string]any{"request": "canceljob"}), ErrWrongRequest, "sendjob", Limits{}},
		{"missing request", withClaims(map[string]any{"request": omit}), ErrWrongRequest, "", Limits{}},
		{"wrong aud string", withClaims(map[string]any{"aud": "another-broker"}), ErrWrongAudience, "", Limits{}},
		{"wrong aud array", withClaims(map[string]any{"aud": []string{"a", "b"}}), ErrWrongAudience, "", Limits{}},
		{"aud not strings", withClaims(map[string]any{"aud": 7}), ErrMalformed, "", Limits{}},
		{"iat not a number", withClaims(map[string]any{"iat": "soon"}), ErrMalformed, "", Limits{}},
		{"iat hex", withClaims(map[string]any{"iat": "0x6b49d200"}), ErrMalformed, "", Limits{}},
		{"exp infinite", withClaims(map[string]any{"exp": "1e999"}), ErrMalformed, "", Limits{}},
		{"iat negative", withClaims(map[string]any{"iat": -5}), ErrMalformed, "", Limits{}},
		{"deep JSON", withClaims(map[string]any{"jobdata": json.RawMessage(deep)}), ErrMalformed, "", Limits{}},
		{"duplicate claim", func(t *testing.T, f *fixture) string {
			p := strings.Replace(string(good(t)), `{`, `{"request":"canceljob",`, 1)
			return f.seal(t, []byte(p), false)
		}, ErrMalformed, "", Limits{}},
		{"payload not an object", func(t *testing.T, f *fixture) string {
			return handJWE(t, jweHeader, signed(t, []byte(`["test"]`)), brokerPub)
		}, ErrMalformed, "", Limits{}},
		{"trailing data after payload", func(t *testing.T, f *fixture) string {
			return handJWE(t, jweHeader, signed(t, append(good(t), " {}"...)), brokerPub)
		}, ErrMalformed, "", Limits{}},
		{"plaintext not a JWS", func(t *testing.T, f *fixture) string {
			return handJWE(t, jweHeader, good(t), brokerPub)
		}, ErrMalformed, "", Limits{}},
		{"too large", func(t *testing.T, f *fixture) string {
			// Garbage: if the size were not checked first, this would be
			// ErrMalformed.
			return strings.Repeat("x", DefaultMaxTokenBytes+1)
		}, ErrTooLarge, "", Limits{}},
		{"too large for a custom limit", withClaims(map[string]any{"jobdata": strings.Repeat("x", 20_000)}), ErrTooLarge, "", Limits{MaxTokenBytes: 10_000}},
		{"plaintext too large", withClaims(map[string]any{"jobdata": strings.Repeat("x", 20_000)}), ErrTooLarge, "", Limits{MaxPlaintextBytes: 10_000}},
		{"inflates past a custom limit", func(t *testing.T, f *fixture) string {
			return f.seal(t, payload(t, map[string]any{"jobdata": strings.Repeat("x", 20_000)}), true)
		}, ErrTooLarge, "", Limits{MaxPlaintextBytes: 10_000}},
		{"bad DEF stream", func(t *testing.T, f *fixture) string {
			// The header says DEF, but the plaintext was never deflated.
			return handJWERaw(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","zip":"DEF"}`, []byte{0xff, 0xff, 0xff, 0xff}, brokerPub)
		}, ErrMalformed, "", Limits{}},
		{"empty", func(*testing.T, *fixture) string { return "" }, ErrMalformed, "", Limits{}},
		{"three parts", func(*testing.T, *fixture) string { return "a.b.c" }, ErrMalformed, "", Limits{}},
		{"six parts", func(t *testing.T, f *fixture) string { return f.seal(t, good(t), false) + ".x" }, ErrMalformed, "", Limits{}},
		{"header not base64url", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 0, "eyJ+")
		}, ErrMalformed, "", Limits{}},
		{"header not an object", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 0, b64([]byte(`"RSA-OAEP-256"`)))
		}, ErrMalformed, "", Limits{}},
		{"header alg not a string", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 0, b64([]byte(`{"alg":["RSA-OAEP-256"],"enc":"A256CBC-HS512"}`)))
		}, ErrMalformed, "", Limits{}},
		{"short IV", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 2, b64(make([]byte, 8)))
		}, ErrMalformed, "", Limits{}},
		{"short tag", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 4, b64(make([]byte, 16)))
		}, ErrMalformed, "", Limits{}},
		{"ciphertext not whole blocks", func(t *testing.T, f *fixture) string {
			return segment(f.seal(t, good(t), false), 3, b64(make([]byte, 33)))
		}, ErrMalformed, "", Limits{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, false)
			f.opener.Limits = tt.limits
			tok := tt.token(t, f)
			request := tt.request
			if request == "" {
				request = "test"
			}
			_, _, err := f.opener.Open(context.Background(), tok, request)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open: got error %v, want %v", err, tt.want)
			}
			if n := f.guard.calls.Load(); n != 0 {
				t.Errorf("replay guard called %d times for a refused token", n)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error message is %d bytes long: %.400s...", len(err.Error()), err)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestOpenAcceptsWithinSkew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		changes map[string]any
	}{
		{"exp just past", map[string]any{"iat": testNow.Add(-5 * time.Minute).Unix(), "exp": testNow.Add(-DefaultSkew + time.Second).Unix()}},
		{"iat just ahead", map[string]any{"iat": testNow.Add(DefaultSkew).Unix(), "exp": testNow.Add(5 * time.Minute).Unix()}},
		{"lifetime exactly the maximum", map[string]any{"exp": testNow.Add(DefaultMaxLifetime).Unix()}},
		{"nbf now", map[string]any{"nbf": testNow.Unix()}},
		{"nbf exactly the skew ahead", map[string]any{"nbf": testNow.Add(DefaultSkew).Unix()}},
		{"exp equal to iat", map[string]any{"iat": testNow.Unix(), "exp": testNow.Unix()}},
		{"aud array with us", map[string]any{"aud": []string{"other", brokerName}}},
		{"iat as float", map[string]any{"iat": float64(testNow.Unix()) + 0.75}},
		{"iat in exponent form", map[string]any{"iat": json.RawMessage("1.8e9")}},
		{"iat and exp as strings", map[string]any{"iat": fmt.Sprint(testNow.Unix()), "exp": fmt.Sprintf(" %d ", testNow.Add(time.Minute).Unix())}},
		{"exp as float string", map[string]any{"exp": fmt.Sprintf("%d.5", testNow.Add(time.Minute).Unix())}},
		{"shallow nesting", map[string]any{"jobdata": json.RawMessage(strings.Repeat("[", 60) + strings.Repeat("]", 60))}},
		{"brackets in strings do not count", map[string]any{"jobdata": strings.Repeat("[{", 500)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, false)
			if _, _, err := f.opener.Open(context.Background(), f.seal(t, payload(t, tt.changes), false), "test"); err != nil {
				t.Fatalf("Open: %v", err)
			}
		})
	}
}

// TestOpenAtItsSizeLimits opens a token that is exactly at each of Open's
// size limits, and refuses it one byte or character past.
func TestOpenAtItsSizeLimits(t *testing.T) {
	t.Parallel()
	const jwsHeader = `{"alg":"RS512","kid":"` + platformName + `"}`
	const jweHeader = `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","cty":"JWT"}`
	// padded returns header with a member added so that it is chars long
	// in base64url.
	padded := func(t *testing.T, header string, chars int) string {
		t.Helper()
		n := chars*3/4 - len(header) - len(`,"pad":""`)
		h := header[:len(header)-1] + `,"pad":"` + strings.Repeat("p", n) + `"}`
		if got := len(b64([]byte(h))); got != chars {
			t.Fatalf("padded header is %d characters, want %d", got, chars)
		}
		return h
	}
	tests := []struct {
		name string
		// make returns a token at the limit and one past it, and sets
		// the limit on f's Opener where it is not the default.
		make func(t *testing.T, f *fixture) (at, past string)
		want error
	}{
		{"token bytes", func(t *testing.T, f *fixture) (string, string) {
			tok := f.seal(t, payload(t, nil), false)
			f.opener.Limits = Limits{MaxTokenBytes: len(tok)}
			return tok, tok + " "
		}, ErrTooLarge},
		{"plaintext bytes", func(t *testing.T, f *fixture) (string, string) {
			p := payload(t, nil)
			jws := handJWS(jwsHeader, p, rs512(f.keys.platform))
			f.opener.Limits = Limits{MaxPlaintextBytes: len(jws)}
			return handJWE(t, jweHeader, []byte(jws), &f.keys.broker.PublicKey),
				handJWE(t, jweHeader, []byte(jws+"x"), &f.keys.broker.PublicKey)
		}, ErrTooLarge},
		{"JWE header", func(t *testing.T, f *fixture) (string, string) {
			jws := []byte(handJWS(jwsHeader, payload(t, nil), rs512(f.keys.platform)))
			return handJWE(t, padded(t, jweHeader, maxHeaderChars), jws, &f.keys.broker.PublicKey),
				handJWE(t, padded(t, jweHeader, maxHeaderChars+4), jws, &f.keys.broker.PublicKey)
		}, ErrMalformed},
		{"JWS header", func(t *testing.T, f *fixture) (string, string) {
			p := payload(t, nil)
			at := handJWS(padded(t, jwsHeader, maxHeaderChars), p, rs512(f.keys.platform))
			past := handJWS(padded(t, jwsHeader, maxHeaderChars+4), p, rs512(f.keys.platform))
			return handJWE(t, jweHeader, []byte(at), &f.keys.broker.PublicKey),
				handJWE(t, jweHeader, []byte(past), &f.keys.broker.PublicKey)
		}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, false)
			at, past := tt.make(t, f)
			// The refusal first: the accepted token uses up its jti.
			if _, _, err := f.opener.Open(context.Background(), past, "test"); !errors.Is(err, tt.want) {
				t.Fatalf("Open past the limit: got error %v, want %v", err, tt.want)
			}
			if _, _, err := f.opener.Open(context.Background(), at, "test"); err != nil {
				t.Fatalf("Open at the limit: %v", err)
			}
		})
	}
}

func TestOpenReplay(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	p := payload(t, nil)
	tok := f.seal(t, p, false)
	if _, _, err := f.opener.Open(context.Background(), tok, "test"); err != nil {
		t.Fatalf("first Open: %v", err)
	}
	if _, _, err := f.opener.Open(context.Background(), tok, "test"); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second Open of the same token: got %v, want ErrReplayed", err)
	}
	// A different token with the same jti is a replay too: the jti, not the
	// token bytes, is what counts.
	again := f.seal(t, p, true)
	if _, _, err := f.opener.Open(context.Background(), again, "test"); !errors.Is(err, ErrReplayed) {
		t.Fatalf("new token, same jti: got %v, want ErrReplayed", err)
	}
}

// TestOpenReplayGuardExpiry checks the guard is given exp plus the skew:
// the last moment the token would still be accepted.
func TestOpenReplayGuardExpiry(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	var got time.Time
	f.opener.Replay = replayFunc(func(_ context.Context, signer, jti string, expires time.Time) error {
		got = expires
		return nil
	})
	p := payload(t, nil)
	if _, _, err := f.opener.Open(context.Background(), f.seal(t, p, false), "test"); err != nil {
		t.Fatal(err)
	}
	if want := testNow.Add(5*time.Minute + DefaultSkew); !got.Equal(want) {
		t.Errorf("guard told to keep the jti until %v, want %v", got, want)
	}
}

type replayFunc func(ctx context.Context, signer, jti string, expires time.Time) error

func (f replayFunc) UseJTI(ctx context.Context, signer, jti string, expires time.Time) error {
	return f(ctx, signer, jti, expires)
}

func TestOpenPassesOnLookupErrors(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	boom := errors.New("database is locked")
	f.opener.Signers = signerFunc(func(context.Context, string) (*rsa.PublicKey, error) { return nil, boom })
	_, _, err := f.opener.Open(context.Background(), f.seal(t, payload(t, nil), false), "test")
	if !errors.Is(err, boom) || errors.Is(err, ErrUnknownSigner) {
		t.Errorf("Open with a failing signer store: got %v, want the store's error", err)
	}

	f = setup(t, false)
	f.opener.Replay = replayFunc(func(context.Context, string, string, time.Time) error { return boom })
	_, _, err = f.opener.Open(context.Background(), f.seal(t, payload(t, nil), false), "test")
	if !errors.Is(err, boom) || errors.Is(err, ErrReplayed) {
		t.Errorf("Open with a failing replay guard: got %v, want the guard's error", err)
	}
}

type signerFunc func(ctx context.Context, name string) (*rsa.PublicKey, error)

func (f signerFunc) SignerKey(ctx context.Context, name string) (*rsa.PublicKey, error) {
	return f(ctx, name)
}

func TestOpenNeedsConfiguration(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	tok := f.seal(t, payload(t, nil), false)
	if _, _, err := f.opener.Open(context.Background(), tok, ""); err == nil {
		t.Error("Open with no expected request: got nil error")
	}
	o := *f.opener
	o.Audience = ""
	if _, _, err := o.Open(context.Background(), tok, "test"); err == nil {
		t.Error("Open with no Audience: got nil error")
	}
}

func TestKeyRotation(t *testing.T) {
	t.Parallel()
	f := setup(t, true)
	ks := f.keys
	ids := f.ring.KIDs()
	if len(ids) != 2 {
		t.Fatalf("KIDs() = %v, want two", ids)
	}

	// Platforms that read the JWKS name the key; older ones don't.
	for _, tc := range []struct {
		name string
		to   *rsa.PublicKey
		kid  string
	}{
		{"current, named", &ks.broker.PublicKey, ids[0]},
		{"current, unnamed", &ks.broker.PublicKey, ""},
		{"next, named", &ks.brokerNext.PublicKey, ids[1]},
		{"next, unnamed", &ks.brokerNext.PublicKey, ""},
	} {
		tok, err := Seal(payload(t, nil), platformName, ks.platform, tc.to, tc.kid, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.opener.Open(context.Background(), tok, "test"); err != nil {
			t.Errorf("%s: Open: %v", tc.name, err)
		}
	}

	// A token naming the next key but encrypted to the current one must
	// not open: the kid picks the key, nothing else is tried.
	tok, err := Seal(payload(t, nil), platformName, ks.platform, &ks.broker.PublicKey, ids[1], false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.opener.Open(context.Background(), tok, "test"); !errors.Is(err, ErrDecrypt) {
		t.Errorf("kid of next key, encrypted to current: got %v, want ErrDecrypt", err)
	}

	// After the rotation the old key is gone.
	rotated, err := NewKeyRing(ks.brokerNext, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := *f.opener
	o.Keys = rotated
	old, err := Seal(payload(t, nil), platformName, ks.platform, &ks.broker.PublicKey, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Open(context.Background(), old, "test"); !errors.Is(err, ErrDecrypt) {
		t.Errorf("token to the retired key: got %v, want ErrDecrypt", err)
	}

	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(f.ring.JWKS(), &set); err != nil {
		t.Fatalf("JWKS is not JSON: %v", err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k["kid"])
	}
	if diff := cmp.Diff(ids, kids); diff != "" {
		t.Errorf("JWKS kids (-want +got):\n%s", diff)
	}
}

func TestCallback(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	ring, err := NewKeyRing(ks.broker, nil)
	if err != nil {
		t.Fatal(err)
	}
	platformRing, err := NewKeyRing(ks.platform, nil)
	if err != nil {
		t.Fatal(err)
	}
	newOpener := func() *Opener {
		return &Opener{
			Keys:     platformRing,
			Signers:  StaticSigners{brokerName: &ring.Current().PublicKey},
			Replay:   &MemoryReplayGuard{Now: clock},
			Audience: platformName,
			Now:      clock,
		}
	}
	callback := func(changes map[string]any) string {
		m := map[string]any{
			"job_id": 42, "status": "done", "delivery_id": 7,
			"iat": testNow.Unix(), "exp": testNow.Add(5 * time.Minute).Unix(),
			"jti": NewJTI(), "aud": platformName,
		}
		for k, v := range changes {
			if v == omit {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		tok, err := Seal(must(json.Marshal(m)), brokerName, ring.Current(), &ks.platform.PublicKey, "", false)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	claims, p, err := newOpener().OpenCallback(context.Background(), callback(nil))
	if err != nil {
		t.Fatalf("OpenCallback: %v", err)
	}
	if claims.Signer != brokerName || !strings.Contains(string(p), `"job_id":42`) {
		t.Errorf("OpenCallback = %+v, %s", claims, p)
	}

	for _, tc := range []struct {
		name    string
		changes map[string]any
		want    error
	}{
		{"no aud", map[string]any{"aud": omit}, ErrWrongAudience},
		{"another platform's", map[string]any{"aud": "other-platform"}, ErrWrongAudience},
		{"has a request", map[string]any{"request": "test"}, ErrWrongRequest},
	} {
		if _, _, err := newOpener().OpenCallback(context.Background(), callback(tc.changes)); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}

	// A platform's request token must not pass for a callback, even at a
	// platform that also knew the other platform's key.
	f := setup(t, false)
	req := f.seal(t, payload(t, map[string]any{"aud": platformName}), false)
	if _, _, err := newOpener().OpenCallback(context.Background(), req); err == nil {
		t.Error("OpenCallback accepted a request token")
	}
}

// TestSealInteropGoJose checks that what Seal makes is what a generic JOSE
// library expects, by reading it with go-jose's high-level API.
func TestSealInteropGoJose(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	for _, compress := range []bool{false, true} {
		p := payload(t, nil)
		tok := f.seal(t, p, compress)
		jwe, err := jose.ParseEncryptedCompact(tok, []jose.KeyAlgorithm{jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256CBC_HS512})
		if err != nil {
			t.Fatalf("go-jose cannot parse our JWE: %v", err)
		}
		if jwe.Header.KeyID != f.ring.CurrentKID() || jwe.Header.ExtraHeaders["cty"] != "JWT" {
			t.Errorf("JWE header = %+v, want kid %q and cty JWT", jwe.Header, f.ring.CurrentKID())
		}
		if _, zip := jwe.Header.ExtraHeaders["zip"]; zip != compress {
			t.Errorf("JWE header zip present = %v, want %v", zip, compress)
		}
		inner, err := jwe.Decrypt(f.keys.broker)
		if err != nil {
			t.Fatalf("go-jose cannot decrypt our JWE: %v", err)
		}
		jws, err := jose.ParseSignedCompact(string(inner), []jose.SignatureAlgorithm{jose.RS512})
		if err != nil {
			t.Fatalf("go-jose cannot parse our JWS: %v", err)
		}
		if jws.Signatures[0].Header.KeyID != platformName {
			t.Errorf("JWS kid = %q, want %q", jws.Signatures[0].Header.KeyID, platformName)
		}
		got, err := jws.Verify(&f.keys.platform.PublicKey)
		if err != nil {
			t.Fatalf("go-jose cannot verify our JWS: %v", err)
		}
		if string(got) != string(p) {
			t.Errorf("payload = %s, want %s", got, p)
		}
	}
}

// TestOpenInterop opens tokens made the way libraries in other languages
// make them: header members in another order, no cty or a lowercase one,
// typ on the JWS, aud as a string, iat as a float, exp as a string.
func TestOpenInterop(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	brokerPub := &ks.broker.PublicKey
	phpPayload := []byte(fmt.Sprintf(`{"iat":%d.25,"exp":"%d","jti":"5f1c0e","request":"test","aud":%q}`,
		testNow.Unix(), testNow.Add(5*time.Minute).Unix(), brokerName))
	jsPayload := []byte(fmt.Sprintf(`{"request":"test","jti":"a1b2","iat":%d,"exp":%d,"aud":[%q]}`,
		testNow.Unix(), testNow.Add(time.Minute).Unix(), brokerName))
	jws := func(header string, p []byte) []byte { return []byte(handJWS(header, p, rs512(ks.platform))) }

	tests := []struct {
		name  string
		token func(t *testing.T, f *fixture) string
	}{
		{"PHP-style, zip, no cty", func(t *testing.T, f *fixture) string {
			return handJWE(t, `{"enc":"A256CBC-HS512","alg":"RSA-OAEP-256","zip":"DEF"}`,
				jws(`{"typ":"JWT","alg":"RS512","kid":"`+platformName+`"}`, phpPayload), brokerPub)
		}},
		{"JS-style, kid from the JWKS, cty JWT", func(t *testing.T, f *fixture) string {
			return handJWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","cty":"JWT","kid":"`+f.ring.CurrentKID()+`"}`,
				jws(`{"alg":"RS512","kid":"`+platformName+`"}`, jsPayload), brokerPub)
		}},
		{"lowercase cty", func(t *testing.T, f *fixture) string {
			return handJWE(t, `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","cty":"jwt"}`,
				jws(`{"alg":"RS512","kid":"`+platformName+`"}`, jsPayload), brokerPub)
		}},
		{"go-jose low-level API, no options", func(t *testing.T, f *fixture) string {
			signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS512, Key: ks.platform},
				(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", platformName))
			if err != nil {
				t.Fatal(err)
			}
			obj, err := signer.Sign(phpPayload)
			if err != nil {
				t.Fatal(err)
			}
			inner, err := obj.CompactSerialize()
			if err != nil {
				t.Fatal(err)
			}
			enc, err := jose.NewEncrypter(jose.A256CBC_HS512, jose.Recipient{Algorithm: jose.RSA_OAEP_256, Key: brokerPub}, nil)
			if err != nil {
				t.Fatal(err)
			}
			outer, err := enc.Encrypt([]byte(inner))
			if err != nil {
				t.Fatal(err)
			}
			return must(outer.CompactSerialize())
		}},
		{"surrounding whitespace", func(t *testing.T, f *fixture) string {
			return " " + f.seal(t, jsPayload, false) + "\n"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, false)
			claims, _, err := f.opener.Open(context.Background(), tt.token(t, f), "test")
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if diff := cmp.Diff([]string{brokerName}, claims.Audience); diff != "" {
				t.Errorf("aud (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOpenFloatIssuedAt(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	p := []byte(fmt.Sprintf(`{"request":"test","jti":"x","iat":%d.25,"exp":"%d"}`, testNow.Unix(), testNow.Add(time.Minute).Unix()))
	claims, _, err := f.opener.Open(context.Background(), f.seal(t, p, false), "test")
	if err != nil {
		t.Fatal(err)
	}
	if want := testNow.Add(250 * time.Millisecond); !claims.IssuedAt.Equal(want) {
		t.Errorf("IssuedAt = %v, want %v", claims.IssuedAt, want)
	}
	if want := testNow.Add(time.Minute); !claims.Expires.Equal(want) {
		t.Errorf("Expires = %v, want %v", claims.Expires, want)
	}
}

func TestSealRefuses(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	pub := &ks.broker.PublicKey
	for _, tc := range []struct {
		name    string
		payload string
		signer  string
		key     *rsa.PrivateKey
		to      *rsa.PublicKey
	}{
		{"not JSON", `{"a":`, platformName, ks.platform, pub},
		{"an array", `[1]`, platformName, ks.platform, pub},
		{"no signer name", `{}`, "", ks.platform, pub},
		{"no signer key", `{}`, platformName, nil, pub},
		{"no recipient", `{}`, platformName, ks.platform, nil},
	} {
		if _, err := Seal([]byte(tc.payload), tc.signer, tc.key, tc.to, "", false); err == nil {
			t.Errorf("%s: Seal succeeded", tc.name)
		}
	}
}
