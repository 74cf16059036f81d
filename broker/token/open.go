package token

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Defaults for the zero fields of Limits.
const (
	// DefaultMaxTokenBytes is 2 MiB plus 64 KiB of headroom for headers and
	// the encrypted key. Two layers of base64 make a payload about 1.8 times
	// its size in the token, so without zip a payload gets about 1.2 MiB;
	// with zip, whatever compresses into the same space, up to
	// DefaultMaxPlaintextBytes once inflated.
	DefaultMaxTokenBytes = 2<<20 + 64<<10
	// DefaultMaxPlaintextBytes bounds the decrypted, inflated JWS.
	DefaultMaxPlaintextBytes = 4 << 20
	// DefaultMaxJSONDepth bounds the nesting of the payload.
	DefaultMaxJSONDepth = 64
	// DefaultMaxLifetime bounds exp - iat.
	DefaultMaxLifetime = 10 * time.Minute
	// DefaultSkew is the clock difference tolerated between sender and
	// recipient.
	DefaultSkew = 60 * time.Second
)

// Limits bound what Open accepts. A zero (or negative) field takes its
// Default value.
type Limits struct {
	// MaxTokenBytes bounds the compact JWE as received; larger tokens are
	// refused before any decoding or RSA work.
	MaxTokenBytes int
	// MaxPlaintextBytes bounds the decrypted JWS, after inflating zip DEF.
	MaxPlaintextBytes int
	// MaxJSONDepth bounds the nesting of arrays and objects in the payload.
	MaxJSONDepth int
	// MaxLifetime bounds exp - iat.
	MaxLifetime time.Duration
	// Skew is how far iat (and nbf) may be ahead of our clock, and how long
	// after exp a token is still accepted.
	Skew time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.MaxTokenBytes <= 0 {
		l.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if l.MaxPlaintextBytes <= 0 {
		l.MaxPlaintextBytes = DefaultMaxPlaintextBytes
	}
	if l.MaxJSONDepth <= 0 {
		l.MaxJSONDepth = DefaultMaxJSONDepth
	}
	if l.MaxLifetime <= 0 {
		l.MaxLifetime = DefaultMaxLifetime
	}
	if l.Skew <= 0 {
		l.Skew = DefaultSkew
	}
	return l
}

// SignerKeys finds the public key of a token's signer, named by the JWS kid.
type SignerKeys interface {
	// SignerKey returns the RSA public key registered for name. It returns
	// an error wrapping ErrUnknownSigner when no such signer exists (or it
	// may not sign tokens), and any other error when it cannot tell, which
	// Open passes on wrapped.
	SignerKey(ctx context.Context, name string) (*rsa.PublicKey, error)
}

// StaticSigners is a SignerKeys backed by a fixed map from signer name to
// public key: on the platform side, the broker's name and key; in tests, a
// few platforms.
type StaticSigners map[string]*rsa.PublicKey

var _ SignerKeys = StaticSigners(nil)

// SignerKey returns the key registered for name, or an error wrapping
// ErrUnknownSigner.
func (s StaticSigners) SignerKey(_ context.Context, name string) (*rsa.PublicKey, error) {
	if k, ok := s[name]; ok && k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("%w: no signer named %s", ErrUnknownSigner, quote(name))
}

// Opener reads tokens sent to the holder of Keys: the broker reading platform
// requests, or a platform reading the broker's callbacks. Its fields must be
// set before the first call and not changed after; it is then safe for
// concurrent use.
type Opener struct {
	// Keys are the recipient's private keys.
	Keys *KeyRing
	// Signers resolves a JWS kid to the signer's public key.
	Signers SignerKeys
	// Replay remembers accepted jtis.
	Replay ReplayGuard
	// Limits bound sizes and times; zero fields take their defaults.
	Limits Limits
	// Audience is the recipient's own name: the broker's name on the broker,
	// the platform's name on a platform. A token's aud must contain it.
	Audience string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// errNoRequest is returned by Open when the caller forgot to say which
// request it expects; it is a programming error, not a property of a token.
var errNoRequest = errors.New("token: Open needs the request name the endpoint expects")

// Open reads a platform's request token. It decrypts the JWE, verifies the
// JWS, and checks the claims: request must equal wantRequest; iat and exp
// are required, iat may not be ahead of our clock by more than the skew, exp
// may not be past (by more than the skew) nor more than MaxLifetime after
// iat; nbf, if present, may not be ahead; jti is required; aud is optional
// but, if present, must contain o.Audience. Only then is the jti given to
// the replay guard, so a token refused for another reason does not burn its
// jti. It returns the claims and the verified JSON payload, which holds the
// request's own fields.
//
// Errors wrap one of the package's sentinel errors (ErrMalformed,
// ErrTooLarge, ErrDecrypt, ErrAlgorithm, ErrUnknownSigner, ErrBadSignature,
// ErrLifetime, ErrNotYetValid, ErrExpired, ErrMissingJTI, ErrWrongRequest,
// ErrWrongAudience, ErrReplayed), except when SignerKeys or ReplayGuard fail
// for their own reasons, whose errors are wrapped as they come.
func (o *Opener) Open(ctx context.Context, compact string, wantRequest string) (Claims, []byte, error) {
	if wantRequest == "" {
		return Claims{}, nil, errNoRequest
	}
	return o.open(ctx, compact, check{requests: []string{wantRequest}})
}

// OpenOptions say what OpenWith accepts.
type OpenOptions struct {
	// Requests are the request claims accepted (at least one); the token's
	// own is in the returned Claims.
	Requests []string
	// Signer is the signer as named beside the token, by a transport
	// that names one (graderqueue's sPlatform field); "" when it names
	// none. A JWS kid must then be the same name.
	Signer string
	// Legacy, if set, reports whether a signer may send legacy tokens
	// (see OpenWith); an error is passed on wrapped.
	Legacy func(ctx context.Context, signer string) (bool, error)
}

// OpenWith is Open for a transport that names the signer beside the token
// and may accept several requests at one address, as graderqueue's api.php
// does. It also reads the legacy tokens of graderqueue's platforms, from
// the signers opts.Legacy allows:
//
//   - the JWS may have no kid: the key is then opts.Signer's, which is
//     required;
//   - a token without a jti is a legacy token. Its freshness comes from its
//     date claim, "DD-MM-YYYY" in the platform's local time (PHP's
//     date('d-m-Y')), which must be the broker's own date (UTC) or the day
//     before or after it, so that every time zone is accepted; iat and exp
//     are not required, but are checked when present. Its replay
//     protection is the digest of the whole JWE, in canonical compact form
//     (JTIPrefixLegacy and base64url SHA-256), given to the replay guard as
//     its jti until the date's window closes: RS512 signatures are
//     deterministic, so two identical requests made the same day have the
//     same JWS, but never the same JWE (its key and IV are random).
//
// Algorithms, decryption and the signature are checked as Open checks
// them, and a token with a jti is checked in full, legacy signer or not.
// Claims.Legacy tells which kind was read.
func (o *Opener) OpenWith(ctx context.Context, compact string, opts OpenOptions) (Claims, []byte, error) {
	if len(opts.Requests) == 0 || slices.Contains(opts.Requests, "") {
		return Claims{}, nil, errNoRequest
	}
	return o.open(ctx, compact, check{requests: opts.Requests, signer: opts.Signer, legacy: opts.Legacy})
}

// JTIPrefixLegacy starts the jti under which a legacy token's digest is
// remembered; no random jti (NewJTI) starts with it.
const JTIPrefixLegacy = "jwe-sha256:"

// LegacyDateLayout is the layout of a legacy token's date claim: PHP's
// date('d-m-Y').
const LegacyDateLayout = "02-01-2006"

// check is what open checks beyond the token's own soundness.
type check struct {
	requests []string // request claims accepted; none on a callback
	callback bool
	signer   string
	legacy   func(ctx context.Context, signer string) (bool, error)
}

// OpenCallback reads a result callback from the broker, on the platform
// side. It checks everything Open does, except that the token must have no
// request claim and must have an aud containing o.Audience, the platform's
// own name: a callback meant for another platform is refused even if it was
// encrypted to a shared key.
func (o *Opener) OpenCallback(ctx context.Context, compact string) (Claims, []byte, error) {
	return o.open(ctx, compact, check{callback: true})
}

func (o *Opener) open(ctx context.Context, compact string, c check) (Claims, []byte, error) {
	if o.Keys == nil || o.Signers == nil || o.Replay == nil || o.Audience == "" {
		return Claims{}, nil, errors.New("token: Opener needs Keys, Signers, Replay and Audience")
	}
	lim := o.Limits.withDefaults()

	// Cheap refusals first: size, then shape and algorithms, and only then
	// the RSA decryption a stranger can make us do.
	if len(compact) > lim.MaxTokenBytes {
		return Claims{}, nil, fmt.Errorf("%w: %d bytes; the limit is %d", ErrTooLarge, len(compact), lim.MaxTokenBytes)
	}
	t, err := parseJWE(strings.TrimSpace(compact))
	if err != nil {
		return Claims{}, nil, err
	}
	plain, err := t.decrypt(o.Keys.candidates(t.kid, t.hasKID), lim.MaxPlaintextBytes)
	if err != nil {
		return Claims{}, nil, err
	}
	signer, legacySigner, payload, err := o.verifyJWS(ctx, plain, c)
	if err != nil {
		return Claims{}, nil, err
	}
	rc, err := parseClaims(payload, lim.MaxJSONDepth)
	if err != nil {
		return Claims{}, nil, err
	}
	rc.Signer = signer
	// The guard must remember the jti for as long as the token would be
	// accepted, which is until exp plus the skew.
	remember := func() time.Time { return rc.Expires.Add(lim.Skew) }
	if rc.JTI == "" && legacySigner {
		if err := o.checkLegacyClaims(&rc, c, lim); err != nil {
			return Claims{}, nil, err
		}
		rc.Legacy, rc.JTI = true, JTIPrefixLegacy+t.digest()
		remember = func() time.Time { return rc.Expires }
	} else if err := o.checkClaims(&rc, c, lim); err != nil {
		return Claims{}, nil, err
	}
	err = o.Replay.UseJTI(ctx, signer, rc.JTI, remember())
	if errors.Is(err, ErrReplayed) {
		return Claims{}, nil, err
	}
	if err != nil {
		return Claims{}, nil, fmt.Errorf("recording jti %s of %s: %w", quote(rc.JTI), quote(signer), err)
	}
	return rc.Claims, payload, nil
}

// verifyJWS checks the inner JWS and returns its signer, whether that
// signer may send legacy tokens, and the payload. The header is read here
// first, so that a wrong alg or a missing kid is refused before a signer is
// looked up; go-jose then parses and verifies.
func (o *Opener) verifyJWS(ctx context.Context, plain []byte, c check) (string, bool, []byte, error) {
	s := string(plain)
	if strings.Count(s, ".") != 2 {
		return "", false, nil, fmt.Errorf("%w: plaintext is not a compact JWS (it must have three dot-separated parts)", ErrMalformed)
	}
	seg, _, _ := strings.Cut(s, ".")
	if len(seg) > maxHeaderChars {
		return "", false, nil, fmt.Errorf("%w: JWS header longer than %d characters", ErrMalformed, maxHeaderChars)
	}
	hdr, err := decodeHeader(seg)
	if err != nil {
		return "", false, nil, fmt.Errorf("%w: JWS header: %w", ErrMalformed, err)
	}
	alg, err := headerString(hdr, "JWS", "alg", true)
	if err != nil {
		return "", false, nil, err
	}
	if alg != string(jose.RS512) {
		return "", false, nil, fmt.Errorf("%w: JWS alg is %s; only RS512 is accepted", ErrAlgorithm, quote(alg))
	}
	if _, ok := hdr["crit"]; ok {
		// Also refuses b64=false (RFC 7797), which go-jose would honour.
		return "", false, nil, fmt.Errorf("%w: JWS header has crit; no extension is supported", ErrMalformed)
	}
	signer, legacy, err := o.signerOf(ctx, hdr, c)
	if err != nil {
		return "", false, nil, err
	}
	pub, err := o.Signers.SignerKey(ctx, signer)
	if errors.Is(err, ErrUnknownSigner) {
		return "", false, nil, err
	}
	if err != nil {
		return "", false, nil, fmt.Errorf("looking up signer %s: %w", quote(signer), err)
	}
	if pub == nil {
		return "", false, nil, fmt.Errorf("%w: no key for signer %s", ErrUnknownSigner, quote(signer))
	}

	jws, err := jose.ParseSignedCompact(s, []jose.SignatureAlgorithm{jose.RS512})
	if err != nil {
		return "", false, nil, fmt.Errorf("%w: JWS does not parse: %s", ErrMalformed, quote(err.Error()))
	}
	kid, _ := headerString(hdr, "JWS", "kid", false)
	if len(jws.Signatures) != 1 || jws.Signatures[0].Header.KeyID != kid ||
		jws.Signatures[0].Header.Algorithm != string(jose.RS512) {
		// Our reading and go-jose's disagree (say, on a duplicated header
		// member); trust neither.
		return "", false, nil, fmt.Errorf("%w: JWS header is ambiguous", ErrMalformed)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return "", false, nil, fmt.Errorf("%w: JWS does not verify with the key registered for %s", ErrBadSignature, quote(signer))
	}
	return signer, legacy, payload, nil
}

// signerOf finds whose key verifies the JWS with header hdr: the kid's, or
// without one the signer named beside the token, if that signer may send
// legacy tokens. It also reports whether the signer may.
func (o *Opener) signerOf(ctx context.Context, hdr map[string]json.RawMessage, c check) (string, bool, error) {
	legacy := func(name string) (bool, error) {
		if c.legacy == nil || name == "" {
			return false, nil
		}
		ok, err := c.legacy(ctx, name)
		if err != nil {
			return false, fmt.Errorf("looking up whether %s sends legacy tokens: %w", quote(name), err)
		}
		return ok, nil
	}
	if _, ok := hdr["kid"]; ok {
		kid, err := headerString(hdr, "JWS", "kid", true)
		if err != nil {
			return "", false, err
		}
		if kid == "" {
			return "", false, fmt.Errorf("%w: JWS kid is empty; it must name the signer", ErrUnknownSigner)
		}
		if c.signer != "" && kid != c.signer {
			return "", false, fmt.Errorf("%w: JWS kid is %s but the request names %s beside the token; they must be the same", ErrUnknownSigner, quote(kid), quote(c.signer))
		}
		ok, err := legacy(kid)
		return kid, ok, err
	}
	ok, err := legacy(c.signer)
	switch {
	case err != nil:
		return "", false, err
	case ok:
		return c.signer, true, nil
	case c.legacy != nil && c.signer == "":
		return "", false, fmt.Errorf("%w: JWS header has no kid and the request names no platform (sPlatform); name the signer in one of them", ErrUnknownSigner)
	case c.legacy != nil:
		return "", false, fmt.Errorf("%w: JWS header has no kid; it must name the signer (platform %s is not registered for legacy tokens)", ErrUnknownSigner, quote(c.signer))
	}
	return "", false, fmt.Errorf("%w: JWS header has no kid; it must name the signer", ErrUnknownSigner)
}

// checkRequest checks the request claim, and aud.
func (o *Opener) checkRequest(rc *rawClaims, c check) error {
	takes := func() string {
		if len(c.requests) == 1 {
			return quote(c.requests[0])
		}
		q := make([]string, len(c.requests))
		for i, r := range c.requests {
			q[i] = quote(r)
		}
		return "one of " + strings.Join(q, ", ")
	}
	switch {
	case c.callback && rc.hasRequest:
		return fmt.Errorf("%w: a callback has no request claim, and this token's is %s", ErrWrongRequest, quote(rc.Request))
	case !c.callback && !rc.hasRequest:
		return fmt.Errorf("%w: the token has no request claim; this endpoint takes %s", ErrWrongRequest, takes())
	case !c.callback && !slices.Contains(c.requests, rc.Request):
		return fmt.Errorf("%w: the token is a %s request; this endpoint takes %s", ErrWrongRequest, quote(rc.Request), takes())
	}

	if rc.hasAud && !slices.Contains(rc.Audience, o.Audience) {
		return fmt.Errorf("%w: aud is %s, which does not include %s", ErrWrongAudience, quote(strings.Join(rc.Audience, ",")), quote(o.Audience))
	}
	if !rc.hasAud && c.callback {
		return fmt.Errorf("%w: a callback must have aud %s", ErrWrongAudience, quote(o.Audience))
	}
	return nil
}

func (o *Opener) checkClaims(rc *rawClaims, c check, lim Limits) error {
	if err := o.checkRequest(rc, c); err != nil {
		return err
	}

	if rc.JTI == "" {
		return fmt.Errorf("%w: every token needs a unique jti claim", ErrMissingJTI)
	}

	if !rc.hasIAT {
		return fmt.Errorf("%w: the token has no iat claim", ErrLifetime)
	}
	if !rc.hasExp {
		return fmt.Errorf("%w: the token has no exp claim", ErrLifetime)
	}
	life := rc.Expires.Sub(rc.IssuedAt)
	if life < 0 {
		return fmt.Errorf("%w: exp is before iat", ErrLifetime)
	}
	if life > lim.MaxLifetime {
		return fmt.Errorf("%w: exp is %s after iat; at most %s is accepted", ErrLifetime, life, lim.MaxLifetime)
	}
	now := o.now()
	if ahead := rc.IssuedAt.Sub(now); ahead > lim.Skew {
		return fmt.Errorf("%w: iat is %s ahead of the recipient's clock (allowed skew %s); check the sender's clock", ErrNotYetValid, ahead.Round(time.Second), lim.Skew)
	}
	if rc.hasNBF {
		if ahead := rc.notBefore.Sub(now); ahead > lim.Skew {
			return fmt.Errorf("%w: nbf is %s ahead of the recipient's clock (allowed skew %s)", ErrNotYetValid, ahead.Round(time.Second), lim.Skew)
		}
	}
	if late := now.Sub(rc.Expires); late >= lim.Skew {
		return fmt.Errorf("%w: exp was %s ago (allowed skew %s); make a new token for each call", ErrExpired, late.Round(time.Second), lim.Skew)
	}
	return nil
}

// checkLegacyClaims checks a legacy token's claims (see OpenWith) and sets
// rc.Expires to the end of its date's window.
func (o *Opener) checkLegacyClaims(rc *rawClaims, c check, lim Limits) error {
	if err := o.checkRequest(rc, c); err != nil {
		return err
	}
	if !rc.hasDate {
		return fmt.Errorf("%w: a token without jti must have a date claim (DD-MM-YYYY, as PHP's date('d-m-Y') writes it)", ErrMissingJTI)
	}
	day, err := time.Parse(LegacyDateLayout, rc.date)
	if err != nil {
		return fmt.Errorf("%w: claim date is %s, not DD-MM-YYYY", ErrMalformed, quote(rc.date))
	}
	// Accepted from the start of the day before the date (UTC) to the end
	// of the day after it: the broker's date is then one of the three,
	// whatever the platform's time zone.
	now := o.now()
	from, until := day.Add(-24*time.Hour), day.Add(48*time.Hour)
	if now.Before(from) {
		return fmt.Errorf("%w: date %s is more than a day after the recipient's date %s; check the sender's clock", ErrNotYetValid, rc.date, now.UTC().Format(LegacyDateLayout))
	}
	if !now.Before(until) {
		return fmt.Errorf("%w: date %s is more than a day before the recipient's date %s; make a new token for each call", ErrExpired, rc.date, now.UTC().Format(LegacyDateLayout))
	}
	if rc.hasIAT {
		if ahead := rc.IssuedAt.Sub(now); ahead > lim.Skew {
			return fmt.Errorf("%w: iat is %s ahead of the recipient's clock (allowed skew %s); check the sender's clock", ErrNotYetValid, ahead.Round(time.Second), lim.Skew)
		}
	}
	if rc.hasExp {
		if late := now.Sub(rc.Expires); late >= lim.Skew {
			return fmt.Errorf("%w: exp was %s ago (allowed skew %s); make a new token for each call", ErrExpired, late.Round(time.Second), lim.Skew)
		}
	}
	rc.Expires = until
	return nil
}

func (o *Opener) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}
