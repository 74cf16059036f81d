package adminapi_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/certs/certstest"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// setup starts an admin API and returns it with a client for its operator.
func setup(t *testing.T) (*adminapitest.Env, gradebrokerv1.AdminServiceClient) {
	t.Helper()
	env := adminapitest.Start(t)
	return env, env.OperatorClient(t)
}

func readPEM(t *testing.T, f certstest.Files) string {
	t.Helper()
	b, err := os.ReadFile(f.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantCode fails the test unless err is a status with code and a message
// containing every one of parts.
func wantCode(t *testing.T, what string, err error, code codes.Code, parts ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Errorf("%s: got %v %q, want %v", what, st.Code(), st.Message(), code)
		return
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("%s: message %q does not contain %q", what, st.Message(), p)
		}
	}
}

// noErr fails the test if a call returns an error: noErr(t)(c.AddTag(...)).
func noErr(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		fatalIf(t, err)
	}
}

func fatalIf(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestTagsAndTypesCRUD(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	noErr(t)(c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "python3", Description: "CPython 3.12"}))
	noErr(t)(c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "gpu"}))
	tags, err := c.ListTags(ctx, &gradebrokerv1.ListTagsRequest{})
	fatalIf(t, err)
	wantTags := []*gradebrokerv1.Tag{{Name: "gpu"}, {Name: "python3", Description: "CPython 3.12"}}
	if diff := cmp.Diff(wantTags, tags.GetTags(), cmpProto); diff != "" {
		t.Errorf("ListTags (-want +got):\n%s", diff)
	}

	st, err := c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py", Tags: []string{"python3"}})
	fatalIf(t, err)
	if diff := cmp.Diff([]string{"python3"}, st.GetServerType().GetTags()); diff != "" {
		t.Errorf("AddServerType tags (-want +got):\n%s", diff)
	}
	noErr(t)(c.UpdateServerType(ctx, &gradebrokerv1.UpdateServerTypeRequest{Name: "py", Tags: []string{"python3", "gpu"}}))
	types, err := c.ListServerTypes(ctx, &gradebrokerv1.ListServerTypesRequest{})
	fatalIf(t, err)
	wantTypes := []*gradebrokerv1.ServerType{{Name: "py", Tags: []string{"gpu", "python3"}}}
	if diff := cmp.Diff(wantTypes, types.GetServerTypes(), cmpProto); diff != "" {
		t.Errorf("ListServerTypes (-want +got):\n%s", diff)
	}

	_, err = c.RemoveTag(ctx, &gradebrokerv1.RemoveTagRequest{Name: "gpu"})
	wantCode(t, "remove tag in use", err, codes.FailedPrecondition, `"gpu"`, "server type py")

	noErr(t)(c.RemoveServerType(ctx, &gradebrokerv1.RemoveServerTypeRequest{Name: "py"}))
	noErr(t)(c.RemoveTag(ctx, &gradebrokerv1.RemoveTagRequest{Name: "gpu"}))
	tags, err = c.ListTags(ctx, &gradebrokerv1.ListTagsRequest{})
	fatalIf(t, err)
	if len(tags.GetTags()) != 1 {
		t.Errorf("tags after removal = %v, want only python3", tags.GetTags())
	}
	_, err = c.RemoveTag(ctx, &gradebrokerv1.RemoveTagRequest{Name: "gpu"})
	wantCode(t, "remove missing tag", err, codes.NotFound, `"gpu"`)
	_, err = c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "python3"})
	wantCode(t, "tag twice", err, codes.AlreadyExists, "python3")
	_, err = c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "bad tag"})
	wantCode(t, "bad tag name", err, codes.InvalidArgument, "tag name")

	if !strings.Contains(env.Logs(), "operator="+adminapitest.OperatorName) {
		t.Errorf("the operator's name is not in the log:\n%s", env.Logs())
	}
}

// cmpProto compares protobuf messages by content.
var cmpProto = cmp.Comparer(proto.Equal)

func TestTypeWithUnknownTagNamesItAndWritesNothing(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx := context.Background()
	noErr(t)(c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "python3"}))
	_, err := c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py", Tags: []string{"python3", "cuda"}})
	wantCode(t, "type with unknown tag", err, codes.InvalidArgument, "cuda", "broker admin tag add")
	types, err := c.ListServerTypes(ctx, &gradebrokerv1.ListServerTypesRequest{})
	fatalIf(t, err)
	if len(types.GetServerTypes()) != 0 {
		t.Errorf("a failed AddServerType left %v", types.GetServerTypes())
	}
}

