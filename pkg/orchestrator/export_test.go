package orchestrator

import (
	"context"
	"time"
)

// SetWait replaces h's sleep between calls, for the external tests (which
// must be external: they build the real service, whose API imports this
// package).
func SetWait(h *Heartbeater, wait func(ctx context.Context, d time.Duration) bool) { h.wait = wait }
