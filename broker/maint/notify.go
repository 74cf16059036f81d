package maint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"net/smtp"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/certs"
)

// Alert is one message to the operator. As JSON it is the webhook's body:
// {"alert": kind, "severity", "summary", "details", "at"}.
type Alert struct {
	// Kind is what happened: one of the Kind constants.
	Kind string `json:"alert"`
	// Severity is "warning" or "critical".
	Severity string `json:"severity"`
	// Summary is one line for people.
	Summary string `json:"summary"`
	// Details are the numbers behind the summary.
	Details map[string]any `json:"details"`
	// At is when the alert was raised.
	At time.Time `json:"at"`
	// Subject is what the alert is about (a server, a set of server types),
	// or "" for the whole broker; alerts are rate-limited per kind and
	// subject.
	Subject string `json:"-"`
}

// Notifier sends alerts somewhere.
type Notifier interface {
	// Name says where, for the log, without secrets.
	Name() string
	// Notify sends one alert, or says why it could not.
	Notify(ctx context.Context, a Alert) error
}

// Webhook POSTs alerts as JSON to a URL.
type Webhook struct {
	url    string
	name   string
	client *http.Client
}

var _ Notifier = (*Webhook)(nil)

// NewWebhook returns a notifier that POSTs to rawURL (http or https; a
// https server is checked against the system's roots). Each POST gives up
// after timeout (default 10 s).
func NewWebhook(rawURL string, timeout time.Duration) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("alert webhook URL must be an absolute http:// or https:// URL")
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	tlsCfg, err := certs.OutboundTLSConfig("")
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	// The URL may carry a secret (many chat webhooks do): the log shows the
	// host only.
	return &Webhook{url: rawURL, name: "webhook " + u.Host, client: &http.Client{Transport: tr, Timeout: timeout}}, nil
}

// Name returns "webhook HOST".
func (w *Webhook) Name() string { return w.name }

// Notify POSTs the alert; any 2xx answer accepts it.
func (w *Webhook) Notify(ctx context.Context, a Alert) error {
	body, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode alert: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "gradebroker-alerts")
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// url.Error repeats the URL, secret and all.
			err = ue.Err
		}
		return fmt.Errorf("POST to %s: %w", w.name, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s: %s", w.name, resp.Status, strings.TrimSpace(string(snippet)))
	}
	return nil
}

// SMTPConfig is where and how alert mails go.
type SMTPConfig struct {
	// Addr is the mail server, host:port (usually port 587 or 25).
	Addr string
	// From is the sender's address; To the recipients'.
	From string
	To   []string
	// User and Password authenticate (AUTH PLAIN), when User is set. The
	// password is sent only over STARTTLS (or to localhost).
	User     string
	Password string
	// Hello is the name given in EHLO; default the host name.
	Hello string
	// Timeout bounds one mail, from connecting to QUIT; default 30 s.
	Timeout time.Duration
}

// Check names the first field that is wrong.
func (c SMTPConfig) Check() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("alert_smtp_addr: %q is not host:port", c.Addr)
	}
	if _, err := mail.ParseAddress(c.From); err != nil {
		return fmt.Errorf("alert_smtp_from: %q is not a mail address: %v", c.From, err)
	}
	if len(c.To) == 0 {
		return errors.New("alert_smtp_to: name at least one recipient")
	}
	for _, to := range c.To {
		if _, err := mail.ParseAddress(to); err != nil {
			return fmt.Errorf("alert_smtp_to: %q is not a mail address: %v", to, err)
		}
	}
	return nil
}

// SMTP mails alerts with net/smtp.
type SMTP struct {
	cfg SMTPConfig
}

var _ Notifier = (*SMTP)(nil)

// NewSMTP returns a notifier that mails alerts as cfg says.
func NewSMTP(cfg SMTPConfig) (*SMTP, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Hello == "" {
		cfg.Hello, _ = os.Hostname()
		if cfg.Hello == "" {
			cfg.Hello = "localhost"
		}
	}
	return &SMTP{cfg: cfg}, nil
}

