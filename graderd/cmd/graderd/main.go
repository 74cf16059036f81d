// Command graderd is the gradebroker grading-server daemon. It only wires
// the command line, signals, logs and the pid file to package graderd; run
// graderd --help for its flags and configuration file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/gradebroker/gradebroker/graderd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "graderd: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cl, err := graderd.ParseCommandLine(args, os.Getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w (see graderd --help)", err)
	}
	if err := cl.Config.Validate(); err != nil {
		where := "configuration"
		if cl.ConfigFile != "" {
			where = "configuration (from " + cl.ConfigFile + " and flags)"
		}
		return fmt.Errorf("invalid %s: %w", where, err)
	}
	daemonized := os.Getenv(graderd.DaemonizedEnv) != ""
	// Graders inherit graderd's environment; the marker is not theirs.
	_ = os.Unsetenv(graderd.DaemonizedEnv)

	logOut := stderr
	// A daemonized child's stderr already is the log file.
	if cl.LogFile != "" && !daemonized && !cl.Daemon {
		f, err := os.OpenFile(cl.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("opening log file: %w", err)
		}
		defer f.Close()
		logOut = f
	}
	log, err := graderd.NewLogger(logOut, cl.LogFormat, cl.LogLevel)
	if err != nil {
		return err
	}
	// Packages that log through slog.Default (the spool) then follow
	// --log-format and --log-level too.
	slog.SetDefault(log)

	// New loads the certificates and builds the executors before any
	// detaching, so that their errors reach the operator's terminal.
	d, err := graderd.New(cl.Config, log)
	if err != nil {
		return err
	}

	if cl.Test {
		w, err := d.Test(ctx)
		if err != nil {
			return fmt.Errorf("connection test failed: %w", err)
		}
		tags := "none"
		if len(w.GetTags()) > 0 {
			tags = strings.Join(w.GetTags(), ", ")
		}
		fmt.Fprintf(stdout, "ok: connected to %s as server %s (type %s, tags %s)\n", cl.Config.Broker, w.GetServer(), w.GetType(), tags)
		for _, e := range d.Executors() {
			sandbox := e.GetSandbox()
			switch sandbox {
			case "none":
				sandbox = "NONE: graders run with graderd's powers"
			case "":
				sandbox = "not applicable"
			}
			fmt.Fprintf(stdout, "executor %s: %s, sandbox %s\n", e.GetName(), e.GetType(), sandbox)
		}
		return nil
	}

	if cl.Daemon && !daemonized {
		return daemonize(cl, args)
	}

	if cl.PIDFile != "" {
		if !daemonized {
			// The parent of a daemonized graderd wrote the pid file.
			if err := graderd.WritePIDFile(cl.PIDFile, os.Getpid()); err != nil {
				return err
			}
		}
		defer removePIDFile(cl.PIDFile)
	}

	// The first SIGINT/SIGTERM cancels ctx, which drains; the second
	// aborts. Registered now so that no signal between the two is missed:
	// both channels get every signal.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for n := 0; ; {
			select {
			case <-done:
				return
			case <-sigs:
				if n++; n == 2 {
					log.Warn("second signal: stopping at once; unacknowledged results stay in the spool")
					d.Abort()
					return
				}
			}
		}
	}()

	log.Info("graderd starting", "version", graderd.Version, "broker", cl.Config.Broker, "slots", cl.Config.Slots, "spool_dir", cl.Config.SpoolDir, "testbehavior", cl.Config.TestBehavior)
	return d.Run(ctx)
}

// daemonize starts graderd again, detached (new session, no terminal), with
// the same arguments, and writes the child's pid. The child keeps the
// working directory so that relative paths in the arguments still work.
func daemonize(cl *graderd.CommandLine, args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("daemonizing: finding own executable: %w", err)
	}
	logPath := cl.LogFile
	if logPath == "" {
		logPath = os.DevNull
	}
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("daemonizing: opening log file: %w", err)
	}
	defer out.Close()
	in, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("daemonizing: %w", err)
	}
	defer in.Close()

	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), graderd.DaemonizedEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("daemonizing: starting the background process: %w", err)
	}
	pid := cmd.Process.Pid
	if cl.PIDFile != "" {
		if err := graderd.WritePIDFile(cl.PIDFile, pid); err != nil {
			// A daemon nobody can find is worse than none.
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
			return err
		}
	}
	_ = cmd.Process.Release()
	return nil
}

// removePIDFile removes the pid file if it still names this process, so
// that a newer graderd's file is left alone.
func removePIDFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid == os.Getpid() {
		_ = os.Remove(path)
	}
}
