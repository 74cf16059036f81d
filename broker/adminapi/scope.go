package adminapi

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// This file holds the viewers' scopes: which jobs a scoped viewer sees. The
// job list, the job page, the counts and the deliveries of a job all go
// through these two functions, over the admin API and in the console alike.

// scopeFilter narrows f to what p may see. A viewer scoped to a platform
// asking for another platform's jobs is refused rather than shown nothing,
// so that the message says why.
func scopeFilter(p Principal, f *store.JobFilter) error {
	if p.Platform != "" {
		if f.Platform != "" && f.Platform != p.Platform {
			return fmt.Errorf("%w: %s sees only %s", broker.ErrPermissionDenied, p.Name, p.scopeText())
		}
		f.Platform = p.Platform
	}
	if len(p.Tags) > 0 {
		f.AnyTags = p.Tags
	}
	return nil
}

// visible reports whether p may see job j.
func visible(p Principal, j broker.Job) bool {
	if p.Platform != "" && j.Platform != p.Platform {
		return false
	}
	if len(p.Tags) > 0 && !slices.ContainsFunc(j.Tags, func(t string) bool { return slices.Contains(p.Tags, t) }) {
		return false
	}
	return true
}

// visibleJob reads job id if p may see it. A job outside p's scope is "not
// found", as for a platform asking for another platform's job: its id
// reveals nothing.
func (s *Service) visibleJob(ctx context.Context, p Principal, id int64) (broker.Job, error) {
	j, err := s.db.GetJob(ctx, id)
	if err != nil {
		return broker.Job{}, err
	}
	if !visible(p, j) {
		return broker.Job{}, fmt.Errorf("%w: job %d", broker.ErrNotFound, id)
	}
	return j, nil
}

// timeOf converts an optional timestamp; unset is the zero time.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
