package podentry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Paths in a grading pod.
const (
	// BinDir is the emptyDir where the init container installs gbpod.
	BinDir = "/gradebroker/bin"
	// Binary is gbpod's name in BinDir.
	Binary = "gbpod"
	// InputDir is where the job document's Secrets are projected.
	InputDir = "/gradebroker/input"
	// PartPrefix starts the name of each part of the job document in
	// InputDir: part-000, part-001, ...
	PartPrefix = "part-"
)

// PartName is the file name of part i of the job document.
func PartName(i int) string { return fmt.Sprintf("%s%03d", PartPrefix, i) }

// Options are gbpod's arguments for one run; the executor writes them with
// Args and gbpod reads them with ParseArgs.
type Options struct {
	// InputDir holds the job document's parts; DocLen and DocSHA256
	// describe the whole document.
	InputDir  string
	DocLen    int64
	DocSHA256 string
	// Report is the termination message file.
	Report string
	// MaxStdout caps the result, MaxStderr the log.
	MaxStdout int64
	MaxStderr int64
	// OpenFiles, when positive, is the grader's RLIMIT_NOFILE.
	OpenFiles int
	// CheckFull are the writable directories whose filling up is reported.
	CheckFull []string
	// KillGrace is the time between SIGTERM and SIGKILL when the pod is
	// stopped or the grader passes its result cap.
	KillGrace time.Duration
	// Command is the grader's argv.
	Command []string
}

// Args returns o as gbpod's command line after "run".
func (o Options) Args() []string {
	a := []string{
		"--input", o.InputDir,
		"--doc-len", strconv.FormatInt(o.DocLen, 10),
		"--doc-sha256", o.DocSHA256,
		"--report", o.Report,
		"--max-stdout", strconv.FormatInt(o.MaxStdout, 10),
		"--max-stderr", strconv.FormatInt(o.MaxStderr, 10),
		"--open-files", strconv.Itoa(o.OpenFiles),
		"--kill-grace", o.KillGrace.String(),
	}
	if len(o.CheckFull) > 0 {
		a = append(a, "--check-full", strings.Join(o.CheckFull, ","))
	}
	return append(append(a, "--"), o.Command...)
}

// ParseArgs reads the command line that Args wrote.
func ParseArgs(args []string) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("gbpod run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.InputDir, "input", InputDir, "")
	fs.Int64Var(&o.DocLen, "doc-len", 0, "")
	fs.StringVar(&o.DocSHA256, "doc-sha256", "", "")
	fs.StringVar(&o.Report, "report", "/dev/termination-log", "")
	fs.Int64Var(&o.MaxStdout, "max-stdout", 4<<20, "")
	fs.Int64Var(&o.MaxStderr, "max-stderr", 1<<20, "")
	fs.IntVar(&o.OpenFiles, "open-files", 0, "")
	fs.DurationVar(&o.KillGrace, "kill-grace", 2*time.Second, "")
	full := fs.String("check-full", "", "")
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if *full != "" {
		o.CheckFull = strings.Split(*full, ",")
	}
	o.Command = fs.Args()
	switch {
	case len(o.Command) == 0 || o.Command[0] == "":
		return Options{}, errors.New("no grader command after --")
	case o.MaxStdout <= 0 || o.MaxStderr < 0 || o.DocLen < 0:
		return Options{}, errors.New("sizes must not be negative, the result cap must be positive")
	}
	return o, nil
}

