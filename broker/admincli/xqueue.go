package admincli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// The XQueue interface's commands are appended to the command list here,
// so that this file is all XQueue adds to the command-line tool.
func init() { commands = append(commands, xqueueCommands...) }

// readSecret reads a password from the file a flag names, or from standard
// input for "-": never from the command line, where ps shows it. A final
// newline is not part of it.
func readSecret(flagName, path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<10))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flagName, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// xqueueUserFlags are the flags user add and user update share.
type xqueueUserFlags struct {
	passwordFile, platform, authUser, authPasswordFile *string
	hosts, httpHosts, pull                             *string
	maxJobs                                            *uint
}

func newXQueueUserFlags(fs *flag.FlagSet, update bool) *xqueueUserFlags {
	verb := ""
	if update {
		verb = "new "
	}
	return &xqueueUserFlags{
		passwordFile: fs.String("password-file", "", "read the "+verb+"password from `FILE` (- for standard input)"),
		platform:     fs.String("platform", "", "the "+verb+"`PLATFORM` (of protocol xqueue) of its submissions; empty: it may not submit"),
		hosts:        fs.String("callback-host", "", "the "+verb+"`HOSTS` its lms_callback_url may name over https (comma-separated)"),
		httpHosts:    fs.String("http-callback-host", "", "the "+verb+"`HOSTS` it may name over http:// too (comma-separated)"),
		authUser:     fs.String("callback-auth-user", "", "the "+verb+"HTTP basic `USER` of its results' callbacks"),
		authPasswordFile: fs.String("callback-auth-password-file", "",
			"read the "+verb+"HTTP basic password of its callbacks from `FILE` (- for standard input)"),
		pull:    fs.String("pull", "", "the "+verb+"`QUEUES` it may pull from (comma-separated; * for all)"),
		maxJobs: fs.Uint("max-jobs", 1, "max jobs of each server made for a queue it pulls (`N`)"),
	}
}

