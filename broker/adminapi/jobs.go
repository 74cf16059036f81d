package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/dispatch"
	"github.com/gradebroker/gradebroker/broker/maint"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/store"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// This file holds what the console added to the job calls: counts and bulk
// actions over a filter, test jobs, and the firing alerts.

// BulkLimit is the most jobs one count reports and one bulk action
// touches: a mistake in a filter must not requeue the whole history.
const BulkLimit = 100_000

// bulkWorkers is how many jobs a bulk action has in flight at once, so
// that the dispatcher commits them in shared transactions.
const bulkWorkers = 16

// maxTestJobData bounds a test job's data, as the platform API bounds a
// platform's.
const maxTestJobData = 1 << 20

// Submitter queues new jobs; the dispatcher implements it.
type Submitter interface {
	Submit(ctx context.Context, jobs []broker.NewJob, tok *dispatch.TokenUse, actor string) ([]store.Inserted, error)
}

// jobsState is what the Service was given for these calls.
type jobsState struct {
	submit Submitter
	alerts func() []maint.Alert
}

// SetSubmitter sets what SubmitTestJob queues jobs with; without one it
// says test jobs cannot be sent.
func (s *Service) SetSubmitter(sub Submitter) { s.jobs.submit = sub }

// SetAlerts sets where Alerts reads the firing alerts from.
func (s *Service) SetAlerts(firing func() []maint.Alert) { s.jobs.alerts = firing }

// filterFromProto converts a JobFilter message.
func filterFromProto(f *gradebrokerv1.JobFilter) store.JobFilter {
	return store.JobFilter{State: protoconv.JobStateFromProto(f.GetState()), Platform: f.GetPlatform(), Server: f.GetServer(),
		Tag: f.GetTag(), CreatedAfter: timeOf(f.GetCreatedAfter()), CreatedBefore: timeOf(f.GetCreatedBefore()),
		Search: f.GetSearch()}
}

// CountJobs counts what a filter selects, within the caller's scope, up to
// BulkLimit.
func (s *Service) CountJobs(ctx context.Context, req *gradebrokerv1.CountJobsRequest) (*gradebrokerv1.CountJobsResponse, error) {
	p, err := s.reader(ctx, true)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	f := filterFromProto(req.GetFilter())
	if err := scopeFilter(p, &f); err != nil {
		return nil, s.fail(ctx, err)
	}
	n, maxID, err := s.db.CountJobs(ctx, f, BulkLimit+1)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.CountJobsResponse{Count: protoconv.Count(min(n, BulkLimit)), More: n > BulkLimit, Limit: BulkLimit, MaxId: maxID}
	return out, nil
}

// BulkJobAction requeues or cancels the jobs a filter selects, up to
// max_id and at most BulkLimit of them, each as RequeueJob or CancelJob
// would, under the caller's name.
func (s *Service) BulkJobAction(ctx context.Context, req *gradebrokerv1.BulkJobActionRequest) (*gradebrokerv1.BulkJobActionResponse, error) {
	p, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	// Once confirmed, the action runs to its end even if the browser or
	// client that asked gives up waiting: a half-done bulk action would
	// leave its count meaningless.
	ctx = context.WithoutCancel(ctx)
	var act func(id int64) error
	switch req.GetAction() {
	case gradebrokerv1.BulkAction_BULK_ACTION_REQUEUE:
		act = func(id int64) error { return s.d.RequeueJob(ctx, id, actor(p)) }
	case gradebrokerv1.BulkAction_BULK_ACTION_CANCEL:
		act = func(id int64) error { return s.d.CancelJob(ctx, id, actor(p)) }
	default:
		return nil, s.fail(ctx, fmt.Errorf("%w: action must be requeue or cancel", broker.ErrInvalid))
	}
	if req.GetMaxId() <= 0 {
		return nil, s.fail(ctx, fmt.Errorf("%w: max_id is required: the largest id CountJobs counted, so that only what was confirmed is touched", broker.ErrInvalid))
	}
	f := filterFromProto(req.GetFilter())
	f.MaxID, f.Limit = req.GetMaxId(), store.MaxJobListLimit
	var (
		mu      sync.Mutex
		out     gradebrokerv1.BulkJobActionResponse
		fatal   error
		seen    int
		ids     = make(chan int64)
		workers sync.WaitGroup
	)
	for range bulkWorkers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for id := range ids {
				err := act(id)
				mu.Lock()
				switch {
				case err == nil:
					out.Done++
				case errors.Is(err, broker.ErrFailedPrecondition):
					out.Skipped++
					if out.FirstSkipReason == "" {
						out.FirstSkipReason = err.Error()
					}
				case fatal == nil:
					fatal = err
				}
				mu.Unlock()
			}
		}()
	}
	for seen < BulkLimit {
		jobs, err := s.db.ListJobs(ctx, f)
		if err != nil {
			mu.Lock()
			fatal = errors.Join(fatal, err)
			mu.Unlock()
			break
		}
		for _, j := range jobs[:min(len(jobs), BulkLimit-seen)] {
			ids <- j.ID
		}
		seen += len(jobs)
		mu.Lock()
		stop := fatal != nil
		mu.Unlock()
		if len(jobs) < f.Limit || stop {
			break
		}
		f.BeforeID = jobs[len(jobs)-1].ID
	}
	close(ids)
	workers.Wait()
	s.log.InfoContext(ctx, "bulk job action", "action", req.GetAction().String(), "by", p.Actor(), "done", out.Done,
		"skipped", out.Skipped, "max_id", req.GetMaxId(), "err", fatal)
	if fatal != nil {
		return nil, s.fail(ctx, fmt.Errorf("after %d jobs done and %d skipped: %w", out.Done, out.Skipped, fatal))
	}
	return &out, nil
}

