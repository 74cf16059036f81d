package platformcli

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/gradebroker/gradebroker/broker/token"
	"github.com/gradebroker/gradebroker/certs"
	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/platformclient"
)

// runFunc runs a command with its positional arguments, after its flags
// were parsed.
type runFunc func(ctx context.Context, r *runner, args []string) error

// command is one `broker platform` command.
type command struct {
	name     string   // the word that selects it
	synopsis string   // the usage line after "broker platform "
	args     []string // the names of its positional arguments
	minArgs  int      // how many of args are required
	summary  string   // one line, no final period
	help     string   // more, if needed
	examples []string
	// flags registers the command's own flags on fs and returns the
	// function that runs it.
	flags func(fs *flag.FlagSet) runFunc
}

const jsonHelp = `JSON is the request's fields as one JSON object: given inline, as @FILE to
read it from a file, or as - to read it from standard input. The client adds
the claims (request, iat, exp, jti, aud) itself.`

var commands = []*command{
	{
		name: "token", synopsis: "token REQUEST [JSON]", args: []string{"REQUEST", "JSON"}, minArgs: 1,
		summary: "print a request token, for calling the broker with another tool",
		help: `REQUEST is test, sendjob, sendjobs, sendsolution, getjob or canceljob.
` + jsonHelp + ` Each token is good for one call.`,
		examples: []string{
			`curl --cacert dev/ca.crt -H 'Content-Type: application/json' \`,
			`    -d "{\"token\": \"$(broker platform token getjob '{"jobid": 12}')\"}" \`,
			`    https://127.0.0.1:8443/v1/jobs:get`,
		},
		flags: func(*flag.FlagSet) runFunc { return runToken },
	},
	{
		name: "test", synopsis: "test",
		summary: "check the connection, the keys and the clocks",
		help:    "Prints the platform the broker recognised, the broker's name and its clock.",
		examples: []string{
			"broker platform test --ca dev/ca.crt --platform demo --key dev/demo-token.key --broker-key dev/broker-token.pub",
		},
		flags: func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, r *runner, _ []string) error {
				return r.call(ctx, 0, func(ctx context.Context, c *platformclient.Client) (proto.Message, error) {
					return c.Test(ctx)
				})
			}
		},
	},
	{
		name: "sendjob", synopsis: "sendjob JSON", args: []string{"JSON"}, minArgs: 1,
		summary: "queue a job",
		help: jsonHelp + `
Its members: jobdata (an object, or a string holding JSON), jobname, priority,
tags (an array or a comma-separated string), idempotency_key, timeout_sec.`,
		examples: []string{
			`broker platform sendjob '{"jobdata": {"n": 1}, "jobname": "first", "tags": ["python3"]}'`,
			`broker platform sendjob @job.json`,
		},
		flags: func(*flag.FlagSet) runFunc {
			return sendFields(platformclient.PathSendJob, "sendjob", &gradebrokerv1.SendJobResponse{})
		},
	},
	{
		name: "sendjobs", synopsis: "sendjobs JSON", args: []string{"JSON"}, minArgs: 1,
		summary: "queue many jobs with one token, all or none",
		help: jsonHelp + `
It is {"jobs": [JOB, ...]}, each JOB with the members of a sendjob JSON; a
bare array is taken as the jobs.`,
		examples: []string{
			`broker platform sendjobs '{"jobs": [{"jobdata": {"n": 1}, "tags": "python3"}, {"jobdata": {"n": 2}, "tags": "python3"}]}'`,
		},
		flags: func(*flag.FlagSet) runFunc {
			return sendFields(platformclient.PathSendJobs, "sendjobs", &gradebrokerv1.SendJobsResponse{})
		},
	},
	{
		name: "sendsolution", synopsis: "sendsolution JSON", args: []string{"JSON"}, minArgs: 1,
		summary: "queue a job built by the broker from solution parameters",
		help: jsonHelp + `
Its members: taskpath, lang, one of solcontent, solpath and solfile
({"name": ..., "content_base64": ...}), and optionally memlimit (KiB),
timelimit (ms), jobname, priority, tags, idempotency_key, timeout_sec.`,
		examples: []string{
			`broker platform sendsolution '{"taskpath": "$ROOT/tasks/sum", "lang": "python3", "solcontent": "print(3)", "tags": ["python3"]}'`,
		},
		flags: func(*flag.FlagSet) runFunc {
			return sendFields(platformclient.PathSendSolution, "sendsolution", &gradebrokerv1.SendSolutionResponse{})
		},
	},
	{
		name: "getjob", synopsis: "getjob ID", args: []string{"ID"}, minArgs: 1,
		summary: "show a job's state, attempts and result",
		help: `With --wait the broker answers once the job is final or the wait is over
(at most 60s); --timeout is extended by the wait. The result is base64 in
the JSON, as the broker sends it.`,
		examples: []string{"broker platform getjob 12 --wait 30s"},
		flags: func(fs *flag.FlagSet) runFunc {
			wait := fs.Duration("wait", 0, "wait up to `DURATION` for the job to become final")
			return func(ctx context.Context, r *runner, args []string) error {
				id, err := parseJobID(args[0])
				if err != nil {
					return err
				}
				if *wait < 0 {
					return usagef("--wait must not be negative")
				}
				return r.call(ctx, *wait, func(ctx context.Context, c *platformclient.Client) (proto.Message, error) {
					return c.GetJob(ctx, id, *wait)
				})
			}
		},
	},
	{
		name: "canceljob", synopsis: "canceljob ID", args: []string{"ID"}, minArgs: 1,
		summary: "cancel a job that is not final",
		help:    "A final job is left as it is; the response's message says so.",
		examples: []string{
			"broker platform canceljob 12",
		},
		flags: func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, r *runner, args []string) error {
				id, err := parseJobID(args[0])
				if err != nil {
					return err
				}
				return r.call(ctx, 0, func(ctx context.Context, c *platformclient.Client) (proto.Message, error) {
					return c.CancelJob(ctx, id)
				})
			}
		},
	},
	{
		name: "receive", synopsis: "receive",
		summary: "run a local callback receiver that prints each callback",
		help: `Listens for the broker's result callbacks (POST {"token": ...} on any path),
decrypts and verifies each, and prints its payload as one JSON line on
standard output; logs go to standard error, starting with "listening on
ADDR" once it is ready. A delivery it has printed is acknowledged again
without printing it twice. Register http(s)://ADDR/ as the platform's
return_url. It needs --platform, --key and --broker-key, not --url.`,
		examples: []string{
			"broker platform receive --listen 127.0.0.1:9999 --platform demo --key dev/demo-token.key --broker-key dev/broker-token.pub",
			"broker platform receive --once > callback.json",
		},
		flags: receiveFlags,
	},
	{
		name: "open", synopsis: "open TOKEN", args: []string{"TOKEN"}, minArgs: 1,
		summary: "decrypt and verify a callback token and print its payload",
		help: `TOKEN is the compact token (the "token" member of a callback's body),
@FILE to read it from a file, or - to read it from standard input.`,
		examples: []string{`broker platform open @callback.token`},
		flags: func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, r *runner, args []string) error {
				raw, err := r.readArg(args[0])
				if err != nil {
					return err
				}
				tok := strings.TrimSpace(string(raw))
				// Accept the whole body too: that is what a log shows.
				var body struct {
					Token string `json:"token"`
				}
				if json.Unmarshal(raw, &body) == nil && body.Token != "" {
					tok = body.Token
				}
				reader, err := r.reader()
				if err != nil {
					return err
				}
				cb, err := reader.Read(ctx, tok)
				if err != nil {
					return err
				}
				return r.printJSON(cb.Payload)
			}
		},
	},
}

