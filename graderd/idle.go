package graderd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradebroker/gradebroker/wakeupmsg"
)

// Idle semantics. With --idle-exit D graderd ends its connection once it has
// been idle (no running job, no result waiting for the broker's Ack) for D
// while connected:
//
//   - without --wakeup-listen it then exits: Run returns nil and the binary
//     exits 0, so that an autoscaler can stop the machine (the broker wakes
//     it through an HTTP wakeup URL);
//   - with --wakeup-listen it stays running but disconnected, and reconnects
//     as soon as a valid UDP wakeup arrives (the machine may sleep meanwhile;
//     wake-on-LAN brings it back).
//
// Before it disconnects graderd announces Slots 0 and waits idleSettle, so
// that an Assign the broker sent before it read Slots 0 still arrives: graderd
// then runs that job and stays connected.
//
// Without --idle-exit, a valid wakeup only cuts short the wait before the
// next reconnection attempt.

// errIdle ends a session that was idle for Config.IdleExit.
var errIdle = errors.New("graderd was idle")

// idleSettle is the wait between announcing Slots 0 and disconnecting.
const idleSettle = 500 * time.Millisecond

// sleepState is the daemon's idle and wakeup state.
type sleepState struct {
	// idling is set, under Daemon.mu, while an idle graderd announces Slots
	// 0 before it disconnects.
	idling bool
	// settle is idleSettle; tests shorten it.
	settle time.Duration
	// verifier checks wakeups; nil without Config.WakeupListen.
	verifier *wakeupmsg.Verifier
	// wake receives a token for each valid wakeup.
	wake chan struct{}

	// naps counts the waits for a wakeup begun, and retries the waits
	// before a reconnection: the states a wakeup acts on, which tests wait
	// for before they send one.
	naps, retries atomic.Int64

	mu   sync.Mutex
	addr net.Addr
	// lastWarn and quiet rate-limit the warnings about refused wakeups.
	lastWarn time.Time
	quiet    int
}

// initSleep loads the wakeup secret; New calls it.
func (d *Daemon) initSleep() error {
	d.sleep.settle = idleSettle
	d.sleep.wake = make(chan struct{}, 1)
	if d.cfg.WakeupListen == "" {
		return nil
	}
	secret, err := d.cfg.wakeupSecret()
	if err != nil {
		return err
	}
	d.sleep.verifier = wakeupmsg.NewVerifier(secret)
	return nil
}

// wakeupSecret reads the secret from the config or its file.
func (c Config) wakeupSecret() ([]byte, error) {
	if c.WakeupSecret != "" {
		s, err := wakeupmsg.ParseSecret(c.WakeupSecret)
		if err != nil {
			return nil, fmt.Errorf("wakeup_secret: %w", err)
		}
		return s, nil
	}
	b, err := os.ReadFile(c.WakeupSecretFile)
	if err != nil {
		return nil, fmt.Errorf("wakeup_secret_file: %w", err)
	}
	s, err := wakeupmsg.ParseSecret(string(b))
	if err != nil {
		return nil, fmt.Errorf("wakeup_secret_file %s: %w", c.WakeupSecretFile, err)
	}
	return s, nil
}

// validateSleep checks the idle and wakeup settings; Validate calls it.
func (c Config) validateSleep() error {
	if c.IdleExit < 0 {
		return fmt.Errorf("idle_exit: must not be negative, got %v", c.IdleExit)
	}
	hasSecret := c.WakeupSecret != "" || c.WakeupSecretFile != ""
	if c.WakeupListen == "" {
		if hasSecret {
			return errors.New("wakeup_secret: set, but wakeup_listen is not: set wakeup_listen (--wakeup-listen) to receive wakeups")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(c.WakeupListen); err != nil {
		return fmt.Errorf("wakeup_listen: %q is not host:port: %w", c.WakeupListen, err)
	}
	switch {
	case c.WakeupSecret != "" && c.WakeupSecretFile != "":
		return errors.New("wakeup_secret: set both in the config and as a file (wakeup_secret_file); keep one")
	case !hasSecret:
		return errors.New("wakeup_secret: missing; wakeup_listen needs this server's secret (wakeup_secret, or --wakeup-secret-file), as 'broker wakeup-secret --key-file KEY --server NAME' prints it")
	case c.WakeupSecret != "":
		if _, err := wakeupmsg.ParseSecret(c.WakeupSecret); err != nil {
			return fmt.Errorf("wakeup_secret: %w", err)
		}
	}
	return nil
}

// idleLocked reports whether graderd has nothing to do or to report. d.mu
// must be held.
func (d *Daemon) idleLocked() bool {
	return len(d.jobs) == 0 && len(d.unacked) == 0
}

func (d *Daemon) setIdling(v bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sleep.idling != v {
		d.sleep.idling = v
		d.notifyLocked()
	}
}

// idleSession runs one session, ending it when graderd has been idle for
// Config.IdleExit; idle reports that it ended so.
func (d *Daemon) idleSession(ctx context.Context) (welcomed, idle bool, err error) {
	d.setIdling(false)
	if d.cfg.IdleExit <= 0 {
		welcomed, err = d.session(ctx)
		return welcomed, false, err
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		d.watchIdle(sctx, cancel)
	}()
	welcomed, err = d.session(sctx)
	cancel(nil)
	<-watched
	if ctx.Err() == nil && errors.Is(context.Cause(sctx), errIdle) {
		return welcomed, true, nil
	}
	d.setIdling(false)
	return welcomed, false, err
}

// watchIdle cancels the session with errIdle once graderd has been idle for
// Config.IdleExit and stayed idle through the settle time after Slots 0.
func (d *Daemon) watchIdle(ctx context.Context, cancel context.CancelCauseFunc) {
	busy := func() bool { return !d.idleLocked() }
	for {
		if !d.waitFor(ctx, noTimeout, d.idleLocked) {
			return
		}
		if d.waitFor(ctx, d.cfg.IdleExit, busy) {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		d.setIdling(true)
		if d.waitFor(ctx, d.sleep.settle, busy) {
			d.log.Info("a job arrived while graderd was getting ready to disconnect for idleness; staying")
			d.setIdling(false)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		d.log.Info("idle; disconnecting from the broker", "idle_exit", d.cfg.IdleExit)
		cancel(errIdle)
		return
	}
}

// sleepUntilWoken is what graderd does after an idle disconnection. It
// returns true to reconnect now, false to stop (exit on idle, or ctx ended).
func (d *Daemon) sleepUntilWoken(ctx context.Context) bool {
	d.mu.Lock()
	idle := d.idleLocked()
	d.mu.Unlock()
	if !idle {
		// An Assign slipped in as the stream closed: report it.
		d.log.Info("a job arrived as graderd disconnected for idleness; reconnecting")
		return true
	}
	if d.sleep.verifier == nil {
		d.log.Info("idle and no wakeup listener (--wakeup-listen): exiting", "idle_exit", d.cfg.IdleExit)
		return false
	}
	// A wakeup taken while connected must not end this sleep at once.
	select {
	case <-d.sleep.wake:
	default:
	}
	d.log.Info("idle: disconnected, waiting for a wakeup from the broker", "wakeup_listen", d.WakeupAddr())
	d.sleep.naps.Add(1)
	select {
	case <-ctx.Done():
		return false
	case <-d.sleep.wake:
		d.log.Info("woken by the broker; reconnecting")
		return true
	}
}