// SubmitTestJob queues a job of the console's built-in platform, checked
// as a platform's job is: registered tags a server type covers, JSON data
// within the size limit, a priority within bounds.
func (s *Service) SubmitTestJob(ctx context.Context, req *gradebrokerv1.SubmitTestJobRequest) (*gradebrokerv1.SubmitTestJobResponse, error) {
	p, err := s.caller(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if s.jobs.submit == nil {
		return nil, s.fail(ctx, fmt.Errorf("%w: this broker takes no test jobs", broker.ErrUnavailable))
	}
	nj, err := s.testJob(ctx, req)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	ins, err := s.jobs.submit.Submit(ctx, []broker.NewJob{nj}, nil, actor(p))
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "test job queued", "job_id", ins[0].ID, "by", p.Actor(), "tags", nj.Tags)
	return &gradebrokerv1.SubmitTestJobResponse{JobId: ins[0].ID}, nil
}

func (s *Service) testJob(ctx context.Context, req *gradebrokerv1.SubmitTestJobRequest) (broker.NewJob, error) {
	data := bytes.TrimSpace([]byte(req.GetJobdata()))
	if len(data) == 0 || (data[0] != '{' && data[0] != '[') || !json.Valid(data) {
		return broker.NewJob{}, fmt.Errorf("%w: jobdata must be a JSON object or array", broker.ErrInvalid)
	}
	if len(data) > maxTestJobData {
		return broker.NewJob{}, fmt.Errorf("%w: jobdata is %d bytes; the limit is %d", broker.ErrInvalid, len(data), maxTestJobData)
	}
	if len(req.GetName()) > 256 {
		return broker.NewJob{}, fmt.Errorf("%w: the name is longer than 256 bytes", broker.ErrInvalid)
	}
	if req.GetPriority() < -1000 || req.GetPriority() > 1000 {
		return broker.NewJob{}, fmt.Errorf("%w: priority %d is outside [-1000, 1000]", broker.ErrInvalid, req.GetPriority())
	}
	tags, err := store.NormalizeTags(req.GetTags())
	if err != nil {
		return broker.NewJob{}, err
	}
	known, err := s.db.ListTags(ctx)
	if err != nil {
		return broker.NewJob{}, err
	}
	types, err := s.db.ListServerTypes(ctx)
	if err != nil {
		return broker.NewJob{}, err
	}
	typeIDs, err := broker.EligibleTypes(tags, func(t string) bool { return containsTag(known, t) }, types)
	if err != nil {
		return broker.NewJob{}, fmt.Errorf("%w: %v", broker.ErrInvalid, err)
	}
	plat, err := s.db.PlatformByName(ctx, broker.ConsolePlatform)
	if err != nil {
		return broker.NewJob{}, fmt.Errorf("the console's platform: %w", err)
	}
	return broker.NewJob{PlatformID: plat.ID, Name: req.GetName(), Priority: int(req.GetPriority()), Tags: tags,
		JobData: data, TypeIDs: typeIDs}, nil
}

// Alerts returns the alerts whose condition held at the last check, for
// callers who see the whole broker.
func (s *Service) Alerts(ctx context.Context) ([]maint.Alert, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	if s.jobs.alerts == nil {
		return nil, nil
	}
	return s.jobs.alerts(), nil
}
