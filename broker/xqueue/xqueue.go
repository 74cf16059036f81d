// Package xqueue is the XQueue compatibility adapter: Open edX's XQueue
// interface, under /xqueue/ on the broker's HTTPS gateway, for an LMS that
// submits and for xqueue-watcher, which pulls. Like the REST gateway it is
// an edge: a submission becomes a job of the dispatcher (its files the
// job's attachments, its callback beside it in the store), a pull is a
// lease of a pulling session (dispatch's OpenPull, Pull, Report), and a
// result goes back through the one delivery outbox in XQueue's form
// (delivery.XQueueProtocol). There is no queue or store of its own.
//
// It speaks the protocol as the real clients use it (see
// xqueue-graderqueue.md in the reference notes): Django-style session login
// with a cookie, a 302 to /xqueue/login/ for a call without a session,
// HTTP 200 with {"return_code", "content"} for every answer, and the
// contents as XQueue's views build them.
package xqueue

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/password"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/internal/startstop"
)

// Config tunes the adapter. Zero fields take their defaults.
type Config struct {
	// MaxFiles bounds the files of one submission together, in bytes;
	// default 8 MiB; negative allows none.
	MaxFiles int64
	// MaxField bounds one form field (xqueue_header, xqueue_body), in
	// bytes; default 1 MiB, the platform API's jobdata limit.
	MaxField int64
	// SessionTTL is how long a login lasts; default 24 h. Clients log in
	// again when theirs ends (the LMS on "login_required", xqueue-watcher
	// on the 302).
	SessionTTL time.Duration
	// PullIdle is how long a pulling client's session stays open without a
	// request and without a job: while open, its server shows as
	// connected. Default 1 min.
	PullIdle time.Duration
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	switch {
	case c.MaxFiles == 0:
		c.MaxFiles = 8 << 20
	case c.MaxFiles < 0:
		c.MaxFiles = 0
	}
	if c.MaxField <= 0 {
		c.MaxField = 1 << 20
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = 24 * time.Hour
	}
	if c.PullIdle <= 0 {
		c.PullIdle = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Service is the XQueue interface. Make one with New, Start it, and serve
// its Handler under /xqueue/.
type Service struct {
	cfg  Config
	db   *store.DB
	d    *dispatch.Dispatcher
	log  *slog.Logger
	life startstop.Base

	macs      macs // set by Start
	passwords password.Checker
	reg       atomic.Pointer[registry]

	loginMu sync.Mutex
	logins  map[[32]byte]login // by SHA-256 of the session cookie

	pullMu sync.Mutex
	pulls  map[string]*puller // by server name
}

// New returns the adapter over the store and the dispatcher. log may be nil.
func New(cfg Config, db *store.DB, d *dispatch.Dispatcher, log *slog.Logger) *Service {
	cfg.setDefaults()
	if log == nil {
		log = slog.Default()
	}
	return &Service{cfg: cfg, db: db, d: d, log: log.With("component", "xqueue"),
		passwords: password.Checker{Now: cfg.Now}, logins: make(map[[32]byte]login), pulls: make(map[string]*puller)}
}

// Start reads (or makes, the first time) the key of submission keys and
// file links, and starts closing idle pulling sessions and forgetting
// ended logins. It returns once the key is read; the service runs until
// Stop.
func (s *Service) Start(ctx context.Context) error {
	if _, err := s.life.Start(ctx); err != nil {
		return fmt.Errorf("xqueue: %w", err)
	}
	key, err := s.db.Secret(ctx, macKeyName, 32)
	if err != nil {
		s.Stop()
		return fmt.Errorf("xqueue: reading its key: %w", err)
	}
	s.macs = macs{key: key}
	if !s.life.Go(s.sweep) {
		return fmt.Errorf("xqueue: %w during start", startstop.ErrStopped)
	}
	return nil
}

// Stop stops the sweeping and closes every pulling session; their leases
// run on to their deadlines. It is idempotent, and safe before Start.
func (s *Service) Stop() {
	s.life.Stop(nil)
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	for name, p := range s.pulls {
		p.sess.Close(nil)
		delete(s.pulls, name)
	}
}

// Done is closed once the service has stopped.
func (s *Service) Done() <-chan struct{} { return s.life.Done() }

// sweep closes idle pulling sessions and forgets ended logins, every
// quarter of PullIdle.
func (s *Service) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.PullIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		s.closeIdle(now)
		s.loginMu.Lock()
		for k, l := range s.logins {
			if !now.Before(l.expires) {
				delete(s.logins, k)
			}
		}
		s.loginMu.Unlock()
	}
}

