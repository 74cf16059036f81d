package console

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"net/http"
	"time"

	"github.com/gradebroker/gradebroker/certs"
)

// Logging in. A login link (broker admin console-login) opens GET /login,
// which only shows a button: link scanners and chat previews fetch links
// too, and must not use it up. The button POSTs the token; that POST opens
// the session and sets its cookie. An operator whose browser holds their
// client certificate may instead log in with it.

// loginPage is the login template's data.
type loginPage struct {
	Token string
	// Cert names the client certificate the browser presented, if any.
	Cert string
	// Reason says why the visitor has no session, if they had one.
	Reason string
}

// loginCSRF returns the login forms' anti-forgery token, setting its
// cookie when the browser has none: a random value the form must repeat
// (double submit), since no session exists yet to derive one from.
func loginCSRF(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(loginCookie); err == nil && len(ck.Value) >= 20 {
		return ck.Value
	}
	v := rand.Text()
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: v, Path: "/", MaxAge: int((30 * time.Minute).Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return v
}

func checkLoginCSRF(r *http.Request) error {
	if err := sameOrigin(r); err != nil {
		return err
	}
	ck, err := r.Cookie(loginCookie)
	if err != nil || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		return errors.New("this login form's anti-forgery token is missing or wrong (are cookies on?); open the login link again")
	}
	return nil
}

// peerCert names the verified client certificate of the request, if any.
func peerCert(r *http.Request) (certs.Identity, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return certs.Identity{}, false
	}
	id, err := certs.PeerIdentity(*r.TLS)
	return id, err == nil
}

// loginForm shows the login page: the link's button, the certificate's, or
// how to get a link.
func (c *Console) loginForm(w http.ResponseWriter, r *http.Request, code int, reason string) {
	lp := loginPage{Token: r.URL.Query().Get("token"), Reason: reason}
	if len(lp.Token) > 4096 {
		lp.Token = ""
	}
	if id, ok := peerCert(r); ok {
		lp.Cert = id.Subject
	}
	c.render(w, r, code, "login", page{Title: "Log in", Broker: c.cfg.Broker, CSRF: loginCSRF(w, r), Data: lp})
}

// loggedOut answers a request without a valid session.
func (c *Console) loggedOut(w http.ResponseWriter, r *http.Request, code int, why error) {
	if r.Method != http.MethodGet || r.URL.Path == "/live" || len(r.URL.Path) > 6 && r.URL.Path[:6] == "/live/" {
		http.Error(w, why.Error(), code)
		return
	}
	c.loginForm(w, r, code, why.Error())
}

func (c *Console) getLogin(w http.ResponseWriter, r *http.Request) {
	c.loginForm(w, r, http.StatusOK, "")
}

// postLogin uses up a login link.
func (c *Console) postLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := checkLoginCSRF(r); err != nil {
		c.errorPage(w, r, http.StatusForbidden, err.Error())
		return
	}
	secret, sess, err := c.admin.StartConsoleSession(r.Context(), r.PostFormValue("token"))
	if err != nil {
		c.log.InfoContext(r.Context(), "console login refused", "err", err)
		c.errorPage(w, r, http.StatusUnauthorized, err.Error())
		return
	}
	c.startSession(w, r, secret, sess.ExpiresAt)
}

// postCertLogin opens an operator's session for the client certificate
// the browser presented.
func (c *Console) postCertLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := checkLoginCSRF(r); err != nil {
		c.errorPage(w, r, http.StatusForbidden, err.Error())
		return
	}
	id, ok := peerCert(r)
	if !ok {
		c.errorPage(w, r, http.StatusUnauthorized, "your browser presented no client certificate issued by the broker's CA")
		return
	}
	secret, sess, err := c.admin.StartCertSession(r.Context(), id)
	if err != nil {
		c.log.InfoContext(r.Context(), "console certificate login refused", "err", err)
		c.errorPage(w, r, http.StatusUnauthorized, err.Error())
		return
	}
	c.startSession(w, r, secret, sess.ExpiresAt)
}

func (c *Console) startSession(w http.ResponseWriter, r *http.Request, secret string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: secret, Path: "/", Expires: expires,
		MaxAge: int(time.Until(expires).Seconds()), Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	clearCookie(w, loginCookie)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (c *Console) postLogout(w http.ResponseWriter, r *http.Request, q request) {
	if err := c.admin.EndConsoleSession(q.ctx); err != nil {
		c.log.WarnContext(r.Context(), "console logout", "err", err)
	}
	clearCookie(w, sessionCookie)
	c.loginForm(w, r, http.StatusOK, "You are logged out.")
}
