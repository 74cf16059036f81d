package brokerd

import (
	"os"
	"runtime"
)

// AddWriterProc gives the Go scheduler one processor (P) more than its
// default, unless the GOMAXPROCS environment variable is set, and returns
// the number in effect. `broker serve` calls it at start.
//
// The dispatcher's writer spends much of its time in cgo calls into SQLite,
// each commit's fsync included, and a goroutine in a cgo call holds its P
// until the runtime's monitor takes it back. With as many Ps as cores, a
// core then idles while requests wait: under platform API load on a 2-core
// machine 5-7 % of the CPU stayed idle, and with one P more under 1 %
// (gbbench --only api reports the idle share). Setting GOMAXPROCS also turns
// off the runtime's own updates of it when a container's CPU limit changes.
func AddWriterProc() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	n := runtime.GOMAXPROCS(0) + 1
	runtime.GOMAXPROCS(n)
	return n
}
