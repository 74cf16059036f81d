// Package admincli is the `broker admin` command: a gRPC client of the
// broker's AdminService for operators, plus `bootstrap`, which registers
// the first operator directly in the database because nobody can call the
// admin API before an operator exists.
//
// Every command is one flag.FlagSet; the connection flags (--addr, --ca,
// --cert, --key, --json, --timeout) are accepted before the command and after
// it, with defaults from GB_ADMIN_ADDR, GB_ADMIN_CA, GB_ADMIN_CERT and
// GB_ADMIN_KEY.
//
// A command is one entry in the commands list: its flags function
// registers its own flags and returns the function that checks them and
// ends in call, which makes the one AdminService call and prints the
// response (JSON under --json). noFlags and onJob spare the commands
// without flags of their own the flag-set boilerplate.
package admincli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/internal/cliflag"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Exit codes of Main, shared by gradebroker's command-line tools.
const (
	ExitOK    = cliflag.ExitOK    // the command did what was asked
	ExitError = cliflag.ExitError // the broker refused, or a file or the network failed
	ExitUsage = cliflag.ExitUsage // the command line was wrong; nothing was sent
)

// DefaultAddr is where the broker's gRPC port listens unless told otherwise.
const DefaultAddr = "127.0.0.1:7443"

// defaultTimeout bounds one command's call: long enough for a busy broker,
// short enough that a wrong address does not hang a script.
const defaultTimeout = 30 * time.Second

// Main runs `broker admin` with args (the words after "admin"), writing
// results to stdout and errors to stderr. It returns ExitOK, ExitError or
// ExitUsage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	m := &cli{stdout: stdout, stderr: stderr}
	return m.main(ctx, args)
}

type cli struct {
	stdout, stderr io.Writer
}

// connFlags are the connection settings every remote command takes.
type connFlags struct {
	addr    string
	ca      string
	cert    string
	key     string
	json    bool
	timeout time.Duration
	// clientCert and clientKey are --client-cert and --client-key, the
	// spellings of --cert and --key on commands where those name something
	// else (the certificate or public key being registered).
	clientCert string
	clientKey  string
}

func envConn() connFlags {
	c := connFlags{
		addr:    os.Getenv("GB_ADMIN_ADDR"),
		ca:      os.Getenv("GB_ADMIN_CA"),
		cert:    os.Getenv("GB_ADMIN_CERT"),
		key:     os.Getenv("GB_ADMIN_KEY"),
		timeout: defaultTimeout,
	}
	if c.addr == "" {
		c.addr = DefaultAddr
	}
	return c
}

// register adds the connection flags to fs, defaulting to c's values (so
// that flags given before the command carry over). shadowed lists the
// connection flags ("cert", "key") that the command itself defines with
// another meaning; the caller's own files are then --client-cert and
// --client-key only.
func (c *connFlags) register(fs *flag.FlagSet, shadowed []string) {
	fs.StringVar(&c.addr, "addr", c.addr, "broker `HOST:PORT` (env GB_ADMIN_ADDR)")
	fs.StringVar(&c.ca, "ca", c.ca, "CA certificate `FILE` that signed the broker's certificate (env GB_ADMIN_CA)")
	if !slices.Contains(shadowed, "cert") {
		fs.StringVar(&c.cert, "cert", c.cert, "your operator certificate `FILE` (env GB_ADMIN_CERT)")
	}
	if !slices.Contains(shadowed, "key") {
		fs.StringVar(&c.key, "key", c.key, "your operator private key `FILE` (env GB_ADMIN_KEY)")
	}
	fs.StringVar(&c.clientCert, "client-cert", c.clientCert, "your operator certificate `FILE`, where --cert means something else")
	fs.StringVar(&c.clientKey, "client-key", c.clientKey, "your operator private key `FILE`, where --key means something else")
	fs.BoolVar(&c.json, "json", c.json, "print the broker's response as JSON")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "give up after this `DURATION`")
}

// usagef reports a mistake on the command line: Main prints it with the
// command's usage and exits with ExitUsage.
var usagef = cliflag.Usagef

