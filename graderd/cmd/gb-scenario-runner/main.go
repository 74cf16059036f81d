// Command gb-scenario-runner makes the HTTP requests of a scenarios job
// from inside the job's network namespace, where the student's service
// listens on the loopback, and reports the answers to graderd as JSON lines
// (see package scenarios). graderd runs it, a static binary alone in an
// image of its own (FROM scratch), as the first container of each scenarios
// run; the run's other containers join its network namespace.
//
// Build it without cgo, so that it needs no C library:
//
//	CGO_ENABLED=0 go build -o bin/gb-scenario-runner ./graderd/cmd/gb-scenario-runner
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gradebroker/gradebroker/graderd/executor/scenarios"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := scenarios.Run(ctx, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gb-scenario-runner:", err)
		os.Exit(1)
	}
}