// Name returns "email via HOST:PORT".
func (s *SMTP) Name() string { return "email via " + s.cfg.Addr }

// Notify mails the alert to every recipient: STARTTLS when the server offers
// it, then AUTH when a user is set.
func (s *SMTP) Notify(ctx context.Context, a Alert) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	host, _, _ := net.SplitHostPort(s.cfg.Addr)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("connect to mail server %s: %w", s.cfg.Addr, err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("mail server %s: %w", s.cfg.Addr, err)
	}
	defer c.Close()
	if err := c.Hello(s.cfg.Hello); err != nil {
		return fmt.Errorf("mail server %s: EHLO: %w", s.cfg.Addr, err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		tlsCfg, err := certs.OutboundTLSConfig("")
		if err != nil {
			return err
		}
		tlsCfg.ServerName = host
		if err := c.StartTLS(tlsCfg); err != nil {
			return fmt.Errorf("mail server %s: STARTTLS: %w", s.cfg.Addr, err)
		}
	}
	if s.cfg.User != "" {
		if ok, _ := c.Extension("AUTH"); !ok {
			return fmt.Errorf("mail server %s offers no AUTH, but alert_smtp_user is set", s.cfg.Addr)
		}
		// PlainAuth refuses to send the password unencrypted, except to
		// localhost.
		if err := c.Auth(smtp.PlainAuth("", s.cfg.User, s.cfg.Password, host)); err != nil {
			return fmt.Errorf("mail server %s: AUTH as %s: %w", s.cfg.Addr, s.cfg.User, err)
		}
	}
	from, _ := mail.ParseAddress(s.cfg.From)
	if err := c.Mail(from.Address); err != nil {
		return fmt.Errorf("mail server %s: MAIL FROM: %w", s.cfg.Addr, err)
	}
	for _, to := range s.cfg.To {
		addr, _ := mail.ParseAddress(to)
		if err := c.Rcpt(addr.Address); err != nil {
			return fmt.Errorf("mail server %s: RCPT TO %s: %w", s.cfg.Addr, addr.Address, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("mail server %s: DATA: %w", s.cfg.Addr, err)
	}
	if _, err := w.Write(s.message(a)); err != nil {
		return fmt.Errorf("mail server %s: sending the message: %w", s.cfg.Addr, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("mail server %s: message refused: %w", s.cfg.Addr, err)
	}
	return c.Quit()
}

// headerValue keeps a value on one header line.
func headerValue(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// message renders the alert as a plain-text mail.
func (s *SMTP) message(a Alert) []byte {
	var b bytes.Buffer
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, headerValue(v)) }
	h("From", s.cfg.From)
	h("To", strings.Join(s.cfg.To, ", "))
	h("Subject", fmt.Sprintf("[gradebroker %s] %s", a.Severity, a.Summary))
	h("Date", a.At.Format(time.RFC1123Z))
	h("Message-ID", fmt.Sprintf("<%s.%d@gradebroker>", a.Kind, a.At.UnixNano()))
	h("MIME-Version", "1.0")
	h("Content-Type", "text/plain; charset=utf-8")
	h("Content-Transfer-Encoding", "8bit")
	h("X-Gradebroker-Alert", a.Kind)
	b.WriteString("\r\n")
	lines := []string{a.Summary, "", "alert:    " + a.Kind, "severity: " + a.Severity, "at:       " + a.At.UTC().Format(time.RFC3339)}
	if len(a.Details) > 0 {
		lines = append(lines, "", "details:")
		keys := make([]string, 0, len(a.Details))
		for k := range a.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v, err := json.Marshal(a.Details[k])
			if err != nil {
				v = []byte(fmt.Sprint(a.Details[k]))
			}
			lines = append(lines, "  "+k+": "+string(v))
		}
	}
	for _, l := range lines {
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(l, "\r", ""), "\n", "\r\n"))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}
