// Package console is the broker's web console for operators and course
// staff: HTML over the admin service (broker/adminapi), which holds every
// rule (who may see and do what, sessions, login links); the console only
// renders and forwards. Pages are html/template, embedded with go:embed,
// with one small script of our own (static/console.js) for live updates,
// the pause toggle and confirmations; no CDN, nothing to build.
//
// The console serves HTTPS only (brokerd gives it a TLS 1.3 listener from
// package certs). Every response forbids framing and inline script, and
// every page is rendered by html/template, which escapes what it shows:
// job data, results, logs and a grader's HTML messages are untrusted text.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/startstop"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// The console's cookies. The __Host- prefix makes the browser insist on
// Secure, Path=/ and no Domain, so no other site or port of the host can
// set them; their names cannot collide with the XQueue routes' sessionid
// and csrftoken.
const (
	sessionCookie = "__Host-gb-console"
	// loginCookie carries the anti-forgery token of the login forms,
	// shown before any session exists (double submit).
	loginCookie = "__Host-gb-console-login"
	// flashCookie carries the outcome of the last form to the page it
	// redirects to.
	flashCookie = "__Host-gb-console-flash"
)

// Config is what a console needs.
type Config struct {
	// Admin is the admin service; every call goes through it.
	Admin *adminapi.Service
	// Stats reads the dispatcher's counters for the charts.
	Stats func() dispatch.Stats
	// Broker is the broker's name, in page titles.
	Broker string
	// SampleEvery is how often the charts' sampler records the queue;
	// default 10 s (an hour is 360 points).
	SampleEvery time.Duration
	// LiveEvery is how often live pages are sent an update; default 1 s.
	LiveEvery time.Duration
	// Log is where errors go; nil discards.
	Log *slog.Logger
}

// Console serves the web console.
type Console struct {
	cfg     Config
	admin   *adminapi.Service
	log     *slog.Logger
	pages   map[string]*template.Template
	static  http.Handler
	sampler *sampler
	mux     *http.ServeMux

	overview liveCache

	life startstop.Base
}

// New returns a console over cfg.Admin. Start runs its sampler.
func New(cfg Config) (*Console, error) {
	if cfg.Admin == nil || cfg.Stats == nil {
		return nil, errors.New("console: the admin service and the dispatcher's stats are required")
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = 10 * time.Second
	}
	if cfg.LiveEvery <= 0 {
		cfg.LiveEvery = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	pages, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, admin: cfg.Admin, log: cfg.Log, pages: pages,
		static: http.StripPrefix("/static/", http.FileServerFS(sub)), sampler: newSampler(time.Hour, cfg.SampleEvery)}
	c.routes()
	return c, nil
}

// Start samples the queue for the charts until Stop. ctx bounds only the
// start (see internal/startstop).
func (c *Console) Start(ctx context.Context) error {
	if _, err := c.life.Start(ctx); err != nil {
		return fmt.Errorf("console: %w", err)
	}
	c.sampler.record(time.Now(), c.cfg.Stats())
	if !c.life.Go(c.sample) {
		return fmt.Errorf("console: %w during start", startstop.ErrStopped)
	}
	return nil
}

func (c *Console) sample(ctx context.Context) {
	t := time.NewTicker(c.cfg.SampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.sampler.record(now, c.cfg.Stats())
		}
	}
}

// Stop stops the sampler. It is idempotent, and safe before Start.
func (c *Console) Stop() { c.life.Stop(nil) }

// Handler returns the console's HTTP handler.
func (c *Console) Handler() http.Handler { return c.mux }

// contentSecurityPolicy allows scripts, styles and connections to the
// console itself only: no inline script, no inline style, no framing, forms
// posted nowhere else.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// secure sets the headers every response carries.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		// A login link's token is in its URL: no other site may see it.
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

// request is one authenticated request: who makes it and with which
// session secret (for the forms' anti-forgery token).
type request struct {
	p      adminapi.Principal
	sess   store.ConsoleSession
	secret string
	ctx    context.Context
}

func (q request) operator() bool { return q.p.Role == adminapi.RoleOperator }

