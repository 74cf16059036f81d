package admincli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi"
	"github.com/gradebroker/gradebroker/broker/protoconv"
	"github.com/gradebroker/gradebroker/broker/store"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// runFunc runs a command with its positional arguments, after its flags
// were parsed.
type runFunc func(ctx context.Context, args []string) error

// command is one `broker admin` command.
type command struct {
	name     string   // the words that select it: "server add"
	synopsis string   // the usage line after "broker admin "
	args     []string // the names of its positional arguments, all required
	summary  string   // one line, no final period
	help     string   // more, if needed
	examples []string
	local    bool // works on the database file, not over gRPC
	// shadows lists the connection flags ("cert", "key") that the command
	// defines itself, for what it registers.
	shadows []string
	// flags registers the command's own flags on fs and returns the
	// function that runs it.
	flags func(fs *flag.FlagSet, r *runner) runFunc
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// splitTags turns "a, b,,c" into [a b c].
func splitTags(s string) []string {
	out := []string{}
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// readFlagFile reads the file a flag names, saying which flag on error.
func readFlagFile(flagName, path string) (string, error) {
	if path == "" {
		return "", usagef("--%s is required", flagName)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flagName, err)
	}
	return string(b), nil
}

func parseJobID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("job ID %q must be a positive number", s)
	}
	return id, nil
}

// onJob is the flags function of a command on one job, given as its
// only argument, without flags of its own.
func onJob(run func(ctx context.Context, r *runner, id int64) error) func(*flag.FlagSet, *runner) runFunc {
	return noFlags(func(ctx context.Context, r *runner, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		return run(ctx, r, id)
	})
}

// printJobState prints the state a command left a job in.
func printJobState(w io.Writer, j *gradebrokerv1.Job) {
	fmt.Fprintf(w, "job %d is %s\n", j.GetId(), stateName(j.GetState()))
}

// nameArgs is the positional argument list of commands on one named thing.
var nameArgs = []string{"NAME"}

