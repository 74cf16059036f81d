package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestXQueueBodyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body, stored string
	}{
		{`{"student_response": "print(1)", "grader_payload": "{\"grader\": \"a.py\"}"}`, ""},
		{" {\"correct\": true}\n", ""}, // JSON kept byte for byte, spaces and all
		{`[1, 2]`, ""},
		{`42`, ""},
		{`"a JSON string"`, `"\"a JSON string\""`}, // a string is stored as a string of it
		{`not JSON`, `"not JSON"`},
		{``, `""`},
		{`{"broken": `, `"{\"broken\": "`},
	} {
		stored := XQueueToJSON([]byte(tc.body))
		want := tc.stored
		if want == "" {
			want = tc.body
		}
		if string(stored) != want || !json.Valid(stored) {
			t.Errorf("XQueueToJSON(%q) = %q, want %q", tc.body, stored, want)
		}
		if back := XQueueFromJSON(stored); string(back) != tc.body {
			t.Errorf("XQueueFromJSON(XQueueToJSON(%q)) = %q", tc.body, back)
		}
	}
	if !json.Valid([]byte(XQueueFailureBody)) {
		t.Error("XQueueFailureBody is not JSON")
	}
}

// FuzzXQueueBody checks that any valid UTF-8 body an LMS or a grader sends
// is stored as JSON and comes back byte for byte.
func FuzzXQueueBody(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `"s"`, ``, `x`, " \n", `{"a":"\u00e9"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		stored := XQueueToJSON(body)
		if !json.Valid(stored) {
			t.Fatalf("XQueueToJSON(%q) = %q, not JSON", body, stored)
		}
		if back := XQueueFromJSON(stored); utf8.Valid(body) && !bytes.Equal(back, body) {
			t.Fatalf("round trip of %q gave %q", body, back)
		}
	})
}

func TestCheckCallbackURL(t *testing.T) {
	t.Parallel()
	u := XQueueUser{Name: "lms", CallbackHosts: []string{"lms.example.org"}, HTTPCallbackHosts: []string{"lms.internal", "10.0.0.5"}}
	for _, tc := range []struct {
		url  string
		want error
		msg  string
	}{
		{"https://lms.example.org/courses/x/xqueue/1/b/score_update", nil, ""},
		{"https://LMS.example.org:8443/cb", nil, ""},
		{"http://lms.internal/cb", nil, ""},
		{"https://lms.internal/cb", nil, ""},
		{"http://10.0.0.5:8000/cb", nil, ""},
		{"http://lms.example.org/cb", ErrPermissionDenied, "over http://"},
		{"https://evil.example/cb", ErrPermissionDenied, `"evil.example"`},
		{"https://lms.example.org.evil.example/cb", ErrPermissionDenied, "--callback-host"},
		{"https://user:pw@lms.example.org/cb", ErrInvalid, "credentials"},
		{"ftp://lms.example.org/cb", ErrInvalid, "scheme"},
		{"/relative/cb", ErrInvalid, "absolute"},
		{"lms.example.org/cb", ErrInvalid, "absolute"},
		{"https://%zz", ErrInvalid, "absolute"},
	} {
		err := u.CheckCallbackURL(tc.url)
		if tc.want == nil {
			if err != nil {
				t.Errorf("CheckCallbackURL(%s) = %v", tc.url, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("CheckCallbackURL(%s) = %v, want %v saying %q", tc.url, err, tc.want, tc.msg)
		}
	}
	for _, h := range []string{"lms.example.org", "localhost", "10.0.0.5", "::1", "a-b.c"} {
		if err := CheckHost(h); err != nil {
			t.Errorf("CheckHost(%q) = %v", h, err)
		}
	}
	for _, h := range []string{"", "LMS.example.org", "https://lms", "lms:80", "lms/x", "-lms", "a..b", "fe80::1%eth0"} {
		if err := CheckHost(h); !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckHost(%q) = %v, want ErrInvalid", h, err)
		}
	}
	if !(XQueueUser{PullQueues: []string{AnyQueue}}).MayPull("q") || (XQueueUser{PullQueues: []string{"a"}}).MayPull("q") {
		t.Error("MayPull")
	}
}
