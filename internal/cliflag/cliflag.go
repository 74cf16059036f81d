// Package cliflag holds what gradebroker's command-line tools need beyond
// the standard flag package.
package cliflag

import "flag"

// ParseInterleaved parses flags that come before, between and after
// positional arguments (the flag package alone stops at the first
// positional one), so that "server add g1 --type py" and "getjob 12 --wait
// 30s" work as people type them. Everything after "--" is positional. It
// returns the positional arguments in order.
func ParseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// Exit codes of gradebroker's command-line tools.
const (
	// ExitOK means the command did what was asked.
	ExitOK = 0
	// ExitError means the broker refused, or a file or the network failed.
	ExitError = 1
	// ExitUsage means the command line was wrong; nothing was sent.
	ExitUsage = 2
)
