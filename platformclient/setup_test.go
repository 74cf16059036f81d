package platformclient

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

// testKeySet holds the RSA keys of the tests, made once per test binary:
// key generation is the slowest thing the tests would otherwise do.
type testKeySet struct {
	broker, brokerNext, platform, other, stranger *rsa.PrivateKey
}

var keysOnce = sync.OnceValue(func() testKeySet {
	var ks testKeySet
	var wg sync.WaitGroup
	for _, p := range []**rsa.PrivateKey{&ks.broker, &ks.brokerNext, &ks.platform, &ks.other, &ks.stranger} {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			*p = k
		})
	}
	wg.Wait()
	return ks
})

const (
	brokerName    = "gradebroker"
	platformName  = "demo"
	otherPlatform = "other"
)

// env is a running broker with two registered platforms.
type env struct {
	b      *brokerd.Broker
	url    string
	http   *http.Client
	keys   testKeySet
	caFile string
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func publicPEM(t *testing.T, k *rsa.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// startBroker starts a broker in-process over real TLS with a temporary
// database, and registers tags python3 and gpu, a server type covering
// python3 only, and platforms demo and other.
func startBroker(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	ks := keysOnce()
	dir := t.TempDir()
	ca := certstest.NewCA(t, "platformclient test")
	bf := ca.Broker(t)

	keyFile := filepath.Join(dir, "broker-token.key")
	der, err := x509.MarshalPKCS8PrivateKey(ks.broker)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile, "PRIVATE KEY", der)

	cfg := brokerd.DefaultConfig()
	cfg.Name = brokerName
	cfg.Database = filepath.Join(dir, "broker.db")
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = ca.CertFile, bf.CertFile, bf.KeyFile
	cfg.TokenKeyFile = keyFile
	cfg.ShutdownTimeout = 5 * time.Second
	b, err := brokerd.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("brokerd.New: %v", err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatalf("broker Start: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("broker Close: %v", err)
		}
	})

	db := b.DB()
	for _, tag := range []string{"python3", "gpu"} {
		if _, err := db.AddTag(ctx, tag, ""); err != nil {
			t.Fatalf("AddTag %s: %v", tag, err)
		}
	}
	if _, err := db.AddServerType(ctx, "py", []string{"python3"}); err != nil {
		t.Fatalf("AddServerType: %v", err)
	}
	for name, k := range map[string]*rsa.PrivateKey{platformName: ks.platform, otherPlatform: ks.other} {
		if _, err := db.AddPlatform(ctx, broker.Platform{Name: name, PublicKeyPEM: publicPEM(t, &k.PublicKey),
			ReturnURL: "https://" + name + ".example.org/callback"}); err != nil {
			t.Fatalf("AddPlatform %s: %v", name, err)
		}
	}

	tlsConfig, err := certs.GatewayClientTLSConfig(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	t.Cleanup(hc.CloseIdleConnections)
	return &env{b: b, url: "https://" + b.HTTPAddr(), http: hc, keys: ks, caFile: ca.CertFile}
}

// client returns a client of e's broker signing as platform with key.
func (e *env) client(t *testing.T, platform string, key *rsa.PrivateKey, opts Options) *Client {
	t.Helper()
	opts.HTTPClient = e.http
	c, err := New(e.url, platform, key, &e.keys.broker.PublicKey, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}
