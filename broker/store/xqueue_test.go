package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gradebroker/gradebroker/broker"
)

// xqSetup registers what an XQueue site needs: tags, a type, an XQueue
// platform, a queue and a user that submits and pulls.
func xqSetup(t *testing.T) (*DB, broker.XQueueQueue, broker.XQueueUser) {
	t.Helper()
	db := setup(t)
	ctx := context.Background()
	for _, tag := range []string{"py", "course"} {
		if _, err := db.AddTag(ctx, tag, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.AddServerType(ctx, "pytype", []string{"py", "course"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddPlatform(ctx, broker.Platform{Name: "lms", Protocol: broker.ProtocolXQueue}); err != nil {
		t.Fatal(err)
	}
	q, err := db.AddXQueueQueue(ctx, broker.XQueueQueue{Name: "python-grader", Tags: []string{"py"}, Type: "pytype", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	u, err := db.AddXQueueUser(ctx, broker.XQueueUser{Name: "edx", PasswordHash: "$2a$10$hash", Platform: "lms",
		CallbackHosts: []string{"lms.example"}, PullQueues: []string{"python-grader"}, MaxJobs: 4})
	if err != nil {
		t.Fatal(err)
	}
	return db, q, u
}

func TestXQueueQueues(t *testing.T) {
	t.Parallel()
	db, q, _ := xqSetup(t)
	ctx := context.Background()
	if q.Type != "pytype" || !cmp.Equal(q.Tags, []string{"py"}) || q.Timeout != time.Minute || q.ID == 0 {
		t.Errorf("AddXQueueQueue = %+v", q)
	}
	if _, err := db.AddServerType(ctx, "other", []string{"course"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		q    broker.XQueueQueue
		want error
		msg  string
	}{
		{broker.XQueueQueue{Name: "python-grader", Tags: []string{"py"}, Type: "pytype"}, broker.ErrConflict, "already registered"},
		{broker.XQueueQueue{Name: "q2", Tags: []string{"py"}, Type: "other"}, broker.ErrInvalid, "does not cover"},
		{broker.XQueueQueue{Name: "q2", Tags: []string{"nope"}, Type: "pytype"}, broker.ErrInvalid, "unknown tag"},
		{broker.XQueueQueue{Name: "q2", Tags: []string{"py"}, Type: "nope"}, broker.ErrInvalid, "unknown server type"},
		{broker.XQueueQueue{Name: "bad name", Type: "pytype"}, broker.ErrInvalid, "XQueue queue name"},
	} {
		if _, err := db.AddXQueueQueue(ctx, tc.q); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("AddXQueueQueue(%+v) = %v, want %v saying %q", tc.q, err, tc.want, tc.msg)
		}
	}
	// A tag or type a queue uses cannot be removed.
	if err := db.RemoveTag(ctx, "py"); !errors.Is(err, broker.ErrInUse) {
		t.Errorf("RemoveTag(a queue's tag) = %v", err)
	}
	if _, err := db.AddTag(ctx, "q-only", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddServerType(ctx, "wide", []string{"py", "course", "q-only"}); err != nil {
		t.Fatal(err)
	}
	tags := []string{"q-only", "py"}
	wide := "wide"
	if _, _, err := db.UpdateXQueueQueue(ctx, "python-grader", XQueueQueueUpdate{Tags: &tags}); err == nil {
		t.Error("UpdateXQueueQueue accepted tags its type does not cover")
	}
	got, changed, err := db.UpdateXQueueQueue(ctx, "python-grader", XQueueQueueUpdate{Tags: &tags, Type: &wide})
	if err != nil || !cmp.Equal(got.Tags, []string{"py", "q-only"}) || got.Type != "wide" || len(changed) != 0 {
		t.Errorf("UpdateXQueueQueue = %+v, %v, %v", got, changed, err)
	}
	if _, err := db.UpdateServerType(ctx, "wide", []string{"py"}); !errors.Is(err, broker.ErrInUse) || !strings.Contains(err.Error(), `XQueue queue "python-grader"`) {
		t.Errorf("UpdateServerType(no longer covering a queue's tags) = %v", err)
	}
	if err := db.RemoveServerType(ctx, "wide"); !errors.Is(err, broker.ErrInUse) || !strings.Contains(err.Error(), "python-grader") {
		t.Errorf("RemoveServerType(a queue's type) = %v", err)
	}
	list, err := db.ListXQueueQueues(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "python-grader" {
		t.Errorf("ListXQueueQueues = %+v, %v", list, err)
	}
}

func TestXQueueUsers(t *testing.T) {
	t.Parallel()
	db, _, u := xqSetup(t)
	ctx := context.Background()
	want := broker.XQueueUser{ID: u.ID, Name: "edx", PasswordHash: "$2a$10$hash", Platform: "lms", PlatformID: u.PlatformID,
		CallbackHosts: []string{"lms.example"}, HTTPCallbackHosts: []string{}, PullQueues: []string{"python-grader"}, MaxJobs: 4,
		CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt}
	if diff := cmp.Diff(want, u); diff != "" || u.PlatformID == 0 {
		t.Errorf("AddXQueueUser (-want +got):\n%s", diff)
	}
	if _, err := db.AddPlatform(ctx, broker.Platform{Name: "mooc", PublicKeyPEM: "k", ReturnURL: "https://mooc.example/cb"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		u   broker.XQueueUser
		msg string
	}{
		{broker.XQueueUser{Name: "edx", PasswordHash: "h"}, "already registered"},
		{broker.XQueueUser{Name: "w", PasswordHash: "h", Platform: "mooc"}, "speaks gradebroker, not xqueue"},
		{broker.XQueueUser{Name: "w", PasswordHash: "h", Platform: "nope"}, "unknown platform"},
		{broker.XQueueUser{Name: "w", PasswordHash: "h", PullQueues: []string{"nope"}}, `pull queue "nope"`},
	} {
		if _, err := db.AddXQueueUser(ctx, tc.u); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("AddXQueueUser(%+v) = %v, want an error saying %q", tc.u, err, tc.msg)
		}
	}
	if err := db.RemovePlatform(ctx, "lms"); !errors.Is(err, broker.ErrInUse) || !strings.Contains(err.Error(), "XQueue user") {
		t.Errorf("RemovePlatform(a user's platform) = %v", err)
	}
	hosts := []string{"lms2.example"}
	none := ""
	user, removed, err := db.UpdateXQueueUser(ctx, "edx", XQueueUserUpdate{HTTPCallbackHosts: &hosts, Platform: &none})
	if err != nil || user.Platform != "" || user.PlatformID != 0 || !cmp.Equal(user.HTTPCallbackHosts, hosts) || len(removed) != 0 {
		t.Errorf("UpdateXQueueUser = %+v, %v, %v", user, removed, err)
	}
	if _, _, err := db.UpdateXQueueUser(ctx, "nope", XQueueUserUpdate{}); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("UpdateXQueueUser(unknown) = %v", err)
	}
}

// A pulling client's server is made on its first pull, once, with the
// queue's type and the user's max jobs; it goes when the user may no longer
// pull the queue, or is removed.
func TestPullers(t *testing.T) {
	t.Parallel()
	db, q, u := xqSetup(t)
	ctx := context.Background()
	s, made, err := db.Puller(ctx, u, q)
	if err != nil || !made {
		t.Fatalf("Puller = %+v, %v, %v", s, made, err)
	}
	if s.Name != "xq.edx.python-grader" || s.Pull != broker.PullXQueue || s.Type != "pytype" || s.MaxConcurrentJobs != 4 {
		t.Errorf("puller server = %+v", s)
	}
	again, made, err := db.Puller(ctx, u, q)
	if err != nil || made || again.ID != s.ID {
		t.Errorf("second Puller = %+v, made %v, %v", again, made, err)
	}
	if uid, queue, err := db.PullerOf(ctx, s.Name); err != nil || uid != u.ID || queue != q.Name {
		t.Errorf("PullerOf = %d %q %v", uid, queue, err)
	}
	if _, _, err := db.PullerOf(ctx, "nope"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("PullerOf(unknown) = %v", err)
	}
	cert := ident("ab12")
	if _, err := db.UpdateServer(ctx, s.Name, ServerUpdate{Cert: &cert}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("UpdateServer(a pulling client, a certificate) = %v", err)
	}
	// The user may no longer pull the queue: its server goes.
	var noQueues []string
	updated, removed, err := db.UpdateXQueueUser(ctx, "edx", XQueueUserUpdate{PullQueues: &noQueues})
	if err != nil || !cmp.Equal(removed, []string{s.Name}) {
		t.Errorf("UpdateXQueueUser(no pull queues) removed %v, %v", removed, err)
	}
	if len(updated.PullQueues) != 0 {
		t.Errorf("UpdateXQueueUser(no pull queues) kept pull queues %q", updated.PullQueues)
	}
	if _, err := db.ServerByName(ctx, s.Name); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("the removed puller's server: %v", err)
	}
	s, _, err = db.Puller(ctx, u, q)
	if err != nil {
		t.Fatal(err)
	}
	// A new type of the queue is its pullers' too.
	if _, err := db.AddServerType(ctx, "pytype2", []string{"py"}); err != nil {
		t.Fatal(err)
	}
	typ := "pytype2"
	if _, changed, err := db.UpdateXQueueQueue(ctx, q.Name, XQueueQueueUpdate{Type: &typ}); err != nil || !cmp.Equal(changed, []string{s.Name}) {
		t.Errorf("UpdateXQueueQueue(type) changed %v, %v", changed, err)
	}
	if s, _ := db.ServerByName(ctx, s.Name); s.Type != "pytype2" {
		t.Errorf("puller type after the queue's change: %q", s.Type)
	}
	removed, err = db.RemoveXQueueUser(ctx, "edx")
	if err != nil || !cmp.Equal(removed, []string{s.Name}) {
		t.Errorf("RemoveXQueueUser removed %v, %v", removed, err)
	}
	if got := pullerName(strings.Repeat("u", 40), strings.Repeat("q", 40)); len(got) != 63 || broker.CheckName("server", got) != nil {
		t.Errorf("long puller name %q", got)
	}
	// A name of exactly 63 characters fits as it is.
	user, queue := strings.Repeat("u", 20), strings.Repeat("q", 39)
	if got, want := pullerName(user, queue), "xq."+user+"."+queue; got != want {
		t.Errorf("puller name of 63 characters = %q, want %q", got, want)
	}
}

// A submission's callback, header and files are stored with its job and
// deleted with it; a later submission to the same callback URL finds the
// earlier unfinished ones.
func TestXQueueSubmissions(t *testing.T) {
	t.Parallel()
	db, q, u := xqSetup(t)
	ctx := context.Background()
	submit := func(url string, files map[string][]byte) int64 {
		t.Helper()
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		in, err := tx.InsertJob(broker.NewJob{PlatformID: u.PlatformID, Name: q.Name, Tags: q.Tags, Timeout: time.Minute,
			JobData: []byte(`{"student_response":"x"}`), MaxAttempts: 3, Queue: q.Name}, "xqueue:edx")
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.InsertXQueueSubmission(in.ID, u.ID, url, `{"lms_key":"k"}`); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a.py", "b.txt"} {
			if data, ok := files[name]; ok {
				if err := tx.InsertAttachment(in.ID, name, data); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		return in.ID
	}
	first := submit("https://lms.example/cb/1", map[string][]byte{"a.py": []byte("print(1)"), "b.txt": {}})
	other := submit("https://lms.example/cb/2", nil)
	second := submit("https://lms.example/cb/1", nil)
	ids, err := db.UnfinishedXQueueSubmissions(ctx, u.PlatformID, "https://lms.example/cb/1", second)
	if err != nil || !cmp.Equal(ids, []int64{first}) {
		t.Errorf("UnfinishedXQueueSubmissions = %v, %v; want [%d] (not %d)", ids, err, first, other)
	}
	cb, err := db.XQueueCallback(ctx, first)
	if err != nil || cb.URL != "https://lms.example/cb/1" || cb.Header != `{"lms_key":"k"}` || !cb.HasUser || cb.User.Name != "edx" {
		t.Errorf("XQueueCallback = %+v, %v", cb, err)
	}
	files, err := db.Attachments(ctx, first)
	if err != nil || len(files) != 2 || files[0].Name != "a.py" || files[0].Size != 8 || files[1].Size != 0 || files[0].Data != nil {
		t.Fatalf("Attachments = %+v, %v", files, err)
	}
	a, err := db.Attachment(ctx, files[0].ID)
	if err != nil || !bytes.Equal(a.Data, []byte("print(1)")) || a.JobID != first {
		t.Errorf("Attachment = %+v, %v", a, err)
	}
	var open []OpenJob
	if err := db.LoadOpenJobs(ctx, func(j OpenJob) error { open = append(open, j); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(open) != 3 || open[0].Queue != q.Name {
		t.Errorf("LoadOpenJobs = %+v, want 3 jobs of queue %s", open, q.Name)
	}

	// The platform speaks XQueue: its jobs get deliveries without a
	// return URL, unless retired quietly.
	tx, err := db.BeginJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	did, err := tx.Finish(first, Final{State: broker.JobCancelled, Error: "superseded", Actor: "xqueue:edx", Quiet: true})
	if err != nil || did != 0 {
		t.Errorf("quiet Finish made delivery %d, %v", did, err)
	}
	if did, err = tx.Finish(other, Final{State: broker.JobFailed, Error: "x", Actor: "t"}); err != nil || did == 0 {
		t.Errorf("Finish of an XQueue job made delivery %d, %v", did, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// Deleted with its job, files and all.
	if _, err := db.RemoveXQueueUser(ctx, "edx"); err != nil {
		t.Fatal(err)
	}
	if cb, err := db.XQueueCallback(ctx, first); err != nil || cb.HasUser {
		t.Errorf("XQueueCallback after the user went = %+v, %v", cb, err)
	}
	if _, err := db.w.ExecContext(ctx, `DELETE FROM jobs WHERE id = ?`, first); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Attachment(ctx, files[0].ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("attachment of a deleted job: %v", err)
	}
	if _, err := db.XQueueCallback(ctx, first); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("callback of a deleted job: %v", err)
	}
}

func TestSecretOutlivesReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := t.TempDir() + "/gb.db"
	db, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := db.Secret(ctx, "k", 32)
	if err != nil || len(a) != 32 {
		t.Fatalf("Secret = %x, %v", a, err)
	}
	db.Close()
	db, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b, err := db.Secret(ctx, "k", 32)
	if err != nil || !bytes.Equal(a, b) {
		t.Errorf("Secret after reopening = %x, %v; want %x", b, err, a)
	}
	if c, _ := db.Secret(ctx, "other", 32); bytes.Equal(a, c) {
		t.Error("two secrets are equal")
	}
}
