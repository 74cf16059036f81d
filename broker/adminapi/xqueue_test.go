package adminapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The XQueue registry: queues map to tags and a type that covers them;
// users keep a bcrypt hash of a password that is never shown or logged;
// what goes of a pulling client's server (a queue or user removed, a
// queue no longer pulled) and what is retyped reaches the dispatcher.
func TestXQueueRegistry(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	noErr(t)(c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "py"}))
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "pytype", Tags: []string{"py"}}))
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "pytype2", Tags: []string{"py"}}))
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "bare"}))
	env.Service.SetProtocols(broker.ProtocolGradebroker, broker.ProtocolXQueue)
	noErr(t)(c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "edx", Protocol: "xqueue"}))

	q, err := c.AddXQueueQueue(ctx, &gradebrokerv1.AddXQueueQueueRequest{Name: "python", Tags: []string{"py"}, Type: "pytype",
		Timeout: durationpb.New(2 * time.Minute)})
	fatalIf(t, err)
	if got := q.GetQueue(); got.GetType() != "pytype" || got.GetTimeout().AsDuration() != 2*time.Minute || !cmp.Equal(got.GetTags(), []string{"py"}) {
		t.Errorf("AddXQueueQueue = %v", got)
	}
	_, err = c.AddXQueueQueue(ctx, &gradebrokerv1.AddXQueueQueueRequest{Name: "q2", Tags: []string{"py"}, Type: "bare"})
	wantCode(t, "a type not covering the tags", err, codes.InvalidArgument, "does not cover")
	_, err = c.AddXQueueQueue(ctx, &gradebrokerv1.AddXQueueQueueRequest{Name: "q2", Type: "pytype", Timeout: durationpb.New(-time.Second)})
	wantCode(t, "a negative timeout", err, codes.InvalidArgument, "timeout")

	const pw = "s3cret-password"
	u, err := c.AddXQueueUser(ctx, &gradebrokerv1.AddXQueueUserRequest{Name: "watcher", Password: pw, PullQueues: []string{"python"},
		MaxJobs: 3, CallbackHosts: []string{"lms.example.org"}, CallbackAuthUser: "xq", CallbackAuthPassword: "basic-pw"})
	fatalIf(t, err)
	want := &gradebrokerv1.XQueueUser{Name: "watcher", CallbackHosts: []string{"lms.example.org"}, CallbackAuthUser: "xq",
		CallbackAuthPasswordSet: true, PullQueues: []string{"python"}, MaxJobs: 3}
	got := u.GetUser()
	got.CreatedAt, got.UpdatedAt = nil, nil
	if !proto.Equal(want, got) {
		t.Errorf("AddXQueueUser = %v, want %v", got, want)
	}
	stored, err := env.DB.XQueueUserByName(ctx, "watcher")
	fatalIf(t, err)
	if bcrypt.CompareHashAndPassword([]byte(stored.PasswordHash), []byte(pw)) != nil {
		t.Error("the stored hash does not check the password")
	}
	for _, tc := range []struct {
		name string
		req  *gradebrokerv1.AddXQueueUserRequest
		msg  string
	}{
		{"a short password", &gradebrokerv1.AddXQueueUserRequest{Name: "u2", Password: "short"}, "8 to 72 bytes"},
		{"a host with a scheme", &gradebrokerv1.AddXQueueUserRequest{Name: "u2", Password: pw, CallbackHosts: []string{"https://lms"}}, "callback host"},
		{"a platform of another protocol", &gradebrokerv1.AddXQueueUserRequest{Name: "u2", Password: pw, Platform: "nope"}, "unknown platform"},
		{"an unknown queue", &gradebrokerv1.AddXQueueUserRequest{Name: "u2", Password: pw, PullQueues: []string{"nope"}}, "pull queue"},
	} {
		_, err := c.AddXQueueUser(ctx, tc.req)
		wantCode(t, tc.name, err, codes.InvalidArgument, tc.msg)
	}
	lms, err := c.AddXQueueUser(ctx, &gradebrokerv1.AddXQueueUserRequest{Name: "lms", Password: pw, Platform: "edx",
		HttpCallbackHosts: []string{"10.0.0.5"}})
	fatalIf(t, err)
	if lms.GetUser().GetPlatform() != "edx" {
		t.Errorf("user's platform = %q", lms.GetUser().GetPlatform())
	}

	// The watcher's first pull made its server; retyping the queue
	// retypes it, and it goes with the queue the user no longer pulls.
	user, err := env.DB.XQueueUserByName(ctx, "watcher")
	fatalIf(t, err)
	queue, err := env.DB.XQueueQueueByName(ctx, "python")
	fatalIf(t, err)
	srv, _, err := env.DB.Puller(ctx, user, queue)
	fatalIf(t, err)
	env.Dispatcher.SetQueueLength("python", 4)
	list, err := c.ListXQueueQueues(ctx, &gradebrokerv1.ListXQueueQueuesRequest{})
	fatalIf(t, err)
	if len(list.GetQueues()) != 1 || list.GetQueues()[0].GetWaiting() != 4 {
		t.Errorf("ListXQueueQueues = %v", list.GetQueues())
	}
	servers, err := c.ListServers(ctx, &gradebrokerv1.ListServersRequest{})
	fatalIf(t, err)
	if s := servers.GetServers(); len(s) != 1 || s[0].GetPull() != "xqueue" || s[0].GetCertificate() != nil || s[0].GetMaxConcurrentJobs() != 3 {
		t.Errorf("ListServers = %v, want the puller without a certificate", s)
	}
	noErr(t)(c.UpdateXQueueQueue(ctx, &gradebrokerv1.UpdateXQueueQueueRequest{Name: "python", Type: proto.String("pytype2")}))
	upd, err := c.UpdateXQueueUser(ctx, &gradebrokerv1.UpdateXQueueUserRequest{Name: "watcher", Password: proto.String("another password"),
		PullQueues: &gradebrokerv1.StringList{}})
	fatalIf(t, err)
	if !cmp.Equal(upd.GetRemovedServers(), []string{srv.Name}) {
		t.Errorf("UpdateXQueueUser removed %v", upd.GetRemovedServers())
	}
	srv2, _, err := env.DB.Puller(ctx, user, queue)
	fatalIf(t, err)
	rm, err := c.RemoveXQueueQueue(ctx, &gradebrokerv1.RemoveXQueueQueueRequest{Name: "python"})
	fatalIf(t, err)
	if !cmp.Equal(rm.GetRemovedServers(), []string{srv2.Name}) {
		t.Errorf("RemoveXQueueQueue removed %v", rm.GetRemovedServers())
	}
	wantCalls := []adminapitest.Call{{Method: "ServerChanged", Name: srv.Name}, {Method: "ServerRemoved", Name: srv.Name},
		{Method: "ServerRemoved", Name: srv2.Name}}
	if diff := cmp.Diff(wantCalls, env.Dispatcher.Calls()); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}
	users, err := c.ListXQueueUsers(ctx, &gradebrokerv1.ListXQueueUsersRequest{})
	fatalIf(t, err)
	if len(users.GetUsers()) != 2 {
		t.Errorf("ListXQueueUsers = %v", users.GetUsers())
	}
	noErr(t)(c.RemoveXQueueUser(ctx, &gradebrokerv1.RemoveXQueueUserRequest{Name: "lms"}))
	_, err = c.RemoveXQueueUser(ctx, &gradebrokerv1.RemoveXQueueUserRequest{Name: "lms"})
	wantCode(t, "removing a removed user", err, codes.NotFound, `"lms"`)
	for _, secret := range []string{pw, "another password", "basic-pw"} {
		if strings.Contains(env.Logs(), secret) {
			t.Errorf("the log holds a password: %q", secret)
		}
	}
}
