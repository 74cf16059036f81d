package executor

import (
	"context"
	"time"
)

// What every executor does while a run goes on, written once: wait for it
// to end, or stop it at its timeout, at a cancel, when its result passes
// its cap or when its Watch sees a limit passed; and the Result of a run it
// stopped.

// Stop is why an executor stopped a run before it ended on its own.
type Stop int

// The reasons to stop a run.
const (
	// NotStopped: the run ended on its own.
	NotStopped Stop = iota
	// StoppedTimeout: the job's timeout passed.
	StoppedTimeout
	// StoppedCancel: the job's context was cancelled (the broker
	// cancelled the job, or graderd is stopping).
	StoppedCancel
	// StoppedOverflow: the result passed Limits.MaxStdout.
	StoppedOverflow
	// StoppedLimit: the run's Watch saw a limit passed.
	StoppedLimit
)

// Supervise waits until ended is closed (the run ended) or the run must be
// stopped: timeout passed (0 or less: none), ctx was cancelled, out
// overflowed, or w saw a limit passed. It returns why it returned and the
// limit that ends the run, if one does. The executor then stops the run:
// at once for StoppedLimit (there is nothing to wait for), else gently
// first (SIGTERM, then SIGKILL after a grace period).
func Supervise(ctx context.Context, ended <-chan struct{}, timeout time.Duration, out *ResultBuffer, w *Watch) (Stop, Limit) {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-ended:
		return NotStopped, LimitNone
	case <-expired:
		return StoppedTimeout, LimitWallTime
	case <-ctx.Done():
		return StoppedCancel, LimitNone
	case <-out.Overflow():
		return StoppedOverflow, LimitOutput
	case l := <-w.Hit():
		return StoppedLimit, l
	}
}

// StoppedResult is the Result of a run stopped for s (not NotStopped):
// TEMPORARY "cancelled" after a cancel, else LimitResult of limit l.
func StoppedResult(s Stop, l Limit, limits Limits, timeout time.Duration) Result {
	if s == StoppedCancel {
		return Temporary(ErrorCancelled)
	}
	return LimitResult(l, limits, timeout, "")
}
