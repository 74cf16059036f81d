package wakeup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/internal/startstop"
	"github.com/gradebroker/gradebroker/wakeupmsg"
)

// Store records wakeup results; *store.DB implements it.
type Store interface {
	// RecordWakeup adds one to a server's consecutive wakeup failures after
	// a failure and resets them to 0 after a success, and returns the new
	// count. It returns broker.ErrNotFound for an unknown server.
	RecordWakeup(ctx context.Context, server string, ok bool) (int, error)
	// WakeupServers returns the names of the servers that have a wakeup
	// URL, by name.
	WakeupServers(ctx context.Context) ([]string, error)
}

// Config tunes a Waker. The zero value of each field means its default.
type Config struct {
	// Broker is the broker's name, sent in HTTP wakeups.
	Broker string
	// Key is the broker's wakeup key (LoadKey). Without it every wakeup is
	// refused and logged: an unsigned wakeup is what graderqueue sent, and
	// what anyone could forge.
	Key []byte
	// HTTPTimeout bounds one HTTP wakeup; default 5 s.
	HTTPTimeout time.Duration
	// UDPTimeout is how long one UDP try waits for the reply; default 1 s.
	UDPTimeout time.Duration
	// UDPTries is how many datagrams a UDP wakeup sends before it fails;
	// default 2.
	UDPTries int
	// Workers is how many wakeups are sent at once; default 4.
	Workers int
	// Queue bounds the wakeups waiting for a worker; more are dropped (the
	// dispatcher asks again after its interval); default 256.
	Queue int
	// HTTPClient replaces the default client (system roots, no redirects).
	HTTPClient *http.Client
	// OnResult, if set, is called after each wakeup with its result, sent
	// or refused for want of a key; the dispatcher takes it. It must not
	// block.
	OnResult func(server string, ok bool)
	// OnSent, if set, is called after each wakeup actually sent, with its
	// result; metrics take it. It must not block.
	OnSent func(server string, ok bool)
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

// Stats are a Waker's counters, for monitoring.
type Stats struct {
	// Sent counts wakeups sent (each HTTP request or UDP exchange once).
	Sent uint64
	// OK and Failed split Sent by result.
	OK     uint64
	Failed uint64
	// Refused counts wakeups not sent for want of a wakeup key.
	Refused uint64
	// Dropped counts wakeups dropped because the queue was full.
	Dropped uint64
	// Servers holds the counts of each server woken at least once.
	Servers map[string]ServerStats
}

// ServerStats are one server's wakeup counters.
type ServerStats struct {
	OK     uint64
	Failed uint64
}

type request struct {
	server  string
	url     string
	waiting int
}

// Waker sends wakeups from a queue, on its own goroutines, so that whoever
// decides to wake a server (the dispatcher, under its lock) never waits for
// the network.
type Waker struct {
	cfg    Config
	db     Store
	log    *slog.Logger
	client *http.Client
	reqs   chan request

	mu    sync.Mutex
	stats Stats

	life startstop.Base
}

// New makes a Waker. Call Start to send the queued wakeups.
func New(cfg Config, db Store, log *slog.Logger) (*Waker, error) {
	if cfg.Key != nil && len(cfg.Key) != wakeupmsg.KeySize {
		return nil, fmt.Errorf("wakeup key: %d bytes, want %d", len(cfg.Key), wakeupmsg.KeySize)
	}
	if cfg.HTTPTimeout <= 0 {
		cfg.HTTPTimeout = 5 * time.Second
	}
	if cfg.UDPTimeout <= 0 {
		cfg.UDPTimeout = time.Second
	}
	if cfg.UDPTries <= 0 {
		cfg.UDPTries = 2
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 256
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	client := cfg.HTTPClient
	if client == nil {
		tlsConfig, err := certs.OutboundTLSConfig("")
		if err != nil {
			return nil, fmt.Errorf("wakeup: %w", err)
		}
		client = &http.Client{
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: cfg.HTTPTimeout}).DialContext,
				TLSClientConfig:       tlsConfig,
				TLSHandshakeTimeout:   cfg.HTTPTimeout,
				ResponseHeaderTimeout: cfg.HTTPTimeout,
				MaxIdleConns:          cfg.Workers,
				IdleConnTimeout:       30 * time.Second,
			},
			Timeout: cfg.HTTPTimeout,
			// A redirect would send the wakeup to a URL nobody registered.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &Waker{cfg: cfg, db: db, log: log, client: client, reqs: make(chan request, cfg.Queue),
		stats: Stats{Servers: make(map[string]ServerStats)}}, nil
}

// Start says at once when servers have wakeup URLs but the broker has no
// key to sign wakeups with, then starts the workers. ctx bounds only the
// start; the workers run until Stop (see internal/startstop).
func (w *Waker) Start(ctx context.Context) error {
	if _, err := w.life.Start(ctx); err != nil {
		return fmt.Errorf("wakeup: %w", err)
	}
	names, err := w.db.WakeupServers(ctx)
	if err != nil {
		w.Stop()
		return fmt.Errorf("list servers with a wakeup URL: %w", err)
	}
	if w.cfg.Key == nil && len(names) > 0 {
		w.log.Warn("servers have a wakeup URL but the broker has no wakeup key, so they will not be woken; set wakeup_key_file (--wakeup-key-file)",
			"servers", strings.Join(names, ","))
	}
	for range w.cfg.Workers {
		if !w.life.Go(w.work) {
			return fmt.Errorf("wakeup: %w during start", startstop.ErrStopped)
		}
	}
	return nil
}

// work sends queued wakeups until the run ends.
func (w *Waker) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-w.reqs:
			w.send(ctx, r)
		}
	}
}

