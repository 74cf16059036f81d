package platform

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonScanner finds the first place where a JSON text goes wrong, to tell a
// platform developer where and what was expected. protojson stays the
// parser of request bodies, on the fast path: this runs only once it has
// refused a body, because its messages ("proto: syntax error (line 1:1):
// invalid value token") are written for its authors, and it says neither
// what was expected nor, always, where. It follows RFC 8259 with UTF-8
// text, as protojson does; FuzzGatewayDecoder checks that the two refuse
// the same bodies.
type jsonScanner struct {
	b     []byte
	i     int
	depth int
}

// maxJSONDepth is protojson's recursion limit, which also bounds the
// nesting of the members it skips.
const maxJSONDepth = 10000

// jsonProblem is where a JSON text goes wrong and what is wrong there.
type jsonProblem struct {
	at  int    // byte offset
	msg string // "expected X, found Y", or a sentence of its own
}

// where says at in a person's words: line and column (in characters), both
// from 1.
func where(b []byte, at int) string {
	line, start := 1, 0
	for i := 0; i < at && i < len(b); i++ {
		if b[i] == '\n' {
			line, start = line+1, i+1
		}
	}
	return fmt.Sprintf("line %d, column %d", line, utf8.RuneCount(b[start:min(at, len(b))])+1)
}

// describe says p in a person's words.
func (p *jsonProblem) describe(b []byte) string {
	return "at " + where(b, p.at) + ": " + p.msg
}

// expected is the problem at the scanner's position: want was expected and
// something else is there.
func (s *jsonScanner) expected(want string) *jsonProblem {
	return &jsonProblem{at: s.i, msg: "expected " + want + ", found " + s.found()}
}

// found names what is at the scanner's position: a kind of value where one
// starts, else the character.
func (s *jsonScanner) found() string {
	if s.i >= len(s.b) {
		return "the end of the body"
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == '-' || ('0' <= c && c <= '9'):
		return "a number"
	case c < 0x20:
		return fmt.Sprintf("a control character (U+%04X)", c)
	case c < utf8.RuneSelf:
		return strconv.Quote(string(c))
	}
	r, n := utf8.DecodeRune(s.b[s.i:])
	if r == utf8.RuneError && n <= 1 {
		return fmt.Sprintf("the byte 0x%02x, which is not UTF-8", s.b[s.i])
	}
	return strconv.Quote(string(r))
}

func (s *jsonScanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *jsonScanner) skipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value scans one value at the scanner's position.
func (s *jsonScanner) value() *jsonProblem {
	switch c := s.peek(); {
	case c == '{':
		return s.object(func(string, int) *jsonProblem { return s.value() })
	case c == '[':
		return s.array()
	case c == '"':
		return s.string()
	case c == '-' || ('0' <= c && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return s.expected("a JSON value")
}

// object scans an object; member scans the value of each member, given its
// name and the offset of the name.
func (s *jsonScanner) object(member func(name string, at int) *jsonProblem) *jsonProblem {
	return s.container('}', "member", func() *jsonProblem {
		if s.peek() != '"' {
			return s.expected(`a member name in double quotes`)
		}
		at := s.i
		if p := s.string(); p != nil {
			return p
		}
		var name string
		_ = json.Unmarshal(s.b[at:s.i], &name) // a valid JSON string: cannot fail
		s.skipSpace()
		if s.peek() != ':' {
			return s.expected(`":" after the member name`)
		}
		s.i++
		s.skipSpace()
		return member(name, at)
	})
}

func (s *jsonScanner) array() *jsonProblem {
	return s.container(']', "element", s.value)
}

// container scans an object or an array from its opening bracket to
// closing, each of its items with item.
func (s *jsonScanner) container(closing byte, itemName string, item func() *jsonProblem) *jsonProblem {
	if s.depth++; s.depth > maxJSONDepth {
		return &jsonProblem{at: s.i, msg: fmt.Sprintf("objects and arrays nested deeper than %d levels", maxJSONDepth)}
	}
	defer func() { s.depth-- }()
	s.i++ // the opening bracket
	s.skipSpace()
	if s.peek() == closing {
		s.i++
		return nil
	}
	for {
		if p := item(); p != nil {
			return p
		}
		s.skipSpace()
		switch s.peek() {
		case ',':
			s.i++
			s.skipSpace()
		case closing:
			s.i++
			return nil
		default:
			return s.expected(fmt.Sprintf(`"," or "%c" after the %s`, closing, itemName))
		}
	}
}

func (s *jsonScanner) string() *jsonProblem {
	s.i++ // "
	for {
		if s.i >= len(s.b) {
			return s.expected("the closing quote of the string")
		}
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return nil
		case c == '\\':
			s.i++
			switch s.peek() {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				s.i--
				r, p := s.unicodeEscape()
				if p != nil {
					return p
				}
				if utf16.IsSurrogate(r) {
					// Half of a UTF-16 pair: the other half must follow.
					at := s.i - 6
					r2, p := s.unicodeEscape()
					if p != nil || utf16.DecodeRune(r, r2) == unicode.ReplacementChar {
						return &jsonProblem{at: at, msg: fmt.Sprintf(`expected a UTF-16 surrogate pair, found %s alone; `+
							`send the character itself, or both halves (\uD8xx\uDCxx)`, s.b[at:at+6])}
					}
				}
			default:
				return s.expected(`an escape (\", \\, \/, \b, \f, \n, \r, \t or \uXXXX) after the backslash`)
			}
		case c < 0x20:
			return s.expected(`a character of the string or its closing quote (control characters must be escaped, as \n or \u00XX)`)
		case c < utf8.RuneSelf:
			s.i++
		default:
			r, n := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && n <= 1 {
				return s.expected("UTF-8 text")
			}
			s.i += n
		}
	}
}

// unicodeEscape scans \uXXXX at the scanner's position.
func (s *jsonScanner) unicodeEscape() (rune, *jsonProblem) {
	if s.peek() != '\\' || s.i+1 >= len(s.b) || s.b[s.i+1] != 'u' {
		return 0, s.expected(`\u`)
	}
	s.i += 2
	var r rune
	for range 4 {
		c := s.peek()
		if !isHex(c) {
			return 0, s.expected(`four hex digits after \u`)
		}
		v, _ := strconv.ParseUint(string(c), 16, 8)
		r = r<<4 | rune(v)
		s.i++
	}
	return r, nil
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (s *jsonScanner) number() *jsonProblem {
	if s.peek() == '-' {
		s.i++
	}
	switch {
	case s.peek() == '0':
		s.i++
	case isDigit(s.peek()):
		for isDigit(s.peek()) {
			s.i++
		}
	default:
		return s.expected("a digit")
	}
	if s.peek() == '.' {
		s.i++
		if !isDigit(s.peek()) {
			return s.expected("a digit after the decimal point")
		}
		for isDigit(s.peek()) {
			s.i++
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !isDigit(s.peek()) {
			return s.expected("a digit in the exponent")
		}
		for isDigit(s.peek()) {
			s.i++
		}
	}
	return nil
}

func (s *jsonScanner) literal(word string) *jsonProblem {
	for k := 0; k < len(word); k++ {
		if s.peek() != word[k] {
			if k == 0 {
				return s.expected("a JSON value")
			}
			return s.expected(strconv.Quote(word[k:]) + " to finish " + word)
		}
		s.i++
	}
	return nil
}
