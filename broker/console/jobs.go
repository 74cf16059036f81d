package console

import (
	"net/http"
	"slices"
	"strconv"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"

	"github.com/gradebroker/gradebroker/broker"
)

// jobsPageSize is how many jobs one page lists.
const jobsPageSize = 50

// jobsData is the jobs page.
type jobsData struct {
	Filter    jobFilter
	Error     string
	Jobs      []*gradebrokerv1.Job
	States    []string
	Platforms []string
	Tags      []string
	Servers   []string
	// Older and Newer are the ids to page from; 0 when there is no such
	// page.
	Older, Newer int64
}

// jobsView lists a page of jobs; the live updates redo it.
func (c *Console) jobsView(q request, f jobFilter) (jobsData, error) {
	d := jobsData{Filter: f, States: jobStates}
	resp, err := c.admin.ListJobs(q.ctx, f.list(jobsPageSize+1))
	if err != nil {
		return d, err
	}
	jobs := resp.GetJobs()
	more := len(jobs) > jobsPageSize
	if more {
		if f.After != 0 {
			jobs = jobs[1:]
		} else {
			jobs = jobs[:jobsPageSize]
		}
	}
	d.Jobs = jobs
	if len(jobs) > 0 {
		if more || f.After != 0 {
			d.Older = jobs[len(jobs)-1].GetId()
		}
		if f.Before != 0 || (f.After != 0 && more) {
			d.Newer = jobs[0].GetId()
		}
	}
	return d, nil
}

// choices fills in the filter's drop-downs, as far as the caller may see
// the registry (a scoped viewer types what they want).
func (c *Console) choices(q request, d *jobsData) {
	if q.p.Scoped() {
		d.Tags = q.p.Tags
		return
	}
	if ps, err := c.admin.ListPlatforms(q.ctx, &gradebrokerv1.ListPlatformsRequest{}); err == nil {
		for _, p := range ps.GetPlatforms() {
			d.Platforms = append(d.Platforms, p.GetName())
		}
		d.Platforms = append(d.Platforms, broker.ConsolePlatform)
	}
	if ts, err := c.admin.ListTags(q.ctx, &gradebrokerv1.ListTagsRequest{}); err == nil {
		for _, t := range ts.GetTags() {
			d.Tags = append(d.Tags, t.GetName())
		}
	}
	if ss, err := c.admin.ListServers(q.ctx, &gradebrokerv1.ListServersRequest{}); err == nil {
		for _, s := range ss.GetServers() {
			d.Servers = append(d.Servers, s.GetName())
		}
	}
}

func (c *Console) jobsPage(w http.ResponseWriter, r *http.Request, q request) {
	f, err := parseJobFilter(r.URL.Query())
	d := jobsData{Filter: f, States: jobStates}
	if err == nil {
		d, err = c.jobsView(q, f)
	}
	if err != nil {
		d.Error = errText(err)
	}
	c.choices(q, &d)
	live := "/live/jobs?" + string(f.Query())
	if f.Before != 0 || f.After != 0 {
		live = "" // an older page does not change under the reader
	}
	code := http.StatusOK
	if d.Error != "" {
		code, live = http.StatusBadRequest, ""
	}
	c.render(w, r, code, "jobs", c.frame(w, r, q, page{Title: "Jobs", Nav: "jobs", Live: live, Data: d}))
}

// jobData is a job's page.
type jobData struct {
	Job        *gradebrokerv1.Job
	Jobdata    string
	Result     resultView
	Deliveries []*gradebrokerv1.Delivery
	CanRequeue bool
	CanCancel  bool
	Final      bool
}

func (c *Console) jobView(q request, id int64) (jobData, error) {
	resp, err := c.admin.GetJob(q.ctx, &gradebrokerv1.AdminServiceGetJobRequest{Id: id})
	if err != nil {
		return jobData{}, err
	}
	j := resp.GetJob()
	d := jobData{Job: j, Jobdata: prettyJSON(j.GetJobdata()), Result: viewResult(j.GetResult())}
	if j.GetResult() == "" {
		d.Result = resultView{}
	}
	ds, err := c.admin.ListDeliveries(q.ctx, &gradebrokerv1.ListDeliveriesRequest{JobId: id})
	if err != nil {
		return jobData{}, err
	}
	d.Deliveries = ds.GetDeliveries()
	s := j.GetState()
	d.Final = slices.Contains([]gradebrokerv1.JobState{gradebrokerv1.JobState_JOB_STATE_DONE, gradebrokerv1.JobState_JOB_STATE_FAILED,
		gradebrokerv1.JobState_JOB_STATE_CANCELLED}, s)
	d.CanCancel = !d.Final
	d.CanRequeue = s == gradebrokerv1.JobState_JOB_STATE_ASSIGNED || s == gradebrokerv1.JobState_JOB_STATE_FAILED ||
		s == gradebrokerv1.JobState_JOB_STATE_CANCELLED
	return d, nil
}