func (m *cli) main(ctx context.Context, args []string) int {
	conn := envConn()
	top := flag.NewFlagSet("broker admin", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	conn.register(top, nil)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			m.topUsage(m.stdout)
			return ExitOK
		}
		fmt.Fprintf(m.stderr, "error: %v\n\n", err)
		m.topUsage(m.stderr)
		return ExitUsage
	}
	args = top.Args()
	if len(args) == 0 {
		m.topUsage(m.stderr)
		return ExitUsage
	}
	if args[0] == "help" {
		if len(args) == 1 {
			m.topUsage(m.stdout)
			return ExitOK
		}
		args = append(args[1:], "-h")
	}
	cmd, rest, err := find(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			m.groupUsage(m.stdout, args[0])
			return ExitOK
		}
		fmt.Fprintf(m.stderr, "error: %v\n\n", err)
		if isGroup(args[0]) {
			m.groupUsage(m.stderr, args[0])
		} else {
			m.topUsage(m.stderr)
		}
		return ExitUsage
	}
	return m.run(ctx, cmd, conn, rest)
}

// find picks the command args name and returns the words after its name.
func find(args []string) (*command, []string, error) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			return c, args[len(words):], nil
		}
	}
	if isGroup(args[0]) {
		if len(args) == 1 {
			return nil, nil, fmt.Errorf("%q needs a subcommand", args[0])
		}
		if args[1] == "-h" || args[1] == "-help" || args[1] == "--help" {
			return nil, nil, flag.ErrHelp
		}
		return nil, nil, fmt.Errorf("unknown command %q", args[0]+" "+args[1])
	}
	return nil, nil, fmt.Errorf("unknown command %q", args[0])
}

func isGroup(word string) bool {
	for _, c := range commands {
		if g, _, ok := strings.Cut(c.name, " "); ok && g == word {
			return true
		}
	}
	return false
}

func (m *cli) run(ctx context.Context, cmd *command, conn connFlags, args []string) int {
	fs := flag.NewFlagSet("broker admin "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if !cmd.local {
		conn.register(fs, cmd.shadows)
	}
	r := &runner{cli: m, conn: &conn, fs: fs}
	run := cmd.flags(fs, r)
	pos, err := cliflag.ParseInterleaved(fs, args)
	if err == nil && len(pos) != len(cmd.args) {
		if len(pos) < len(cmd.args) {
			err = usagef("missing %s", strings.Join(cmd.args[len(pos):], " "))
		} else {
			err = usagef("unexpected argument %q", pos[len(cmd.args)])
		}
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			m.commandUsage(m.stdout, cmd, fs)
			return ExitOK
		}
		fmt.Fprintf(m.stderr, "error: %v\n\n", err)
		m.commandUsage(m.stderr, cmd, fs)
		return ExitUsage
	}
	fs.Visit(func(f *flag.Flag) { r.set = append(r.set, f.Name) })
	if conn.clientCert != "" {
		conn.cert = conn.clientCert
	}
	if conn.clientKey != "" {
		conn.key = conn.clientKey
	}

	ctx, cancel := context.WithTimeout(ctx, conn.timeout)
	defer cancel()
	err = run(ctx, pos)
	if r.conn != nil && r.cc != nil {
		r.cc.Close()
	}
	if err == nil {
		return ExitOK
	}
	var ue cliflag.UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(m.stderr, "error: %v\n\n", err)
		m.commandUsage(m.stderr, cmd, fs)
		return ExitUsage
	}
	if st, ok := status.FromError(err); ok {
		msg := st.Message()
		if st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded {
			msg += fmt.Sprintf(" (is the broker running at %s, and do --ca, --cert and --key name the right files?)", conn.addr)
		}
		fmt.Fprintf(m.stderr, "error: %s\n", msg)
		return ExitError
	}
	fmt.Fprintf(m.stderr, "error: %v\n", err)
	return ExitError
}

// runner is what a command's run function works with.
type runner struct {
	*cli
	conn *connFlags
	fs   *flag.FlagSet
	set  []string // the flags given on the command line
	cc   *grpc.ClientConn
}

// isSet reports whether flag name was given on the command line.
func (r *runner) isSet(name string) bool {
	for _, n := range r.set {
		if n == name {
			return true
		}
	}
	return false
}

