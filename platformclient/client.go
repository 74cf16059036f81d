// Package platformclient is what a platform written in Go imports to use a
// gradebroker broker: a Client that makes request tokens and calls the
// platform API (POST /v1/test, /v1/jobs, /v1/jobs:batch, /v1/solutions,
// /v1/jobs:get, /v1/jobs:cancel), and a CallbackReader that opens the result
// callbacks the broker POSTs to the platform's return_url.
//
// Every request is one token: a compact JWE encrypted to the broker's key
// whose plaintext is a compact JWS signed with the platform's key (RS512,
// kid = the platform's name), carrying the request's fields and the claims
// request, iat, exp, jti and optionally aud. Package token makes and reads
// them; this package adds the claims, speaks HTTP and decodes the answers.
package platformclient

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/gradebroker/gradebroker/broker/token"
)

// DefaultLifetime is how long a request token is valid unless
// Options.Lifetime says otherwise: long enough for a slow network and a
// small clock skew, short enough that a stolen token is soon useless.
const DefaultLifetime = 5 * time.Minute

// MaxLifetime is the longest lifetime Options.Lifetime may ask for: the
// broker's default limit on exp - iat. A longer-lived token would be refused.
const MaxLifetime = token.DefaultMaxLifetime

// defaultHTTPTimeout bounds one call of the default HTTP client. It must be
// above the broker's longest getjob wait (60 s).
const defaultHTTPTimeout = 2 * time.Minute

// maxResponseBytes bounds what is read of a response: a job's result and
// log fit well within it, and a misbehaving server cannot exhaust memory.
const maxResponseBytes = 64 << 20

// claimNames are the payload members the client sets itself. A field of the
// same name would either be overwritten or override a claim, and both hide a
// mistake, so Token refuses it.
var claimNames = map[string]bool{"request": true, "iat": true, "exp": true, "jti": true, "aud": true}

