package adminapi

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// This file holds the web console's sessions: the login links operators
// ask for, the sessions they open, and the checks every console request
// goes through. The console (broker/console) is HTML over these; it holds
// no rule of its own.

// ConsoleConfig turns the console's sessions on.
type ConsoleConfig struct {
	// URL is the console's address as browsers reach it
	// ("https://console.example.org:8444"); login links start with it.
	URL string
	// LinkTTL is how long a login link works; default 10 minutes.
	LinkTTL time.Duration
	// SessionTTL is how long a session lasts by default; default 12 hours.
	SessionTTL time.Duration
}

// MaxConsoleSessionTTL is the longest session a login link may ask for.
const MaxConsoleSessionTTL = 30 * 24 * time.Hour

// touchEvery is how often a session's last_seen is written: once a minute,
// not on every request, so that an open console costs the writer nothing.
const touchEvery = time.Minute

// consoleState is the console's part of the Service.
type consoleState struct {
	cfg ConsoleConfig
	// key signs login links. It is made at start and never stored: a
	// restart voids the links not yet used (sessions, in the database,
	// live on).
	key []byte
}

// EnableConsole turns the console's sessions on. Without it ConsoleLogin
// says that the console is off.
func (s *Service) EnableConsole(cfg ConsoleConfig) error {
	if cfg.LinkTTL <= 0 {
		cfg.LinkTTL = 10 * time.Minute
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.SessionTTL > MaxConsoleSessionTTL {
		return fmt.Errorf("console session TTL %s is above the maximum of %s", cfg.SessionTTL, MaxConsoleSessionTTL)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("console URL %q must be an https:// URL", cfg.URL)
	}
	cfg.URL = strings.TrimRight(cfg.URL, "/")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	s.console = &consoleState{cfg: cfg, key: key}
	return nil
}

// ConsoleLogin makes a one-time login link. Only an operator over the
// admin API may ask (not a console session: a stolen cookie must not mint
// more sessions). An operator's link opens a session for that operator; a
// viewer's needs a name, and may be scoped to one platform or to tags.
func (s *Service) ConsoleLogin(ctx context.Context, req *gradebrokerv1.ConsoleLoginRequest) (*gradebrokerv1.ConsoleLoginResponse, error) {
	p, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if p.Via != ViaAdminAPI {
		return nil, s.fail(ctx, fmt.Errorf("%w: login links are made over the admin API with an operator certificate ('broker admin console-login'), not from a console session", broker.ErrPermissionDenied))
	}
	if s.console == nil {
		return nil, s.fail(ctx, fmt.Errorf("%w: the web console is off; set console_addr in the broker's config", broker.ErrFailedPrecondition))
	}
	l, err := s.loginFor(ctx, p, req)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	tok, err := token.SignConsoleLogin(s.console.key, l)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "console login link made", "operator", p.Name, "for", l.Name, "role", l.Role,
		"platform", l.Platform, "tags", l.Tags, "expires", l.Expires)
	return &gradebrokerv1.ConsoleLoginResponse{
		Url:       s.console.cfg.URL + "/login?token=" + url.QueryEscape(tok),
		ExpiresAt: protoconv.Timestamp(l.Expires),
		Session: ConsoleSessionToProto(store.ConsoleSession{Name: l.Name, Role: l.Role, Platform: l.Platform, Tags: l.Tags,
			Via: "link", CreatedBy: l.CreatedBy}),
	}, nil
}

// loginFor checks a login request and returns the link's claims.
func (s *Service) loginFor(ctx context.Context, p Principal, req *gradebrokerv1.ConsoleLoginRequest) (token.ConsoleLogin, error) {
	now := s.now()
	l := token.ConsoleLogin{JTI: rand.Text(), Expires: now.Add(s.console.cfg.LinkTTL), CreatedBy: p.Name,
		SessionTTL: s.console.cfg.SessionTTL}
	if d := req.GetSessionTtl(); d != nil {
		l.SessionTTL = d.AsDuration()
		if l.SessionTTL < time.Minute || l.SessionTTL > MaxConsoleSessionTTL {
			return l, fmt.Errorf("%w: a session lasts between a minute and %s, not %s", broker.ErrInvalid, MaxConsoleSessionTTL, l.SessionTTL)
		}
	}
	if !req.GetViewer() {
		if req.GetName() != "" || req.GetPlatform() != "" || len(req.GetTags()) > 0 {
			return l, fmt.Errorf("%w: an operator's session is the operator's own and sees everything; name, platform and tags are for a viewer (--viewer)", broker.ErrInvalid)
		}
		l.Name, l.Role = p.Name, string(RoleOperator)
		return l, nil
	}
	l.Role = string(RoleViewer)
	name, err := checkDisplayName(req.GetName())
	if err != nil {
		return l, err
	}
	l.Name = name
	if req.GetPlatform() != "" && len(req.GetTags()) > 0 {
		return l, fmt.Errorf("%w: scope a viewer to one platform or to tags, not both", broker.ErrInvalid)
	}
	if req.GetPlatform() != "" {
		if _, err := s.db.PlatformByName(ctx, req.GetPlatform()); err != nil {
			return l, err
		}
		l.Platform = req.GetPlatform()
	}
	if len(req.GetTags()) > 0 {
		tags, err := store.NormalizeTags(req.GetTags())
		if err != nil {
			return l, err
		}
		known, err := s.db.ListTags(ctx)
		if err != nil {
			return l, err
		}
		for _, t := range tags {
			if !containsTag(known, t) {
				return l, fmt.Errorf("%w: tag %q is not registered ('broker admin tag list')", broker.ErrInvalid, t)
			}
		}
		l.Tags = tags
	}
	return l, nil
}

