package admincli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gradebroker/gradebroker/broker"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// emit prints msg as JSON under --json, and as human calls for otherwise.
func (r *runner) emit(msg proto.Message, human func(w io.Writer)) error {
	if r.conn != nil && r.conn.json {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode the response as JSON: %w", err)
		}
		_, err = fmt.Fprintf(r.stdout, "%s\n", b)
		return err
	}
	human(r.stdout)
	return nil
}

// fields prints "key: value" lines with the values aligned.
func fields(w io.Writer, kv ...string) {
	tw := newTable(w)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[i], kv[i+1])
	}
	tw.Flush()
}

// when formats a timestamp in local time, the operator's; unset is "-".
func when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format("2006-01-02 15:04:05")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func list(values []string) string {
	if len(values) == 0 {
		return "-"
	}
	return strings.Join(values, ", ")
}

func certSummary(c *gradebrokerv1.CertIdentity) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprintf("%s (serial %s, expires %s)", c.GetSubject(), c.GetSerial(), when(c.GetNotAfter()))
}

func printPlatform(w io.Writer, p *gradebrokerv1.Platform) {
	fields(w,
		"platform", p.GetName(),
		"protocol", p.GetProtocol(),
		"legacy tokens", yesNo(p.GetLegacyTokens()),
		"return URL", orDash(p.GetReturnUrl()),
		"restrict paths", list(p.GetRestrictPaths()),
		"force tag", orDash(p.GetForceTag()),
		"certificate", certSummary(p.GetCertificate()),
		"registered", when(p.GetCreatedAt()),
	)
}

func printServer(w io.Writer, s *gradebrokerv1.Server) {
	cert, fp := certSummary(s.GetCertificate()), s.GetCertificate().GetFingerprintSha256()
	if s.GetPull() != "" {
		cert, fp = "none: it pulls its jobs ("+s.GetPull()+")", "-"
	}
	fields(w,
		"server", s.GetName(),
		"type", s.GetType(),
		"max jobs", fmt.Sprint(s.GetMaxConcurrentJobs()),
		"wakeup URL", orDash(s.GetWakeupUrl()),
		"certificate", cert,
		"fingerprint", fp,
		"connected", yesNo(s.GetConnected()),
		"drained", yesNo(s.GetDrained()),
		"registered", when(s.GetCreatedAt()),
	)
}

// sandboxSummary says how a server's executors isolate their runs, for
// the SANDBOX column: the executors without a sandbox first, as
// "NONE (name, ...)", so that they stand out, then the sandboxes in use;
// "-" before the server reported its executors.
func sandboxSummary(es []*gradebrokerv1.ExecutorInfo) string {
	none := unsandboxed(es)
	var parts []string
	if len(none) > 0 {
		parts = append(parts, "NONE ("+strings.Join(none, ", ")+")")
	}
	for _, e := range es {
		if sb := e.GetSandbox(); sb != "" && sb != broker.SandboxNone && !slices.Contains(parts, sb) {
			parts = append(parts, sb)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// unsandboxed names the executors whose graders run without a sandbox.
func unsandboxed(es []*gradebrokerv1.ExecutorInfo) []string {
	var names []string
	for _, e := range es {
		if e.GetSandbox() == broker.SandboxNone {
			names = append(names, e.GetName())
		}
	}
	return names
}

// warnUnsandboxed prints a warning under a server list for every server
// with an executor that runs its graders without a sandbox.
func warnUnsandboxed(w io.Writer, servers []*gradebrokerv1.Server) {
	for _, s := range servers {
		if none := unsandboxed(s.GetExecutors()); len(none) > 0 {
			fmt.Fprintf(w, "\nWARNING: server %s runs the graders of executor(s) %s WITHOUT a sandbox, with graderd's own powers"+
				" (sandbox: none in its graderd config): students' code there can read its keys and reach the network.\n",
				s.GetName(), strings.Join(none, ", "))
		}
	}
}

func printOperator(w io.Writer, o *gradebrokerv1.Operator) {
	fields(w,
		"operator", o.GetName(),
		"certificate", certSummary(o.GetCertificate()),
		"fingerprint", o.GetCertificate().GetFingerprintSha256(),
		"registered", when(o.GetCreatedAt()),
	)
}

// stateName is a job state as operators type it: "queued", not
// JOB_STATE_QUEUED.
func stateName(s gradebrokerv1.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

func deliveryName(s gradebrokerv1.DeliveryState) string {
	if s == gradebrokerv1.DeliveryState_DELIVERY_STATE_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "DELIVERY_STATE_"))
}

func printJobs(w io.Writer, jobs []*gradebrokerv1.Job) {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tPLATFORM\tNAME\tSTATE\tPRIORITY\tATTEMPTS\tSERVER\tCREATED\tDELIVERY")
	for _, j := range jobs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d/%d\t%s\t%s\t%s\n", j.GetId(), j.GetPlatform(), orDash(j.GetName()),
			stateName(j.GetState()), j.GetPriority(), j.GetAttempts(), j.GetMaxAttempts(), orDash(j.GetServer()),
			when(j.GetCreatedAt()), deliveryName(j.GetDeliveryState()))
	}
	tw.Flush()
}

