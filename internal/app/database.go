package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/storeerr"
)

// StartupWait is how long OpenDatabase waits for a database that cannot
// be reached yet: on a fresh install the bundled database starts beside the
// orchestrator's pods, and a failover takes seconds. It stays under the
// chart's startup probe budget (30 s), so that the process exits with the
// reason in its log rather than being killed without one.
const StartupWait = 20 * time.Second

// OpenDatabase connects to the database cfg names and readies its schema:
// it applies the pending migrations when DATABASE_AUTO_MIGRATE is on, and
// otherwise checks that none is pending. It refuses a schema newer than
// this binary (postgres.ErrSchemaTooNew). A database that cannot be
// reached is waited for, up to StartupWait; a refused login is not. A URL
// that cannot be read or parsed is a configuration error
// (config.ErrInvalid). The caller closes the pool, after everything that
// uses it has stopped. cfg must be Enabled.
func OpenDatabase(ctx context.Context, cfg postgres.Config, log *zap.Logger) (*pgxpool.Pool, error) {
	dbURL, err := cfg.ResolveURL()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	where := zap.String("database", postgres.Describe(dbURL))
	pool, err := openWaiting(ctx, cfg, dbURL, log.With(where))
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	if cfg.AutoMigrate {
		applied, err := postgres.Migrate(ctx, pool)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("database: %w", err)
		}
		if len(applied) > 0 {
			log.Info("database schema migrated", where, zap.Int64s("applied", applied), zap.Int64("version", postgres.LatestVersion()))
		}
	} else if err := postgres.CheckSchema(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database: %w", err)
	}
	log.Info("database ready", where, zap.Int64("schema_version", postgres.LatestVersion()))
	return pool, nil
}

// openWaiting opens the pool, trying again while the database cannot be
// reached, for up to StartupWait or until ctx ends.
func openWaiting(ctx context.Context, cfg postgres.Config, dbURL string, log *zap.Logger) (*pgxpool.Pool, error) {
	deadline := time.Now().Add(StartupWait)
	delay := 250 * time.Millisecond
	for {
		pool, err := postgres.Open(ctx, cfg, dbURL)
		if err == nil || !errors.Is(err, storeerr.ErrUnavailable) || time.Now().Add(delay).After(deadline) {
			return pool, err
		}
		log.Warn("waiting for the database", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up: %w)", err, context.Cause(ctx))
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}