// authed wraps a handler that needs a session. A POST must also come from
// the console's own pages: same origin, and the session's anti-forgery
// token in the form.
func (c *Console) authed(fn func(w http.ResponseWriter, r *http.Request, q request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var secret string
		if ck, err := r.Cookie(sessionCookie); err == nil {
			secret = ck.Value
		}
		p, sess, err := c.admin.ConsoleSession(r.Context(), secret)
		if err != nil {
			if !errors.Is(err, adminapi.ErrNoSession) {
				c.log.ErrorContext(r.Context(), "console session check failed", "err", err)
				c.errorPage(w, r, http.StatusServiceUnavailable, "The console cannot check your session right now; try again.")
				return
			}
			if secret != "" {
				clearCookie(w, sessionCookie)
			}
			c.loggedOut(w, r, http.StatusUnauthorized, err)
			return
		}
		if r.Method == http.MethodPost {
			if err := sameOrigin(r); err != nil {
				c.errorPage(w, r, http.StatusForbidden, err.Error())
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if !adminapi.CheckConsoleCSRF(secret, r.PostFormValue("csrf")) {
				c.errorPage(w, r, http.StatusForbidden, "This form's anti-forgery token is missing or wrong. Reload the page and try again.")
				return
			}
		}
		fn(w, r, request{p: p, sess: sess, secret: secret, ctx: adminapi.WithPrincipal(r.Context(), p)})
	})
}

// maxForm bounds a posted form: the largest is a test job's data (1 MiB)
// or a pasted certificate.
const maxForm = 2 << 20

// sameOrigin refuses a POST that a browser says came from another site.
// The anti-forgery token already stops those; this is a second lock that
// needs no state, and the one that guards the login forms.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("this form was posted from another site (%s); the console accepts its own forms only", site)
	}
	// With Referrer-Policy no-referrer, browsers send "Origin: null" on a
	// form's POST; Sec-Fetch-Site above says where it came from.
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host || u.Scheme != "https" {
			return fmt.Errorf("this form was posted from %s, not from the console", o)
		}
	}
	return nil
}

// failed answers a failed admin call made for a form: refusals of who the
// caller is (no session, a viewer) get their status code and a page;
// anything else goes back to the page as a message.
func (c *Console) failed(w http.ResponseWriter, r *http.Request, back string, err error) {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.PermissionDenied:
		c.errorPage(w, r, http.StatusForbidden, st.Message())
	case codes.Unauthenticated:
		c.errorPage(w, r, http.StatusUnauthorized, st.Message())
	default:
		c.flash(w, "error", st.Message())
		http.Redirect(w, r, back, http.StatusSeeOther)
	}
}

// done answers a successful form: the message goes to the page it
// redirects to.
func (c *Console) done(w http.ResponseWriter, r *http.Request, back, msg string) {
	c.flash(w, "ok", msg)
	http.Redirect(w, r, back, http.StatusSeeOther)
}

func (c *Console) flash(w http.ResponseWriter, kind, msg string) {
	if len(msg) > 1500 {
		msg = msg[:1500] + "…"
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: url.QueryEscape(kind + ":" + msg), Path: "/", MaxAge: 60,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

// takeFlash reads and clears the flash cookie.
func takeFlash(w http.ResponseWriter, r *http.Request) (kind, msg string) {
	ck, err := r.Cookie(flashCookie)
	if err != nil {
		return "", ""
	}
	clearCookie(w, flashCookie)
	v, err := url.QueryUnescape(ck.Value)
	if err != nil {
		return "", ""
	}
	kind, msg, _ = strings.Cut(v, ":")
	if kind != "ok" && kind != "error" {
		return "", ""
	}
	return kind, msg
}

func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode})
}

// errorPage answers with a page that says what went wrong.
func (c *Console) errorPage(w http.ResponseWriter, r *http.Request, code int, msg string) {
	c.render(w, r, code, "error", page{Title: http.StatusText(code), Message: msg})
}

// apiError turns an admin call's error into a page: not found and refused
// get their status, the rest is logged by the service and shown as is.
func (c *Console) apiError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := status.FromError(err)
	code := http.StatusInternalServerError
	switch st.Code() {
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.PermissionDenied:
		code = http.StatusForbidden
	case codes.Unauthenticated:
		code = http.StatusUnauthorized
	case codes.InvalidArgument, codes.FailedPrecondition:
		code = http.StatusBadRequest
	case codes.Unavailable:
		code = http.StatusServiceUnavailable
	}
	c.errorPage(w, r, code, st.Message())
}

// errText is what an admin call's error says to people.
func errText(err error) string {
	st, _ := status.FromError(err)
	return st.Message()
}

// csrfOf is the anti-forgery token of q's session.
func csrfOf(q request) string { return adminapi.ConsoleCSRF(q.secret) }