func TestServersCRUD(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	noErr(t)(c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "python3"}))
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py", Tags: []string{"python3"}}))
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "big", Tags: []string{"python3"}}))
	g1 := env.CA.Client(t, certs.RoleServer, "g1")

	added, err := c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g1", CertificatePem: readPEM(t, g1), Type: "py",
		WakeupUrl: "http://10.0.0.5:8080/wake"})
	fatalIf(t, err)
	srv := added.GetServer()
	if srv.GetMaxConcurrentJobs() != 1 {
		t.Errorf("max_concurrent_jobs defaulted to %d, want 1", srv.GetMaxConcurrentJobs())
	}
	id := certs.IdentityOf(g1.Cert)
	if srv.GetCertificate().GetFingerprintSha256() != id.Fingerprint || srv.GetCertificate().GetSerial() != id.Serial ||
		srv.GetCertificate().GetRole() != "server" || srv.GetCertificate().GetIssuer() != id.Issuer {
		t.Errorf("stored certificate = %v, want %+v", srv.GetCertificate(), id)
	}

	_, err = c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g1", CertificatePem: readPEM(t, env.CA.Client(t, certs.RoleServer, "g1")), Type: "py"})
	wantCode(t, "server registered twice", err, codes.AlreadyExists, `"g1"`)
	_, err = c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g2", CertificatePem: readPEM(t, g1), Type: "py"})
	wantCode(t, "same certificate twice", err, codes.AlreadyExists, `server "g1"`)

	seen := time.UnixMilli(1_700_000_000_000)
	env.Dispatcher.SetStatus("g1", adminapitest.Status{Connected: true, Slots: 4, Running: 2, LastSeen: seen, RequeueOnDrop: 2})
	list, err := c.ListServers(ctx, &gradebrokerv1.ListServersRequest{})
	fatalIf(t, err)
	if len(list.GetServers()) != 1 {
		t.Fatalf("ListServers = %v", list.GetServers())
	}
	got := list.GetServers()[0]
	if !got.GetConnected() || got.GetSlots() != 4 || got.GetRunning() != 2 || !got.GetLastSeen().AsTime().Equal(seen) ||
		got.GetWakeupUrl() != "http://10.0.0.5:8080/wake" || got.GetType() != "py" {
		t.Errorf("ListServers[0] = %v", got)
	}

	g1b := env.CA.Client(t, certs.RoleServer, "g1")
	upd, err := c.UpdateServer(ctx, &gradebrokerv1.UpdateServerRequest{Name: "g1", Type: proto.String("big"),
		MaxConcurrentJobs: proto.Uint32(8), CertificatePem: proto.String(readPEM(t, g1b)), WakeupUrl: proto.String("")})
	fatalIf(t, err)
	if s := upd.GetServer(); s.GetType() != "big" || s.GetMaxConcurrentJobs() != 8 || s.GetWakeupUrl() != "" ||
		s.GetCertificate().GetFingerprintSha256() != certs.IdentityOf(g1b.Cert).Fingerprint {
		t.Errorf("UpdateServer = %v", s)
	}
	_, err = c.UpdateServer(ctx, &gradebrokerv1.UpdateServerRequest{Name: "g1", MaxConcurrentJobs: proto.Uint32(0)})
	wantCode(t, "max jobs 0", err, codes.InvalidArgument, "at least 1")
	_, err = c.UpdateServer(ctx, &gradebrokerv1.UpdateServerRequest{Name: "nope", Type: proto.String("py")})
	wantCode(t, "update missing server", err, codes.NotFound, `"nope"`)

	rm, err := c.RemoveServer(ctx, &gradebrokerv1.RemoveServerRequest{Name: "g1"})
	fatalIf(t, err)
	if rm.GetRequeued() != 2 {
		t.Errorf("RemoveServer requeued = %d, want the dispatcher's 2", rm.GetRequeued())
	}
	_, err = c.RemoveServer(ctx, &gradebrokerv1.RemoveServerRequest{Name: "g1"})
	wantCode(t, "remove twice", err, codes.NotFound, `"g1"`)

	// The type change reaches the servers of that type; failed calls reach
	// the dispatcher not at all.
	noErr(t)(c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g3", CertificatePem: readPEM(t, env.CA.Client(t, certs.RoleServer, "g3")), Type: "py"}))
	noErr(t)(c.UpdateServerType(ctx, &gradebrokerv1.UpdateServerTypeRequest{Name: "py", Tags: nil}))
	want := []adminapitest.Call{
		{Method: "ServerChanged", Name: "g1"}, // added
		{Method: "ServerChanged", Name: "g1"}, // updated
		{Method: "ServerRemoved", Name: "g1"},
		{Method: "ServerChanged", Name: "g3"}, // added
		{Method: "ServerChanged", Name: "g3"}, // its type changed
	}
	if diff := cmp.Diff(want, env.Dispatcher.Calls()); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}
}