// Handler serves the XQueue interface; mount it at /xqueue/.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	routes := []struct {
		path string
		h    http.HandlerFunc
	}{
		{"login/", s.login},
		{"logout/", s.logout},
		{"status/", s.status},
		{"submit/", s.loggedIn(s.submit)},
		{"get_queuelen/", s.loggedIn(s.getQueuelen)},
		{"get_submission/", s.loggedIn(s.getSubmission)},
		{"put_result/", s.loggedIn(s.putResult)},
	}
	for _, r := range routes {
		path := "/xqueue/" + r.path
		mux.Handle(path+"{$}", r.h)
		// Django's APPEND_SLASH: a 301 to the path with its slash (the
		// watcher takes it as "log in again", then calls the right path).
		mux.HandleFunc(path[:len(path)-1], func(w http.ResponseWriter, req *http.Request) {
			u := *req.URL
			u.Path += "/"
			http.Redirect(w, req, u.RequestURI(), http.StatusMovedPermanently)
		})
	}
	mux.HandleFunc("GET /xqueue/files/{token}/{name}", s.file)
	return mux
}

// reply writes XQueue's answer to every call: HTTP 200 and
// {"return_code": 0 on success, 1 on failure, "content": content}
// (compose_reply).
func reply(w http.ResponseWriter, ok bool, content any) {
	code := 1
	if ok {
		code = 0
	}
	b, err := json.Marshal(struct {
		ReturnCode int `json:"return_code"`
		Content    any `json:"content"`
	}{code, content})
	if err != nil {
		b = []byte(`{"return_code": 1, "content": "internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// registry is a snapshot of what requests are checked against: the XQueue
// users and queues, tags, server types and platforms, taken again only when
// the store says one of them changed.
type registry struct {
	version   int64
	users     map[string]broker.XQueueUser
	queues    map[string]broker.XQueueQueue
	tags      map[string]bool
	types     []broker.ServerType
	platforms map[int64]broker.Platform
}

func (s *Service) registry(ctx context.Context) (*registry, error) {
	v := s.db.RegistryVersion()
	if r := s.reg.Load(); r != nil && r.version == v {
		return r, nil
	}
	r := &registry{version: v, users: map[string]broker.XQueueUser{}, queues: map[string]broker.XQueueQueue{},
		tags: map[string]bool{}, platforms: map[int64]broker.Platform{}}
	users, err := s.db.ListXQueueUsers(ctx)
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		r.users[u.Name] = u
	}
	queues, err := s.db.ListXQueueQueues(ctx)
	if err != nil {
		return nil, err
	}
	for _, q := range queues {
		r.queues[q.Name] = q
	}
	tags, err := s.db.ListTags(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range tags {
		r.tags[t.Name] = true
	}
	if r.types, err = s.db.ListServerTypes(ctx); err != nil {
		return nil, err
	}
	platforms, err := s.db.ListPlatforms(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range platforms {
		r.platforms[p.ID] = p
	}
	// A change during the reads makes the version differ next time.
	s.reg.Store(r)
	return r, nil
}

// status answers XQueue's status/, which needs no login.
func (s *Service) status(w http.ResponseWriter, _ *http.Request) {
	reply(w, true, "OK")
}

// internal answers a failure of the broker's own: logged in full, told
// briefly.
func (s *Service) internal(w http.ResponseWriter, r *http.Request, what string, err error) {
	s.log.Error("XQueue request failed", "path", r.URL.Path, "what", what, "err", err)
	reply(w, false, what+" failed on the broker's side; try again")
}
