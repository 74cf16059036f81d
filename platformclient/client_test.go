package platformclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker/token"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// wantAPIError fails the test unless err is an *APIError with httpStatus and
// code whose message contains each of parts.
func wantAPIError(t *testing.T, err error, httpStatus int, code codes.Code, parts ...string) *APIError {
	t.Helper()
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("got error %v (%T); want an *APIError", err, err)
	}
	if ae.HTTPStatus != httpStatus || ae.Code != code {
		t.Fatalf("got %v; want HTTP %d %s", ae, httpStatus, code)
	}
	for _, p := range parts {
		if !strings.Contains(ae.Message, p) {
			t.Fatalf("message %q does not contain %q", ae.Message, p)
		}
	}
	return ae
}

func TestAgainstBroker(t *testing.T) {
	testutil.Slow(t, "a whole broker")
	e := startBroker(t)
	ctx := context.Background()
	demo := e.client(t, platformName, e.keys.platform, Options{})

	t.Run("Test", func(t *testing.T) {
		t.Parallel()
		got, err := demo.Test(ctx)
		if err != nil {
			t.Fatalf("Test: %v", err)
		}
		if got.GetPlatform() != platformName || got.GetBroker() != brokerName {
			t.Fatalf("Test = %v; want platform %s, broker %s", got, platformName, brokerName)
		}
		if skew := time.Since(got.GetServerTime().AsTime()); skew < -time.Minute || skew > time.Minute {
			t.Fatalf("server_time is %s off", skew)
		}
	})

	t.Run("SendJob queues, GetJob sees it, jobdata kept as sent", func(t *testing.T) {
		t.Parallel()
		data := `{"task":"a<b & c>d","big":12345678901234567890123,"nested":{"x":[1,2.50,3]}}`
		resp, err := demo.SendJob(ctx, Job{Data: json.RawMessage(data), Name: "first", Priority: 7, Tags: []string{"python3"}, TimeoutSec: 30})
		if err != nil {
			t.Fatalf("SendJob: %v", err)
		}
		if resp.GetJobId() <= 0 || resp.GetDuplicate() || resp.GetState() != gradebrokerv1.JobState_JOB_STATE_QUEUED {
			t.Fatalf("SendJob = %v; want a new queued job", resp)
		}
		got, err := demo.GetJob(ctx, resp.GetJobId(), 0)
		if err != nil {
			t.Fatalf("GetJob: %v", err)
		}
		j := got.GetJob()
		want := struct {
			ID       int64
			Platform string
			Name     string
			State    gradebrokerv1.JobState
			Priority int32
			Tags     []string
			Timeout  time.Duration
		}{resp.GetJobId(), platformName, "first", gradebrokerv1.JobState_JOB_STATE_QUEUED, 7, []string{"python3"}, 30 * time.Second}
		have := want
		have.ID, have.Platform, have.Name, have.State, have.Priority, have.Tags, have.Timeout =
			j.GetId(), j.GetPlatform(), j.GetName(), j.GetState(), j.GetPriority(), j.GetTags(), j.GetTimeout().AsDuration()
		if diff := cmp.Diff(want, have); diff != "" {
			t.Fatalf("GetJob (-want +got):\n%s", diff)
		}
		stored, err := e.b.DB().GetJob(ctx, resp.GetJobId())
		if err != nil {
			t.Fatal(err)
		}
		if string(stored.JobData) != data {
			t.Fatalf("stored jobdata = %s; want %s byte for byte", stored.JobData, data)
		}
	})

	t.Run("GetJob with wait returns once the wait is over", func(t *testing.T) {
		t.Parallel()
		resp, err := demo.SendJob(ctx, Job{Data: map[string]any{"n": 1}, Tags: []string{"python3"}})
		if err != nil {
			t.Fatalf("SendJob: %v", err)
		}
		start := time.Now()
		got, err := demo.GetJob(ctx, resp.GetJobId(), 300*time.Millisecond)
		if err != nil {
			t.Fatalf("GetJob: %v", err)
		}
		if waited := time.Since(start); waited < 900*time.Millisecond {
			t.Fatalf("GetJob with a wait of 300ms (rounded up to 1s) answered after %s", waited)
		}
		if got.GetJob().GetState() != gradebrokerv1.JobState_JOB_STATE_QUEUED {
			t.Fatalf("state = %s; want queued", got.GetJob().GetState())
		}
	})

	t.Run("GetJob with wait returns when the job becomes final", func(t *testing.T) {
		t.Parallel()
		resp, err := demo.SendJob(ctx, Job{Data: map[string]any{"n": 2}, Tags: []string{"python3"}})
		if err != nil {
			t.Fatalf("SendJob: %v", err)
		}
		type result struct {
			resp *gradebrokerv1.GetJobResponse
			err  error
		}
		done := make(chan result, 1)
		go func() {
			// A wait of a minute, a deadline of half as long: only the
			// cancel can end the call in time.
			wctx, cancel := context.WithTimeout(ctx, testutil.WaitTimeout)
			defer cancel()
			r, err := demo.GetJob(wctx, resp.GetJobId(), time.Minute)
			done <- result{r, err}
		}()
		testutil.Eventually(t, "the GetJob to wait at the broker", func() bool { return e.b.Platform().Waiting(resp.GetJobId()) == 1 })
		if _, err := demo.CancelJob(ctx, resp.GetJobId()); err != nil {
			t.Fatalf("CancelJob: %v", err)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("GetJob: %v (the cancel did not end its wait)", r.err)
		}
		if got := r.resp.GetJob().GetState(); got != gradebrokerv1.JobState_JOB_STATE_CANCELLED {
			t.Fatalf("GetJob answered %s; want cancelled", got)
		}
	})

	t.Run("idempotency key returns the first job", func(t *testing.T) {
		t.Parallel()
		job := Job{Data: []byte(`{"n":2}`), Tags: []string{"python3"}, IdempotencyKey: "user-42-task-7"}
		first, err := demo.SendJob(ctx, job)
		if err != nil {
			t.Fatalf("SendJob: %v", err)
		}
		second, err := demo.SendJob(ctx, job)
		if err != nil {
			t.Fatalf("SendJob again: %v", err)
		}
		if first.GetDuplicate() || !second.GetDuplicate() || first.GetJobId() != second.GetJobId() {
			t.Fatalf("SendJob twice = %v, %v; want the same id, the second a duplicate", first, second)
		}
	})

	t.Run("concurrent sends with one idempotency key make one job", func(t *testing.T) {
		t.Parallel()
		const n = 8
		ids := make(chan int64, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				resp, err := demo.SendJob(ctx, Job{Data: fmt.Sprintf(`{"try":%d}`, i), Tags: []string{"python3"}, IdempotencyKey: "concurrent"})
				if err != nil {
					t.Errorf("SendJob %d: %v", i, err)
					return
				}
				ids <- resp.GetJobId()
			})
		}
		wg.Wait()
		close(ids)
		seen := map[int64]int{}
		for id := range ids {
			seen[id]++
		}
		if len(seen) != 1 {
			t.Fatalf("job ids %v; want one id for all %d sends", seen, n)
		}
	})

	t.Run("numbers as strings and tags as a comma-separated string", func(t *testing.T) {
		t.Parallel()
		var resp gradebrokerv1.SendJobResponse
		err := demo.Do(ctx, PathSendJob, "sendjob", map[string]any{"jobdata": `{"php":true}`, "priority": "4", "tags": "python3", "timeout_sec": "20"}, &resp)
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		got, err := demo.GetJob(ctx, resp.GetJobId(), 0)
		if err != nil {
			t.Fatalf("GetJob: %v", err)
		}
		if j := got.GetJob(); j.GetPriority() != 4 || j.GetTimeout().AsDuration() != 20*time.Second || !cmp.Equal(j.GetTags(), []string{"python3"}) {
			t.Fatalf("GetJob = %v; want priority 4, timeout 20s, tags [python3]", j)
		}
	})

	t.Run("wait above the broker's maximum", func(t *testing.T) {
		t.Parallel()
		resp, err := demo.SendJob(ctx, Job{Data: `{"n":8}`, Tags: []string{"python3"}})
		if err != nil {
			t.Fatalf("SendJob: %v", err)
		}
		_, err = demo.GetJob(ctx, resp.GetJobId(), 61*time.Second)
		wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "wait_seconds")
	})

	t.Run("unknown tag", func(t *testing.T) {
		t.Parallel()
		_, err := demo.SendJob(ctx, Job{Data: `{"n":3}`, Tags: []string{"python3", "cobol"}})
		if ae := wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "unknown tag", "cobol"); ae.Reason != "" {
			t.Errorf("Reason %q for a refusal that gives none", ae.Reason)
		}
	})

	t.Run("tags no server type covers", func(t *testing.T) {
		t.Parallel()
		_, err := demo.SendJob(ctx, Job{Data: `{"n":4}`, Tags: []string{"python3", "gpu"}})
		ae := wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "no server type covers", "gpu")
		if got := status.Code(err); got != codes.InvalidArgument {
			t.Fatalf("status.Code = %s; want InvalidArgument (from %v)", got, ae)
		}
	})

	t.Run("missing jobdata", func(t *testing.T) {
		t.Parallel()
		_, err := demo.SendJob(ctx, Job{Tags: []string{"python3"}})
		wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "jobdata is required")
	})

	t.Run("token signed with the wrong key", func(t *testing.T) {
		t.Parallel()
		impostor := e.client(t, platformName, e.keys.stranger, Options{})
		_, err := impostor.Test(ctx)
		if ae := wantAPIError(t, err, http.StatusUnauthorized, codes.Unauthenticated, "signature"); ae.Reason != "BAD_SIGNATURE" {
			t.Errorf("Reason %q, want BAD_SIGNATURE", ae.Reason)
		}
	})

	t.Run("unknown platform", func(t *testing.T) {
		t.Parallel()
		nobody := e.client(t, "nobody", e.keys.stranger, Options{})
		_, err := nobody.Test(ctx)
		if ae := wantAPIError(t, err, http.StatusUnauthorized, codes.Unauthenticated, "nobody"); ae.Reason != "UNKNOWN_SIGNER" {
			t.Errorf("Reason %q, want UNKNOWN_SIGNER", ae.Reason)
		}
	})

	t.Run("replayed token", func(t *testing.T) {
		t.Parallel()
		tok, err := demo.Token("test", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := demo.Post(ctx, PathTest, tok, new(gradebrokerv1.TestResponse)); err != nil {
			t.Fatalf("first Post: %v", err)
		}
		err = demo.Post(ctx, PathTest, tok, new(gradebrokerv1.TestResponse))
		if ae := wantAPIError(t, err, http.StatusUnauthorized, codes.Unauthenticated, "replayed"); ae.Reason != "REPLAYED" {
			t.Errorf("Reason %q, want REPLAYED", ae.Reason)
		}
	})

	t.Run("replayed sendjob token stores nothing", func(t *testing.T) {
		t.Parallel()
		tok, err := demo.Token("sendjob", Job{Data: `{"n":5}`, Tags: []string{"python3"}}.fields())
		if err != nil {
			t.Fatal(err)
		}
		var first gradebrokerv1.SendJobResponse
		if err := demo.Post(ctx, PathSendJob, tok, &first); err != nil {
			t.Fatalf("first Post: %v", err)
		}
		err = demo.Post(ctx, PathSendJob, tok, new(gradebrokerv1.SendJobResponse))
		wantAPIError(t, err, http.StatusUnauthorized, codes.Unauthenticated, "replayed")
	})

	t.Run("token for another request", func(t *testing.T) {
		t.Parallel()
		tok, err := demo.Token("getjob", map[string]any{"jobid": 1})
		if err != nil {
			t.Fatal(err)
		}
		err = demo.Post(ctx, PathCancelJob, tok, nil)
		wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "getjob", "canceljob")
	})

	t.Run("audience", func(t *testing.T) {
		t.Parallel()
		if _, err := e.client(t, platformName, e.keys.platform, Options{Audience: brokerName}).Test(ctx); err != nil {
			t.Fatalf("Test with aud %s: %v", brokerName, err)
		}
		_, err := e.client(t, platformName, e.keys.platform, Options{Audience: "elsewhere"}).Test(ctx)
		wantAPIError(t, err, http.StatusUnauthorized, codes.Unauthenticated, "elsewhere")
	})

	t.Run("SendJobs batch of 100, compressed", func(t *testing.T) {
		t.Parallel()
		c := e.client(t, platformName, e.keys.platform, Options{Compress: true})
		jobs := make([]Job, 100)
		for i := range jobs {
			jobs[i] = Job{Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), Name: fmt.Sprintf("batch-%d", i), Tags: []string{"python3"}}
		}
		resp, err := c.SendJobs(ctx, jobs)
		if err != nil {
			t.Fatalf("SendJobs: %v", err)
		}
		if len(resp.GetJobs()) != len(jobs) {
			t.Fatalf("SendJobs returned %d jobs; want %d", len(resp.GetJobs()), len(jobs))
		}
		seen := map[int64]bool{}
		for i, r := range resp.GetJobs() {
			if seen[r.GetJobId()] || r.GetDuplicate() || r.GetState() != gradebrokerv1.JobState_JOB_STATE_QUEUED {
				t.Fatalf("jobs[%d] = %v; want a new queued job with its own id", i, r)
			}
			seen[r.GetJobId()] = true
			stored, err := e.b.DB().GetJob(ctx, r.GetJobId())
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf(`{"i":%d}`, i); string(stored.JobData) != want || stored.Name != jobs[i].Name {
				t.Fatalf("job %d stored as %s %s; want %s %s", r.GetJobId(), stored.Name, stored.JobData, jobs[i].Name, want)
			}
		}
	})

	t.Run("SendJobs is all or none", func(t *testing.T) {
		t.Parallel()
		_, err := demo.SendJobs(ctx, []Job{{Data: `{"ok":1}`, Tags: []string{"python3"}}, {Data: `{"ok":2}`, Tags: []string{"cobol"}}})
		wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "jobs[1]", "cobol")
	})

	t.Run("SendSolution builds the documented jobdata", func(t *testing.T) {
		t.Parallel()
		resp, err := demo.SendSolution(ctx, Solution{Name: "sol", Tags: []string{"python3"}, TaskPath: "$ROOT/tasks/sum",
			MemLimitKB: 65536, TimeLimitMS: 2000, Lang: "python3", Content: "print(1 < 2)\n"})
		if err != nil {
			t.Fatalf("SendSolution: %v", err)
		}
		stored, err := e.b.DB().GetJob(ctx, resp.GetJobId())
		if err != nil {
			t.Fatal(err)
		}
		var got any
		if err := json.Unmarshal(stored.JobData, &got); err != nil {
			t.Fatalf("stored jobdata %s: %v", stored.JobData, err)
		}
		params := map[string]any{"memoryLimitKb": 65536.0, "timeLimitMs": 2000.0,
			"useCache": true, "stdoutTruncateKb": -1.0, "stderrTruncateKb": -1.0, "getFiles": []any{}}
		want := map[string]any{
			"taskPath": "$ROOT/tasks/sum",
			"extraParams": map[string]any{
				"solutionFilename":          "solution",
				"solutionContent":           "print(1 < 2)\n",
				"solutionLanguage":          "python3",
				"defaultSolutionCompParams": params,
				"defaultSolutionExecParams": params,
			},
			"solutions":  "@defaultEvaluationSolutions",
			"executions": "@defaultEvaluationExecutions",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("jobdata (-want +got):\n%s", diff)
		}
	})

	t.Run("SendSolution with a file", func(t *testing.T) {
		t.Parallel()
		resp, err := demo.SendSolution(ctx, Solution{Tags: []string{"python3"}, TaskPath: "/t", Lang: "c",
			File: &SolutionFile{Name: "main.c", Content: []byte("int main(){}\x00\xff")}})
		if err != nil {
			t.Fatalf("SendSolution: %v", err)
		}
		stored, err := e.b.DB().GetJob(ctx, resp.GetJobId())
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			ExtraParams struct {
				SolutionFilename string `json:"solutionFilename"`
				SolutionContent  string `json:"solutionContent"`
			} `json:"extraParams"`
		}
		if err := json.Unmarshal(stored.JobData, &got); err != nil {
			t.Fatal(err)
		}
		if got.ExtraParams.SolutionFilename != "main.c" || !strings.HasPrefix(got.ExtraParams.SolutionContent, "int main(){}") {
			t.Fatalf("jobdata = %s; want main.c and its content", stored.JobData)
		}
	})

	t.Run("SendSolution needs exactly one source", func(t *testing.T) {
		t.Parallel()
		_, err := demo.SendSolution(ctx, Solution{Tags: []string{"python3"}, TaskPath: "/t", Lang: "python3", Content: "x", Path: "/y"})
		wantAPIError(t, err, http.StatusBadRequest, codes.InvalidArgument, "exactly one of solcontent, solpath and solfile")
	})

	t.Run("CancelJob of a queued job, then again", func(t *testing.T) {
		t.Parallel()
		resp, err := demo.SendJob(ctx, Job{Data: `{"n":6}`, Tags: []string{"python3"}})
		if err != nil {
			t.Fatalf("SendJob: %v", err)
		}
		first, err := demo.CancelJob(ctx, resp.GetJobId())
		if err != nil {
			t.Fatalf("CancelJob: %v", err)
		}
		if first.GetJobId() != resp.GetJobId() || first.GetState() != gradebrokerv1.JobState_JOB_STATE_CANCELLED || first.GetMessage() != "cancelled" {
			t.Fatalf("CancelJob = %v; want cancelled", first)
		}
		second, err := demo.CancelJob(ctx, resp.GetJobId())
		if err != nil {
			t.Fatalf("CancelJob again: %v", err)
		}
		if second.GetState() != gradebrokerv1.JobState_JOB_STATE_CANCELLED || !strings.Contains(second.GetMessage(), "already") {
			t.Fatalf("CancelJob again = %v; want a message saying the job is already final", second)
		}
		got, err := demo.GetJob(ctx, resp.GetJobId(), 0)
		if err != nil {
			t.Fatalf("GetJob: %v", err)
		}
		if got.GetJob().GetState() != gradebrokerv1.JobState_JOB_STATE_CANCELLED || got.GetJob().GetFinishedAt() == nil {
			t.Fatalf("GetJob after cancel = %v; want cancelled with finished_at", got.GetJob())
		}
	})

	t.Run("another platform's job is not found", func(t *testing.T) {
		t.Parallel()
		other := e.client(t, otherPlatform, e.keys.other, Options{})
		resp, err := other.SendJob(ctx, Job{Data: `{"n":7}`, Tags: []string{"python3"}})
		if err != nil {
			t.Fatalf("SendJob as other: %v", err)
		}
		_, err = demo.GetJob(ctx, resp.GetJobId(), 0)
		wantAPIError(t, err, http.StatusNotFound, codes.NotFound)
		_, err = demo.CancelJob(ctx, resp.GetJobId())
		wantAPIError(t, err, http.StatusNotFound, codes.NotFound)
		_, err = demo.GetJob(ctx, 1<<40, 0)
		wantAPIError(t, err, http.StatusNotFound, codes.NotFound)
	})
}

