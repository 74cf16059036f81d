package brokerd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/console"
	"github.com/gradebroker/gradebroker/certs"
)

// ConsoleConfig is the part of Config for the web console. Its keys sit at
// the top level of the YAML file like every other.
type ConsoleConfig struct {
	// ConsoleAddr is where the console listens (HTTPS, TLS 1.3); "" turns
	// it off.
	ConsoleAddr string `yaml:"console_addr"`
	// ConsoleURL is the console's address as browsers reach it, the start
	// of login links; default https://ConsoleAddr.
	ConsoleURL string `yaml:"console_url"`
	// ConsoleCertFile and ConsoleKeyFile are the console's own TLS
	// certificate and key (one a public CA issued, so that course staff
	// need not trust the broker's private CA); default cert_file and
	// key_file.
	ConsoleCertFile string `yaml:"console_cert_file"`
	ConsoleKeyFile  string `yaml:"console_key_file"`
	// ConsoleSessionTTL is how long a console session lasts by default.
	ConsoleSessionTTL time.Duration `yaml:"console_session_ttl"`
	// ConsoleLinkTTL is how long a login link works.
	ConsoleLinkTTL time.Duration `yaml:"console_link_ttl"`
	// ConsoleWriteTimeout bounds writing one page; live update streams
	// move their own deadline forward event by event.
	ConsoleWriteTimeout time.Duration `yaml:"console_write_timeout"`
	// ConsoleSampleEvery is how often the overview's charts sample the
	// queue, and ConsoleLiveEvery how often live pages are updated. They
	// are for tests and cannot be set from a file.
	ConsoleSampleEvery time.Duration `yaml:"-"`
	ConsoleLiveEvery   time.Duration `yaml:"-"`
}

// DefaultConsoleConfig returns the console's defaults: off.
func DefaultConsoleConfig() ConsoleConfig {
	return ConsoleConfig{ConsoleSessionTTL: 12 * time.Hour, ConsoleLinkTTL: 10 * time.Minute, ConsoleWriteTimeout: time.Minute}
}

// Validate names the first bad field.
func (c ConsoleConfig) Validate() error {
	if c.ConsoleAddr == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(c.ConsoleAddr); err != nil {
		return fmt.Errorf("console_addr: %q is not host:port: %w", c.ConsoleAddr, err)
	}
	if c.ConsoleURL != "" {
		if u, err := url.Parse(c.ConsoleURL); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("console_url: %q must be an https:// URL", c.ConsoleURL)
		}
	}
	if (c.ConsoleCertFile == "") != (c.ConsoleKeyFile == "") {
		return errors.New("console_cert_file and console_key_file: set both or neither")
	}
	if c.ConsoleSessionTTL < time.Minute || c.ConsoleSessionTTL > adminapi.MaxConsoleSessionTTL {
		return fmt.Errorf("console_session_ttl: %s is not between 1m and %s", c.ConsoleSessionTTL, adminapi.MaxConsoleSessionTTL)
	}
	if c.ConsoleLinkTTL < 10*time.Second || c.ConsoleLinkTTL > time.Hour {
		return fmt.Errorf("console_link_ttl: %s is not between 10s and 1h", c.ConsoleLinkTTL)
	}
	if c.ConsoleWriteTimeout <= 0 {
		return fmt.Errorf("console_write_timeout: must be positive, got %s", c.ConsoleWriteTimeout)
	}
	return nil
}

// registerConsoleFlags adds the console's flags to fs.
func registerConsoleFlags(fs *flag.FlagSet, c *ConsoleConfig) {
	fs.StringVar(&c.ConsoleAddr, "console-addr", c.ConsoleAddr, "`host:port` of the web console (HTTPS); \"\" turns it off")
	fs.StringVar(&c.ConsoleURL, "console-url", c.ConsoleURL, "the console's `URL` as browsers reach it, for login links (default https://CONSOLE-ADDR)")
	fs.StringVar(&c.ConsoleCertFile, "console-cert-file", c.ConsoleCertFile, "the console's own TLS certificate `file` (default --cert-file)")
	fs.StringVar(&c.ConsoleKeyFile, "console-key-file", c.ConsoleKeyFile, "the console's own TLS key `file` (default --key-file)")
	fs.DurationVar(&c.ConsoleSessionTTL, "console-session-ttl", c.ConsoleSessionTTL, "how long a console session lasts by default")
	fs.DurationVar(&c.ConsoleLinkTTL, "console-link-ttl", c.ConsoleLinkTTL, "how long a console login link works")
	fs.DurationVar(&c.ConsoleWriteTimeout, "console-write-timeout", c.ConsoleWriteTimeout, "how long writing one console page may take")
}