func containsTag(tags []broker.Tag, name string) bool {
	for _, t := range tags {
		if t.Name == name {
			return true
		}
	}
	return false
}

// checkDisplayName accepts a person's name for a viewer ("TA Bob"): 1 to 64
// printable characters, trimmed. It is shown in the console (escaped) and
// written into logs, so no control characters.
func checkDisplayName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return "", fmt.Errorf("%w: a viewer needs a name (--name \"TA Bob\"), shown in the console and the session list", broker.ErrInvalid)
	}
	if !utf8.ValidString(name) || utf8.RuneCountInString(name) > 64 || strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return "", fmt.Errorf("%w: a viewer's name is 1 to 64 printable characters", broker.ErrInvalid)
	}
	return name, nil
}

// ErrNoSession means a console request carries no valid session: none, an
// unknown one, an expired or a revoked one. It wraps
// broker.ErrUnauthenticated; its message says what to do.
var ErrNoSession = fmt.Errorf("%w: no console session", broker.ErrUnauthenticated)

// StartConsoleSession uses up a login link and opens the session it
// describes. It returns the session and the secret for the browser's
// cookie. A link that is forged, expired or already used opens nothing.
func (s *Service) StartConsoleSession(ctx context.Context, loginToken string) (secret string, _ store.ConsoleSession, _ error) {
	if s.console == nil {
		return "", store.ConsoleSession{}, fmt.Errorf("%w: the web console is off", broker.ErrFailedPrecondition)
	}
	l, err := token.VerifyConsoleLogin(s.console.key, loginToken, s.now())
	if err != nil {
		return "", store.ConsoleSession{}, fmt.Errorf("%w: this login link does not work: %v; ask an operator for a new one", broker.ErrUnauthenticated, err)
	}
	sess := store.ConsoleSession{Name: l.Name, Role: l.Role, Platform: l.Platform, Tags: l.Tags, Via: "link",
		CreatedBy: l.CreatedBy, ExpiresAt: s.now().Add(l.SessionTTL)}
	return s.openSession(ctx, sess, &store.LoginUse{JTI: l.JTI, Expires: l.Expires})
}

// StartCertSession opens an operator's session for the holder of the
// client certificate id, which the console's TLS listener verified against
// the broker's CA: it must be registered as an operator, as for the admin
// API.
func (s *Service) StartCertSession(ctx context.Context, id certs.Identity) (secret string, _ store.ConsoleSession, _ error) {
	if s.console == nil {
		return "", store.ConsoleSession{}, fmt.Errorf("%w: the web console is off", broker.ErrFailedPrecondition)
	}
	op, err := s.operatorOf(ctx, id, "log in to the console")
	if err != nil {
		return "", store.ConsoleSession{}, err
	}
	sess := store.ConsoleSession{Name: op.Name, Role: string(RoleOperator), Via: "certificate", CreatedBy: op.Name,
		ExpiresAt: s.now().Add(s.console.cfg.SessionTTL)}
	return s.openSession(ctx, sess, nil)
}

func (s *Service) openSession(ctx context.Context, sess store.ConsoleSession, login *store.LoginUse) (string, store.ConsoleSession, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", store.ConsoleSession{}, err
	}
	secret := base64.RawURLEncoding.EncodeToString(raw)
	sess, err := s.db.CreateConsoleSession(ctx, sess, secretHash(secret), login)
	if err != nil {
		return "", store.ConsoleSession{}, err
	}
	s.log.InfoContext(ctx, "console session opened", "session", sess.ID, "name", sess.Name, "role", sess.Role,
		"via", sess.Via, "created_by", sess.CreatedBy, "expires", sess.ExpiresAt)
	return secret, sess, nil
}

