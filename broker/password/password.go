// Package password hashes and checks the passwords of the clients that log
// in with one (XQueue users): bcrypt from golang.org/x/crypto, the one home
// of the key derivation. The admin API hashes a password when an operator
// sets it; the XQueue adapter checks logins. Neither ever logs one.
package password

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/gradebroker/gradebroker/broker"
)

// MinLength and MaxLength bound a password, in bytes. bcrypt reads at most
// 72 bytes, and a longer password would be cut without a word.
const (
	MinLength = 8
	MaxLength = 72
)

// Cost is bcrypt's work factor: about 60 ms of one core per check on the
// project's machine, felt by a client only when it logs in.
const Cost = bcrypt.DefaultCost

// Hash returns the bcrypt hash of pw, to store. It fails with
// broker.ErrInvalid for a password shorter than MinLength or longer than
// MaxLength.
func Hash(pw string) (string, error) {
	if len(pw) < MinLength || len(pw) > MaxLength {
		return "", fmt.Errorf("%w: a password must be %d to %d bytes long, not %d", broker.ErrInvalid, MinLength, MaxLength, len(pw))
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), Cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// CheckHash reports whether hash is something Hash returned: a bcrypt hash
// of a cost bcrypt accepts.
func CheckHash(hash string) error {
	if _, err := bcrypt.Cost([]byte(hash)); err != nil {
		return fmt.Errorf("%w: not a bcrypt hash: %v", broker.ErrInvalid, err)
	}
	return nil
}

// Checker checks passwords against stored hashes. A bcrypt check costs
// tens of milliseconds of a core; the Checker runs at most one per core at
// once, and remembers a successful check for Remember, keyed by an HMAC of
// the password under a key of its own made at random, so that a client
// with many threads logging in at once (xqueue-watcher has one session
// per thread, and a 1 s timeout) costs one check. Checks of the same
// password against the same hash share one computation, which runs to its
// end even when every caller stopped waiting: a client that timed out
// finds the answer remembered when it tries again. Its methods are safe for
// concurrent use.
type Checker struct {
	// Remember is how long a successful check is remembered; zero means
	// ten minutes.
	Remember time.Duration
	// MaxPending bounds the checks computing or waiting for a core at
	// once; more are refused with ErrBusy. Zero means 256.
	MaxPending int
	// Now replaces time.Now, for tests.
	Now func() time.Time

	once sync.Once
	key  []byte
	sem  chan struct{}

	mu      sync.Mutex
	seen    map[string]remembered // stored hash → the last password it matched
	pending map[string]*check     // stored hash and HMAC of the password → its computation
}

// ErrBusy is Check's refusal when MaxPending checks are already under way.
var ErrBusy = fmt.Errorf("%w: too many password checks at once; try again", broker.ErrUnavailable)

type remembered struct {
	mac   []byte
	until time.Time
}

// check is one bcrypt computation and its outcome, once done is closed.
type check struct {
	done chan struct{}
	ok   bool
	err  error
}

func (c *Checker) init() {
	c.once.Do(func() {
		c.key = make([]byte, 32)
		if _, err := rand.Read(c.key); err != nil {
			panic("password: no randomness: " + err.Error())
		}
		c.sem = make(chan struct{}, runtime.GOMAXPROCS(0))
		c.seen = make(map[string]remembered)
		c.pending = make(map[string]*check)
		if c.Remember <= 0 {
			c.Remember = 10 * time.Minute
		}
		if c.MaxPending <= 0 {
			c.MaxPending = 256
		}
		if c.Now == nil {
			c.Now = time.Now
		}
	})
}

// Check reports whether pw matches the stored hash. It returns ctx's error
// when ctx ends first (the check goes on, and its answer is remembered if
// it is yes), and ErrBusy when too many checks are under way.
func (c *Checker) Check(ctx context.Context, hash, pw string) (bool, error) {
	c.init()
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(pw))
	mac := m.Sum(nil)
	key := hash + "\x00" + string(mac)
	c.mu.Lock()
	if r, ok := c.seen[hash]; ok && c.Now().Before(r.until) && hmac.Equal(r.mac, mac) {
		c.mu.Unlock()
		return true, nil
	}
	ch := c.pending[key]
	if ch == nil {
		if len(c.pending) >= c.MaxPending {
			c.mu.Unlock()
			return false, ErrBusy
		}
		ch = &check{done: make(chan struct{})}
		c.pending[key] = ch
		go c.compute(key, ch, hash, pw, mac)
	}
	c.mu.Unlock()
	select {
	case <-ch.done:
		return ch.ok, ch.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// compute runs one bcrypt check when a core is free, and records it.
func (c *Checker) compute(key string, ch *check, hash, pw string, mac []byte) {
	c.sem <- struct{}{}
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw))
	<-c.sem
	switch {
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
	case err != nil:
		ch.err = fmt.Errorf("check password: %w", err)
	default:
		ch.ok = true
	}
	now := c.Now()
	c.mu.Lock()
	delete(c.pending, key)
	if ch.ok {
		for h, r := range c.seen {
			if !now.Before(r.until) {
				delete(c.seen, h)
			}
		}
		c.seen[hash] = remembered{mac: mac, until: now.Add(c.Remember)}
	}
	c.mu.Unlock()
	close(ch.done)
}
