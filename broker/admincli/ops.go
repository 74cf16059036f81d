package admincli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The incident commands: what waits where, taking jobs off a server, and
// draining one. They go after "server remove" in the command list.
var opsCommands = []*command{
	{
		name:     "server requeue",
		synopsis: "server requeue NAME",
		args:     nameArgs,
		summary:  "Take every running job back from a server and queue it again",
		help: `Each job is requeued as 'broker admin job requeue' would: the server is told
to cancel it, and the requeue does not count against the job's attempt limit.
For a while the jobs prefer other servers. The server keeps getting new jobs
unless it is drained ('broker admin server drain NAME').`,
		examples: []string{"broker admin server drain grader1 && broker admin server requeue grader1"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RequeueServerJobs, &gradebrokerv1.RequeueServerJobsRequest{Name: args[0]},
				func(w io.Writer, resp *gradebrokerv1.RequeueServerJobsResponse) {
					fmt.Fprintf(w, "requeued %d running job(s) of server %s\n", resp.GetRequeued(), args[0])
				})
		}),
	},
	{
		name:     "server drain",
		synopsis: "server drain NAME [--undrain]",
		args:     nameArgs,
		summary:  "Stop giving a server new jobs (or, with --undrain, start again)",
		help: `The jobs the server runs finish as usual. The drain holds across the server's
reconnects and broker restarts until it is undrained. Unlike graderd's own
drain (slots 0), it is the operator's: graderd cannot lift it.`,
		examples: []string{"broker admin server drain grader1", "broker admin server drain grader1 --undrain"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			undrain := fs.Bool("undrain", false, "give the server jobs again")
			return func(ctx context.Context, args []string) error {
				return call(ctx, r, admin.DrainServer, &gradebrokerv1.DrainServerRequest{Name: args[0], Undrain: *undrain},
					func(w io.Writer, resp *gradebrokerv1.DrainServerResponse) {
						s := resp.GetServer()
						if *undrain {
							fmt.Fprintf(w, "server %s takes new jobs again\n", s.GetName())
						} else {
							fmt.Fprintf(w, "server %s is drained: no new jobs; %d running job(s) finish\n", s.GetName(), s.GetRunning())
						}
					})
			}
		},
	},
	{
		name:     "queue",
		synopsis: "queue",
		summary:  "Show the queue per server type: waiting, running, servers, free slots, oldest wait",
		help: `A job that servers of several types may take counts under each of them; the
TOTAL line counts it once. OLDEST WAIT is since the job was queued or last
requeued.`,
		examples: []string{"broker admin queue", "broker admin queue --json"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.GetQueueStats, &gradebrokerv1.GetQueueStatsRequest{},
				func(w io.Writer, resp *gradebrokerv1.GetQueueStatsResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "TYPE\tTAGS\tWAITING\tRUNNING\tCONNECTED\tDRAINED\tFREE SLOTS\tOLDEST WAIT")
					for _, t := range resp.GetTypes() {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", t.GetType(), list(t.GetTags()), t.GetWaiting(),
							t.GetRunning(), t.GetConnected(), t.GetDrained(), t.GetFreeSlots(), waited(t.GetOldestWaiting()))
					}
					fmt.Fprintf(tw, "TOTAL\t\t%d\t%d\t\t\t\t\n", resp.GetWaiting(), resp.GetRunning())
					tw.Flush()
				})
		}),
	},
}

// waited formats how long a job waited; unset is "-".
func waited(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return d.AsDuration().Round(time.Second).String()
}

func init() {
	i := slices.IndexFunc(commands, func(c *command) bool { return c.name == "server remove" })
	if i < 0 {
		i = len(commands) - 1
	}
	commands = slices.Insert(commands, i+1, opsCommands...)
}
