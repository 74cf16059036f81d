// Package platformcli is the `broker platform` command: it talks to a
// broker's platform API as a platform would, with platformclient. It makes
// request tokens (for curl), sends jobs and follows them, and runs a local
// receiver that prints the result callbacks the broker sends to a
// platform's return_url. It is for trying a broker out, for scripts and for
// debugging a platform's integration.
//
// Every command is one flag.FlagSet; the common flags (--url, --ca,
// --platform, --key, --broker-key, --broker, --cert, --client-key,
// --timeout) are accepted before the command and after it, with defaults
// from GB_PLATFORM_URL, GB_CA, GB_PLATFORM, GB_PLATFORM_KEY, GB_BROKER_KEY
// and GB_BROKER.
package platformcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gradebroker/gradebroker/internal/cliflag"
)

// Exit codes of Main, shared by gradebroker's command-line tools.
const (
	ExitOK    = cliflag.ExitOK    // the command did what was asked
	ExitError = cliflag.ExitError // the broker refused, or a file or the network failed
	ExitUsage = cliflag.ExitUsage // the command line was wrong; nothing was sent
)

// DefaultURL is where the broker's REST gateway listens in the demo setup.
const DefaultURL = "https://127.0.0.1:8443"

// defaultTimeout bounds one call: long enough for a busy broker, short
// enough that a wrong address does not hang a script.
const defaultTimeout = 30 * time.Second

// Main runs `broker platform` with args (the words after "platform"),
// writing results to stdout and errors and logs to stderr; JSON arguments
// given as "-" are read from the process's standard input. It returns
// ExitOK, ExitError or ExitUsage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	m := &cli{stdin: os.Stdin, stdout: stdout, stderr: stderr}
	return m.main(ctx, args)
}

type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// common are the flags every command takes.
type common struct {
	url       string
	ca        string
	platform  string
	key       string
	brokerKey string
	broker    string
	brokerSet bool // --broker or GB_BROKER was given: put it into requests as aud
	cert      string
	clientKey string
	timeout   time.Duration
}

func envCommon() common {
	c := common{
		url:       os.Getenv("GB_PLATFORM_URL"),
		ca:        os.Getenv("GB_CA"),
		platform:  os.Getenv("GB_PLATFORM"),
		key:       os.Getenv("GB_PLATFORM_KEY"),
		brokerKey: os.Getenv("GB_BROKER_KEY"),
		broker:    os.Getenv("GB_BROKER"),
		timeout:   defaultTimeout,
	}
	if c.url == "" {
		c.url = DefaultURL
	}
	c.brokerSet = c.broker != ""
	if c.broker == "" {
		c.broker = "gradebroker"
	}
	return c
}

// register adds the common flags to fs, defaulting to c's values so that
// flags given before the command carry over.
func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "url", c.url, "the broker's REST gateway `URL` (env GB_PLATFORM_URL)")
	fs.StringVar(&c.ca, "ca", c.ca, "CA certificate `FILE` that signed the broker's HTTPS certificate (env GB_CA); default: the system's roots")
	fs.StringVar(&c.platform, "platform", c.platform, "the platform's registered `NAME` (env GB_PLATFORM)")
	fs.StringVar(&c.key, "key", c.key, "the platform's token private key, PEM `FILE` (env GB_PLATFORM_KEY)")
	fs.StringVar(&c.brokerKey, "broker-key", c.brokerKey, "the broker's token public key, PEM `FILE` (env GB_BROKER_KEY)")
	fs.StringVar(&c.broker, "broker", c.broker, "the broker's `NAME`, the signer of callbacks; when given, also the aud of requests (env GB_BROKER)")
	fs.StringVar(&c.cert, "cert", c.cert, "the platform's client certificate `FILE`, for brokers that require one")
	fs.StringVar(&c.clientKey, "client-key", c.clientKey, "the private key `FILE` of --cert")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "give up after this `DURATION`")
}

func (c *common) noteSet(fs *flag.FlagSet) {
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "broker" {
			c.brokerSet = true
		}
	})
}

var commonNames = map[string]bool{"url": true, "ca": true, "platform": true, "key": true, "broker-key": true,
	"broker": true, "cert": true, "client-key": true, "timeout": true}

// usagef reports a mistake on the command line: it is printed with the
// command's usage, and Main returns ExitUsage.
var usagef = cliflag.Usagef

func (m *cli) main(ctx context.Context, args []string) int {
	c := envCommon()
	top := flag.NewFlagSet("broker platform", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	c.register(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			m.topUsage(m.stdout)
			return ExitOK
		}
		fmt.Fprintf(m.stderr, "error: %v\n\n", err)
		m.topUsage(m.stderr)
		return ExitUsage
	}
	c.noteSet(top)
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
		args = []string{args[1], "-h"}
	}
	cmd := findCommand(args[0])
	if cmd == nil {
		fmt.Fprintf(m.stderr, "error: unknown command %q\n\n", args[0])
		m.topUsage(m.stderr)
		return ExitUsage
	}
	return m.run(ctx, cmd, c, args[1:])
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (m *cli) run(ctx context.Context, cmd *command, c common, args []string) int {
	fs := flag.NewFlagSet("broker platform "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.register(fs)
	run := cmd.flags(fs)
	pos, err := cliflag.ParseInterleaved(fs, args)
	if err == nil {
		switch {
		case len(pos) < cmd.minArgs:
			err = usagef("missing %s", strings.Join(cmd.args[len(pos):cmd.minArgs], " "))
		case len(pos) > len(cmd.args):
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
	c.noteSet(fs)
	r := &runner{cli: m, c: c}
	err = run(ctx, r, pos)
	if err == nil {
		return ExitOK
	}
	var ue cliflag.UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(m.stderr, "error: %v\n\n", err)
		m.commandUsage(m.stderr, cmd, fs)
		return ExitUsage
	}
	fmt.Fprintf(m.stderr, "error: %v\n", err)
	return ExitError
}

// --- usage ---

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func (m *cli) topUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: broker platform [flags] COMMAND [ARGS] [flags]

Talks to a broker's platform API as platform NAME does: makes request
tokens, sends jobs, follows them, and receives result callbacks. Run
'broker platform COMMAND -h' for a command's flags and an example.

Commands:
`)
	tw := newTable(w)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.synopsis, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, commonHelp)
}

const commonHelp = `
Common flags (before or after the command):
  --url URL          the broker's REST gateway (env GB_PLATFORM_URL, default ` + DefaultURL + `)
  --ca FILE          the CA certificate that signed the broker's HTTPS certificate
                     (env GB_CA; dev/ca.crt in the demo); default: the system's roots
  --platform NAME    the platform's registered name (env GB_PLATFORM)
  --key FILE         the platform's token private key, PEM (env GB_PLATFORM_KEY)
  --broker-key FILE  the broker's token public key, PEM (env GB_BROKER_KEY)
  --broker NAME      the broker's name, the signer of its callbacks (env GB_BROKER,
                     default gradebroker); when given, requests also carry it as aud
  --cert FILE        the platform's client certificate, for brokers that require one
  --client-key FILE  the private key of --cert
  --timeout D        give up on a call after D (default 30s)
`

func (m *cli) commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: broker platform %s [flags]\n\n%s.\n", c.synopsis, strings.ToUpper(c.summary[:1])+c.summary[1:])
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	var own []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if !commonNames[f.Name] {
			own = append(own, f)
		}
	})
	cliflag.PrintCommandHelp(w, own, c.examples)
	fmt.Fprint(w, commonHelp)
}
