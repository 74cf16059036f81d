package dockerbench

import (
	"context"
	"strings"
	"testing"

	"github.com/gradebroker/gradebroker/internal/testutil"
)

// TestRunSmoke runs the benchmark briefly and checks its report holds both
// tables with figures.
func TestRunSmoke(t *testing.T) {
	testutil.Slow(t, "runs containers on the Docker engine")
	r, err := Run(context.Background(), Options{Runs: 2, ScenarioRuns: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Executor) != 2 || len(r.CLI) != 2 || len(r.ScenarioWall) != 1 {
		t.Fatalf("measured %d executor runs, %d CLI runs, %d scenarios jobs", len(r.Executor), len(r.CLI), len(r.ScenarioWall))
	}
	var b strings.Builder
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| docker executor |", "| `docker run --rm` (CLI) |", "| whole job, from Run to its return |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, b.String())
		}
	}
}
