package wakeupmsg

import (
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// SignatureHeader carries the signature of an HTTP wakeup:
// "sha256=" + hex(HMAC-SHA256(secret, body)), where secret is the server's
// (DeriveSecret) and body the exact bytes of the request body.
//
// HMAC with the per-server secret rather than a JWS with the broker's token
// key: it is the same secret and the same primitive as the UDP wakeup, so an
// operator hands out one value per server whatever the scheme; a receiver
// (a shell-sized autoscaler hook or wake-on-LAN relay) checks it with any
// standard library and no JOSE code or key fetching; and a receiver's secret
// is good for one server only, so a leaked relay config cannot be used to
// wake, or pass for, any other.
const SignatureHeader = "X-Gradebroker-Signature"

// Body is the JSON body of an HTTP wakeup. A receiver should check the
// signature, that Server is the one it serves, that TS is recent and, if it
// cares about replays, that Nonce is new.
type Body struct {
	// Server is the server's registered name.
	Server string `json:"server"`
	// Broker is the broker's name.
	Broker string `json:"broker"`
	// TS is the Unix time in seconds when the wakeup was made.
	TS int64 `json:"ts"`
	// Nonce is 16 random bytes in hex, new for each request.
	Nonce string `json:"nonce"`
	// Waiting is how many jobs wait for servers of this server's kind.
	Waiting int `json:"waiting"`
}

// NewBody returns the body of an HTTP wakeup and its SignatureHeader value.
func NewBody(secret []byte, b Body) (body []byte, signature string) {
	body, _ = json.Marshal(b) // only strings and integers: cannot fail
	return body, Sign(secret, body)
}

// Sign returns the SignatureHeader value of body.
func Sign(secret, body []byte) string {
	return "sha256=" + hex.EncodeToString(mac(secret, body))
}

// CheckSignature reports whether header is a valid SignatureHeader value for
// body under secret.
func CheckSignature(secret, body []byte, header string) bool {
	h, ok := strings.CutPrefix(strings.TrimSpace(header), "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(h)
	if err != nil {
		return false
	}
	return hmac.Equal(got, mac(secret, body))
}
