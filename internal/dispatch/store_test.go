package dispatch_test

import (
	"testing"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/dispatch/dispatchtest"
)

// The package's TestMain (dispatcher_test.go) checks for leaked goroutines.

func TestMemoryStore(t *testing.T) {
	dispatchtest.TestStore(t, func(*testing.T) dispatch.Store { return dispatch.NewMemoryStore() })
}
