package console

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// sampler keeps the last window of the dispatcher's counters in memory,
// one sample every step, for the overview's charts. Nothing is stored: a
// restarted broker starts a new hour.
type sampler struct {
	mu      sync.Mutex
	step    time.Duration
	samples []sample // oldest first, at most cap
	cap     int
}

type sample struct {
	at       time.Time
	finished uint64 // jobs that became final, since start
	queued   int
	running  int
}

func newSampler(window, step time.Duration) *sampler {
	return &sampler{step: step, cap: int(window/step) + 1}
}

func (s *sampler) record(at time.Time, st dispatch.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == s.cap {
		copy(s.samples, s.samples[1:])
		s.samples = s.samples[:s.cap-1]
	}
	s.samples = append(s.samples, sample{at: at, finished: st.Finished, queued: st.Queued, running: st.Running})
}

// point is one value of a chart at a time.
type point struct {
	at time.Time
	v  float64
}

// series returns jobs finished per second and the queue depth (waiting
// jobs) over the window.
func (s *sampler) series() (rate, depth []point) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.samples {
		depth = append(depth, point{x.at, float64(x.queued)})
		if i > 0 {
			prev := s.samples[i-1]
			if dt := x.at.Sub(prev.at).Seconds(); dt > 0 && x.finished >= prev.finished {
				rate = append(rate, point{x.at, float64(x.finished-prev.finished) / dt})
			}
		}
	}
	return rate, depth
}

// chart is an SVG line chart, drawn on the server: no script, nothing
// inline but attributes, so it passes the console's CSP.
type chart struct {
	Title  string
	Unit   string
	Points string // the polyline's points attribute
	Area   string // the filled area under it
	Max    string // the top of the scale
	Last   string // the newest value
	Peak   string
	Empty  bool
	// Desc says in words what the chart shows, for screen readers.
	Desc string
	W, H int
}

// newChart draws points over the last window, now at the right edge.
func newChart(title, unit string, pts []point, window time.Duration, now time.Time, format func(float64) string) chart {
	const w, h = 600, 120
	c := chart{Title: title, Unit: unit, W: w, H: h, Empty: len(pts) < 2}
	peak := 0.0
	for _, p := range pts {
		peak = max(peak, p.v)
	}
	top := niceCeil(peak)
	var b strings.Builder
	for _, p := range pts {
		x := float64(w) * (1 - now.Sub(p.at).Seconds()/window.Seconds())
		if x < 0 {
			continue
		}
		y := float64(h) * (1 - p.v/top)
		fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
	}
	c.Points = strings.TrimSpace(b.String())
	if !c.Empty && c.Points != "" {
		first := strings.SplitN(c.Points, ",", 2)[0]
		c.Area = first + "," + strconv.Itoa(h) + " " + c.Points + " " + strconv.Itoa(w) + "," + strconv.Itoa(h)
	}
	c.Max, c.Peak = format(top), format(peak)
	if len(pts) > 0 {
		c.Last = format(pts[len(pts)-1].v)
	}
	c.Desc = fmt.Sprintf("%s over the last %s: now %s %s, peak %s %s.", title, roundDur(window), c.Last, unit, c.Peak, unit)
	if c.Empty {
		c.Desc = title + ": not enough samples yet."
	}
	return c
}

// niceCeil rounds a chart's top up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := 1.0
	for p*10 <= v {
		p *= 10
	}
	for p > v*10 {
		p /= 10
	}
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// charts are the overview's two charts.
func (c *Console) charts(now time.Time) []chart {
	rate, depth := c.sampler.series()
	return []chart{
		newChart("Jobs finished per second", "jobs/s", rate, time.Hour, now, func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }),
		newChart("Queue depth", "jobs waiting", depth, time.Hour, now, func(f float64) string { return groupDigits(strconv.FormatFloat(f, 'f', 0, 64)) }),
	}
}
