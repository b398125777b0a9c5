package registry_test

import (
	"testing"

	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/registry/registrytest"
)

func TestMemoryStore(t *testing.T) {
	registrytest.TestStore(t, func(*testing.T) registry.Store { return registry.NewMemoryStore() })
}
