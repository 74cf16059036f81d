package docker

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestURLUnder(t *testing.T) {
	t.Parallel()
	prefixes := []string{"https://files.example.org/archives/", "https://uploads.example.org", "http://LAB.example.org:8080/sub"}
	for raw, want := range map[string]bool{
		"https://files.example.org/archives/42.tar":         true,
		"https://files.example.org/archives/":               true,
		"https://FILES.example.org/archives/42.tar":         true,
		"https://files.example.org/archive.tar":             false,
		"https://files.example.org/archivesX/42.tar":        false,
		"https://files.example.org.evil.net/archives/1.tar": false,
		"https://files.example.org:8443/archives/1.tar":     false,
		"http://files.example.org/archives/1.tar":           false,
		"https://files.example.org/archives/../secret.tar":  false,
		"https://uploads.example.org/any/where.tar":         true,
		"https://uploads.example.org.evil.net/x.tar":        false,
		"https://uploads.example.orgx/x.tar":                false,
		"http://lab.example.org:8080/sub":                   true,
		"http://lab.example.org:8080/sub/a.tar":             true,
		"http://lab.example.org:8080/subway/a.tar":          false,
		"http://lab.example.org/sub/a.tar":                  false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := urlUnder(u, prefixes); got != want {
			t.Errorf("urlUnder(%s) = %v, want %v", raw, got, want)
		}
	}
}

// FuzzURLUnder: whatever URL a job names, urlUnder admits it only on an
// allowed prefix's scheme and host, and never with a ".." segment.
func FuzzURLUnder(f *testing.F) {
	f.Add("https://files.example.org/archives/42.tar", "https://files.example.org/archives/")
	f.Add("https://files.example.org.evil.net/archives/1.tar", "https://files.example.org")
	f.Add("http://lab.example.org:8080/sub/../x", "http://lab.example.org:8080/sub")
	f.Fuzz(func(t *testing.T, raw, prefix string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		if !urlUnder(u, []string{prefix}) {
			return
		}
		p, err := url.Parse(prefix)
		if err != nil || !strings.EqualFold(p.Scheme, u.Scheme) || !strings.EqualFold(p.Host, u.Host) || p.Host == "" {
			t.Errorf("urlUnder admitted %q under %q: another scheme or host", raw, prefix)
		}
		if slices.Contains(strings.Split(u.Path, "/"), "..") {
			t.Errorf("urlUnder admitted %q with a .. segment", raw)
		}
	})
}
