package postgres_test

import (
	"testing"

	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/registry/registrytest"
)

func TestAgentStore(t *testing.T) {
	registrytest.TestStore(t, func(t *testing.T) registry.Store {
		return postgres.NewAgentStore(migratedPool(t, pgtest.NewDatabase(t)))
	})
}
