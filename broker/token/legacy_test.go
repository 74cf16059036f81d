package token

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// The legacy tokens of graderqueue's platforms, as France-ioi's
// TokenGenerator.php makes them with spomky-labs/jose: a JWS with header
// {"alg":"RS512"} only, a payload with a date claim and no iat, exp or jti,
// in a JWE with alg, enc and zip DEF, and no kid or cty.

const legacyJWEHeader = `{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","zip":"DEF"}`

// legacyJWS signs claims as TokenGenerator::encodeJWS does, with header
// jwsHeader ("" for {"alg":"RS512"}).
func legacyJWS(tb testing.TB, f *fixture, jwsHeader string, claims map[string]any) string {
	tb.Helper()
	if jwsHeader == "" {
		jwsHeader = `{"alg":"RS512"}`
	}
	p, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	return handJWS(jwsHeader, p, rs512(f.keys.platform))
}

// legacyClaims are a getjob request of today's date with the given changes.
func legacyClaims(changes map[string]any) map[string]any {
	m := map[string]any{"request": "getjob", "jobid": "12", "date": testNow.UTC().Format(LegacyDateLayout)}
	for k, v := range changes {
		if v == omit {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

// legacyOptions accept test and getjob from platformName, named beside the
// token, which may send legacy tokens when allowed.
func legacyOptions(allowed bool) OpenOptions {
	return OpenOptions{Requests: []string{"test", "getjob"}, Signer: platformName,
		Legacy: func(_ context.Context, name string) (bool, error) { return allowed && name == platformName, nil }}
}

func TestOpenWithLegacy(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	var kept time.Time
	var keptJTI string
	f.opener.Replay = replayFunc(func(_ context.Context, signer, jti string, expires time.Time) error {
		keptJTI, kept = jti, expires
		return nil
	})
	tok := handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, "", legacyClaims(nil))), &f.keys.broker.PublicKey)
	c, p, err := f.opener.OpenWith(context.Background(), tok, legacyOptions(true))
	if err != nil {
		t.Fatalf("OpenWith: %v", err)
	}
	if !c.Legacy || c.Signer != platformName || c.Request != "getjob" || !strings.HasPrefix(c.JTI, JTIPrefixLegacy) {
		t.Errorf("claims %+v, want a legacy getjob of %s with a digest jti", c, platformName)
	}
	if !strings.Contains(string(p), `"jobid":"12"`) {
		t.Errorf("payload %s lacks the request's fields", p)
	}
	day := time.Date(testNow.UTC().Year(), testNow.UTC().Month(), testNow.UTC().Day(), 0, 0, 0, 0, time.UTC)
	if want := day.Add(48 * time.Hour); !kept.Equal(want) || !c.Expires.Equal(want) || keptJTI != c.JTI {
		t.Errorf("guard keeps %q until %v (claims say %v), want the claims' jti until %v", keptJTI, kept, c.Expires, want)
	}
}

