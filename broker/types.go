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
}

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
}

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
