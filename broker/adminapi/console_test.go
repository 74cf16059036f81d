package adminapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// consoleSetup is an admin API with two platforms, tags and jobs of each.
type consoleSetup struct {
	env                *adminapitest.Env
	c                  gradebrokerv1.AdminServiceClient
	moocA, moocB, cont int64
}

func newConsoleSetup(t *testing.T) *consoleSetup {
	t.Helper()
	env, c := setup(t)
	ctx := context.Background()
	for _, tag := range []string{"course-a", "course-b", "py"} {
		if _, err := c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: tag}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py", Tags: []string{"course-a", "course-b", "py"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"mooc", "contest"} {
		if _, err := c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: p, PublicKeyPem: adminapitest.PublicKeyPEM(t),
			ReturnUrl: "https://" + p + ".example/cb"}); err != nil {
			t.Fatal(err)
		}
	}
	s := &consoleSetup{env: env, c: c}
	s.moocA = env.InsertJob(t, "mooc", "a", "course-a", "py")
	s.moocB = env.InsertJob(t, "mooc", "b", "course-b", "py")
	s.cont = env.InsertJob(t, "contest", "c", "py")
	return s
}

// login asks for a link over the admin API and opens its session, as the
// console does with the posted token.
func (s *consoleSetup) login(t *testing.T, req *gradebrokerv1.ConsoleLoginRequest) (string, adminapi.Principal) {
	t.Helper()
	ctx := context.Background()
	resp, err := s.c.ConsoleLogin(ctx, req)
	if err != nil {
		t.Fatalf("ConsoleLogin: %v", err)
	}
	u, err := url.Parse(resp.GetUrl())
	if err != nil || !strings.HasPrefix(resp.GetUrl(), adminapitest.ConsoleURL+"/login?token=") {
		t.Fatalf("login URL %q does not lead to the console's login page", resp.GetUrl())
	}
	secret, _, err := s.env.Service.StartConsoleSession(ctx, u.Query().Get("token"))
	if err != nil {
		t.Fatalf("StartConsoleSession: %v", err)
	}
	p, _, err := s.env.Service.ConsoleSession(ctx, secret)
	if err != nil {
		t.Fatalf("ConsoleSession: %v", err)
	}
	return secret, p
}

func jobIDs(jobs []*gradebrokerv1.Job) []int64 {
	var out []int64
	for _, j := range jobs {
		out = append(out, j.GetId())
	}
	return out
}

