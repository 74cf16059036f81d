// Package token reads and writes the tokens that platforms and the broker
// exchange: a compact JWE (RFC 7516) whose plaintext is a compact JWS
// (RFC 7515) carrying a JSON object of claims (RFC 7519).
//
// The outer JWE uses alg RSA-OAEP-256 and enc A256CBC-HS512 (RFC 7518), with
// optional zip DEF, and is encrypted to the recipient's RSA key. The inner JWS
// uses alg RS512 and names its signer in the kid header. No other algorithm
// is accepted anywhere: a token that asks for any other alg, enc or zip is
// refused with ErrAlgorithm, in the JWE header before any RSA work and in
// the JWS header before the signer is looked up.
//
// graderqueue's platforms send legacy tokens: no kid in the JWS, and a date
// claim (DD-MM-YYYY) instead of iat, exp and jti. Opener.OpenWith reads
// them from the platforms allowed to send them, with the signer named
// beside the token, freshness from the date (a day either side) and the
// digest of the whole JWE as the replay guard's jti; the algorithms,
// decryption and signature are checked as for any token.
//
// The web console's login links carry a third kind of token, the broker's
// to itself: a compact JWS with alg HS256 under a key only the broker holds,
// typ "gb-console-login+jwt" (SignConsoleLogin, VerifyConsoleLogin). It is
// never encrypted (it holds no secret, only who the session is for) and no
// other algorithm is accepted for it.
//
// This is the only package of gradebroker that imports go-jose. It uses
// go-jose to produce tokens (Seal) and to parse and verify the inner JWS, but
// it takes the outer JWE apart itself: go-jose's Decrypt inflates zip DEF
// content with its own limit (the larger of 250 kB and ten times the
// compressed size), which is both larger than Limits.MaxPlaintextBytes for big
// tokens and smaller than it for legitimate, highly compressible ones, and it
// offers no way to decrypt without inflating. So the CEK is unwrapped with
// crypto/rsa (OAEP, SHA-256, as go-jose does), the content is opened with
// go-jose's own A256CBC-HS512 AEAD (cipher.NewCBCHMAC, the code behind
// go-jose's Decrypt), and the result is inflated here through a reader that
// stops at Limits.MaxPlaintextBytes.
package token
