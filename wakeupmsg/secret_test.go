package wakeupmsg

import (
	"encoding/hex"
	"testing"
)

func testKey() []byte {
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// TestDeriveSecretVector pins the derivation to what openssl computes, so
// that a receiver written in anything can derive the same secret:
//
//	printf 'gradebroker wakeup v1\0g1' | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f
func TestDeriveSecretVector(t *testing.T) {
	t.Parallel()
	const want = "50b87c5a058ddd013a67e0b1ab464c6d6935f1e2de4b833c9bef003c667f90f5"
	if got := hex.EncodeToString(DeriveSecret(testKey(), "g1")); got != want {
		t.Errorf("DeriveSecret = %s, want %s", got, want)
	}
	if a, b := DeriveSecret(testKey(), "g1"), DeriveSecret(testKey(), "g2"); string(a) == string(b) {
		t.Error("two servers got the same secret")
	}
}

func TestParseSecret(t *testing.T) {
	t.Parallel()
	s := hex.EncodeToString(DeriveSecret(testKey(), "g1"))
	if b, err := ParseSecret(" " + s + "\n"); err != nil || hex.EncodeToString(b) != s {
		t.Errorf("ParseSecret = %x, %v", b, err)
	}
	for _, bad := range []string{"", "zz", s[:62], s + "00"} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("ParseSecret(%q) succeeded", bad)
		}
	}
}
