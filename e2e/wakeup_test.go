package e2e

import (
	"context"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	gb "github.com/gradebroker/gradebroker/broker"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/platformclient"
	"github.com/gradebroker/gradebroker/wakeupmsg"
)

// recordExecutor grades every job at once and records which it ran.
type recordExecutor struct{ ran chan int64 }

var _ executor.Executor = (*recordExecutor)(nil)

func (r *recordExecutor) Run(_ context.Context, j executor.Job) executor.Result {
	r.ran <- j.JobID
	return executor.Result{Outcome: gbv1.Outcome_OUTCOME_OK, Result: []byte(`{"woken":true}`)}
}

// TestSleepingServerIsWokenAndAssigned: a job for a type whose only server
// sleeps (a graderd disconnected after --idle-exit, waiting for a wakeup
// with --wakeup-listen, which alone makes it reconnect) wakes it over UDP,
// signed with the key the broker derives the server's secret from, and the
// job is graded there.
func TestSleepingServerIsWokenAndAssigned(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	key := make([]byte, wakeupmsg.KeySize)
	if _, err := (randReader{}).Read(key); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "wakeup.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, dir, func(c *brokerdConfig) { c.WakeupKeyFile = keyFile })
	bootstrap(t, dir, b.db)
	registerRel(t, dir, b.GRPCAddr(), 1, "grader1")

	exec := &recordExecutor{ran: make(chan int64, 1)}
	cfg := graderd.DefaultConfig()
	cfg.Broker = b.GRPCAddr()
	cfg.CAFile = filepath.Join(dir, "ca.crt")
	cfg.CertFile, cfg.KeyFile = filepath.Join(dir, "clients", "grader1.crt"), filepath.Join(dir, "clients", "grader1.key")
	cfg.SpoolDir = t.TempDir()
	cfg.Executor = exec
	cfg.ReconnectMin, cfg.ReconnectMax = 50*time.Millisecond, time.Second
	cfg.IdleExit = 300 * time.Millisecond
	cfg.WakeupListen = "127.0.0.1:0"
	cfg.WakeupSecret = hex.EncodeToString(wakeupmsg.DeriveSecret(key, "grader1"))
	gd, err := graderd.New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- gd.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("graderd Run: %v", err)
		}
	})
	testutil.Eventually(t, "graderd's wakeup port", func() bool { return gd.WakeupAddr() != nil })
	url := "udp://" + gd.WakeupAddr().String()
	b.mustAdmin(t, "server", "update", "grader1", "--wakeup-url", url)

	// graderd connects, has nothing to do, and goes to sleep.
	testutil.Eventually(t, "graderd connected, then asleep", func() bool {
		connected, _, _, lastSeen := b.Dispatcher().ServerStatus("grader1")
		return !connected && !lastSeen.IsZero()
	})

	sent, err := demoClient(t, dir, b.HTTPAddr()).SendJob(ctxTimeout(t, 30*time.Second), platformclient.Job{
		Data: map[string]any{"task": "wake"}, Name: "wake-it", Tags: []string{relTag}})
	if err != nil {
		t.Fatalf("SendJob: %v", err)
	}
	id := sent.GetJobId()
	j := waitFinal(t, b, id, 30*time.Second)
	if j.State != gb.JobDone || string(j.Result) != `{"woken":true}` || j.Server != "grader1" {
		t.Fatalf("job %d is %s on %q with result %s; want done by grader1", id, j.State, j.Server, j.Result)
	}
	if got := <-exec.ran; got != id {
		t.Errorf("graderd ran job %d, want %d", got, id)
	}
	if st := b.Waker().Stats(); st.OK != 1 || st.Failed != 0 {
		t.Errorf("waker stats %+v; want the one wakeup answered", st)
	}
	if s, err := b.DB().ServerByName(context.Background(), "grader1"); err != nil || s.WakeupFails != 0 {
		t.Errorf("wakeup_fails = %d, %v; want 0", s.WakeupFails, err)
	}
}
