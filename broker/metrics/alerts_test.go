package metrics

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"gopkg.in/yaml.v3"

	"github.com/gradebroker/gradebroker/broker"
)

// alertRules is a Prometheus rule file, as far as this test reads it.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var (
	// seriesRef is a gradebroker series in an expression, with its matchers.
	seriesRef = regexp.MustCompile(`\b(gradebroker_[a-zA-Z0-9_:]+)(\{[^}]*\})?`)
	matcher   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	byClause  = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	promDur   = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
)

// allSeries scrapes a registry in which every series the broker exports
// exists, and returns each series name with its labels' values.
func allSeries(t *testing.T) map[string]map[string][]string {
	t.Helper()
	m := New(nil)
	f := &fakeSources{now: time.Now()}
	if err := m.Watch(f.sources()); err != nil {
		t.Fatal(err)
	}
	// The hook-fed vectors show only once they have a child.
	m.Wakeups().WakeupSent("g1", true)
	m.Wakeups().WakeupSent("g1", false)
	m.ObserveRun("ok", "py", &broker.Usage{}, broker.LimitMemory)
	m.HTTPHandler(http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	_, _ = m.UnaryInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
		func(context.Context, any) (any, error) { return nil, nil })

	out := make(map[string]map[string][]string)
	for key := range scrape(t, m) {
		name, labels, _ := strings.Cut(key, "{")
		if out[name] == nil {
			out[name] = make(map[string][]string)
		}
		for _, mm := range matcher.FindAllStringSubmatch(labels, -1) {
			if !slices.Contains(out[name][mm[1]], mm[3]) {
				out[name][mm[1]] = append(out[name][mm[1]], mm[3])
			}
		}
	}
	return out
}

// TestAlertRules checks deploy/prometheus/gradebroker-alerts.yml: its shape,
// and that every series, label and label value it names is one the broker
// exports, so that a renamed metric cannot leave an alert silently dead.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "deploy", "prometheus", "gradebroker-alerts.yml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rules alertRules
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	series := allSeries(t)

	seen := make(map[string]bool)
	n := 0
	for _, g := range rules.Groups {
		if g.Name == "" {
			t.Errorf("a group has no name")
		}
		for _, r := range g.Rules {
			n++
			where := g.Name + "/" + r.Alert
			switch {
			case r.Alert == "":
				t.Errorf("%s: a rule has no alert name (recording rules do not belong here)", g.Name)
			case seen[r.Alert]:
				t.Errorf("%s: alert name used twice", where)
			}
			seen[r.Alert] = true
			if !promDur.MatchString(r.For) {
				t.Errorf("%s: for %q is not a Prometheus duration", where, r.For)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				t.Errorf("%s: severity %q is not critical, warning or info", where, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", where)
			}
			checkExpr(t, where, r.Expr, series)
		}
	}
	if n == 0 {
		t.Fatal("no rules")
	}
	// The alerts the deployment notes promise.
	for _, want := range []string{"GradebrokerDown", "GradebrokerAbsent", "GradebrokerQueueAgeHigh",
		"GradebrokerNoServersWhileJobsWait", "GradebrokerJobsFailingRateHigh", "GradebrokerDeadDeliveries",
		"GradebrokerStaleResultsSpike"} {
		if !seen[want] {
			t.Errorf("alert %s is missing", want)
		}
	}
}

func checkExpr(t *testing.T, where, expr string, series map[string]map[string][]string) {
	t.Helper()
	if strings.TrimSpace(expr) == "" {
		t.Errorf("%s: empty expr", where)
		return
	}
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced brackets in %q", where, expr)
	}
	// Labels an aggregation may keep: those of the series used, plus the
	// ones Prometheus adds.
	usable := map[string]bool{"instance": true, "job": true, "le": true}
	refs := seriesRef.FindAllStringSubmatch(expr, -1)
	if len(refs) == 0 && !strings.Contains(expr, `job="gradebroker"`) {
		t.Errorf("%s: names no gradebroker series", where)
	}
	for _, ref := range refs {
		name := ref[1]
		labels, ok := series[name]
		if !ok {
			t.Errorf("%s: series %s does not exist", where, name)
			continue
		}
		for l := range labels {
			usable[l] = true
		}
		for _, mm := range matcher.FindAllStringSubmatch(ref[2], -1) {
			label, op, value := mm[1], mm[2], mm[3]
			values, ok := labels[label]
			if !ok {
				t.Errorf("%s: %s has no label %q", where, name, label)
				continue
			}
			var want []string
			switch op {
			case "=", "!=":
				want = []string{value}
			case "=~", "!~":
				want = strings.Split(value, "|")
			}
			for _, v := range want {
				if !slices.Contains(values, v) {
					t.Errorf("%s: %s{%s%s%q}: no series has %s=%q (it has %v)", where, name, label, op, value, label, v, values)
				}
			}
		}
	}
	for _, by := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(by[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !usable[l] {
				t.Errorf("%s: aggregates by %q, a label none of its series has", where, l)
			}
		}
	}
}