func secretHash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// ConsoleSession checks the secret of a browser's cookie and returns the
// principal to make the request's calls as. It fails with ErrNoSession for
// a secret that opens no live session: unknown, expired, revoked, or an
// operator's session whose operator was removed since.
func (s *Service) ConsoleSession(ctx context.Context, secret string) (Principal, store.ConsoleSession, error) {
	if secret == "" || len(secret) > 100 {
		return Principal{}, store.ConsoleSession{}, fmt.Errorf("%w: log in with a link from 'broker admin console-login'", ErrNoSession)
	}
	sess, err := s.db.ConsoleSessionByHash(ctx, secretHash(secret))
	if errors.Is(err, broker.ErrNotFound) {
		return Principal{}, sess, fmt.Errorf("%w: log in with a link from 'broker admin console-login'", ErrNoSession)
	}
	if err != nil {
		return Principal{}, sess, err
	}
	now := s.now()
	switch {
	case !sess.RevokedAt.IsZero():
		return Principal{}, sess, fmt.Errorf("%w: this session was revoked; ask an operator for a new login link", ErrNoSession)
	case !now.Before(sess.ExpiresAt):
		return Principal{}, sess, fmt.Errorf("%w: this session expired; ask an operator for a new login link", ErrNoSession)
	}
	if sess.Role == string(RoleOperator) {
		ops, err := s.db.ListOperators(ctx)
		if err != nil {
			return Principal{}, sess, err
		}
		found := false
		for _, op := range ops {
			found = found || op.Name == sess.Name
		}
		if !found {
			return Principal{}, sess, fmt.Errorf("%w: operator %s is no longer registered", ErrNoSession, sess.Name)
		}
	}
	if now.Sub(sess.LastSeen) >= touchEvery {
		if err := s.db.TouchConsoleSession(ctx, sess.ID, now); err != nil {
			s.log.WarnContext(ctx, "recording a console session's use", "session", sess.ID, "err", err)
		}
	}
	return Principal{Name: sess.Name, Role: Role(sess.Role), Via: ViaConsole, Platform: sess.Platform, Tags: sess.Tags,
		SessionID: sess.ID}, sess, nil
}

// ConsoleCSRF returns the anti-forgery token that every form of the
// session with this secret carries: an HMAC of the secret, so that it
// needs no storage, survives restarts, and reveals nothing of the secret.
func ConsoleCSRF(secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("gradebroker console csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CheckConsoleCSRF reports whether token is the session's anti-forgery
// token, in constant time.
func CheckConsoleCSRF(secret, token string) bool {
	return secret != "" && hmac.Equal([]byte(ConsoleCSRF(secret)), []byte(token))
}

// ListConsoleSessions lists the sessions that have not expired; operators
// only.
func (s *Service) ListConsoleSessions(ctx context.Context, _ *gradebrokerv1.ListConsoleSessionsRequest) (*gradebrokerv1.ListConsoleSessionsResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	list, err := s.db.ListConsoleSessions(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListConsoleSessionsResponse{}
	for _, c := range list {
		out.Sessions = append(out.Sessions, ConsoleSessionToProto(c))
	}
	return out, nil
}

// RevokeConsoleSession ends a session at once; its next request is
// refused, and its live updates stop.
func (s *Service) RevokeConsoleSession(ctx context.Context, req *gradebrokerv1.RevokeConsoleSessionRequest) (*gradebrokerv1.RevokeConsoleSessionResponse, error) {
	p, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if req.GetId() <= 0 {
		return nil, s.fail(ctx, fmt.Errorf("%w: session id must be a positive number", broker.ErrInvalid))
	}
	c, err := s.db.RevokeConsoleSession(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "console session revoked", "session", c.ID, "name", c.Name, "by", p.Actor())
	return &gradebrokerv1.RevokeConsoleSessionResponse{Session: ConsoleSessionToProto(c)}, nil
}

// ConsoleSessionToProto converts a console session.
func ConsoleSessionToProto(c store.ConsoleSession) *gradebrokerv1.ConsoleSession {
	return &gradebrokerv1.ConsoleSession{Id: c.ID, Name: c.Name, Role: c.Role, Platform: c.Platform, Tags: c.Tags,
		Via: c.Via, CreatedBy: c.CreatedBy, CreatedAt: protoconv.Timestamp(c.CreatedAt), ExpiresAt: protoconv.Timestamp(c.ExpiresAt),
		LastSeen: protoconv.Timestamp(c.LastSeen), RevokedAt: protoconv.Timestamp(c.RevokedAt)}
}

// EndConsoleSession ends the caller's own console session (logging out),
// whatever its role.
func (s *Service) EndConsoleSession(ctx context.Context) error {
	p, err := s.principal(ctx)
	if err != nil {
		return err
	}
	if p.Via != ViaConsole || p.SessionID == 0 {
		return fmt.Errorf("%w: only a console session can log out", broker.ErrFailedPrecondition)
	}
	_, err = s.db.RevokeConsoleSession(ctx, p.SessionID)
	if err == nil {
		s.log.InfoContext(ctx, "console session ended", "session", p.SessionID, "name", p.Name)
	}
	return err
}

// ConsoleURL returns where login links point; "" while the console is off.
func (s *Service) ConsoleURL() string {
	if s.console == nil {
		return ""
	}
	return s.console.cfg.URL
}