var xqueueCommands = []*command{
	{
		name:     "xqueue queue add",
		synopsis: "xqueue queue add NAME --tags T,... --type TYPE [--job-timeout D]",
		args:     nameArgs,
		summary:  "Map an XQueue queue name to tags and a server type",
		help: `NAME is the queue_name the LMS and xqueue-watcher use. Its submissions become
jobs with --tags; the servers of the XQueue users pulling it (made on their
first pull) are of --type, which must cover the tags. A graderd server whose
type covers the tags takes the queue's jobs too. --job-timeout is its jobs'
timeout (default the broker's): a pull not answered within the timeout and
the lease grace is requeued.`,
		examples: []string{
			"broker admin xqueue queue add MITx-6.00x --tags xq-600x --type xq-600x --job-timeout 2m",
		},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			tags := fs.String("tags", "", "the `TAGS` of its jobs (comma-separated)")
			typ := fs.String("type", "", "the server `TYPE` of its pulling clients")
			timeout := fs.Duration("job-timeout", 0, "its jobs' timeout (`DURATION`; 0: the broker's default)")
			return func(ctx context.Context, args []string) error {
				if *typ == "" {
					return usagef("--type is required: the server type of the queue's pulling clients")
				}
				req := &gradebrokerv1.AddXQueueQueueRequest{Name: args[0], Tags: splitTags(*tags), Type: *typ}
				if *timeout != 0 {
					req.Timeout = durationpb.New(*timeout)
				}
				return call(ctx, r, admin.AddXQueueQueue, req,
					func(w io.Writer, resp *gradebrokerv1.AddXQueueQueueResponse) { printXQueueQueue(w, resp.GetQueue()) })
			}
		},
	},
	{
		name:     "xqueue queue update",
		synopsis: "xqueue queue update NAME [--tags T,...] [--type TYPE] [--job-timeout D]",
		args:     nameArgs,
		summary:  "Change an XQueue queue's tags, server type or timeout",
		help:     "Only the flags given change. New tags apply to new submissions; a new type is its pulling clients' at once.",
		examples: []string{"broker admin xqueue queue update MITx-6.00x --job-timeout 5m"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			tags := fs.String("tags", "", "new `TAGS` (comma-separated)")
			typ := fs.String("type", "", "a new server `TYPE`")
			timeout := fs.Duration("job-timeout", 0, "a new jobs' timeout (`DURATION`; 0: the broker's default)")
			return func(ctx context.Context, args []string) error {
				req := &gradebrokerv1.UpdateXQueueQueueRequest{Name: args[0]}
				if r.isSet("tags") {
					req.Tags = &gradebrokerv1.StringList{Values: splitTags(*tags)}
				}
				if r.isSet("type") {
					req.Type = typ
				}
				if r.isSet("job-timeout") {
					req.Timeout = durationpb.New(*timeout)
				}
				if req.Tags == nil && req.Type == nil && req.Timeout == nil {
					return usagef("nothing to change: give --tags, --type or --job-timeout")
				}
				return call(ctx, r, admin.UpdateXQueueQueue, req,
					func(w io.Writer, resp *gradebrokerv1.UpdateXQueueQueueResponse) { printXQueueQueue(w, resp.GetQueue()) })
			}
		},
	},
	{
		name:     "xqueue queue list",
		synopsis: "xqueue queue list",
		summary:  "List the XQueue queues and how many submissions wait in each",
		examples: []string{"broker admin xqueue queue list"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListXQueueQueues, &gradebrokerv1.ListXQueueQueuesRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListXQueueQueuesResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tTAGS\tTYPE\tTIMEOUT\tWAITING")
					for _, q := range resp.GetQueues() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", q.GetName(), list(q.GetTags()), q.GetType(), queueTimeout(q), q.GetWaiting())
					}
					tw.Flush()
				})
		}),
	},
	{
		name:     "xqueue queue remove",
		synopsis: "xqueue queue remove NAME",
		args:     nameArgs,
		summary:  "Remove an XQueue queue and the servers of its pulling clients",
		help:     "Refused while the queue has unfinished jobs.",
		examples: []string{"broker admin xqueue queue remove MITx-6.00x"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemoveXQueueQueue, &gradebrokerv1.RemoveXQueueQueueRequest{Name: args[0]},
				func(w io.Writer, resp *gradebrokerv1.RemoveXQueueQueueResponse) {
					fmt.Fprintf(w, "removed XQueue queue %s%s\n", args[0], removedServers(resp.GetRemovedServers()))
				})
		}),
	},
	{
		name: "xqueue user add",
		synopsis: "xqueue user add NAME --password-file FILE [--platform P --callback-host H,... [--http-callback-host H,...]] " +
			"[--callback-auth-user U --callback-auth-password-file FILE] [--pull Q,... [--max-jobs N]]",
		args:    nameArgs,
		summary: "Register an XQueue user: an LMS that submits, an xqueue-watcher that pulls, or both",
		help: `The user logs in to /xqueue/login/ with NAME and the password read from
--password-file (- reads standard input); the broker keeps a bcrypt hash.

An LMS needs --platform, a platform of protocol xqueue its submissions belong
to, and the hosts its lms_callback_url may name: --callback-host over https,
--http-callback-host over http too (lms_callback_url comes from the client,
so the broker posts results to listed hosts only). --callback-auth-user and
--callback-auth-password-file are HTTP basic credentials for those posts
(XQueue's REQUESTS_BASIC_AUTH).

An xqueue-watcher needs --pull, the queues it may pull. Its first pull from
a queue makes a server named xq.NAME.QUEUE, of the queue's type, with
--max-jobs: see 'broker admin server list'.`,
		examples: []string{
			"broker admin xqueue user add lms --password-file lms.pw --platform openedx --callback-host lms.example.org",
			"broker admin xqueue user add watcher1 --password-file - --pull MITx-6.00x --max-jobs 4 < watcher1.pw",
		},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			f := newXQueueUserFlags(fs, false)
			return func(ctx context.Context, args []string) error {
				if *f.passwordFile == "" {
					return usagef("--password-file is required (- reads the password from standard input)")
				}
				pw, err := readSecret("password-file", *f.passwordFile)
				if err != nil {
					return err
				}
				req := &gradebrokerv1.AddXQueueUserRequest{Name: args[0], Password: pw, Platform: *f.platform,
					CallbackHosts: splitTags(*f.hosts), HttpCallbackHosts: splitTags(*f.httpHosts),
					CallbackAuthUser: *f.authUser, PullQueues: splitTags(*f.pull), MaxJobs: uint32(*f.maxJobs)}
				if *f.authPasswordFile != "" {
					if req.CallbackAuthPassword, err = readSecret("callback-auth-password-file", *f.authPasswordFile); err != nil {
						return err
					}
				}
				return call(ctx, r, admin.AddXQueueUser, req,
					func(w io.Writer, resp *gradebrokerv1.AddXQueueUserResponse) { printXQueueUser(w, resp.GetUser()) })
			}
		},
	},
	{
		name: "xqueue user update",
		synopsis: "xqueue user update NAME [--password-file FILE] [--platform P] [--callback-host H,...] [--http-callback-host H,...] " +
			"[--callback-auth-user U] [--callback-auth-password-file FILE] [--pull Q,...] [--max-jobs N]",
		args:    nameArgs,
		summary: "Change an XQueue user's password, platform, callback hosts or pull queues",
		help: `Only the flags given change; a list flag replaces the whole list (an empty
value empties it). A new password ends the user's sessions: its clients log
in again. The servers of the queues it may no longer pull are removed and
their jobs requeued. --max-jobs applies to servers made from now on; change
an existing one with 'broker admin server update xq.NAME.QUEUE --max-jobs N'.`,
		examples: []string{
			"broker admin xqueue user update lms --password-file new.pw",
			`broker admin xqueue user update watcher1 --pull "MITx-6.00x,MITx-6.01x"`,
		},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			f := newXQueueUserFlags(fs, true)
			return func(ctx context.Context, args []string) error {
				req := &gradebrokerv1.UpdateXQueueUserRequest{Name: args[0]}
				if r.isSet("password-file") {
					pw, err := readSecret("password-file", *f.passwordFile)
					if err != nil {
						return err
					}
					req.Password = &pw
				}
				if r.isSet("platform") {
					req.Platform = f.platform
				}
				if r.isSet("callback-host") {
					req.CallbackHosts = &gradebrokerv1.StringList{Values: splitTags(*f.hosts)}
				}
				if r.isSet("http-callback-host") {
					req.HttpCallbackHosts = &gradebrokerv1.StringList{Values: splitTags(*f.httpHosts)}
				}
				if r.isSet("callback-auth-user") {
					req.CallbackAuthUser = f.authUser
				}
				if r.isSet("callback-auth-password-file") {
					pw, err := readSecret("callback-auth-password-file", *f.authPasswordFile)
					if err != nil {
						return err
					}
					req.CallbackAuthPassword = &pw
				}
				if r.isSet("pull") {
					req.PullQueues = &gradebrokerv1.StringList{Values: splitTags(*f.pull)}
				}
				if r.isSet("max-jobs") {
					n := uint32(*f.maxJobs)
					req.MaxJobs = &n
				}
				if proto.Equal(req, &gradebrokerv1.UpdateXQueueUserRequest{Name: args[0]}) {
					return usagef("nothing to change: give at least one flag")
				}
				return call(ctx, r, admin.UpdateXQueueUser, req, func(w io.Writer, resp *gradebrokerv1.UpdateXQueueUserResponse) {
					printXQueueUser(w, resp.GetUser())
					if rm := resp.GetRemovedServers(); len(rm) > 0 {
						fmt.Fprintf(w, "removed servers %s; their jobs were requeued\n", strings.Join(rm, ", "))
					}
				})
			}
		},
	},
	{
		name:     "xqueue user list",
		synopsis: "xqueue user list",
		summary:  "List the XQueue users (never their passwords)",
		examples: []string{"broker admin xqueue user list"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListXQueueUsers, &gradebrokerv1.ListXQueueUsersRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListXQueueUsersResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tPLATFORM\tCALLBACK HOSTS\tHTTP CALLBACK HOSTS\tPULLS\tMAX JOBS")
					for _, u := range resp.GetUsers() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", u.GetName(), orDash(u.GetPlatform()), list(u.GetCallbackHosts()),
							list(u.GetHttpCallbackHosts()), list(u.GetPullQueues()), u.GetMaxJobs())
					}
					tw.Flush()
				})
		}),
	},
	{
		name:     "xqueue user remove",
		synopsis: "xqueue user remove NAME",
		args:     nameArgs,
		summary:  "Remove an XQueue user and the servers of its pulling clients",
		help:     "Its sessions end; the jobs its clients were grading are requeued. Its submissions stay, but their results not yet delivered can no longer be.",
		examples: []string{"broker admin xqueue user remove watcher1"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemoveXQueueUser, &gradebrokerv1.RemoveXQueueUserRequest{Name: args[0]},
				func(w io.Writer, resp *gradebrokerv1.RemoveXQueueUserResponse) {
					fmt.Fprintf(w, "removed XQueue user %s%s\n", args[0], removedServers(resp.GetRemovedServers()))
				})
		}),
	},
}

