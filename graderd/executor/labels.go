package executor

import "strconv"

// The labels every executor puts on what it creates for a run (a
// container, a pod, a network), so that a restarted graderd can find and
// remove what a crashed one left, and an operator can tell whose run a
// thing is. The keys are valid as Docker labels and as Kubernetes label
// keys alike.
const (
	// LabelServer names the grading server (graderd's registered name)
	// that created the thing.
	LabelServer = "gradebroker.io/server"
	// LabelJob is the job's id.
	LabelJob = "gradebroker.io/job"
	// LabelLease is the lease's (fencing) id.
	LabelLease = "gradebroker.io/lease"
	// LabelExecutor names the executor in graderd's config.
	LabelExecutor = "gradebroker.io/executor"
)

// RunLabels returns the labels of job's run on server, by executor.
func RunLabels(server, executor string, job Job) map[string]string {
	return map[string]string{
		LabelServer:   server,
		LabelExecutor: executor,
		LabelJob:      strconv.FormatInt(job.JobID, 10),
		LabelLease:    strconv.FormatInt(job.LeaseID, 10),
	}
}
