package adminapitest

import (
	"context"

	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// opsState is what the fake's incident methods answer from.
type opsState struct {
	drained map[string]bool
	queue   dispatch.QueueStats
	err     error
}

// SetQueueStats sets what QueueStats returns.
func (f *FakeDispatcher) SetQueueStats(st dispatch.QueueStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops.queue = st
}

// SetOpsError makes RequeueServerJobs, DrainServer and QueueStats fail with
// err (nil: succeed).
func (f *FakeDispatcher) SetOpsError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops.err = err
}

// RequeueServerJobs records the call and returns the server's
// RequeueOnDrop, as ServerRemoved does.
func (f *FakeDispatcher) RequeueServerJobs(_ context.Context, name, actor string) (int, error) {
	f.record(Call{Method: "RequeueServerJobs", Name: name, Actor: actor})
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ops.err != nil {
		return 0, f.ops.err
	}
	return f.status[name].RequeueOnDrop, nil
}

// DrainServer records the call (as "DrainServer" or "UndrainServer") and
// remembers the flag for ServerDrained.
func (f *FakeDispatcher) DrainServer(_ context.Context, name string, drain bool, actor string) error {
	method := "DrainServer"
	if !drain {
		method = "UndrainServer"
	}
	f.record(Call{Method: method, Name: name, Actor: actor})
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ops.err != nil {
		return f.ops.err
	}
	if f.ops.drained == nil {
		f.ops.drained = make(map[string]bool)
	}
	f.ops.drained[name] = drain
	return nil
}

// ServerDrained reports what DrainServer set; like ServerStatus, it is not
// recorded.
func (f *FakeDispatcher) ServerDrained(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops.drained[name]
}

// QueueStats records the call and returns what SetQueueStats set.
func (f *FakeDispatcher) QueueStats(context.Context) (dispatch.QueueStats, error) {
	f.record(Call{Method: "QueueStats"})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops.queue, f.ops.err
}
