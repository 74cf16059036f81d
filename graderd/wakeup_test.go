package graderd

import (
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/wakeupmsg"
)

var testWakeKey = []byte("graderd tests' wakeup key, 32 b!")

func testSecret() []byte { return wakeupmsg.DeriveSecret(testWakeKey, "grader1") }

// sleepy configures idle exit and, with listen, the wakeup port.
func sleepy(listen bool) func(*Config) {
	return func(c *Config) {
		c.IdleExit = 200 * time.Millisecond
		if listen {
			c.WakeupListen = "127.0.0.1:0"
			c.WakeupSecret = hex.EncodeToString(testSecret())
		}
	}
}

func shortSettle(d *Daemon) { d.sleep.settle = 50 * time.Millisecond }

// slotsMsg matches a Slots message announcing n.
func slotsMsg(n uint32) func(*gradebrokerv1.ConnectRequest) bool {
	return func(m *gradebrokerv1.ConnectRequest) bool { return m.GetSlots() != nil && m.GetSlots().GetSlots() == n }
}

// ask sends datagram b to the daemon's wakeup port and returns the reply.
func ask(t *testing.T, d *Daemon, b []byte) string {
	t.Helper()
	testutil.Eventually(t, "the wakeup port", func() bool { return d.WakeupAddr() != nil })
	conn, err := net.Dial("udp", d.WakeupAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no reply to a wakeup: %v", err)
	}
	return string(buf[:n])
}

func ended(t *testing.T, bs *brokerStream) {
	t.Helper()
	select {
	case <-bs.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("graderd did not disconnect")
	}
}

// noStream checks that graderd does not connect during d: the wait is what
// is tested, an absence.
func noStream(t *testing.T, fb *fakeBroker, d time.Duration) {
	t.Helper()
	select {
	case <-fb.streams:
		t.Fatal("graderd reconnected")
	case <-time.After(d):
	}
}

func TestIdleExitWithoutWakeupListenerExits(t *testing.T) {
	t.Parallel()
	h := setup(t, sleepy(false))
	bs := h.fb.nextStream(t)
	// It tells the broker it takes no more jobs before it goes.
	bs.expect(t, 5*time.Second, "Slots 0", slotsMsg(0))
	ended(t, bs)
	select {
	case err := <-h.done:
		h.done <- err
		if err != nil {
			t.Fatalf("Run = %v, want nil (exit 0) after an idle exit", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the idle exit")
	}
	if !strings.Contains(h.logs.String(), "exiting") {
		t.Error("the idle exit was not logged")
	}
}

func TestIdleWaitsForAValidWakeup(t *testing.T) {
	t.Parallel()
	h := startDaemon(t, startFakeBroker(t, newTestPKI(t)), sleepy(true), shortSettle)
	bs := h.fb.nextStream(t)
	ended(t, bs)
	testutil.Eventually(t, "graderd asleep", func() bool { return h.d.sleep.naps.Load() == 1 })

	now := time.Now()
	secret := testSecret()
	replayed := wakeupmsg.NewDatagram(secret, "grader1", now, wakeupmsg.NewNonce())
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"forged", wakeupmsg.NewDatagram(wakeupmsg.DeriveSecret(testWakeKey, "grader2"), "grader1", now, wakeupmsg.NewNonce())},
		{"stale", wakeupmsg.NewDatagram(secret, "grader1", now.Add(-2*time.Minute), wakeupmsg.NewNonce())},
		{"future", wakeupmsg.NewDatagram(secret, "grader1", now.Add(2*time.Minute), wakeupmsg.NewNonce())},
		{"malformed", []byte("wake up!")},
	} {
		if got := ask(t, h.d, tc.b); got != "no" {
			t.Errorf("%s wakeup answered %q, want no", tc.name, got)
		}
	}
	noStream(t, h.fb, 300*time.Millisecond)
	if !strings.Contains(h.logs.String(), "ignored a wakeup") || !strings.Contains(h.logs.String(), "forged") {
		t.Errorf("the forged wakeup was not logged:\n%s", h.logs.String())
	}

	if got := ask(t, h.d, replayed); got != "ok" {
		t.Fatalf("valid wakeup answered %q, want ok", got)
	}
	bs = h.fb.nextStream(t)
	if bs.hello.GetSlots() != uint32(h.cfg.Slots) {
		t.Errorf("Hello after the wakeup offers %d slots, want %d", bs.hello.GetSlots(), h.cfg.Slots)
	}
	if got := ask(t, h.d, replayed); got != "no" {
		t.Errorf("replayed wakeup answered %q, want no", got)
	}
	// Idle again: it sleeps again, and wakes again.
	ended(t, bs)
	testutil.Eventually(t, "graderd asleep again", func() bool { return h.d.sleep.naps.Load() == 2 })
	if got := ask(t, h.d, wakeupmsg.NewDatagram(secret, "grader1", time.Now(), wakeupmsg.NewNonce())); got != "ok" {
		t.Fatalf("second wakeup answered %q", got)
	}
	h.fb.nextStream(t)
}