var commands = []*command{
	{
		name:     "bootstrap",
		synopsis: "bootstrap --db FILE --name NAME --cert FILE --ca FILE [--force]",
		summary:  "Register the first operator directly in the database",
		help: `Nobody can call the admin API before an operator exists, so the first one is
written straight into the broker's database (created if missing; the broker
may be running). The certificate must be an operator certificate (OU=operator)
signed by the CA in --ca. Refuses when an operator already exists, unless
--force: then use 'broker admin operator add' instead where you can.`,
		examples: []string{
			"broker admin bootstrap --db /var/lib/gradebroker/gb.db --name alice --cert alice.crt --ca ca.crt",
		},
		local: true,
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			dbPath := fs.String("db", "", "the broker's database `FILE`")
			name := fs.String("name", "", "the operator's `NAME`")
			certFile := fs.String("cert", r.conn.cert, "the operator's certificate `FILE` (env GB_ADMIN_CERT)")
			caFile := fs.String("ca", r.conn.ca, "the broker's CA certificate `FILE` (env GB_ADMIN_CA)")
			force := fs.Bool("force", false, "add the operator even if others exist")
			fs.BoolVar(&r.conn.json, "json", r.conn.json, "print the operator as JSON")
			return func(ctx context.Context, _ []string) error {
				return r.bootstrap(ctx, *dbPath, *name, *certFile, *caFile, *force)
			}
		},
	},

	// --- platforms ---
	{
		name:     "platform add",
		synopsis: "platform add NAME [--protocol P] --key PUB.pem --return-url URL [--restrict-path P]... [--force-tag T] [--cert FILE] [--legacy-tokens]",
		args:     nameArgs,
		summary:  "Register a platform",
		help: `--key is the platform's RSA public key (2048 bits or more) that checks its
tokens. Results are POSTed to --return-url, which must be https:// (http://
only to localhost). --cert registers the platform's client certificate
(OU=platform) if the gateway should require one.

--protocol is the protocol the platform speaks, which decides the form of its
result callbacks: gradebroker (the default: tokens in, a signed and encrypted
callback to --return-url out) or a compatibility protocol the broker
delivers. Only gradebroker's own needs --key and --return-url.

--legacy-tokens lets a platform written for graderqueue (--protocol
graderqueue) send the tokens France-ioi's platforms make to api.php: no kid,
iat, exp or jti, only a date. They are weaker than the others (the README's
"Moving from graderqueue" says how); leave it off unless the platform cannot
make full tokens.`,
		examples: []string{
			"broker admin platform add mooc --key mooc.pub.pem --return-url https://mooc.example/grader/callback",
			"broker admin platform add contest --key c.pem --return-url https://c.example/cb --restrict-path /tasks/contest --force-tag contest",
			"broker admin platform add fioi --protocol graderqueue --key fioi.pub.pem --return-url https://fioi.example/returnUrl.php --legacy-tokens",
		},
		shadows: []string{"cert", "key"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			protocol := fs.String("protocol", string(broker.ProtocolGradebroker), "the `PROTOCOL` the platform speaks")
			key := fs.String("key", "", "the platform's RSA public key `FILE` (PEM)")
			returnURL := fs.String("return-url", "", "where results are POSTed (`URL`)")
			var paths stringList
			fs.Var(&paths, "restrict-path", "restrict the platform's jobs to `PATH` (repeatable)")
			forceTag := fs.String("force-tag", "", "a registered `TAG` added to every job of the platform")
			certFile := fs.String("cert", "", "the platform's client certificate `FILE` (optional)")
			legacy := fs.Bool("legacy-tokens", false, "accept graderqueue's legacy tokens from the platform")
			return func(ctx context.Context, args []string) error {
				// gradebroker's own protocol needs a key; another may take one.
				own := *protocol == string(broker.ProtocolGradebroker)
				var keyPEM string
				var err error
				if own || *key != "" {
					if keyPEM, err = readFlagFile("key", *key); err != nil {
						return err
					}
				}
				if own && *returnURL == "" {
					return usagef("--return-url is required")
				}
				req := &gradebrokerv1.AddPlatformRequest{Name: args[0], Protocol: *protocol, PublicKeyPem: keyPEM, ReturnUrl: *returnURL,
					RestrictPaths: paths, ForceTag: *forceTag, LegacyTokens: *legacy}
				if *certFile != "" {
					if req.CertificatePem, err = readFlagFile("cert", *certFile); err != nil {
						return err
					}
				}
				return call(ctx, r, admin.AddPlatform, req,
					func(w io.Writer, resp *gradebrokerv1.AddPlatformResponse) { printPlatform(w, resp.GetPlatform()) })
			}
		},
	},
	{
		name:     "platform list",
		synopsis: "platform list",
		summary:  "List platforms",
		examples: []string{"broker admin platform list", "broker admin platform list --json"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListPlatforms, &gradebrokerv1.ListPlatformsRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListPlatformsResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tPROTOCOL\tRETURN URL\tFORCE TAG\tRESTRICT PATHS\tCERTIFICATE\tREGISTERED")
					for _, p := range resp.GetPlatforms() {
						cert := "-"
						if p.GetCertificate() != nil {
							cert = p.GetCertificate().GetSubject()
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.GetName(), p.GetProtocol(), orDash(p.GetReturnUrl()), orDash(p.GetForceTag()),
							list(p.GetRestrictPaths()), cert, when(p.GetCreatedAt()))
					}
					tw.Flush()
				})
		}),
	},
	{
		name:     "platform update",
		synopsis: "platform update NAME [--protocol P] [--key PUB.pem] [--return-url URL] [--restrict-path P]... [--no-restrict-paths] [--force-tag T] [--cert FILE] [--no-cert] [--legacy-tokens[=false]]",
		args:     nameArgs,
		summary:  "Change a platform's protocol, key, return URL, paths, force tag or certificate",
		help: `Only the flags given change. --restrict-path replaces the whole list;
--no-restrict-paths empties it. --force-tag "" removes the force tag;
--no-cert removes the client certificate. A new --protocol applies to the
results not yet delivered too; switching to gradebroker's own needs a key and
a return URL, registered or given with it. --legacy-tokens allows
graderqueue's legacy tokens, --legacy-tokens=false refuses them again.`,
		examples: []string{
			"broker admin platform update mooc --return-url https://mooc.example/v2/callback",
			"broker admin platform update mooc --key mooc-2025.pub.pem",
			`broker admin platform update contest --force-tag "" --no-restrict-paths`,
		},
		shadows: []string{"cert", "key"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			protocol := fs.String("protocol", "", "a new `PROTOCOL`")
			key := fs.String("key", "", "a new RSA public key `FILE` (PEM)")
			returnURL := fs.String("return-url", "", "a new return `URL`")
			var paths stringList
			fs.Var(&paths, "restrict-path", "restrict the platform's jobs to `PATH` (repeatable; replaces the list)")
			noPaths := fs.Bool("no-restrict-paths", false, "remove every restricted path")
			forceTag := fs.String("force-tag", "", "a new force `TAG`; empty removes it")
			certFile := fs.String("cert", "", "a new client certificate `FILE`")
			noCert := fs.Bool("no-cert", false, "remove the client certificate")
			legacy := fs.Bool("legacy-tokens", false, "accept (or with =false refuse) graderqueue's legacy tokens")
			return func(ctx context.Context, args []string) error {
				req := &gradebrokerv1.UpdatePlatformRequest{Name: args[0]}
				if r.isSet("legacy-tokens") {
					req.LegacyTokens = legacy
				}
				if r.isSet("protocol") {
					req.Protocol = protocol
				}
				if r.isSet("key") {
					k, err := readFlagFile("key", *key)
					if err != nil {
						return err
					}
					req.PublicKeyPem = &k
				}
				if r.isSet("return-url") {
					req.ReturnUrl = returnURL
				}
				if r.isSet("restrict-path") && *noPaths {
					return usagef("--restrict-path and --no-restrict-paths contradict each other")
				}
				if r.isSet("restrict-path") || *noPaths {
					req.RestrictPaths = &gradebrokerv1.StringList{Values: paths}
				}
				if r.isSet("force-tag") {
					req.ForceTag = forceTag
				}
				if r.isSet("cert") && *noCert {
					return usagef("--cert and --no-cert contradict each other")
				}
				if r.isSet("cert") {
					pem, err := readFlagFile("cert", *certFile)
					if err != nil {
						return err
					}
					req.CertificatePem = &pem
				}
				if *noCert {
					req.CertificatePem = proto.String("")
				}
				if req.Protocol == nil && req.PublicKeyPem == nil && req.ReturnUrl == nil && req.RestrictPaths == nil && req.ForceTag == nil && req.CertificatePem == nil &&
					req.LegacyTokens == nil {
					return usagef("nothing to change: give at least one of --protocol, --key, --return-url, --restrict-path, --no-restrict-paths, --force-tag, --cert, --no-cert, --legacy-tokens")
				}
				return call(ctx, r, admin.UpdatePlatform, req,
					func(w io.Writer, resp *gradebrokerv1.UpdatePlatformResponse) { printPlatform(w, resp.GetPlatform()) })
			}
		},
	},
	{
		name:     "platform remove",
		synopsis: "platform remove NAME",
		args:     nameArgs,
		summary:  "Remove a platform and its finished jobs",
		help:     "Refused while the platform has queued or running jobs; cancel them first ('broker admin job list --platform NAME').",
		examples: []string{"broker admin platform remove oldmooc"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemovePlatform, &gradebrokerv1.RemovePlatformRequest{Name: args[0]},
				func(w io.Writer, _ *gradebrokerv1.RemovePlatformResponse) {
					fmt.Fprintf(w, "removed platform %s\n", args[0])
				})
		}),
	},

	// --- servers ---
	{
		name:     "server add",
		synopsis: "server add NAME --cert FILE --type T [--max-jobs N] [--wakeup-url URL]",
		args:     nameArgs,
		summary:  "Register a grading server and its certificate",
		help: `--cert is the server's client certificate (OU=server), issued by the broker's
CA for this machine; graderd connects with it. --type is a registered server
type: the server takes the jobs whose tags the type covers.`,
		examples: []string{
			"broker admin server add grader1 --cert grader1.crt --type python --max-jobs 4",
			"broker admin server add gpu1 --cert gpu1.crt --type gpu --wakeup-url https://gpu1.lan:8444/wake",
		},
		shadows: []string{"cert"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			certFile := fs.String("cert", "", "the server's client certificate `FILE` (PEM)")
			typ := fs.String("type", "", "its server `TYPE`")
			maxJobs := fs.Uint("max-jobs", 1, "run at most `N` jobs at once")
			wakeup := fs.String("wakeup-url", "", "`URL` to wake the server when jobs wait")
			return func(ctx context.Context, args []string) error {
				pem, err := readFlagFile("cert", *certFile)
				if err != nil {
					return err
				}
				if *typ == "" {
					return usagef("--type is required; see 'broker admin type list'")
				}
				if *maxJobs == 0 || *maxJobs > 1<<31 {
					return usagef("--max-jobs must be at least 1")
				}
				req := &gradebrokerv1.AddServerRequest{Name: args[0], CertificatePem: pem, Type: *typ,
					MaxConcurrentJobs: uint32(*maxJobs), WakeupUrl: *wakeup}
				return call(ctx, r, admin.AddServer, req,
					func(w io.Writer, resp *gradebrokerv1.AddServerResponse) { printServer(w, resp.GetServer()) })
			}
		},
	},
	{
		name:     "server list",
		synopsis: "server list",
		summary:  "List servers with their connection state, graderd version and sandbox",
		help: `SANDBOX says how each server's executors isolate grading runs, as graderd
reported it when it last connected since the broker started: "crun" for
graderd's sandbox, "NONE (executor...)" first and in capitals for executors an
operator set to 'sandbox: none', whose graders run with graderd's own powers
(a warning under the table names them too), "-" before the server connected.`,
		examples: []string{"broker admin server list"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListServers, &gradebrokerv1.ListServersRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListServersResponse) {
					now := time.Now()
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tTYPE\tCONNECTED\tDRAINED\tSLOTS\tRUNNING\tMAX JOBS\tLAST SEEN\tVERSION\tSANDBOX\tPULLS")
					for _, s := range resp.GetServers() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", s.GetName(), s.GetType(), yesNo(s.GetConnected()),
							yesNo(s.GetDrained()), s.GetSlots(), s.GetRunning(), s.GetMaxConcurrentJobs(), ago(s.GetLastSeen(), now),
							orDash(s.GetVersion()), sandboxSummary(s.GetExecutors()), orDash(s.GetPull()))
					}
					tw.Flush()
					warnUnsandboxed(w, resp.GetServers())
				})
		}),
	},
	{
		name:     "server update",
		synopsis: "server update NAME [--cert FILE] [--type T] [--max-jobs N] [--wakeup-url URL]",
		args:     nameArgs,
		summary:  "Change a server's certificate, type, job limit or wakeup URL",
		help: `Only the flags given change; a connected server sees the change at once (a new
certificate closes its connection: graderd must reconnect with the new one).
--wakeup-url "" removes the wakeup URL.`,
		examples: []string{
			"broker admin server update grader1 --max-jobs 8",
			"broker admin server update grader1 --cert grader1-2025.crt",
		},
		shadows: []string{"cert"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			certFile := fs.String("cert", "", "a new client certificate `FILE`")
			typ := fs.String("type", "", "a new server `TYPE`")
			maxJobs := fs.Uint("max-jobs", 0, "a new limit of `N` jobs at once")
			wakeup := fs.String("wakeup-url", "", "a new wakeup `URL`; empty removes it")
			return func(ctx context.Context, args []string) error {
				req := &gradebrokerv1.UpdateServerRequest{Name: args[0]}
				if r.isSet("cert") {
					pem, err := readFlagFile("cert", *certFile)
					if err != nil {
						return err
					}
					req.CertificatePem = &pem
				}
				if r.isSet("type") {
					req.Type = typ
				}
				if r.isSet("max-jobs") {
					if *maxJobs == 0 || *maxJobs > 1<<31 {
						return usagef("--max-jobs must be at least 1")
					}
					req.MaxConcurrentJobs = proto.Uint32(uint32(*maxJobs))
				}
				if r.isSet("wakeup-url") {
					req.WakeupUrl = wakeup
				}
				if req.CertificatePem == nil && req.Type == nil && req.MaxConcurrentJobs == nil && req.WakeupUrl == nil {
					return usagef("nothing to change: give at least one of --cert, --type, --max-jobs, --wakeup-url")
				}
				return call(ctx, r, admin.UpdateServer, req,
					func(w io.Writer, resp *gradebrokerv1.UpdateServerResponse) { printServer(w, resp.GetServer()) })
			}
		},
	},
	{
		name:     "server remove",
		synopsis: "server remove NAME",
		args:     nameArgs,
		summary:  "Remove a server; its connection is closed and its jobs requeued",
		examples: []string{"broker admin server remove grader1"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemoveServer, &gradebrokerv1.RemoveServerRequest{Name: args[0]},
				func(w io.Writer, resp *gradebrokerv1.RemoveServerResponse) {
					fmt.Fprintf(w, "removed server %s (%d running job(s) requeued)\n", args[0], resp.GetRequeued())
				})
		}),
	},

	// --- tags ---
	{
		name:     "tag add",
		synopsis: "tag add NAME [--description D]",
		args:     nameArgs,
		summary:  "Register a tag",
		examples: []string{`broker admin tag add python3 --description "CPython 3.12 with numpy"`},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			desc := fs.String("description", "", "what the tag means, for people (`TEXT`)")
			return func(ctx context.Context, args []string) error {
				return call(ctx, r, admin.AddTag, &gradebrokerv1.AddTagRequest{Name: args[0], Description: *desc},
					func(w io.Writer, resp *gradebrokerv1.AddTagResponse) {
						fmt.Fprintf(w, "added tag %s\n", resp.GetTag().GetName())
					})
			}
		},
	},
	{
		name:     "tag list",
		synopsis: "tag list",
		summary:  "List tags",
		examples: []string{"broker admin tag list"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListTags, &gradebrokerv1.ListTagsRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListTagsResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tDESCRIPTION")
					for _, t := range resp.GetTags() {
						fmt.Fprintf(tw, "%s\t%s\n", t.GetName(), orDash(t.GetDescription()))
					}
					tw.Flush()
				})
		}),
	},
	{
		name:     "tag remove",
		synopsis: "tag remove NAME",
		args:     nameArgs,
		summary:  "Remove a tag that no server type, platform or unfinished job uses",
		examples: []string{"broker admin tag remove python2"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemoveTag, &gradebrokerv1.RemoveTagRequest{Name: args[0]},
				func(w io.Writer, _ *gradebrokerv1.RemoveTagResponse) { fmt.Fprintf(w, "removed tag %s\n", args[0]) })
		}),
	},

	// --- server types ---
	{
		name:     "type add",
		synopsis: "type add NAME --tags a,b",
		args:     nameArgs,
		summary:  "Register a server type and the tags it covers",
		help:     "Every tag must be registered first ('broker admin tag add'). A type without tags takes only jobs without tags.",
		examples: []string{"broker admin type add python --tags python3,numpy"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			tags := fs.String("tags", "", "comma-separated `TAGS` the type covers")
			return func(ctx context.Context, args []string) error {
				return call(ctx, r, admin.AddServerType, &gradebrokerv1.AddServerTypeRequest{Name: args[0], Tags: splitTags(*tags)},
					func(w io.Writer, resp *gradebrokerv1.AddServerTypeResponse) {
						fmt.Fprintf(w, "added server type %s (tags: %s)\n", resp.GetServerType().GetName(), list(resp.GetServerType().GetTags()))
					})
			}
		},
	},
	{
		name:     "type update",
		synopsis: "type update NAME --tags a,b",
		args:     nameArgs,
		summary:  "Replace a server type's tags",
		help:     "Jobs already queued keep the servers they were eligible for when they were sent.",
		examples: []string{"broker admin type update python --tags python3,numpy,scipy", `broker admin type update plain --tags ""`},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			tags := fs.String("tags", "", "comma-separated `TAGS`; replaces the type's tags")
			return func(ctx context.Context, args []string) error {
				if !r.isSet("tags") {
					return usagef("--tags is required (give --tags \"\" to remove every tag)")
				}
				return call(ctx, r, admin.UpdateServerType, &gradebrokerv1.UpdateServerTypeRequest{Name: args[0], Tags: splitTags(*tags)},
					func(w io.Writer, resp *gradebrokerv1.UpdateServerTypeResponse) {
						fmt.Fprintf(w, "server type %s now covers tags: %s\n", resp.GetServerType().GetName(), list(resp.GetServerType().GetTags()))
					})
			}
		},
	},
	{
		name:     "type list",
		synopsis: "type list",
		summary:  "List server types",
		examples: []string{"broker admin type list"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListServerTypes, &gradebrokerv1.ListServerTypesRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListServerTypesResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tTAGS")
					for _, t := range resp.GetServerTypes() {
						fmt.Fprintf(tw, "%s\t%s\n", t.GetName(), list(t.GetTags()))
					}
					tw.Flush()
				})
		}),
	},
	{
		name:     "type remove",
		synopsis: "type remove NAME",
		args:     nameArgs,
		summary:  "Remove a server type no server uses",
		examples: []string{"broker admin type remove legacy"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemoveServerType, &gradebrokerv1.RemoveServerTypeRequest{Name: args[0]},
				func(w io.Writer, _ *gradebrokerv1.RemoveServerTypeResponse) {
					fmt.Fprintf(w, "removed server type %s\n", args[0])
				})
		}),
	},

	// --- operators ---
	{
		name:     "operator add",
		synopsis: "operator add NAME --cert FILE",
		args:     nameArgs,
		summary:  "Register another operator's certificate",
		help:     "--cert is the new operator's certificate (OU=operator), issued by the broker's CA.",
		examples: []string{"broker admin operator add bob --cert bob.crt"},
		shadows:  []string{"cert"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			certFile := fs.String("cert", "", "the operator's certificate `FILE` (PEM)")
			return func(ctx context.Context, args []string) error {
				pem, err := readFlagFile("cert", *certFile)
				if err != nil {
					return err
				}
				return call(ctx, r, admin.AddOperator, &gradebrokerv1.AddOperatorRequest{Name: args[0], CertificatePem: pem},
					func(w io.Writer, resp *gradebrokerv1.AddOperatorResponse) { printOperator(w, resp.GetOperator()) })
			}
		},
	},
	{
		name:     "operator list",
		synopsis: "operator list",
		summary:  "List operators",
		examples: []string{"broker admin operator list"},
		flags: noFlags(func(ctx context.Context, r *runner, _ []string) error {
			return call(ctx, r, admin.ListOperators, &gradebrokerv1.ListOperatorsRequest{},
				func(w io.Writer, resp *gradebrokerv1.ListOperatorsResponse) {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tSUBJECT\tSERIAL\tEXPIRES\tREGISTERED")
					for _, o := range resp.GetOperators() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.GetName(), o.GetCertificate().GetSubject(),
							o.GetCertificate().GetSerial(), when(o.GetCertificate().GetNotAfter()), when(o.GetCreatedAt()))
					}
					tw.Flush()
				})
		}),
	},
	{
		name:     "operator remove",
		synopsis: "operator remove NAME",
		args:     nameArgs,
		summary:  "Remove an operator (never the last one)",
		examples: []string{"broker admin operator remove bob"},
		flags: noFlags(func(ctx context.Context, r *runner, args []string) error {
			return call(ctx, r, admin.RemoveOperator, &gradebrokerv1.RemoveOperatorRequest{Name: args[0]},
				func(w io.Writer, _ *gradebrokerv1.RemoveOperatorResponse) {
					fmt.Fprintf(w, "removed operator %s\n", args[0])
				})
		}),
	},

	// --- jobs ---
	{
		name:     "job list",
		synopsis: "job list [--state S] [--platform P] [--server S] [--limit N] [--before ID]",
		summary:  "List jobs, newest first",
		help: `--state is one of queued, assigned, done, failed, cancelled. To page, pass the
smallest ID of one page as --before of the next.`,
		examples: []string{
			"broker admin job list --state failed",
			"broker admin job list --platform mooc --limit 200",
			"broker admin job list --server grader1 --before 12000",
		},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			state := fs.String("state", "", "only jobs in `STATE`")
			platform := fs.String("platform", "", "only jobs of `PLATFORM`")
			server := fs.String("server", "", "only jobs whose latest attempt ran on `SERVER`")
			limit := fs.Uint("limit", 0, "at most `N` jobs (default 50, at most 1000)")
			before := fs.Int64("before", 0, "only jobs with an ID below `ID`")
			return func(ctx context.Context, _ []string) error {
				req := &gradebrokerv1.ListJobsRequest{Platform: *platform, Server: *server, BeforeId: *before}
				if *state != "" {
					v, ok := gradebrokerv1.JobState_value["JOB_STATE_"+strings.ToUpper(*state)]
					if !ok || v == 0 {
						return usagef("--state %q is not one of queued, assigned, done, failed, cancelled", *state)
					}
					req.State = gradebrokerv1.JobState(v)
				}
				if *limit > store.MaxJobListLimit {
					return usagef("--limit must be at most %d", store.MaxJobListLimit)
				}
				req.Limit = uint32(*limit)
				if *before < 0 {
					return usagef("--before must be a job ID")
				}
				return call(ctx, r, admin.ListJobs, req,
					func(w io.Writer, resp *gradebrokerv1.ListJobsResponse) { printJobs(w, resp.GetJobs()) })
			}
		},
	},
	{
		name:     "job show",
		synopsis: "job show ID",
		args:     []string{"ID"},
		summary:  "Show one job with its attempts, events, data and result",
		examples: []string{"broker admin job show 1234", "broker admin job show 1234 --json"},
		flags: onJob(func(ctx context.Context, r *runner, id int64) error {
			return call(ctx, r, admin.GetJob, &gradebrokerv1.AdminServiceGetJobRequest{Id: id},
				func(w io.Writer, resp *gradebrokerv1.AdminServiceGetJobResponse) { printJob(w, resp.GetJob()) })
		}),
	},
	{
		name:     "job requeue",
		synopsis: "job requeue ID",
		args:     []string{"ID"},
		summary:  "Put a job back in the queue",
		help:     "A running job loses its lease (its server is told to stop); a failed or cancelled job starts again with fresh attempts.",
		examples: []string{"broker admin job requeue 1234"},
		flags: onJob(func(ctx context.Context, r *runner, id int64) error {
			return call(ctx, r, admin.RequeueJob, &gradebrokerv1.RequeueJobRequest{Id: id},
				func(w io.Writer, resp *gradebrokerv1.RequeueJobResponse) { printJobState(w, resp.GetJob()) })
		}),
	},
	{
		name:     "job cancel",
		synopsis: "job cancel ID",
		args:     []string{"ID"},
		summary:  "Cancel a job that is not finished",
		examples: []string{"broker admin job cancel 1234"},
		flags: onJob(func(ctx context.Context, r *runner, id int64) error {
			return call(ctx, r, admin.CancelJob, &gradebrokerv1.AdminServiceCancelJobRequest{Id: id},
				func(w io.Writer, resp *gradebrokerv1.AdminServiceCancelJobResponse) { printJobState(w, resp.GetJob()) })
		}),
	},
	{
		name:     "delivery list",
		synopsis: "delivery list [--state pending|delivered|dead] [--platform P] [--job ID] [--limit N] [--before ID]",
		summary:  "List result callbacks, newest first",
		examples: []string{"broker admin delivery list --state dead", "broker admin delivery list --job 1234"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			state := fs.String("state", "", "only deliveries in this state: pending, delivered or dead")
			platform := fs.String("platform", "", "only this platform's deliveries")
			job := fs.Int64("job", 0, "only this job's deliveries")
			limit := fs.Int("limit", 50, "at most this many")
			before := fs.Int64("before", 0, "only deliveries with a smaller ID, to page")
			return func(ctx context.Context, args []string) error {
				req := &gradebrokerv1.ListDeliveriesRequest{Platform: *platform, JobId: *job, BeforeId: *before}
				if *state != "" {
					v, ok := gradebrokerv1.DeliveryState_value["DELIVERY_STATE_"+strings.ToUpper(*state)]
					if !ok || v == 0 {
						return usagef("--state %q is not one of pending, delivered, dead", *state)
					}
					req.State = gradebrokerv1.DeliveryState(v)
				}
				if *limit < 0 || *limit > store.MaxDeliveryListLimit {
					return usagef("--limit must be between 0 and %d", store.MaxDeliveryListLimit)
				}
				req.Limit = uint32(*limit)
				return call(ctx, r, admin.ListDeliveries, req,
					func(w io.Writer, resp *gradebrokerv1.ListDeliveriesResponse) {
						printDeliveries(w, resp.GetDeliveries())
					})
			}
		},
	},
	{
		name:     "delivery redeliver",
		synopsis: "delivery redeliver (ID... | --platform P | --all-dead)",
		summary:  "Send result callbacks again",
		help: "A dead delivery gets a new delivery (a new delivery_id, the same job_id) with a fresh retry window; " +
			"a pending one is tried at once. Give delivery IDs, or --platform for all of one platform's dead deliveries, " +
			"or --all-dead.",
		examples: []string{"broker admin delivery redeliver 17 18", "broker admin delivery redeliver --platform moodle", "broker admin delivery redeliver --all-dead"},
		flags: func(fs *flag.FlagSet, r *runner) runFunc {
			platform := fs.String("platform", "", "every dead delivery of this platform")
			allDead := fs.Bool("all-dead", false, "every dead delivery")
			return func(ctx context.Context, args []string) error {
				req := &gradebrokerv1.RedeliverDeliveriesRequest{Platform: *platform, AllDead: *allDead}
				for _, a := range args {
					id, err := parseJobID(a)
					if err != nil {
						return usagef("%q is not a delivery ID", a)
					}
					req.Ids = append(req.Ids, id)
				}
				chosen := 0
				for _, set := range []bool{len(req.Ids) > 0, *platform != "", *allDead} {
					if set {
						chosen++
					}
				}
				if chosen != 1 {
					return usagef("give delivery IDs, or --platform, or --all-dead (exactly one)")
				}
				return call(ctx, r, admin.RedeliverDeliveries, req,
					func(w io.Writer, resp *gradebrokerv1.RedeliverDeliveriesResponse) {
						fmt.Fprintf(w, "%d deliveries scheduled\n", resp.GetRedelivered())
					})
			}
		},
	},
}

