// Package e2e holds end-to-end tests: a whole broker in-process on
// 127.0.0.1:0 over real mTLS, with certificates made by the openssl scripts,
// and graderd as a real process where the behaviour is about processes.
package e2e

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/gradebroker/gradebroker/broker/admincli"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// repoRoot is the checkout's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the source directory")
	}
	return filepath.Dir(filepath.Dir(file))
}

// devPKI runs scripts/gb-dev-pki.sh into a temp dir and returns it.
func devPKI(t *testing.T) string {
	t.Helper()
	testutil.Slow(t, "a whole broker, graderd processes and openssl")
	dir := t.TempDir()
	script(t, "gb-dev-pki.sh", dir)
	return dir
}

// script runs one of scripts/*.sh and returns its stdout; a failure is fatal.
func script(t *testing.T, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl is required for this test: %v", err)
	}
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "scripts", name)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, errb.String())
	}
	return out.String()
}

// broker is a broker running in-process.
type broker struct {
	*brokerd.Broker
	dir string // the dev PKI
	db  string
}

// startBroker starts a broker on 127.0.0.1:0 with the dev PKI in dir.
func startBroker(t *testing.T, dir string, mod func(*brokerd.Config)) *broker {
	t.Helper()
	cfg := brokerd.DefaultConfig()
	cfg.Database = filepath.Join(t.TempDir(), "gb.db")
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CAFile = filepath.Join(dir, "ca.crt")
	cfg.CertFile = filepath.Join(dir, "broker.crt")
	cfg.KeyFile = filepath.Join(dir, "broker.key")
	cfg.TokenKeyFile = filepath.Join(dir, "broker-token.key")
	if mod != nil {
		mod(&cfg)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := brokerd.New(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("brokerd.New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return &broker{Broker: b, dir: dir, db: cfg.Database}
}

// testWriter sends logs to t.Log, so they show only for failing tests.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// admin runs `broker admin` in-process as the given client (files
// DIR/clients/NAME.crt and .key) and returns its exit code and output.
func (b *broker) admin(t *testing.T, client string, args ...string) (int, string, string) {
	t.Helper()
	conn := []string{"--addr", b.GRPCAddr(), "--ca", filepath.Join(b.dir, "ca.crt"),
		"--cert", filepath.Join(b.dir, "clients", client+".crt"), "--key", filepath.Join(b.dir, "clients", client+".key")}
	var out, errb bytes.Buffer
	code := admincli.Main(context.Background(), append(conn, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// mustAdmin is admin that fails the test on a non-zero exit.
func (b *broker) mustAdmin(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := b.admin(t, "admin", args...)
	if code != 0 {
		t.Fatalf("broker admin %v: exit %d\n%s%s", args, code, out, errs)
	}
	return out
}

// bootstrap registers the dev PKI's "admin" operator in the database file.
func bootstrap(t *testing.T, dir, db string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := admincli.Main(context.Background(), []string{"bootstrap", "--db", db, "--name", "admin",
		"--cert", filepath.Join(dir, "clients", "admin.crt"), "--ca", filepath.Join(dir, "ca.crt")}, &out, &errb)
	if code != 0 {
		t.Fatalf("bootstrap: exit %d: %s%s", code, out.String(), errb.String())
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// brokerdConfig is brokerd.Config, named for the tests' option functions.
type brokerdConfig = brokerd.Config

// randReader is crypto/rand's reader.
type randReader struct{}

func (randReader) Read(p []byte) (int, error) { return cryptorand.Read(p) }

func jsonIDString(id int64) string { return strconv.FormatInt(id, 10) }