// runner is what a command's run function works with.
type runner struct {
	*cli
	c common
}

func parseJobID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("job ID %q must be a positive number", s)
	}
	return id, nil
}

// require checks that the flags the command needs were given.
func (r *runner) require(flags ...string) error {
	for _, f := range flags {
		var val, env, what string
		switch f {
		case "platform":
			val, env, what = r.c.platform, "GB_PLATFORM", "the platform's registered name"
		case "key":
			val, env, what = r.c.key, "GB_PLATFORM_KEY", "the platform's token private key"
		case "broker-key":
			val, env, what = r.c.brokerKey, "GB_BROKER_KEY", "the broker's token public key"
		}
		if val == "" {
			return usagef("--%s is required (or set %s): %s", f, env, what)
		}
	}
	return nil
}

// keys loads the platform's private key and the broker's public key.
func (r *runner) keys() (*rsa.PrivateKey, *rsa.PublicKey, error) {
	if err := r.require("platform", "key", "broker-key"); err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(r.c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("--key: %w", err)
	}
	key, err := token.LoadPrivateKeyPEM(b)
	if err != nil {
		return nil, nil, fmt.Errorf("--key %s: %w", r.c.key, err)
	}
	if b, err = os.ReadFile(r.c.brokerKey); err != nil {
		return nil, nil, fmt.Errorf("--broker-key: %w", err)
	}
	pub, err := token.ParsePublicKeyPEM(b)
	if err != nil {
		return nil, nil, fmt.Errorf("--broker-key %s: %w", r.c.brokerKey, err)
	}
	return key, pub, nil
}

// client returns a platform client as the common flags describe.
func (r *runner) client() (*platformclient.Client, error) {
	key, pub, err := r.keys()
	if err != nil {
		return nil, err
	}
	hc, err := r.httpClient()
	if err != nil {
		return nil, err
	}
	opts := platformclient.Options{HTTPClient: hc}
	if r.c.brokerSet {
		opts.Audience = r.c.broker
	}
	c, err := platformclient.New(r.c.url, r.c.platform, key, pub, opts)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return c, nil
}

