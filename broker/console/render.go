package console

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker/adminapi"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// page is what every template gets: the frame (title, navigation, who is
// logged in, the message of the last form) and the page's own Data.
type page struct {
	Title   string
	Nav     string // the navigation entry to mark as current
	Broker  string
	User    *user
	CSRF    string
	Flash   string
	FlashOK bool
	Message string // the error page's
	// Live is the URL of the page's live updates; empty for a still page.
	Live string
	Data any
}

// user is who is logged in, as the frame shows it.
type user struct {
	Name     string
	Operator bool
	Scoped   bool
	Scope    string
}

// frame fills in the parts of p that come from the request.
func (c *Console) frame(w http.ResponseWriter, r *http.Request, q request, p page) page {
	p.Broker = c.cfg.Broker
	p.User = &user{Name: q.p.Name, Operator: q.operator(), Scoped: q.p.Scoped()}
	switch {
	case q.p.Platform != "":
		p.User.Scope = "platform " + q.p.Platform
	case len(q.p.Tags) > 0:
		p.User.Scope = "tags " + strings.Join(q.p.Tags, ", ")
	}
	p.CSRF = adminapi.ConsoleCSRF(q.secret)
	kind, msg := takeFlash(w, r)
	p.Flash, p.FlashOK = msg, kind == "ok"
	return p
}

// parseTemplates parses every page with the layout and the shared blocks:
// one template set per page, so that each defines its own "content".
func parseTemplates() (map[string]*template.Template, error) {
	base, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/_*.html")
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(path.Base(n), ".html")
		if strings.HasPrefix(name, "_") {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

// render writes page name in the layout.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, name string, p page) {
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		c.log.ErrorContext(r.Context(), "console: rendering a page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// fragment renders block of page name alone, for live updates.
func (c *Console) fragment(name, block string, p page) ([]byte, error) {
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, block, p); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// funcs are the templates' helpers: formatting only.
var funcs = template.FuncMap{
	"when": func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return "–"
		}
		return ts.AsTime().UTC().Format("2006-01-02 15:04:05")
	},
	"ago": func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return "never"
		}
		return roundDur(time.Since(ts.AsTime())) + " ago"
	},
	"dur": func(d *durationpb.Duration) string {
		if d == nil {
			return "–"
		}
		return roundDur(d.AsDuration())
	},
	// ms is a run's time to the millisecond: a grading run often takes
	// less than a second.
	"ms": func(d *durationpb.Duration) string {
		if d == nil {
			return "–"
		}
		return d.AsDuration().Round(time.Millisecond).String()
	},
	"bytes": humanize.IBytes,
	"limit": func(l gradebrokerv1.Limit) string {
		return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(l.String(), "LIMIT_")), "_", " ")
	},
	"state": func(s gradebrokerv1.JobState) string {
		return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
	},
	"delivery": func(s gradebrokerv1.DeliveryState) string {
		if s == gradebrokerv1.DeliveryState_DELIVERY_STATE_UNSPECIFIED {
			return "–"
		}
		return strings.ToLower(strings.TrimPrefix(s.String(), "DELIVERY_STATE_"))
	},
	"join":  func(s []string) string { return strings.Join(s, ", ") },
	"num":   func(n any) string { return groupDigits(fmt.Sprint(n)) },
	"id":    func(n int64) string { return strconv.FormatInt(n, 10) },
	"add":   func(a, b int) int { return a + b },
	"pct":   func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"float": func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) },
	"list":  func(s ...string) []string { return s },
	"dict": func(kv ...any) map[string]any {
		m := make(map[string]any, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			m[fmt.Sprint(kv[i])] = kv[i+1]
		}
		return m
	},
}

// roundDur prints a duration for people: 3s, 4m10s, 2h05m.
func roundDur(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

// groupDigits writes 1234567 as 1,234,567.
func groupDigits(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	if len(s) <= 3 || strings.ContainsAny(s, ".e") {
		if neg {
			return "-" + s
		}
		return s
	}
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	pre := len(s) % 3
	if pre > 0 {
		b.WriteString(s[:pre])
	}
	for i := pre; i < len(s); i += 3 {
		if b.Len() > 0 && !(neg && b.Len() == 1) {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}
