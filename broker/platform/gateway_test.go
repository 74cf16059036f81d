package platform

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"

	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// TestGatewayJSONDecoder checks the request decoder against what the
// gateway's handlers expect of one: io.EOF for an empty body, the
// handler's size error passed on, unknown members ignored, anything that
// is not one JSON object refused.
func TestGatewayJSONDecoder(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, body string
		limit      int64
		want       string // the token decoded
		wantErr    string // a part of the error; "EOF" for io.EOF
	}{
		{name: "token", body: `{"token": "a.b.c.d.e"}`, want: "a.b.c.d.e"},
		{name: "spaces around", body: " \n{\"token\":\"t\"}\n", want: "t"},
		{name: "unknown member", body: `{"token": "t", "extra": [1, {"x": 2}]}`, want: "t"},
		{name: "empty", body: "", wantErr: "EOF"},
		{name: "only spaces", body: " \r\n\t", wantErr: "EOF"},
		{name: "not JSON", body: `token=t`, wantErr: `line 1, column 1: expected a JSON object`},
		{name: "token not a string", body: `{"token": 5}`, wantErr: `line 1, column 11: expected "token" as a JSON string, found a number`},
		{name: "data after the object", body: `{"token": "t"} {"token": "u"}`, wantErr: "line 1, column 16: expected the end of the body"},
		{name: "too large", body: `{"token": "` + strings.Repeat("x", 100) + `"}`, limit: 64, wantErr: "larger than the 64 bytes"},
		{name: "columns count characters", body: `{"é": x}`, wantErr: `line 1, column 7: expected a JSON value, found "x"`},
		{name: "bad escape", body: `{"token": "a\q"}`, wantErr: `line 1, column 14: expected an escape`},
		{name: "half a surrogate pair", body: `{"token": "\ud800"}`, wantErr: `line 1, column 12: expected a UTF-16 surrogate pair, found \ud800 alone`},
		{name: "control character", body: "{\"token\": \"a\tb\"}", wantErr: `line 1, column 13: expected a character of the string or its closing quote`},
		{name: "leading zero", body: `{"a": 01}`, wantErr: `line 1, column 8: expected "," or "}" after the member, found a number`},
		{name: "cut literal", body: `{"a": tru}`, wantErr: `line 1, column 10: expected "e" to finish true, found "}"`},
		{name: "unclosed array", body: `{"a": [1 2]}`, wantErr: `line 1, column 10: expected "," or "]" after the element, found a number`},
		{name: "name without quotes", body: `{token: "t"}`, wantErr: `line 1, column 2: expected a member name in double quotes, found "t"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var body io.Reader = strings.NewReader(c.body)
			if c.limit > 0 {
				body = http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(body), c.limit)
			}
			var req gbv1.SendJobRequest
			err := newGatewayJSON().NewDecoder(body).Decode(&req)
			switch {
			case c.wantErr == "EOF":
				if !errors.Is(err, io.EOF) {
					t.Fatalf("err = %v, want io.EOF", err)
				}
			case c.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one with %q", err, c.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case req.GetToken() != c.want:
				t.Fatalf("token = %q, want %q", req.GetToken(), c.want)
			}
		})
	}
}

// BenchmarkGatewayDecode compares the gateway's request decoding with
// runtime.JSONPb's, for a body holding a token the size of a 2048-bit
// sendjob.
func BenchmarkGatewayDecode(b *testing.B) {
	body := `{"token":"` + strings.Repeat("eyJhbGciOiJSU0EtT0FFUC0yNTYi", 60) + `"}`
	jsonpb := &runtime.JSONPb{UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true}}
	for _, m := range []struct {
		name string
		m    runtime.Marshaler
	}{{"JSONPb", jsonpb}, {"gatewayJSON", newGatewayJSON()}} {
		b.Run(m.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var req gbv1.SendJobRequest
				if err := m.m.NewDecoder(strings.NewReader(body)).Decode(&req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzGatewayDecoder feeds arbitrary request bodies to the gateway's
// decoder: it must never panic; whatever it accepts must be what protojson
// itself reads from the same bytes; and whatever it refuses, the refusal
// must say where and what was expected in its own words, which means that
// the scanner behind the words (bodyProblem) finds a problem wherever
// protojson does, and none where protojson finds none.
func FuzzGatewayDecoder(f *testing.F) {
	for _, s := range []string{`{"token": "a.b.c.d.e"}`, ``, ` `, `{"token": 5}`, `{"token": "t"} x`, `[]`, `{"token":"\u00e9"}`,
		`{"extra":{"a":[1,2]},"token":"t"}`, `{"token": "abc`, `{"token": "t", "token": "u"}`, "{\"token\": \"\xff\"}",
		`{"token":"\ud800"}`, `{"token":"\ud83d\ude00"}`, `{"a": -0.5e+3, "b": [true, false, null]}`, `{"a": 01}`, `{"token": nul}`,
		`{"a": "\q"}`, "{\"a\": \"\x01\"}", `{"a" 1}`, `{"a": 1,}`, `{"a": [1 2]}`} {
		f.Add([]byte(s))
	}
	fields := (&gbv1.SendJobRequest{}).ProtoReflect().Descriptor().Fields()
	f.Fuzz(func(t *testing.T, body []byte) {
		var got gbv1.SendJobRequest
		err := newGatewayJSON().NewDecoder(strings.NewReader(string(body))).Decode(&got)
		var want gbv1.SendJobRequest
		perr := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &want)
		problem := bodyProblem(body, fields)
		if perr != nil && len(bytes.TrimSpace(body)) > 0 && problem == nil {
			t.Fatalf("protojson refuses %q (%v), but the scanner finds nothing to say", body, perr)
		}
		if perr == nil && problem != nil {
			t.Fatalf("protojson reads %q, but the scanner says %s", body, problem.describe(body))
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			var be *bodyError
			if !errors.As(err, &be) || strings.Contains(err.Error(), "proto:") || !strings.Contains(err.Error(), "at line ") {
				t.Fatalf("refusal of %q does not say where in its own words: %v", body, err)
			}
			return
		}
		if perr != nil {
			t.Fatalf("decoder accepted %q, which protojson refuses: %v", body, perr)
		}
		if got.GetToken() != want.GetToken() {
			t.Fatalf("token %q, protojson reads %q", got.GetToken(), want.GetToken())
		}
	})
}