// Stop stops the workers, abandoning queued wakeups. It is idempotent, and
// safe before Start.
func (w *Waker) Stop() { w.life.Stop(nil) }

// Done is closed once the workers have stopped.
func (w *Waker) Done() <-chan struct{} { return w.life.Done() }

// Wake queues a wakeup of server through wakeupURL; waiting is how many jobs
// wait for it. It never blocks: when the queue is full the wakeup is dropped.
func (w *Waker) Wake(server, wakeupURL string, waiting int) {
	select {
	case w.reqs <- request{server: server, url: wakeupURL, waiting: waiting}:
	default:
		w.mu.Lock()
		w.stats.Dropped++
		w.mu.Unlock()
		w.log.Warn("wakeup queue full; dropping a wakeup (it is retried after the wakeup interval)", "server", server)
	}
}

// Stats returns the counters.
func (w *Waker) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.stats
	st.Servers = make(map[string]ServerStats, len(w.stats.Servers))
	for k, v := range w.stats.Servers {
		st.Servers[k] = v
	}
	return st
}

// errNoReply is a UDP wakeup that got no answer.
var errNoReply = errors.New("no reply")

func (w *Waker) send(ctx context.Context, r request) {
	u, err := url.Parse(r.url)
	scheme := "?"
	if err == nil {
		scheme = u.Scheme
	}
	if w.cfg.Key == nil {
		w.mu.Lock()
		w.stats.Refused++
		w.mu.Unlock()
		w.log.Error("not waking server: the broker has no wakeup key; set wakeup_key_file (--wakeup-key-file)",
			"server", r.server, "scheme", scheme)
		w.report(r.server, false)
		return
	}
	secret := wakeupmsg.DeriveSecret(w.cfg.Key, r.server)
	start := time.Now()
	switch {
	case err != nil:
		err = fmt.Errorf("wakeup URL is not a URL: %w", err)
	case scheme == "http" || scheme == "https":
		err = w.sendHTTP(ctx, secret, r)
	case scheme == "udp":
		err = w.sendUDP(ctx, secret, r.server, u)
	default:
		err = fmt.Errorf("unsupported wakeup URL scheme %q (use http, https or udp)", scheme)
	}
	ok := err == nil
	fails, derr := w.db.RecordWakeup(context.WithoutCancel(ctx), r.server, ok)
	if derr != nil {
		w.log.Error("cannot record a wakeup result", "server", r.server, "err", derr)
	}
	w.mu.Lock()
	w.stats.Sent++
	ss := w.stats.Servers[r.server]
	if ok {
		w.stats.OK++
		ss.OK++
	} else {
		w.stats.Failed++
		ss.Failed++
	}
	w.stats.Servers[r.server] = ss
	w.mu.Unlock()
	took := time.Since(start).Round(time.Millisecond)
	if ok {
		w.log.Info("woke server", "server", r.server, "scheme", scheme, "result", "ok", "waiting", r.waiting, "took", took)
	} else {
		w.log.Warn("wakeup failed", "server", r.server, "scheme", scheme, "result", "failed", "err", err,
			"wakeup_fails", fails, "waiting", r.waiting, "took", took)
	}
	if w.cfg.OnSent != nil {
		w.cfg.OnSent(r.server, ok)
	}
	w.report(r.server, ok)
}

func (w *Waker) report(server string, ok bool) {
	if w.cfg.OnResult != nil {
		w.cfg.OnResult(server, ok)
	}
}

func (w *Waker) sendHTTP(ctx context.Context, secret []byte, r request) error {
	body, sig := wakeupmsg.NewBody(secret, bodyAt(w.cfg.Broker, r.server, w.cfg.Now(), r.waiting))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "gradebroker-wakeup/1")
	req.Header.Set(wakeupmsg.SignatureHeader, sig)
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL may carry credentials: keep it out of logs
		}
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}

func (w *Waker) sendUDP(ctx context.Context, secret []byte, server string, u *url.URL) error {
	if u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("udp wakeup URL must be udp://host:port")
	}
	var d net.Dialer
	// A connected socket only hears from the address it sent to.
	conn, err := d.DialContext(ctx, "udp", u.Host)
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, 64)
	last := errNoReply
	for range w.cfg.UDPTries {
		// A fresh nonce each try: if the first datagram arrived and only
		// its reply was lost, the second must not be refused as a replay.
		dg := wakeupmsg.NewDatagram(secret, server, w.cfg.Now(), wakeupmsg.NewNonce())
		_ = conn.SetDeadline(time.Now().Add(w.cfg.UDPTimeout))
		if _, err := conn.Write(dg); err != nil {
			last = err
			w.waitOut(ctx)
			continue
		}
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				last = err
				w.waitOut(ctx)
			}
			continue
		}
		switch string(buf[:n]) {
		case wakeupmsg.ReplyOK:
			return nil
		case wakeupmsg.ReplyNo:
			return errors.New("graderd refused the wakeup (does its wakeup secret match 'broker wakeup-secret'? is its clock within 60 s of the broker's?)")
		default:
			last = fmt.Errorf("unexpected reply %q", buf[:n])
		}
	}
	if last != errNoReply {
		return fmt.Errorf("%w within %s after %d tries (last error: %v)", errNoReply, w.cfg.UDPTimeout, w.cfg.UDPTries, last)
	}
	return fmt.Errorf("%w within %s after %d tries", errNoReply, w.cfg.UDPTimeout, w.cfg.UDPTries)
}

// waitOut lets a try that failed at once (say, an ICMP port unreachable)
// still take its timeout, so that a server still booting gets the time the
// tries promise.
func (w *Waker) waitOut(ctx context.Context) {
	t := time.NewTimer(w.cfg.UDPTimeout)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
