package graderqueue

import (
	"bytes"
	"errors"
	"mime/multipart"
	"net/textproto"
	"strings"
	"testing"

	"github.com/gradebroker/gradebroker/broker/platform"
)

// multipartBody builds a multipart/form-data body with fields and, when
// fileName is set, a file part named fileField.
func multipartBody(t testing.TB, fields [][2]string, fileField, fileName, content string) (string, string) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, f := range fields {
		if err := w.WriteField(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	if fileName != "" {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="`+fileField+`"; filename="`+fileName+`"`)
		h.Set("Content-Type", "application/octet-stream")
		part, err := w.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		part.Write([]byte(content))
	}
	w.Close()
	return w.FormDataContentType(), buf.String()
}

func TestParseForm(t *testing.T) {
	t.Parallel()
	const urlencoded = "application/x-www-form-urlencoded"
	ct, withFile := multipartBody(t, [][2]string{{"sToken", "a.b.c.d.e"}, {"sPlatform", "old"}, {"other", "x"}}, "solfile", "sol.c", "int main(){}")
	ct2, twoTokens := multipartBody(t, [][2]string{{"sToken", "a"}, {"sToken", "b"}}, "", "", "")
	ct3, fileNamedOther := multipartBody(t, [][2]string{{"sToken", "a"}}, "attachment", "x.c", "x")
	ct4, textSolfile := multipartBody(t, [][2]string{{"sToken", "a"}, {"solfile", "not a file"}}, "", "", "")
	for _, tc := range []struct {
		name, contentType, body string
		want                    form
		err                     string
	}{
		{name: "http_build_query", contentType: urlencoded, body: "sToken=a.b-c_d.e&sPlatform=old+one&request=ignored",
			want: form{Token: "a.b-c_d.e", Platform: "old one"}},
		{name: "with a charset", contentType: urlencoded + "; charset=UTF-8", body: "sToken=t", want: form{Token: "t"}},
		{name: "multipart with a file", contentType: ct, body: withFile,
			want: form{Token: "a.b.c.d.e", Platform: "old", Solfile: &platform.Upload{Name: "sol.c", Content: []byte("int main(){}")}}},
		{name: "a file of another name is ignored", contentType: ct3, body: fileNamedOther, want: form{Token: "a"}},
		{name: "a solfile that is no file is ignored", contentType: ct4, body: textSolfile, want: form{Token: "a"}},
		{name: "sToken twice", contentType: urlencoded, body: "sToken=a&sToken=b", err: "sToken is given twice"},
		{name: "sToken twice in parts", contentType: ct2, body: twoTokens, err: "sToken is given twice"},
		{name: "bad escape", contentType: urlencoded, body: "sToken=%zz", err: "does not parse"},
		{name: "JSON", contentType: "application/json", body: `{"sToken":"a"}`, err: "takes a form POST"},
		{name: "no content type", contentType: "", body: "sToken=a", err: "takes a form POST"},
		{name: "no boundary", contentType: "multipart/form-data", body: withFile, err: "no boundary"},
		{name: "broken multipart", contentType: ct, body: withFile[:len(withFile)/2], err: "does not parse"},
	} {
		got, err := parseForm(tc.contentType, strings.NewReader(tc.body), 128+int64(len(withFile)))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got.Token != tc.want.Token || got.Platform != tc.want.Platform || (got.Solfile == nil) != (tc.want.Solfile == nil) ||
			got.Solfile != nil && (got.Solfile.Name != tc.want.Solfile.Name || !bytes.Equal(got.Solfile.Content, tc.want.Solfile.Content)) {
			t.Errorf("%s: got %+v (file %+v), want %+v", tc.name, got, got.Solfile, tc.want)
		}
	}
	if _, err := parseForm(urlencoded, strings.NewReader(strings.Repeat("a", 200)), 100); !errors.Is(err, errTooLarge) {
		t.Errorf("a body over the limit: %v, want errTooLarge", err)
	}
}

// FuzzParseForm feeds the form reader arbitrary bodies and content types:
// it never panics, never returns more than it was given, and what it
// accepts it reads again the same.
func FuzzParseForm(f *testing.F) {
	ct, body := multipartBody(f, [][2]string{{"sToken", "a.b.c.d.e"}, {"sPlatform", "old"}}, "solfile", "sol.c", "int main(){}")
	f.Add(ct, body)
	f.Add("application/x-www-form-urlencoded", "sToken=a&sPlatform=b")
	f.Add("application/x-www-form-urlencoded; charset=utf-8", "sToken=%41%zz")
	f.Add("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"solfile\"; filename=\"a\"\r\n\r\nhi\r\n--x--\r\n")
	f.Add("text/plain", "")
	f.Fuzz(func(t *testing.T, contentType, body string) {
		const limit = 1 << 16
		got, err := parseForm(contentType, strings.NewReader(body), limit)
		if err != nil {
			return
		}
		n := len(got.Token) + len(got.Platform)
		if got.Solfile != nil {
			n += len(got.Solfile.Content)
		}
		if n > len(body) {
			t.Fatalf("read %d bytes of fields from a body of %d", n, len(body))
		}
		again, err := parseForm(contentType, strings.NewReader(body), limit)
		if err != nil || again.Token != got.Token || again.Platform != got.Platform {
			t.Fatalf("a second reading differs: %+v, %v", again, err)
		}
	})
}
