package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	gb "github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/store"
	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
	"github.com/gradebroker/gradebroker/platformclient"
)

// The reliability tests: real graderd processes (and, where the broker
// itself must die, a real broker process) killed, stopped and restarted
// while they hold jobs. Each one checks that every job ends in exactly one
// final state, with the result of the attempt the broker says it kept.

// finalEvents counts a job's done/failed/cancelled events: the store writes
// one each time a job becomes final, so more than one would be a job graded
// into two final results.
func finalEvents(j gb.Job) int {
	n := 0
	for _, e := range j.Events {
		switch e.Kind {
		case "done", "failed", "cancelled":
			n++
		}
	}
	return n
}

// resultBy returns the "by" member of a result of the test grader.
func resultBy(t *testing.T, result []byte) string {
	t.Helper()
	var r struct {
		OK bool   `json:"ok"`
		By string `json:"by"`
	}
	if err := json.Unmarshal(result, &r); err != nil || !r.OK {
		t.Fatalf("result %q is not the test grader's: %v", result, err)
	}
	return r.By
}

// waitAssigned waits until job id is assigned and returns the server
// holding it.
func waitAssigned(t *testing.T, db *store.DB, id int64) string {
	t.Helper()
	var server string
	testutil.Eventually(t, fmt.Sprintf("job %d assigned", id), func() bool {
		j, err := db.GetJob(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		server = j.Server
		return j.State == gb.JobAssigned
	})
	return server
}

// waitFinal waits until job id of the in-process broker b is final and
// returns it.
func waitFinal(t *testing.T, b *broker, id int64, timeout time.Duration) gb.Job {
	t.Helper()
	state, err := b.Dispatcher().WaitFinal(ctxTimeout(t, timeout), id)
	if err != nil {
		t.Fatalf("waiting for job %d: %v", id, err)
	}
	if !state.Final() {
		t.Fatalf("job %d is still %s after %v", id, state, timeout)
	}
	j, err := b.DB().GetJob(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// otherOf returns the name of pair that is not name.
func otherOf(pair []string, name string) string {
	if pair[0] == name {
		return pair[1]
	}
	return pair[0]
}

// TestGraderdKilledMidJob: the graderd running a job dies (SIGKILL, so no
// drain and no goodbye). The broker waits out the reconnect grace, then
// gives the job to the other server, whose result is the job's one final
// result; the killed lease is recorded as "disconnected".
func TestGraderdKilledMidJob(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	b := startBroker(t, dir, func(c *brokerd.Config) { c.ReconnectGrace = 2 * time.Second })
	bootstrap(t, dir, b.db)
	names := []string{"grader1", "grader2"}
	registerRel(t, dir, b.GRPCAddr(), 1, names...)
	gs := map[string]*graderdProc{}
	for _, n := range names {
		gs[n] = runGraderd(t, dir, b.GRPCAddr(), n, graderdOpts{sleep: "2", slots: 1})
	}

	sent, err := demoClient(t, dir, b.HTTPAddr()).SendJob(ctxTimeout(t, 30*time.Second), platformclient.Job{
		Data: map[string]any{"task": "sleepy"}, Name: "kill-its-server", Tags: []string{relTag}, TimeoutSec: 30})
	if err != nil {
		t.Fatalf("SendJob: %v", err)
	}
	id := sent.GetJobId()
	victim := waitAssigned(t, b.DB(), id)
	survivor := otherOf(names, victim)
	// Kill it once its grader runs, not merely once the broker assigned it.
	gs[victim].waitStarted(t, 1, id)
	gs[victim].kill()

	j := waitFinal(t, b, id, 30*time.Second)
	if j.State != gb.JobDone {
		t.Fatalf("job %d is %s (error %q); want done", id, j.State, j.Error)
	}
	if got := resultBy(t, j.Result); got != survivor {
		t.Errorf("the job's result came from %q; want the survivor %q", got, survivor)
	}
	if j.Server != survivor || j.Attempts != 2 || len(j.History) != 2 {
		t.Fatalf("job %d: server %q, %d attempt(s), history %+v; want 2 attempts, the second on %s", id, j.Server, j.Attempts, j.History, survivor)
	}
	if h := j.History[0]; h.Server != victim || h.End != "disconnected" || !strings.Contains(h.Reason, "did not come back") {
		t.Errorf("first attempt %+v; want %s ended \"disconnected\"", h, victim)
	}
	if h := j.History[1]; h.Server != survivor || h.End != "ok" {
		t.Errorf("second attempt %+v; want %s ended \"ok\"", h, survivor)
	}
	if n := finalEvents(j); n != 1 {
		t.Errorf("job %d became final %d times; want once: %+v", id, n, j.Events)
	}
	// The broker acknowledged the survivor's one result: it leaves the spool.
	testutil.Eventually(t, survivor+"'s spool emptied", func() bool { return len(gs[survivor].spooled(t)) == 0 })
	if runs := gs[survivor].started(t); len(runs) != 1 {
		t.Errorf("%s ran %v; want the job once", survivor, runs)
	}
}

// TestBrokerKilledAndRestarted: the broker dies (SIGKILL) while graderd runs
// jobs. The graders finish during the outage and their results wait in
// graderd's spool; the broker comes back on the same ports and database,
// graderd reconnects, re-sends them and they are accepted as the first
// attempts' results. Jobs still queued at the crash run after it. Nothing
// is graded twice and the spool ends empty.
func TestBrokerKilledAndRestarted(t *testing.T) {
	t.Parallel()
	dir := devPKI(t)
	db := t.TempDir() + "/gb.db"
	bootstrap(t, dir, db)
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	bp := startBrokerProc(t, dir, db, grpcAddr, httpAddr)
	registerRel(t, dir, grpcAddr, 4, "grader1")
	g := runGraderd(t, dir, grpcAddr, "grader1", graderdOpts{sleep: "3", slots: 4})

	const running, queued = 4, 2
	c := demoClient(t, dir, httpAddr)
	var ids []int64
	for i := range running + queued {
		r, err := c.SendJob(ctxTimeout(t, 30*time.Second), platformclient.Job{
			Data: map[string]any{"n": i}, Name: fmt.Sprintf("crash-%d", i), Tags: []string{relTag}})
		if err != nil {
			t.Fatalf("SendJob %d: %v", i, err)
		}
		ids = append(ids, r.GetJobId())
	}
	g.waitStarted(t, running, 0)
	bp.kill()

	// The graders finish while the broker is gone: their results are
	// spooled and wait, none acknowledged.
	testutil.Eventually(t, "the results in the spool", func() bool { return len(g.spooled(t)) == running })

	startBrokerProc(t, dir, db, grpcAddr, httpAddr)

	c = demoClient(t, dir, httpAddr) // no connection kept from the dead broker
	for _, id := range ids {
		r, err := c.GetJob(ctxTimeout(t, 40*time.Second), id, 30*time.Second)
		if err != nil {
			t.Fatalf("GetJob %d: %v", id, err)
		}
		j := r.GetJob()
		if j.GetState() != gbv1.JobState_JOB_STATE_DONE {
			t.Errorf("job %d is %v (error %q); want done", id, j.GetState(), j.GetError())
			continue
		}
		if j.GetAttempts() != 1 || len(j.GetHistory()) != 1 {
			t.Errorf("job %d took %d attempt(s) (history %v); want the first attempt's result", id, j.GetAttempts(), j.GetHistory())
			continue
		}
		if h := j.GetHistory()[0]; h.GetEnd() != "ok" || h.GetServer() != "grader1" {
			t.Errorf("job %d attempt %v; want ended ok on grader1", id, h)
		}
		if got := resultBy(t, []byte(j.GetResult())); got != "grader1" {
			t.Errorf("job %d result from %q", id, got)
		}
	}
	testutil.Eventually(t, "graderd's spool emptied", func() bool { return len(g.spooled(t)) == 0 })
	if runs := g.started(t); len(runs) != running+queued {
		t.Errorf("graderd ran %v; want each of the %d jobs once", runs, running+queued)
	}
	if ls := g.lines("broker refused result"); len(ls) > 0 {
		t.Errorf("the restarted broker refused spooled results:\n%s", strings.Join(ls, "\n"))
	}
	// graderd lost a stream that had been up for a while: it must not blame
	// its certificate for that (it had, before).
	if ls := g.lines("this server's certificate"); len(ls) > 0 {
		t.Errorf("graderd blamed its certificate for a broker that died mid-stream:\n%s", strings.Join(ls, "\n"))
	}
}

// TestPartitionedServerPastLeaseDeadline: a server goes silent while it
// runs a job, its connection open but nothing getting through, until the
// lease deadline passes; the job goes to the other server and is done
// there. When the silent server is heard again, its now-stale result is
// refused, graderd drops it, and the job keeps its one final result.
//
// Two kinds of silence:
//   - network: each graderd reaches the broker through a proxy, and the
//     victim's proxy stops forwarding in both directions (a partition that
//     drops packets, neither side sees a reset). graderd itself runs on: its
//     grader finishes in time and the OK result waits in the cut link, so
//     the stale result that arrives after the heal is an OK one, the case
//     that must never overwrite the other server's.
//   - frozen: the victim graderd is stopped with SIGSTOP (a VM paused, a
//     process swapped out): the kernel keeps its TCP connection alive, but
//     it neither heartbeats nor answers until SIGCONT.
func TestPartitionedServerPastLeaseDeadline(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"network", "frozen"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			testPartition(t, how == "network")
		})
	}
}