func TestConsoleLoginLinkIsSingleUseAndExpires(t *testing.T) {
	t.Parallel()
	s := newConsoleSetup(t)
	ctx := context.Background()
	resp, err := s.c.ConsoleLogin(ctx, &gradebrokerv1.ConsoleLoginRequest{})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(resp.GetUrl())
	tok := u.Query().Get("token")
	if strings.Contains(s.env.Logs(), tok) {
		t.Error("the login token was logged")
	}
	secret, sess, err := s.env.Service.StartConsoleSession(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Name != adminapitest.OperatorName || sess.Role != "operator" || sess.Via != "link" {
		t.Errorf("session = %+v; want alice's operator session from a link", sess)
	}
	if _, _, err := s.env.Service.StartConsoleSession(ctx, tok); !errors.Is(err, store.ErrLoginUsed) {
		t.Errorf("second use of the link = %v; want ErrLoginUsed", err)
	}
	p, _, err := s.env.Service.ConsoleSession(ctx, secret)
	if err != nil || p.Actor() != "console:alice" || p.Role != adminapi.RoleOperator {
		t.Errorf("ConsoleSession = %+v, %v; want alice's operator principal, actor console:alice", p, err)
	}

	// An expired link opens nothing.
	resp, err = s.c.ConsoleLogin(ctx, &gradebrokerv1.ConsoleLoginRequest{})
	if err != nil {
		t.Fatal(err)
	}
	u, _ = url.Parse(resp.GetUrl())
	later := resp.GetExpiresAt().AsTime().Add(time.Second)
	adminapi.SetNow(s.env.Service, func() time.Time { return later })
	if _, _, err := s.env.Service.StartConsoleSession(ctx, u.Query().Get("token")); !errors.Is(err, broker.ErrUnauthenticated) ||
		!strings.Contains(err.Error(), "expired") {
		t.Errorf("expired link = %v; want unauthenticated, expired", err)
	}
	// The session ends at its own expiry too.
	adminapi.SetNow(s.env.Service, func() time.Time { return later.Add(13 * time.Hour) })
	if _, _, err := s.env.Service.ConsoleSession(ctx, secret); !errors.Is(err, adminapi.ErrNoSession) {
		t.Errorf("session past its expiry = %v; want ErrNoSession", err)
	}
}

func TestConsoleSessionsRevokedAndCSRF(t *testing.T) {
	t.Parallel()
	s := newConsoleSetup(t)
	ctx := context.Background()
	secret, p := s.login(t, &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "TA Bob", Tags: []string{"course-a"},
		SessionTtl: durationpb.New(time.Hour)})
	if p.Role != adminapi.RoleViewer || p.Name != "TA Bob" || len(p.Tags) != 1 {
		t.Fatalf("viewer principal = %+v", p)
	}
	csrf := adminapi.ConsoleCSRF(secret)
	if !adminapi.CheckConsoleCSRF(secret, csrf) || adminapi.CheckConsoleCSRF(secret, csrf+"x") ||
		adminapi.CheckConsoleCSRF("other", csrf) || adminapi.CheckConsoleCSRF(secret, "") {
		t.Error("CSRF check accepts a wrong token or refuses the right one")
	}
	list, err := s.c.ListConsoleSessions(ctx, &gradebrokerv1.ListConsoleSessionsRequest{})
	if err != nil || len(list.GetSessions()) != 1 || list.GetSessions()[0].GetCreatedBy() != adminapitest.OperatorName {
		t.Fatalf("ListConsoleSessions = %v, %v", list, err)
	}
	if _, err := s.c.RevokeConsoleSession(ctx, &gradebrokerv1.RevokeConsoleSessionRequest{Id: p.SessionID}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.env.Service.ConsoleSession(ctx, secret); !errors.Is(err, adminapi.ErrNoSession) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked session = %v; want ErrNoSession, revoked", err)
	}
	if _, _, err := s.env.Service.ConsoleSession(ctx, "not-a-session"); !errors.Is(err, adminapi.ErrNoSession) {
		t.Errorf("unknown secret = %v; want ErrNoSession", err)
	}
}

