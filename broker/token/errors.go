package token

import "errors"

// The errors below are what Open and OpenCallback return, always wrapped with
// a message that says what exactly was wrong. Callers test them with
// errors.Is; the platform API maps each to a gRPC code. None of the messages
// carries key material, plaintext or payload content.
var (
	// ErrMalformed means the token is not a well-formed compact JWE holding
	// a compact JWS holding a JSON object with well-typed claims.
	ErrMalformed = errors.New("token is malformed")

	// ErrTooLarge means the token, its decrypted plaintext or its inflated
	// plaintext is larger than the configured Limits allow.
	ErrTooLarge = errors.New("token is too large")

	// ErrDecrypt means the token could not be decrypted: it was encrypted to
	// a key the recipient does not hold (an old or wrong public key, or an
	// unknown kid) or its ciphertext was altered.
	ErrDecrypt = errors.New("token cannot be decrypted")

	// ErrUnknownSigner means the JWS has no kid header or names a signer the
	// recipient does not know.
	ErrUnknownSigner = errors.New("token signer is unknown")

	// ErrBadSignature means the JWS signature does not verify with the
	// public key registered for the signer it names.
	ErrBadSignature = errors.New("token signature is invalid")

	// ErrAlgorithm means the token asks for an algorithm other than
	// RSA-OAEP-256 (JWE alg), A256CBC-HS512 (JWE enc), DEF (JWE zip) or
	// RS512 (JWS alg).
	ErrAlgorithm = errors.New("token uses a disallowed algorithm")

	// ErrExpired means the token's exp is in the past, beyond the allowed
	// clock skew.
	ErrExpired = errors.New("token has expired")

	// ErrNotYetValid means the token's iat (or nbf) is in the future, beyond
	// the allowed clock skew.
	ErrNotYetValid = errors.New("token is not valid yet")

	// ErrLifetime means the token lacks iat or exp, or its exp is before its
	// iat or more than Limits.MaxLifetime after it.
	ErrLifetime = errors.New("token lifetime is invalid")

	// ErrMissingJTI means the token has no jti claim, or an empty one.
	ErrMissingJTI = errors.New("token has no jti")

	// ErrReplayed means a token with the same signer and jti was accepted
	// before. ReplayGuard implementations return it.
	ErrReplayed = errors.New("token was already used")

	// ErrWrongRequest means the token's request claim is not the one the
	// endpoint expects.
	ErrWrongRequest = errors.New("token is for another request")

	// ErrWrongAudience means the token's aud claim does not name the
	// recipient.
	ErrWrongAudience = errors.New("token is for another audience")
)
