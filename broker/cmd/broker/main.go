// Command broker is gradebroker's broker: `broker serve` runs it, `broker
// admin` administers it. See `broker help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/gradebroker/gradebroker/broker/admincli"
	"github.com/gradebroker/gradebroker/broker/brokerd"
	"github.com/gradebroker/gradebroker/broker/platformcli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `gradebroker broker: hands grading jobs from platforms to grading servers.

Usage:
  broker serve [flags]      run the broker (broker serve -h for its flags)
  broker admin COMMAND      administer a running broker (broker admin -h)
  broker platform COMMAND   act as a platform: tokens, jobs, callbacks (broker platform -h)
  broker wakeup-secret      print a server's wakeup secret (broker wakeup-secret -h)
  broker version            print the version

See README.md for a walk-through.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		cfg, err := brokerd.ParseServeFlags(args[1:], stderr)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(stderr, "broker serve: %v\n", err)
			return 2
		}
		log := brokerd.NewLogger(cfg, stderr)
		log.Info("go scheduler", "gomaxprocs", brokerd.AddWriterProc(), "cpus", runtime.NumCPU())
		if err := brokerd.Run(ctx, cfg, log); err != nil {
			log.Error("broker stopped with an error", "err", err)
			return 1
		}
		return 0
	case "admin":
		return admincli.Main(ctx, args[1:], stdout, stderr)
	case "platform":
		return platformcli.Main(ctx, args[1:], stdout, stderr)
	case "wakeup-secret":
		return wakeupSecret(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "broker: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
