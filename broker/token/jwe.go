package token

import (
	"bytes"
	"compress/flate"
	"crypto/aes"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	josecipher "github.com/go-jose/go-jose/v4/cipher"
)

// Sizes fixed by RFC 7518 §5.2.5 for A256CBC-HS512.
const (
	cekBytes = 64 // MAC key and AES-256 key
	ivBytes  = 16 // one AES block
	tagBytes = 32 // HMAC-SHA-512 truncated to half
)

// maxHeaderChars bounds a base64url protected header before it is decoded.
// Real headers are around 100 bytes; this leaves room for any library's
// extra members while keeping header parsing cheap.
const maxHeaderChars = 8 << 10

// jwe is a compact JWE taken apart and checked, but not yet decrypted.
type jwe struct {
	protected    string // the first segment, as sent: it is the AEAD's AAD
	kid          string
	hasKID       bool
	deflate      bool
	encryptedKey []byte
	iv           []byte
	sealed       []byte // ciphertext followed by the tag, as cipher.AEAD wants it
}

// parseJWE splits and decodes a compact JWE and checks its protected header.
// It does no RSA work: everything refused here is refused cheaply.
func parseJWE(compact string) (*jwe, error) {
	if strings.Count(compact, ".") != 4 {
		return nil, fmt.Errorf("%w: not a compact JWE (it must have five dot-separated parts)", ErrMalformed)
	}
	seg := strings.SplitN(compact, ".", 5)
	if len(seg[0]) > maxHeaderChars {
		return nil, fmt.Errorf("%w: JWE header longer than %d characters", ErrMalformed, maxHeaderChars)
	}
	hdr, err := decodeHeader(seg[0])
	if err != nil {
		return nil, fmt.Errorf("%w: JWE header: %w", ErrMalformed, err)
	}
	t := &jwe{protected: seg[0]}

	alg, err := headerString(hdr, "JWE", "alg", true)
	if err != nil {
		return nil, err
	}
	if alg != string(jose.RSA_OAEP_256) {
		return nil, fmt.Errorf("%w: JWE alg is %s; only RSA-OAEP-256 is accepted", ErrAlgorithm, quote(alg))
	}
	enc, err := headerString(hdr, "JWE", "enc", true)
	if err != nil {
		return nil, err
	}
	if enc != string(jose.A256CBC_HS512) {
		return nil, fmt.Errorf("%w: JWE enc is %s; only A256CBC-HS512 is accepted", ErrAlgorithm, quote(enc))
	}
	if _, ok := hdr["zip"]; ok {
		zip, err := headerString(hdr, "JWE", "zip", true)
		if err != nil {
			return nil, err
		}
		if zip != string(jose.DEFLATE) {
			return nil, fmt.Errorf("%w: JWE zip is %s; only DEF is accepted", ErrAlgorithm, quote(zip))
		}
		t.deflate = true
	}
	if _, ok := hdr["crit"]; ok {
		// RFC 7516 §4.1.13: a recipient must refuse critical extensions it
		// does not implement, and we implement none.
		return nil, fmt.Errorf("%w: JWE header has crit; no extension is supported", ErrMalformed)
	}
	if _, ok := hdr["cty"]; ok {
		cty, err := headerString(hdr, "JWE", "cty", false)
		if err != nil {
			return nil, err
		}
		// RFC 7519 §5.2 says "JWT" (recommended uppercase) for nested
		// tokens; libraries differ in case, and some leave it out.
		if !strings.EqualFold(cty, "JWT") {
			return nil, fmt.Errorf("%w: JWE cty is %s; the content must be a JWT (cty \"JWT\" or none)", ErrMalformed, quote(cty))
		}
	}
	if _, ok := hdr["kid"]; ok {
		if t.kid, err = headerString(hdr, "JWE", "kid", false); err != nil {
			return nil, err
		}
		t.hasKID = true
	}

	if t.encryptedKey, err = decodeSegment(seg[1], "encrypted key"); err != nil {
		return nil, err
	}
	if n := len(t.encryptedKey); n < MinRSABits/8 || n > MaxRSABits/8 {
		return nil, fmt.Errorf("%w: encrypted key is %d bytes, which no accepted RSA key produces", ErrDecrypt, n)
	}
	if t.iv, err = decodeSegment(seg[2], "IV"); err != nil {
		return nil, err
	}
	if len(t.iv) != ivBytes {
		return nil, fmt.Errorf("%w: IV is %d bytes; A256CBC-HS512 needs %d", ErrMalformed, len(t.iv), ivBytes)
	}
	// Decode ciphertext and tag into one buffer so the AEAD needs no copy.
	ctLen := base64.RawURLEncoding.DecodedLen(len(seg[3]))
	buf := make([]byte, ctLen+base64.RawURLEncoding.DecodedLen(len(seg[4])))
	n, err := base64.RawURLEncoding.Decode(buf, []byte(seg[3]))
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext is not base64url", ErrMalformed)
	}
	if n == 0 || n%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: ciphertext is %d bytes, not a positive multiple of %d", ErrMalformed, n, aes.BlockSize)
	}
	m, err := base64.RawURLEncoding.Decode(buf[n:], []byte(seg[4]))
	if err != nil {
		return nil, fmt.Errorf("%w: authentication tag is not base64url", ErrMalformed)
	}
	if m != tagBytes {
		return nil, fmt.Errorf("%w: authentication tag is %d bytes; A256CBC-HS512 needs %d", ErrMalformed, m, tagBytes)
	}
	t.sealed = buf[:n+m]
	return t, nil
}