// Install copies the running program into dir as Binary, for the main
// container, which runs the grader's image, to start from.
func Install(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(filepath.Join(dir, Binary), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o555)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pipeGrace bounds the wait for the grader's output pipes after it ended:
// a process it left behind may hold them (gbpod kills every process of the
// container when it is its first process, but not otherwise).
const pipeGrace = 500 * time.Millisecond

// Run runs the grader as o says, writes the report and returns gbpod's exit
// status: the grader's own (128+signal when a signal killed it), or 125
// when gbpod could not run it (the report says why). logOut is the
// container's log. Cancelling ctx (SIGTERM: the pod is being deleted) stops
// the grader.
func Run(ctx context.Context, o Options, logOut io.Writer) int {
	rep, result, log, err := run(ctx, o, logOut)
	if err != nil {
		rep = Report{Error: err.Error()}
		if len(rep.Error) > 1024 {
			rep.Error = rep.Error[:1024]
		}
	}
	msg, inline, encErr := Encode(rep, result, log)
	if encErr != nil {
		msg, _, _ = Encode(Report{Error: "gbpod cannot write its report: " + encErr.Error()}, nil, nil)
	}
	if !inline && len(result) > 0 && err == nil && encErr == nil {
		if _, werr := logOut.Write(Trailer(result)); werr != nil {
			fmt.Fprintf(os.Stderr, "gbpod: writing the result to the log: %v\n", werr)
		}
	}
	if werr := os.WriteFile(o.Report, msg, 0o644); werr != nil {
		fmt.Fprintf(os.Stderr, "gbpod: writing the report to %s: %v\n", o.Report, werr)
		return 125
	}
	switch {
	case err != nil || encErr != nil:
		return 125
	case rep.Signal != 0:
		return 128 + rep.Signal
	}
	return rep.Exit
}

// run runs the grader and returns the report without its result fields,
// the result and the log as written to logOut.
func run(ctx context.Context, o Options, logOut io.Writer) (Report, []byte, []byte, error) {
	doc, err := openDocument(o)
	if err != nil {
		return Report{}, nil, nil, err
	}
	defer doc.Close()
	if o.OpenFiles > 0 {
		// Lowering a limit needs no privilege; the grader inherits it.
		lim := syscall.Rlimit{Cur: uint64(o.OpenFiles), Max: uint64(o.OpenFiles)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return Report{}, nil, nil, fmt.Errorf("setting the open-files limit: %w", err)
		}
	}
	path, err := exec.LookPath(o.Command[0])
	if err != nil {
		return Report{}, nil, nil, fmt.Errorf("cannot find grader command %q: %w", o.Command[0], err)
	}
	cmd := exec.Command(path, o.Command[1:]...)
	cmd.Args[0] = o.Command[0]
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return Report{}, nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Report{}, nil, nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return Report{}, nil, nil, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Report{}, nil, nil, fmt.Errorf("cannot start grader: %w", err)
	}
	pid := cmd.Process.Pid
	go func() {
		// A grader that reads only part of its input ends the copy with
		// EPIPE: that is its business.
		_, _ = io.Copy(stdin, doc)
		_ = stdin.Close()
	}()
	out := &capped{max: o.MaxStdout, over: make(chan struct{})}
	lg := &logWriter{out: logOut, max: o.MaxStderr}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); _, _ = io.Copy(out, stdout) }()
	go func() { defer pipes.Done(); _, _ = io.Copy(lg, stderr) }()

	exited := make(chan waited, 1)
	go func() { exited <- wait(pid) }()
	var w waited
	stopped := false
	select {
	case w = <-exited:
	case <-out.over:
		stopped = true
	case <-ctx.Done():
		stopped = true
	}
	if stopped {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		t := time.NewTimer(o.KillGrace)
		select {
		case w = <-exited:
		case <-t.C:
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			w = <-exited
		}
		t.Stop()
	}
	wall := time.Since(start)
	// Whatever the grader left behind goes now, before anything is
	// judged: it must not write to the report or hold the pipes.
	killRest(pid)
	drained := make(chan struct{})
	go func() { pipes.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(pipeGrace):
		_ = stdout.Close()
		_ = stderr.Close()
		<-drained
	}
	log := lg.finish()

	rep := Report{Exit: w.status.ExitStatus(), Wall: int64(wall)}
	if w.status.Signaled() {
		rep.Exit, rep.Signal = -1, int(w.status.Signal())
	}
	rep.CPU = int64(time.Duration(w.usage.Utime.Nano() + w.usage.Stime.Nano()))
	rep.MaxRSS = w.usage.Maxrss << 10
	result, over := out.bytes()
	rep.StdoutOver = over
	for _, d := range o.CheckFull {
		var st syscall.Statfs_t
		if syscall.Statfs(d, &st) == nil && (st.Bavail == 0 || st.Ffree == 0) {
			rep.Full = d
			break
		}
	}
	return rep, result, log, nil
}

