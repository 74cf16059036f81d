//go:build unix

package certs_test

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/certs"
)

// TestWatchSIGHUP is not parallel: it signals the whole test process, and
// although every Watch running catches SIGHUP, keeping it alone keeps the
// reasoning simple.
func TestWatchSIGHUP(t *testing.T) {
	in := install(t)
	// No fsnotify and no poll within the test: only the signal can reload.
	startWatch(t, in.src, time.Hour, true)

	next := in.p.ca.Broker(t)
	replace(t, in.certFile, next.CertFile)
	replace(t, in.keyFile, next.KeyFile)
	// Nothing reloads the files for a while without the signal: the wait
	// is what is checked, an absence, and the proof that what follows is
	// the signal's doing.
	time.Sleep(100 * time.Millisecond)
	if in.src.Identity().Fingerprint == certs.IdentityOf(next.Cert).Fingerprint {
		t.Fatal("reloaded without a signal; the test would prove nothing")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	in.waitServed(t, certs.IdentityOf(next.Cert).Fingerprint)
	if in.log.count("reason=SIGHUP") != 1 {
		t.Errorf("SIGHUP reload not logged; log:\n%s", in.log.String())
	}
}
