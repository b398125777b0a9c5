package coordination_test

import (
	"testing"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/coordination/coordinationtest"
)

func TestMemoryStore(t *testing.T) {
	coordinationtest.TestStore(t, func(*testing.T) coordination.Store { return coordination.NewMemoryStore() })
}
