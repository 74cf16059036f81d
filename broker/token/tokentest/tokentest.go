// Package tokentest builds tokens by hand, step by step from RFC 7515, 7516
// and 7518, the way a JOSE library in another language would, and breaks
// them on purpose (a wrong algorithm, a flipped bit), so that tests of the
// token package and of the platform API can check every refusal. It lives
// beside package token because the project keeps JOSE in one place.
package tokentest

import (
	"bytes"
	"compress/flate"
	"crypto"
	"crypto/aes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"strings"
	"testing"

	josecipher "github.com/go-jose/go-jose/v4/cipher"
)

// B64 is base64url without padding, as JOSE uses it.
func B64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// JWS builds a compact JWS from a literal header, signing the input with
// sign (nil: an empty signature, as alg "none" has).
func JWS(header string, payload []byte, sign func(input []byte) []byte) string {
	input := B64([]byte(header)) + "." + B64(payload)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(input))
	}
	return input + "." + B64(sig)
}

// RS512 signs with RSASSA-PKCS1-v1_5 and SHA-512, straight from crypto/rsa.
func RS512(key *rsa.PrivateKey) func([]byte) []byte {
	return func(input []byte) []byte {
		sum := sha512.Sum512(input)
		sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA512, sum[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
}

// JWE builds a compact JWE from a literal protected header by following RFC
// 7516 §5.1 and RFC 7518 §4.3 and §5.2: a random CEK wrapped with
// RSA-OAEP-256, A256CBC-HS512 over the plaintext, with the protected
// header's base64url as AAD. If the header has "zip":"DEF" the plaintext is
// deflated first.
func JWE(tb testing.TB, header string, plaintext []byte, to *rsa.PublicKey) string {
	tb.Helper()
	if strings.Contains(header, `"zip":"DEF"`) {
		plaintext = Deflate(tb, plaintext)
	}
	return JWERaw(tb, header, plaintext, to)
}

// JWERaw is JWE without the deflating: content is encrypted as is, whatever
// the header says.
func JWERaw(tb testing.TB, header string, content []byte, to *rsa.PublicKey) string {
	tb.Helper()
	cek := make([]byte, 64)
	iv := make([]byte, 16)
	rand.Read(cek)
	rand.Read(iv)
	ek, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, to, cek, nil)
	if err != nil {
		tb.Fatal(err)
	}
	aead, err := josecipher.NewCBCHMAC(cek, aes.NewCipher)
	if err != nil {
		tb.Fatal(err)
	}
	prot := B64([]byte(header))
	sealed := aead.Seal(nil, iv, content, []byte(prot))
	ct, tag := sealed[:len(sealed)-32], sealed[len(sealed)-32:]
	return strings.Join([]string{prot, B64(ek), B64(iv), B64(ct), B64(tag)}, ".")
}

// Deflate compresses p as zip "DEF" does (raw DEFLATE, RFC 1951).
func Deflate(tb testing.TB, p []byte) []byte {
	tb.Helper()
	return deflate(tb, p, false)
}

// DeflateFlushed is Deflate with a sync flush before the end, as a sender
// that flushes before closing makes it: the stream's end then comes in a
// block of its own, after all of p.
func DeflateFlushed(tb testing.TB, p []byte) []byte {
	tb.Helper()
	return deflate(tb, p, true)
}

func deflate(tb testing.TB, p []byte, flush bool) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		tb.Fatal(err)
	}
	w.Write(p)
	if flush {
		if err := w.Flush(); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// Segment replaces part i of a compact serialization.
func Segment(compact string, i int, with string) string {
	parts := strings.Split(compact, ".")
	parts[i] = with
	return strings.Join(parts, ".")
}

// FlipByte decodes part i, flips one bit of byte at, and re-encodes it.
func FlipByte(tb testing.TB, compact string, i, at int) string {
	tb.Helper()
	parts := strings.Split(compact, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		tb.Fatal(err)
	}
	b[at] ^= 0x01
	parts[i] = B64(b)
	return strings.Join(parts, ".")
}
