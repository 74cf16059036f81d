package console

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestViewResult(t *testing.T) {
	t.Parallel()
	v := viewResult(`{"score": 40, "correct": false, "msg": "<p>Try <b>again</b></p>",
		"tests": [{"name": "small", "ok": true, "time_ms": 31}, {"name": "big", "ok": false, "detail": {"x": 1}}],
		"notes": ["a", "b"]}`)
	if v.Msg != "<p>Try <b>again</b></p>" {
		t.Errorf("msg = %q; want the grader's HTML as text", v.Msg)
	}
	wantFields := []field{{"correct", "false"}, {"notes", `["a","b"]`}, {"score", "40"}}
	if diff := cmp.Diff(wantFields, v.Fields); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
	if len(v.Tables) != 1 {
		t.Fatalf("tables = %+v; want the tests", v.Tables)
	}
	want := table{Title: "tests", Cols: []string{"name", "ok", "time_ms", "detail"},
		Rows: [][]string{{"small", "true", "31", ""}, {"big", "false", "", `{"x":1}`}}}
	if diff := cmp.Diff(want, v.Tables[0]); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	if !strings.Contains(v.Pretty, "\n  \"score\": 40") {
		t.Errorf("pretty = %q", v.Pretty)
	}
	// Not JSON: shown as it came.
	if v := viewResult("not json <x>"); v.Pretty != "not json <x>" || v.Tables != nil {
		t.Errorf("non-JSON result = %+v", v)
	}
	// Thousands of tests: the first maxTableRows, and a count of the rest.
	many := `{"tests": [` + strings.TrimSuffix(strings.Repeat(`{"ok": true},`, maxTableRows+7), ",") + `]}`
	if tb := viewResult(many).Tables[0]; len(tb.Rows) != maxTableRows || tb.More != 7 {
		t.Errorf("a long table has %d rows, %d more; want %d and 7", len(tb.Rows), tb.More, maxTableRows)
	}
}
