package cliflag

import (
	"flag"
	"io"
	"slices"
	"testing"
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
