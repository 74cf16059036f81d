// Package wakeupmsg is the wakeup protocol the broker and graderd share:
// the UDP datagram graderd checks (Datagram, Verifier), the HTTP body an
// autoscaler or relay checks (Body, SignatureHeader), and the per-server
// secret both are signed with (DeriveSecret).
//
// It stands outside broker/ and graderd/, as certs does, because graderd
// imports none of the broker's packages and both binaries need the same
// bytes; and it is not internal, because an HTTP wakeup receiver written in
// Go may use CheckSignature. The broker's side (its key file, sending,
// retries) is package broker/wakeup.
package wakeupmsg

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// KeySize is the size in bytes of the broker's wakeup key and of a derived
// per-server secret.
const KeySize = 32

// secretLabel separates the derivation from any other use of the key.
const secretLabel = "gradebroker wakeup v1\x00"

// DeriveSecret returns server's wakeup secret:
// HMAC-SHA256(key, "gradebroker wakeup v1\x00" + server). The broker signs
// wakeups with it; graderd (or an HTTP receiver) checks them with it.
func DeriveSecret(key []byte, server string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(secretLabel))
	m.Write([]byte(server))
	return m.Sum(nil)
}

// ParseSecret decodes a server's wakeup secret written in hex, as `broker
// wakeup-secret` prints it.
func ParseSecret(s string) ([]byte, error) {
	b, err := hex.DecodeString(string(bytes.TrimSpace([]byte(s))))
	if err != nil {
		return nil, fmt.Errorf("wakeup secret is not hex: %w", err)
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("wakeup secret has %d bytes; want %d (64 hex digits, as 'broker wakeup-secret' prints)", len(b), KeySize)
	}
	return b, nil
}
