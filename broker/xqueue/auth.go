package xqueue

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// This file is XQueue's login as Django does it. POST login/ with username
// and password sets a session cookie; a call without a valid session gets
// a 302 to /xqueue/login/?next=..., which the LMS follows to GET login/,
// whose "login_required" makes it log in and submit again; xqueue-watcher
// does not follow redirects and logs in again on the 302.
//
// The cookies are host-only (no Domain), Secure, and SameSite=Strict, under
// names of their own, apart from the console's __Host- cookies. GET login/
// also sets a csrftoken cookie, as Django does, which xqueue-watcher sends
// back in X-CSRFToken; a request that sends that header must match the
// cookie. The LMS sends neither, and needs none: no browser sends
// SameSite=Strict cookies with another site's request.

// Cookie names.
const (
	sessionCookie = "xqueue_sessionid"
	csrfCookie    = "csrftoken"
)

// login is one logged-in session.
type login struct {
	user string
	// pwHash is the password hash the login was checked against: a new
	// password ends the session.
	pwHash  string
	expires time.Time
}

// loggedIn wraps a handler that needs a session: without one, or with one
// whose user is gone or has a new password, the answer is Django's 302 to
// the login page.
func (s *Service) loggedIn(h func(http.ResponseWriter, *http.Request, broker.XQueueUser)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u, ok := s.sessionUser(w, r)
		if !ok {
			next := url.Values{"next": {r.URL.Path}}
			http.Redirect(w, r, "/xqueue/login/?"+next.Encode(), http.StatusFound)
			return
		}
		if !s.csrfOK(r) {
			http.Error(w, "CSRF token does not match the csrftoken cookie; log in again", http.StatusForbidden)
			return
		}
		h(w, r, u)
	}
}

// sessionUser returns the user of r's session.
func (s *Service) sessionUser(w http.ResponseWriter, r *http.Request) (broker.XQueueUser, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return broker.XQueueUser{}, false
	}
	key := sha256.Sum256([]byte(c.Value))
	s.loginMu.Lock()
	l, ok := s.logins[key]
	s.loginMu.Unlock()
	if !ok || !s.cfg.Now().Before(l.expires) {
		return broker.XQueueUser{}, false
	}
	reg, err := s.registry(r.Context())
	if err != nil {
		s.log.Error("reading XQueue users", "err", err)
		return broker.XQueueUser{}, false
	}
	u, ok := reg.users[l.user]
	if !ok || u.PasswordHash != l.pwHash {
		s.loginMu.Lock()
		delete(s.logins, key)
		s.loginMu.Unlock()
		return broker.XQueueUser{}, false
	}
	return u, true
}

// csrfOK checks a request's X-CSRFToken, if it sends one, against its
// csrftoken cookie.
func (s *Service) csrfOK(r *http.Request) bool {
	h := r.Header.Get("X-CSRFToken")
	if h == "" {
		return true
	}
	c, err := r.Cookie(csrfCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(h), []byte(c.Value)) == 1
}

// login answers login/: GET says "login_required" and sets the CSRF
// cookie; POST checks username and password and starts a session.
func (s *Service) login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		s.setCookie(w, csrfCookie, randomToken(), 365*24*time.Hour, "/")
		reply(w, false, "login_required")
		return
	}
	if !s.csrfOK(r) {
		http.Error(w, "CSRF token does not match the csrftoken cookie; GET /xqueue/login/ for a fresh one", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		reply(w, false, "Insufficient login info")
		return
	}
	name, pw := r.PostForm.Get("username"), r.PostForm.Get("password")
	if name == "" || !r.PostForm.Has("password") {
		reply(w, false, "Insufficient login info")
		return
	}
	reg, err := s.registry(r.Context())
	if err != nil {
		s.internal(w, r, "login", err)
		return
	}
	u, known := reg.users[name]
	ok := false
	if known {
		ok, err = s.passwords.Check(r.Context(), u.PasswordHash, pw)
		switch {
		case err != nil && r.Context().Err() != nil:
			// The client stopped waiting (xqueue-watcher's 1 s timeout on
			// a busy broker); the check runs on, and a yes is remembered
			// for its next try.
			return
		case err != nil:
			s.internal(w, r, "login", err)
			return
		}
	}
	if !ok {
		// The password is never logged, nor whether the name exists.
		s.log.Warn("XQueue login refused", "user", name, "remote", r.RemoteAddr)
		reply(w, false, "Incorrect login credentials")
		return
	}
	tok := randomToken()
	s.loginMu.Lock()
	s.logins[sha256.Sum256([]byte(tok))] = login{user: u.Name, pwHash: u.PasswordHash, expires: s.cfg.Now().Add(s.cfg.SessionTTL)}
	s.loginMu.Unlock()
	s.setCookie(w, sessionCookie, tok, s.cfg.SessionTTL, "/xqueue/")
	// Django rotates the CSRF token at login.
	s.setCookie(w, csrfCookie, randomToken(), 365*24*time.Hour, "/")
	s.log.Info("XQueue login", "user", u.Name, "remote", r.RemoteAddr)
	reply(w, true, "Logged in")
}

// logout answers logout/: the session ends.
func (s *Service) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.loginMu.Lock()
		delete(s.logins, sha256.Sum256([]byte(c.Value)))
		s.loginMu.Unlock()
	}
	s.setCookie(w, sessionCookie, "", -1, "/xqueue/")
	reply(w, true, "Goodbye")
}

// setCookie sets a host-only, Secure, SameSite=Strict cookie; a negative
// ttl deletes it.
func (s *Service) setCookie(w http.ResponseWriter, name, value string, ttl time.Duration, path string) {
	c := &http.Cookie{Name: name, Value: value, Path: path, Secure: true, HttpOnly: name == sessionCookie,
		SameSite: http.SameSiteStrictMode, MaxAge: int(ttl / time.Second)}
	if ttl < 0 {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

// randomToken is 32 random bytes, base64url.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("xqueue: no randomness: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