func TestConsoleLoginChecks(t *testing.T) {
	t.Parallel()
	s := newConsoleSetup(t)
	ctx := context.Background()
	for _, c := range []struct {
		name string
		req  *gradebrokerv1.ConsoleLoginRequest
		code codes.Code
		want string
	}{
		{"viewer without a name", &gradebrokerv1.ConsoleLoginRequest{Viewer: true}, codes.InvalidArgument, "name"},
		{"operator with a scope", &gradebrokerv1.ConsoleLoginRequest{Platform: "mooc"}, codes.InvalidArgument, "--viewer"},
		{"both scopes", &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "x", Platform: "mooc", Tags: []string{"py"}}, codes.InvalidArgument, "not both"},
		{"unknown platform", &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "x", Platform: "nope"}, codes.NotFound, "nope"},
		{"unknown tag", &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "x", Tags: []string{"nope"}}, codes.InvalidArgument, "nope"},
		{"control characters", &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "a\x1bb"}, codes.InvalidArgument, "printable"},
		{"year-long session", &gradebrokerv1.ConsoleLoginRequest{SessionTtl: durationpb.New(365 * 24 * time.Hour)}, codes.InvalidArgument, "between"},
	} {
		_, err := s.c.ConsoleLogin(ctx, c.req)
		wantCode(t, c.name, err, c.code, c.want)
	}
	// A console session cannot mint more sessions, even an operator's.
	_, op := s.login(t, &gradebrokerv1.ConsoleLoginRequest{})
	_, err := s.env.Service.ConsoleLogin(adminapi.WithPrincipal(ctx, op), &gradebrokerv1.ConsoleLoginRequest{})
	wantCode(t, "console-login from a console session", err, codes.PermissionDenied, "admin API")

	// A client certificate opens an operator's session only if registered.
	secret, sess, err := s.env.Service.StartCertSession(ctx, certs.IdentityOf(s.env.Operator.Cert))
	if err != nil || secret == "" || sess.Via != "certificate" || sess.Name != adminapitest.OperatorName {
		t.Errorf("StartCertSession(operator) = %+v, %v", sess, err)
	}
	stranger := s.env.CA.Client(t, certs.RoleOperator, "mallory")
	if _, _, err := s.env.Service.StartCertSession(ctx, certs.IdentityOf(stranger.Cert)); !errors.Is(err, broker.ErrUnauthenticated) {
		t.Errorf("StartCertSession(unregistered) = %v; want unauthenticated", err)
	}
	server := s.env.CA.Client(t, certs.RoleServer, "grader1")
	if _, _, err := s.env.Service.StartCertSession(ctx, certs.IdentityOf(server.Cert)); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("StartCertSession(server certificate) = %v; want permission denied", err)
	}
}

