package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/gradebroker/gradebroker/broker/admincli"
	"github.com/gradebroker/gradebroker/broker/token"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/platformclient"
)

// The reliability tests run the real binaries, so that a process can be
// killed, stopped and restarted. They are built once per test binary with a
// plain `go build` (no -race: the race detector makes them slow to start and
// watches nothing the in-process brokers do not already show it).

var bins struct {
	once    sync.Once
	dir     string
	broker  string
	graderd string
	err     error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// binaries builds bin/broker and bin/graderd once and returns their paths.
func binaries(t *testing.T) (brokerBin, graderdBin string) {
	t.Helper()
	root := repoRoot(t)
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "gradebroker-e2e-bin-")
		if bins.err != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", bins.dir+string(filepath.Separator), "./broker/cmd/broker", "./graderd/cmd/graderd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		bins.broker, bins.graderd = filepath.Join(bins.dir, "broker"), filepath.Join(bins.dir, "graderd")
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.broker, bins.graderd
}

// syncBuffer is a bytes.Buffer safe for a process writing while a test reads.
type syncBuffer = testutil.SyncBuffer

// proc is a child process whose output (stdout and stderr together) is
// kept, and shown in the test log if the test fails.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error // how it exited, once done is closed
}

// startProc starts bin with args. Cleanup stops it (SIGTERM, then SIGKILL
// after a few seconds) and prints its output if the test failed.
func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = procEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// Should the test binary die, its children go with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(5 * time.Second)
		if t.Failed() {
			t.Logf("----- output of %s (pid %d) -----\n%s----- end of %s -----", name, p.cmd.Process.Pid, p.out.String(), name)
		}
	})
	return p
}

// procEnv is the test's environment without the variables that would
// change what graderd or broker admin do.
func procEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GRADERD_") && !strings.HasPrefix(e, "GB_ADMIN_") {
			env = append(env, e)
		}
	}
	return env
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
		p.t.Fatalf("sending %v to %s: %v", sig, p.name, err)
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *proc) kill() {
	p.t.Helper()
	p.signal(syscall.SIGKILL)
	testutil.WaitClosed(p.t, p.name+" to die of SIGKILL", p.done)
}

// stop asks the process to end (SIGCONT, in case it is stopped, then
// SIGTERM), and kills it if it is still there after grace.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	// Not a wait for a state: the grace a process gets to end on its own
	// before it is killed.
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logs returns everything the process printed so far.
func (p *proc) logs() string { return p.out.String() }

