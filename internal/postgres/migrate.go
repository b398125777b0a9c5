package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLockID is the advisory lock migrations run under, so that ten
// replicas starting at once apply each migration once ("orchestrator"
// in ASCII).
const migrationLockID = 0x6f72636865737472

// ErrSchemaTooNew means the database was migrated by a newer orchestrator than
// this one, which must not write to a schema it does not know.
var ErrSchemaTooNew = errors.New("database schema is newer than this orchestrator")

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

func provider(pool *pgxpool.Pool) (*goose.Provider, error) {
	migrations, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID))
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, stdlib.OpenDBFromPool(pool), migrations,
		goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
}

// LatestVersion is the newest schema version this binary knows: the
// largest numeric prefix of the embedded migration files.
func LatestVersion() int64 {
	entries, _ := fs.Glob(migrationFiles, "migrations/*.sql")
	var latest int64
	for _, e := range entries {
		prefix, _, _ := strings.Cut(path.Base(e), "_")
		if v, err := strconv.ParseInt(prefix, 10, 64); err == nil && v > latest {
			latest = v
		}
	}
	return latest
}

// checked opens the migration provider and reads the schema's version,
// refusing one newer than this binary knows (ErrSchemaTooNew). The caller
// closes the provider.
func checked(ctx context.Context, pool *pgxpool.Pool) (*goose.Provider, int64, error) {
	p, err := provider(pool)
	if err != nil {
		return nil, 0, err
	}
	current, err := p.GetDBVersion(ctx)
	if err != nil {
		_ = p.Close()
		return nil, 0, fmt.Errorf("reading the schema version: %w", err)
	}
	if latest := LatestVersion(); current > latest {
		_ = p.Close()
		return nil, 0, fmt.Errorf("%w: the database is at version %d, this binary knows up to %d; run a newer orchestrator (or restore the database)", ErrSchemaTooNew, current, latest)
	}
	return p, current, nil
}

// Migrate applies the pending migrations under the advisory lock and
// returns the versions it applied. It refuses, applying nothing, a schema
// newer than this binary knows (ErrSchemaTooNew).
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]int64, error) {
	p, _, err := checked(ctx, pool)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	results, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("applying migrations: %w", err)
	}
	applied := make([]int64, 0, len(results))
	for _, r := range results {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// CheckSchema reports whether the schema is exactly this binary's: an
// error naming the versions when migrations are pending (run `orchestrator
// migrate up`) or the schema is newer (ErrSchemaTooNew).
func CheckSchema(ctx context.Context, pool *pgxpool.Pool) error {
	p, current, err := checked(ctx, pool)
	if err != nil {
		return err
	}
	defer p.Close()
	if latest := LatestVersion(); current < latest {
		return fmt.Errorf("database schema is at version %d, this orchestrator needs %d: run `orchestrator migrate up` (or set DATABASE_AUTO_MIGRATE=true)", current, latest)
	}
	return nil
}

// Status lists every migration this binary knows, with whether it is
// applied.
func Status(ctx context.Context, pool *pgxpool.Pool) ([]MigrationStatus, error) {
	p, _, err := checked(ctx, pool)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	st, err := p.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]MigrationStatus, 0, len(st))
	for _, s := range st {
		out = append(out, MigrationStatus{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied})
	}
	return out, nil
}
