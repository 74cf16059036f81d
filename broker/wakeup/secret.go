// Package wakeup wakes idle grading servers and checks wakeups on graderd's
// side.
//
// A server may be registered with a wakeup URL. The dispatcher decides which
// servers to wake; a Waker sends the wakeups, off the dispatcher's lock, and
// records each result. Two schemes exist:
//
//   - http:// and https://: a POST of a small JSON body (see Body), signed
//     with an HMAC-SHA256 header (SignatureHeader), for an autoscaler or a
//     wake-on-LAN relay.
//   - udp://host:port: one datagram (see Datagram) to graderd's
//     --wakeup-listen port, which answers "ok" or "no".
//
// Both are authenticated with a per-server secret derived from the broker's
// wakeup key (DeriveSecret), so that the admin API needs no secret field and
// an operator can hand each server its own secret with `broker
// wakeup-secret`. A server's secret lets it check wakeups meant for it and
// nothing else: it cannot forge wakeups for other servers.
package wakeup

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
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

// LoadKey reads the broker's wakeup key from path: exactly 32 raw bytes (as
// `openssl rand -out FILE 32` writes them), or 64 hex digits with an
// optional trailing newline (as `openssl rand -hex 32 > FILE` writes them).
// An empty path means no key: it returns nil, and a Waker without a key
// refuses to send wakeups.
func LoadKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wakeup key: %w", err)
	}
	return parseKey(path, b)
}

func parseKey(path string, b []byte) ([]byte, error) {
	if t := bytes.TrimSpace(b); len(t) == 2*KeySize {
		if k, err := hex.DecodeString(string(t)); err == nil {
			return k, nil
		}
	}
	if len(b) == KeySize {
		return b, nil
	}
	return nil, fmt.Errorf("wakeup key %s: holds %d bytes; want %d random bytes (openssl rand -out %s %d) or %d hex digits",
		path, len(b), KeySize, path, KeySize, 2*KeySize)
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

// CheckURL checks a wakeup URL: http:// or https:// with a host, or
// udp://host:port with nothing after the port. An empty URL (no wakeup) is
// fine.
func CheckURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("wakeup URL %q is not a URL: %w", raw, err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Hostname() == "" {
			return fmt.Errorf("wakeup URL %q has no host", raw)
		}
	case "udp":
		if u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("wakeup URL %q must be udp://HOST:PORT (graderd's --wakeup-listen address)", raw)
		}
	default:
		return fmt.Errorf("wakeup URL %q must start with http://, https:// or udp://", raw)
	}
	return nil
}