// lines returns the lines of the output that contain every one of parts.
func (p *proc) lines(parts ...string) []string {
	var out []string
	for l := range strings.SplitSeq(p.logs(), "\n") {
		ok := true
		for _, s := range parts {
			if !strings.Contains(l, s) {
				ok = false
				break
			}
		}
		if ok && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// freeAddr returns a loopback address with a port nobody listened on a
// moment ago, for a process that must come back on the same port.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// devHTTPClient trusts the dev PKI's CA, as a platform would.
func devHTTPClient(t *testing.T, dir string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(mustRead(t, filepath.Join(dir, "ca.crt"))) {
		t.Fatal("no certificate in ca.crt")
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// brokerProc is a broker running as a process (`broker serve`).
type brokerProc struct {
	*proc
	dir      string // the dev PKI
	db       string
	grpcAddr string
	httpAddr string
}

// startBrokerProc runs `broker serve` with the dev PKI in dir on the given
// addresses and database, plus extra flags, and waits until /readyz
// answers.
func startBrokerProc(t *testing.T, dir, db, grpcAddr, httpAddr string, extra ...string) *brokerProc {
	t.Helper()
	bin, _ := binaries(t)
	args := append([]string{"serve",
		"--database", db, "--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--metrics-addr", "127.0.0.1:0",
		"--ca-file", filepath.Join(dir, "ca.crt"),
		"--cert-file", filepath.Join(dir, "broker.crt"), "--key-file", filepath.Join(dir, "broker.key"),
		"--token-key-file", filepath.Join(dir, "broker-token.key"),
		// Tests run side by side; the metrics port must not be shared.
		"--metrics-addr", "127.0.0.1:0",
	}, extra...)
	b := &brokerProc{proc: startProc(t, "broker", bin, args...), dir: dir, db: db, grpcAddr: grpcAddr, httpAddr: httpAddr}
	hc := devHTTPClient(t, dir)
	testutil.Eventually(t, "the broker to be ready", func() bool {
		if b.exited() {
			t.Fatalf("broker exited before it was ready (%v)", b.err)
		}
		resp, err := hc.Get("https://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return b
}

// mustAdminAt runs `broker admin` in-process as the dev PKI's operator
// against the broker at grpcAddr; a non-zero exit fails the test.
func mustAdminAt(t *testing.T, dir, grpcAddr string, args ...string) string {
	t.Helper()
	conn := []string{"--addr", grpcAddr, "--ca", filepath.Join(dir, "ca.crt"),
		"--cert", filepath.Join(dir, "clients", "admin.crt"), "--key", filepath.Join(dir, "clients", "admin.key")}
	var out, errb bytes.Buffer
	if code := admincli.Main(context.Background(), append(conn, args...), &out, &errb); code != 0 {
		t.Fatalf("broker admin %v: exit %d\n%s%s", args, code, out.String(), errb.String())
	}
	return out.String()
}

// The tag every reliability job carries, and the server type covering it.
const (
	relTag  = "rel"
	relType = "reltype"
)

// registerRel registers what the reliability tests need: relTag, relType,
// the given servers (certificates DIR/clients/NAME.crt, enrolled here when
// missing) with maxJobs each, and the platform demo.
func registerRel(t *testing.T, dir, grpcAddr string, maxJobs int, servers ...string) {
	t.Helper()
	mustAdminAt(t, dir, grpcAddr, "tag", "add", relTag)
	mustAdminAt(t, dir, grpcAddr, "type", "add", relType, "--tags", relTag)
	for _, s := range servers {
		crt := filepath.Join(dir, "clients", s+".crt")
		if _, err := os.Stat(crt); err != nil {
			script(t, "gb-enroll.sh", "--dir", dir, "--role", "server", "--name", s)
		}
		mustAdminAt(t, dir, grpcAddr, "server", "add", s, "--cert", crt, "--type", relType, "--max-jobs", fmt.Sprint(maxJobs))
	}
	mustAdminAt(t, dir, grpcAddr, "platform", "add", "demo", "--key", filepath.Join(dir, "demo-token.pub"),
		"--return-url", "http://127.0.0.1:9/cb")
}

// demoClient is the platform demo's client of the broker whose REST
// gateway is at httpAddr.
func demoClient(t *testing.T, dir, httpAddr string) *platformclient.Client {
	t.Helper()
	key, err := token.LoadPrivateKeyPEM(mustRead(t, filepath.Join(dir, "demo-token.key")))
	if err != nil {
		t.Fatal(err)
	}
	brokerKey, err := token.ParsePublicKeyPEM(mustRead(t, filepath.Join(dir, "broker-token.pub")))
	if err != nil {
		t.Fatal(err)
	}
	c, err := platformclient.New("https://"+httpAddr, "demo", key, brokerKey, platformclient.Options{HTTPClient: devHTTPClient(t, dir)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// graderScript is an exec grader: it reads the job, leaves a file named
// after the job and lease in $GRADER_RUNS (so that a test sees that the
// grader runs), sleeps $GRADER_SLEEP seconds (only on attempt
// $GRADER_SLEEP_ATTEMPT when that is set) and answers OK with the name of
// the server that graded it, so that a test can tell whose result the
// broker kept.
const graderScript = `#!/bin/sh
job=$(cat)
field() { printf '%s' "$job" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
: > "$GRADER_RUNS/job-$(field job_id)-lease-$(field lease_id)"
if [ -z "$GRADER_SLEEP_ATTEMPT" ] || printf '%s' "$job" | grep -q "\"attempt\":$GRADER_SLEEP_ATTEMPT,"; then
	sleep "${GRADER_SLEEP:-0}"
fi
printf '{"ok":true,"by":"%s"}\n' "$GRADER_NAME"
`

// graderdProc is a graderd process.
type graderdProc struct {
	*proc
	server string // its registered name, and its certificate's
	spool  string
	runs   string // where the test grader leaves a file for each run
}

// graderdOpts says how to run one graderd.
type graderdOpts struct {
	// sleep and sleepAttempt set the exec grader's GRADER_SLEEP and
	// GRADER_SLEEP_ATTEMPT; with behavior set no grader runs.
	sleep        string
	sleepAttempt int
	// behavior is --testbehavior (with --noop).
	behavior int
	slots    int
}

// runGraderd runs graderd as server name against the broker at
// grpcAddr and waits until it is connected.
func runGraderd(t *testing.T, dir, grpcAddr, name string, o graderdOpts) *graderdProc {
	t.Helper()
	_, bin := binaries(t)
	work := t.TempDir()
	g := &graderdProc{server: name, spool: filepath.Join(work, "spool"), runs: filepath.Join(work, "runs")}
	if err := os.Mkdir(g.runs, 0o755); err != nil {
		t.Fatal(err)
	}
	if o.slots == 0 {
		o.slots = 4
	}
	args := []string{"--broker", grpcAddr,
		"--ca", filepath.Join(dir, "ca.crt"),
		"--cert", filepath.Join(dir, "clients", name+".crt"), "--key", filepath.Join(dir, "clients", name+".key"),
		"--hostname", name, "--slots", fmt.Sprint(o.slots),
		"--spool-dir", g.spool, "--work-root", filepath.Join(work, "jobs"),
		"--reconnect-min", "100ms", "--reconnect-max", "1s", "--drain-timeout", "0",
	}
	if o.behavior != 0 {
		args = append(args, "--noop", "--testbehavior", fmt.Sprint(o.behavior))
	} else {
		grader := filepath.Join(work, "grader.sh")
		if err := os.WriteFile(grader, []byte(graderScript), 0o755); err != nil {
			t.Fatal(err)
		}
		env := fmt.Sprintf("[GRADER_NAME=%s, GRADER_RUNS=%s, GRADER_SLEEP=%s", name, g.runs, o.sleep)
		if o.sleepAttempt > 0 {
			env += fmt.Sprintf(", GRADER_SLEEP_ATTEMPT=%d", o.sleepAttempt)
		}
		// These tests watch the grader's runs from outside (a file in
		// g.runs for each), which the sandbox is there to prevent: the
		// grader runs unconfined. The round trip and the console tests grade
		// in the sandbox.
		cfg := fmt.Sprintf("default_executor:\n  type: exec\n  sandbox: none\n  command: [%s]\n  env: %s]\n", grader, env)
		cfgFile := filepath.Join(work, "graderd.yaml")
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", cfgFile)
	}
	g.proc = startProc(t, name, bin, args...)
	testutil.Eventually(t, name+" connected", func() bool {
		if g.exited() {
			t.Fatalf("%s exited (%v) before it connected", name, g.err)
		}
		return serverConnected(t, dir, grpcAddr, name)
	})
	return g
}

// serverConnected asks the broker at grpcAddr whether server name is
// connected.
func serverConnected(t *testing.T, dir, grpcAddr, name string) bool {
	t.Helper()
	var resp gbv1.ListServersResponse
	if err := protojson.Unmarshal([]byte(mustAdminAt(t, dir, grpcAddr, "--json", "server", "list")), &resp); err != nil {
		t.Fatalf("server list --json: %v", err)
	}
	for _, s := range resp.GetServers() {
		if s.GetName() == name {
			return s.GetConnected()
		}
	}
	return false
}

// started lists the runs of g's grader so far, as job-J-lease-L.
func (g *graderdProc) started(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(g.runs)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// waitStarted waits until g's grader has started n runs, of job id when id
// is not 0.
func (g *graderdProc) waitStarted(t *testing.T, n int, id int64) {
	t.Helper()
	prefix := "job-"
	if id != 0 {
		prefix = fmt.Sprintf("job-%d-", id)
	}
	testutil.Eventually(t, fmt.Sprintf("%d run(s) of %s's grader", n, g.server), func() bool {
		runs := 0
		for _, r := range g.started(t) {
			if strings.HasPrefix(r, prefix) {
				runs++
			}
		}
		return runs >= n
	})
}

// spooled lists the results waiting in g's spool.
func (g *graderdProc) spooled(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(g.spool, "*.result"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ctxTimeout is a context for one step of a test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// partitionProxy forwards TCP connections to a target. Cut, it forwards
// nothing in either direction but keeps every connection open, as a network
// partition that silently drops packets does; healed, it delivers what it
// held back, as TCP retransmission does once such a partition ends.
type partitionProxy struct {
	ln     net.Listener
	target string
	closed chan struct{}

	mu     sync.Mutex
	healed chan struct{} // closed while the link is up
	conns  []net.Conn
}

// startProxy listens on a loopback port and forwards to target.
func startProxy(t *testing.T, target string) *partitionProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partitionProxy{ln: ln, target: target, closed: make(chan struct{}), healed: make(chan struct{})}
	close(p.healed)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(func() {
		close(p.closed)
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

// addr is where clients connect to reach the target through the proxy.
func (p *partitionProxy) addr() string { return p.ln.Addr().String() }

// cut stops all traffic, keeping the connections open.
func (p *partitionProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.healed:
		p.healed = make(chan struct{})
	default:
	}
}

// heal lets traffic through again, what was held back first.
func (p *partitionProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.healed:
	default:
		close(p.healed)
	}
}

func (p *partitionProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	go p.pipe(u, c)
	p.pipe(c, u)
}

// pipe copies src to dst while the link is up; when either side ends, both
// are closed.
func (p *partitionProxy) pipe(dst, src net.Conn) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			up := p.healed
			p.mu.Unlock()
			select {
			case <-up:
			case <-p.closed:
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
