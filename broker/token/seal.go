package token

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// Seal makes a token: it signs payload, a JSON object, with RS512 and kid
// signerName, then encrypts the compact JWS to recipient with RSA-OAEP-256
// and A256CBC-HS512, cty "JWT", and zip DEF if compress is set. recipientKID,
// if not empty, goes into the JWE header so that a recipient with several
// keys knows which one to use (the broker's kids are in its JWKS).
//
// The broker uses it for callbacks (signerName = the broker's name, signer =
// KeyRing.Current()), and the platform client for requests. Seal does not
// add claims: the payload must already carry iat, exp, jti and request or
// aud. Leave compress off for callbacks unless the platform is known to
// inflate large payloads: several JOSE libraries cap inflated content at
// 250 kB by default.
func Seal(payload []byte, signerName string, signer *rsa.PrivateKey, recipient *rsa.PublicKey, recipientKID string, compress bool) (string, error) {
	if signerName == "" {
		return "", errors.New("seal: the signer's name is required (it becomes the JWS kid)")
	}
	if signer == nil || recipient == nil {
		return "", errors.New("seal: both the signer's private key and the recipient's public key are required")
	}
	if err := checkRSABits(signer.N.BitLen()); err != nil {
		return "", fmt.Errorf("seal: signer: %w", err)
	}
	if err := checkRSABits(recipient.N.BitLen()); err != nil {
		return "", fmt.Errorf("seal: recipient: %w", err)
	}
	if trimmed := bytes.TrimLeft(payload, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(payload) {
		return "", errors.New("seal: the payload must be a JSON object")
	}

	sig, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.RS512,
		// A JSONWebKey, rather than the bare key, is how go-jose puts a kid
		// into the protected header.
		Key: jose.JSONWebKey{Key: signer, KeyID: signerName},
	}, nil)
	if err != nil {
		return "", fmt.Errorf("seal: making the signer: %w", err)
	}
	jws, err := sig.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("seal: signing: %w", err)
	}
	inner, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("seal: serialising the JWS: %w", err)
	}

	opts := (&jose.EncrypterOptions{}).WithContentType("JWT")
	if compress {
		opts.Compression = jose.DEFLATE
	}
	enc, err := jose.NewEncrypter(jose.A256CBC_HS512, jose.Recipient{
		Algorithm: jose.RSA_OAEP_256,
		Key:       recipient,
		KeyID:     recipientKID,
	}, opts)
	if err != nil {
		return "", fmt.Errorf("seal: making the encrypter: %w", err)
	}
	jwe, err := enc.Encrypt([]byte(inner))
	if err != nil {
		return "", fmt.Errorf("seal: encrypting: %w", err)
	}
	out, err := jwe.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("seal: serialising the JWE: %w", err)
	}
	return out, nil
}

// NewJTI returns a fresh random jti: 128 bits from crypto/rand, as 26
// base32 characters.
func NewJTI() string { return rand.Text() }
