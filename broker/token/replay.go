package token

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// ReplayGuard remembers which jtis each signer has used.
type ReplayGuard interface {
	// UseJTI records that signer used jti in a token accepted until
	// expires. It returns an error wrapping ErrReplayed if signer already
	// used jti and that record has not expired, and any other error when it
	// cannot tell (Open then refuses the token). Records may be forgotten
	// once expires is past: the token is refused as expired by then.
	UseJTI(ctx context.Context, signer, jti string, expires time.Time) error
}

// MemoryReplayGuard is a ReplayGuard held in memory, for tests and for
// platform clients that read callbacks in a single process. The broker uses
// its database instead, so that a restart does not forget. The zero value is
// ready to use; it is safe for concurrent use.
type MemoryReplayGuard struct {
	// Now returns the current time; nil means time.Now. It must agree with
	// the Opener's clock, or records may expire early.
	Now func() time.Time

	mu        sync.Mutex
	seen      map[replayKey]time.Time
	nextSweep int
}

type replayKey struct{ signer, jti string }

var _ ReplayGuard = (*MemoryReplayGuard)(nil)

// NewMemoryReplayGuard returns an empty MemoryReplayGuard using time.Now.
func NewMemoryReplayGuard() *MemoryReplayGuard { return &MemoryReplayGuard{} }

// UseJTI records jti for signer until expires, or returns an error wrapping
// ErrReplayed if it is already recorded and not expired.
func (g *MemoryReplayGuard) UseJTI(_ context.Context, signer, jti string, expires time.Time) error {
	now := time.Now
	if g.Now != nil {
		now = g.Now
	}
	t := now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen == nil {
		g.seen = make(map[replayKey]time.Time)
	}
	k := replayKey{signer, jti}
	if exp, ok := g.seen[k]; ok && t.Before(exp) {
		return fmt.Errorf("%w: jti %s of %s was seen before", ErrReplayed, quote(jti), quote(signer))
	}
	// Sweep when the map has doubled since the last sweep, so the cost is
	// amortised to O(1) per call and the map stays within twice the number
	// of live records.
	if len(g.seen) >= g.nextSweep {
		for k, exp := range g.seen {
			if !t.Before(exp) {
				delete(g.seen, k)
			}
		}
		g.nextSweep = max(1024, 2*len(g.seen))
	}
	g.seen[k] = expires
	return nil
}