func TestNewChecksItsArguments(t *testing.T) {
	t.Parallel()
	ks := keysOnce()
	for _, tc := range []struct {
		name, url, platform string
		opts                Options
		want                string
	}{
		{"relative URL", "broker:8443", platformName, Options{}, "absolute"},
		{"no platform", "https://127.0.0.1:8443", "", Options{}, "name is required"},
		{"lifetime too long", "https://127.0.0.1:8443", platformName, Options{Lifetime: 11 * time.Minute}, "above the broker's maximum"},
		{"lifetime too short", "https://127.0.0.1:8443", platformName, Options{Lifetime: time.Millisecond}, "below one second"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.url, tc.platform, ks.platform, &ks.broker.PublicKey, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestTokenClaims(t *testing.T) {
	t.Parallel()
	ks := keysOnce()
	now := time.Now().Truncate(time.Second)
	c, err := New("https://127.0.0.1:8443", platformName, ks.platform, &ks.broker.PublicKey,
		Options{Audience: brokerName, Lifetime: 2 * time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token("getjob", map[string]any{"jobid": 12})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := token.NewKeyRing(ks.broker, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := &token.Opener{Keys: ring, Signers: token.StaticSigners{platformName: &ks.platform.PublicKey},
		Replay: token.NewMemoryReplayGuard(), Audience: brokerName}
	claims, payload, err := o.Open(context.Background(), tok, "getjob")
	if err != nil {
		t.Fatalf("the broker's Open refuses the client's token: %v", err)
	}
	if claims.Signer != platformName || !claims.IssuedAt.Equal(now) || !claims.Expires.Equal(now.Add(2*time.Minute)) ||
		claims.JTI == "" || !cmp.Equal(claims.Audience, []string{brokerName}) {
		t.Fatalf("claims = %+v", claims)
	}
	var p struct {
		JobID int64 `json:"jobid"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || p.JobID != 12 {
		t.Fatalf("payload %s: jobid %d, %v", payload, p.JobID, err)
	}
	other, err := c.Token("getjob", map[string]any{"jobid": 12})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Open(context.Background(), other, "getjob"); err != nil {
		t.Fatalf("a second token is refused (the jti must be fresh): %v", err)
	}

	for _, claim := range []string{"request", "iat", "exp", "jti", "aud"} {
		if _, err := c.Token("test", map[string]any{claim: "x"}); err == nil || !strings.Contains(err.Error(), claim) {
			t.Errorf("Token with field %s: %v; want an error naming it", claim, err)
		}
	}
}

func TestAPIErrorFromForeignBody(t *testing.T) {
	t.Parallel()
	ks := keysOnce()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/prefix/v1/test" || r.Method != http.MethodPost {
			http.Error(w, "wrong path "+r.URL.Path, http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, "<html><body>upstream is down</body></html>")
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL+"/prefix/", platformName, ks.platform, &ks.broker.PublicKey, Options{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Test(context.Background())
	ae := wantAPIError(t, err, http.StatusBadGateway, codes.Unavailable, "upstream is down")
	if got, want := ae.Error(), "HTTP 502 Unavailable: <html><body>upstream is down</body></html>"; got != want {
		t.Fatalf("Error() = %q; want %q", got, want)
	}
}
