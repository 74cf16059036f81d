// Package cliflag holds what gradebroker's command-line tools need beyond
// the standard flag package.
package cliflag

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

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

// UsageError is a mistake on the command line. A tool prints it with the
// command's usage and exits with ExitUsage: nothing was sent.
type UsageError struct{ Msg string }

// Error returns the mistake, written for the person who typed the command.
func (e UsageError) Error() string { return e.Msg }

// Usagef returns a UsageError with a formatted message.
func Usagef(format string, args ...any) error {
	return UsageError{fmt.Sprintf(format, args...)}
}

// PrintCommandHelp prints the end of a command's help: its own flags,
// sorted by name, under "Flags:", then its examples under "Examples:";
// either section is left out when empty.
func PrintCommandHelp(w io.Writer, flags []*flag.Flag, examples []string) {
	if len(flags) > 0 {
		fmt.Fprintf(w, "\nFlags:\n")
		flags = slices.Clone(flags)
		slices.SortFunc(flags, func(a, b *flag.Flag) int { return strings.Compare(a.Name, b.Name) })
		PrintFlags(w, flags)
	}
	if len(examples) > 0 {
		fmt.Fprintf(w, "\nExamples:\n")
		for _, e := range examples {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}

// PrintFlags prints flags in two aligned columns, "--name ARG" and the
// usage, with the default where it says something (not "", false, 0, 0s or
// []). The ARG is the usage's back-quoted word, as flag.UnquoteUsage finds
// it.
func PrintFlags(w io.Writer, flags []*flag.Flag) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range flags {
		name, usage := flag.UnquoteUsage(f)
		left := "  --" + f.Name
		if name != "" {
			left += " " + name
		}
		switch f.DefValue {
		case "", "false", "0", "0s", "[]":
		default:
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(tw, "%s\t%s\n", left, usage)
	}
	tw.Flush()
}