func TestServerCertificateChecks(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py"}))
	foreign := certstest.NewCA(t, "foreign")
	tests := []struct {
		name  string
		pem   string
		parts []string
	}{
		{"not from the CA", readPEM(t, foreign.Client(t, certs.RoleServer, "g1")), []string{"not signed by the broker's CA"}},
		{"expired", readPEM(t, env.CA.Issue(t, certstest.Leaf{CommonName: "g1", Role: certs.RoleServer,
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})), []string{"expired on"}},
		{"operator certificate", readPEM(t, env.CA.Client(t, certs.RoleOperator, "g1")), []string{"role operator", "OU=server"}},
		{"no role", readPEM(t, env.CA.Issue(t, certstest.Leaf{CommonName: "g1"})), []string{"no role", "OU=server"}},
		{"not PEM", "hello", []string{"server certificate", "BEGIN CERTIFICATE"}},
		{"empty", "", []string{"empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g1", CertificatePem: tt.pem, Type: "py"})
			wantCode(t, tt.name, err, codes.InvalidArgument, tt.parts...)
		})
	}
}

// A request that fails at any step leaves nothing behind and tells the
// dispatcher nothing.
func TestFailedAddWritesNothing(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	g1 := readPEM(t, env.CA.Client(t, certs.RoleServer, "g1"))
	_, err := c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g1", CertificatePem: g1, Type: "nope"})
	wantCode(t, "unknown type", err, codes.InvalidArgument, `"nope"`, "broker admin type add")
	_, err = c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "mooc", PublicKeyPem: adminapitest.PublicKeyPEM(t),
		ReturnUrl: "https://mooc.example/cb", ForceTag: "course-1"})
	wantCode(t, "unknown force tag", err, codes.InvalidArgument, "course-1")
	servers, err := c.ListServers(ctx, &gradebrokerv1.ListServersRequest{})
	fatalIf(t, err)
	platforms, err := c.ListPlatforms(ctx, &gradebrokerv1.ListPlatformsRequest{})
	fatalIf(t, err)
	if len(servers.GetServers()) != 0 || len(platforms.GetPlatforms()) != 0 {
		t.Errorf("failed adds left servers %v and platforms %v", servers.GetServers(), platforms.GetPlatforms())
	}
	if calls := env.Dispatcher.Calls(); len(calls) != 0 {
		t.Errorf("failed adds called the dispatcher: %v", calls)
	}
	// The certificate of the failed add is still free to register.
	noErr(t)(c.AddServerType(ctx, &gradebrokerv1.AddServerTypeRequest{Name: "py"}))
	noErr(t)(c.AddServer(ctx, &gradebrokerv1.AddServerRequest{Name: "g1", CertificatePem: g1, Type: "py"}))
}

