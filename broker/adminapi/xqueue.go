package adminapi

import (
	"context"
	"fmt"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/password"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/store"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// This file is the XQueue interface's registry: its queues, and its users
// with their passwords (hashed here, never stored or logged in clear),
// callback allow-lists and pull queues. The servers of pulling clients are
// made by the XQueue interface on a first pull; what these calls remove or
// retype goes to the dispatcher like any server's change.

// maxQueueTimeout bounds a queue's timeout as the broker's max_timeout
// does by default; the dispatcher bounds it again by its own.
const maxQueueTimeout = 24 * time.Hour

// checkQueueTimeout refuses a negative or absurd timeout.
func checkQueueTimeout(d time.Duration) error {
	if d < 0 || d > maxQueueTimeout {
		return fmt.Errorf("%w: timeout %s is not between 0 (the broker's default) and %s", broker.ErrInvalid, d, maxQueueTimeout)
	}
	return nil
}

// AddXQueueQueue registers an XQueue queue.
func (s *Service) AddXQueueQueue(ctx context.Context, req *gradebrokerv1.AddXQueueQueueRequest) (*gradebrokerv1.AddXQueueQueueResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	q := broker.XQueueQueue{Name: req.GetName(), Tags: req.GetTags(), Type: req.GetType(), Timeout: req.GetTimeout().AsDuration()}
	if err := checkQueueTimeout(q.Timeout); err != nil {
		return nil, s.fail(ctx, err)
	}
	q, err := s.db.AddXQueueQueue(ctx, q)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AddXQueueQueueResponse{Queue: s.queueToProto(q)}, nil
}

// UpdateXQueueQueue changes the fields the request sets; a new type goes to
// the dispatcher for every server of the queue's pulling clients.
func (s *Service) UpdateXQueueQueue(ctx context.Context, req *gradebrokerv1.UpdateXQueueQueueRequest) (*gradebrokerv1.UpdateXQueueQueueResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	var u store.XQueueQueueUpdate
	if req.Tags != nil {
		tags := req.GetTags().GetValues()
		u.Tags = &tags
	}
	u.Type = req.Type
	if req.Timeout != nil {
		d := req.GetTimeout().AsDuration()
		if err := checkQueueTimeout(d); err != nil {
			return nil, s.fail(ctx, err)
		}
		u.Timeout = &d
	}
	q, changed, err := s.db.UpdateXQueueQueue(ctx, req.GetName(), u)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	for _, name := range changed {
		s.d.ServerChanged(ctx, name)
	}
	return &gradebrokerv1.UpdateXQueueQueueResponse{Queue: s.queueToProto(q)}, nil
}

func (s *Service) queueToProto(q broker.XQueueQueue) *gradebrokerv1.XQueueQueue {
	p := protoconv.XQueueQueueToProto(q)
	p.Waiting = protoconv.Count(s.d.QueueLength(q.Name))
	return p
}

// ListXQueueQueues lists the XQueue queues with how many jobs wait in each.
func (s *Service) ListXQueueQueues(ctx context.Context, _ *gradebrokerv1.ListXQueueQueuesRequest) (*gradebrokerv1.ListXQueueQueuesResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	qs, err := s.db.ListXQueueQueues(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListXQueueQueuesResponse{}
	for _, q := range qs {
		out.Queues = append(out.Queues, s.queueToProto(q))
	}
	return out, nil
}

// RemoveXQueueQueue removes a queue and the servers of its pulling clients.
func (s *Service) RemoveXQueueQueue(ctx context.Context, req *gradebrokerv1.RemoveXQueueQueueRequest) (*gradebrokerv1.RemoveXQueueQueueResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	removed, err := s.db.RemoveXQueueQueue(ctx, req.GetName())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.serversRemoved(ctx, removed)
	return &gradebrokerv1.RemoveXQueueQueueResponse{RemovedServers: removed}, nil
}

// serversRemoved tells the dispatcher of servers whose registrations went.
func (s *Service) serversRemoved(ctx context.Context, names []string) {
	for _, name := range names {
		s.d.ServerRemoved(ctx, name)
	}
}

// checkXQueueLists checks a user's hosts and pull queues.
func checkXQueueLists(hosts, httpHosts, queues []string) error {
	for _, h := range append(append([]string(nil), hosts...), httpHosts...) {
		if err := broker.CheckHost(h); err != nil {
			return err
		}
	}
	for _, q := range queues {
		if q == broker.AnyQueue {
			continue
		}
		if err := broker.CheckName("XQueue queue", q); err != nil {
			return err
		}
	}
	return nil
}

// AddXQueueUser registers an XQueue user, keeping a bcrypt hash of its
// password.
func (s *Service) AddXQueueUser(ctx context.Context, req *gradebrokerv1.AddXQueueUserRequest) (*gradebrokerv1.AddXQueueUserResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := checkXQueueLists(req.GetCallbackHosts(), req.GetHttpCallbackHosts(), req.GetPullQueues()); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := broker.CheckName("XQueue user", req.GetName()); err != nil {
		return nil, s.fail(ctx, err)
	}
	hash, err := password.Hash(req.GetPassword())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	u, err := s.db.AddXQueueUser(ctx, broker.XQueueUser{Name: req.GetName(), PasswordHash: hash, Platform: req.GetPlatform(),
		CallbackHosts: req.GetCallbackHosts(), HTTPCallbackHosts: req.GetHttpCallbackHosts(),
		CallbackAuthUser: req.GetCallbackAuthUser(), CallbackAuthPassword: req.GetCallbackAuthPassword(),
		PullQueues: req.GetPullQueues(), MaxJobs: int(req.GetMaxJobs())})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &gradebrokerv1.AddXQueueUserResponse{User: protoconv.XQueueUserToProto(u)}, nil
}

// UpdateXQueueUser changes the fields the request sets. The servers of the
// queues the user may no longer pull are removed, their jobs requeued.
func (s *Service) UpdateXQueueUser(ctx context.Context, req *gradebrokerv1.UpdateXQueueUserRequest) (*gradebrokerv1.UpdateXQueueUserResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	err := checkXQueueLists(req.GetCallbackHosts().GetValues(), req.GetHttpCallbackHosts().GetValues(), req.GetPullQueues().GetValues())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	u := store.XQueueUserUpdate{Platform: req.Platform, CallbackAuthUser: req.CallbackAuthUser, CallbackAuthPassword: req.CallbackAuthPassword}
	if req.Password != nil {
		hash, err := password.Hash(req.GetPassword())
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		u.PasswordHash = &hash
	}
	for _, l := range []struct {
		in  *gradebrokerv1.StringList
		out **[]string
	}{{req.CallbackHosts, &u.CallbackHosts}, {req.HttpCallbackHosts, &u.HTTPCallbackHosts}, {req.PullQueues, &u.PullQueues}} {
		if l.in != nil {
			v := l.in.GetValues()
			*l.out = &v
		}
	}
	if req.MaxJobs != nil {
		n := int(req.GetMaxJobs())
		u.MaxJobs = &n
	}
	user, removed, err := s.db.UpdateXQueueUser(ctx, req.GetName(), u)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.serversRemoved(ctx, removed)
	return &gradebrokerv1.UpdateXQueueUserResponse{User: protoconv.XQueueUserToProto(user), RemovedServers: removed}, nil
}

// ListXQueueUsers lists the XQueue users, never their passwords.
func (s *Service) ListXQueueUsers(ctx context.Context, _ *gradebrokerv1.ListXQueueUsersRequest) (*gradebrokerv1.ListXQueueUsersResponse, error) {
	if _, err := s.reader(ctx, false); err != nil {
		return nil, s.fail(ctx, err)
	}
	us, err := s.db.ListXQueueUsers(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &gradebrokerv1.ListXQueueUsersResponse{}
	for _, u := range us {
		out.Users = append(out.Users, protoconv.XQueueUserToProto(u))
	}
	return out, nil
}

// RemoveXQueueUser removes a user and the servers of its pulling clients.
func (s *Service) RemoveXQueueUser(ctx context.Context, req *gradebrokerv1.RemoveXQueueUserRequest) (*gradebrokerv1.RemoveXQueueUserResponse, error) {
	if _, err := s.caller(ctx); err != nil {
		return nil, s.fail(ctx, err)
	}
	removed, err := s.db.RemoveXQueueUser(ctx, req.GetName())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.serversRemoved(ctx, removed)
	return &gradebrokerv1.RemoveXQueueUserResponse{RemovedServers: removed}, nil
}
