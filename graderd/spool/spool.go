// Package spool keeps graderd's finished results on disk until the broker
// acknowledges them, so that a result survives a crash of graderd, a reboot,
// or a lost connection, and is sent again after a reconnect.
//
// Each result is one file, <lease_id>.result, holding the protobuf binary
// encoding of a gradebrokerv1.Result. A result is written to a temporary file
// (.put-*.tmp), synced, renamed into place, and the directory synced, so a
// file under its final name is always complete and a crash leaves at most a
// temporary file, which Open deletes.
package spool

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

const (
	resultSuffix  = ".result"
	corruptSuffix = ".corrupt"
	tempPrefix    = ".put-"
	tempSuffix    = ".tmp"
)

// ErrNoLease is returned by Put for a result without a positive lease id,
// which could not be named, acknowledged or accepted by the broker.
var ErrNoLease = errors.New("spool: result has no lease id")

// Spool is a directory of results awaiting the broker's Ack. It is safe for
// concurrent use; it is not meant to be shared by two processes.
type Spool struct {
	dir string
	log *slog.Logger

	// mu orders renames into the directory with List's reads and moves, so
	// that List never moves aside a file a Put has just replaced.
	mu     sync.Mutex
	leases map[int64]struct{}
}

// Open opens the spool in dir, creating it with mode 0700 if needed, and
// deletes the temporary files of Puts a crash interrupted. It logs through
// slog.Default.
func Open(dir string) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: creating %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: reading %s: %w", dir, err)
	}
	s := &Spool{
		dir:    dir,
		log:    slog.Default().With("component", "spool", "dir", dir),
		leases: make(map[int64]struct{}),
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, tempPrefix) && strings.HasSuffix(name, tempSuffix):
			// The rename never happened, so this Put never returned:
			// nobody was told the result was safe.
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("spool: removing leftover %s: %w", name, err)
			}
			s.log.Info("removed the temporary file of an interrupted put", "file", name)
		case strings.HasSuffix(name, resultSuffix):
			if id, ok := leaseOf(name); ok {
				s.leases[id] = struct{}{}
			}
		}
	}
	return s, nil
}

// Put stores r under its lease id, replacing any result stored for that
// lease. The result is durable (synced to disk, directory entry included)
// when Put returns nil. It returns ErrNoLease if r has no positive lease id.
func (s *Spool) Put(r *gradebrokerv1.Result) error {
	if r.GetLeaseId() <= 0 {
		return ErrNoLease
	}
	data, err := proto.Marshal(r)
	if err != nil {
		return fmt.Errorf("spool: encoding result of lease %d: %w", r.GetLeaseId(), err)
	}
	// Write and sync outside the lock: that is the slow part, and a
	// temporary file is invisible to everyone else.
	tmp, err := os.CreateTemp(s.dir, tempPrefix+"*"+tempSuffix)
	if err != nil {
		return fmt.Errorf("spool: creating temporary file: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("spool: writing result of lease %d: %w", r.GetLeaseId(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("spool: syncing result of lease %d: %w", r.GetLeaseId(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("spool: closing result of lease %d: %w", r.GetLeaseId(), err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Rename(tmp.Name(), s.path(r.GetLeaseId())); err != nil {
		return fmt.Errorf("spool: storing result of lease %d: %w", r.GetLeaseId(), err)
	}
	ok = true
	s.leases[r.GetLeaseId()] = struct{}{}
	// The rename is durable only once the directory is synced.
	if err := s.syncDir(); err != nil {
		return fmt.Errorf("spool: syncing directory after storing lease %d: %w", r.GetLeaseId(), err)
	}
	return nil
}

// Remove deletes the result of a lease, typically once the broker has
// acknowledged or refused it. A lease with no stored result is not an error.
func (s *Spool) Remove(leaseID int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.leases, leaseID)
	if err := os.Remove(s.path(leaseID)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("spool: removing result of lease %d: %w", leaseID, err)
	}
	// Sync so an acknowledged result does not come back after a crash; if
	// it did, the broker would refuse it as stale, so this is tidiness,
	// and its failure is not the caller's problem.
	if err := s.syncDir(); err != nil {
		s.log.Warn("cannot sync the spool directory", "err", err)
	}
	return nil
}

// List returns every stored result, sorted by lease id. A file that does
// not decode, or whose name does not match its lease, is renamed to
// <name>.corrupt, logged and skipped: one bad file must not keep the others
// from being sent.
func (s *Spool) List() ([]*gradebrokerv1.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: reading %s: %w", s.dir, err)
	}
	type file struct {
		name  string
		lease int64
	}
	var files []file
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, resultSuffix) || !e.Type().IsRegular() {
			continue
		}
		id, ok := leaseOf(name)
		if !ok {
			s.moveAside(name, "the file name is not <lease_id>.result")
			continue
		}
		files = append(files, file{name, id})
	}
	slices.SortFunc(files, func(a, b file) int { return cmp.Compare(a.lease, b.lease) })

	results := make([]*gradebrokerv1.Result, 0, len(files))
	seen := make(map[int64]struct{}, len(files))
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(s.dir, f.name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted by hand since ReadDir
		}
		if err != nil {
			return nil, fmt.Errorf("spool: reading %s: %w", f.name, err)
		}
		r := new(gradebrokerv1.Result)
		if err := proto.Unmarshal(data, r); err != nil {
			s.moveAside(f.name, "it does not decode: "+err.Error())
			continue
		}
		if r.GetLeaseId() != f.lease {
			s.moveAside(f.name, fmt.Sprintf("it holds lease %d", r.GetLeaseId()))
			continue
		}
		results = append(results, r)
		seen[f.lease] = struct{}{}
	}
	// Resynchronise the count with the directory, in case someone
	// tidied it by hand.
	s.leases = seen
	return results, nil
}

// Len returns how many results are stored.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// moveAside renames a bad file out of List's way, keeping it for a human.
// It is called with s.mu held.
func (s *Spool) moveAside(name, why string) {
	from := filepath.Join(s.dir, name)
	if err := os.Rename(from, from+corruptSuffix); err != nil {
		s.log.Error("cannot move a corrupt result aside", "file", name, "reason", why, "err", err)
		return
	}
	s.log.Error("moved a corrupt result aside", "file", name, "to", name+corruptSuffix, "reason", why)
	if id, ok := leaseOf(name); ok {
		delete(s.leases, id)
	}
}

func (s *Spool) path(leaseID int64) string {
	return filepath.Join(s.dir, strconv.FormatInt(leaseID, 10)+resultSuffix)
}

func (s *Spool) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// leaseOf parses a file name of the form <lease_id>.result, accepting only
// the canonical spelling Put writes.
func leaseOf(name string) (int64, bool) {
	base, ok := strings.CutSuffix(name, resultSuffix)
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(base, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != base {
		return 0, false
	}
	return id, true
}