func TestPlatformsCRUD(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	key := adminapitest.PublicKeyPEM(t)
	noErr(t)(c.AddTag(ctx, &gradebrokerv1.AddTagRequest{Name: "course-1"}))
	pcert := env.CA.Client(t, certs.RolePlatform, "mooc")
	added, err := c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "mooc", PublicKeyPem: key,
		ReturnUrl: "https://mooc.example/cb", RestrictPaths: []string{"/tasks/mooc"}, ForceTag: "course-1",
		CertificatePem: readPEM(t, pcert)})
	fatalIf(t, err)
	p := added.GetPlatform()
	if p.GetForceTag() != "course-1" || p.GetCertificate().GetRole() != "platform" || p.GetPublicKeyPem() != key ||
		!cmp.Equal(p.GetRestrictPaths(), []string{"/tasks/mooc"}) || p.GetCreatedAt() == nil {
		t.Errorf("AddPlatform = %v", p)
	}
	noErr(t)(c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "local", PublicKeyPem: key, ReturnUrl: "http://127.0.0.1:8000/cb"}))

	upd, err := c.UpdatePlatform(ctx, &gradebrokerv1.UpdatePlatformRequest{Name: "mooc", ReturnUrl: proto.String("https://new.example/cb"),
		RestrictPaths: &gradebrokerv1.StringList{}, ForceTag: proto.String(""), CertificatePem: proto.String("")})
	fatalIf(t, err)
	p = upd.GetPlatform()
	if p.GetReturnUrl() != "https://new.example/cb" || len(p.GetRestrictPaths()) != 0 || p.GetForceTag() != "" || p.GetCertificate() != nil {
		t.Errorf("UpdatePlatform = %v", p)
	}
	list, err := c.ListPlatforms(ctx, &gradebrokerv1.ListPlatformsRequest{})
	fatalIf(t, err)
	var names []string
	for _, p := range list.GetPlatforms() {
		names = append(names, p.GetName())
	}
	if diff := cmp.Diff([]string{"local", "mooc"}, names); diff != "" {
		t.Errorf("ListPlatforms names (-want +got):\n%s", diff)
	}

	env.InsertJob(t, "mooc", "ex1")
	_, err = c.RemovePlatform(ctx, &gradebrokerv1.RemovePlatformRequest{Name: "mooc"})
	wantCode(t, "remove platform with jobs", err, codes.FailedPrecondition, "unfinished")
	noErr(t)(c.RemovePlatform(ctx, &gradebrokerv1.RemovePlatformRequest{Name: "local"}))
	_, err = c.RemovePlatform(ctx, &gradebrokerv1.RemovePlatformRequest{Name: "local"})
	wantCode(t, "remove missing platform", err, codes.NotFound, `"local"`)
}

func TestPlatformValidation(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	key := adminapitest.PublicKeyPEM(t)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&weak.PublicKey)
	weakPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	ok := func(r *gradebrokerv1.AddPlatformRequest) *gradebrokerv1.AddPlatformRequest {
		if r.Name == "" {
			r.Name = "p"
		}
		if r.PublicKeyPem == "" {
			r.PublicKeyPem = key
		}
		if r.ReturnUrl == "" {
			r.ReturnUrl = "https://p.example/cb"
		}
		return r
	}
	tests := []struct {
		name  string
		req   *gradebrokerv1.AddPlatformRequest
		parts []string
	}{
		{"bad name", ok(&gradebrokerv1.AddPlatformRequest{Name: "-x"}), []string{"platform name"}},
		{"weak key", ok(&gradebrokerv1.AddPlatformRequest{PublicKeyPem: weakPEM}), []string{"1024"}},
		{"not a key", ok(&gradebrokerv1.AddPlatformRequest{PublicKeyPem: "nope"}), []string{"public key"}},
		{"http to a remote host", ok(&gradebrokerv1.AddPlatformRequest{ReturnUrl: "http://mooc.example/cb"}), []string{"https://"}},
		{"ftp", ok(&gradebrokerv1.AddPlatformRequest{ReturnUrl: "ftp://mooc.example/cb"}), []string{"https://"}},
		{"no host", ok(&gradebrokerv1.AddPlatformRequest{ReturnUrl: "https:///cb"}), []string{"no host"}},
		{"empty path", ok(&gradebrokerv1.AddPlatformRequest{RestrictPaths: []string{"/a", " "}}), []string{"restrict_paths[1]"}},
		{"server certificate", ok(&gradebrokerv1.AddPlatformRequest{CertificatePem: readPEM(t, env.CA.Client(t, certs.RoleServer, "p"))}), []string{"OU=platform"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := c.AddPlatform(ctx, tt.req)
			wantCode(t, tt.name, err, codes.InvalidArgument, tt.parts...)
		})
	}
	for _, u := range []string{"http://localhost:8000/cb", "http://[::1]/cb", "https://mooc.example/cb"} {
		if err := adminapiCheckReturnURL(ctx, c, key, u); err != nil {
			t.Errorf("return_url %s refused: %v", u, err)
		}
	}
}

