package protoconv

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gradebroker/gradebroker/broker"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Every limit of the protocol has a name in the domain and back, so that a
// limit added to grader.proto and not here fails this test.
func TestLimitsRoundTrip(t *testing.T) {
	t.Parallel()
	for n, name := range gradebrokerv1.Limit_name {
		l := gradebrokerv1.Limit(n)
		d := LimitFromProto(l)
		if l == gradebrokerv1.Limit_LIMIT_UNSPECIFIED {
			if d != "" {
				t.Errorf("%s became %q, want no limit", name, d)
			}
			continue
		}
		if d == "" || d == broker.LimitUnknown {
			t.Errorf("%s has no domain name (got %q)", name, d)
		}
		if back := LimitToProto(d); back != l {
			t.Errorf("%s became %q, then %s", name, d, back)
		}
	}
	if d := LimitFromProto(gradebrokerv1.Limit(99)); d != broker.LimitUnknown {
		t.Errorf("an unknown limit became %q, want %q", d, broker.LimitUnknown)
	}
}

func TestUsageFromProto(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   *gradebrokerv1.Usage
		want *broker.Usage
	}{
		{"unset", nil, nil},
		{"measured", &gradebrokerv1.Usage{CpuTime: durationpb.New(1500 * time.Millisecond), PeakMemoryBytes: 1 << 20,
			WallTime: durationpb.New(2 * time.Second)}, &broker.Usage{CPUTime: 1500 * time.Millisecond, PeakMemory: 1 << 20, WallTime: 2 * time.Second}},
		{"out of range", &gradebrokerv1.Usage{CpuTime: durationpb.New(-time.Second), PeakMemoryBytes: 1 << 63},
			&broker.Usage{PeakMemory: 1<<63 - 1}},
	} {
		got := UsageFromProto(tc.in)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		if tc.name == "measured" {
			if back := UsageFromProto(UsageToProto(got)); !cmp.Equal(back, got) {
				t.Errorf("round trip: %v, want %v", back, got)
			}
		}
	}
}
