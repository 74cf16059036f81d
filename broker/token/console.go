package token

import (
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// consoleLoginType is the typ header of a console login token, so that no
// other token of the broker's can pass for one (and the other way round).
const consoleLoginType = "gb-console-login+jwt"

// maxConsoleLoginBytes bounds the token a browser posts back: the claims
// are a few short strings, and a login page has no business parsing more.
const maxConsoleLoginBytes = 4096

// ConsoleLogin is what a console login link carries: who the session it
// opens is for and what it may see. The broker signs it when an operator
// asks for a link (broker admin console-login) and checks it when the
// browser posts it back; the link is used up in the database, by JTI.
type ConsoleLogin struct {
	// JTI identifies the link; a link opens one session.
	JTI string `json:"jti"`
	// Expires is when the link stops working.
	Expires time.Time `json:"-"`
	// Name, Role, Platform and Tags describe the session to open.
	Name     string   `json:"name"`
	Role     string   `json:"role"`
	Platform string   `json:"platform,omitempty"`
	Tags     []string `json:"tags,omitempty"`
	// SessionTTL is how long the session lasts once opened.
	SessionTTL time.Duration `json:"-"`
	// CreatedBy is the operator who asked for the link.
	CreatedBy string `json:"by"`
}

// consoleLoginClaims is ConsoleLogin on the wire: times as seconds.
type consoleLoginClaims struct {
	ConsoleLogin
	Exp        int64 `json:"exp"`
	SessionTTL int64 `json:"ttl"`
}

// SignConsoleLogin signs l as a compact JWS with HS256 under key, which must
// be at least 32 bytes. The key is the broker's own and never leaves it:
// only the broker makes and checks these tokens.
func SignConsoleLogin(key []byte, l ConsoleLogin) (string, error) {
	if len(key) < 32 {
		return "", errors.New("console login: the signing key must be at least 32 bytes")
	}
	if l.JTI == "" || l.Expires.IsZero() {
		return "", errors.New("console login: jti and an expiry are required")
	}
	payload, err := json.Marshal(consoleLoginClaims{ConsoleLogin: l, Exp: l.Expires.Unix(), SessionTTL: int64(l.SessionTTL / time.Second)})
	if err != nil {
		return "", fmt.Errorf("console login: %w", err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: key},
		(&jose.SignerOptions{}).WithType(consoleLoginType))
	if err != nil {
		return "", fmt.Errorf("console login: making the signer: %w", err)
	}
	jws, err := sig.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("console login: signing: %w", err)
	}
	return jws.CompactSerialize()
}

// VerifyConsoleLogin checks a console login token against key at now: its
// size, its algorithm (HS256 only), its typ, its signature and its expiry.
// It returns ErrMalformed, ErrTooLarge, ErrAlgorithm, ErrBadSignature or
// ErrExpired, wrapped with what was wrong. It does not check single use:
// the caller records the JTI.
func VerifyConsoleLogin(key []byte, compact string, now time.Time) (ConsoleLogin, error) {
	if len(compact) > maxConsoleLoginBytes {
		return ConsoleLogin{}, fmt.Errorf("%w: a login token of %d bytes", ErrTooLarge, len(compact))
	}
	jws, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.HS256})
	if err != nil {
		return ConsoleLogin{}, fmt.Errorf("%w: not a login token: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return ConsoleLogin{}, fmt.Errorf("%w: a login token has one signature", ErrMalformed)
	}
	h := jws.Signatures[0].Protected
	if h.Algorithm != string(jose.HS256) {
		return ConsoleLogin{}, fmt.Errorf("%w: %q", ErrAlgorithm, h.Algorithm)
	}
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); !hmac.Equal([]byte(typ), []byte(consoleLoginType)) {
		return ConsoleLogin{}, fmt.Errorf("%w: typ %q is not a console login", ErrMalformed, typ)
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return ConsoleLogin{}, fmt.Errorf("%w: the login link was not made by this broker (or the broker restarted since)", ErrBadSignature)
	}
	var c consoleLoginClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return ConsoleLogin{}, fmt.Errorf("%w: login claims: %v", ErrMalformed, err)
	}
	if c.JTI == "" || c.Exp == 0 || c.Role == "" || c.Name == "" {
		return ConsoleLogin{}, fmt.Errorf("%w: a login token needs jti, exp, role and name", ErrMalformed)
	}
	l := c.ConsoleLogin
	l.Expires = time.Unix(c.Exp, 0)
	l.SessionTTL = time.Duration(c.SessionTTL) * time.Second
	if !now.Before(l.Expires) {
		return ConsoleLogin{}, fmt.Errorf("%w: the login link expired at %s; ask an operator for a new one", ErrExpired, l.Expires.UTC().Format(time.RFC3339))
	}
	return l, nil
}