// openDocument opens the job document's parts as one reader, after checking
// that they add up to the document the executor sent.
func openDocument(o Options) (io.ReadCloser, error) {
	entries, err := os.ReadDir(o.InputDir)
	if err != nil {
		return nil, fmt.Errorf("reading the job document: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), PartPrefix) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	for i, n := range names {
		if n != PartName(i) {
			return nil, fmt.Errorf("the job document's parts are %v: part %d is missing", names, i)
		}
	}
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	h := sha256.New()
	var total int64
	for _, n := range names {
		f, err := os.Open(filepath.Join(o.InputDir, n))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("reading the job document: %w", err)
		}
		files = append(files, f)
		k, err := io.Copy(h, f)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("reading the job document: %w", err)
		}
		total += k
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			closeAll()
			return nil, err
		}
	}
	if total != o.DocLen || hex.EncodeToString(h.Sum(nil)) != o.DocSHA256 {
		closeAll()
		return nil, fmt.Errorf("the job document in %s is %d bytes with another SHA-256 than the %d bytes graderd sent", o.InputDir, total, o.DocLen)
	}
	readers := make([]io.Reader, len(files))
	for i, f := range files {
		readers[i] = f
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(readers...), closerFunc(closeAll)}, nil
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

type waited struct {
	status syscall.WaitStatus
	usage  syscall.Rusage
}

// wait waits for the grader. As the container's first process gbpod must
// also reap the orphans that get re-parented to it, or their zombies would
// count against the pod's process limit until it ends.
func wait(pid int) waited {
	var w waited
	target := pid
	if os.Getpid() == 1 {
		target = -1
	}
	for {
		var ws syscall.WaitStatus
		var ru syscall.Rusage
		got, err := syscall.Wait4(target, &ws, 0, &ru)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return w // ECHILD: nothing left, which cannot happen before pid
		}
		if got == pid {
			w.status, w.usage = ws, ru
			return w
		}
	}
}

// killRest kills the grader's process group and, when gbpod is the
// container's first process, every other process of the container, and
// reaps them. Outside a container (a test) it never signals beyond the
// grader's group.
func killRest(pid int) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	if os.Getpid() != 1 {
		return
	}
	_ = syscall.Kill(-1, syscall.SIGKILL)
	for {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(-1, &ws, 0, nil); err != nil && err != syscall.EINTR {
			return
		}
	}
}

// capped keeps the grader's stdout up to max bytes and closes over once it
// passes them; it keeps accepting bytes so that the grader ends by gbpod's
// signal, not by a SIGPIPE that would look like a crash.
type capped struct {
	max  int64
	over chan struct{}

	mu    sync.Mutex
	buf   bytes.Buffer
	total int64
	once  sync.Once
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += int64(len(p))
	if room := c.max - int64(c.buf.Len()); room > 0 {
		c.buf.Write(p[:min(room, int64(len(p)))])
	}
	if c.total > c.max {
		c.once.Do(func() { close(c.over) })
	}
	return len(p), nil
}

func (c *capped) bytes() ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes()), c.total > c.max
}

// logWriter forwards the grader's stderr to the container's log as it comes,
// up to half the cap; past that it keeps only the latest half in memory
// and writes it, after a marker saying how much was cut, when the grader
// has ended: the start says what the grader was doing, the end usually
// holds the traceback. It remembers what it wrote, for the report.
type logWriter struct {
	out io.Writer
	max int64

	mu      sync.Mutex
	written []byte // what went to out
	tail    []byte
	total   int64
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	l.total += int64(n)
	if room := l.max/2 - int64(len(l.written)); room > 0 {
		k := min(room, int64(len(p)))
		l.emit(p[:k])
		p = p[k:]
	}
	l.tail = append(l.tail, p...)
	if tm := l.max - l.max/2; int64(len(l.tail)) > 2*tm {
		l.tail = append([]byte(nil), l.tail[int64(len(l.tail))-tm:]...)
	}
	return n, nil
}

// emit writes to the container's log; a failed write loses log lines, not
// the run.
func (l *logWriter) emit(p []byte) {
	l.written = append(l.written, p...)
	_, _ = l.out.Write(p)
}

// finish writes what was held back and returns the whole log as written.
func (l *logWriter) finish() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tail
	if tm := l.max - l.max/2; int64(len(t)) > tm {
		t = t[int64(len(t))-tm:]
	}
	if cut := l.total - int64(len(l.written)) - int64(len(t)); cut > 0 {
		l.emit(fmt.Appendf(nil, "\n[... %d bytes of stderr cut ...]\n", cut))
	}
	l.emit(t)
	l.tail = nil
	return l.written
}
