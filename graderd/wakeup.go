package graderd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/gradebroker/gradebroker/wakeupmsg"
)

// WakeupAddr returns the address graderd listens on for wakeups, once Run
// has opened it; nil before, or without Config.WakeupListen.
func (d *Daemon) WakeupAddr() net.Addr {
	d.sleep.mu.Lock()
	defer d.sleep.mu.Unlock()
	return d.sleep.addr
}

// listenWakeups opens the wakeup port, when configured, and serves it until
// ctx ends.
func (d *Daemon) listenWakeups(ctx context.Context) error {
	if d.sleep.verifier == nil {
		return nil
	}
	pc, err := net.ListenPacket("udp", d.cfg.WakeupListen)
	if err != nil {
		return fmt.Errorf("wakeup_listen: %w", err)
	}
	d.sleep.mu.Lock()
	d.sleep.addr = pc.LocalAddr()
	d.sleep.mu.Unlock()
	d.log.Info("listening for wakeups from the broker", "wakeup_listen", pc.LocalAddr().String())
	context.AfterFunc(ctx, func() { pc.Close() })
	go d.serveWakeups(pc)
	return nil
}

// serveWakeups answers every datagram: "ok" to a valid wakeup, which also
// wakes the connect loop, and "no" to anything else (forged, stale,
// replayed or malformed), which is logged and otherwise ignored.
func (d *Daemon) serveWakeups(pc net.PacketConn) {
	buf := make([]byte, wakeupmsg.MaxDatagram+1)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("reading the wakeup port failed", "error", err)
			time.Sleep(100 * time.Millisecond) // no busy loop on a persistent error
			continue
		}
		dg, err := d.sleep.verifier.Check(buf[:n], time.Now())
		reply := wakeupmsg.ReplyOK
		if err != nil {
			reply = wakeupmsg.ReplyNo
			d.warnRefused(from, dg.Server, err)
		} else {
			d.log.Info("wakeup accepted", "from", from.String(), "server", dg.Server, "sent", dg.Time.UTC().Format(time.RFC3339))
			select {
			case d.sleep.wake <- struct{}{}:
			default:
			}
		}
		// The reply is smaller than any wakeup, so a forged source address
		// gains an attacker no amplification.
		_, _ = pc.WriteTo([]byte(reply), from)
	}
}

// warnRefused logs a refused wakeup, at most once a second, so that a flood
// of forgeries cannot flood the log.
func (d *Daemon) warnRefused(from net.Addr, server string, err error) {
	now := time.Now()
	d.sleep.mu.Lock()
	if now.Sub(d.sleep.lastWarn) < time.Second {
		d.sleep.quiet++
		d.sleep.mu.Unlock()
		return
	}
	quiet := d.sleep.quiet
	d.sleep.lastWarn, d.sleep.quiet = now, 0
	d.sleep.mu.Unlock()
	attrs := []any{"from", from.String(), "reason", err.Error()}
	if server != "" {
		attrs = append(attrs, "server", server)
	}
	if quiet > 0 {
		attrs = append(attrs, "not_logged_since_last", quiet)
	}
	d.log.Warn("ignored a wakeup", attrs...)
}