func printJob(w io.Writer, j *gradebrokerv1.Job) {
	timeout := "-"
	if j.GetTimeout() != nil {
		timeout = j.GetTimeout().AsDuration().String()
	}
	fields(w,
		"job", fmt.Sprint(j.GetId()),
		"platform", j.GetPlatform(),
		"name", orDash(j.GetName()),
		"state", stateName(j.GetState()),
		"priority", fmt.Sprint(j.GetPriority()),
		"tags", list(j.GetTags()),
		"timeout", timeout,
		"idempotency key", orDash(j.GetIdempotencyKey()),
		"attempts", fmt.Sprintf("%d of %d", j.GetAttempts(), j.GetMaxAttempts()),
		"server", orDash(j.GetServer()),
		"created", when(j.GetCreatedAt()),
		"updated", when(j.GetUpdatedAt()),
		"finished", when(j.GetFinishedAt()),
		"delivery", deliveryName(j.GetDeliveryState()),
		"error", orDash(j.GetError()),
		"restrict paths", list(j.GetRestrictPaths()),
	)
	if len(j.GetHistory()) > 0 {
		fmt.Fprintln(w, "\nAttempts:")
		tw := newTable(w)
		fmt.Fprintln(tw, "  #\tLEASE\tSERVER\tASSIGNED\tENDED\tEND\tCPU\tPEAK MEMORY\tWALL\tLIMIT\tREASON")
		for _, a := range j.GetHistory() {
			end := a.GetEnd()
			if end == "" {
				end = "running"
			}
			cpu, mem, wall := usageColumns(a.GetUsage())
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.GetNumber(), a.GetLeaseId(), a.GetServer(),
				when(a.GetAssignedAt()), when(a.GetEndedAt()), end, cpu, mem, wall, limitName(a.GetLimit()), orDash(a.GetReason()))
		}
		tw.Flush()
	}
	if len(j.GetEvents()) > 0 {
		fmt.Fprintln(w, "\nEvents:")
		tw := newTable(w)
		fmt.Fprintln(tw, "  AT\tKIND\tACTOR\tLEASE\tDETAIL")
		for _, e := range j.GetEvents() {
			lease := "-"
			if e.GetLeaseId() != 0 {
				lease = fmt.Sprint(e.GetLeaseId())
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", when(e.GetAt()), e.GetKind(), e.GetActor(), lease, orDash(e.GetDetail()))
		}
		tw.Flush()
	}
	for _, part := range []struct {
		title string
		body  string
	}{{"Job data", j.GetJobdata()}, {"Result", j.GetResult()}, {"Log", j.GetLog()}} {
		if part.body == "" {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n%s\n", part.title, strings.TrimRight(part.body, "\n"))
	}
}

// usageColumns formats what a run used: CPU time, peak memory and wall
// time, "-" each when its server reported none.
func usageColumns(u *gradebrokerv1.Usage) (cpu, mem, wall string) {
	if u == nil {
		return "-", "-", "-"
	}
	return u.GetCpuTime().AsDuration().Round(time.Millisecond).String(), humanize.IBytes(u.GetPeakMemoryBytes()),
		u.GetWallTime().AsDuration().Round(time.Millisecond).String()
}

// limitName is the limit that ended a run as operators read it: "memory",
// "wall_time"; "-" for none.
func limitName(l gradebrokerv1.Limit) string {
	if l == gradebrokerv1.Limit_LIMIT_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(l.String(), "LIMIT_"))
}

// ago says how long ago t was, for "last seen" columns.
func ago(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return "never"
	}
	d := now.Sub(ts.AsTime()).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func printDeliveries(w io.Writer, ds []*gradebrokerv1.Delivery) {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tJOB\tPLATFORM\tSTATE\tTRIES\tNEXT TRY\tCREATED\tLAST ERROR")
	for _, d := range ds {
		next := "-"
		if d.GetState() == gradebrokerv1.DeliveryState_DELIVERY_STATE_PENDING {
			next = when(d.GetNextAttemptAt())
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\n", d.GetId(), d.GetJobId(), d.GetPlatform(),
			deliveryName(d.GetState()), d.GetTries(), next, when(d.GetCreatedAt()), orDash(d.GetLastError()))
	}
	tw.Flush()
}