// digest is the base64url SHA-256 of the JWE in canonical compact form:
// the protected header as sent (it is the AAD, so no other spelling of it
// decrypts), the other parts re-encoded from their bytes, so that setting a
// part's spare base64 bits makes no new digest for the same token.
func (t *jwe) digest() string {
	ct, tag := t.sealed[:len(t.sealed)-tagBytes], t.sealed[len(t.sealed)-tagBytes:]
	h := sha256.New()
	h.Write([]byte(t.protected))
	for _, p := range [][]byte{t.encryptedKey, t.iv, ct, tag} {
		h.Write([]byte{'.'})
		h.Write([]byte(base64.RawURLEncoding.EncodeToString(p)))
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// decrypt opens the JWE with the first of keys that works and returns the
// plaintext, inflated if the header asks for DEF. maxPlain bounds the
// result: inflation stops one byte past it, so a DEF bomb costs at most
// maxPlain bytes of memory however far it would inflate.
func (t *jwe) decrypt(keys []ringKey, maxPlain int) ([]byte, error) {
	var plain []byte
	for _, k := range keys {
		if len(t.encryptedKey) != k.priv.Size() {
			continue
		}
		// Same call as go-jose's RSA-OAEP-256 key decryption. Every failure
		// below reads the same to the sender, so there is no oracle to
		// probe.
		cek, err := rsa.DecryptOAEP(sha256.New(), nil, k.priv, t.encryptedKey, nil)
		if err != nil || len(cek) != cekBytes {
			continue
		}
		aead, err := josecipher.NewCBCHMAC(cek, aes.NewCipher)
		if err != nil {
			continue
		}
		// Open checks the tag (in constant time) before it decrypts, so
		// tampered ciphertext never reaches the padding check.
		p, err := aead.Open(nil, t.iv, t.sealed, []byte(t.protected))
		if err != nil {
			continue
		}
		plain = p
		break
	}
	if plain == nil {
		if t.hasKID {
			return nil, fmt.Errorf("%w: not encrypted to key %s, or altered; the sender may hold an outdated public key", ErrDecrypt, quote(t.kid))
		}
		return nil, fmt.Errorf("%w: not encrypted to any of the recipient's keys, or altered; the sender may hold an outdated public key", ErrDecrypt)
	}
	if !t.deflate {
		if len(plain) > maxPlain {
			return nil, fmt.Errorf("%w: plaintext is %d bytes; the limit is %d", ErrTooLarge, len(plain), maxPlain)
		}
		return plain, nil
	}
	return inflate(plain, maxPlain)
}

// inflate decompresses raw DEFLATE (RFC 1951) data, refusing output larger
// than limit without ever holding more than limit+1 bytes of it. The buffer
// is grown by hand rather than by bytes.Buffer or io.ReadAll, whose doubling
// would allocate up to twice the limit just to learn it was exceeded.
func inflate(data []byte, limit int) ([]byte, error) {
	r := flate.NewReader(bytes.NewReader(data))
	defer r.Close()
	buf := make([]byte, 0, min(limit+1, 4*len(data)+512))
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				return nil, fmt.Errorf("%w: plaintext inflates past the limit of %d bytes", ErrTooLarge, limit)
			}
			grown := make([]byte, len(buf), min(2*cap(buf), limit+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: DEF content does not inflate: %w", ErrMalformed, err)
		}
	}
	if len(buf) > limit {
		return nil, fmt.Errorf("%w: plaintext inflates past the limit of %d bytes", ErrTooLarge, limit)
	}
	return buf, nil
}

// decodeHeader decodes a base64url JOSE header into its members. Member
// names are matched exactly (a map, not a struct, so "ALG" is not "alg");
// for duplicate names the last one wins, as RFC 7515 §5.2 allows.
func decodeHeader(segment string) (map[string]json.RawMessage, error) {
	raw, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return nil, errors.New("not base64url")
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(raw, &hdr); err != nil || hdr == nil {
		return nil, errors.New("not a JSON object")
	}
	return hdr, nil
}

// headerString returns a string member of a JWE or JWS (layer) header. A
// missing required member or a non-string value is malformed.
func headerString(hdr map[string]json.RawMessage, layer, name string, required bool) (string, error) {
	raw, ok := hdr[name]
	if !ok {
		if required {
			return "", fmt.Errorf("%w: %s header has no %s", ErrMalformed, layer, name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%w: %s header %s is not a string", ErrMalformed, layer, name)
	}
	return s, nil
}

func decodeSegment(s, what string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64url", ErrMalformed, what)
	}
	return b, nil
}

// quote renders a value taken from a token for an error message: quoted, so
// control characters cannot forge log lines, and cut short, so a sender
// cannot make our logs large.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
