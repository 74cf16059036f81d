package cliflag

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseInterleaved(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args    []string
		wantPos []string
		wantTyp string
		wantN   int
	}{
		{[]string{"g1", "--type", "py", "--n", "3"}, []string{"g1"}, "py", 3},
		{[]string{"--type", "py", "g1", "g2"}, []string{"g1", "g2"}, "py", 0},
		{[]string{"g1", "--", "--type", "x"}, []string{"g1", "--type", "x"}, "", 0},
		{nil, nil, "", 0},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		typ := fs.String("type", "", "")
		n := fs.Int("n", 0, "")
		pos, err := ParseInterleaved(fs, c.args)
		if err != nil || !slices.Equal(pos, c.wantPos) || *typ != c.wantTyp || *n != c.wantN {
			t.Errorf("ParseInterleaved(%q) = %q, type %q, n %d, %v; want %q, %q, %d", c.args, pos, *typ, *n, err, c.wantPos, c.wantTyp, c.wantN)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := ParseInterleaved(fs, []string{"a", "--nope"}); err == nil {
		t.Error("an unknown flag was accepted")
	}
}

// TestPrintCommandHelp: flags sorted, their argument names and only the
// defaults that say something, then the examples.
func TestPrintCommandHelp(t *testing.T) {
	t.Parallel()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("type", "", "the server `TYPE`")
	fs.Int("max-jobs", 1, "at most `N` jobs")
	fs.Bool("force", false, "do it anyway")
	fs.Duration("wait", 0, "wait this `LONG`")
	var flags []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f) })
	var b strings.Builder
	PrintCommandHelp(&b, flags, []string{"broker admin x --type py"})
	want := `
Flags:
  --force       do it anyway
  --max-jobs N  at most N jobs (default 1)
  --type TYPE   the server TYPE
  --wait LONG   wait this LONG

Examples:
  broker admin x --type py
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("help (-want +got):\n%s", diff)
	}
	b.Reset()
	PrintCommandHelp(&b, nil, nil)
	if b.String() != "" {
		t.Errorf("help without flags or examples = %q, want nothing", b.String())
	}
}
