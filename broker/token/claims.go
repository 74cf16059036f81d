package token

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Claims are the registered claims of a token that Open has checked.
type Claims struct {
	// Signer is the JWS kid: the platform's name, or the broker's name on a
	// callback.
	Signer string
	// Request is the request claim ("sendjob", "getjob", ...); empty on a
	// callback.
	Request string
	// IssuedAt is the iat claim.
	IssuedAt time.Time
	// Expires is the exp claim.
	Expires time.Time
	// JTI is the jti claim, unique per signer.
	JTI string
	// Audience is the aud claim, whether sent as a string or an array; nil
	// when absent.
	Audience []string
	// Legacy is set for a legacy token (see Opener.OpenWith): JTI is then
	// the digest of its JWE, and Expires the end of its date's window.
	Legacy bool
}

// maxJTIBytes bounds the jti, which the replay guard stores.
const maxJTIBytes = 256

// Bounds on numeric dates: before 1970 or after 9999 is a bug on the
// sender's side, and the bounds keep every conversion below exact.
const (
	minNumericDate = 0
	maxNumericDate = 253402300799 // 9999-12-31T23:59:59Z
)

// rawClaims is a payload's top-level members and the claims read from them.
type rawClaims struct {
	Claims
	hasRequest bool
	hasIAT     bool
	hasExp     bool
	hasAud     bool
	notBefore  time.Time
	hasNBF     bool
	date       string // graderqueue's date claim, DD-MM-YYYY
	hasDate    bool
}

// checkDepth refuses JSON nested deeper than max, by a scan that costs one
// pass and no allocation, before any decoder builds the nested values.
func checkDepth(data []byte, max int) error {
	depth := 0
	inString := false
	escaped := false
	for _, c := range data {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return fmt.Errorf("%w: payload nests deeper than %d levels", ErrMalformed, max)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}

// parseClaims checks that payload is one JSON object no deeper than
// maxDepth, with unique member names (RFC 7519 §4), and reads the registered
// claims from it. It checks their types but not their values.
func parseClaims(payload []byte, maxDepth int) (rawClaims, error) {
	var rc rawClaims
	if err := checkDepth(payload, maxDepth); err != nil {
		return rc, err
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return rc, fmt.Errorf("%w: payload is not a JSON object", ErrMalformed)
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return rc, fmt.Errorf("%w: payload is not valid JSON", ErrMalformed)
		}
		name, ok := tok.(string)
		if !ok {
			return rc, fmt.Errorf("%w: payload is not valid JSON", ErrMalformed)
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return rc, fmt.Errorf("%w: payload is not valid JSON", ErrMalformed)
		}
		if seen[name] {
			// Refuse rather than pick one: the platform API decodes the
			// same bytes again and must not see a different request.
			return rc, fmt.Errorf("%w: payload has member %s twice", ErrMalformed, quote(name))
		}
		seen[name] = true
		if err := rc.set(name, value); err != nil {
			return rc, err
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return rc, fmt.Errorf("%w: payload is not valid JSON", ErrMalformed)
	}
	if _, err := dec.Token(); err != io.EOF {
		return rc, fmt.Errorf("%w: payload has data after its JSON object", ErrMalformed)
	}
	return rc, nil
}

func (rc *rawClaims) set(name string, value json.RawMessage) error {
	var err error
	switch name {
	case "request":
		rc.hasRequest = true
		if err := json.Unmarshal(value, &rc.Request); err != nil {
			return fmt.Errorf("%w: claim request is not a string", ErrMalformed)
		}
	case "iat":
		rc.hasIAT = true
		rc.IssuedAt, err = numericDate("iat", value)
	case "exp":
		rc.hasExp = true
		rc.Expires, err = numericDate("exp", value)
	case "nbf":
		rc.hasNBF = true
		rc.notBefore, err = numericDate("nbf", value)
	case "jti":
		if err := json.Unmarshal(value, &rc.JTI); err != nil {
			return fmt.Errorf("%w: claim jti is not a string", ErrMalformed)
		}
		if len(rc.JTI) > maxJTIBytes {
			return fmt.Errorf("%w: claim jti is longer than %d bytes", ErrMalformed, maxJTIBytes)
		}
	case "aud":
		rc.hasAud = true
		rc.Audience, err = audience(value)
	case "date":
		rc.hasDate = true
		if err := json.Unmarshal(value, &rc.date); err != nil {
			return fmt.Errorf("%w: claim date is not a string", ErrMalformed)
		}
	}
	return err
}

// numericDate reads a NumericDate (RFC 7519 §2): seconds since the epoch as
// a JSON number, integer or not, or as a string holding one, which some PHP
// code sends.
func numericDate(claim string, raw json.RawMessage) (time.Time, error) {
	text := string(raw)
	if strings.HasPrefix(text, `"`) {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, fmt.Errorf("%w: claim %s is not a number", ErrMalformed, claim)
		}
		text = strings.TrimSpace(s)
	}
	// Only JSON number syntax: strconv alone would also take "Inf", "NaN",
	// "0x1p5" and "1_000".
	if text == "" || !(text[0] == '-' || text[0] >= '0' && text[0] <= '9') || !json.Valid([]byte(text)) {
		return time.Time{}, fmt.Errorf("%w: claim %s is not a number", ErrMalformed, claim)
	}
	if secs, err := strconv.ParseInt(text, 10, 64); err == nil {
		if secs < minNumericDate || secs > maxNumericDate {
			return time.Time{}, fmt.Errorf("%w: claim %s is out of range", ErrMalformed, claim)
		}
		return time.Unix(secs, 0), nil
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsNaN(f) || f < minNumericDate || f > maxNumericDate {
		return time.Time{}, fmt.Errorf("%w: claim %s is out of range", ErrMalformed, claim)
	}
	secs, frac := math.Modf(f)
	return time.Unix(int64(secs), int64(frac*1e9)), nil
}

// audience reads aud, which RFC 7519 §4.1.3 allows as one string or an array
// of strings.
func audience(raw json.RawMessage) ([]string, error) {
	if string(raw) == "null" {
		return nil, fmt.Errorf("%w: claim aud is null", ErrMalformed)
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err == nil && many != nil {
		return many, nil
	}
	return nil, fmt.Errorf("%w: claim aud is neither a string nor an array of strings", ErrMalformed)
}