// client connects to the broker with the operator's certificate.
func (r *runner) client() (gradebrokerv1.AdminServiceClient, error) {
	c := r.conn
	for _, req := range []struct{ val, flag, env, what string }{
		{c.ca, "--ca", "GB_ADMIN_CA", "the CA certificate that signed the broker's certificate"},
		{c.cert, "--cert", "GB_ADMIN_CERT", "your operator certificate"},
		{c.key, "--key", "GB_ADMIN_KEY", "your operator private key"},
	} {
		if req.val == "" {
			return nil, usagef("%s is required (or set %s): %s", req.flag, req.env, req.what)
		}
	}
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		return nil, usagef("--addr %q must be HOST:PORT, for example %s", c.addr, DefaultAddr)
	}
	src, err := certs.NewClientSource(c.cert, c.key, c.ca, nil)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientTLSConfig(host))))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.addr, err)
	}
	r.cc = cc
	return gradebrokerv1.NewAdminServiceClient(cc), nil
}

// admin is the AdminService client; its method expressions
// (admin.AddTag) name the call a command makes.
type admin = gradebrokerv1.AdminServiceClient

// call is the shape of every remote command: connect, make one call, and
// print its response, as JSON under --json and with human otherwise. The
// broker's error is returned as it came, for run to print.
func call[Req, Resp proto.Message](ctx context.Context, r *runner,
	method func(admin, context.Context, Req, ...grpc.CallOption) (Resp, error),
	req Req, human func(w io.Writer, resp Resp)) error {
	c, err := r.client()
	if err != nil {
		return err
	}
	resp, err := method(c, ctx, req)
	if err != nil {
		return err
	}
	return r.emit(resp, func(w io.Writer) { human(w, resp) })
}

// noFlags is the flags function of a command without flags of its own.
func noFlags(run func(ctx context.Context, r *runner, args []string) error) func(*flag.FlagSet, *runner) runFunc {
	return func(_ *flag.FlagSet, r *runner) runFunc {
		return func(ctx context.Context, args []string) error { return run(ctx, r, args) }
	}
}

// --- usage ---

func (m *cli) topUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: broker admin [connection flags] COMMAND [ARGS] [flags]

Manages a running broker over its admin API (gRPC with your operator
certificate). Run 'broker admin COMMAND -h' for a command's flags and
examples.

Commands:
`)
	tw := newTable(w)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, connectionHelp(nil))
}

// connectionHelp describes the connection flags; shadowed are those the
// command defines itself with another meaning.
func connectionHelp(shadowed []string) string {
	var b strings.Builder
	b.WriteString("\nConnection flags (before or after the command):\n")
	b.WriteString("  --addr HOST:PORT    the broker's gRPC address (env GB_ADMIN_ADDR, default " + DefaultAddr + ")\n")
	b.WriteString("  --ca FILE           the CA certificate that signed the broker's (env GB_ADMIN_CA)\n")
	for _, f := range []struct{ name, what, env string }{
		{"cert", "certificate", "GB_ADMIN_CERT"},
		{"key", "private key", "GB_ADMIN_KEY"},
	} {
		if slices.Contains(shadowed, f.name) {
			fmt.Fprintf(&b, "  %-18s  your operator %s (env %s); here --%s is\n"+
				"                      what is registered, so give yours this way or as\n"+
				"                      --%s before the command\n", "--client-"+f.name+" FILE", f.what, f.env, f.name, f.name)
		} else {
			fmt.Fprintf(&b, "  %-18s  your operator %s (env %s)\n", "--"+f.name+" FILE", f.what, f.env)
		}
	}
	b.WriteString("  --json              print the broker's response as JSON\n")
	b.WriteString("  --timeout D         give up after D (default 30s)\n")
	return b.String()
}

func (m *cli) groupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: broker admin %s SUBCOMMAND [ARGS] [flags]\n\nSubcommands:\n", group)
	tw := newTable(w)
	for _, c := range commands {
		if g, sub, ok := strings.Cut(c.name, " "); ok && g == group {
			fmt.Fprintf(tw, "  %s\t%s\n", sub, c.summary)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun 'broker admin %s SUBCOMMAND -h' for its flags and examples.\n", group)
}

func (m *cli) commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: broker admin %s\n\n%s\n", c.synopsis, c.summary+".")
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	var own []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if !connFlagNames[f.Name] || slices.Contains(c.shadows, f.Name) || c.local {
			own = append(own, f)
		}
	})
	cliflag.PrintCommandHelp(w, own, c.examples)
	if !c.local {
		fmt.Fprint(w, connectionHelp(c.shadows))
	}
}

var connFlagNames = map[string]bool{"addr": true, "ca": true, "cert": true, "client-cert": true, "key": true, "client-key": true, "json": true, "timeout": true}
