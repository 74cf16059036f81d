// Package layout holds no code: its test checks the import rules of the
// repository's layout (CONTRIBUTING.md, "Layout and its rules") against the
// package graph that `go list` reports, so that a forbidden import fails
// `make test` the day it comes back.
package layout
