package console

import (
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker/maint"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// --- overview ---

// overviewData is the overview's live part.
type overviewData struct {
	Queue  *gradebrokerv1.GetQueueStatsResponse
	Charts []chart
	Alerts []maint.Alert
	At     string
}

func (c *Console) overviewView(q request) (any, error) {
	st, err := c.admin.GetQueueStats(q.ctx, &gradebrokerv1.GetQueueStatsRequest{})
	if err != nil {
		return nil, err
	}
	alerts, err := c.admin.Alerts(q.ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return overviewData{Queue: st, Charts: c.charts(now), Alerts: alerts, At: now.UTC().Format("15:04:05")}, nil
}

func (c *Console) overviewPage(w http.ResponseWriter, r *http.Request, q request) {
	if q.p.Scoped() {
		// Course staff see their own jobs and nothing else.
		http.Redirect(w, r, "/jobs", http.StatusSeeOther)
		return
	}
	c.livePage(w, r, q, "overview", "Overview", "/live/overview", c.overviewView)
}

// livePage renders a page whose live part comes from view.
func (c *Console) livePage(w http.ResponseWriter, r *http.Request, q request, name, title, live string, view func(request) (any, error)) {
	data, err := view(q)
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, name, c.frame(w, r, q, page{Title: title, Nav: name, Live: live, Data: data}))
}

// --- servers ---

func (c *Console) serversView(q request) (any, error) {
	return c.admin.ListServers(q.ctx, &gradebrokerv1.ListServersRequest{})
}

func (c *Console) serversPage(w http.ResponseWriter, r *http.Request, q request) {
	c.livePage(w, r, q, "servers", "Servers", "/live/servers", c.serversView)
}

func (c *Console) serverAction(w http.ResponseWriter, r *http.Request, q request) {
	name := r.PathValue("name")
	var msg string
	var err error
	switch r.PathValue("action") {
	case "drain", "undrain":
		undrain := r.PathValue("action") == "undrain"
		_, err = c.admin.DrainServer(q.ctx, &gradebrokerv1.DrainServerRequest{Name: name, Undrain: undrain})
		msg = "Server " + name + " drained: it gets no new jobs; its running jobs finish."
		if undrain {
			msg = "Server " + name + " takes jobs again."
		}
	case "requeue":
		var resp *gradebrokerv1.RequeueServerJobsResponse
		resp, err = c.admin.RequeueServerJobs(q.ctx, &gradebrokerv1.RequeueServerJobsRequest{Name: name})
		if err == nil {
			msg = strconv.Itoa(int(resp.GetRequeued())) + " running job(s) of " + name + " went back to the queue."
		}
	default:
		c.errorPage(w, r, http.StatusNotFound, "There is no such server action.")
		return
	}
	if err != nil {
		c.failed(w, r, "/servers", err)
		return
	}
	c.done(w, r, "/servers", msg)
}

// --- deliveries ---

type deliveriesData struct {
	State      string
	Platform   string
	Deliveries []*gradebrokerv1.Delivery
}

func (c *Console) deliveriesPage(w http.ResponseWriter, r *http.Request, q request) {
	d := deliveriesData{State: r.URL.Query().Get("state"), Platform: r.URL.Query().Get("platform")}
	if d.State == "" {
		d.State = "dead"
	}
	req := &gradebrokerv1.ListDeliveriesRequest{Platform: d.Platform, Limit: 200}
	switch d.State {
	case "pending":
		req.State = gradebrokerv1.DeliveryState_DELIVERY_STATE_PENDING
	case "dead":
		req.State = gradebrokerv1.DeliveryState_DELIVERY_STATE_DEAD
	case "delivered":
		req.State = gradebrokerv1.DeliveryState_DELIVERY_STATE_DELIVERED
	case "all":
	default:
		c.errorPage(w, r, http.StatusBadRequest, "state must be pending, dead, delivered or all")
		return
	}
	resp, err := c.admin.ListDeliveries(q.ctx, req)
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	d.Deliveries = resp.GetDeliveries()
	c.render(w, r, http.StatusOK, "deliveries", c.frame(w, r, q, page{Title: "Deliveries", Nav: "deliveries", Data: d}))
}

func (c *Console) redeliver(w http.ResponseWriter, r *http.Request, q request) {
	req := &gradebrokerv1.RedeliverDeliveriesRequest{}
	back := "/deliveries"
	if id := r.PostFormValue("id"); id != "" {
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil || n <= 0 {
			c.errorPage(w, r, http.StatusBadRequest, "delivery id must be a positive number")
			return
		}
		req.Ids = []int64{n}
	} else if p := r.PostFormValue("platform"); p != "" {
		req.Platform = p
	} else {
		req.AllDead = true
	}
	if j := r.PostFormValue("job"); j != "" {
		back = "/jobs/" + j
		if _, err := strconv.ParseInt(j, 10, 64); err != nil {
			back = "/deliveries"
		}
	}
	resp, err := c.admin.RedeliverDeliveries(q.ctx, req)
	if err != nil {
		c.failed(w, r, back, err)
		return
	}
	c.done(w, r, back, strconv.Itoa(int(resp.GetRedelivered()))+" delivery(ies) will be sent again.")
}

// --- sessions ---

func (c *Console) sessionsPage(w http.ResponseWriter, r *http.Request, q request) {
	resp, err := c.admin.ListConsoleSessions(q.ctx, &gradebrokerv1.ListConsoleSessionsRequest{})
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "sessions", c.frame(w, r, q, page{Title: "Sessions", Nav: "sessions",
		Data: struct {
			Sessions []*gradebrokerv1.ConsoleSession
			Own      int64
		}{resp.GetSessions(), q.sess.ID}}))
}

