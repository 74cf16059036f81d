package apibench

import (
	"context"
	"testing"
	"time"
)

// TestRunSmoke runs every measurement briefly, so that the benchmark keeps
// working; the figures themselves come from `make bench`.
func TestRunSmoke(t *testing.T) {
	res, err := Run(context.Background(), Options{Dir: t.TempDir(), Bits: []int{2048}, Clients: 8,
		Window: 500 * time.Millisecond, BatchJobs: 20, Callbacks: 50})
	if err != nil {
		t.Fatal(err)
	}
	r := res.Rows[0]
	if r.Errors != 0 {
		t.Errorf("%d requests failed", r.Errors)
	}
	if r.CryptoRate <= 0 || r.SendJobRate <= 0 || r.BatchJobs <= 0 || res.CallbackRate <= 0 {
		t.Errorf("a rate is zero: %+v, callbacks %.0f/s", r, res.CallbackRate)
	}
	t.Logf("crypto %.0f/s, sendjob %.0f/s (%.0f%%), batch %.0f jobs/s, callbacks %.0f/s",
		r.CryptoRate, r.SendJobRate, 100*r.Ratio, r.BatchJobs, res.CallbackRate)
}