// A platform's protocol must be one the broker delivers (SetProtocols);
// gradebroker's own needs a key and a return URL, another protocol neither,
// and switching a platform to gradebroker's needs them registered or given.
func TestPlatformProtocol(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	key := adminapitest.PublicKeyPEM(t)

	_, err := c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "lms", Protocol: "other"})
	wantCode(t, "a protocol the broker does not deliver", err, codes.InvalidArgument, `unknown protocol "other"`, "gradebroker")

	env.Service.SetProtocols(broker.ProtocolGradebroker, "other")
	added, err := c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "lms", Protocol: "other"})
	fatalIf(t, err)
	if added.GetPlatform().GetProtocol() != "other" {
		t.Errorf("AddPlatform(protocol other) = %v", added.GetPlatform())
	}
	_, err = c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "lms2", Protocol: "other", ReturnUrl: "http://lms.example/cb"})
	wantCode(t, "another protocol with a bad return URL", err, codes.InvalidArgument, "https://")
	_, err = c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "lms2", Protocol: "gradebroker", PublicKeyPem: key})
	wantCode(t, "gradebroker's protocol without a return URL", err, codes.InvalidArgument, "return_url is required")
	plain, err := c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "mooc", PublicKeyPem: key, ReturnUrl: "https://mooc.example/cb"})
	fatalIf(t, err)
	if plain.GetPlatform().GetProtocol() != "gradebroker" {
		t.Errorf("a platform added without a protocol has %q", plain.GetPlatform().GetProtocol())
	}

	_, err = c.UpdatePlatform(ctx, &gradebrokerv1.UpdatePlatformRequest{Name: "lms", Protocol: proto.String("gradebroker")})
	wantCode(t, "switch to gradebroker's protocol without a key", err, codes.InvalidArgument, "public key")
	_, err = c.UpdatePlatform(ctx, &gradebrokerv1.UpdatePlatformRequest{Name: "mooc", Protocol: proto.String("nope")})
	wantCode(t, "switch to an unknown protocol", err, codes.InvalidArgument, `unknown protocol "nope"`)
	upd, err := c.UpdatePlatform(ctx, &gradebrokerv1.UpdatePlatformRequest{Name: "lms", Protocol: proto.String("gradebroker"),
		PublicKeyPem: proto.String(key), ReturnUrl: proto.String("https://lms.example/cb")})
	fatalIf(t, err)
	if upd.GetPlatform().GetProtocol() != "gradebroker" {
		t.Errorf("UpdatePlatform(protocol gradebroker) = %v", upd.GetPlatform())
	}
	noErr(t)(c.UpdatePlatform(ctx, &gradebrokerv1.UpdatePlatformRequest{Name: "mooc", Protocol: proto.String("other")}))
	list, err := c.ListPlatforms(ctx, &gradebrokerv1.ListPlatformsRequest{})
	fatalIf(t, err)
	got := map[string]string{}
	for _, p := range list.GetPlatforms() {
		got[p.GetName()] = p.GetProtocol()
	}
	if diff := cmp.Diff(map[string]string{"lms": "gradebroker", "mooc": "other"}, got); diff != "" {
		t.Errorf("protocols listed (-want +got):\n%s", diff)
	}
}

// adminapiCheckReturnURL registers and removes a platform with return URL u.
func adminapiCheckReturnURL(ctx context.Context, c gradebrokerv1.AdminServiceClient, key, u string) error {
	if _, err := c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "url-check", PublicKeyPem: key, ReturnUrl: u}); err != nil {
		return err
	}
	_, err := c.RemovePlatform(ctx, &gradebrokerv1.RemovePlatformRequest{Name: "url-check"})
	return err
}

