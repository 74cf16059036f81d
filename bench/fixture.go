package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/store"
)

// The registry every benchmark database holds: one tag, one server type
// with it, one platform with an empty return_url (so that finishing a job
// creates no delivery and no callback is ever attempted).
const (
	benchTag      = "bench"
	benchType     = "bench"
	benchPlatform = "bench"
	benchActor    = "gbbench"
)

// Fixture is a benchmark database's registry.
type Fixture struct {
	PlatformID int64
	TypeID     int64
}

// NewJob returns the job the benchmark queues: small JSON jobdata, the
// bench tag, the default timeout and attempts.
func (fx Fixture) NewJob(i int) broker.NewJob {
	return broker.NewJob{
		PlatformID:  fx.PlatformID,
		Name:        "bench-" + strconv.Itoa(i),
		Tags:        []string{benchTag},
		Timeout:     300 * time.Second,
		JobData:     []byte(`{"task":"bench","i":` + strconv.Itoa(i) + `}`),
		MaxAttempts: 3,
		TypeIDs:     []int64{fx.TypeID},
	}
}

// CreateDB makes a new database at path with the registry and the given
// servers (each with maxJobs concurrent jobs). The caller closes it.
func CreateDB(ctx context.Context, path string, p *PKI, servers []ServerCert, maxJobs int) (*store.DB, Fixture, error) {
	db, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		return nil, Fixture{}, err
	}
	fx, err := registry(ctx, db, p)
	if err == nil {
		err = AddServers(ctx, db, servers, maxJobs)
	}
	if err != nil {
		db.Close()
		return nil, Fixture{}, err
	}
	return db, fx, nil
}

func registry(ctx context.Context, db *store.DB, p *PKI) (Fixture, error) {
	if _, err := db.AddTag(ctx, benchTag, "gbbench"); err != nil {
		return Fixture{}, fmt.Errorf("add tag: %w", err)
	}
	st, err := db.AddServerType(ctx, benchType, []string{benchTag})
	if err != nil {
		return Fixture{}, fmt.Errorf("add server type: %w", err)
	}
	pl, err := db.AddPlatform(ctx, broker.Platform{Name: benchPlatform, PublicKeyPEM: p.PlatformKeyPEM, ReturnURL: ""})
	if err != nil {
		return Fixture{}, fmt.Errorf("add platform: %w", err)
	}
	return Fixture{PlatformID: pl.ID, TypeID: st.ID}, nil
}

// AddServers registers servers of the bench type.
func AddServers(ctx context.Context, db *store.DB, servers []ServerCert, maxJobs int) error {
	for _, s := range servers {
		if _, err := db.AddServer(ctx, broker.Server{Name: s.Name, Cert: s.Identity, Type: benchType,
			MaxConcurrentJobs: maxJobs}); err != nil {
			return fmt.Errorf("add server %s: %w", s.Name, err)
		}
	}
	return nil
}

// Seed queues n jobs through the store's batch path (BeginJobs, InsertJob,
// Commit), batch jobs per transaction. Jobs are numbered from first.
func Seed(ctx context.Context, db *store.DB, fx Fixture, first, n, batch int) error {
	for done := 0; done < n; {
		tx, err := db.BeginJobs(ctx)
		if err != nil {
			return err
		}
		end := min(n, done+batch)
		for i := done; i < end; i++ {
			if _, err := tx.InsertJob(fx.NewJob(first+i), benchActor); err != nil {
				tx.Rollback()
				return fmt.Errorf("seed job %d: %w", first+i, err)
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("seed: commit: %w", err)
		}
		done = end
	}
	return nil
}

// copyFile copies a closed database file (no -wal left behind) to dst.
func copyFile(src, dst string) error {
	if _, err := os.Stat(src + "-wal"); err == nil {
		return fmt.Errorf("copy %s: a -wal file is still there; close the database first", src)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
