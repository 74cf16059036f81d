package token

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestParseClaimsBounds checks each of the payload decoder's limits at the
// limit, where it must accept, and one past it, where it must refuse: an
// off-by-one in any of them refuses good tokens or lets a bad one through.
func TestParseClaimsBounds(t *testing.T) {
	t.Parallel()
	const depth = 4
	tests := []struct {
		name    string
		payload string
		want    error
		// check, when set, reads the claim back.
		check func(rawClaims) error
	}{
		{"nesting at the limit", `{"a":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`, nil, nil},
		{"nesting past the limit", `{"a":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`, ErrMalformed, nil},
		// A closed bracket ends its level: many shallow siblings are as
		// deep as one of them.
		{"siblings are not nesting", `{"a":[` + strings.Repeat(`{},[],`, 2*depth) + `{}]}`, nil, nil},
		{"jti at the limit", fmt.Sprintf(`{"jti":%q}`, strings.Repeat("j", maxJTIBytes)), nil, nil},
		{"jti past the limit", fmt.Sprintf(`{"jti":%q}`, strings.Repeat("j", maxJTIBytes+1)), ErrMalformed, nil},
		{"iat at the epoch", `{"iat":0}`, nil, wantIAT(time.Unix(minNumericDate, 0))},
		{"iat before the epoch", `{"iat":-1}`, ErrMalformed, nil},
		{"iat minus zero", `{"iat":-0}`, nil, wantIAT(time.Unix(0, 0))},
		{"iat starting with a nine", `{"iat":9}`, nil, wantIAT(time.Unix(9, 0))},
		{"iat at the last second of 9999", fmt.Sprintf(`{"iat":%d}`, maxNumericDate), nil, wantIAT(time.Unix(maxNumericDate, 0))},
		{"iat past 9999", fmt.Sprintf(`{"iat":%d}`, maxNumericDate+1), ErrMalformed, nil},
		// Not integers, so they take the floating-point path and its own
		// bounds.
		{"exp at the epoch, as a float", `{"exp":0.0}`, nil, func(rc rawClaims) error { return same("exp", rc.Expires, time.Unix(0, 0)) }},
		{"exp just before the epoch, as a float", `{"exp":-0.5}`, ErrMalformed, nil},
		{"exp at the end of 9999, as a float", fmt.Sprintf(`{"exp":%d.0}`, maxNumericDate), nil,
			func(rc rawClaims) error { return same("exp", rc.Expires, time.Unix(maxNumericDate, 0)) }},
		{"exp just past 9999, as a float", fmt.Sprintf(`{"exp":%d.5}`, maxNumericDate), ErrMalformed, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc, err := parseClaims([]byte(tt.payload), depth)
			if !errors.Is(err, tt.want) {
				t.Fatalf("parseClaims(%.80s): got error %v, want %v", tt.payload, err, tt.want)
			}
			if err == nil && tt.check != nil {
				if err := tt.check(rc); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func wantIAT(want time.Time) func(rawClaims) error {
	return func(rc rawClaims) error { return same("iat", rc.IssuedAt, want) }
}

func same(claim string, got, want time.Time) error {
	if !got.Equal(want) {
		return fmt.Errorf("%s = %v, want %v", claim, got, want)
	}
	return nil
}
