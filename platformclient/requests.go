package platformclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The platform API's paths, as in proto/gradebroker/v1/gateway.yaml.
const (
	// PathTest takes a "test" token.
	PathTest = "/v1/test"
	// PathSendJob takes a "sendjob" token.
	PathSendJob = "/v1/jobs"
	// PathSendJobs takes a "sendjobs" token.
	PathSendJobs = "/v1/jobs:batch"
	// PathSendSolution takes a "sendsolution" token.
	PathSendSolution = "/v1/solutions"
	// PathGetJob takes a "getjob" token.
	PathGetJob = "/v1/jobs:get"
	// PathCancelJob takes a "canceljob" token.
	PathCancelJob = "/v1/jobs:cancel"
)

// Job is one job to queue with SendJob or SendJobs.
type Job struct {
	// Data is the job's data for the grader: a json.RawMessage or []byte
	// holding a JSON object (sent as it is), a string holding JSON, or any
	// value encoding/json turns into an object (a map, a struct).
	Data any
	// Name is a name for people.
	Name string
	// Priority orders the queue; higher runs first. Default 0.
	Priority int
	// Tags are what a server must offer to take the job.
	Tags []string
	// IdempotencyKey makes a retried submission return the first job
	// (with duplicate set) instead of queueing a second one.
	IdempotencyKey string
	// TimeoutSec is how long one attempt may run, in seconds; 0 means the
	// broker's default.
	TimeoutSec int
}

func (j Job) fields() map[string]any {
	f := map[string]any{}
	if j.Data != nil {
		f["jobdata"] = rawData(j.Data)
	}
	if j.Name != "" {
		f["jobname"] = j.Name
	}
	if j.Priority != 0 {
		f["priority"] = j.Priority
	}
	if j.Tags != nil {
		f["tags"] = j.Tags
	}
	if j.IdempotencyKey != "" {
		f["idempotency_key"] = j.IdempotencyKey
	}
	if j.TimeoutSec != 0 {
		f["timeout_sec"] = j.TimeoutSec
	}
	return f
}

// rawData keeps []byte as JSON text: encoding/json would otherwise send it
// as a base64 string, which the broker would refuse as not holding JSON.
func rawData(v any) any {
	if b, ok := v.([]byte); ok {
		return json.RawMessage(b)
	}
	return v
}

// Solution is a job built by the broker from solution parameters, queued
// with SendSolution. Exactly one of Content, Path and File should be set.
type Solution struct {
	// Name is a name for people.
	Name string
	// Priority orders the queue; higher runs first.
	Priority int
	// Tags are what a server must offer to take the job.
	Tags []string
	// TaskPath is the task's path on the grading server.
	TaskPath string
	// MemLimitKB is the solution's memory limit in KiB; 0 sends none.
	MemLimitKB int64
	// TimeLimitMS is the solution's time limit in milliseconds; 0 sends
	// none.
	TimeLimitMS int64
	// Lang is the solution's language, for example "python3".
	Lang string
	// Content is the solution's source.
	Content string
	// Path is the solution's path on the grading server.
	Path string
	// File is the solution as an uploaded file.
	File *SolutionFile
	// IdempotencyKey makes a retried submission return the first job.
	IdempotencyKey string
	// TimeoutSec is how long one attempt may run, in seconds; 0 means the
	// broker's default.
	TimeoutSec int
}

// SolutionFile is an uploaded solution.
type SolutionFile struct {
	// Name is the file's name.
	Name string
	// Content is the file's content; it is sent base64-encoded.
	Content []byte
}

func (s Solution) fields() map[string]any {
	f := Job{Name: s.Name, Priority: s.Priority, Tags: s.Tags, IdempotencyKey: s.IdempotencyKey, TimeoutSec: s.TimeoutSec}.fields()
	if s.TaskPath != "" {
		f["taskpath"] = s.TaskPath
	}
	if s.MemLimitKB != 0 {
		f["memlimit"] = s.MemLimitKB
	}
	if s.TimeLimitMS != 0 {
		f["timelimit"] = s.TimeLimitMS
	}
	if s.Lang != "" {
		f["lang"] = s.Lang
	}
	// Only what is set is sent, so that the broker's "exactly one of"
	// check sees what the caller meant.
	if s.Content != "" {
		f["solcontent"] = s.Content
	}
	if s.Path != "" {
		f["solpath"] = s.Path
	}
	if s.File != nil {
		f["solfile"] = map[string]string{"name": s.File.Name, "content_base64": base64.StdEncoding.EncodeToString(s.File.Content)}
	}
	return f
}

// Test checks the connection, the keys and the clocks: the broker answers
// with the platform it recognised, its own name and its time.
func (c *Client) Test(ctx context.Context) (*gradebrokerv1.TestResponse, error) {
	out := new(gradebrokerv1.TestResponse)
	if err := c.Do(ctx, PathTest, "test", nil, out); err != nil {
		return nil, err
	}
	return out, nil
}

// SendJob queues job.
func (c *Client) SendJob(ctx context.Context, job Job) (*gradebrokerv1.SendJobResponse, error) {
	out := new(gradebrokerv1.SendJobResponse)
	if err := c.Do(ctx, PathSendJob, "sendjob", job.fields(), out); err != nil {
		return nil, err
	}
	return out, nil
}

// SendJobs queues jobs with one token: all of them, or none if one is
// refused. The response lists them in the order given.
func (c *Client) SendJobs(ctx context.Context, jobs []Job) (*gradebrokerv1.SendJobsResponse, error) {
	if len(jobs) == 0 {
		return nil, errors.New("platformclient: SendJobs needs at least one job")
	}
	list := make([]map[string]any, len(jobs))
	for i, j := range jobs {
		list[i] = j.fields()
	}
	out := new(gradebrokerv1.SendJobsResponse)
	if err := c.Do(ctx, PathSendJobs, "sendjobs", map[string]any{"jobs": list}, out); err != nil {
		return nil, err
	}
	return out, nil
}

// SendSolution queues a job that the broker builds from s.
func (c *Client) SendSolution(ctx context.Context, s Solution) (*gradebrokerv1.SendSolutionResponse, error) {
	out := new(gradebrokerv1.SendSolutionResponse)
	if err := c.Do(ctx, PathSendSolution, "sendsolution", s.fields(), out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetJob returns what the broker knows of job id: its state, attempts and
// result. With wait > 0 the broker holds the answer until the job is final
// or wait has passed (rounded up to whole seconds; the broker allows at most
// 60 s); the HTTP client's timeout must be longer.
func (c *Client) GetJob(ctx context.Context, id int64, wait time.Duration) (*gradebrokerv1.GetJobResponse, error) {
	fields := map[string]any{"jobid": id}
	if wait > 0 {
		fields["wait_seconds"] = int64((wait + time.Second - 1) / time.Second)
	}
	out := new(gradebrokerv1.GetJobResponse)
	if err := c.Do(ctx, PathGetJob, "getjob", fields, out); err != nil {
		return nil, err
	}
	return out, nil
}

// CancelJob cancels job id if it is not final yet. A final job is left as it
// is; the response's message says so and its state says which.
func (c *Client) CancelJob(ctx context.Context, id int64) (*gradebrokerv1.CancelJobResponse, error) {
	out := new(gradebrokerv1.CancelJobResponse)
	if err := c.Do(ctx, PathCancelJob, "canceljob", map[string]any{"jobid": id}, out); err != nil {
		return nil, err
	}
	return out, nil
}