// consoleService is the broker's web console, when it is on.
type consoleService struct {
	con *console.Console
	tls *certs.Source
	lis net.Listener
	srv *http.Server
}

// newConsole lets the admin service queue test jobs and read the firing
// alerts (over the admin API too), and builds the console if it is on.
func (b *Broker) newConsole() error {
	b.admin.SetSubmitter(b.disp)
	b.admin.SetAlerts(b.maintSvc.alerts.Firing)
	c := b.cfg.Console
	if c.ConsoleAddr == "" {
		return nil
	}
	b.console.tls = b.tls
	if c.ConsoleCertFile != "" {
		src, err := certs.NewServerSource(c.ConsoleCertFile, c.ConsoleKeyFile, b.cfg.CAFile, b.log)
		if err != nil {
			return fmt.Errorf("console TLS: %w", err)
		}
		b.console.tls = src
	}
	con, err := console.New(console.Config{Admin: b.admin, Stats: b.disp.Stats, Broker: b.cfg.Name,
		SampleEvery: c.ConsoleSampleEvery, LiveEvery: c.ConsoleLiveEvery, Log: b.log.With("component", "console")})
	if err != nil {
		return err
	}
	b.console.con = con
	return nil
}

// listenConsole opens the console's listener and turns its sessions on.
func (b *Broker) listenConsole() error {
	c := b.cfg.Console
	if b.console.con == nil {
		return nil
	}
	lis, err := net.Listen("tcp", c.ConsoleAddr)
	if err != nil {
		return fmt.Errorf("console_addr: %w", err)
	}
	b.console.lis = lis
	if err := b.started("console listener", func(context.Context) { lis.Close() }); err != nil {
		return err
	}
	u := c.ConsoleURL
	if u == "" {
		u = "https://" + lis.Addr().String()
	}
	if err := b.admin.EnableConsole(adminapi.ConsoleConfig{URL: u, LinkTTL: c.ConsoleLinkTTL, SessionTTL: c.ConsoleSessionTTL}); err != nil {
		return fmt.Errorf("console: %w", err)
	}
	return nil
}

// serveConsole serves the console in the background.
func (b *Broker) serveConsole(ctx context.Context) error {
	if b.console.lis == nil {
		return nil
	}
	if err := b.startServices(ctx, service{"console", b.console.con.Start, b.console.con.Stop}); err != nil {
		return err
	}
	if b.console.tls != b.tls {
		err := b.serve("console certificate reload", func(ctx context.Context) error { b.console.tls.Watch(ctx); return nil }, nil)
		if err != nil {
			return err
		}
	}
	// Live streams run until the console stops: their requests' context
	// ends then, so that Shutdown need not wait for them.
	reqCtx, stopReqs := context.WithCancel(context.Background())
	// Client certificates are optional: an operator's browser may present
	// one to log in with; the broker's CA checks it.
	b.console.srv = &http.Server{
		Handler:           b.console.con.Handler(),
		TLSConfig:         b.console.tls.ServerTLSConfigOptionalClient(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      b.cfg.Console.ConsoleWriteTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	err := b.serve("console server", func(context.Context) error {
		if err := b.console.srv.ServeTLS(b.console.lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("console server: %w", err)
		}
		return nil
	}, func(ctx context.Context) {
		stopReqs()
		if err := b.console.srv.Shutdown(ctx); err != nil {
			b.console.srv.Close()
		}
	})
	if err != nil {
		stopReqs()
		return err
	}
	b.log.Info("console started", "console_addr", b.ConsoleAddr(), "console_url", b.admin.ConsoleURL())
	return nil
}

// ConsoleAddr returns the address the console listens on, once started;
// "" when it is off.
func (b *Broker) ConsoleAddr() string {
	if b.console.lis == nil {
		return ""
	}
	return b.console.lis.Addr().String()
}

// Admin returns the broker's admin service.
func (b *Broker) Admin() *adminapi.Service { return b.admin }

// ConsoleHandler returns the console's HTTP handler, for benchmarks that
// time pages in-process; nil when the console is off.
func (b *Broker) ConsoleHandler() http.Handler {
	if b.console.con == nil {
		return nil
	}
	return b.console.con.Handler()
}
