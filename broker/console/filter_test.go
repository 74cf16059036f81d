package console

import (
	"net/url"
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
		back, err := url.ParseQuery(jf.Query())
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