// bootstrap registers the first operator straight into the database.
func (r *runner) bootstrap(ctx context.Context, dbPath, name, certFile, caFile string, force bool) error {
	switch {
	case dbPath == "":
		return usagef("--db is required: the broker's database file")
	case name == "":
		return usagef("--name is required: the operator's name")
	case certFile == "":
		return usagef("--cert is required (or set GB_ADMIN_CERT): the operator's certificate")
	case caFile == "":
		return usagef("--ca is required (or set GB_ADMIN_CA): the broker's CA certificate, to check the operator's certificate against")
	}
	if err := broker.CheckName("operator", name); err != nil {
		return usagef("--name: %v", err)
	}
	certPEM, err := readFlagFile("cert", certFile)
	if err != nil {
		return err
	}
	pool, err := certs.LoadCAPool(caFile)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	id, err := adminapi.CheckCertificate([]byte(certPEM), pool, certs.RoleOperator, time.Now())
	if err != nil {
		return fmt.Errorf("--cert %s: %w", certFile, err)
	}

	_, statErr := os.Stat(dbPath)
	created := errors.Is(statErr, os.ErrNotExist)
	db, err := store.Open(ctx, dbPath, store.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	ops, err := db.ListOperators(ctx)
	if err != nil {
		return err
	}
	if len(ops) > 0 && !force {
		names := make([]string, len(ops))
		for i, o := range ops {
			names[i] = o.Name
		}
		return fmt.Errorf("%s already has %d operator(s) (%s); bootstrap only adds the first one. "+
			"Have one of them run 'broker admin operator add %s --cert %s', or pass --force to add it anyway",
			dbPath, len(ops), strings.Join(names, ", "), name, certFile)
	}
	op, err := db.AddOperator(ctx, name, id)
	if err != nil {
		return err
	}
	return r.emit(protoconv.OperatorToProto(op), func(w io.Writer) {
		if created {
			fmt.Fprintf(w, "created database %s\n", dbPath)
		}
		fmt.Fprintf(w, "registered operator %s in %s\n", op.Name, dbPath)
		printOperator(w, protoconv.OperatorToProto(op))
	})
}
