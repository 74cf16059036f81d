package console

import (
	"fmt"
	"html/template"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// jobFilter is the jobs page's filter as the query string carries it.
type jobFilter struct {
	State    string
	Platform string
	Tag      string
	Server   string
	From, To string // "2006-01-02T15:04" (UTC), as an <input type=datetime-local> sends it
	Search   string
	Before   int64
	After    int64
}

// timeLayout is what datetime-local inputs send.
const timeLayout = "2006-01-02T15:04"

// jobStates are the states the filter offers.
var jobStates = []string{"queued", "assigned", "done", "failed", "cancelled"}

// parseJobFilter reads the jobs page's query string. It returns an error
// that says which field is wrong; the page shows it.
func parseJobFilter(v url.Values) (jobFilter, error) {
	f := jobFilter{State: v.Get("state"), Platform: v.Get("platform"), Tag: v.Get("tag"), Server: v.Get("server"),
		From: v.Get("from"), To: v.Get("to"), Search: strings.TrimSpace(v.Get("q"))}
	if f.State != "" {
		if _, ok := gradebrokerv1.JobState_value["JOB_STATE_"+strings.ToUpper(f.State)]; !ok || f.State == "unspecified" {
			return f, fmt.Errorf("state %q is not one of %s", f.State, strings.Join(jobStates, ", "))
		}
	}
	for _, t := range []struct {
		name string
		v    string
	}{{"from", f.From}, {"to", f.To}} {
		if t.v == "" {
			continue
		}
		if _, err := time.Parse(timeLayout, t.v); err != nil {
			return f, fmt.Errorf("%s %q is not a time like 2026-01-31T18:00", t.name, t.v)
		}
	}
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"before", &f.Before}, {"after", &f.After}} {
		if s := v.Get(p.name); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				return f, fmt.Errorf("%s %q is not a job id", p.name, s)
			}
			*p.dst = n
		}
	}
	if f.Before != 0 && f.After != 0 {
		return f, fmt.Errorf("page before a job or after one, not both")
	}
	for _, s := range []string{f.Platform, f.Tag, f.Server, f.Search} {
		if len(s) > 256 {
			return f, fmt.Errorf("a filter field is longer than 256 bytes")
		}
	}
	return f, nil
}

func (f jobFilter) state() gradebrokerv1.JobState {
	return gradebrokerv1.JobState(gradebrokerv1.JobState_value["JOB_STATE_"+strings.ToUpper(f.State)])
}

func stamp(s string) *timestamppb.Timestamp {
	if s == "" {
		return nil
	}
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return nil
	}
	return timestamppb.New(t)
}

// proto is the filter as the admin API takes it.
func (f jobFilter) proto() *gradebrokerv1.JobFilter {
	return &gradebrokerv1.JobFilter{State: f.state(), Platform: f.Platform, Tag: f.Tag, Server: f.Server,
		CreatedAfter: stamp(f.From), CreatedBefore: stamp(f.To), Search: f.Search}
}

// list is the page request of the filter.
func (f jobFilter) list(limit uint32) *gradebrokerv1.ListJobsRequest {
	p := f.proto()
	return &gradebrokerv1.ListJobsRequest{State: p.State, Platform: p.Platform, Tag: p.Tag, Server: p.Server,
		CreatedAfter: p.CreatedAfter, CreatedBefore: p.CreatedBefore, Search: p.Search, Limit: limit,
		BeforeId: f.Before, AfterId: f.After}
}

// query is the filter as a query string, without its page.
func (f jobFilter) query() url.Values {
	v := url.Values{}
	for _, kv := range [][2]string{{"state", f.State}, {"platform", f.Platform}, {"tag", f.Tag}, {"server", f.Server},
		{"from", f.From}, {"to", f.To}, {"q", f.Search}} {
		if kv[1] != "" {
			v.Set(kv[0], kv[1])
		}
	}
	return v
}

// Query is the filter's query string, for links. It is a template.URL so
// that html/template keeps its "=" and "&" (url.Values.Encode escaped the
// values already).
func (f jobFilter) Query() template.URL { return template.URL(f.query().Encode()) }

// Page is the query string of the page before (older than) or after
// (newer than) id.
func (f jobFilter) Page(dir string, id int64) template.URL {
	v := f.query()
	v.Set(dir, strconv.FormatInt(id, 10))
	return template.URL(v.Encode())
}

// Empty reports whether the filter selects every job.
func (f jobFilter) Empty() bool { return len(f.query()) == 0 }

// Fields are the filter's fields by query name, for hidden form inputs.
func (f jobFilter) Fields() map[string]string {
	out := map[string]string{}
	for k, v := range f.query() {
		out[k] = v[0]
	}
	return out
}