func TestOpenWithLegacyDates(t *testing.T) {
	t.Parallel()
	day := func(d int) string { return testNow.UTC().AddDate(0, 0, d).Format(LegacyDateLayout) }
	for _, tc := range []struct {
		name    string
		changes map[string]any
		want    error
	}{
		{"yesterday", map[string]any{"date": day(-1)}, nil},
		{"tomorrow", map[string]any{"date": day(1)}, nil},
		{"two days ago", map[string]any{"date": day(-2)}, ErrExpired},
		{"in two days", map[string]any{"date": day(2)}, ErrNotYetValid},
		{"another layout", map[string]any{"date": testNow.UTC().Format("2006-01-02")}, ErrMalformed},
		{"not a string", map[string]any{"date": 15012027}, ErrMalformed},
		{"no date", map[string]any{"date": omit}, ErrMissingJTI},
		{"an exp that passed", map[string]any{"exp": testNow.Add(-time.Hour).Unix()}, ErrExpired},
		{"an iat ahead", map[string]any{"iat": testNow.Add(time.Hour).Unix()}, ErrNotYetValid},
		{"an iat exactly the skew ahead", map[string]any{"iat": testNow.Add(DefaultSkew).Unix()}, nil},
		{"an exp exactly the skew ago", map[string]any{"exp": testNow.Add(-DefaultSkew).Unix()}, ErrExpired},
		{"an exp just inside the skew", map[string]any{"exp": testNow.Add(-DefaultSkew + time.Second).Unix()}, nil},
		{"another audience", map[string]any{"aud": "other-broker"}, ErrWrongAudience},
		{"a request this address does not take", map[string]any{"request": "sendjob"}, ErrWrongRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, false)
			tok := handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, "", legacyClaims(tc.changes))), &f.keys.broker.PublicKey)
			_, _, err := f.opener.OpenWith(context.Background(), tok, legacyOptions(true))
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("OpenWith: %v, want %v", err, tc.want)
			}
			if err != nil && f.guard.calls.Load() != 0 {
				t.Errorf("a refused token reached the replay guard")
			}
		})
	}
}

// TestOpenWithLegacyOnlyWhereAllowed: a platform not registered for legacy
// tokens gets neither a kid-less JWS nor a token without jti accepted.
func TestOpenWithLegacyOnlyWhereAllowed(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	noKID := handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, "", legacyClaims(nil))), &f.keys.broker.PublicKey)
	if _, _, err := f.opener.OpenWith(context.Background(), noKID, legacyOptions(false)); !errors.Is(err, ErrUnknownSigner) {
		t.Errorf("a JWS without kid from a platform without legacy tokens: %v, want ErrUnknownSigner", err)
	}
	withKID := handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, `{"alg":"RS512","kid":"`+platformName+`"}`, legacyClaims(nil))), &f.keys.broker.PublicKey)
	if _, _, err := f.opener.OpenWith(context.Background(), withKID, legacyOptions(false)); !errors.Is(err, ErrMissingJTI) {
		t.Errorf("a token without jti from a platform without legacy tokens: %v, want ErrMissingJTI", err)
	}
	if _, _, err := f.opener.Open(context.Background(), withKID, "getjob"); !errors.Is(err, ErrMissingJTI) {
		t.Errorf("Open of a legacy token: %v, want ErrMissingJTI", err)
	}
	opts := legacyOptions(true)
	opts.Signer = ""
	if _, _, err := f.opener.OpenWith(context.Background(), noKID, opts); !errors.Is(err, ErrUnknownSigner) {
		t.Errorf("a JWS without kid and no platform named: %v, want ErrUnknownSigner", err)
	}
	other := handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, `{"alg":"RS512","kid":"someone-else"}`, legacyClaims(nil))), &f.keys.broker.PublicKey)
	if _, _, err := f.opener.OpenWith(context.Background(), other, legacyOptions(true)); !errors.Is(err, ErrUnknownSigner) {
		t.Errorf("a kid other than the platform named: %v, want ErrUnknownSigner", err)
	}
	if f.guard.calls.Load() != 0 {
		t.Errorf("a refused token reached the replay guard")
	}
}

