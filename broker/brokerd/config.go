package brokerd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is everything `broker serve` needs. DefaultConfig gives the
// defaults; a YAML file (LoadFile) and flags fill in the rest; Validate
// checks the result and names the bad field.
type Config struct {
	// Name is the broker's name: the kid of its callback tokens and the aud
	// platforms may put in theirs.
	Name string `yaml:"name"`
	// Database is the SQLite file; it is created and migrated at start.
	Database string `yaml:"database"`
	// GRPCAddr is where graderd and operators connect (TLS 1.3, client
	// certificates required).
	GRPCAddr string `yaml:"grpc_addr"`
	// HTTPAddr is the platforms' REST gateway (HTTPS).
	HTTPAddr string `yaml:"http_addr"`
	// CAFile is the CA that issued every client certificate.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the broker's TLS certificate and key.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// TokenKeyFile is the broker's RSA private key for tokens: platforms
	// encrypt to it and callbacks are signed with it.
	TokenKeyFile string `yaml:"token_key_file"`
	// TokenNextKeyFile is an optional second key, accepted and published
	// ahead of a rotation.
	TokenNextKeyFile string `yaml:"token_next_key_file"`
	// WakeupKeyFile holds the broker's wakeup key: 32 random bytes from
	// which each server's wakeup secret is derived. Without it no server
	// is woken.
	WakeupKeyFile string `yaml:"wakeup_key_file"`
	// WakeupInterval is how often one server is woken at most, and how long
	// a connected server may be silent before it counts as asleep.
	WakeupInterval time.Duration `yaml:"wakeup_interval"`
	// RequirePlatformCerts makes the REST gateway require a client
	// certificate registered to the platform, as well as the token.
	RequirePlatformCerts bool `yaml:"require_platform_certs"`
	// MetricsAddr is the plain-HTTP listener for /metrics, /healthz and
	// /readyz; "" turns it off. It must be a loopback address unless
	// MetricsAllowRemote is set.
	MetricsAddr string `yaml:"metrics_addr"`
	// MetricsAllowRemote allows MetricsAddr on a non-loopback address:
	// the metrics are then plaintext and unauthenticated on the network.
	MetricsAllowRemote bool `yaml:"metrics_allow_remote"`

	// MaxAttempts is how many attempts a job gets before it fails.
	MaxAttempts int `yaml:"max_attempts"`
	// DefaultTimeout is a job's timeout when the platform names none.
	DefaultTimeout time.Duration `yaml:"default_timeout"`
	// MaxTimeout bounds every job's timeout.
	MaxTimeout time.Duration `yaml:"max_timeout"`
	// LeaseGrace is added to a job's timeout to make its lease deadline.
	LeaseGrace time.Duration `yaml:"lease_grace"`
	// ReconnectGrace is how long a disconnected server's jobs wait for it.
	ReconnectGrace time.Duration `yaml:"reconnect_grace"`
	// HeartbeatInterval is how often graderd must send heartbeats.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`

	// DeliveryWindow is how long a result callback is retried before it is
	// marked dead.
	DeliveryWindow time.Duration `yaml:"delivery_window"`
	// DeliveryTimeout bounds one callback request.
	DeliveryTimeout time.Duration `yaml:"delivery_timeout"`
	// DeliveryPerPlatform is how many callbacks run at once per platform.
	DeliveryPerPlatform int `yaml:"delivery_per_platform"`
	// DeliveryCAFile is an extra CA bundle for platforms whose return URLs
	// use a private CA.
	DeliveryCAFile string `yaml:"delivery_ca_file"`

	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// ShutdownTimeout bounds a graceful stop.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`

	// Maint is retention and alerting (maint.go).
	Maint MaintConfig `yaml:",inline"`
	// Console is the web console (console.go).
	Console ConsoleConfig `yaml:",inline"`
	// XQueue is the XQueue interface (xqueue.go).
	XQueue XQueueConfig `yaml:",inline"`

	// OnCommit, if set, is called after each group commit of the
	// dispatcher, beside the metrics, with its number of changes and how
	// long it took (dispatch.Config.OnCommit). It is for benchmarks and
	// cannot be set from a file.
	OnCommit func(ops int, took time.Duration) `yaml:"-"`
}

