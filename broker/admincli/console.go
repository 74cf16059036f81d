package admincli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The console's commands are appended to the command list here rather than
// written into it, so that this file is all the console adds to the
// command-line tool.
func init() { commands = append(commands, consoleCommands...) }

var consoleCommands = []*command{
	{
		name:     "console-login",
		synopsis: "console-login [--viewer --name NAME [--platform P | --tags T,...]] [--session-ttl D]",
		summary:  "Print a one-time login link to the web console",
		help: `Without --viewer the link opens a session for you, an operator: everything,
recorded as console:YOUR-NAME. With --viewer it opens a read-only session for
someone else (course staff), named --name, optionally scoped to one platform
(--platform) or to the jobs that carry one of a set of tags (--tags): a scoped
viewer sees those jobs and nothing else.

The link works once and for console_link_ttl (10 minutes by default); opening
it shows a button, and only the button uses it up, so a chat preview or link
scanner that fetches it does no harm. Send it by a private channel: whoever
clicks first gets the session. Sessions last console_session_ttl (12 hours)
unless --session-ttl says otherwise; list them with 'broker admin console
sessions' and end one with 'broker admin console revoke ID'.`,
		examples: []string{
			"broker admin console-login",
			`broker admin console-login --viewer --name "Mooc staff" --platform mooc`,
			`broker admin console-login --viewer --name "TA Bob" --tags course-6.00x --session-ttl 72h`,
		},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			viewer := fs.Bool("viewer", false, "a read-only session for someone else")
			name := fs.String("name", "", "the viewer's `NAME`, shown in the console")
			platform := fs.String("platform", "", "scope the viewer to this `PLATFORM`'s jobs")
			tags := fs.String("tags", "", "scope the viewer to the jobs that carry one of these `TAGS` (comma-separated)")
			ttl := fs.Duration("session-ttl", 0, "how long the session lasts (`DURATION`; default the broker's console_session_ttl)")
			return func(ctx context.Context, _ []string) error {
				req := &gradebrokerv1.ConsoleLoginRequest{Viewer: *viewer, Name: *name, Platform: *platform, Tags: splitTags(*tags)}
				if !*viewer && (*name != "" || *platform != "" || *tags != "") {
					return usagef("--name, --platform and --tags describe a viewer: add --viewer")
				}
				if *viewer && *name == "" {
					return usagef("--viewer needs --name: who the session is for")
				}
				if *ttl != 0 {
					req.SessionTtl = durationpb.New(*ttl)
				}
				c, err := r.client()
				if err != nil {
					return err
				}
				resp, err := c.ConsoleLogin(ctx, req)
				if err != nil {
					return err
				}
				return r.emit(resp, func(w io.Writer) {
					fmt.Fprintln(w, resp.GetUrl())
					fmt.Fprintf(w, "# works once, until %s; opens a session for %s as %s\n", when(resp.GetExpiresAt()),
						scopeOf(resp.GetSession()), resp.GetSession().GetRole())
				})
			}
		},
	},
	{
		name:     "console sessions",
		synopsis: "console sessions",
		summary:  "List the web console's sessions that have not expired",
		examples: []string{"broker admin console sessions"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			return func(ctx context.Context, _ []string) error {
				c, err := r.client()
				if err != nil {
					return err
				}
				resp, err := c.ListConsoleSessions(ctx, &gradebrokerv1.ListConsoleSessionsRequest{})
				if err != nil {
					return err
				}
				return r.emit(resp, func(w io.Writer) {
					tw := newTable(w)
					fmt.Fprintln(tw, "ID\tNAME\tROLE\tSCOPE\tVIA\tLINK BY\tEXPIRES\tLAST SEEN\tREVOKED")
					for _, s := range resp.GetSessions() {
						fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.GetId(), s.GetName(), s.GetRole(), scopeOf(s),
							s.GetVia(), s.GetCreatedBy(), when(s.GetExpiresAt()), when(s.GetLastSeen()), when(s.GetRevokedAt()))
					}
					tw.Flush()
				})
			}
		},
	},
	{
		name:     "console revoke",
		synopsis: "console revoke ID",
		args:     []string{"ID"},
		summary:  "End a web console session at once",
		examples: []string{"broker admin console revoke 12"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			return func(ctx context.Context, args []string) error {
				id, err := strconv.ParseInt(args[0], 10, 64)
				if err != nil || id <= 0 {
					return usagef("session ID %q must be a positive number", args[0])
				}
				c, err := r.client()
				if err != nil {
					return err
				}
				resp, err := c.RevokeConsoleSession(ctx, &gradebrokerv1.RevokeConsoleSessionRequest{Id: id})
				if err != nil {
					return err
				}
				return r.emit(resp, func(w io.Writer) {
					fmt.Fprintf(w, "revoked session %d of %s at %s\n", id, resp.GetSession().GetName(),
						resp.GetSession().GetRevokedAt().AsTime().Local().Format(time.DateTime))
				})
			}
		},
	},
}

// scopeOf says whom a session is for and what it sees.
func scopeOf(s *gradebrokerv1.ConsoleSession) string {
	switch {
	case s.GetPlatform() != "":
		return s.GetName() + " (platform " + s.GetPlatform() + ")"
	case len(s.GetTags()) > 0:
		return s.GetName() + " (tags " + list(s.GetTags()) + ")"
	}
	return s.GetName() + " (everything)"
}
