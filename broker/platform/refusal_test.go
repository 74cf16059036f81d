package platform

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/metrics"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
)

func TestRefusalReason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: not five parts", token.ErrMalformed), "malformed"},
		{fmt.Errorf("%w: 9 MiB", token.ErrTooLarge), "too_large"},
		{fmt.Errorf("%w: RSA1_5", token.ErrAlgorithm), "algorithm"},
		{fmt.Errorf("wrapped twice: %w", fmt.Errorf("%w: x", token.ErrDecrypt)), "decrypt"},
		{token.ErrUnknownSigner, "unknown_signer"},
		{token.ErrBadSignature, "bad_signature"},
		{token.ErrExpired, "expired"},
		{token.ErrNotYetValid, "not_yet_valid"},
		{token.ErrLifetime, "lifetime"},
		{token.ErrMissingJTI, "missing_jti"},
		{token.ErrReplayed, "replayed"},
		{token.ErrWrongRequest, "wrong_request"},
		{token.ErrWrongAudience, "audience"},
		{fmt.Errorf("platform: %w", broker.ErrNotFound), "unknown_signer"},
		{fmt.Errorf("use jti: %w", store.ErrTokenReused), "replayed"},
		{errors.New("disk I/O error"), ""},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := RefusalReason(tt.err); got != tt.want {
			t.Errorf("RefusalReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	// Every label is one metrics counts under its own name.
	for _, r := range refusalReasons {
		if !slices.Contains(metrics.TokenReasons, r.reason) {
			t.Errorf("reason %q of %v is not in metrics.TokenReasons", r.reason, r.err)
		}
	}
}
