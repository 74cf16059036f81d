package console

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Live updates are server-sent events: every LiveEvery the page's live
// part is rendered again and, when it changed, sent whole as one "update"
// event, which static/console.js puts in place. The HTML comes from the
// same templates as the page, escaped the same way.

// recheckEvery is how often a live stream checks that its session still
// holds, so that a revoked session stops getting updates.
const recheckEvery = 5 * time.Second

// writeWindow is how long one event may take to write. The console's
// http.Server has a write timeout for ordinary pages; a stream moves its
// deadline forward before each event instead (http.ResponseController), so
// it lives as long as the browser keeps it open.
const writeWindow = 10 * time.Second

// liveCache keeps the overview's live part for one tick, so that many
// browsers on the overview cost one rendering per tick, not one each.
type liveCache struct {
	mu  sync.Mutex
	at  time.Time
	out []byte
}

func (l *liveCache) get(maxAge time.Duration, render func() ([]byte, error)) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.out != nil && time.Since(l.at) < maxAge {
		return l.out, nil
	}
	out, err := render()
	if err != nil {
		return nil, err
	}
	l.out, l.at = out, time.Now()
	return out, nil
}

// liveRender returns the renderer of a view's live part for request r.
func (c *Console) liveRender(r *http.Request, view string) (func(q request) ([]byte, error), error) {
	switch view {
	case "overview":
		return func(q request) ([]byte, error) {
			if q.p.Scoped() {
				return nil, errors.New("the overview shows the whole broker")
			}
			// Shared: the overview shows the same to every unscoped
			// principal, and holds no form (no anti-forgery token).
			return c.overview.get(c.cfg.LiveEvery/2, func() ([]byte, error) {
				data, err := c.overviewView(q)
				if err != nil {
					return nil, err
				}
				return c.fragment("overview", "live", page{Data: data})
			})
		}, nil
	case "servers":
		return c.liveOf("servers", c.serversView), nil
	case "jobs":
		f, err := parseJobFilter(r.URL.Query())
		if err != nil {
			return nil, err
		}
		return c.liveOf("jobs", func(q request) (any, error) { return c.jobsView(q, f) }), nil
	case "job":
		id, err := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
		if err != nil || id <= 0 {
			return nil, errors.New("id must be a job id")
		}
		return c.liveOf("job", func(q request) (any, error) { return c.jobView(q, id) }), nil
	}
	return nil, fmt.Errorf("no live view %q", view)
}

// liveOf renders the live block of page name with the data of view, in
// the frame of q (its anti-forgery token and role decide the buttons).
func (c *Console) liveOf(name string, view func(request) (any, error)) func(q request) ([]byte, error) {
	return func(q request) ([]byte, error) {
		data, err := view(q)
		if err != nil {
			return nil, err
		}
		return c.fragment(name, "live", page{Data: data, User: &user{Name: q.p.Name, Operator: q.operator(), Scoped: q.p.Scoped()},
			CSRF: csrfOf(q)})
	}
}

// live streams a view's updates until the browser leaves, the session
// ends or the console stops.
func (c *Console) live(w http.ResponseWriter, r *http.Request, q request) {
	render, err := c.liveRender(r, r.PathValue("view"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(b []byte) error {
		if err := rc.SetWriteDeadline(time.Now().Add(writeWindow)); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	// The first event tells the browser how soon to reconnect if the
	// stream breaks.
	if err := send([]byte("retry: 3000\n\n")); err != nil {
		return
	}
	tick := time.NewTicker(c.cfg.LiveEvery)
	defer tick.Stop()
	var last []byte
	checked := time.Now()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
		if time.Since(checked) >= recheckEvery {
			if _, _, err := c.admin.ConsoleSession(r.Context(), q.secret); err != nil {
				_ = send([]byte("event: ended\ndata: " + oneLine(err.Error()) + "\n\n"))
				return
			}
			checked = time.Now()
		}
		out, err := render(q)
		if err != nil {
			_ = send([]byte("event: failed\ndata: " + oneLine(errText(err)) + "\n\n"))
			return
		}
		if bytes.Equal(out, last) {
			// A comment keeps proxies from closing an idle stream and
			// tells us soon when the browser has gone.
			if err := send([]byte(": idle\n\n")); err != nil {
				return
			}
			continue
		}
		last = out
		if err := send(event("update", out)); err != nil {
			return
		}
	}
}

// event frames data as one server-sent event: each line of it a data line.
func event(name string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString("event: " + name + "\n")
	for _, line := range bytes.Split(data, []byte("\n")) {
		b.WriteString("data: ")
		b.Write(bytes.TrimRight(line, "\r"))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return b.Bytes()
}

func oneLine(s string) string {
	return string(bytes.ReplaceAll([]byte(s), []byte("\n"), []byte(" ")))
}
