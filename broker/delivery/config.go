package delivery

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
)

// Defaults for the zero fields of Config.
const (
	// DefaultWindow is how long a delivery is retried: a platform down for
	// a night catches up unattended; after that an operator redelivers
	// what died.
	DefaultWindow = 24 * time.Hour
	// DefaultMinBackoff is the shortest delay between two tries.
	DefaultMinBackoff = time.Second
	// DefaultMaxBackoff is the longest delay between two tries.
	DefaultMaxBackoff = 10 * time.Minute
	// DefaultTimeout bounds one request.
	DefaultTimeout = 10 * time.Second
	// DefaultPerPlatform is how many requests one platform gets at once.
	DefaultPerPlatform = 4
	// DefaultWorkers is how many requests run at once in all.
	DefaultWorkers = 32
	// DefaultPollInterval is how often the outbox is searched.
	DefaultPollInterval = time.Second
	// DefaultTokenLifetime is exp - iat of a callback token: the most
	// platforms accept by default.
	DefaultTokenLifetime = token.DefaultMaxLifetime
)

// compressAbove is the payload size above which Config.Compress takes
// effect: below it, DEFLATE saves less than its own framing costs in
// CPU and in the risk of a platform that cannot inflate.
const compressAbove = 1 << 10

// Config tunes a Worker. Zero fields take the Default values above.
type Config struct {
	// Broker is the broker's name: the kid of the callback's JWS and its
	// iss claim, under which platforms know the broker's signing key.
	// Required.
	Broker string
	// Window is how long, from its creation, a delivery is retried; the
	// first failure after it marks the delivery dead.
	Window time.Duration
	// MinBackoff and MaxBackoff bound the delay between tries; see
	// Backoff for the formula.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one request, from dialling to reading the status.
	Timeout time.Duration
	// PerPlatform is how many requests to one platform may run at once, so
	// that one slow platform cannot hold every worker.
	PerPlatform int
	// Workers is how many requests may run at once in all.
	Workers int
	// PollInterval is how often the database is searched for due retries
	// and for deliveries no Notify announced (those of a previous run).
	PollInterval time.Duration
	// CAFile names a PEM bundle of extra CAs trusted for platforms'
	// servers, on top of the system's roots, for platforms with private
	// CAs. Ignored when HTTPClient is set.
	CAFile string
	// TokenLifetime is exp - iat of a callback token. Platforms reading
	// callbacks with the token package refuse more than
	// token.DefaultMaxLifetime by default, so more is refused here.
	TokenLifetime time.Duration
	// Compress turns on zip DEF for callback payloads over 1 KiB. It is
	// off by default because several JOSE libraries refuse or cap
	// compressed content (see token.Seal); turn it on only when every
	// platform can inflate.
	Compress bool
	// Now returns the current time; nil means time.Now. It stamps tokens
	// and decides when tries are due and when the window is over.
	Now func() time.Time
	// HTTPClient sends the callbacks; nil means a client trusting the
	// system roots and CAFile, with TLS 1.2 or later (platforms' servers
	// are not ours to require 1.3 of) and Timeout. Redirects are never
	// followed: the token must go to the registered return_url only.
	HTTPClient *http.Client
	// Protocols are the platform protocols the worker sends results in
	// beside gradebroker's own, which is built in: each builds the requests
	// of the deliveries of platforms of its protocol.
	Protocols map[broker.Protocol]Protocol
	// OnDelivered, if set, is called with the time from a delivery's
	// creation to its acknowledgement each time a platform acknowledges
	// one, for a latency histogram. It must be quick and safe for
	// concurrent use.
	OnDelivered func(latency time.Duration)
}

func (c *Config) setDefaults() {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.PerPlatform <= 0 {
		c.PerPlatform = DefaultPerPlatform
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.TokenLifetime <= 0 {
		c.TokenLifetime = DefaultTokenLifetime
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate checks a Config with its defaults filled in and names the first
// bad field.
func (c *Config) Validate() error {
	switch {
	case c.Broker == "":
		return errors.New("delivery config: Broker (the broker's name, the kid of callback tokens) is required")
	case c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("delivery config: MaxBackoff %s is less than MinBackoff %s", c.MaxBackoff, c.MinBackoff)
	case c.TokenLifetime > token.DefaultMaxLifetime:
		return fmt.Errorf("delivery config: TokenLifetime %s is longer than the %s platforms accept by default", c.TokenLifetime, token.DefaultMaxLifetime)
	case c.Workers < c.PerPlatform:
		return fmt.Errorf("delivery config: Workers %d is less than PerPlatform %d", c.Workers, c.PerPlatform)
	}
	return nil
}

// newHTTPClient builds the default client of Config.HTTPClient.
func newHTTPClient(c *Config) (*http.Client, error) {
	tlsConfig, err := certs.OutboundTLSConfig(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("delivery config: CAFile: %w", err)
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: c.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   c.Timeout,
		ResponseHeaderTimeout: c.Timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          c.Workers,
		// Enough idle connections for every request a platform may have
		// running, so that steady traffic reuses them.
		MaxIdleConnsPerHost: c.PerPlatform,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: c.Timeout}, nil
}

// noRedirect makes a client return a redirect as the response: following it
// would send the token to a URL nobody registered.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
