package wakeup

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
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

func TestLoadKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	raw := write("raw", testKey())
	hexed := write("hex", []byte(hex.EncodeToString(testKey())+"\n"))
	short := write("short", []byte("too short"))
	for _, p := range []string{raw, hexed} {
		k, err := LoadKey(p)
		if err != nil || string(k) != string(testKey()) {
			t.Errorf("LoadKey(%s) = %x, %v; want the test key", filepath.Base(p), k, err)
		}
	}
	if _, err := LoadKey(short); err == nil || !strings.Contains(err.Error(), "openssl rand") {
		t.Errorf("LoadKey(short) = %v, want an error saying how to make a key", err)
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadKey(missing) succeeded")
	}
	if k, err := LoadKey(""); k != nil || err != nil {
		t.Errorf(`LoadKey("") = %x, %v; want nil, nil`, k, err)
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

func TestCheckURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"", true},
		{"https://scaler.lan/wake", true},
		{"http://10.0.0.5:8080/wake?pool=gpu", true},
		{"udp://10.0.0.5:7999", true},
		{"udp://grader1.lan:7999/", true},
		{"udp://10.0.0.5", false},
		{"udp://10.0.0.5:7999/path", false},
		{"udp://10.0.0.5:7999?x=1", false},
		{"https:///nohost", false},
		{"ftp://x/y", false},
		{"10.0.0.5:7999", false},
	} {
		if err := CheckURL(tc.url); (err == nil) != tc.ok {
			t.Errorf("CheckURL(%q) = %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
}