func testPartition(t *testing.T, network bool) {
	dir := devPKI(t)
	b := startBroker(t, dir, func(c *brokerd.Config) {
		c.LeaseGrace = time.Second
		// Heartbeats extend a lease by three intervals; keep that short
		// of the deadline so that only the timeout decides.
		c.HeartbeatInterval = 300 * time.Millisecond
	})
	bootstrap(t, dir, b.db)
	names := []string{"grader1", "grader2"}
	registerRel(t, dir, b.GRPCAddr(), 1, names...)
	gs := map[string]*graderdProc{}
	proxies := map[string]*partitionProxy{}
	for _, n := range names {
		addr := b.GRPCAddr()
		if network {
			proxies[n] = startProxy(t, addr)
			addr = proxies[n].addr()
		}
		// The first attempt takes 2 s of its 5 s: it would be in time, but
		// for the partition. Later attempts answer at once.
		gs[n] = runGraderd(t, dir, addr, n, graderdOpts{sleep: "2", sleepAttempt: 1, slots: 1})
	}

	sent, err := demoClient(t, dir, b.HTTPAddr()).SendJob(ctxTimeout(t, 30*time.Second), platformclient.Job{
		Data: map[string]any{"task": "partition"}, Name: "partitioned", Tags: []string{relTag}, TimeoutSec: 5})
	if err != nil {
		t.Fatalf("SendJob: %v", err)
	}
	id := sent.GetJobId()
	victim := waitAssigned(t, b.DB(), id)
	survivor := otherOf(names, victim)
	gs[victim].waitStarted(t, 1, id)
	if network {
		proxies[victim].cut()
	} else {
		gs[victim].signal(syscall.SIGSTOP)
	}
	stale := b.Dispatcher().Stats().StaleResults

	j := waitFinal(t, b, id, 30*time.Second)
	if j.State != gb.JobDone || len(j.History) != 2 {
		t.Fatalf("job %d is %s with history %+v; want done after 2 attempts", id, j.State, j.History)
	}
	first := j.History[0]
	if first.Server != victim || first.End != "expired" {
		t.Errorf("first attempt %+v; want %s ended \"expired\"", first, victim)
	}
	if h := j.History[1]; h.Server != survivor || h.End != "ok" {
		t.Errorf("second attempt %+v; want %s ended \"ok\"", h, survivor)
	}
	if got := resultBy(t, j.Result); got != survivor {
		t.Fatalf("the job's result came from %q; want %q", got, survivor)
	}

	// The partition heals: the silent server reports its stale lease.
	if network {
		// Its grader finished in time, behind the cut link: the result
		// waits in its spool.
		testutil.Eventually(t, "the victim's result in its spool", func() bool { return len(gs[victim].spooled(t)) == 1 })
		proxies[victim].heal()
	} else {
		gs[victim].signal(syscall.SIGCONT)
	}
	// The broker refuses it; graderd drops it.
	testutil.Eventually(t, "the stale result refused", func() bool { return b.Dispatcher().Stats().StaleResults == stale+1 })
	testutil.Eventually(t, "the refused result leaves the spool", func() bool { return len(gs[victim].spooled(t)) == 0 })

	after, err := b.DB().GetJob(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if after.State != gb.JobDone || !bytes.Equal(after.Result, j.Result) || len(after.History) != 2 || finalEvents(after) != 1 {
		t.Errorf("the late result changed job %d: state %s, result %s, %d attempt(s), %d final event(s)",
			id, after.State, after.Result, len(after.History), finalEvents(after))
	}
	if n := len(gs[victim].lines(`msg="connected to broker"`)); n != 1 {
		t.Errorf("%s connected %d times; the partition should not have ended its stream", victim, n)
	}
}

// TestThousandJobsMixedBehaviours: 1,000 jobs through five graderd that
// answer OK (echo), FATAL, TEMPORARY, with a result that is not JSON, or
// never. Every job must end done or failed by the rules, none stuck, none
// with two final results, none over its attempt limit, and every attempt
// must end the way its server behaves.
func TestThousandJobsMixedBehaviours(t *testing.T) {
	t.Parallel()
	const (
		jobs        = 1000
		batch       = 250
		maxAttempts = 3
	)
	dir := devPKI(t)
	b := startBroker(t, dir, func(c *brokerd.Config) {
		c.MaxAttempts = maxAttempts
		c.LeaseGrace = 2 * time.Second
		c.HeartbeatInterval = 500 * time.Millisecond
	})
	bootstrap(t, dir, b.db)
	behaviours := []struct {
		server   string
		behavior int
		end      gb.LeaseEnd // how its attempts end
	}{
		{"echo", 6, "ok"},
		{"fatal", 3, "fatal"},
		{"temporary", 4, "temporary"},
		{"invalid", 5, "invalid"},
		{"hang", 1, "expired"},
	}
	endOf := map[string]gb.LeaseEnd{}
	var names []string
	for _, bh := range behaviours {
		names = append(names, bh.server)
		endOf[bh.server] = bh.end
	}
	registerRel(t, dir, b.GRPCAddr(), 4, names...)
	gs := map[string]*graderdProc{}
	for _, bh := range behaviours {
		gs[bh.server] = runGraderd(t, dir, b.GRPCAddr(), bh.server, graderdOpts{behavior: bh.behavior, slots: 4})
	}

	c := demoClient(t, dir, b.HTTPAddr())
	var ids []int64
	data := map[int64][]byte{}
	for start := 0; start < jobs; start += batch {
		var js []platformclient.Job
		for i := start; i < start+batch; i++ {
			js = append(js, platformclient.Job{Data: json.RawMessage(fmt.Sprintf(`{"n":%d,"text":"job %d"}`, i, i)),
				Name: fmt.Sprintf("mix-%d", i), Tags: []string{relTag}, TimeoutSec: 2})
		}
		r, err := c.SendJobs(ctxTimeout(t, 30*time.Second), js)
		if err != nil {
			t.Fatalf("SendJobs %d..%d: %v", start, start+batch-1, err)
		}
		if len(r.GetJobs()) != batch {
			t.Fatalf("SendJobs queued %d jobs; want %d", len(r.GetJobs()), batch)
		}
		for i, s := range r.GetJobs() {
			ids = append(ids, s.GetJobId())
			data[s.GetJobId()] = []byte(fmt.Sprintf(`{"n":%d,"text":"job %d"}`, start+i, start+i))
		}
	}

	ctx := ctxTimeout(t, 90*time.Second)
	for _, id := range ids {
		if _, err := b.Dispatcher().WaitFinal(ctx, id); err != nil {
			t.Fatalf("waiting for job %d: %v (stats %+v)", id, err, b.Dispatcher().Stats())
		}
	}
	for _, st := range []gb.JobState{gb.JobQueued, gb.JobAssigned} {
		left, err := b.DB().ListJobs(t.Context(), store.JobFilter{State: st, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("%d+ job(s) still %s, e.g. job %d", len(left), st, left[0].ID)
		}
	}

	counts := map[string]int{}
	perServer := map[string]int{}
	attempts := 0
	for _, id := range ids {
		j, err := b.DB().GetJob(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		attempts += len(j.History)
		for _, a := range j.History {
			perServer[a.Server]++
		}
		if msg := checkMixedJob(j, data[id], endOf, maxAttempts); msg != "" {
			counts["bad"]++
			if counts["bad"] <= 10 {
				t.Errorf("job %d: %s\n  state %s, error %q, result %q\n  history %+v", id, msg, j.State, j.Error, j.Result, j.History)
			}
			continue
		}
		switch {
		case j.State == gb.JobDone:
			counts["done"]++
		case j.History[len(j.History)-1].End == "fatal":
			counts["fatal"]++
		default:
			counts["gave up: "+string(j.History[len(j.History)-1].End)]++
		}
	}
	t.Logf("outcomes of %d jobs in %d attempts: %v; attempts per server: %v", jobs, attempts, counts, perServer)
	if counts["bad"] > 0 {
		t.Fatalf("%d job(s) broke the rules", counts["bad"])
	}
	// The mix really was mixed: each rule was exercised.
	for _, k := range []string{"done", "fatal"} {
		if counts[k] == 0 {
			t.Errorf("no job ended %s; the mix did not exercise it", k)
		}
	}
	for _, n := range names {
		if perServer[n] == 0 {
			t.Errorf("server %s ran no attempt; the mix did not exercise it", n)
		}
	}
	if counts["gave up: temporary"]+counts["gave up: invalid"]+counts["gave up: expired"] == 0 {
		t.Error("no job used up its attempts; the mix did not exercise the limit")
	}
	st := b.Dispatcher().Stats()
	if st.Queued != 0 || st.Running != 0 {
		t.Errorf("dispatcher still holds work: %+v", st)
	}
	if st.Assigned != uint64(attempts) {
		t.Errorf("dispatcher made %d assignments but the jobs record %d attempts", st.Assigned, attempts)
	}
	for _, n := range names {
		if ls := gs[n].lines("panic"); len(ls) > 0 {
			t.Errorf("graderd %s panicked:\n%s", n, strings.Join(ls, "\n"))
		}
	}
}

// checkMixedJob checks one final job of TestThousandJobsMixedBehaviours
// against the rules, and returns what is wrong, or "".
func checkMixedJob(j gb.Job, data []byte, endOf map[string]gb.LeaseEnd, maxAttempts int) string {
	h := j.History
	if len(h) == 0 || len(h) != j.Attempts {
		return fmt.Sprintf("%d attempt(s) recorded for an attempt count of %d", len(h), j.Attempts)
	}
	if j.Attempts > maxAttempts {
		return fmt.Sprintf("%d attempts, over the limit of %d", j.Attempts, maxAttempts)
	}
	if n := finalEvents(j); n != 1 {
		return fmt.Sprintf("became final %d times", n)
	}
	finals := 0
	for i, a := range h {
		if a.Number != i+1 {
			return fmt.Sprintf("attempt %d is numbered %d", i+1, a.Number)
		}
		if a.End == "" || a.EndedAt.IsZero() {
			return fmt.Sprintf("attempt %d on %s never ended", a.Number, a.Server)
		}
		if want := endOf[a.Server]; a.End != want {
			return fmt.Sprintf("attempt %d on %s ended %q; that server's attempts end %q", a.Number, a.Server, a.End, want)
		}
		if a.End == "ok" || a.End == "fatal" {
			finals++
		}
		// A requeued job prefers another server, and every server of its
		// type stays connected: it never goes straight back.
		if i > 0 && h[i-1].Server == a.Server {
			return fmt.Sprintf("attempts %d and %d both ran on %s", i, i+1, a.Server)
		}
	}
	last := h[len(h)-1]
	if finals > 1 || (finals == 1 && last.End != "ok" && last.End != "fatal") {
		return fmt.Sprintf("%d attempts ended with a final result, not only the last", finals)
	}
	switch {
	case j.State == gb.JobDone:
		if last.End != "ok" {
			return "done without an ok attempt"
		}
		if !sameJSON(j.Result, data) {
			return fmt.Sprintf("result %s is not the echoed jobdata %s", j.Result, data)
		}
	case j.State == gb.JobFailed && last.End == "fatal":
		if j.Error != "testbehavior 3" || !sameJSON(j.Result, []byte(`{"error":"testbehavior 3"}`)) {
			return "a FATAL job does not carry the grader's error and result"
		}
	case j.State == gb.JobFailed:
		want := fmt.Sprintf("gave up after %d attempt(s); last: %s: ", maxAttempts, last.End)
		if j.Attempts != maxAttempts || !strings.HasPrefix(j.Error, want) {
			return fmt.Sprintf("failed with %q after %d attempt(s); want an error starting %q after %d", j.Error, j.Attempts, want, maxAttempts)
		}
		if len(j.Result) != 0 {
			return "a job that gave up has a result"
		}
	default:
		return "not done or failed"
	}
	return ""
}

// sameJSON reports whether a and b hold the same JSON value.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}
