package postgres_test

import (
	"context"
	"testing"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/dispatch/dispatchtest"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// migrated opens a fresh database with the schema applied.
func migrated(t testing.TB, url string) *postgres.TaskStore {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Config{MaxConns: 8, ConnectTimeout: 5e9}, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := postgres.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return postgres.NewTaskStore(pool)
}

func TestTaskStore(t *testing.T) {
	dispatchtest.TestStore(t, func(t *testing.T) dispatch.Store { return migrated(t, pgtest.NewDatabase(t)) })
}