func TestViewerRolesAndScopes(t *testing.T) {
	t.Parallel()
	s := newConsoleSetup(t)
	ctx := context.Background()
	svc := s.env.Service
	_, viewer := s.login(t, &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "auditor"})
	_, moocOnly := s.login(t, &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "mooc staff", Platform: "mooc"})
	_, courseA := s.login(t, &gradebrokerv1.ConsoleLoginRequest{Viewer: true, Name: "TA Bob", Tags: []string{"course-a"}})
	as := func(p adminapi.Principal) context.Context { return adminapi.WithPrincipal(ctx, p) }

	// A viewer changes nothing.
	_, err := svc.RequeueJob(as(viewer), &gradebrokerv1.RequeueJobRequest{Id: s.moocA})
	wantCode(t, "viewer requeue", err, codes.PermissionDenied, "viewer")
	_, err = svc.DrainServer(as(viewer), &gradebrokerv1.DrainServerRequest{Name: "g"})
	wantCode(t, "viewer drain", err, codes.PermissionDenied)
	_, err = svc.AddTag(as(viewer), &gradebrokerv1.AddTagRequest{Name: "x"})
	wantCode(t, "viewer add tag", err, codes.PermissionDenied)
	_, err = svc.BulkJobAction(as(viewer), &gradebrokerv1.BulkJobActionRequest{Action: gradebrokerv1.BulkAction_BULK_ACTION_CANCEL, MaxId: 10})
	wantCode(t, "viewer bulk", err, codes.PermissionDenied)
	if calls := s.env.Dispatcher.Calls(); len(calls) != 0 {
		t.Errorf("the dispatcher was called for a viewer: %v", calls)
	}
	// An unscoped viewer sees the whole broker; a scoped one its jobs only.
	if _, err := svc.ListServers(as(viewer), &gradebrokerv1.ListServersRequest{}); err != nil {
		t.Errorf("unscoped viewer ListServers: %v", err)
	}
	_, err = svc.ListServers(as(moocOnly), &gradebrokerv1.ListServersRequest{})
	wantCode(t, "scoped viewer ListServers", err, codes.PermissionDenied, "platform mooc")
	_, err = svc.GetQueueStats(as(courseA), &gradebrokerv1.GetQueueStatsRequest{})
	wantCode(t, "scoped viewer queue", err, codes.PermissionDenied, "course-a")

	for _, c := range []struct {
		who  adminapi.Principal
		req  *gradebrokerv1.ListJobsRequest
		want []int64
	}{
		{viewer, &gradebrokerv1.ListJobsRequest{}, []int64{s.cont, s.moocB, s.moocA}},
		{moocOnly, &gradebrokerv1.ListJobsRequest{}, []int64{s.moocB, s.moocA}},
		{moocOnly, &gradebrokerv1.ListJobsRequest{Tag: "py"}, []int64{s.moocB, s.moocA}},
		{courseA, &gradebrokerv1.ListJobsRequest{}, []int64{s.moocA}},
		{courseA, &gradebrokerv1.ListJobsRequest{Tag: "py"}, []int64{s.moocA}},
	} {
		resp, err := svc.ListJobs(as(c.who), c.req)
		if err != nil {
			t.Fatalf("%s ListJobs(%v): %v", c.who.Name, c.req, err)
		}
		if got := jobIDs(resp.GetJobs()); !equalIDs(got, c.want) {
			t.Errorf("%s ListJobs(%v) = %v; want %v", c.who.Name, c.req, got, c.want)
		}
	}
	_, err = svc.ListJobs(as(moocOnly), &gradebrokerv1.ListJobsRequest{Platform: "contest"})
	wantCode(t, "platform viewer asking for another platform", err, codes.PermissionDenied)
	_, err = svc.GetJob(as(moocOnly), &gradebrokerv1.AdminServiceGetJobRequest{Id: s.cont})
	wantCode(t, "platform viewer opening another platform's job", err, codes.NotFound)
	_, err = svc.GetJob(as(courseA), &gradebrokerv1.AdminServiceGetJobRequest{Id: s.moocB})
	wantCode(t, "tag viewer opening another course's job", err, codes.NotFound)
	if _, err := svc.GetJob(as(courseA), &gradebrokerv1.AdminServiceGetJobRequest{Id: s.moocA}); err != nil {
		t.Errorf("tag viewer opening its own job: %v", err)
	}
	_, err = svc.ListDeliveries(as(courseA), &gradebrokerv1.ListDeliveriesRequest{})
	wantCode(t, "tag viewer listing all deliveries", err, codes.PermissionDenied)
	_, err = svc.ListDeliveries(as(courseA), &gradebrokerv1.ListDeliveriesRequest{JobId: s.moocB})
	wantCode(t, "tag viewer listing another course's deliveries", err, codes.NotFound)
	n, err := svc.CountJobs(as(moocOnly), &gradebrokerv1.CountJobsRequest{})
	if err != nil || n.GetCount() != 2 {
		t.Errorf("platform viewer CountJobs = %v, %v; want 2", n, err)
	}
}

func equalIDs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBulkJobAction(t *testing.T) {
	t.Parallel()
	s := newConsoleSetup(t)
	ctx := context.Background()
	_, op := s.login(t, &gradebrokerv1.ConsoleLoginRequest{})
	as := adminapi.WithPrincipal(ctx, op)
	later := s.env.InsertJob(t, "mooc", "late", "py")
	filter := &gradebrokerv1.JobFilter{Platform: "mooc"}
	n, err := s.env.Service.CountJobs(as, &gradebrokerv1.CountJobsRequest{Filter: filter})
	if err != nil || n.GetCount() != 3 || n.GetMaxId() != later {
		t.Fatalf("CountJobs = %v, %v; want 3 up to job %d", n, err, later)
	}
	// A job submitted after the confirmation is not touched.
	s.env.InsertJob(t, "mooc", "after the count", "py")
	resp, err := s.env.Service.BulkJobAction(as, &gradebrokerv1.BulkJobActionRequest{Filter: filter,
		Action: gradebrokerv1.BulkAction_BULK_ACTION_CANCEL, MaxId: n.GetMaxId()})
	if err != nil || resp.GetDone() != 3 {
		t.Fatalf("BulkJobAction = %v, %v; want 3 done", resp, err)
	}
	got := map[int64]string{}
	for _, c := range s.env.Dispatcher.Calls() {
		if c.Method == "CancelJob" {
			got[c.JobID] = c.Actor
		}
	}
	want := map[int64]string{s.moocA: "console:alice", s.moocB: "console:alice", later: "console:alice"}
	if len(got) != len(want) || got[s.moocA] != want[s.moocA] || got[later] != want[later] || got[s.moocB] != want[s.moocB] {
		t.Errorf("cancelled %v; want %v", got, want)
	}
	// Jobs the action does not apply to are counted, not fatal.
	s.env.Dispatcher.SetJobError(fmt.Errorf("%w: job is done", broker.ErrFailedPrecondition))
	resp, err = s.env.Service.BulkJobAction(as, &gradebrokerv1.BulkJobActionRequest{Filter: filter,
		Action: gradebrokerv1.BulkAction_BULK_ACTION_REQUEUE, MaxId: n.GetMaxId()})
	if err != nil || resp.GetSkipped() != 3 || resp.GetFirstSkipReason() == "" {
		t.Errorf("BulkJobAction with every job refused = %v, %v; want 3 skipped with a reason", resp, err)
	}
	_, err = s.env.Service.BulkJobAction(as, &gradebrokerv1.BulkJobActionRequest{Filter: filter, Action: gradebrokerv1.BulkAction_BULK_ACTION_REQUEUE})
	wantCode(t, "bulk without max_id", err, codes.InvalidArgument, "max_id")
}