func jobID(r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	return id, err == nil && id > 0
}

func (c *Console) jobPage(w http.ResponseWriter, r *http.Request, q request) {
	id, ok := jobID(r)
	if !ok {
		c.errorPage(w, r, http.StatusNotFound, "A job id is a positive number.")
		return
	}
	idText := strconv.FormatInt(id, 10)
	c.livePage(w, r, q, "job", "Job "+idText, "/live/job?id="+idText, func(q request) (any, error) { return c.jobView(q, id) })
}

func (c *Console) jobAction(w http.ResponseWriter, r *http.Request, q request) {
	id, ok := jobID(r)
	if !ok {
		c.errorPage(w, r, http.StatusNotFound, "A job id is a positive number.")
		return
	}
	back := "/jobs/" + strconv.FormatInt(id, 10)
	var err error
	var msg string
	switch r.PathValue("action") {
	case "requeue":
		_, err = c.admin.RequeueJob(q.ctx, &gradebrokerv1.RequeueJobRequest{Id: id})
		msg = "Job requeued."
	case "cancel":
		_, err = c.admin.CancelJob(q.ctx, &gradebrokerv1.AdminServiceCancelJobRequest{Id: id})
		msg = "Job cancelled."
	default:
		c.errorPage(w, r, http.StatusNotFound, "There is no such job action.")
		return
	}
	if err != nil {
		c.failed(w, r, back, err)
		return
	}
	c.done(w, r, back, msg)
}

// bulkData is the confirmation of a bulk action.
type bulkData struct {
	Action string
	Filter jobFilter
	Count  *gradebrokerv1.CountJobsResponse
}

func bulkAction(s string) (gradebrokerv1.BulkAction, bool) {
	switch s {
	case "requeue":
		return gradebrokerv1.BulkAction_BULK_ACTION_REQUEUE, true
	case "cancel":
		return gradebrokerv1.BulkAction_BULK_ACTION_CANCEL, true
	}
	return 0, false
}

// bulkConfirm counts what a filter selects and asks to confirm.
func (c *Console) bulkConfirm(w http.ResponseWriter, r *http.Request, q request) {
	action := r.URL.Query().Get("action")
	if _, ok := bulkAction(action); !ok {
		c.errorPage(w, r, http.StatusBadRequest, "action must be requeue or cancel")
		return
	}
	f, err := parseJobFilter(r.URL.Query())
	if err != nil {
		c.errorPage(w, r, http.StatusBadRequest, err.Error())
		return
	}
	f.Before, f.After = 0, 0
	n, err := c.admin.CountJobs(q.ctx, &gradebrokerv1.CountJobsRequest{Filter: f.proto()})
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "bulk", c.frame(w, r, q, page{Title: "Confirm: " + action, Nav: "jobs",
		Data: bulkData{Action: action, Filter: f, Count: n}}))
}

func (c *Console) bulkAction(w http.ResponseWriter, r *http.Request, q request) {
	action, ok := bulkAction(r.PostFormValue("action"))
	if !ok {
		c.errorPage(w, r, http.StatusBadRequest, "action must be requeue or cancel")
		return
	}
	f, err := parseJobFilter(r.PostForm)
	if err != nil {
		c.errorPage(w, r, http.StatusBadRequest, err.Error())
		return
	}
	maxID, _ := strconv.ParseInt(r.PostFormValue("max_id"), 10, 64)
	back := "/jobs?" + string(f.Query())
	resp, err := c.admin.BulkJobAction(q.ctx, &gradebrokerv1.BulkJobActionRequest{Filter: f.proto(), Action: action, MaxId: maxID})
	if err != nil {
		c.failed(w, r, back, err)
		return
	}
	msg := strconv.Itoa(int(resp.GetDone())) + " job(s) " + map[string]string{"requeue": "requeued", "cancel": "cancelled"}[r.PostFormValue("action")]
	if resp.GetSkipped() > 0 {
		msg += "; " + strconv.Itoa(int(resp.GetSkipped())) + " skipped (" + resp.GetFirstSkipReason() + ")"
	}
	c.done(w, r, back, msg+".")
}
