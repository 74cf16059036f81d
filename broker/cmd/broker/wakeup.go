package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/wakeup"
	"github.com/gradebroker/gradebroker/wakeupmsg"
)

const wakeupSecretUsage = `Usage: broker wakeup-secret --key-file FILE --server NAME

Prints server NAME's wakeup secret in hex: what its graderd needs as
wakeup_secret (or in --wakeup-secret-file) to check UDP wakeups, and what an
HTTP wakeup receiver checks the X-Gradebroker-Signature header with. It is
derived from the broker's wakeup key (wakeup_key_file), so nothing is stored
and the command needs no running broker.

Flags:
`

// wakeupSecret runs `broker wakeup-secret`.
func wakeupSecret(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("broker wakeup-secret", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, wakeupSecretUsage)
		fs.PrintDefaults()
	}
	keyFile := fs.String("key-file", "", "the broker's wakeup key `file` (wakeup_key_file)")
	server := fs.String("server", "", "the server's registered `name`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "broker wakeup-secret: unexpected argument %q\n", fs.Arg(0))
		return 2
	case *keyFile == "":
		fmt.Fprintln(stderr, "broker wakeup-secret: --key-file is required (the broker's wakeup_key_file)")
		return 2
	}
	if err := broker.CheckName("server", *server); err != nil {
		fmt.Fprintf(stderr, "broker wakeup-secret: --server: %v\n", err)
		return 2
	}
	key, err := wakeup.LoadKey(*keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "broker wakeup-secret: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, hex.EncodeToString(wakeupmsg.DeriveSecret(key, *server)))
	return 0
}
