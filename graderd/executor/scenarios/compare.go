package scenarios

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// How a response body is compared with what a scenario expects, and the
// diff a student reads when they differ.

// maxDiffLines bounds a diff; the last line says how many more there were.
const maxDiffLines = 40

// maxShown bounds one value quoted in a diff.
const maxShown = 200

// maxDepth bounds the nesting of JSON values compared: encoding/json
// accepts 10,000 levels, and a diff path that deep helps nobody.
const maxDepth = 200

// CompareJSON compares a response body with the expected JSON value:
// objects without regard to key order, numbers by value (1 and 1.0 are
// equal), keys in ignore left out at any depth, and arrays in any order
// when unordered. It returns the differences as readable lines ("$.items[1]
// .title: expected "milk", got "bread""), none when equal. A body that is
// not JSON is one difference.
func CompareJSON(expected, got []byte, ignore []string, unordered bool) []string {
	ign := make(map[string]bool, len(ignore))
	for _, k := range ignore {
		ign[k] = true
	}
	c := comparer{ignore: ign, unordered: unordered}
	want, err := decodeJSON(expected)
	if err != nil {
		return []string{"the expected value is not JSON: " + err.Error()}
	}
	have, err := decodeJSON(got)
	if err != nil {
		return []string{"the body is not JSON (" + err.Error() + "): " + quote(got)}
	}
	c.diff("$", want, have, 0)
	return c.out()
}

// decodeJSON decodes one JSON value, numbers kept as written.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("more than one JSON value")
	}
	return v, nil
}

type comparer struct {
	ignore    map[string]bool
	unordered bool
	lines     []string
	more      int
}

func (c *comparer) add(format string, args ...any) {
	if len(c.lines) >= maxDiffLines {
		c.more++
		return
	}
	c.lines = append(c.lines, fmt.Sprintf(format, args...))
}

func (c *comparer) out() []string {
	if c.more > 0 {
		return append(c.lines, fmt.Sprintf("... and %d more differences", c.more))
	}
	return c.lines
}

func (c *comparer) diff(path string, want, have any, depth int) {
	if depth > maxDepth {
		if c.canon(want, depth) != c.canon(have, depth) {
			c.add("%s: the values differ (nested too deep to show where)", path)
		}
		return
	}
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			c.add("%s: expected an object, got %s", path, c.show(have))
			return
		}
		for _, k := range sortedKeys(w) {
			if c.ignore[k] {
				continue
			}
			p := path + keyPath(k)
			hv, ok := h[k]
			if !ok {
				c.add("%s: missing (expected %s)", p, c.show(w[k]))
				continue
			}
			c.diff(p, w[k], hv, depth+1)
		}
		for _, k := range sortedKeys(h) {
			if _, ok := w[k]; !ok && !c.ignore[k] {
				c.add("%s: unexpected (got %s)", path+keyPath(k), c.show(h[k]))
			}
		}
	case []any:
		h, ok := have.([]any)
		if !ok {
			c.add("%s: expected an array, got %s", path, c.show(have))
			return
		}
		if c.unordered {
			c.diffBags(path, w, h, depth)
			return
		}
		for i := range max(len(w), len(h)) {
			p := path + "[" + strconv.Itoa(i) + "]"
			switch {
			case i >= len(h):
				c.add("%s: missing (expected %s)", p, c.show(w[i]))
			case i >= len(w):
				c.add("%s: unexpected (got %s)", p, c.show(h[i]))
			default:
				c.diff(p, w[i], h[i], depth+1)
			}
		}
	default:
		if c.canon(want, depth) != c.canon(have, depth) {
			c.add("%s: expected %s, got %s", path, c.show(want), c.show(have))
		}
	}
}

// diffBags compares arrays as multisets of their canonical forms.
func (c *comparer) diffBags(path string, want, have []any, depth int) {
	left := map[string]int{}
	for _, v := range have {
		left[c.canon(v, depth+1)]++
	}
	var missing []any
	for _, v := range want {
		k := c.canon(v, depth+1)
		if left[k] > 0 {
			left[k]--
			continue
		}
		missing = append(missing, v)
	}
	for _, v := range missing {
		c.add("%s[*]: missing (expected an element %s)", path, c.show(v))
	}
	for _, v := range have {
		k := c.canon(v, depth+1)
		if left[k] > 0 {
			left[k]--
			c.add("%s[*]: unexpected (got an element %s)", path, c.show(v))
		}
	}
}