// Options tunes a Client. The zero value is ready to use.
type Options struct {
	// HTTPClient sends the requests. nil means a client with a two-minute
	// timeout that trusts the system's root CAs; give one whose transport
	// trusts the broker's CA when its certificate is not publicly trusted,
	// and that presents the platform's client certificate when the broker
	// requires one.
	HTTPClient *http.Client
	// Lifetime is exp - iat of each token; default DefaultLifetime, at most
	// MaxLifetime.
	Lifetime time.Duration
	// Compress deflates the signed payload before encryption (JWE zip DEF),
	// which makes large batches of similar jobs much smaller.
	Compress bool
	// Audience is the broker's name. When set, every token carries it as
	// aud, and a broker with another name refuses the token.
	Audience string
	// BrokerKeyID is the kid of the broker's key in the JWE header (the
	// broker publishes its kids in GET /v1/keys). Empty sends no kid, and
	// the broker tries each of its keys.
	BrokerKeyID string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Client calls a broker's platform API as one platform. It is safe for
// concurrent use.
type Client struct {
	base      string
	platform  string
	key       *rsa.PrivateKey
	brokerKey *rsa.PublicKey
	brokerKID string
	http      *http.Client
	lifetime  time.Duration
	compress  bool
	audience  string
	now       func() time.Time
}

// New returns a Client for the broker whose REST gateway is at baseURL
// (for example https://broker.example.org:8443), signing as platform with
// key and encrypting to brokerKey, the broker's token public key. It fails
// if baseURL is not an absolute http or https URL, if a name or key is
// missing, or if opts.Lifetime is out of range.
func New(baseURL, platform string, key *rsa.PrivateKey, brokerKey *rsa.PublicKey, opts Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("platformclient: base URL %q: %w", baseURL, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("platformclient: base URL %q must be absolute, like https://broker.example.org:8443", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("platformclient: base URL %q must have no query or fragment", baseURL)
	}
	if platform == "" {
		return nil, errors.New("platformclient: the platform's name is required: it is the kid of every token")
	}
	if key == nil {
		return nil, errors.New("platformclient: the platform's private key is required")
	}
	if brokerKey == nil {
		return nil, errors.New("platformclient: the broker's public key is required (the broker's token_key_file, public half)")
	}
	lifetime := opts.Lifetime
	switch {
	case lifetime == 0:
		lifetime = DefaultLifetime
	case lifetime < time.Second:
		return nil, fmt.Errorf("platformclient: lifetime %s is below one second", lifetime)
	case lifetime > MaxLifetime:
		return nil, fmt.Errorf("platformclient: lifetime %s is above the broker's maximum of %s", lifetime, MaxLifetime)
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: defaultHTTPTimeout}
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Client{
		base:      strings.TrimRight(baseURL, "/"),
		platform:  platform,
		key:       key,
		brokerKey: brokerKey,
		brokerKID: opts.BrokerKeyID,
		http:      hc,
		lifetime:  lifetime,
		compress:  opts.Compress,
		audience:  opts.Audience,
		now:       now,
	}, nil
}

// Platform returns the platform's name, the kid of the client's tokens.
func (c *Client) Platform() string { return c.platform }

// Token returns a token for request carrying fields and the claims request,
// iat, exp, jti (fresh for each token) and aud (if Options.Audience is set).
// fields must not hold those claims. It is what Do sends; on its own it is
// handy for calling the broker from other tools (curl).
func (c *Client) Token(request string, fields map[string]any) (string, error) {
	if request == "" {
		return "", errors.New("platformclient: the request name is required (test, sendjob, getjob, ...)")
	}
	payload := make(map[string]any, len(fields)+5)
	for k, v := range fields {
		if claimNames[k] {
			return "", fmt.Errorf("platformclient: field %q is a claim the client sets itself; leave it out", k)
		}
		payload[k] = v
	}
	iat := c.now().Unix()
	payload["request"] = request
	payload["iat"] = iat
	payload["exp"] = iat + int64(c.lifetime/time.Second)
	payload["jti"] = token.NewJTI()
	if c.audience != "" {
		payload["aud"] = c.audience
	}
	b, err := marshalJSON(payload)
	if err != nil {
		return "", fmt.Errorf("platformclient: encoding the %s payload: %w", request, err)
	}
	tok, err := token.Seal(b, c.platform, c.key, c.brokerKey, c.brokerKID, c.compress)
	if err != nil {
		return "", fmt.Errorf("platformclient: %w", err)
	}
	return tok, nil
}

// marshalJSON encodes v without HTML escaping, so that job data given as
// json.RawMessage reaches the grader as written rather than with <, > and &
// turned into \u escapes.
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Do makes a token for request with fields and POSTs it to path (for
// example "/v1/jobs"), decoding the response into out: with protojson if out
// is a proto.Message, with encoding/json otherwise; out may be nil. A
// response other than 2xx is returned as an *APIError.
func (c *Client) Do(ctx context.Context, path, request string, fields map[string]any, out any) error {
	tok, err := c.Token(request, fields)
	if err != nil {
		return err
	}
	return c.Post(ctx, path, tok, out)
}

// Post sends a token made earlier (by Token, or by another tool) to path as
// {"token": compactToken} and decodes the response as Do does. A token is
// good for one call: the broker refuses a jti it has seen.
func (c *Client) Post(ctx context.Context, path, compactToken string, out any) error {
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("platformclient: path %q must start with /", path)
	}
	body, err := json.Marshal(map[string]string{"token": compactToken})
	if err != nil {
		return fmt.Errorf("platformclient: encoding the request body: %w", err)
	}
	target := c.base + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("platformclient: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("platformclient: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("platformclient: POST %s: reading the response: %w", target, err)
	}
	if len(data) > maxResponseBytes {
		return fmt.Errorf("platformclient: POST %s: the response is larger than %d bytes", target, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return newAPIError(resp.StatusCode, data)
	}
	if err := decodeResponse(data, out); err != nil {
		return fmt.Errorf("platformclient: POST %s: decoding the response: %w", target, err)
	}
	return nil
}

func decodeResponse(data []byte, out any) error {
	switch o := out.(type) {
	case nil:
		return nil
	case proto.Message:
		// Unknown fields are those of a newer broker; an older client should
		// still read what it knows.
		return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, o)
	default:
		return json.Unmarshal(data, out)
	}
}

// APIError is a refusal from the broker: any response other than 2xx.
// Message is the broker's own message, verbatim; it says what was wrong.
type APIError struct {
	// HTTPStatus is the response's status code, for example 400.
	HTTPStatus int
	// Code is the broker's gRPC code, or one derived from HTTPStatus when
	// the response was not the broker's JSON error (a proxy's error page).
	Code codes.Code
	// Message is the broker's message, or the start of the response body.
	Message string
	// Reason names a refusal in one word, for a program to act on: the
	// reason of the google.rpc.ErrorInfo in the response's details, such
	// as EXPIRED, REPLAYED, BAD_SIGNATURE, TOO_LARGE or MALFORMED_BODY
	// (the README lists them). It is "" when the broker gave none.
	Reason string
}

// Error returns "HTTP <status> <code>: <message>", for example
// "HTTP 400 InvalidArgument: unknown tag(s): cobol".
func (e *APIError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.HTTPStatus, e.Code, e.Message)
}

// GRPCStatus returns the error as a gRPC status, so that status.Code(err)
// gives Code.
func (e *APIError) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// maxForeignMessage bounds how much of a body that is not the broker's JSON
// error goes into APIError.Message.
const maxForeignMessage = 512

func newAPIError(httpStatus int, body []byte) *APIError {
	// grpc-gateway writes {"code": 3, "message": "...", "details": []}.
	var e struct {
		Code    *int32 `json:"code"`
		Message string `json:"message"`
		Details []struct {
			Type   string `json:"@type"`
			Reason string `json:"reason"`
			Domain string `json:"domain"`
		} `json:"details"`
	}
	if err := json.Unmarshal(body, &e); err == nil && e.Code != nil {
		ae := &APIError{HTTPStatus: httpStatus, Code: codes.Code(*e.Code), Message: e.Message}
		for _, d := range e.Details {
			if d.Type == "type.googleapis.com/google.rpc.ErrorInfo" && d.Domain == "gradebroker" {
				ae.Reason = d.Reason
			}
		}
		return ae
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > maxForeignMessage {
		msg = msg[:maxForeignMessage] + "..."
	}
	if msg == "" {
		msg = http.StatusText(httpStatus)
	}
	return &APIError{HTTPStatus: httpStatus, Code: codeForHTTP(httpStatus), Message: msg}
}

// codeForHTTP inverts grpc-gateway's mapping of codes to HTTP statuses for
// the statuses it produces.
func codeForHTTP(s int) codes.Code {
	switch s {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusConflict:
		return codes.AlreadyExists
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusNotImplemented:
		return codes.Unimplemented
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case http.StatusInternalServerError:
		return codes.Internal
	}
	return codes.Unknown
}
