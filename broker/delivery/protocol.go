package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
)

// Protocol turns one try of a delivery into the HTTP request that carries
// it to its platform, in the form of the platform's protocol
// (broker.Protocol). The worker picks one per delivery, by its platform's
// protocol, and sends the request with its own client (the configured CAs,
// no redirects, the try's timeout); an answer 2xx acknowledges the
// delivery. Everything else, the limits, backoff, retry window, dead
// letters and redelivery, is the worker's and the same for every protocol.
type Protocol interface {
	// Request builds the request of one try of d, issued at now, bound to
	// ctx, which ends when the try times out. It is called again for each
	// try, with d as the database has it then: a fresh token per try, say.
	// An error made with permanent means that no retry can help, and the
	// delivery is marked dead at once; any other error is retried like a
	// failed request. Neither may quote anything secret: errors are stored
	// as the delivery's last error and logged.
	Request(ctx context.Context, d *store.Delivery, now time.Time) (*http.Request, error)
}

// jweCallback is gradebroker's own protocol: a JSON body {"token": JWE},
// the payload signed with the broker's key and encrypted to the platform's,
// POSTed to the platform's return_url.
type jweCallback struct {
	keys     *token.KeyRing
	broker   string        // Config.Broker
	lifetime time.Duration // Config.TokenLifetime
	compress bool          // Config.Compress
}

// Request builds the callback of d.
func (c *jweCallback) Request(ctx context.Context, d *store.Delivery, now time.Time) (*http.Request, error) {
	if err := checkURL(d.ReturnURL); err != nil {
		return nil, err
	}
	pub, err := token.ParsePublicKeyPEM([]byte(d.PublicKeyPEM))
	if err != nil {
		// Retried, not dead: an operator can fix the key within the window.
		return nil, fmt.Errorf("the platform's registered key is unusable (%w); update the platform's key", err)
	}
	payload, err := buildPayload(d, c.broker, now, c.lifetime)
	if err != nil {
		return nil, err
	}
	compress := c.compress && len(payload) > compressAbove
	tok, err := token.Seal(payload, c.broker, c.keys.Current(), pub, "", compress)
	if err != nil {
		return nil, fmt.Errorf("sealing the callback: %w", err)
	}
	body, err := json.Marshal(struct {
		Token string `json:"token"`
	}{tok})
	if err != nil {
		return nil, fmt.Errorf("encoding the request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.ReturnURL, bytes.NewReader(body))
	if err != nil {
		return nil, permanent("return_url cannot make a request")
	}
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}
