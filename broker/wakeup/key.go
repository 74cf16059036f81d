// Package wakeup wakes idle grading servers.
//
// A server may be registered with a wakeup URL. The dispatcher decides which
// servers to wake; a Waker sends the wakeups, off the dispatcher's lock, and
// records each result. Two schemes exist:
//
//   - http:// and https://: a POST of a small JSON body (wakeupmsg.Body),
//     signed with an HMAC-SHA256 header (wakeupmsg.SignatureHeader), for an
//     autoscaler or a wake-on-LAN relay.
//   - udp://host:port: one datagram (wakeupmsg.Datagram) to graderd's
//     --wakeup-listen port, which answers "ok" or "no".
//
// Both are authenticated with a per-server secret derived from the broker's
// wakeup key (wakeupmsg.DeriveSecret), so that the admin API needs no
// secret field and an operator can hand each server its own secret with
// `broker wakeup-secret`. A server's secret lets it check wakeups meant for
// it and nothing else: it cannot forge wakeups for other servers. The
// messages and the secret are package wakeupmsg's, which graderd shares;
// this package holds what only the broker does: loading its key, checking
// URLs, and sending.
package wakeup

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"

	"github.com/gradebroker/gradebroker/wakeupmsg"
)

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
	if t := bytes.TrimSpace(b); len(t) == 2*wakeupmsg.KeySize {
		if k, err := hex.DecodeString(string(t)); err == nil {
			return k, nil
		}
	}
	if len(b) == wakeupmsg.KeySize {
		return b, nil
	}
	return nil, fmt.Errorf("wakeup key %s: holds %d bytes; want %d random bytes (openssl rand -out %s %d) or %d hex digits",
		path, len(b), wakeupmsg.KeySize, path, wakeupmsg.KeySize, 2*wakeupmsg.KeySize)
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
