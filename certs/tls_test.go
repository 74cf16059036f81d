package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
)

// pki is the usual test setup: a CA, the broker's source and a graderd
// client source, all from files.
type pki struct {
	ca     *certstest.CA
	broker certstest.Files
	server *certs.Source
	client *certs.Source
}

func setup(t *testing.T) pki {
	t.Helper()
	ca := certstest.NewCA(t, "test")
	broker := ca.Broker(t)
	srv, err := certs.NewServerSource(broker.CertFile, broker.KeyFile, ca.CertFile, nil)
	if err != nil {
		t.Fatalf("NewServerSource: %v", err)
	}
	grader := ca.Client(t, certs.RoleServer, "grader1")
	cli, err := certs.NewClientSource(grader.CertFile, grader.KeyFile, ca.CertFile, nil)
	if err != nil {
		t.Fatalf("NewClientSource: %v", err)
	}
	return pki{ca: ca, broker: broker, server: srv, client: cli}
}

// clientView is what the client side of one connection saw.
type clientView struct {
	state tls.ConnectionState
	err   error // handshake or first-read error
}

// serverView is what the server side of one connection saw.
type serverView struct {
	err   error // handshake error
	id    certs.Identity
	idErr error
}

// handshake runs one TLS connection between the two configurations on
// loopback. The client reads a byte after the handshake because in TLS 1.3
// the client finishes before the server has checked its certificate: a
// refusal shows up only on the first read.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config) (clientView, serverView) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	seen := make(chan serverView, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			seen <- serverView{err: err}
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.HandshakeContext(ctx); err != nil {
			seen <- serverView{err: err}
			return
		}
		id, idErr := certs.PeerIdentity(tc.ConnectionState())
		_, _ = tc.Write([]byte{1})
		seen <- serverView{id: id, idErr: idErr}
	}()

	d := tls.Dialer{Config: cliCfg}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	var cs tls.ConnectionState
	if err == nil {
		tc := conn.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(tc, make([]byte, 1))
		cs = tc.ConnectionState()
		_ = tc.Close()
	} else {
		// The server is still waiting for a handshake that will not come.
		_ = ln.Close()
	}
	return clientView{state: cs, err: err}, <-seen
}

// manualClient is a client configuration built without a Source, for
// certificates a Source refuses to load (expired, wrong usage) and for no
// certificate at all.
func manualClient(t *testing.T, ca *certstest.CA, f *certstest.Files) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "localhost"}
	if f != nil {
		kp, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		// Always sent, as a Source does: with Certificates, crypto/tls would
		// quietly send nothing when the certificate is not from a CA the
		// server asks for, and the foreign-CA cases would test nothing.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
	}
	return cfg
}

func TestConfigs(t *testing.T) {
	t.Parallel()
	p := setup(t)
	for name, cfg := range map[string]*tls.Config{
		"ServerTLSConfig":               p.server.ServerTLSConfig(),
		"ServerTLSConfigOptionalClient": p.server.ServerTLSConfigOptionalClient(),
		"ClientTLSConfig":               p.client.ClientTLSConfig("localhost"),
	} {
		if cfg.MinVersion != tls.VersionTLS13 {
			t.Errorf("%s: MinVersion %#x, want TLS 1.3", name, cfg.MinVersion)
		}
	}
	if got := p.server.ServerTLSConfig().ClientAuth; got != tls.RequireAndVerifyClientCert {
		t.Errorf("ServerTLSConfig ClientAuth = %v", got)
	}
	if got := p.server.ServerTLSConfigOptionalClient().ClientAuth; got != tls.VerifyClientCertIfGiven {
		t.Errorf("ServerTLSConfigOptionalClient ClientAuth = %v", got)
	}
}

func TestHandshake(t *testing.T) {
	t.Parallel()
	p := setup(t)
	cli, srv := handshake(t, p.server.ServerTLSConfig(), p.client.ClientTLSConfig("localhost"))
	if cli.err != nil || srv.err != nil {
		t.Fatalf("handshake: client %v, server %v", cli.err, srv.err)
	}
	cs := cli.state
	if cs.Version != tls.VersionTLS13 {
		t.Errorf("version %#x, want TLS 1.3", cs.Version)
	}
	if got, want := certs.IdentityOf(cs.PeerCertificates[0]).Fingerprint, certs.IdentityOf(p.broker.Cert).Fingerprint; got != want {
		t.Errorf("client saw server certificate %s, want %s", got, want)
	}
	if srv.idErr != nil {
		t.Fatalf("PeerIdentity: %v", srv.idErr)
	}
	if srv.id != p.client.Identity() || srv.id.Role != certs.RoleServer || srv.id.CommonName != "grader1" {
		t.Errorf("PeerIdentity = %+v, want grader1 with role server", srv.id)
	}
}

func TestHandshakeServerName(t *testing.T) {
	t.Parallel()
	p := setup(t)
	tests := []struct {
		serverName string
		wantErr    error
		wantMsg    string
	}{
		{serverName: "localhost"},
		{serverName: "127.0.0.1"},
		{serverName: "broker.invalid", wantErr: certs.ErrWrongName, wantMsg: `"broker.invalid" (it names DNS:localhost, IP:127.0.0.1, IP:::1)`},
		{serverName: "", wantMsg: "no server name"}, // an IP dial sends no SNI to fall back on
	}
	for _, tt := range tests {
		t.Run(tt.serverName, func(t *testing.T) {
			t.Parallel()
			cli, _ := handshake(t, p.server.ServerTLSConfig(), p.client.ClientTLSConfig(tt.serverName))
			err := cli.err
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("handshake error %v, want it to contain %q", err, tt.wantMsg)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("handshake error %v does not wrap %v", err, tt.wantErr)
			}
		})
	}
}

