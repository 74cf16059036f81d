package graderqueue

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker"
)

// mysqlTime is how MySQL's DATETIME columns reached api.php's JSON; the
// times here are UTC.
const mysqlTime = "2006-01-02 15:04:05"

// jobRow answers getjob as api.php did: origin "queue" and the job's row
// of graderqueue's queue table while it waits or runs, origin "done" and
// its row of the done table once final. The values are strings, as PDO
// reads MySQL columns; a NULL column is null. Columns gradebroker keeps no
// equivalent of hold what graderqueue held for them then: job_repeats is
// "0" (a resubmission is a job of its own here) and taskrevision "" (not
// kept). state and error are gradebroker's own, added: the job's state
// (queued, assigned, done, failed, cancelled) and why it failed.
//
// resultdata is what graderserver sent graderqueue, which graderd's
// taskgrader mode makes: {"errorcode": 0, "errormsg", "jobdata"}. A failed
// job without a result of its grader's gets {"errorcode": 1, "errormsg":
// its error}, as graderserver reported a fatal error, and so does a
// cancelled job.
func jobRow(j broker.Job) (origin string, row map[string]any) {
	str := func(n int64) string { return strconv.FormatInt(n, 10) }
	at := func(t time.Time) any {
		if t.IsZero() {
			return nil
		}
		return t.UTC().Format(mysqlTime)
	}
	fails := 0
	var started, deadline time.Time
	for _, a := range j.History {
		if a.End != "" && a.End != broker.EndOK && a.End != broker.EndFatal {
			fails++
		}
		started, deadline = a.AssignedAt, a.Deadline
	}
	sentTo := "-1"
	if j.Server != "" {
		sentTo = j.Server
	}
	row = map[string]any{
		"id":                 str(j.ID),
		"name":               j.Name,
		"jobusertaskid":      j.IdempotencyKey,
		"job_repeats":        "0",
		"priority":           strconv.Itoa(j.Priority),
		"timeout_sec":        str(int64(j.Timeout / time.Second)),
		"nb_fails":           strconv.Itoa(fails),
		"received_from":      str(j.PlatformID),
		"received_time":      at(j.CreatedAt),
		"sent_to":            sentTo,
		"grading_start_time": at(started),
		"tags":               strings.Join(j.Tags, ","),
		"taskrevision":       "",
		"jobdata":            string(j.JobData),
		"state":              j.State.String(),
		"error":              j.Error,
	}
	if !j.State.Final() {
		row["status"] = "queued"
		row["timeout_time"] = nil
		if j.State == broker.JobAssigned {
			row["status"] = "sent"
			row["timeout_time"] = at(deadline)
		}
		return "queue", row
	}
	row["jobid"] = str(j.ID)
	row["grading_end_time"] = at(j.FinishedAt)
	row["resultdata"] = resultdata(j)
	return "done", row
}

// resultdata is a final job's resultdata column.
func resultdata(j broker.Job) string {
	if len(j.Result) > 0 {
		return string(j.Result)
	}
	msg := j.Error
	if j.State == broker.JobCancelled {
		msg = "cancelled: " + msg
	}
	b, _ := json.Marshal(struct {
		Errorcode int    `json:"errorcode"`
		Errormsg  string `json:"errormsg"`
	}{1, msg}) // graderserver's fatal error: not to be retried
	return string(b)
}