func TestOperatorsCRUD(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	bob := env.CA.Client(t, certs.RoleOperator, "bob")
	noErr(t)(c.AddOperator(ctx, &gradebrokerv1.AddOperatorRequest{Name: "bob", CertificatePem: readPEM(t, bob)}))
	_, err := c.AddOperator(ctx, &gradebrokerv1.AddOperatorRequest{Name: "carol", CertificatePem: readPEM(t, env.CA.Client(t, certs.RoleServer, "carol"))})
	wantCode(t, "server certificate as operator", err, codes.InvalidArgument, "OU=operator")
	_, err = c.AddOperator(ctx, &gradebrokerv1.AddOperatorRequest{Name: "bob2", CertificatePem: readPEM(t, bob)})
	wantCode(t, "same certificate twice", err, codes.AlreadyExists, `operator "bob"`)

	list, err := c.ListOperators(ctx, &gradebrokerv1.ListOperatorsRequest{})
	fatalIf(t, err)
	var names []string
	for _, o := range list.GetOperators() {
		names = append(names, o.GetName())
	}
	if diff := cmp.Diff([]string{"alice", "bob"}, names); diff != "" {
		t.Errorf("ListOperators (-want +got):\n%s", diff)
	}

	// Bob can now call, and may remove alice; then he is the last one.
	bobc := env.Client(t, bob)
	noErr(t)(bobc.RemoveOperator(ctx, &gradebrokerv1.RemoveOperatorRequest{Name: "alice"}))
	_, err = bobc.RemoveOperator(ctx, &gradebrokerv1.RemoveOperatorRequest{Name: "bob"})
	wantCode(t, "remove last operator", err, codes.FailedPrecondition, "last operator")
	// Alice's certificate no longer opens the API.
	_, err = c.ListTags(ctx, &gradebrokerv1.ListTagsRequest{})
	wantCode(t, "removed operator", err, codes.Unauthenticated, "not registered as an operator")
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	env, _ := setup(t)
	ctx := context.Background()
	foreign := certstest.NewCA(t, "foreign")
	tests := []struct {
		name  string
		cert  certstest.Files
		code  codes.Code
		parts []string
	}{
		{"server certificate", env.CA.Client(t, certs.RoleServer, "g1"), codes.PermissionDenied,
			[]string{"a server certificate (CN=g1) may not call the admin API"}},
		{"platform certificate", env.CA.Client(t, certs.RolePlatform, "mooc"), codes.PermissionDenied,
			[]string{"a platform certificate (CN=mooc)"}},
		{"certificate without a role", env.CA.Issue(t, certstest.Leaf{CommonName: "x"}), codes.PermissionDenied,
			[]string{"without a role"}},
		{"unregistered operator", env.CA.Client(t, certs.RoleOperator, "mallory"), codes.Unauthenticated,
			[]string{"CN=mallory", "is not registered as an operator", "broker admin bootstrap"}},
		// The TLS handshake itself refuses a certificate from another CA.
		{"foreign CA", foreign.Client(t, certs.RoleOperator, "alice"), codes.Unavailable, nil},
	}
	t.Run("refusals", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				_, err := env.Client(t, tt.cert).ListTags(ctx, &gradebrokerv1.ListTagsRequest{})
				wantCode(t, tt.name, err, tt.code, tt.parts...)
			})
		}
	})
	if !strings.Contains(env.Logs(), "admin call refused") {
		t.Errorf("refusals are not logged:\n%s", env.Logs())
	}
}

// The admin interceptor guards AdminService only: the same gRPC server
// carries GraderService, whose callers hold server certificates.
func TestInterceptorPassesOtherServices(t *testing.T) {
	t.Parallel()
	env, _ := setup(t)
	conn := env.Conn(t, env.CA.Client(t, certs.RoleServer, "g1"))
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check with a server certificate = %v, %v; want SERVING", resp, err)
	}
}

// A Service registered without the interceptor still refuses strangers.
func TestServiceFailsClosedWithoutInterceptor(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	svc := adminapi.New(env.DB, func() *x509.CertPool { return nil }, env.Dispatcher, nil)
	_, err := svc.ListTags(context.Background(), &gradebrokerv1.ListTagsRequest{})
	wantCode(t, "no peer", err, codes.Unauthenticated, "operator certificate")
}

