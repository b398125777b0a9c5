package app

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/postgres"
)

// OpenDatabase connects to the database cfg names and readies its schema:
// it applies the pending migrations when DATABASE_AUTO_MIGRATE is on, and
// otherwise checks that none is pending. It refuses a schema newer than
// this binary (postgres.ErrSchemaTooNew). A URL that cannot be read or
// parsed is a configuration error (config.ErrInvalid). The caller closes
// the pool, after everything that uses it has stopped. cfg must be
// Enabled.
func OpenDatabase(ctx context.Context, cfg postgres.Config, log *zap.Logger) (*pgxpool.Pool, error) {
	dbURL, err := cfg.ResolveURL()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	pool, err := postgres.Open(ctx, cfg, dbURL)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	where := zap.String("database", postgres.Describe(dbURL))
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
