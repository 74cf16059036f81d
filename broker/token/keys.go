package token

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

const (
	// MinRSABits is the smallest RSA modulus accepted for any key, ours or a
	// platform's: below it RSA no longer gives the 112-bit security NIST asks
	// of keys in use today.
	MinRSABits = 2048

	// MaxRSABits is the largest RSA modulus accepted. It bounds the cost of
	// one RSA operation, which a stranger can make the broker perform by
	// sending a token.
	MaxRSABits = 8192
)

// KeyRing holds the broker's own private keys: the current one and,
// during a rotation, the next one. Tokens encrypted to either open, so
// platforms can move to the next key at their own pace; the current key
// signs what the broker sends. A KeyRing is immutable and safe for
// concurrent use.
type KeyRing struct {
	keys []ringKey // current first
	jwks []byte
}

type ringKey struct {
	id   string
	priv *rsa.PrivateKey
}

// Key is one of the broker's private keys with the id (JWK kid) under which
// it is published. An empty ID stands for the key's RFC 7638 thumbprint.
type Key struct {
	// ID is the kid published in the JWKS and expected in JWE headers.
	ID string
	// Private is the key; nil in NewKeyRingWithIDs's next means no next key.
	Private *rsa.PrivateKey
}

// NewKeyRing returns a KeyRing whose keys are published under their RFC 7638
// thumbprints. next may be nil. It fails if a key is not a valid RSA key of
// MinRSABits to MaxRSABits bits, or if next is the same key as current.
func NewKeyRing(current, next *rsa.PrivateKey) (*KeyRing, error) {
	return NewKeyRingWithIDs(Key{Private: current}, Key{Private: next})
}

// NewKeyRingWithIDs is NewKeyRing with operator-chosen key ids; an empty ID
// falls back to the thumbprint, and next.Private may be nil. The two ids must
// differ.
func NewKeyRingWithIDs(current, next Key) (*KeyRing, error) {
	if current.Private == nil {
		return nil, errors.New("key ring: the current key is required")
	}
	var ring KeyRing
	for _, k := range []Key{current, next} {
		if k.Private == nil {
			continue
		}
		if err := checkRSABits(k.Private.N.BitLen()); err != nil {
			return nil, fmt.Errorf("key ring: %w", err)
		}
		if err := k.Private.Validate(); err != nil {
			return nil, fmt.Errorf("key ring: invalid RSA private key: %w", err)
		}
		id := k.ID
		if id == "" {
			var err error
			if id, err = Thumbprint(&k.Private.PublicKey); err != nil {
				return nil, fmt.Errorf("key ring: %w", err)
			}
		}
		ring.keys = append(ring.keys, ringKey{id: id, priv: k.Private})
	}
	if len(ring.keys) == 2 {
		if ring.keys[0].priv.PublicKey.Equal(&ring.keys[1].priv.PublicKey) {
			return nil, errors.New("key ring: the next key is the current key; generate a new one")
		}
		if ring.keys[0].id == ring.keys[1].id {
			return nil, fmt.Errorf("key ring: both keys have id %q; ids must differ", ring.keys[0].id)
		}
	}

	set := jose.JSONWebKeySet{}
	for _, k := range ring.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key:       &k.priv.PublicKey,
			KeyID:     k.id,
			Use:       "enc",
			Algorithm: string(jose.RSA_OAEP_256),
		})
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("key ring: encoding the JWKS: %w", err)
	}
	ring.jwks = b
	return &ring, nil
}

// JWKS returns the public halves of the ring's keys as a JSON Web Key Set
// (RFC 7517), current key first, each with kty, n, e, kid, use "enc" and alg
// "RSA-OAEP-256". It is what GET /v1/keys serves.
func (k *KeyRing) JWKS() []byte {
	return append([]byte(nil), k.jwks...)
}

// JWKSWithSigner is JWKS plus the current key once more as a signing key:
// kid = signer (the broker's name, the kid of its callback JWS), use "sig",
// alg "RS512", so that a platform's JOSE library can find the key that
// verifies callbacks in the same set, by the JWS's own kid.
func (k *KeyRing) JWKSWithSigner(signer string) ([]byte, error) {
	set := jose.JSONWebKeySet{}
	if err := json.Unmarshal(k.jwks, &set); err != nil {
		return nil, fmt.Errorf("key ring: decoding the JWKS: %w", err)
	}
	set.Keys = append(set.Keys, jose.JSONWebKey{
		Key:       &k.keys[0].priv.PublicKey,
		KeyID:     signer,
		Use:       "sig",
		Algorithm: string(jose.RS512),
	})
	return json.Marshal(set)
}

// Current returns the current private key, the one the broker signs with.
func (k *KeyRing) Current() *rsa.PrivateKey { return k.keys[0].priv }