func TestJobs(t *testing.T) {
	t.Parallel()
	env, c := setup(t)
	ctx := context.Background()
	key := adminapitest.PublicKeyPEM(t)
	noErr(t)(c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "mooc", PublicKeyPem: key, ReturnUrl: "https://mooc.example/cb"}))
	noErr(t)(c.AddPlatform(ctx, &gradebrokerv1.AddPlatformRequest{Name: "contest", PublicKeyPem: key, ReturnUrl: "https://contest.example/cb"}))
	j1 := env.InsertJob(t, "mooc", "ex1")
	j2 := env.InsertJob(t, "contest", "ex2")
	j3 := env.InsertJob(t, "mooc", "ex3")

	list, err := c.ListJobs(ctx, &gradebrokerv1.ListJobsRequest{})
	fatalIf(t, err)
	var ids []int64
	for _, j := range list.GetJobs() {
		ids = append(ids, j.GetId())
		if j.GetJobdata() != "" || j.GetEvents() != nil {
			t.Errorf("ListJobs returned data or events for job %d", j.GetId())
		}
	}
	if diff := cmp.Diff([]int64{j3, j2, j1}, ids); diff != "" {
		t.Errorf("ListJobs ids (-want +got):\n%s", diff)
	}
	list, err = c.ListJobs(ctx, &gradebrokerv1.ListJobsRequest{Platform: "mooc", State: gradebrokerv1.JobState_JOB_STATE_QUEUED, Limit: 1})
	fatalIf(t, err)
	if len(list.GetJobs()) != 1 || list.GetJobs()[0].GetId() != j3 {
		t.Errorf("filtered ListJobs = %v, want job %d only", list.GetJobs(), j3)
	}
	list, err = c.ListJobs(ctx, &gradebrokerv1.ListJobsRequest{BeforeId: j2})
	fatalIf(t, err)
	if len(list.GetJobs()) != 1 || list.GetJobs()[0].GetId() != j1 {
		t.Errorf("paged ListJobs = %v, want job %d only", list.GetJobs(), j1)
	}
	_, err = c.ListJobs(ctx, &gradebrokerv1.ListJobsRequest{Platform: "nope"})
	wantCode(t, "unknown platform", err, codes.NotFound, `"nope"`)

	gotResp, err := c.GetJob(ctx, &gradebrokerv1.AdminServiceGetJobRequest{Id: j1})
	fatalIf(t, err)
	got := gotResp.GetJob()
	if got.GetName() != "ex1" || got.GetPlatform() != "mooc" || string(got.GetJobdata()) != `{"task":"ex1"}` ||
		got.GetState() != gradebrokerv1.JobState_JOB_STATE_QUEUED || got.GetTimeout().AsDuration() != time.Minute ||
		len(got.GetEvents()) != 1 || got.GetEvents()[0].GetKind() != "queued" {
		t.Errorf("GetJob = %v", got)
	}
	_, err = c.GetJob(ctx, &gradebrokerv1.AdminServiceGetJobRequest{Id: 999})
	wantCode(t, "missing job", err, codes.NotFound, "job 999")
	_, err = c.GetJob(ctx, &gradebrokerv1.AdminServiceGetJobRequest{Id: 0})
	wantCode(t, "job 0", err, codes.InvalidArgument, "positive")

	rq, err := c.RequeueJob(ctx, &gradebrokerv1.RequeueJobRequest{Id: j1})
	fatalIf(t, err)
	if rq.GetJob().GetId() != j1 {
		t.Errorf("RequeueJob returned job %d", rq.GetJob().GetId())
	}
	noErr(t)(c.CancelJob(ctx, &gradebrokerv1.AdminServiceCancelJobRequest{Id: j2}))
	env.Dispatcher.SetJobError(errors.New("cannot: " + broker.ErrFailedPrecondition.Error()))
	_, err = c.CancelJob(ctx, &gradebrokerv1.AdminServiceCancelJobRequest{Id: j2})
	wantCode(t, "unexpected dispatcher error", err, codes.Internal, "internal error")
	env.Dispatcher.SetJobError(wrapf(broker.ErrFailedPrecondition, "job is done"))
	_, err = c.CancelJob(ctx, &gradebrokerv1.AdminServiceCancelJobRequest{Id: j2})
	wantCode(t, "final job", err, codes.FailedPrecondition, "job is done")
	_, err = c.RequeueJob(ctx, &gradebrokerv1.RequeueJobRequest{Id: 999})
	wantCode(t, "requeue missing job", err, codes.NotFound, "job 999")

	actor := "operator:" + adminapitest.OperatorName
	want := []adminapitest.Call{
		{Method: "RequeueJob", JobID: j1, Actor: actor},
		{Method: "CancelJob", JobID: j2, Actor: actor},
		{Method: "CancelJob", JobID: j2, Actor: actor},
		{Method: "CancelJob", JobID: j2, Actor: actor},
	}
	if diff := cmp.Diff(want, env.Dispatcher.Calls()); diff != "" {
		t.Errorf("dispatcher calls (-want +got):\n%s", diff)
	}
}

func wrapf(sentinel error, msg string) error {
	return &wrapped{sentinel, msg}
}

type wrapped struct {
	sentinel error
	msg      string
}

func (w *wrapped) Error() string { return w.sentinel.Error() + ": " + w.msg }
func (w *wrapped) Unwrap() error { return w.sentinel }
