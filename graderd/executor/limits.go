package executor

import (
	"cmp"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Limits bound one run. Every executor takes the same type, so that an
// operator writes a limit once and means the same thing on every executor;
// each executor's documentation says which limits it can enforce and how.
// Zero means "no limit" for the field, except where a field says otherwise.
type Limits struct {
	// CPUTime bounds the CPU time (user + system) of all the run's
	// processes together. No kernel interface enforces a total: the
	// executor reads the run's accounting and ends the run when it passes
	// the limit.
	CPUTime time.Duration
	// Memory bounds the memory of all the run's processes together, in
	// bytes, pages of its tmpfs file systems included.
	Memory int64
	// Pids bounds how many processes and threads the run may have at once.
	Pids int
	// OpenFiles bounds the open files of each process (RLIMIT_NOFILE; no
	// cgroup counts them for a whole run).
	OpenFiles int
	// TmpSize is the size of the run's private /tmp, in bytes.
	TmpSize int64
	// WorkSize is the size of the run's writable work directory, in bytes,
	// where the executor gives it a file system of its own.
	WorkSize int64
	// MaxStdout caps the result (standard output) in bytes; a larger result
	// ends the run FATAL with LimitOutput.
	MaxStdout int64
	// MaxStderr caps the kept log in bytes; a longer log is cut in the
	// middle, with a marker.
	MaxStderr int64
}

// WithDefaults returns l with every zero field that has a default of the
// hardened profile set to it: the output caps (DefaultMaxStdout,
// DefaultMaxStderr), Memory (DefaultMemory), Pids, OpenFiles, TmpSize and
// WorkSize. CPUTime has no default: zero stays "no limit". Executors that
// isolate their runs (the sandbox, containers) use it, so that a run is
// bounded the same way whichever runs it.
func (l Limits) WithDefaults() Limits {
	l.Memory = cmp.Or(l.Memory, DefaultMemory)
	l.MaxStdout = cmp.Or(l.MaxStdout, DefaultMaxStdout)
	l.MaxStderr = cmp.Or(l.MaxStderr, DefaultMaxStderr)
	l.Pids = cmp.Or(l.Pids, DefaultPids)
	l.OpenFiles = cmp.Or(l.OpenFiles, DefaultOpenFiles)
	l.TmpSize = cmp.Or(l.TmpSize, DefaultTmpSize)
	l.WorkSize = cmp.Or(l.WorkSize, DefaultWorkSize)
	return l
}

const (
	// DefaultMemory bounds the memory of a sandboxed run or a container
	// (swap off) when Limits.Memory is 0: without a bound, one run may push
	// the machine out of memory, and a run can lower its OOM score to the
	// level of graderd's neighbours, so the kernel might kill one of them
	// instead of the run.
	DefaultMemory = 1 << 30
	// DefaultContainerCPUs is a container's CPU quota, in CPUs, when its
	// executor sets none: an engine must be given one, or one container
	// may take the whole machine.
	DefaultContainerCPUs = 1.0
)

// Usage is what one run used, all its processes together. A zero field
// means the executor could not measure it.
type Usage struct {
	// CPUTime is user + system CPU time.
	CPUTime time.Duration
	// PeakMemory is the highest memory use seen, in bytes.
	PeakMemory int64
	// WallTime is the time from the run's start to its end.
	WallTime time.Duration
}

// Proto returns u as the protocol's Usage, or nil when nothing was measured.
func (u Usage) Proto() *gradebrokerv1.Usage {
	if u == (Usage{}) {
		return nil
	}
	return &gradebrokerv1.Usage{
		CpuTime:         durationpb.New(u.CPUTime),
		PeakMemoryBytes: uint64(max(u.PeakMemory, 0)),
		WallTime:        durationpb.New(u.WallTime),
	}
}

// Limit names the limit that ended a run, if one did.
type Limit int

// The limits that can end a run. Their numbers are the protocol's.
const (
	// LimitNone: no limit ended the run.
	LimitNone Limit = Limit(gradebrokerv1.Limit_LIMIT_UNSPECIFIED)
	// LimitWallTime: the job's timeout.
	LimitWallTime Limit = Limit(gradebrokerv1.Limit_LIMIT_WALL_TIME)
	// LimitCPUTime: Limits.CPUTime.
	LimitCPUTime Limit = Limit(gradebrokerv1.Limit_LIMIT_CPU_TIME)
	// LimitMemory: Limits.Memory.
	LimitMemory Limit = Limit(gradebrokerv1.Limit_LIMIT_MEMORY)
	// LimitPids: Limits.Pids.
	LimitPids Limit = Limit(gradebrokerv1.Limit_LIMIT_PIDS)
	// LimitOutput: Limits.MaxStdout.
	LimitOutput Limit = Limit(gradebrokerv1.Limit_LIMIT_OUTPUT)
	// LimitDisk: Limits.TmpSize or Limits.WorkSize.
	LimitDisk Limit = Limit(gradebrokerv1.Limit_LIMIT_DISK)
)

// String returns the limit's name as results and logs spell it: "wall time",
// "memory", and so on; "" for LimitNone.
func (l Limit) String() string {
	switch l {
	case LimitNone:
		return ""
	case LimitWallTime:
		return "wall time"
	case LimitCPUTime:
		return "CPU time"
	case LimitMemory:
		return "memory"
	case LimitPids:
		return "process count"
	case LimitOutput:
		return "output size"
	case LimitDisk:
		return "disk"
	}
	return fmt.Sprintf("Limit(%d)", int(l))
}

// Proto returns l as the protocol's Limit.
func (l Limit) Proto() gradebrokerv1.Limit { return gradebrokerv1.Limit(l) }