// reader returns a callback reader as the common flags describe.
func (r *runner) reader() (*platformclient.CallbackReader, error) {
	key, pub, err := r.keys()
	if err != nil {
		return nil, err
	}
	return platformclient.NewCallbackReader(r.c.platform, key, r.c.broker, pub), nil
}

// httpClient returns an HTTP client that speaks TLS 1.3 to the broker,
// trusts --ca (or the system's roots) and presents --cert when given.
// Deadlines come from the context.
func (r *runner) httpClient() (*http.Client, error) {
	u, err := url.Parse(r.c.url)
	if err != nil || u.Host == "" {
		return nil, usagef("--url %q must be an absolute URL, like %s", r.c.url, DefaultURL)
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	if r.c.cert != "" || r.c.clientKey != "" {
		if r.c.cert == "" || r.c.clientKey == "" {
			return nil, usagef("--cert and --client-key go together")
		}
		if r.c.ca == "" {
			return nil, usagef("--cert needs --ca, the CA certificate that signed the broker's")
		}
		src, err := certs.NewClientSource(r.c.cert, r.c.clientKey, r.c.ca, nil)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = src.ClientTLSConfig(u.Hostname())
	} else if tr.TLSClientConfig, err = certs.GatewayClientTLSConfig(r.c.ca); err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	return &http.Client{Transport: tr}, nil
}

// call makes a client, runs fn within --timeout (plus extra) and prints its
// response.
func (r *runner) call(ctx context.Context, extra time.Duration, fn func(context.Context, *platformclient.Client) (proto.Message, error)) error {
	c, err := r.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.c.timeout+extra)
	defer cancel()
	msg, err := fn(ctx, c)
	if err != nil {
		return r.explain(err)
	}
	return r.printProto(msg)
}

// explain adds what to check to an error that never reached the broker.
func (r *runner) explain(err error) error {
	var ae *platformclient.APIError
	var ue *url.Error
	if !errors.As(err, &ae) && errors.As(err, &ue) {
		return fmt.Errorf("%w (is the broker running at %s, and does --ca name the CA that signed its certificate?)", err, r.c.url)
	}
	return err
}

// printProto prints msg as indented JSON with the proto field names, as the
// broker sent it.
func (r *runner) printProto(msg proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding the response as JSON: %w", err)
	}
	return r.printJSON(b)
}

// printJSON prints b indented; reformatting also evens out protojson's
// deliberately unstable spacing.
func (r *runner) printJSON(b []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return fmt.Errorf("formatting JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := r.stdout.Write(buf.Bytes())
	return err
}

// readArg returns an argument's content: the argument itself, a file's
// content for @FILE, or standard input for -.
func (r *runner) readArg(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		b, err := io.ReadAll(r.stdin)
		if err != nil {
			return nil, fmt.Errorf("reading standard input: %w", err)
		}
		return b, nil
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	return []byte(arg), nil
}

// readFields reads a JSON object argument into request fields.
func (r *runner) readFields(arg string) (map[string]any, error) {
	b, err := r.readArg(arg)
	if err != nil {
		return nil, err
	}
	return parseFields(b)
}

// parseFields decodes a JSON object into request fields. Values stay raw
// JSON, so that job data reaches the broker as written.
func parseFields(b []byte) (map[string]any, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil || raw == nil {
		return nil, usagef("JSON must be one object, like {\"jobid\": 12}: %v", describe(err))
	}
	if dec.More() {
		return nil, usagef("JSON has data after its object")
	}
	fields := make(map[string]any, len(raw))
	for k, v := range raw {
		fields[k] = v
	}
	return fields, nil
}

func describe(err error) string {
	if err == nil {
		return "got null"
	}
	return err.Error()
}

func runToken(_ context.Context, r *runner, args []string) error {
	var fields map[string]any
	if len(args) > 1 {
		var err error
		if fields, err = r.readFields(args[1]); err != nil {
			return err
		}
	}
	c, err := r.client()
	if err != nil {
		return err
	}
	tok, err := c.Token(args[0], fields)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(r.stdout, tok)
	return err
}

// sendFields returns a command that sends its JSON argument's fields as a
// request token to path and prints the response, decoded into out.
func sendFields(path, request string, out proto.Message) runFunc {
	return func(ctx context.Context, r *runner, args []string) error {
		raw, err := r.readArg(args[0])
		if err != nil {
			return err
		}
		if request == "sendjobs" {
			if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '[' {
				raw = append(append([]byte(`{"jobs":`), t...), '}')
			}
		}
		fields, err := parseFields(raw)
		if err != nil {
			return err
		}
		return r.call(ctx, 0, func(ctx context.Context, c *platformclient.Client) (proto.Message, error) {
			return out, c.Do(ctx, path, request, fields, out)
		})
	}
}
