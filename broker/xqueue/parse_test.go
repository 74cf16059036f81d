package xqueue

import (
	"bytes"
	"errors"
	"mime/multipart"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker/dispatch"
)

var testLimits = Limits{Field: 64, Files: 32, Parts: 6}

// multipartForm writes fields and files as requests does.
func multipartForm(fields [][2]string, files [][2]string) (string, []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		_ = mw.WriteField(f[0], f[1])
	}
	for _, f := range files {
		w, _ := mw.CreateFormFile(f[0], f[0])
		_, _ = w.Write([]byte(f[1]))
	}
	_ = mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

func TestParseForm(t *testing.T) {
	t.Parallel()
	// URL-encoded: the last value of a repeated field, as Django's POST[name].
	f, err := parseForm("application/x-www-form-urlencoded", strings.NewReader("a=1&b=%7B%7D&a=2"), testLimits)
	if err != nil || !cmp.Equal(f.fields, map[string]string{"a": "2", "b": "{}"}) || f.files != nil {
		t.Errorf("urlencoded = %+v, %v", f, err)
	}
	if f, err = parseForm("", strings.NewReader("a=1"), testLimits); err != nil || f.fields["a"] != "1" {
		t.Errorf("no Content-Type = %+v, %v", f, err)
	}
	ctype, body := multipartForm([][2]string{{"xqueue_header", "h"}, {"xqueue_body", "b"}},
		[][2]string{{"a.py", "print(1)"}, {"b.txt", ""}, {"a.py", "print(2)"}})
	f, err = parseForm(ctype, bytes.NewReader(body), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(f.fields, map[string]string{"xqueue_header": "h", "xqueue_body": "b"}) {
		t.Errorf("multipart fields = %v", f.fields)
	}
	if diff := cmp.Diff([]file{{"b.txt", []byte{}}, {"a.py", []byte("print(2)")}}, f.files, cmp.AllowUnexported(file{})); diff != "" {
		t.Errorf("multipart files (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		name, ctype string
		body        []byte
	}{
		{"a long field", "application/x-www-form-urlencoded", []byte("a=" + strings.Repeat("x", 65))},
		{"a long body", "application/x-www-form-urlencoded", []byte(strings.Repeat("x", 2000))},
	} {
		if _, err := parseForm(tc.ctype, bytes.NewReader(tc.body), testLimits); !errors.Is(err, errTooLarge) {
			t.Errorf("%s: %v, want errTooLarge", tc.name, err)
		}
	}
	for _, tc := range []struct {
		name   string
		fields [][2]string
		files  [][2]string
	}{
		{"a long multipart field", [][2]string{{"a", strings.Repeat("x", 65)}}, nil},
		{"files past the limit", nil, [][2]string{{"a", strings.Repeat("x", 20)}, {"b", strings.Repeat("x", 20)}}},
		{"too many parts", [][2]string{{"a", ""}, {"b", ""}, {"c", ""}, {"d", ""}, {"e", ""}, {"f", ""}, {"g", ""}}, nil},
	} {
		ctype, body := multipartForm(tc.fields, tc.files)
		if _, err := parseForm(ctype, bytes.NewReader(body), testLimits); !errors.Is(err, errTooLarge) {
			t.Errorf("%s: %v, want errTooLarge", tc.name, err)
		}
	}
	ctype, body = multipartForm(nil, [][2]string{{strings.Repeat("n", maxNameLen+1), "x"}})
	if _, err := parseForm(ctype, bytes.NewReader(body), testLimits); err == nil || errors.Is(err, errTooLarge) {
		t.Errorf("a file name of %d bytes: %v, want a malformed form", maxNameLen+1, err)
	}
	if _, err := parseForm("multipart/form-data", strings.NewReader("x"), testLimits); err == nil {
		t.Error("multipart without a boundary parsed")
	}
	if _, err := parseForm("multipart/form-data; boundary=zz", strings.NewReader("--zz\r\nbroken"), testLimits); err == nil {
		t.Error("a broken multipart form parsed")
	}
}

func TestParseHeaders(t *testing.T) {
	t.Parallel()
	h, err := parseLMSHeader(`{"lms_callback_url": "https://lms/cb", "lms_key": {"any": 1}, "queue_name": "q"}`)
	if err != nil || h != (lmsHeader{CallbackURL: "https://lms/cb", Queue: "q"}) {
		t.Errorf("parseLMSHeader = %+v, %v", h, err)
	}
	if h, err = parseLMSHeader(`{"lms_callback_url": "https://lms/cb", "lms_key": null, "queue_name": 12}`); err != nil || h.Queue != "12" {
		t.Errorf("a numeric queue name = %+v, %v", h, err)
	}
	for _, bad := range []string{``, `[]`, `"s"`, `{}`, `{"lms_callback_url": "u", "lms_key": 1}`,
		`{"lms_callback_url": 1, "lms_key": 1, "queue_name": "q"}`, `{"lms_callback_url": "", "lms_key": 1, "queue_name": "q"}`,
		`{"lms_callback_url": "u", "lms_key": 1, "queue_name": ["q"]}`} {
		if _, err := parseLMSHeader(bad); !errors.Is(err, errBadFormat) {
			t.Errorf("parseLMSHeader(%s) = %v", bad, err)
		}
	}
	for in, want := range map[string]graderHeader{
		`{"submission_id": 12, "submission_key": "k"}`:            {12, "k"},
		`{"submission_id": "12", "submission_key": "k"}`:          {12, "k"},
		`{"submission_id": 12.7, "submission_key": ""}`:           {12, ""},
		`{"submission_id": " 7 ", "submission_key": "k", "x": 1}`: {7, "k"},
	} {
		if got, err := parseGraderHeader(in); err != nil || got != want {
			t.Errorf("parseGraderHeader(%s) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{``, `{}`, `{"submission_id": 1}`, `{"submission_key": "k"}`, `{"submission_id": "x", "submission_key": "k"}`,
		`{"submission_id": 1, "submission_key": 5}`, `{"submission_id": 1e400, "submission_key": "k"}`, `{"submission_id": [1], "submission_key": "k"}`} {
		if _, err := parseGraderHeader(bad); !errors.Is(err, errBadFormat) {
			t.Errorf("parseGraderHeader(%s) = %v", bad, err)
		}
	}
}

func TestKeysAndLinks(t *testing.T) {
	t.Parallel()
	m := macs{key: []byte("0123456789abcdef0123456789abcdef")}
	ref := dispatch.LeaseRef{JobID: 5, LeaseID: 9}
	key := m.submissionKey(ref)
	if got, err := m.leaseOf(5, key); err != nil || got != ref {
		t.Errorf("leaseOf(its key) = %v, %v", got, err)
	}
	for _, bad := range []string{key + "0", "9.00", "9", "x." + key, strings.Replace(key, "9.", "8.", 1)} {
		if _, err := m.leaseOf(5, bad); !errors.Is(err, errBadKey) {
			t.Errorf("leaseOf(%q) = %v", bad, err)
		}
	}
	if _, err := m.leaseOf(6, key); !errors.Is(err, errBadKey) {
		t.Error("a key worked for another submission")
	}
	if _, err := (macs{key: []byte("another key")}).leaseOf(5, key); !errors.Is(err, errBadKey) {
		t.Error("a key worked under another MAC key")
	}
	now := time.Unix(1_800_000_000, 0)
	l := fileLink{Attachment: 3, Lease: 9, Expires: now.Add(time.Minute)}
	tok := m.fileToken(l)
	if got, err := m.parseFileToken(tok, now); err != nil || got != l {
		t.Errorf("parseFileToken = %+v, %v", got, err)
	}
	if _, err := m.parseFileToken(tok, now.Add(time.Minute)); !errors.Is(err, errBadLink) {
		t.Error("an expired link worked")
	}
	if _, err := m.parseFileToken(tok[:len(tok)-2]+"AA", now); !errors.Is(err, errBadLink) {
		t.Error("an altered link worked")
	}
}

// FuzzParseForm: any body, of either form type, is read or refused, never
// past its limits.
func FuzzParseForm(f *testing.F) {
	ctype, body := multipartForm([][2]string{{"xqueue_header", "{}"}}, [][2]string{{"a.py", "x"}})
	f.Add(ctype, body)
	f.Add("application/x-www-form-urlencoded", []byte("xqueue_header=%7B%7D&xqueue_body=b"))
	f.Add("multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a\"\r\n\r\nx\r\n--b--\r\n"))
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		form, err := parseForm(ctype, bytes.NewReader(body), testLimits)
		if err != nil {
			return
		}
		var files int64
		for _, fl := range form.files {
			files += int64(len(fl.data))
		}
		for _, v := range form.fields {
			if int64(len(v)) > testLimits.Field {
				t.Fatalf("a field of %d bytes passed a limit of %d", len(v), testLimits.Field)
			}
		}
		if files > testLimits.Files || len(form.files) > testLimits.Parts {
			t.Fatalf("%d files of %d bytes passed the limits", len(form.files), files)
		}
		for _, fl := range form.files {
			if len(fl.name) > maxNameLen {
				t.Fatalf("a file name of %d bytes passed", len(fl.name))
			}
		}
	})
}

// FuzzParseLMSHeader: any header is read or refused; what is read has a
// callback URL.
func FuzzParseLMSHeader(f *testing.F) {
	for _, s := range []string{`{"lms_callback_url": "https://lms/cb", "lms_key": "k", "queue_name": "q"}`, `{}`, `[`, `{"queue_name": 1.5e3}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		h, err := parseLMSHeader(raw)
		if err == nil && h.CallbackURL == "" {
			t.Fatalf("parseLMSHeader(%q) read no callback URL", raw)
		}
	})
}

// FuzzParseGraderHeader: any put_result header is read or refused.
func FuzzParseGraderHeader(f *testing.F) {
	for _, s := range []string{`{"submission_id": 12, "submission_key": "9.ab"}`, `{"submission_id": "-1e30", "submission_key": ""}`, `{`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		_, _ = parseGraderHeader(raw)
	})
}

// FuzzKeysAndLinks: no key or link but the broker's own passes.
func FuzzKeysAndLinks(f *testing.F) {
	m := macs{key: []byte("fuzz key")}
	f.Add(int64(1), m.submissionKey(dispatch.LeaseRef{JobID: 1, LeaseID: 2}), m.fileToken(fileLink{1, 2, time.Unix(2e9, 0)}))
	f.Add(int64(0), "1.", "")
	f.Fuzz(func(t *testing.T, job int64, key, link string) {
		if ref, err := m.leaseOf(job, key); err == nil && m.submissionKey(ref) != key {
			t.Fatalf("leaseOf(%d, %q) accepted a key the broker would not make", job, key)
		}
		if l, err := m.parseFileToken(link, time.Unix(0, 0)); err == nil && m.fileToken(l) != link {
			t.Fatalf("parseFileToken(%q) accepted a link the broker would not make", link)
		}
	})
}
