package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// resultView is a job's result laid out for people. Everything in it is
// text: the templates escape it, so a result holding HTML or script (an
// XQueue grader's msg is HTML) shows as the characters it is.
type resultView struct {
	// Pretty is the result indented, or as it came when it is not JSON.
	Pretty string
	// Fields are its top-level values that are not lists of records.
	Fields []field
	// Tables are its lists of records (tests, scenarios), one row each.
	Tables []table
	// Msg is an XQueue-style "msg", HTML written by a grader, shown as
	// text.
	Msg string
}

type field struct{ Key, Value string }

type table struct {
	Title string
	Cols  []string
	Rows  [][]string
	More  int // rows left out
}

// Limits of what a result table shows: a grader may report thousands of
// tests, and a page must stay readable and quick.
const (
	maxTableRows = 500
	maxTableCols = 10
	maxCell      = 300
)

// viewResult reads a result (JSON text from the grader).
func viewResult(raw string) resultView {
	v := resultView{Pretty: prettyJSON(raw)}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	var top map[string]any
	if err := dec.Decode(&top); err != nil {
		return v
	}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val := top[k]
		if k == "msg" {
			if s, ok := val.(string); ok {
				v.Msg = s
				continue
			}
		}
		if t, ok := recordTable(k, val); ok {
			v.Tables = append(v.Tables, t)
			continue
		}
		v.Fields = append(v.Fields, field{k, cell(val)})
	}
	return v
}

// recordTable makes a table of a list whose items are objects.
func recordTable(title string, val any) (table, bool) {
	list, ok := val.([]any)
	if !ok || len(list) == 0 {
		return table{}, false
	}
	t := table{Title: title}
	seen := map[string]bool{}
	for _, item := range list {
		obj, ok := item.(map[string]any)
		if !ok {
			return table{}, false
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !seen[k] && len(t.Cols) < maxTableCols {
				seen[k] = true
				t.Cols = append(t.Cols, k)
			}
		}
	}
	for i, item := range list {
		if i == maxTableRows {
			t.More = len(list) - i
			break
		}
		obj := item.(map[string]any)
		row := make([]string, len(t.Cols))
		for j, c := range t.Cols {
			if x, ok := obj[c]; ok {
				row[j] = cell(x)
			}
		}
		t.Rows = append(t.Rows, row)
	}
	return t, true
}

// cell prints a value in one line, shortened.
func cell(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case nil:
		s = "null"
	case json.Number, bool:
		s = fmt.Sprint(x)
	default:
		b, _ := json.Marshal(x)
		s = string(b)
	}
	if len(s) > maxCell {
		s = s[:maxCell] + "…"
	}
	return s
}

// prettyJSON indents JSON text; anything else comes back as it is.
func prettyJSON(raw string) string {
	var buf bytes.Buffer
	if err := json.Indent(&buf, []byte(raw), "", "  "); err != nil {
		return raw
	}
	return buf.String()
}