// fakeSubmitter records the jobs SubmitTestJob queues.
type fakeSubmitter struct {
	mu    sync.Mutex
	jobs  []broker.NewJob
	actor string
}

func (f *fakeSubmitter) Submit(_ context.Context, jobs []broker.NewJob, _ *dispatch.TokenUse, actor string) ([]store.Inserted, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobs, f.actor = append(f.jobs, jobs...), actor
	return []store.Inserted{{ID: 99}}, nil
}

func TestSubmitTestJob(t *testing.T) {
	t.Parallel()
	s := newConsoleSetup(t)
	ctx := context.Background()
	sub := &fakeSubmitter{}
	s.env.Service.SetSubmitter(sub)
	resp, err := s.c.SubmitTestJob(ctx, &gradebrokerv1.SubmitTestJobRequest{Tags: []string{"py", " py"}, Jobdata: ` {"a": 1} `, Name: "try"})
	if err != nil || resp.GetJobId() != 99 {
		t.Fatalf("SubmitTestJob = %v, %v", resp, err)
	}
	console, err := s.env.DB.PlatformByName(ctx, broker.ConsolePlatform)
	if err != nil {
		t.Fatal(err)
	}
	j := sub.jobs[0]
	if j.PlatformID != console.ID || string(j.JobData) != `{"a": 1}` || len(j.Tags) != 1 || len(j.TypeIDs) != 1 || sub.actor != "operator:alice" {
		t.Errorf("queued %+v as %s; want the console platform's job with tag py, one type, by operator:alice", j, sub.actor)
	}
	for _, c := range []struct {
		req  *gradebrokerv1.SubmitTestJobRequest
		want string
	}{
		{&gradebrokerv1.SubmitTestJobRequest{Tags: []string{"py"}, Jobdata: `"text"`}, "JSON object"},
		{&gradebrokerv1.SubmitTestJobRequest{Tags: []string{"gpu"}, Jobdata: `{}`}, "unknown tag"},
		{&gradebrokerv1.SubmitTestJobRequest{Tags: []string{"py"}, Jobdata: `{}`, Priority: 5000}, "priority"},
	} {
		_, err := s.c.SubmitTestJob(ctx, c.req)
		wantCode(t, c.want, err, codes.InvalidArgument, c.want)
	}
	// The built-in platform is out of reach of the registry calls.
	_, err = s.c.RemovePlatform(ctx, &gradebrokerv1.RemovePlatformRequest{Name: broker.ConsolePlatform})
	wantCode(t, "removing the console's platform", err, codes.InvalidArgument)
}
