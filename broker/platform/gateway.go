package platform

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo that the broker's
// refusals carry in their details.
const ErrorDomain = "gradebroker"

// The reasons of the gateway's own refusals, in the ErrorInfo of their
// details. Token refusals carry the reason of RefusalReason, in capitals
// (EXPIRED, REPLAYED, ...).
const (
	// ReasonMalformedBody is a request body that is not
	// {"token": "<compact JWE>"} in JSON.
	ReasonMalformedBody = "MALFORMED_BODY"
	// ReasonTooLarge is a request body, or a token, larger than the broker
	// accepts. The gateway answers it with HTTP 413.
	ReasonTooLarge = "TOO_LARGE"
)

// bodyShape is what every request body is.
const bodyShape = `{"token": "<compact JWE>"}`

// refusal is a status error with code and msg whose details say why in one
// machine-readable word: a google.rpc.ErrorInfo with reason and ErrorDomain.
func refusal(code codes.Code, reason, msg string) *status.Status {
	st := status.New(code, msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		st = withInfo
	}
	return st
}

// reasonOf returns the ErrorInfo reason in st's details, or "".
func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// httpStatusOf overrides grpc-gateway's mapping from gRPC codes to HTTP
// statuses where HTTP has a better word than the code's: 413 for what is
// too large (InvalidArgument would be 400).
func httpStatusOf(st *status.Status) int {
	if reasonOf(st) == ReasonTooLarge {
		return http.StatusRequestEntityTooLarge
	}
	return 0
}

// bodyError is a request body the gateway cannot read, in a platform
// developer's words. Its message is what grpc-gateway's generated handlers
// keep of it (they wrap a decoder's error in a bare InvalidArgument);
// gatewayBody keeps the whole of it for the error handler.
type bodyError struct {
	st *status.Status
}

func (e *bodyError) Error() string { return e.st.Message() }

// GRPCStatus returns the refusal with its code and details.
func (e *bodyError) GRPCStatus() *status.Status { return e.st }

func tooLarge(limit int64) *bodyError {
	return &bodyError{refusal(codes.InvalidArgument, ReasonTooLarge, fmt.Sprintf(
		"the request body is larger than the %d bytes this broker accepts: send fewer jobs per sendjobs token, or smaller jobdata", limit))}
}

// malformedBody says what is wrong with body, which protojson refused to
// read as msg: where, and what was expected there.
func malformedBody(body []byte, msg protoreflect.Message, perr error) *bodyError {
	text := "the request body must be " + bodyShape + ": "
	if p := bodyProblem(body, msg.Descriptor().Fields()); p != nil {
		text += p.describe(body)
	} else {
		// Unreachable as far as the fuzz target knows: protojson refused
		// what the scanner accepts. Its own words are better than none.
		text += perr.Error()
	}
	return &bodyError{refusal(codes.InvalidArgument, ReasonMalformedBody, text)}
}

// bodyProblem finds the first problem of a request body for a message with
// fields: not one JSON object, a field of the message given twice or as
// the wrong kind of value, or a JSON syntax error anywhere. Unknown members
// are skipped, as protojson skips them.
func bodyProblem(body []byte, fields protoreflect.FieldDescriptors) *jsonProblem {
	s := &jsonScanner{b: body}
	s.skipSpace()
	if s.peek() != '{' {
		return s.expected("a JSON object " + bodyShape)
	}
	seen := make(map[protoreflect.FieldNumber]bool)
	p := s.object(func(name string, at int) *jsonProblem {
		fd := fields.ByJSONName(name)
		if fd == nil {
			fd = fields.ByTextName(name)
		}
		if fd == nil {
			return s.value()
		}
		if seen[fd.Number()] {
			return &jsonProblem{at: at, msg: fmt.Sprintf("%q is given a second time; give it once", name)}
		}
		seen[fd.Number()] = true
		if fd.Kind() == protoreflect.StringKind && !fd.IsList() {
			switch s.peek() {
			case '"':
				return s.string()
			case 'n':
				return s.literal("null")
			}
			return s.expected(fmt.Sprintf("%q as a JSON string", name))
		}
		return s.value()
	})
	if p != nil {
		return p
	}
	s.skipSpace()
	if s.i < len(s.b) {
		return s.expected("the end of the body after the JSON object (send one object)")
	}
	return nil
}

// gatewayJSON is the REST gateway's JSON marshaler: runtime.JSONPb with
// proto field names out and unknown fields ignored in, and a decoder that
// reads a request body once and parses it once. JSONPb's own decoder scans
// the body with encoding/json to find the value and then has protojson
// parse it again, which for a body that is one token of a few kilobytes is
// the larger part of the gateway's cost per request. A body is one JSON
// object: unlike JSONPb's decoder, this one refuses anything after it.
type gatewayJSON struct {
	runtime.JSONPb
}

var _ runtime.Marshaler = (*gatewayJSON)(nil)

func newGatewayJSON() *gatewayJSON {
	return &gatewayJSON{runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
	}}
}

// NewDecoder returns a decoder of one request body. An empty body decodes
// as io.EOF, which the gateway takes as an empty request, as JSONPb's
// does. A body over its size limit (a gatewayBody's) or one that is not
// the message in JSON is a *bodyError, which a gatewayBody keeps.
func (m *gatewayJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		msg, ok := v.(proto.Message)
		if !ok {
			return m.JSONPb.NewDecoder(r).Decode(v)
		}
		body, err := io.ReadAll(r)
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			err = tooLarge(tooBig.Limit)
		case err != nil:
			return err
		case len(bytes.TrimSpace(body)) == 0:
			return io.EOF
		default:
			if perr := m.UnmarshalOptions.Unmarshal(body, msg); perr != nil {
				err = malformedBody(body, msg.ProtoReflect(), perr)
			}
		}
		if gb, ok := r.(*gatewayBody); ok && err != nil {
			gb.refusal = err
		}
		return err
	})
}

// gatewayBody is a request body of at most limit bytes. It keeps the
// decoder's refusal for the error handler, because grpc-gateway's
// generated handlers pass on only its message.
type gatewayBody struct {
	io.ReadCloser
	refusal error
}

// errorJSON writes error bodies as grpc-gateway's Status JSON,
// {"code": 3, "message": "...", "details": [...]}, with details present
// even when empty so that platforms parse one shape.
type errorJSON struct {
	runtime.Marshaler
}

// Marshal writes a Status without details with an empty details list, and
// anything else as the gateway's marshaler does.
func (m errorJSON) Marshal(v any) ([]byte, error) {
	if st, ok := v.(*spb.Status); ok && len(st.GetDetails()) == 0 {
		return protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}.Marshal(st)
	}
	return m.Marshaler.Marshal(v)
}

// gatewayError is the gateway's error handler: grpc-gateway's, with the
// decoder's own refusal put back, HTTP 413 for what is too large, and
// details always written.
func gatewayError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if gb, ok := r.Body.(*gatewayBody); ok && gb.refusal != nil {
		err = gb.refusal
	}
	if code := httpStatusOf(status.Convert(err)); code != 0 {
		err = &runtime.HTTPStatusError{HTTPStatus: code, Err: err}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, errorJSON{m}, w, r, err)
}
