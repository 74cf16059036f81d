package docker

import (
	"net/url"
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
