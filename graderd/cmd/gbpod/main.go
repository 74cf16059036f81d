// Command gbpod is the entrypoint of graderd's Kubernetes grading pods (see
// package podentry): "gbpod install DIR" copies itself into DIR (the init
// container), "gbpod run [options] -- GRADER..." runs the grader by the exec
// convention and writes its report to the termination message.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/podentry"
)

const usage = `usage: gbpod install DIR
       gbpod run [--input DIR --doc-len N --doc-sha256 HEX --report FILE
                  --max-stdout N --max-stderr N --open-files N --kill-grace D
                  --check-full DIR,...] -- GRADER [ARG...]

gbpod is started by graderd's kubernetes executor inside grading pods; it is
not meant to be run by hand.`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "install":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		if err := podentry.Install(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "gbpod install: %v\n", err)
			os.Exit(1)
		}
	case "run":
		o, err := podentry.ParseArgs(os.Args[2:])
		if err != nil {
			fmt.Fprintf(os.Stderr, "gbpod run: %v\n%s\n", err, usage)
			os.Exit(2)
		}
		// The kubelet stops a pod with SIGTERM; graderd's deletion of a
		// timed-out or cancelled pod arrives that way.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		code := podentry.Run(ctx, o, os.Stderr)
		stop()
		os.Exit(code)
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
}
