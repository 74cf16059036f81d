package broker

import (
	"fmt"
	"regexp"
	"time"
)

// namePattern is what names of platforms, servers, tags, types and operators
// look like: safe in logs, URLs, file names and certificate subjects.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// CheckName returns an ErrInvalid error naming what (for example "tag") when
// name is not a valid name.
func CheckName(what, name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: %s name %q must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, what, name)
	}
	return nil
}

// CertIdentity is what the broker stores of a client certificate to
// recognise it later.
type CertIdentity struct {
	Serial      string
	Issuer      string
	Subject     string
	Fingerprint string
	Role        string
	NotAfter    time.Time
}

// Operator is a person or tool allowed to call the admin API.
type Operator struct {
	ID        int64
	Name      string
	Cert      CertIdentity
	CreatedAt time.Time
}

// Tag is a capability a job may need.
type Tag struct {
	ID          int64
	Name        string
	Description string
}

// ServerType is a named set of tags; its servers take exactly the jobs whose
// tags are a subset of them.
type ServerType struct {
	ID   int64
	Name string
	Tags []string
}

// Covers reports whether a server of this type may take a job with tags.
func (t ServerType) Covers(tags []string) bool {
	for _, want := range tags {
		found := false
		for _, have := range t.Tags {
			if have == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// ConsolePlatform is the name of the built-in platform that the web
// console's test jobs belong to. CheckName refuses it, so no operator can
// register, change or remove a platform of that name; it has no key (no
// token can claim it) and no return URL (its results are delivered
// nowhere).
const ConsolePlatform = "@console"

// Protocol is the protocol a platform speaks: how its jobs reach the broker
// and, above all, how its results are sent back. Each protocol has its
// edge adapter for requests and its own way of turning a delivery into a
// request in the one result outbox (broker/delivery); the broker accepts
// for a platform only the protocols it can deliver.
type Protocol string

// ProtocolGradebroker is gradebroker's own protocol: tokens to the REST
// gateway, and a signed and encrypted callback token POSTed to the
// platform's return_url. It is every platform's protocol unless an operator
// chose another.
const ProtocolGradebroker Protocol = "gradebroker"

// ProtocolGraderqueue is France-ioi's graderqueue's protocol: tokens to
// api.php (broker/graderqueue), and results POSTed to the platform's
// return_url as graderqueue's sendresults.php posted them, a form field
// sToken holding {"sTaskName", "sResultData", "date"}.
const ProtocolGraderqueue Protocol = "graderqueue"

// Platform is a client that submits jobs and receives their results.
type Platform struct {
	ID            int64
	Name          string
	Protocol      Protocol
	PublicKeyPEM  string
	ReturnURL     string
	RestrictPaths []string
	ForceTag      string
	Cert          *CertIdentity
	CreatedAt     time.Time
	// LegacyTokens allows the tokens graderqueue's platforms make: no kid,
	// iat, exp or jti, a date claim (see token.Opener.OpenWith).
	LegacyTokens bool
}

// Executor is one of a grading server's executors, as graderd reports it
// when it connects.
type Executor struct {
	// Name is its name in graderd's config ("default" for the default one).
	Name string
	// Type is its kind: "exec", "docker", "kubernetes"...
	Type string
	// Sandbox is how its runs are isolated ("crun", "docker"...), or
	// SandboxNone when an operator turned isolation off.
	Sandbox string
}

// SandboxNone is Executor.Sandbox of an executor whose graders run with
// graderd's own powers.
const SandboxNone = "none"

// Server is one registered grading machine.
type Server struct {
	ID                int64
	Name              string
	Cert              CertIdentity
	Type              string
	TypeID            int64
	MaxConcurrentJobs int
	WakeupURL         string
	WakeupFails       int
	LastSeen          time.Time
	CreatedAt         time.Time
	// Pull is empty for a server that runs graderd, which connects with
	// its certificate and has jobs pushed to it. A server that pulls its
	// jobs through a compatibility adapter (PullXQueue: an XQueue user
	// pulling one queue) has no certificate (Cert holds a placeholder no
	// certificate matches) and gets a job only when it asks for one.
	Pull string
}

// JobState is where a job is in its life. The numbers are stored in the
// database and match gradebroker.v1.JobState.
type JobState int

// The job states.
const (
	JobQueued    JobState = 1
	JobAssigned  JobState = 2
	JobDone      JobState = 3
	JobFailed    JobState = 4
	JobCancelled JobState = 5
)

// Final reports whether no further transition can happen.
func (s JobState) Final() bool { return s >= JobDone }

// String returns the state's lower-case name.
func (s JobState) String() string {
	switch s {
	case JobQueued:
		return "queued"
	case JobAssigned:
		return "assigned"
	case JobDone:
		return "done"
	case JobFailed:
		return "failed"
	case JobCancelled:
		return "cancelled"
	}
	return fmt.Sprintf("JobState(%d)", int(s))
}

// DeliveryState is where a result callback is. The numbers match
// gradebroker.v1.DeliveryState.
type DeliveryState int

// The delivery states.
const (
	DeliveryNone      DeliveryState = 0
	DeliveryPending   DeliveryState = 1
	DeliveryDelivered DeliveryState = 2
	DeliveryDead      DeliveryState = 3
)

// Outcome is how a lease ended, as graderd reports it. The numbers match
// gradebroker.v1.Outcome.
type Outcome int

// The outcomes.
const (
	OutcomeOK        Outcome = 1
	OutcomeFatal     Outcome = 2
	OutcomeTemporary Outcome = 3
	OutcomeTimeout   Outcome = 4
	// OutcomeNotStarted: the server had no free slot for the job and did
	// not start it.
	OutcomeNotStarted Outcome = 5
)

// String returns the outcome's lower-case name, as stored in an attempt's end.
func (o Outcome) String() string {
	switch o {
	case OutcomeOK:
		return "ok"
	case OutcomeFatal:
		return "fatal"
	case OutcomeTemporary:
		return "temporary"
	case OutcomeTimeout:
		return "timeout"
	case OutcomeNotStarted:
		return "not_started"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// NewJob is a job as a platform submits it, after validation.
type NewJob struct {
	PlatformID     int64
	Name           string
	Priority       int
	Tags           []string
	Timeout        time.Duration
	IdempotencyKey string
	JobData        []byte
	RestrictPaths  []string
	MaxAttempts    int
	// TypeIDs are the server types whose tags cover Tags, computed once at
	// submission.
	TypeIDs []int64
	// Queue is the pull queue the job was submitted to (XQueue's
	// queue_name), or empty. A client pulling a queue takes that queue's
	// jobs only; graderd's servers take any job their type covers.
	Queue string
}

// Job is a job as stored.
type Job struct {
	ID             int64
	PlatformID     int64
	Platform       string
	Name           string
	State          JobState
	Priority       int
	Tags           []string
	Timeout        time.Duration
	IdempotencyKey string
	JobData        []byte
	RestrictPaths  []string
	Attempts       int
	MaxAttempts    int
	LeaseID        int64
	Server         string
	Error          string
	Result         []byte
	Log            string
	Delivery       DeliveryState
	CreatedAt      time.Time
	UpdatedAt      time.Time
	FinishedAt     time.Time
	TypeIDs        []int64
	Queue          string
	History        []Attempt
	Events         []Event
}

// Attempt is one lease of a job.
type Attempt struct {
	LeaseID    int64
	Number     int
	Server     string
	AssignedAt time.Time
	Deadline   time.Time
	EndedAt    time.Time
	End        LeaseEnd // empty while the lease runs
	Reason     string
	// Usage is what the attempt's run used, when its server reported it;
	// nil otherwise (the lease ended without a result, or the executor
	// measured nothing).
	Usage *Usage
	// Limit is the limit that ended the run, if one did.
	Limit Limit
}

// Usage is what one grading run used, all its processes together, as its
// server measured it. A zero field was not measured.
type Usage struct {
	// CPUTime is user and system CPU time.
	CPUTime time.Duration
	// PeakMemory is the highest memory use seen, in bytes.
	PeakMemory int64
	// WallTime is the time from the run's start to its end.
	WallTime time.Duration
}

// Limit names the limit that ended a grading run; "" when none did. The
// names are those of gradebroker.v1.Limit, lower case, as stored and as the
// result callback spells them.
type Limit string

// The limits that can end a run.
const (
	// LimitWallTime: the job's timeout.
	LimitWallTime Limit = "wall_time"
	// LimitCPUTime: the CPU time of all the run's processes together.
	LimitCPUTime Limit = "cpu_time"
	// LimitMemory: the memory of all the run's processes together.
	LimitMemory Limit = "memory"
	// LimitPids: how many processes and threads the run may have.
	LimitPids Limit = "pids"
	// LimitOutput: the size of the result.
	LimitOutput Limit = "output"
	// LimitDisk: the size of the run's writable file systems.
	LimitDisk Limit = "disk"
	// LimitUnknown: a limit this broker does not know (a newer graderd's).
	LimitUnknown Limit = "unknown"
)

// LeaseEnd is how a lease ended, as stored with its attempt and shown to
// operators and platforms.
type LeaseEnd string

// The ways a lease ends. The first four are the server's outcomes.
const (
	// EndOK: the server reported a final result.
	EndOK LeaseEnd = "ok"
	// EndFatal: the server reported a final error.
	EndFatal LeaseEnd = "fatal"
	// EndTemporary: the server reported a failure another server might not
	// have.
	EndTemporary LeaseEnd = "temporary"
	// EndTimeout: the grader ran past its timeout.
	EndTimeout LeaseEnd = "timeout"
	// EndInvalid: the server sent an empty, non-JSON or unknown result.
	EndInvalid LeaseEnd = "invalid"
	// EndExpired: no result by the lease deadline.
	EndExpired LeaseEnd = "expired"
	// EndDisconnected: the server did not come back within the reconnect
	// grace.
	EndDisconnected LeaseEnd = "disconnected"
	// EndLost: the server reconnected without it.
	EndLost LeaseEnd = "lost"
	// EndCancelled: the job was cancelled.
	EndCancelled LeaseEnd = "cancelled"
	// EndRequeued: an operator took the job back.
	EndRequeued LeaseEnd = "requeued"
	// EndRemoved: an operator removed the server.
	EndRemoved LeaseEnd = "removed"
	// EndNotStarted: the server had no free slot and did not start the
	// job; the attempt was given back.
	EndNotStarted LeaseEnd = "not_started"
)

// Reported tells whether the server reported this end in a result, rather
// than the broker deciding it.
func (e LeaseEnd) Reported() bool {
	switch e {
	case EndOK, EndFatal, EndTemporary, EndTimeout, EndInvalid, EndNotStarted:
		return true
	}
	return false
}

// Event is one entry of a job's audit trail.
type Event struct {
	At      time.Time
	Kind    string
	Actor   string
	LeaseID int64
	Detail  string
}
