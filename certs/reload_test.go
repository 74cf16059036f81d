package certs_test

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// logBuffer collects a Source's log lines; Watch writes from its own
// goroutine, hence the lock.
type logBuffer struct{ testutil.SyncBuffer }

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

// installed is a broker whose certificate, key and CA live at fixed paths in
// their own directory, as in a deployment, so files can be replaced under it.
type installed struct {
	p        pki
	dir      string
	certFile string
	keyFile  string
	caFile   string
	src      *certs.Source
	log      *logBuffer
}

func install(t *testing.T) installed {
	t.Helper()
	p := setup(t)
	dir := t.TempDir()
	in := installed{
		p:        p,
		dir:      dir,
		certFile: filepath.Join(dir, "broker.crt"),
		keyFile:  filepath.Join(dir, "broker.key"),
		caFile:   filepath.Join(dir, "ca.crt"),
		log:      &logBuffer{},
	}
	replace(t, in.certFile, p.broker.CertFile)
	replace(t, in.keyFile, p.broker.KeyFile)
	replace(t, in.caFile, p.ca.CertFile)
	src, err := certs.NewServerSource(in.certFile, in.keyFile, in.caFile, slog.New(slog.NewTextHandler(in.log, nil)))
	if err != nil {
		t.Fatalf("NewServerSource: %v", err)
	}
	in.src = src
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the Source's log:\n%s", in.log.String())
		}
	})
	return in
}

// replace puts a copy of from at dst by rename, the way a careful deploy
// does, so a reader never sees half a file.
func replace(t *testing.T, dst string, from ...string) {
	t.Helper()
	var b []byte
	for _, f := range from {
		c, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, c...)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// servedFingerprint makes a new connection and returns the fingerprint of
// the certificate the broker presented.
func (in installed) servedFingerprint(t *testing.T) string {
	t.Helper()
	cli, srv := handshake(t, in.src.ServerTLSConfig(), in.p.client.ClientTLSConfig("localhost"))
	if cli.err != nil || srv.err != nil {
		t.Fatalf("handshake: client %v, server %v", cli.err, srv.err)
	}
	return certs.IdentityOf(cli.state.PeerCertificates[0]).Fingerprint
}

// waitServed waits until new connections get the certificate with
// fingerprint want.
func (in installed) waitServed(t *testing.T, want string) {
	t.Helper()
	testutil.Eventually(t, "certificate "+want+" to be loaded", func() bool { return in.src.Identity().Fingerprint == want })
	if got := in.servedFingerprint(t); got != want {
		t.Fatalf("handshake presented %s, want %s", got, want)
	}
}

func TestReload(t *testing.T) {
	t.Parallel()
	in := install(t)
	oldFP := certs.IdentityOf(in.p.broker.Cert).Fingerprint
	if got := in.servedFingerprint(t); got != oldFP {
		t.Fatalf("served %s, want %s", got, oldFP)
	}

	next := in.p.ca.Broker(t)
	nextFP := certs.IdentityOf(next.Cert).Fingerprint
	replace(t, in.certFile, next.CertFile)
	replace(t, in.keyFile, next.KeyFile)
	if err := in.src.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := in.servedFingerprint(t); got != nextFP {
		t.Fatalf("after Reload served %s, want %s", got, nextFP)
	}

	// Each broken state is refused with the file named, and the last good
	// material keeps serving.
	other := in.p.ca.Broker(t)
	tests := []struct {
		name  string
		spoil func()
		msg   string
		is    error
	}{
		{
			name:  "garbage certificate",
			spoil: func() { _ = os.WriteFile(in.certFile, []byte("not a certificate"), 0o644) },
			msg:   "certificate file " + in.certFile + ": no PEM data found",
		},
		{
			name:  "key of another certificate",
			spoil: func() { replace(t, in.keyFile, other.KeyFile) },
			msg:   "key file " + in.keyFile + " does not belong to certificate file " + in.certFile,
		},
		{
			name:  "certificate in the key file",
			spoil: func() { replace(t, in.keyFile, next.CertFile) },
			msg:   "key file " + in.keyFile + ": no PEM private key (found CERTIFICATE)",
		},
		{
			name:  "missing CA file",
			spoil: func() { _ = os.Remove(in.caFile) },
			msg:   "cannot read CA file " + in.caFile + ": no such file or directory",
			is:    fs.ErrNotExist,
		},
		{
			name:  "empty CA file",
			spoil: func() { _ = os.WriteFile(in.caFile, nil, 0o644) },
			msg:   "CA file " + in.caFile + ": no PEM CERTIFICATE block",
		},
	}
	for _, tt := range tests {
		replace(t, in.certFile, next.CertFile)
		replace(t, in.keyFile, next.KeyFile)
		replace(t, in.caFile, in.p.ca.CertFile)
		tt.spoil()
		err := in.src.Reload()
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: Reload = %v, want error containing %q", tt.name, err, tt.msg)
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%s: Reload = %v, want it to wrap %v", tt.name, err, tt.is)
		}
		if got := in.servedFingerprint(t); got != nextFP {
			t.Errorf("%s: after a failed Reload served %s, want the previous %s", tt.name, got, nextFP)
		}
	}
}