func removedServers(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " and servers " + strings.Join(names, ", ")
}

func queueTimeout(q *gradebrokerv1.XQueueQueue) string {
	if q.GetTimeout() == nil {
		return "default"
	}
	return q.GetTimeout().AsDuration().Round(time.Second).String()
}

func printXQueueQueue(w io.Writer, q *gradebrokerv1.XQueueQueue) {
	fields(w,
		"XQueue queue", q.GetName(),
		"tags", list(q.GetTags()),
		"type", q.GetType(),
		"timeout", queueTimeout(q),
		"waiting", fmt.Sprint(q.GetWaiting()),
	)
}

func printXQueueUser(w io.Writer, u *gradebrokerv1.XQueueUser) {
	auth := "-"
	if u.GetCallbackAuthUser() != "" {
		auth = u.GetCallbackAuthUser()
		if u.GetCallbackAuthPasswordSet() {
			auth += " (password set)"
		}
	}
	fields(w,
		"XQueue user", u.GetName(),
		"platform", orDash(u.GetPlatform()),
		"callback hosts", list(u.GetCallbackHosts()),
		"http callback hosts", list(u.GetHttpCallbackHosts()),
		"callback auth", auth,
		"pulls", list(u.GetPullQueues()),
		"max jobs", fmt.Sprint(u.GetMaxJobs()),
	)
}
