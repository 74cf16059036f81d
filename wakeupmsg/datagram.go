package wakeupmsg

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The UDP wakeup is one datagram of ASCII text, fields separated by single
// spaces, no newline:
//
//	gbwake1 SERVER TS NONCE MAC
//
// SERVER is the server's registered name, TS the Unix time in seconds
// (decimal), NONCE 32 lowercase hex digits (16 random bytes), and MAC 64
// lowercase hex digits: HMAC-SHA256(secret, "gbwake1 SERVER TS NONCE"), the
// datagram up to the space before MAC, with the server's secret. graderd
// answers with a datagram "ok" (accepted) or "no" (refused).
const (
	// DatagramVersion starts every wakeup datagram.
	DatagramVersion = "gbwake1"
	// ReplyOK is graderd's answer to a wakeup it accepted.
	ReplyOK = "ok"
	// ReplyNo is graderd's answer to a wakeup it refused.
	ReplyNo = "no"
	// MaxDatagram bounds a wakeup datagram; longer ones are refused unread.
	MaxDatagram = 512
	// MaxSkew is how far a wakeup's timestamp may be from graderd's clock,
	// either way.
	MaxSkew = 60 * time.Second
	// ReplayWindow is how long graderd remembers nonces. It is longer than
	// the 2 × MaxSkew a timestamp may be accepted for, so that a replay is
	// refused as stale or as replayed, never accepted.
	ReplayWindow = 2 * time.Minute
)

// Datagram is a parsed UDP wakeup.
type Datagram struct {
	Server string
	Time   time.Time
	Nonce  string
	mac    []byte
	signed string
}

// Errors of Verifier.Check.
var (
	// ErrMalformed is a datagram that is not a wakeup at all.
	ErrMalformed = errors.New("malformed wakeup")
	// ErrForged is a wakeup whose MAC does not match this server's secret.
	ErrForged = errors.New("forged wakeup: bad HMAC (wrong secret, or not from the broker)")
	// ErrStale is a wakeup whose timestamp is more than MaxSkew away.
	ErrStale = errors.New("stale wakeup: timestamp more than 60 s from this machine's clock")
	// ErrReplayed is a wakeup whose nonce was seen within ReplayWindow.
	ErrReplayed = errors.New("replayed wakeup: nonce already seen")
)

// NewNonce returns 16 random bytes in hex.
func NewNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NewDatagram builds the wakeup datagram for server at time ts with nonce,
// signed with secret.
func NewDatagram(secret []byte, server string, ts time.Time, nonce string) []byte {
	signed := DatagramVersion + " " + server + " " + strconv.FormatInt(ts.Unix(), 10) + " " + nonce
	return []byte(signed + " " + hex.EncodeToString(mac(secret, []byte(signed))))
}

func mac(secret, msg []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(msg)
	return m.Sum(nil)
}

// ParseDatagram parses a wakeup datagram without checking its MAC.
func ParseDatagram(b []byte) (Datagram, error) {
	if len(b) > MaxDatagram {
		return Datagram{}, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(b), MaxDatagram)
	}
	s := string(b)
	f := strings.Split(s, " ")
	if len(f) != 5 || f[0] != DatagramVersion {
		return Datagram{}, fmt.Errorf("%w: want %q SERVER TS NONCE MAC", ErrMalformed, DatagramVersion)
	}
	if f[1] == "" || len(f[1]) > 63 {
		return Datagram{}, fmt.Errorf("%w: bad server name", ErrMalformed)
	}
	ts, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || ts < 0 || ts > 1<<40 {
		return Datagram{}, fmt.Errorf("%w: bad timestamp", ErrMalformed)
	}
	if len(f[3]) != 32 || !isLowerHex(f[3]) {
		return Datagram{}, fmt.Errorf("%w: nonce must be 32 lowercase hex digits", ErrMalformed)
	}
	if len(f[4]) != 64 || !isLowerHex(f[4]) {
		return Datagram{}, fmt.Errorf("%w: MAC must be 64 lowercase hex digits", ErrMalformed)
	}
	m, _ := hex.DecodeString(f[4])
	return Datagram{Server: f[1], Time: time.Unix(ts, 0), Nonce: f[3], mac: m,
		signed: s[:len(s)-len(f[4])-1]}, nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Verifier checks the wakeups sent to one server: their MAC, their age and
// that their nonce is new. It is safe for concurrent use.
type Verifier struct {
	secret []byte

	mu   sync.Mutex
	seen map[string]time.Time // nonce → when it was accepted
}

// NewVerifier returns a Verifier for the server whose secret is secret.
func NewVerifier(secret []byte) *Verifier {
	return &Verifier{secret: secret, seen: make(map[string]time.Time)}
}

// Check checks datagram b at time now and returns it when it is a valid,
// fresh wakeup; its nonce is then remembered. Otherwise it returns
// ErrMalformed, ErrForged, ErrStale or ErrReplayed (wrapped).
//
// The MAC is checked first, so that only the broker's wakeups reach the
// nonce memory and a flood of forgeries cannot fill it.
func (v *Verifier) Check(b []byte, now time.Time) (Datagram, error) {
	d, err := ParseDatagram(b)
	if err != nil {
		return Datagram{}, err
	}
	if !hmac.Equal(d.mac, mac(v.secret, []byte(d.signed))) {
		return d, ErrForged
	}
	if skew := now.Sub(d.Time); skew > MaxSkew || skew < -MaxSkew {
		return d, fmt.Errorf("%w (sent %s, skew %s)", ErrStale, d.Time.UTC().Format(time.RFC3339), skew.Round(time.Second))
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for n, at := range v.seen {
		if now.Sub(at) > ReplayWindow {
			delete(v.seen, n)
		}
	}
	if _, dup := v.seen[d.Nonce]; dup {
		return d, ErrReplayed
	}
	v.seen[d.Nonce] = now
	return d, nil
}