// canon is a value's canonical text: keys sorted, ignored keys left out,
// numbers by value, arrays sorted when unordered. Equal values, by the
// comparison's rules, have equal canonical texts.
func (c *comparer) canon(v any, depth int) string {
	var b strings.Builder
	c.writeCanon(&b, v, depth)
	return b.String()
}

func (c *comparer) writeCanon(b *strings.Builder, v any, depth int) {
	if depth > 10*maxDepth {
		b.WriteString("…")
		return
	}
	switch t := v.(type) {
	case map[string]any:
		b.WriteByte('{')
		first := true
		for _, k := range sortedKeys(t) {
			if c.ignore[k] {
				continue
			}
			if !first {
				b.WriteByte(',')
			}
			first = false
			b.WriteString(strconv.Quote(k))
			b.WriteByte(':')
			c.writeCanon(b, t[k], depth+1)
		}
		b.WriteByte('}')
	case []any:
		elems := make([]string, len(t))
		for i, e := range t {
			elems[i] = c.canon(e, depth+1)
		}
		if c.unordered {
			slices.Sort(elems)
		}
		b.WriteByte('[')
		b.WriteString(strings.Join(elems, ","))
		b.WriteByte(']')
	case json.Number:
		b.WriteString(canonNumber(t))
	case string:
		b.WriteString(strconv.Quote(t))
	case bool:
		b.WriteString(strconv.FormatBool(t))
	case nil:
		b.WriteString("null")
	}
}

// numberRE splits a JSON number into mantissa and exponent.
var numberRE = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?([eE]([+-]?[0-9]+))?$`)

// canonNumber writes a JSON number by value: "1", "1.0" and "1e0" alike.
// Numbers with huge exponents are compared as written: their exact values
// would take a lot of memory to compute, and no service means them.
func canonNumber(n json.Number) string {
	s := string(n)
	m := numberRE.FindStringSubmatch(s)
	if m == nil || len(s) > 400 {
		return "n:" + s
	}
	if m[3] != "" {
		if e, err := strconv.Atoi(m[3]); err != nil || e > 400 || e < -400 {
			return "n:" + s
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return "n:" + s
	}
	return r.RatString()
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// keyPath writes an object key in a diff path: .name, or ["odd key"].
func keyPath(k string) string {
	for i, r := range k {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return "[" + strconv.Quote(k) + "]"
		}
	}
	if k == "" {
		return `[""]`
	}
	return "." + k
}

// show writes a value for a diff, in JSON, without its ignored keys, cut
// short.
func (c *comparer) show(v any) string {
	b, err := json.Marshal(c.strip(v, 0))
	if err != nil {
		return "?"
	}
	return cut(string(b))
}

// strip returns v without its ignored keys, at any depth.
func (c *comparer) strip(v any, depth int) any {
	if len(c.ignore) == 0 || depth > maxDepth {
		return v
	}
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if !c.ignore[k] {
				out[k] = c.strip(e, depth+1)
			}
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = c.strip(e, depth+1)
		}
		return out
	}
	return v
}

// quote writes a body for a diff, cut short.
func quote(b []byte) string {
	return strconv.Quote(cut(string(b)))
}

func cut(s string) string {
	if len(s) <= maxShown {
		return s
	}
	i := maxShown
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// CompareText compares a body with the expected text, exactly; the diff
// names the first line that differs.
func CompareText(expected string, got []byte) []string {
	if string(got) == expected {
		return nil
	}
	wl, gl := strings.Split(expected, "\n"), strings.Split(string(got), "\n")
	for i := range max(len(wl), len(gl)) {
		switch {
		case i >= len(gl):
			return []string{fmt.Sprintf("line %d: missing (expected %s)", i+1, strconv.Quote(cut(wl[i])))}
		case i >= len(wl):
			return []string{fmt.Sprintf("line %d: unexpected (got %s)", i+1, strconv.Quote(cut(gl[i])))}
		case wl[i] != gl[i]:
			return []string{fmt.Sprintf("line %d: expected %s, got %s", i+1, strconv.Quote(cut(wl[i])), strconv.Quote(cut(gl[i])))}
		}
	}
	return []string{"the body differs from the expected text"}
}

// CompareRegex checks a body against a regular expression.
func CompareRegex(expr string, got []byte) []string {
	re, err := regexp.Compile(expr)
	if err != nil {
		return []string{"the expected regular expression is invalid: " + err.Error()}
	}
	if re.Match(got) {
		return nil
	}
	return []string{fmt.Sprintf("the body does not match /%s/: got %s", expr, quote(got))}
}
