package token

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// sentinels are every error Open may wrap for a bad token.
var sentinels = []error{
	ErrMalformed, ErrTooLarge, ErrDecrypt, ErrUnknownSigner, ErrBadSignature,
	ErrAlgorithm, ErrExpired, ErrNotYetValid, ErrLifetime, ErrMissingJTI,
	ErrReplayed, ErrWrongRequest, ErrWrongAudience,
}

func isSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzOpen feeds Open arbitrary strings: it must never panic, and must
// refuse everything it cannot verify with one of the package's errors.
func FuzzOpen(f *testing.F) {
	fx := setup(f, true)
	fx.opener.Replay = acceptAll{}
	f.Add(fx.seal(f, payload(f, nil), false))
	f.Add(fx.seal(f, payload(f, nil), true))
	f.Add("a.b.c.d.e")
	f.Add("....")
	f.Add("eyJhbGciOiJSU0EtT0FFUC0yNTYiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0....")
	f.Fuzz(func(t *testing.T, tok string) {
		claims, p, err := fx.opener.Open(context.Background(), tok, "test")
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("Open: error %v wraps none of the package's errors", err)
			}
			return
		}
		if claims.Signer != platformName || !json.Valid(p) {
			t.Fatalf("Open accepted a token: %+v %q", claims, p)
		}
	})
}

// FuzzVerifyJWS feeds the inner layer arbitrary plaintexts, the part of Open
// FuzzOpen cannot reach (it cannot forge the AEAD tag).
func FuzzVerifyJWS(f *testing.F) {
	fx := setup(f, false)
	ks := fx.keys
	f.Add([]byte(handJWS(`{"alg":"RS512","kid":"`+platformName+`"}`, payload(f, nil), rs512(ks.platform))))
	f.Add([]byte(handJWS(`{"alg":"none","kid":"`+platformName+`"}`, payload(f, nil), nil)))
	f.Add([]byte(handJWS(`{"alg":"RS512","kid":"`+platformName+`","x5c":["AAAA"]}`, payload(f, nil), rs512(ks.platform))))
	f.Add([]byte(handJWS(`{"alg":"RS512","kid":"`+platformName+`","jwk":{"kty":"RSA","n":"AA","e":"AQAB"}}`, payload(f, nil), rs512(ks.platform))))
	f.Add([]byte("e30.e30."))
	// Without a kid, the key is the one named beside the token, which
	// may send legacy tokens.
	f.Add([]byte(handJWS(`{"alg":"RS512"}`, payload(f, nil), rs512(ks.platform))))
	legacy := check{signer: platformName, legacy: func(context.Context, string) (bool, error) { return true, nil }}
	f.Fuzz(func(t *testing.T, plain []byte) {
		signer, _, p, err := fx.opener.verifyJWS(context.Background(), plain, legacy)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("verifyJWS: error %v wraps none of the package's errors", err)
			}
			return
		}
		if signer != platformName {
			t.Fatalf("verifyJWS accepted signer %q", signer)
		}
		if _, err := parseClaims(p, DefaultMaxJSONDepth); err != nil && !isSentinel(err) {
			t.Fatalf("parseClaims: %v", err)
		}
	})
}

// FuzzClaims feeds the payload decoder arbitrary bytes. Whatever it accepts
// must be a single valid JSON object, and the claims it reads must agree
// with encoding/json's reading of the same bytes.
func FuzzClaims(f *testing.F) {
	f.Add([]byte(`{"request":"test","iat":1800000000,"exp":"1800000300","jti":"x","aud":["a","b"]}`))
	f.Add([]byte(`{"iat":1.8e9,"exp":1800000000.5,"nbf":"  1 ","aud":"b"}`))
	f.Add([]byte(`{"a":[[[[{"b":"]]]]"}]]]]}`))
	f.Add([]byte(`{"request":"a","request":"b"}`))
	f.Add([]byte(`{"iat":"0x10","exp":"NaN","jti":null,"aud":null}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(strings.Repeat("[", 100)))
	f.Fuzz(func(t *testing.T, data []byte) {
		rc, err := parseClaims(data, 16)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("parseClaims: error %v wraps none of the package's errors", err)
			}
			return
		}
		var m map[string]json.RawMessage
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&m); err != nil || m == nil {
			t.Fatalf("parseClaims accepted %q, which is not a JSON object: %v", data, err)
		}
		if dec.More() {
			t.Fatalf("parseClaims accepted %q, which has trailing data", data)
		}
		if raw, ok := m["request"]; ok != rc.hasRequest {
			t.Fatalf("request present = %v, parseClaims says %v", ok, rc.hasRequest)
		} else if ok {
			var s string
			if json.Unmarshal(raw, &s) == nil && s != rc.Request {
				t.Fatalf("request = %q, parseClaims says %q", s, rc.Request)
			}
		}
		if rc.hasExp && (rc.Expires.Unix() < minNumericDate || rc.Expires.Unix() > maxNumericDate) {
			t.Fatalf("exp %v out of range", rc.Expires)
		}
	})
}

// FuzzInflate checks the bounded inflater never returns more than its limit.
func FuzzInflate(f *testing.F) {
	f.Add(deflate(f, make([]byte, 100_000)), 1000)
	f.Add(deflate(f, []byte("hello")), 5)
	f.Add([]byte{0xff}, 10)
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		if limit < 0 || limit > 1<<20 {
			return
		}
		out, err := inflate(data, limit)
		if err == nil && len(out) > limit {
			t.Fatalf("inflate returned %d bytes, limit %d", len(out), limit)
		}
		if err != nil && !isSentinel(err) {
			t.Fatalf("inflate: %v", err)
		}
	})
}
