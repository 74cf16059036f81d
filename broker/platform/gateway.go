package platform

import (
	"bytes"
	"io"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

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
// does; the body's size is bounded by the handler (http.MaxBytesHandler),
// whose error is passed on.
func (m *gatewayJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		msg, ok := v.(proto.Message)
		if !ok {
			return m.JSONPb.NewDecoder(r).Decode(v)
		}
		body, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return io.EOF
		}
		return m.UnmarshalOptions.Unmarshal(body, msg)
	})
}
