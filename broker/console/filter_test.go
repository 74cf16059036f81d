package console

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzParseJobFilter feeds the jobs page's query string parser what a URL
// may carry: it must never panic, and what it accepts must survive a round
// trip through the links the page makes.
func FuzzParseJobFilter(f *testing.F) {
	f.Add("state=failed&tag=py&from=2026-01-31T18:00&before=12")
	f.Add("q=hw1%2Falice&after=3&platform=%40console")
	f.Add("state=unspecified&before=-1")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		jf, err := parseJobFilter(v)
		if err != nil {
			return
		}
		back, err := url.ParseQuery(string(jf.Query()))
		if err != nil {
			t.Fatalf("the filter's own query %q does not parse: %v", jf.Query(), err)
		}
		again, err := parseJobFilter(back)
		if err != nil {
			t.Fatalf("the filter's own query %q is refused: %v", jf.Query(), err)
		}
		again.Before, again.After = jf.Before, jf.After
		if again != jf {
			t.Fatalf("round trip changed the filter: %+v -> %+v", jf, again)
		}
		_ = jf.list(50)
	})
}

// TestPageLinksKeepTheFilter renders the jobs page's pager: its links must
// carry the filter as query parameters (html/template would otherwise
// escape the "=" and "&" of the query string into one meaningless key).
func TestPageLinksKeepTheFilter(t *testing.T) {
	t.Parallel()
	pages, err := parseTemplates()
	if err != nil {
		t.Fatal(err)
	}
	f := jobFilter{State: "queued", Tag: "py & c", Before: 12}
	var b strings.Builder
	err = pages["jobs"].ExecuteTemplate(&b, "live", page{User: &user{Operator: true},
		Data: jobsData{Filter: f, Older: 7, Newer: 9}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`href="/jobs?before=7&amp;state=queued&amp;tag=py&#43;%26&#43;c"`,
		`href="/jobs?after=9&amp;state=queued&amp;tag=py&#43;%26&#43;c"`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the pager lacks %s:\n%s", want, b.String())
		}
	}
}