func (c *Console) revokeSession(w http.ResponseWriter, r *http.Request, q request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		c.errorPage(w, r, http.StatusBadRequest, "session id must be a number")
		return
	}
	if _, err := c.admin.RevokeConsoleSession(q.ctx, &gradebrokerv1.RevokeConsoleSessionRequest{Id: id}); err != nil {
		c.failed(w, r, "/sessions", err)
		return
	}
	c.done(w, r, "/sessions", "Session "+strconv.FormatInt(id, 10)+" revoked.")
}

// --- test jobs ---

type testData struct {
	Tags    []*gradebrokerv1.Tag
	Types   []*gradebrokerv1.ServerType
	Picked  map[string]bool
	Jobdata string
	Name    string
}

func (c *Console) testPage(w http.ResponseWriter, r *http.Request, q request) {
	c.renderTest(w, r, q, testData{Jobdata: "{\n  \n}", Picked: map[string]bool{}}, "")
}

// renderTest shows the test job form with d filled in, and errMsg if the
// last try was refused.
func (c *Console) renderTest(w http.ResponseWriter, r *http.Request, q request, d testData, errMsg string) {
	tags, err := c.admin.ListTags(q.ctx, &gradebrokerv1.ListTagsRequest{})
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	types, err := c.admin.ListServerTypes(q.ctx, &gradebrokerv1.ListServerTypesRequest{})
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	d.Tags, d.Types = tags.GetTags(), types.GetServerTypes()
	p := c.frame(w, r, q, page{Title: "Send a test job", Nav: "test", Data: d})
	code := http.StatusOK
	if errMsg != "" {
		p.Flash, p.FlashOK, code = errMsg, false, http.StatusBadRequest
	}
	c.render(w, r, code, "test", p)
}

func (c *Console) submitTest(w http.ResponseWriter, r *http.Request, q request) {
	tags := r.PostForm["tag"]
	req := &gradebrokerv1.SubmitTestJobRequest{Tags: tags, Jobdata: r.PostFormValue("jobdata"), Name: r.PostFormValue("name")}
	resp, err := c.admin.SubmitTestJob(q.ctx, req)
	if err != nil {
		if st, _ := status.FromError(err); st.Code() == codes.InvalidArgument {
			// Keep what was typed: the message says what to fix.
			d := testData{Jobdata: req.Jobdata, Name: req.Name, Picked: map[string]bool{}}
			for _, t := range tags {
				d.Picked[t] = true
			}
			c.renderTest(w, r, q, d, st.Message())
			return
		}
		c.failed(w, r, "/test", err)
		return
	}
	c.done(w, r, "/jobs/"+strconv.FormatInt(resp.GetJobId(), 10), "Test job "+strconv.FormatInt(resp.GetJobId(), 10)+" queued; this page follows it.")
}
