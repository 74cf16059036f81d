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
// per thread, and a 1 s timeout) costs one check. Its methods are safe for
// concurrent use.
type Checker struct {
	// Remember is how long a successful check is remembered; zero means
	// ten minutes.
	Remember time.Duration
	// Now replaces time.Now, for tests.
	Now func() time.Time

	once sync.Once
	key  []byte
	sem  chan struct{}

	mu   sync.Mutex
	seen map[string]remembered // stored hash → the last password it matched
}

type remembered struct {
	mac   []byte
	until time.Time
}

func (c *Checker) init() {
	c.once.Do(func() {
		c.key = make([]byte, 32)
		if _, err := rand.Read(c.key); err != nil {
			panic("password: no randomness: " + err.Error())
		}
		c.sem = make(chan struct{}, runtime.GOMAXPROCS(0))
		c.seen = make(map[string]remembered)
		if c.Remember <= 0 {
			c.Remember = 10 * time.Minute
		}
		if c.Now == nil {
			c.Now = time.Now
		}
	})
}

// Check reports whether pw matches the stored hash. It returns ctx's error
// when ctx ends while it waits for a turn.
func (c *Checker) Check(ctx context.Context, hash, pw string) (bool, error) {
	c.init()
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(pw))
	mac := m.Sum(nil)
	now := c.Now()
	c.mu.Lock()
	r, ok := c.seen[hash]
	c.mu.Unlock()
	if ok && now.Before(r.until) && hmac.Equal(r.mac, mac) {
		return true, nil
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw))
	<-c.sem
	switch {
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("check password: %w", err)
	}
	c.mu.Lock()
	for h, r := range c.seen {
		if !now.Before(r.until) {
			delete(c.seen, h)
		}
	}
	c.seen[hash] = remembered{mac: mac, until: now.Add(c.Remember)}
	c.mu.Unlock()
	return true, nil
}
