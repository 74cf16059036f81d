package adminapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// addServer registers type "py" and server name through the API.
func addServer(t *testing.T, env *adminapitest.Env, c gradebrokerv1.AdminServiceClient, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py"}); err != nil && status.Code(err) != codes.AlreadyExists {
		t.Fatal(err)
	}
	noErr(t)(c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: name, CertificatePem: readPEM(t, env.CA.Client(t, certs.RoleServer, name)), Type: "py"}))
}

func TestGetQueueStats(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	env.Dispatcher.SetQueueStats(dispatch.QueueStats{Waiting: 7, Running: 3, Types: []dispatch.TypeQueue{
		{Type: "gpu", Tags: []string{"cuda"}, Waiting: 2, OldestAge: 20 * time.Minute},
		{Type: "py", Tags: []string{"python3"}, Waiting: 5, Running: 3, Connected: 2, Drained: 1, FreeSlots: 1, OldestAge: 90 * time.Second},
		{Type: "idle", Tags: nil},
	}})
	got, err := c.GetQueueStats(ctx, &gradebrokerv1.GetQueueStatsRequest{})
	fatalIf(t, err)
	want := &gradebrokerv1.GetQueueStatsResponse{Waiting: 7, Running: 3, Types: []*gradebrokerv1.TypeQueueStats{
		{Type: "gpu", Tags: []string{"cuda"}, Waiting: 2, OldestWaiting: durationpb.New(20 * time.Minute)},
		{Type: "py", Tags: []string{"python3"}, Waiting: 5, Running: 3, Connected: 2, Drained: 1, FreeSlots: 1,
			OldestWaiting: durationpb.New(90 * time.Second)},
		{Type: "idle"},
	}}
	if diff := cmp.Diff(want, got, cmpProto); diff != "" {
		t.Errorf("GetQueueStats (-want +got):\n%s", diff)
	}
	env.Dispatcher.SetOpsError(wrapf(broker.ErrUnavailable, "shutting down"))
	_, err = c.GetQueueStats(ctx, &gradebrokerv1.GetQueueStatsRequest{})
	wantCode(t, "dispatcher unavailable", err, codes.Unavailable)
}

func TestRequeueServerJobs(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	addServer(t, env, c, "g1")
	env.Dispatcher.SetStatus("g1", adminapitest.Status{Connected: true, Running: 3, RequeueOnDrop: 3})
	resp, err := c.RequeueServerJobs(ctx, &gradebrokerv1.RequeueServerJobsRequest{Name: "g1"})
	fatalIf(t, err)
	if resp.GetRequeued() != 3 {
		t.Errorf("requeued = %d, want the dispatcher's 3", resp.GetRequeued())
	}
	_, err = c.RequeueServerJobs(ctx, &gradebrokerv1.RequeueServerJobsRequest{Name: "nope"})
	wantCode(t, "unknown server", err, codes.NotFound, `"nope"`)
	_, err = c.RequeueServerJobs(ctx, &gradebrokerv1.RequeueServerJobsRequest{Name: "bad name"})
	wantCode(t, "bad name", err, codes.InvalidArgument, "server name")

	actor := "operator:" + adminapitest.OperatorName
	want := []adminapitest.Call{
		{Method: "ServerChanged", Name: "g1"},
		{Method: "RequeueServerJobs", Name: "g1", Actor: actor},
	}
	if diff := cmp.Diff(want, env.Dispatcher.Calls()); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}
}

func TestDrainServer(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	addServer(t, env, c, "g1")
	addServer(t, env, c, "g2")
	env.Dispatcher.SetStatus("g1", adminapitest.Status{Connected: true, Slots: 0, Running: 2})

	resp, err := c.DrainServer(ctx, &gradebrokerv1.DrainServerRequest{Name: "g1"})
	fatalIf(t, err)
	if s := resp.GetServer(); s.GetName() != "g1" || !s.GetDrained() || s.GetRunning() != 2 {
		t.Errorf("DrainServer = %v, want g1 drained with its 2 running jobs", s)
	}
	list, err := c.ListServers(ctx, &gradebrokerv1.ListServersRequest{})
	fatalIf(t, err)
	drained := map[string]bool{}
	for _, s := range list.GetServers() {
		drained[s.GetName()] = s.GetDrained()
	}
	if diff := cmp.Diff(map[string]bool{"g1": true, "g2": false}, drained); diff != "" {
		t.Errorf("ListServers drained (-want +got):\n%s", diff)
	}

	resp, err = c.DrainServer(ctx, &gradebrokerv1.DrainServerRequest{Name: "g1", Undrain: true})
	fatalIf(t, err)
	if resp.GetServer().GetDrained() {
		t.Errorf("after undrain: %v", resp.GetServer())
	}
	_, err = c.DrainServer(ctx, &gradebrokerv1.DrainServerRequest{Name: "nope"})
	wantCode(t, "unknown server", err, codes.NotFound, `"nope"`)

	actor := "operator:" + adminapitest.OperatorName
	var got []adminapitest.Call
	for _, call := range env.Dispatcher.Calls() {
		if call.Method != "ServerChanged" {
			got = append(got, call)
		}
	}
	want := []adminapitest.Call{
		{Method: "DrainServer", Name: "g1", Actor: actor},
		{Method: "UndrainServer", Name: "g1", Actor: actor},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}
}