// TestOpenWithLegacyChecksCrypto: algorithms, the signature and decryption
// are checked as for any token.
func TestOpenWithLegacyChecksCrypto(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	claims := legacyClaims(nil)
	p, _ := json.Marshal(claims)
	for name, tc := range map[string]struct {
		tok  string
		want error
	}{
		"JWS alg RS256": {handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, `{"alg":"RS256"}`, claims)), &f.keys.broker.PublicKey), ErrAlgorithm},
		"JWS alg none":  {handJWE(t, legacyJWEHeader, []byte(handJWS(`{"alg":"none"}`, p, nil)), &f.keys.broker.PublicKey), ErrAlgorithm},
		"another key's signature": {handJWE(t, legacyJWEHeader, []byte(handJWS(`{"alg":"RS512"}`, p, rs512(f.keys.stranger))),
			&f.keys.broker.PublicKey), ErrBadSignature},
		"JWE alg RSA1_5":           {handJWE(t, `{"alg":"RSA1_5","enc":"A256CBC-HS512"}`, []byte(legacyJWS(t, f, "", claims)), &f.keys.broker.PublicKey), ErrAlgorithm},
		"encrypted to another key": {handJWE(t, legacyJWEHeader, []byte(legacyJWS(t, f, "", claims)), &f.keys.stranger.PublicKey), ErrDecrypt},
	} {
		if _, _, err := f.opener.OpenWith(context.Background(), tc.tok, legacyOptions(true)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

// TestOpenWithLegacyReplay: the digest of the whole JWE is the jti. The
// same JWE is refused a second time, also with a part's spare base64 bits
// set; the same JWS in a new JWE, as a platform makes for a second
// identical request the same day, is not a replay.
func TestOpenWithLegacyReplay(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	jws := legacyJWS(t, f, "", legacyClaims(nil))
	tok := handJWE(t, legacyJWEHeader, []byte(jws), &f.keys.broker.PublicKey)
	if _, _, err := f.opener.OpenWith(context.Background(), tok, legacyOptions(true)); err != nil {
		t.Fatalf("first: %v", err)
	}
	if _, _, err := f.opener.OpenWith(context.Background(), tok, legacyOptions(true)); !errors.Is(err, ErrReplayed) {
		t.Errorf("the same JWE again: %v, want ErrReplayed", err)
	}
	// The IV is 16 bytes in 22 base64 characters: the last one's 4 low
	// bits are spare, and a lenient decoder ignores them.
	parts := strings.Split(tok, ".")
	iv := []byte(parts[2])
	last := strings.IndexByte(base64URL, iv[len(iv)-1])
	iv[len(iv)-1] = base64URL[last^1]
	respelt := segment(tok, 2, string(iv))
	if respelt == tok {
		t.Fatal("the IV was not respelt")
	}
	if _, _, err := f.opener.OpenWith(context.Background(), respelt, legacyOptions(true)); !errors.Is(err, ErrReplayed) {
		t.Errorf("the same JWE with the IV's spare bits set: %v, want ErrReplayed", err)
	}
	again := handJWE(t, legacyJWEHeader, []byte(jws), &f.keys.broker.PublicKey)
	if _, _, err := f.opener.OpenWith(context.Background(), again, legacyOptions(true)); err != nil {
		t.Errorf("the same JWS in a new JWE: %v, want it accepted", err)
	}
}

const base64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// TestOpenWithFullTokens: through OpenWith a token with a jti is checked in
// full, from a legacy platform too, and several requests share an address.
func TestOpenWithFullTokens(t *testing.T) {
	t.Parallel()
	f := setup(t, false)
	c, _, err := f.opener.OpenWith(context.Background(), f.seal(t, payload(t, nil), false), legacyOptions(true))
	if err != nil || c.Legacy || c.Request != "test" {
		t.Errorf("a full token: claims %+v, %v; want a test request, not legacy", c, err)
	}
	expired := f.seal(t, payload(t, map[string]any{"iat": testNow.Add(-time.Hour).Unix(), "exp": testNow.Add(-50 * time.Minute).Unix(),
		"date": testNow.UTC().Format(LegacyDateLayout)}), false)
	if _, _, err := f.opener.OpenWith(context.Background(), expired, legacyOptions(true)); !errors.Is(err, ErrExpired) {
		t.Errorf("an expired full token from a legacy platform, with a date: %v, want ErrExpired", err)
	}
	if _, _, err := f.opener.OpenWith(context.Background(), f.seal(t, payload(t, map[string]any{"request": "sendjob"}), false), legacyOptions(true)); !errors.Is(err, ErrWrongRequest) ||
		!strings.Contains(err.Error(), `one of "test", "getjob"`) {
		t.Errorf("a request the address does not take: %v, want ErrWrongRequest naming both", err)
	}
}
