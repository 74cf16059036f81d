// Package scenarios grades a student's HTTP service by scenarios: requests
// made in order, each with the status and body it must answer. It holds
// what needs no container engine: scenario sets (parsing, checking,
// loading by name), judging a response (JSON with comparison modes, text,
// regular expressions; a readable diff), the result document, and the
// runner, which makes the requests from inside the run's network namespace
// (cmd gb-scenario-runner) and reports the raw responses to graderd.
package scenarios

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Bounds of a scenario set: it comes from a platform (inline in jobdata) or
// a course's files, and graderd keeps it in memory while the job runs.
const (
	// MaxSetSize bounds a scenario set's text, in bytes.
	MaxSetSize = 4 << 20
	// MaxScenarios bounds the scenarios of a set.
	MaxScenarios = 1000
	// MaxRequestBody bounds the body a scenario sends, in bytes.
	MaxRequestBody = 1 << 20
	// MaxTimeout bounds a scenario's own timeout.
	MaxTimeout = 5 * time.Minute
)

// Set is a scenario set: the scenarios run in order against one student's
// service.
type Set struct {
	// Name names the set in results; a set loaded by name gets its name.
	Name string `json:"name,omitempty"`
	// Scenarios run in this order.
	Scenarios []Scenario `json:"scenarios"`
}

// Scenario is one request and what its answer must be.
type Scenario struct {
	// Name says what the scenario checks; results show it to students.
	Name string `json:"name"`
	// Public scenarios may be shown to students with all their details;
	// a platform may ask to run public scenarios only.
	Public bool `json:"public,omitempty"`
	// Method is the HTTP method; default GET.
	Method string `json:"method,omitempty"`
	// Path is the request's path and query, starting with "/".
	Path string `json:"path"`
	// Headers are sent with the request.
	Headers map[string]string `json:"headers,omitempty"`
	// Body is a JSON value sent as the request body (with Content-Type
	// application/json unless Headers set one); BodyText sends text
	// instead. At most one of them.
	Body     json.RawMessage `json:"body,omitempty"`
	BodyText *string         `json:"body_text,omitempty"`
	// Timeout bounds the request, from its start to the end of its
	// answer; zero means the executor's default.
	Timeout Duration `json:"timeout,omitempty"`
	// Expect is what the answer must be.
	Expect Expect `json:"expect"`
	// Points weigh the scenario in the score; default 1.
	Points *float64 `json:"points,omitempty"`
}

// Expect is the answer a scenario expects: a status, and a body as JSON,
// as text, or matching a regular expression (or any body, with none).
type Expect struct {
	// Status is the expected HTTP status; default 200.
	Status int `json:"status,omitempty"`
	// JSON is the expected body as a JSON value. Objects compare without
	// regard to key order; Ignore and Unordered loosen the comparison.
	JSON json.RawMessage `json:"json,omitempty"`
	// Ignore lists object keys left out of the comparison wherever they
	// appear, at any depth (ids, timestamps).
	Ignore []string `json:"ignore,omitempty"`
	// Unordered compares arrays without regard to order, at any depth.
	Unordered bool `json:"unordered,omitempty"`
	// Text is the expected body, exactly.
	Text *string `json:"text,omitempty"`
	// Regex is an RE2 regular expression the body must match (anywhere,
	// unless anchored).
	Regex string `json:"regex,omitempty"`
}

// Duration is a timeout in a scenario set: a string such as "5s" or
// "1500ms", or a number of seconds.
type Duration time.Duration

// UnmarshalJSON reads a Duration.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 5s or 1500ms", s)
		}
		*d = Duration(v)
		return nil
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("%s is not a duration: give a string such as \"5s\" or a number of seconds", b)
	}
	if secs < 0 || secs > MaxTimeout.Seconds() {
		return fmt.Errorf("%v seconds is not a duration between 0 and %v", secs, MaxTimeout)
	}
	*d = Duration(time.Duration(secs * float64(time.Second)))
	return nil
}

