package brokerd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// ServeUsage is the help of `broker serve`.
const ServeUsage = `Usage: broker serve [--config FILE] [flags]

Runs the broker: graderd and operators connect to the gRPC port (TLS 1.3,
client certificates), platforms call the REST gateway (HTTPS + tokens).

Settings come from the defaults, then the YAML config file, then flags.
The config file takes the flag names with '_' for '-', for example:

  name: gradebroker
  database: /var/lib/gradebroker/gradebroker.db
  grpc_addr: ":7443"
  http_addr: ":8443"
  metrics_addr: 127.0.0.1:9090
  ca_file: /etc/gradebroker/ca.crt
  cert_file: /etc/gradebroker/broker.crt
  key_file: /etc/gradebroker/broker.key
  token_key_file: /etc/gradebroker/broker-token.key
  wakeup_key_file: /etc/gradebroker/wakeup.key
  console_addr: ":8444"            # the web console; off unless set
  max_attempts: 3
  default_timeout: 5m
  log_format: json

Flags:
`

// ParseServeFlags builds the config of `broker serve` from args. It returns
// flag.ErrHelp after printing the help for -h.
func ParseServeFlags(args []string, stderr io.Writer) (Config, error) {
	cfg := DefaultConfig()
	// The file goes under the flags, so find it first.
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "config" {
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return cfg, errors.New("flag --config needs a file name")
			}
			val = args[i+1]
		}
		if err := cfg.LoadFile(val); err != nil {
			return cfg, err
		}
	}
	fs := flag.NewFlagSet("broker serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, ServeUsage)
		fs.PrintDefaults()
	}
	fs.String("config", "", "YAML config `file` (flags override it)")
	fs.StringVar(&cfg.Name, "name", cfg.Name, "the broker's `name` (kid of its callback tokens, aud of platforms' tokens)")
	fs.StringVar(&cfg.Database, "database", cfg.Database, "SQLite database `file`, created if missing")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "`host:port` for graderd and operators (gRPC, mTLS)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "`host:port` of the platforms' REST gateway (HTTPS)")
	fs.StringVar(&cfg.CAFile, "ca-file", cfg.CAFile, "CA certificate `file` that issued client certificates")
	fs.StringVar(&cfg.CertFile, "cert-file", cfg.CertFile, "broker TLS certificate `file`")
	fs.StringVar(&cfg.KeyFile, "key-file", cfg.KeyFile, "broker TLS key `file`")
	fs.StringVar(&cfg.TokenKeyFile, "token-key-file", cfg.TokenKeyFile, "broker RSA token key `file` (platforms encrypt to it)")
	fs.StringVar(&cfg.TokenNextKeyFile, "token-next-key-file", cfg.TokenNextKeyFile, "optional next RSA token key `file`, for rotation")
	fs.StringVar(&cfg.WakeupKeyFile, "wakeup-key-file", cfg.WakeupKeyFile, "`file` of the broker's wakeup key (32 random bytes: openssl rand -out FILE 32); without it no server is woken")
	fs.DurationVar(&cfg.WakeupInterval, "wakeup-interval", cfg.WakeupInterval, "how often one server is woken at most, and how long a connected server may be silent before it counts as asleep")
	fs.BoolVar(&cfg.RequirePlatformCerts, "require-platform-certs", cfg.RequirePlatformCerts, "require platforms' client certificates on the gateway")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "`host:port` of the plain-HTTP /metrics, /healthz and /readyz listener; loopback only unless --metrics-allow-remote; \"\" turns it off")
	fs.BoolVar(&cfg.MetricsAllowRemote, "metrics-allow-remote", cfg.MetricsAllowRemote, "allow --metrics-addr on a non-loopback address (plaintext, unauthenticated)")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", cfg.MaxAttempts, "attempts a job gets before it fails")
	fs.DurationVar(&cfg.DefaultTimeout, "default-timeout", cfg.DefaultTimeout, "a job's timeout when the platform names none")
	fs.DurationVar(&cfg.MaxTimeout, "max-timeout", cfg.MaxTimeout, "the largest timeout a job may ask for")
	fs.DurationVar(&cfg.LeaseGrace, "lease-grace", cfg.LeaseGrace, "added to a job's timeout to make its lease deadline")
	fs.DurationVar(&cfg.ReconnectGrace, "reconnect-grace", cfg.ReconnectGrace, "how long a disconnected server's jobs wait for it")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "how often graderd sends heartbeats")
	fs.DurationVar(&cfg.DeliveryWindow, "delivery-window", cfg.DeliveryWindow, "how long a result callback is retried before it is dead")
	fs.DurationVar(&cfg.DeliveryTimeout, "delivery-timeout", cfg.DeliveryTimeout, "timeout of one result callback request")
	fs.IntVar(&cfg.DeliveryPerPlatform, "delivery-per-platform", cfg.DeliveryPerPlatform, "result callbacks running at once per platform")
	fs.StringVar(&cfg.DeliveryCAFile, "delivery-ca-file", cfg.DeliveryCAFile, "extra CA `file` for platforms' return URLs with a private CA")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long a graceful stop may take")
	registerMaintFlags(fs, &cfg.Maint)
	registerConsoleFlags(fs, &cfg.Console)
	registerXQueueFlags(fs, &cfg.XQueue)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (flags only; see broker serve -h)", fs.Arg(0))
	}
	return cfg, cfg.Validate()
}

// NewLogger makes the logger cfg asks for.
func NewLogger(cfg Config, w io.Writer) *slog.Logger {
	if w == nil {
		w = os.Stderr
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
