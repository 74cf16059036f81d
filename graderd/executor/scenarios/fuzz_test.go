package scenarios

import (
	"encoding/json"
	"testing"
)

// FuzzParse: any input either parses into a set that passes its own check
// and reads the same written back as JSON, or is refused; it never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(yamlSet))
	f.Add([]byte(`{"scenarios": [{"name": "a", "path": "/x?y=1", "method": "PUT", "body_text": "t", "timeout": 1.5, "expect": {"regex": "^ok"}}]}`))
	f.Add([]byte(`[{"name": "a", "path": "/", "expect": {"json": [1, {"b": null}], "unordered": true, "ignore": ["b"]}}]`))
	f.Add([]byte("scenarios:\n  - name: a\n    path: /\n    expect: {status: 404, text: \"\"}\n"))
	f.Add([]byte(`{"scenarios": [{"name": "a", "path": "/", "points": 2, "headers": {"X-A": "b"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		if err := s.Check(); err != nil {
			t.Fatalf("a parsed set fails its check: %v", err)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("a parsed set cannot be written: %v", err)
		}
		again, err := ParseJSON(b)
		if err != nil {
			t.Fatalf("a parsed set written as JSON does not parse again: %v\n%s", err, b)
		}
		if len(again.Scenarios) != len(s.Scenarios) {
			t.Fatalf("%d scenarios, then %d", len(s.Scenarios), len(again.Scenarios))
		}
		_ = PlanFor(s, 0)
		_ = s.PublicOnly()
	})
}

// FuzzCompareJSON: the comparison never panics, a value equals itself
// whatever the modes, and equality does not depend on the side.
func FuzzCompareJSON(f *testing.F) {
	f.Add([]byte(`{"a": [1, 2, {"id": 3}]}`), []byte(`{"a": [2, 1, {"id": 4}]}`), "id", true)
	f.Add([]byte(`[1e400, 1.0, -0, "x"]`), []byte(`[1E400, 1, 0, "x"]`), "", false)
	f.Add([]byte(`{"a b": {"c": [[]]}}`), []byte(`not json`), "c", false)
	f.Add([]byte(`null`), []byte(``), "", true)
	f.Fuzz(func(t *testing.T, a, b []byte, ignore string, unordered bool) {
		ign := []string{ignore}
		ab := CompareJSON(a, b, ign, unordered)
		ba := CompareJSON(b, a, ign, unordered)
		if json.Valid(a) && json.Valid(b) && (len(ab) == 0) != (len(ba) == 0) {
			t.Fatalf("a = b is %v but b = a is %v\na: %s\nb: %s\n%v\n%v", len(ab) == 0, len(ba) == 0, a, b, ab, ba)
		}
		if json.Valid(a) {
			if d := CompareJSON(a, a, ign, unordered); len(d) != 0 {
				t.Fatalf("a value differs from itself: %v\n%s", d, a)
			}
		}
	})
}