// DefaultConfig returns the defaults: files under ./dev as `make dev-pki`
// writes them, the gRPC port 7443 and the gateway 8443 on every interface.
func DefaultConfig() Config {
	return Config{
		Name:                "gradebroker",
		Database:            "gradebroker.db",
		GRPCAddr:            ":7443",
		HTTPAddr:            ":8443",
		MetricsAddr:         "127.0.0.1:9090",
		CAFile:              "dev/ca.crt",
		CertFile:            "dev/broker.crt",
		KeyFile:             "dev/broker.key",
		TokenKeyFile:        "dev/broker-token.key",
		MaxAttempts:         3,
		DefaultTimeout:      300 * time.Second,
		MaxTimeout:          time.Hour,
		LeaseGrace:          30 * time.Second,
		ReconnectGrace:      30 * time.Second,
		HeartbeatInterval:   10 * time.Second,
		WakeupInterval:      60 * time.Second,
		DeliveryWindow:      24 * time.Hour,
		DeliveryTimeout:     10 * time.Second,
		DeliveryPerPlatform: 4,
		LogLevel:            "info",
		LogFormat:           "text",
		ShutdownTimeout:     10 * time.Second,
		Maint:               DefaultMaintConfig(),
		Console:             DefaultConsoleConfig(),
		XQueue:              DefaultXQueueConfig(),
	}
}

// LoadFile reads a YAML config file over c. Unknown keys are errors, so that
// a typo does not silently leave a default in place.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// Validate checks every field and names the first bad one.
func (c Config) Validate() error {
	if c.Name == "" {
		return errors.New("name: must not be empty")
	}
	if c.Database == "" {
		return errors.New("database: must name a file")
	}
	for _, a := range []struct{ field, v string }{{"grpc_addr", c.GRPCAddr}, {"http_addr", c.HTTPAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("%s: %q is not host:port: %w", a.field, a.v, err)
		}
	}
	if err := validateMetricsAddr(c.MetricsAddr, c.MetricsAllowRemote); err != nil {
		return err
	}
	for _, f := range []struct{ field, v string }{{"ca_file", c.CAFile}, {"cert_file", c.CertFile}, {"key_file", c.KeyFile}, {"token_key_file", c.TokenKeyFile}} {
		if f.v == "" {
			return fmt.Errorf("%s: must name a file (make one with scripts/gb-dev-pki.sh or scripts/gb-ca.sh)", f.field)
		}
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 100 {
		return fmt.Errorf("max_attempts: %d is not between 1 and 100", c.MaxAttempts)
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"default_timeout", c.DefaultTimeout}, {"max_timeout", c.MaxTimeout}, {"lease_grace", c.LeaseGrace},
		{"reconnect_grace", c.ReconnectGrace}, {"heartbeat_interval", c.HeartbeatInterval}, {"shutdown_timeout", c.ShutdownTimeout},
		{"delivery_window", c.DeliveryWindow}, {"delivery_timeout", c.DeliveryTimeout}, {"wakeup_interval", c.WakeupInterval}} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be positive, got %s", d.field, d.v)
		}
	}
	if c.DefaultTimeout > c.MaxTimeout {
		return fmt.Errorf("default_timeout: %s is above max_timeout %s", c.DefaultTimeout, c.MaxTimeout)
	}
	if c.DeliveryPerPlatform < 1 || c.DeliveryPerPlatform > 32 {
		return fmt.Errorf("delivery_per_platform: %d is not between 1 and 32", c.DeliveryPerPlatform)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log_format: %q is not text or json", c.LogFormat)
	}
	if err := c.XQueue.Validate(); err != nil {
		return err
	}
	if err := c.Console.Validate(); err != nil {
		return err
	}
	return c.Maint.Validate()
}