// CurrentKID returns the kid of the current key.
func (k *KeyRing) CurrentKID() string { return k.keys[0].id }

// KIDs returns the kids of the ring's keys, current first.
func (k *KeyRing) KIDs() []string {
	ids := make([]string, len(k.keys))
	for i, rk := range k.keys {
		ids[i] = rk.id
	}
	return ids
}

// candidates returns the keys to try for a JWE whose header names kid (or
// none): the named key alone, or every key, current first. An unknown kid
// gives no candidates, so a token meant for a retired key costs no RSA work.
func (k *KeyRing) candidates(kid string, named bool) []ringKey {
	if !named {
		return k.keys
	}
	for _, rk := range k.keys {
		if rk.id == kid {
			return []ringKey{rk}
		}
	}
	return nil
}

// Thumbprint returns the RFC 7638 SHA-256 thumbprint of pub, base64url
// without padding: the default kid of a broker key, and a handy way to name
// a platform's key in logs and listings.
func Thumbprint(pub *rsa.PublicKey) (string, error) {
	if pub == nil {
		return "", errors.New("thumbprint: no key")
	}
	jwk := jose.JSONWebKey{Key: pub}
	sum, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// LoadPrivateKeyPEM parses an RSA private key from PEM, in PKCS#1 ("RSA
// PRIVATE KEY") or PKCS#8 ("PRIVATE KEY") form. It refuses encrypted PEM,
// non-RSA keys and keys outside MinRSABits..MaxRSABits bits, saying which.
func LoadPrivateKeyPEM(b []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New(`private key: no PEM block found; expected "-----BEGIN PRIVATE KEY-----" or "-----BEGIN RSA PRIVATE KEY-----"`)
	}
	if strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
		return nil, errors.New("private key: the PEM is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)")
	}
	var key *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("private key: bad PKCS#1 RSA key: %w", err)
		}
		key = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("private key: bad PKCS#8 key: %w", err)
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("private key: the key is %s, not RSA; generate one with openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:%d", keyKind(k), MinRSABits)
		}
		key = rk
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("private key: the PKCS#8 key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)")
	default:
		return nil, fmt.Errorf(`private key: the PEM block is %q; expected "PRIVATE KEY" or "RSA PRIVATE KEY"`, block.Type)
	}
	if err := checkRSABits(key.N.BitLen()); err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("private key: invalid RSA key: %w", err)
	}
	key.Precompute()
	return key, nil
}

// ParsePublicKeyPEM parses an RSA public key from PEM, in SPKI ("PUBLIC
// KEY", what openssl pkey -pubout writes) or PKCS#1 ("RSA PUBLIC KEY") form.
// It refuses private keys, certificates, non-RSA keys and keys outside
// MinRSABits..MaxRSABits bits, saying which and how to fix it.
func ParsePublicKeyPEM(b []byte) (*rsa.PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New(`public key: no PEM block found; expected "-----BEGIN PUBLIC KEY-----"`)
	}
	var pub *rsa.PublicKey
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: bad SPKI key: %w", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key: the key is %s, not RSA", keyKind(k))
		}
		pub = rk
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: bad PKCS#1 RSA key: %w", err)
		}
		pub = k
	case "CERTIFICATE":
		return nil, errors.New("public key: this is a certificate; extract its key with openssl x509 -in CERT -pubkey -noout")
	case "PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		// Say so without echoing anything: the caller was about to store a
		// secret where a public key belongs.
		return nil, errors.New("public key: this is a private key; send only the public half (openssl pkey -in KEY -pubout)")
	default:
		return nil, fmt.Errorf(`public key: the PEM block is %q; expected "PUBLIC KEY"`, block.Type)
	}
	if err := checkRSABits(pub.N.BitLen()); err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if pub.E < 3 || pub.E%2 == 0 {
		return nil, fmt.Errorf("public key: invalid RSA public exponent %d", pub.E)
	}
	return pub, nil
}

func checkRSABits(bits int) error {
	if bits < MinRSABits {
		return fmt.Errorf("RSA key has %d bits; at least %d are required", bits, MinRSABits)
	}
	if bits > MaxRSABits {
		return fmt.Errorf("RSA key has %d bits; at most %d are accepted", bits, MaxRSABits)
	}
	return nil
}

func keyKind(k any) string {
	switch fmt.Sprintf("%T", k) {
	case "*ecdsa.PrivateKey", "*ecdsa.PublicKey", "*ecdh.PrivateKey", "*ecdh.PublicKey":
		return "an elliptic-curve key"
	case "ed25519.PrivateKey", "ed25519.PublicKey":
		return "an Ed25519 key"
	default:
		return fmt.Sprintf("a %T", k)
	}
}
