package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/registry/registrytest"
)

// migrated opens a pool on a new, migrated database.
func migrated(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool := open(t, pgtest.NewDatabase(t))
	if _, err := postgres.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestAgentStore(t *testing.T) {
	registrytest.TestStore(t, func(t *testing.T) registry.Store { return postgres.NewAgentStore(migrated(t)) })
}