// MarshalJSON writes a Duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// Parse reads a scenario set from JSON or YAML (a YAML document is turned
// into JSON first, so that both read the same way), rejecting unknown
// fields, and checks it (see Set.Check).
func Parse(data []byte) (*Set, error) {
	if len(data) > MaxSetSize {
		return nil, fmt.Errorf("the scenario set is %d bytes, more than %d", len(data), MaxSetSize)
	}
	doc := bytes.TrimSpace(data)
	if len(doc) > 0 && doc[0] != '{' && doc[0] != '[' {
		var err error
		if doc, err = yamlToJSON(doc); err != nil {
			return nil, err
		}
	}
	return ParseJSON(doc)
}

// ParseJSON reads a scenario set from JSON only, as jobdata carries it: an
// object with "scenarios", or an array of scenarios.
func ParseJSON(doc []byte) (*Set, error) {
	if len(doc) > MaxSetSize {
		return nil, fmt.Errorf("the scenario set is %d bytes, more than %d", len(doc), MaxSetSize)
	}
	var s Set
	trimmed := bytes.TrimSpace(doc)
	var err error
	if len(trimmed) > 0 && trimmed[0] == '[' {
		err = strictJSON(trimmed, &s.Scenarios)
	} else {
		err = strictJSON(trimmed, &s)
	}
	if err != nil {
		return nil, fmt.Errorf("the scenario set is malformed: %w", err)
	}
	if err := s.Check(); err != nil {
		return nil, err
	}
	return &s, nil
}

func strictJSON(doc []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("text after the set")
	}
	return nil
}

// yamlToJSON turns one YAML document into JSON.
func yamlToJSON(doc []byte) ([]byte, error) {
	var v any
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("the scenario set is not valid YAML or JSON: %w", err)
	}
	v, err := jsonable(v, 0)
	if err != nil {
		return nil, fmt.Errorf("the scenario set: %w", err)
	}
	return json.Marshal(v)
}

// jsonable converts what yaml.v3 decodes into values encoding/json
// writes: maps with other keys than strings are refused, as are values
// nested deeper than JSON decoders accept.
func jsonable(v any, depth int) (any, error) {
	if depth > 1000 {
		return nil, errors.New("values are nested too deep")
	}
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			c, err := jsonable(e, depth+1)
			if err != nil {
				return nil, err
			}
			t[k] = c
		}
		return t, nil
	case map[any]any:
		return nil, errors.New("a mapping has a key that is not a string")
	case []any:
		for i, e := range t {
			c, err := jsonable(e, depth+1)
			if err != nil {
				return nil, err
			}
			t[i] = c
		}
		return t, nil
	case time.Time:
		return t.Format(time.RFC3339Nano), nil
	case float64:
		if t != t || t > 1e308 || t < -1e308 {
			return nil, errors.New("a number is not finite")
		}
	}
	return v, nil
}

// methodRE is an HTTP method: a token, upper case by convention.
var methodRE = regexp.MustCompile(`^[A-Z]{1,16}$`)

// Check checks every scenario and names the first bad one.
func (s *Set) Check() error {
	if len(s.Scenarios) == 0 {
		return errors.New("the scenario set has no scenarios")
	}
	if len(s.Scenarios) > MaxScenarios {
		return fmt.Errorf("the scenario set has %d scenarios, more than %d", len(s.Scenarios), MaxScenarios)
	}
	for i := range s.Scenarios {
		if err := s.Scenarios[i].check(); err != nil {
			return fmt.Errorf("scenario %d (%q): %w", i+1, s.Scenarios[i].Name, err)
		}
	}
	return nil
}

