package platform

import (
	"errors"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
)

// refusalReasons maps each token refusal to its metric label, in the order
// tokenError tests them. The labels are metrics.TokenReasons.
var refusalReasons = []struct {
	err    error
	reason string
}{
	{token.ErrMalformed, "malformed"},
	{token.ErrTooLarge, "too_large"},
	{token.ErrAlgorithm, "algorithm"},
	{token.ErrWrongRequest, "wrong_request"},
	{token.ErrMissingJTI, "missing_jti"},
	{token.ErrLifetime, "lifetime"},
	{token.ErrDecrypt, "decrypt"},
	{token.ErrUnknownSigner, "unknown_signer"},
	{token.ErrBadSignature, "bad_signature"},
	{token.ErrExpired, "expired"},
	{token.ErrNotYetValid, "not_yet_valid"},
	{token.ErrReplayed, "replayed"},
	{token.ErrWrongAudience, "audience"},
	// The platform named by a valid token was removed meanwhile.
	{broker.ErrNotFound, "unknown_signer"},
	{store.ErrTokenReused, "replayed"},
}

// RefusalReason returns the metric label of a token refusal, or "" when err
// is not one (a storage failure, say).
func RefusalReason(err error) string {
	for _, r := range refusalReasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ""
}