func TestHandshakeRefused(t *testing.T) {
	t.Parallel()
	p := setup(t)
	foreign := certstest.NewCA(t, "foreign")
	now := time.Now()
	expired := p.ca.Issue(t, certstest.Leaf{CommonName: "old", Role: certs.RoleServer,
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	serverOnly := p.ca.Issue(t, certstest.Leaf{CommonName: "misused", Role: certs.RoleServer,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	intruder := foreign.Client(t, certs.RoleServer, "intruder")

	tls12 := p.client.ClientTLSConfig("localhost")
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name      string
		cli       *tls.Config
		clientMsg string // in the client's error
		serverMsg string // in the server's handshake error
	}{
		{name: "TLS 1.2 client", cli: tls12, clientMsg: "protocol version", serverMsg: "unsupported versions"},
		{name: "foreign CA", cli: manualClient(t, p.ca, &intruder), clientMsg: "unknown certificate authority", serverMsg: "unknown authority"},
		{name: "expired", cli: manualClient(t, p.ca, &expired), clientMsg: "expired certificate", serverMsg: "expired"},
		{name: "no clientAuth usage", cli: manualClient(t, p.ca, &serverOnly), clientMsg: "bad certificate", serverMsg: "incompatible key usage"},
		{name: "no certificate", cli: manualClient(t, p.ca, nil), clientMsg: "certificate required", serverMsg: "didn't provide a certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cli, srv := handshake(t, p.server.ServerTLSConfig(), tt.cli)
			if err := cli.err; err == nil || !strings.Contains(err.Error(), tt.clientMsg) {
				t.Errorf("client error %v, want it to contain %q", cli.err, tt.clientMsg)
			}
			if srv.err == nil || !strings.Contains(srv.err.Error(), tt.serverMsg) {
				t.Errorf("server error %v, want it to contain %q", srv.err, tt.serverMsg)
			}
		})
	}
}

func TestClientRefusesForeignBroker(t *testing.T) {
	t.Parallel()
	p := setup(t)
	foreign := certstest.NewCA(t, "foreign")
	fb := foreign.Broker(t)
	// The impostor accepts our client (it trusts our CA) but presents a
	// certificate from another CA.
	impostor, err := certs.NewServerSource(fb.CertFile, fb.KeyFile, p.ca.CertFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	cli, _ := handshake(t, impostor.ServerTLSConfig(), p.client.ClientTLSConfig("localhost"))
	err = cli.err
	if !errors.Is(err, certs.ErrUntrusted) {
		t.Fatalf("handshake error %v, want ErrUntrusted", err)
	}
	if !strings.Contains(err.Error(), "the broker's certificate for CN=gradebroker,OU=broker") || !strings.Contains(err.Error(), p.ca.CertFile) {
		t.Errorf("error %q should name the certificate and the CA file", err)
	}
}

func TestOptionalClientHTTPS(t *testing.T) {
	t.Parallel()
	p := setup(t)
	platform := p.ca.Client(t, certs.RolePlatform, "demo")
	platformSrc, err := certs.NewClientSource(platform.CertFile, platform.KeyFile, p.ca.CertFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	intruder := certstest.NewCA(t, "foreign").Client(t, certs.RolePlatform, "intruder")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig:         p.server.ServerTLSConfigOptionalClient(),
		ReadHeaderTimeout: 10 * time.Second,
		// The foreign-certificate case makes the server log a handshake
		// error; the test checks the client's side of it instead.
		ErrorLog: log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := certs.PeerIdentity(*r.TLS)
			switch {
			case errors.Is(err, certs.ErrNoClientCertificate):
				_, _ = io.WriteString(w, r.Proto+" anonymous")
			case err != nil:
				http.Error(w, err.Error(), http.StatusInternalServerError)
			default:
				_, _ = io.WriteString(w, r.Proto+" "+string(id.Role)+" "+id.CommonName)
			}
		}),
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	url := "https://" + ln.Addr().String() + "/"
	get := func(cfg *tls.Config) (string, error) {
		tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	tests := []struct {
		name    string
		cfg     *tls.Config
		want    string
		wantErr bool // the exact text races between the TLS alert and HTTP/2 setup
	}{
		{name: "platform certificate", cfg: platformSrc.ClientTLSConfig("127.0.0.1"), want: "HTTP/2.0 platform demo"},
		{name: "no certificate", cfg: manualClient(t, p.ca, nil), want: "HTTP/2.0 anonymous"},
		{name: "foreign certificate", cfg: manualClient(t, p.ca, &intruder), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.cfg.ServerName == "" || tt.cfg.ServerName == "localhost" {
				tt.cfg.ServerName = "127.0.0.1"
			}
			got, err := get(tt.cfg)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("GET = %q, want the connection refused", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("GET = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestGRPC(t *testing.T) {
	t.Parallel()
	p := setup(t)

	seen := make(chan certs.Identity, 1)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(p.server.ServerTLSConfig())),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, err := certs.PeerIdentityFromContext(ctx)
			if err != nil {
				return nil, status.Error(codes.Unauthenticated, err.Error())
			}
			seen <- id
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	call := func(cfg *tls.Config) error {
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}

	if err := call(p.client.ClientTLSConfig("localhost")); err != nil {
		t.Fatalf("Check over mTLS: %v", err)
	}
	if id := <-seen; id != p.client.Identity() || id.Role != certs.RoleServer {
		t.Errorf("PeerIdentityFromContext = %+v, want grader1 with role server", id)
	}

	intruder := certstest.NewCA(t, "foreign").Client(t, certs.RoleServer, "intruder")
	err = call(manualClient(t, p.ca, &intruder))
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Check with a foreign certificate = %v, want Unavailable", err)
	}
}
