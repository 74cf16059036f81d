package wakeup

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradebroker/gradebroker/wakeupmsg"
)

func testKey() []byte {
	k := make([]byte, wakeupmsg.KeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
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
