package admincli_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/certs"
)

func TestIncidentCommands(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	ok(t, run(t, env, "type", "add", "py"))
	g1 := env.CA.Client(t, certs.RoleServer, "g1")
	ok(t, run(t, env, "server", "add", "g1", "--cert", g1.CertFile, "--type", "py", "--max-jobs", "4"))

	env.Dispatcher.SetQueueStats(dispatch.QueueStats{Waiting: 9, Running: 4, Types: []dispatch.TypeQueue{
		{Type: "gpu", Tags: []string{"cuda"}, Waiting: 2, OldestAge: 17*time.Minute + 300*time.Millisecond},
		{Type: "py", Tags: []string{"python3", "numpy"}, Waiting: 7, Running: 4, Connected: 2, Drained: 1, FreeSlots: 3, OldestAge: 42 * time.Second},
	}})
	r := run(t, env, "queue")
	ok(t, r, "TYPE", "WAITING", "RUNNING", "CONNECTED", "DRAINED", "FREE SLOTS", "OLDEST WAIT")
	for _, row := range [][]string{
		{"gpu", "cuda", "2", "0", "0", "0", "0", "17m0s"},
		{"py", "python3,", "numpy", "7", "4", "2", "1", "3", "42s"},
		{"TOTAL", "9", "4"},
	} {
		if !regexpLine(r.stdout, row...) {
			t.Errorf("queue: no row %v:\n%s", row, r.stdout)
		}
	}

	env.Dispatcher.SetStatus("g1", adminapitest.Status{Connected: true, Slots: 4, Running: 2, RequeueOnDrop: 2})
	ok(t, run(t, env, "server", "drain", "g1"), "server g1 is drained: no new jobs; 2 running job(s) finish")
	r = run(t, env, "server", "list")
	if !regexpLine(r.stdout, "g1", "py", "yes", "yes") {
		t.Errorf("server list does not show g1 connected and drained:\n%s", r.stdout)
	}
	ok(t, run(t, env, "server", "requeue", "g1"), "requeued 2 running job(s) of server g1")
	ok(t, run(t, env, "server", "drain", "g1", "--undrain"), "server g1 takes new jobs again")

	r = run(t, env, "server", "drain", "nope")
	r.want(t, 1, nil, []string{`server "nope"`})
	r = run(t, env, "server", "requeue")
	r.want(t, 2, nil, []string{"missing NAME", "Usage: broker admin server requeue NAME"})

	actor := "operator:" + adminapitest.OperatorName
	var got []adminapitest.Call
	for _, c := range env.Dispatcher.Calls() {
		if c.Method != "ServerChanged" {
			got = append(got, c)
		}
	}
	want := []adminapitest.Call{
		{Method: "QueueStats"},
		{Method: "DrainServer", Name: "g1", Actor: actor},
		{Method: "RequeueServerJobs", Name: "g1", Actor: actor},
		{Method: "UndrainServer", Name: "g1", Actor: actor},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}

	// The commands are listed with the server commands.
	r = runRaw(t, "server", "-h")
	ok(t, r, "requeue", "drain")
	r = runRaw(t, "help")
	ok(t, r, "queue", "Show the queue per server type")
}
