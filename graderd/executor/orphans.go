package executor

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A grader runs in a process group of its own, so that a timeout kills all
// of it. If graderd itself dies (SIGKILL, OOM), nothing kills those groups:
// they keep running, adopted by init, while the broker re-grades the jobs
// elsewhere, and a restarted graderd would take new jobs on top of them. So
// every run records its process group in Exec.RunDir, and a starting graderd
// kills what a crashed one left (ReapOrphans).
//
// A record holds the boot id, the group leader's pid and its start time (in
// clock ticks since boot, /proc/PID/stat field 22), so that a pid reused by
// another program is never taken for the grader.

// runRecord is what a record file holds.
type runRecord struct {
	bootID string
	pgid   int
	start  uint64
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procStat returns a process's group id and start time from /proc.
func procStat(pid int) (pgrp int, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): pgrp is field 5, starttime field 22.
	if len(f) < 20 {
		return 0, 0, errors.New("malformed stat")
	}
	pgrp, err = strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, err
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return pgrp, start, err
}

// recordRun writes the record of a started grader; it returns the file to
// remove when the run is over, or "" when there is no RunDir.
func (e *Exec) recordRun(leaseID int64, pid int) (string, error) {
	if e.RunDir == "" {
		return "", nil
	}
	_, start, err := procStat(pid)
	if err != nil {
		return "", fmt.Errorf("reading the grader's start time: %w", err)
	}
	if err := os.MkdirAll(e.RunDir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(e.RunDir, fmt.Sprintf("lease-%d-pid-%d.run", leaseID, pid))
	body := fmt.Sprintf("%s %d %d\n", bootID(), pid, start)
	return path, os.WriteFile(path, []byte(body), 0o600)
}

// ReapOrphans kills the process groups of graders that a previous graderd
// started and could not stop, as recorded in runDir, and removes the
// records. It returns how many processes it killed.
func ReapOrphans(runDir string, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.Default()
	}
	entries, err := os.ReadDir(runDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	boot := bootID()
	killed := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".run") {
			continue
		}
		path := filepath.Join(runDir, e.Name())
		rec, err := readRecord(path)
		if err == nil && rec.bootID == boot {
			n := killGroup(rec)
			if n > 0 {
				log.Warn("killed graders left running by a previous graderd", "record", e.Name(), "pgid", rec.pgid, "processes", n)
			}
			killed += n
		}
		_ = os.Remove(path)
	}
	return killed, nil
}

func readRecord(path string) (runRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return runRecord{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return runRecord{}, errors.New("malformed record")
	}
	pgid, err := strconv.Atoi(f[1])
	if err != nil || pgid <= 1 {
		return runRecord{}, errors.New("malformed record")
	}
	start, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return runRecord{}, err
	}
	return runRecord{bootID: f[0], pgid: pgid, start: start}, nil
}

// killGroup kills the processes of the recorded group. A group id cannot be
// reused while any member lives, and only the process whose pid equals it
// can start a new group with that id; so if that process exists and is not
// the recorded leader and leads its own group, the group is someone else's.
func killGroup(rec runRecord) int {
	if pgrp, start, err := procStat(rec.pgid); err == nil && start != rec.start && pgrp == rec.pgid {
		return 0
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		pgrp, start, err := procStat(pid)
		if err != nil || pgrp != rec.pgid || start < rec.start {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}