func TestNewSourceErrors(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t, "test")
	now := time.Now()
	broker := ca.Broker(t)
	grader := ca.Client(t, certs.RoleServer, "grader1")
	expired := ca.Issue(t, certstest.Leaf{CommonName: "old", Role: certs.RoleServer,
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	missing := filepath.Join(t.TempDir(), "nope.crt")

	tests := []struct {
		name    string
		new     func(cert, key, ca string, log *slog.Logger) (*certs.Source, error)
		files   [3]string
		wantMsg string
	}{
		{"missing certificate", certs.NewServerSource, [3]string{missing, broker.KeyFile, ca.CertFile}, "cannot read certificate file " + missing},
		{"no file given", certs.NewServerSource, [3]string{broker.CertFile, "", ca.CertFile}, "no key file given"},
		{"CA given as key", certs.NewServerSource, [3]string{broker.CertFile, ca.CertFile, ca.CertFile}, "key file " + ca.CertFile + ": no PEM private key"},
		{"client certificate as server", certs.NewServerSource, [3]string{grader.CertFile, grader.KeyFile, ca.CertFile}, "not valid as a TLS server (serverAuth) certificate"},
		{"server certificate as client", certs.NewClientSource, [3]string{broker.CertFile, broker.KeyFile, ca.CertFile}, "not valid as a TLS client (clientAuth) certificate"},
		{"expired client", certs.NewClientSource, [3]string{expired.CertFile, expired.KeyFile, ca.CertFile}, "expired on"},
		{"key as CA", certs.NewClientSource, [3]string{grader.CertFile, grader.KeyFile, grader.KeyFile}, "CA file " + grader.KeyFile + ": no PEM CERTIFICATE block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := tt.new(tt.files[0], tt.files[1], tt.files[2], nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) || !strings.HasPrefix(err.Error(), "certs: ") {
				t.Fatalf("error %v, want \"certs: ...%s...\"", err, tt.wantMsg)
			}
		})
	}
}

func TestReloadCA(t *testing.T) {
	t.Parallel()
	in := install(t)
	next := certstest.NewCA(t, "next")
	nextGrader := next.Client(t, certs.RoleServer, "grader2")
	nextClient, err := certs.NewClientSource(nextGrader.CertFile, nextGrader.KeyFile, in.p.ca.CertFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, srv := handshake(t, in.src.ServerTLSConfig(), nextClient.ClientTLSConfig("localhost")); srv.err == nil {
		t.Fatal("client of the new CA accepted before the CA file lists it")
	}
	// A bundle of both CAs, as during a CA rotation.
	replace(t, in.caFile, in.p.ca.CertFile, next.CertFile)
	if err := in.src.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	for _, c := range []*certs.Source{in.p.client, nextClient} {
		cli, srv := handshake(t, in.src.ServerTLSConfig(), c.ClientTLSConfig("localhost"))
		if cli.err != nil || srv.err != nil {
			t.Errorf("%s after CA reload: client %v, server %v", c.Identity(), cli.err, srv.err)
		}
	}
}

// startWatch runs Watch until the test ends and returns once it catches
// SIGHUP.
func startWatch(t *testing.T, src *certs.Source, poll time.Duration, noNotify bool) {
	t.Helper()
	ready := make(chan struct{})
	certs.SetWatchTimings(src, 20*time.Millisecond, poll, noNotify, func() { close(ready) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	<-ready
}

func TestWatchFileChange(t *testing.T) {
	t.Parallel()
	in := install(t)
	// A poll slower than the test: only fsnotify can see the change.
	startWatch(t, in.src, time.Hour, false)

	next := in.p.ca.Broker(t)
	replace(t, in.certFile, next.CertFile)
	replace(t, in.keyFile, next.KeyFile)
	in.waitServed(t, certs.IdentityOf(next.Cert).Fingerprint)

	// Rewriting in place and touching are caught too.
	third := in.p.ca.Broker(t)
	for _, pair := range [][2]string{{in.keyFile, third.KeyFile}, {in.certFile, third.CertFile}} {
		b, err := os.ReadFile(pair[1])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pair[0], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	if err := os.Chtimes(in.certFile, now, now); err != nil {
		t.Fatal(err)
	}
	in.waitServed(t, certs.IdentityOf(third.Cert).Fingerprint)
	if n := in.log.count("certs: reloaded"); n < 2 {
		t.Errorf("%d reloads logged, want at least 2", n)
	}
}

func TestWatchPoll(t *testing.T) {
	t.Parallel()
	in := install(t)
	var polls atomic.Int64
	certs.SetOnPoll(in.src, func() { polls.Add(1) })
	startWatch(t, in.src, 30*time.Millisecond, true)
	good := in.src.Identity().Fingerprint

	// A broken file keeps the current certificate, and polling it again and
	// again logs the failure once.
	if err := os.WriteFile(in.certFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the broken file to be noticed", func() bool { return in.log.count("reload failed") > 0 })
	noticed := polls.Load()
	testutil.Eventually(t, "three more polls of the broken file", func() bool { return polls.Load() >= noticed+3 })
	if n := in.log.count("reload failed"); n != 1 {
		t.Errorf("failure logged %d times, want once", n)
	}
	if got := in.servedFingerprint(t); got != good {
		t.Errorf("served %s while the file is broken, want the previous %s", got, good)
	}

	next := in.p.ca.Broker(t)
	replace(t, in.keyFile, next.KeyFile)
	replace(t, in.certFile, next.CertFile)
	in.waitServed(t, certs.IdentityOf(next.Cert).Fingerprint)
}