func TestJobDuringIdleSettleKeepsTheConnection(t *testing.T) {
	t.Parallel()
	exec := newBlockingExecutor()
	h := startDaemon(t, startFakeBroker(t, newTestPKI(t)), func(c *Config) {
		sleepy(false)(c)
		c.Executor = exec
	}, func(d *Daemon) { d.sleep.settle = 2 * time.Second })
	bs := h.fb.nextStream(t)
	bs.expect(t, 5*time.Second, "Slots 0", slotsMsg(0))
	// An Assign the broker sent before it read Slots 0.
	bs.assign(&gradebrokerv1.Assign{JobId: 1, LeaseId: 1, Attempt: 1, Jobdata: []byte(`{}`)})
	exec.waitStarted(t)
	bs.expect(t, 5*time.Second, "Slots back", slotsMsg(uint32(h.cfg.Slots)))
	close(exec.release)
	r := bs.result(t)
	bs.ack(ref(r.JobId, r.LeaseId))
	// Then idle again, and gone.
	ended(t, bs)
}

func TestWakeupSkipsTheReconnectWait(t *testing.T) {
	t.Parallel()
	fb := startFakeBroker(t, newTestPKI(t))
	fb.setRefuse(status.Error(codes.Unavailable, "broker busy"))
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(testSecret())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startDaemon(t, fb, func(c *Config) {
		c.ReconnectMin, c.ReconnectMax = time.Minute, time.Minute
		c.WakeupListen = "127.0.0.1:0"
		c.WakeupSecretFile = secretFile
	}, nil)
	testutil.Eventually(t, "graderd waiting to reconnect", func() bool { return h.d.sleep.retries.Load() > 0 })
	fb.setRefuse(nil)
	if got := ask(t, h.d, wakeupmsg.NewDatagram(testSecret(), "grader1", time.Now(), wakeupmsg.NewNonce())); got != "ok" {
		t.Fatalf("wakeup answered %q", got)
	}
	fb.nextStream(t) // long before the minute's wait
}

func TestValidateSleep(t *testing.T) {
	t.Parallel()
	secret := hex.EncodeToString(testSecret())
	for _, tc := range []struct {
		name  string
		set   func(*Config)
		field string // "" for valid
	}{
		{"idle exit alone", func(c *Config) { c.IdleExit = time.Minute }, ""},
		{"listen with secret", func(c *Config) { c.WakeupListen, c.WakeupSecret = ":7999", secret }, ""},
		{"listen with secret file", func(c *Config) { c.WakeupListen, c.WakeupSecretFile = ":7999", "/etc/graderd/wakeup.secret" }, ""},
		{"negative idle exit", func(c *Config) { c.IdleExit = -time.Second }, "idle_exit:"},
		{"listen without secret", func(c *Config) { c.WakeupListen = ":7999" }, "wakeup_secret:"},
		{"secret without listen", func(c *Config) { c.WakeupSecret = secret }, "wakeup_secret:"},
		{"both secrets", func(c *Config) { c.WakeupListen, c.WakeupSecret, c.WakeupSecretFile = ":7999", secret, "f" }, "wakeup_secret:"},
		{"bad secret", func(c *Config) { c.WakeupListen, c.WakeupSecret = ":7999", "00ff" }, "wakeup_secret:"},
		{"bad address", func(c *Config) { c.WakeupListen, c.WakeupSecret = "7999", secret }, "wakeup_listen:"},
	} {
		cfg := validConfig()
		tc.set(&cfg)
		err := cfg.Validate()
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.field != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.field)):
			t.Errorf("%s: Validate = %v, want an error about %s", tc.name, err, tc.field)
		}
	}
}

func TestWakeupFlags(t *testing.T) {
	t.Parallel()
	cl, err := ParseCommandLine([]string{"--idle-exit", "5m", "--wakeup-listen", ":7999", "--wakeup-secret-file", "/s"},
		func(k string) string {
			if k == "GRADERD_WAKEUP_LISTEN" {
				return ":1"
			}
			return ""
		}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := cl.Config; c.IdleExit != 5*time.Minute || c.WakeupListen != ":7999" || c.WakeupSecretFile != "/s" {
		t.Errorf("config %+v", c)
	}
}
