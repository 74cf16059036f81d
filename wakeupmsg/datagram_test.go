package wakeupmsg

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDatagramLayout(t *testing.T) {
	t.Parallel()
	secret := DeriveSecret(testKey(), "g1")
	ts := time.Unix(1700000000, 0)
	nonce := strings.Repeat("ab", 16)
	b := NewDatagram(secret, "g1", ts, nonce)
	f := strings.Split(string(b), " ")
	if len(f) != 5 || f[0] != "gbwake1" || f[1] != "g1" || f[2] != "1700000000" || f[3] != nonce || len(f[4]) != 64 {
		t.Fatalf("datagram %q does not have the documented layout", b)
	}
	if string(b[:len(b)-65]) != "gbwake1 g1 1700000000 "+nonce {
		t.Fatalf("signed part = %q", b[:len(b)-65])
	}
	if got := f[4]; got != Sign(secret, b[:len(b)-65])[len("sha256="):] {
		t.Errorf("MAC %s is not HMAC-SHA256 over the text before it", got)
	}
	d, err := ParseDatagram(b)
	if err != nil || d.Server != "g1" || !d.Time.Equal(ts) || d.Nonce != nonce {
		t.Errorf("ParseDatagram = %+v, %v", d, err)
	}
}

func TestVerifier(t *testing.T) {
	t.Parallel()
	secret := DeriveSecret(testKey(), "g1")
	other := DeriveSecret(testKey(), "g2")
	now := time.Unix(1700000000, 0)
	v := NewVerifier(secret)

	good := NewDatagram(secret, "g1", now, NewNonce())
	if _, err := v.Check(good, now); err != nil {
		t.Fatalf("valid wakeup refused: %v", err)
	}
	tampered := []byte(strings.Replace(string(NewDatagram(secret, "g1", now, NewNonce())), "g1", "g3", 1))
	for _, tc := range []struct {
		name string
		b    []byte
		at   time.Time
		want error
	}{
		{"replayed", good, now.Add(time.Second), ErrReplayed},
		{"replayed at the end of the window", good, now.Add(59 * time.Second), ErrReplayed},
		{"forged with another server's secret", NewDatagram(other, "g1", now, NewNonce()), now, ErrForged},
		{"forged by editing the name", tampered, now, ErrForged},
		{"stale", NewDatagram(secret, "g1", now.Add(-61*time.Second), NewNonce()), now, ErrStale},
		{"from the future", NewDatagram(secret, "g1", now.Add(61*time.Second), NewNonce()), now, ErrStale},
		{"empty", nil, now, ErrMalformed},
		{"junk", []byte("hello"), now, ErrMalformed},
		{"uppercase hex", []byte(strings.ToUpper(string(NewDatagram(secret, "g1", now, NewNonce())))), now, ErrMalformed},
		{"too long", []byte(strings.Repeat("x", MaxDatagram+1)), now, ErrMalformed},
	} {
		if _, err := v.Check(tc.b, tc.at); !errors.Is(err, tc.want) {
			t.Errorf("%s: Check = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Within the skew on either side is fine.
	for _, skew := range []time.Duration{-59 * time.Second, 59 * time.Second} {
		if _, err := v.Check(NewDatagram(secret, "g1", now.Add(skew), NewNonce()), now); err != nil {
			t.Errorf("skew %s: %v", skew, err)
		}
	}
	// A forgery never reaches the nonce memory.
	n := NewNonce()
	if _, err := v.Check(NewDatagram(other, "g1", now, n), now); !errors.Is(err, ErrForged) {
		t.Fatal(err)
	}
	if _, err := v.Check(NewDatagram(secret, "g1", now, n), now); err != nil {
		t.Errorf("a forgery's nonce blocked the real wakeup: %v", err)
	}
}

// FuzzCheck feeds outside input to the datagram parser and verifier.
func FuzzCheck(f *testing.F) {
	secret := DeriveSecret(testKey(), "g1")
	now := time.Unix(1700000000, 0)
	f.Add(NewDatagram(secret, "g1", now, NewNonce()))
	f.Add([]byte("gbwake1 g1 1700000000 00000000000000000000000000000000 " + strings.Repeat("0", 64)))
	f.Add([]byte("gbwake1    "))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		v := NewVerifier(secret)
		d, err := v.Check(b, now)
		if err == nil {
			// Only a datagram made with the secret passes: rebuilding it
			// must give the same bytes.
			if got := NewDatagram(secret, d.Server, d.Time, d.Nonce); string(got) != string(b) {
				t.Fatalf("accepted %q, which is not the canonical %q", b, got)
			}
		}
	})
}
