package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/gradebroker/gradebroker/graderd/executor/cgroups"
)

// If graderd itself dies (SIGKILL, OOM), nothing stops the runs it
// started: they keep running while the broker re-grades the jobs elsewhere,
// and a restarted graderd would take new jobs on top of them. So every run
// records, in Exec.RunDir, before its first process starts, what it is made
// of: its cgroups (every process of the run is in them, whatever it forks
// or detaches) and crun's state. Only a run without a cgroup (graderd not
// root, no usable hierarchy) records its grader's process group instead,
// which exists only once the grader has started: a graderd killed between
// the two leaves that grader running. A starting graderd kills what a
// crashed one left (ReapOrphans).
//
// A record holds the boot id, since cgroups and pids do not survive a
// reboot; for a process group, the group leader's pid and its start time
// (in clock ticks since boot, /proc/PID/stat field 22), so that a pid
// reused by another program is never taken for the grader.

// Reaper is an Executor whose runs live outside graderd's process tree (a
// container engine's containers, a cluster's pods): when graderd dies they
// go on, and only the executor knows where to look for them (by the labels
// of RunLabels with its server's name). graderd calls ReapOrphans of each
// such executor once at start, before it takes a job, as it calls
// ReapOrphans for the exec executor's records.
type Reaper interface {
	Executor
	// ReapOrphans removes everything runs of this server left behind
	// (whichever executor of the server made them) and returns how many
	// things it removed. An error means some may be left; graderd logs it
	// and starts anyway.
	ReapOrphans(ctx context.Context) (int, error)
}

// runRecord is what a record file holds, as JSON.
type runRecord struct {
	bootID   string
	pgid     int      // the grader's process group, without a cgroup
	start    uint64   // the group leader's start time
	cgroups  []string // the run's cgroup directories
	crunRoot string   // crun's state directory, for a sandboxed run
	crunID   string   // the run's container id in crun
	runtime  string   // crun's path
}

type recordJSON struct {
	BootID   string   `json:"boot_id"`
	PGID     int      `json:"pgid,omitempty"`
	Start    uint64   `json:"start,omitempty"`
	Cgroups  []string `json:"cgroups,omitempty"`
	CrunRoot string   `json:"crun_root,omitempty"`
	CrunID   string   `json:"crun_id,omitempty"`
	Runtime  string   `json:"runtime,omitempty"`
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

// recordFile returns a func that writes a run's record and returns the file
// to remove when the run is over; nil when there is no RunDir.
func (e *Exec) recordFile(leaseID int64) func(runRecord) (string, error) {
	if e.RunDir == "" {
		return nil
	}
	return func(rec runRecord) (string, error) {
		if err := os.MkdirAll(e.RunDir, 0o700); err != nil {
			return "", err
		}
		body, err := json.Marshal(recordJSON{rec.bootID, rec.pgid, rec.start, rec.cgroups, rec.crunRoot, rec.crunID, rec.runtime})
		if err != nil {
			return "", err
		}
		f, err := os.CreateTemp(e.RunDir, fmt.Sprintf("lease-%d-*.run", leaseID))
		if err != nil {
			return "", err
		}
		_, err = f.Write(append(body, '\n'))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return f.Name(), err
	}
}

// ReapOrphans kills the runs that a previous graderd started and could not
// stop, as recorded in runDir, and removes the records. It returns how many
// processes it killed.
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
			n := reap(rec, log)
			if n > 0 {
				log.Warn("killed a run left running by a previous graderd", "record", e.Name(), "processes", n)
			}
			killed += n
		}
		_ = os.Remove(path)
	}
	return killed, nil
}

func reap(rec runRecord, log *slog.Logger) int {
	n := 0
	if len(rec.cgroups) > 0 {
		k, err := cgroups.ReapDirs(rec.cgroups)
		if err != nil {
			log.Warn("cannot clear a run's cgroup left by a previous graderd", "cgroups", rec.cgroups, "err", err)
		}
		n += k
	} else if rec.pgid > 1 {
		n += killGroup(rec)
	}
	if rec.crunID != "" && rec.runtime != "" {
		if _, err := os.Stat(filepath.Join(rec.crunRoot, rec.crunID)); err == nil {
			if out, err := exec.Command(rec.runtime, "--root", rec.crunRoot, "delete", "--force", rec.crunID).CombinedOutput(); err != nil {
				log.Warn("cannot delete crun's state of a run left by a previous graderd", "run", rec.crunID, "err", err, "output", string(out))
			}
		}
	}
	return n
}

func readRecord(path string) (runRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return runRecord{}, err
	}
	var j recordJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return runRecord{}, fmt.Errorf("malformed record: %w", err)
	}
	for _, d := range j.Cgroups {
		// A record is graderd's own file, but a cgroup directory is the
		// only thing it may name for killing.
		if !strings.HasPrefix(filepath.Clean(d), "/sys/fs/cgroup/") {
			return runRecord{}, fmt.Errorf("malformed record: %q is not a cgroup", d)
		}
	}
	return runRecord{bootID: j.BootID, pgid: j.PGID, start: j.Start, cgroups: j.Cgroups, crunRoot: j.CrunRoot, crunID: j.CrunID, runtime: j.Runtime}, nil
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