func (sc *Scenario) check() error {
	if strings.TrimSpace(sc.Name) == "" {
		return errors.New("name: missing")
	}
	if sc.Method == "" {
		sc.Method = http.MethodGet
	}
	if !methodRE.MatchString(sc.Method) {
		return fmt.Errorf("method: %q is not an HTTP method such as GET or POST", sc.Method)
	}
	u, err := url.Parse(sc.Path)
	if err != nil || !strings.HasPrefix(sc.Path, "/") || strings.HasPrefix(sc.Path, "//") || u.Scheme != "" || u.Host != "" ||
		strings.ContainsAny(sc.Path, " \t\r\n#") {
		return fmt.Errorf("path: %q is not a path and query starting with /", sc.Path)
	}
	for k, v := range sc.Headers {
		if !validHeaderName(k) || strings.ContainsAny(v, "\r\n\x00") {
			return fmt.Errorf("headers: %q is not a valid header", k)
		}
	}
	if sc.Body != nil && sc.BodyText != nil {
		return errors.New("body and body_text: give one of them")
	}
	if len(sc.Body) > MaxRequestBody || (sc.BodyText != nil && len(*sc.BodyText) > MaxRequestBody) {
		return fmt.Errorf("the body is larger than %d bytes", MaxRequestBody)
	}
	if t := time.Duration(sc.Timeout); t < 0 || t > MaxTimeout {
		return fmt.Errorf("timeout: %v is not between 0 and %v", t, MaxTimeout)
	}
	if sc.Points != nil && (*sc.Points < 0 || *sc.Points > 1e6) {
		return fmt.Errorf("points: %v is not between 0 and 1000000", *sc.Points)
	}
	return sc.Expect.check()
}

func (e *Expect) check() error {
	if e.Status == 0 {
		e.Status = http.StatusOK
	}
	if e.Status < 100 || e.Status > 599 {
		return fmt.Errorf("expect.status: %d is not an HTTP status", e.Status)
	}
	n := 0
	if e.JSON != nil {
		n++
		if !json.Valid(e.JSON) {
			return errors.New("expect.json: not valid JSON")
		}
	}
	if e.Text != nil {
		n++
	}
	if e.Regex != "" {
		n++
		if _, err := regexp.Compile(e.Regex); err != nil {
			return fmt.Errorf("expect.regex: %v", err)
		}
	}
	if n > 1 {
		return errors.New("expect: give at most one of json, text and regex")
	}
	if e.JSON == nil && (len(e.Ignore) > 0 || e.Unordered) {
		return errors.New("expect: ignore and unordered apply to json only")
	}
	return nil
}

// validHeaderName reports whether k is an HTTP header name (a token).
func validHeaderName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for _, r := range k {
		if r > 127 || !(r == '-' || r == '_' || r == '.' || r == '!' || r == '#' || r == '$' || r == '%' || r == '&' || r == '\'' ||
			r == '*' || r == '+' || r == '^' || r == '`' || r == '|' || r == '~' ||
			r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// PublicOnly returns the set without its private scenarios, for a
// platform that shows students every detail of what it asked for.
func (s *Set) PublicOnly() *Set {
	out := &Set{Name: s.Name}
	for _, sc := range s.Scenarios {
		if sc.Public {
			out.Scenarios = append(out.Scenarios, sc)
		}
	}
	return out
}

// nameRE is a scenario set's name, as a file name without extension.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// extensions are tried in this order when a set is loaded by name.
var extensions = []string{".yaml", ".yml", ".json"}

// Load reads the set called name from dir (name.yaml, name.yml or
// name.json), so that private scenarios stay on the grading server.
func Load(dir, name string) (*Set, error) {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return nil, fmt.Errorf("%q is not a scenario set's name (letters, digits, ., _ and -)", name)
	}
	for _, ext := range extensions {
		path := filepath.Join(dir, name+ext)
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(io.LimitReader(f, MaxSetSize+1))
		f.Close()
		if err != nil {
			return nil, err
		}
		s, err := Parse(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if s.Name == "" {
			s.Name = name
		}
		return s, nil
	}
	return nil, fmt.Errorf("no scenario set %q on this grading server (looked for %s in %s)", name, strings.Join(extensions, ", "), dir)
}

// points is a scenario's weight.
func (sc *Scenario) points() float64 {
	if sc.Points == nil {
		return 1
	}
	return *sc.Points
}

// requestBody is what the scenario sends, and its default content type.
func (sc *Scenario) requestBody() ([]byte, string) {
	switch {
	case sc.BodyText != nil:
		return []byte(*sc.BodyText), "text/plain; charset=utf-8"
	case sc.Body != nil:
		return sc.Body, "application/json"
	}
	return nil, ""
}
