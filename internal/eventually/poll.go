// Package eventually is the polling helper every test shares.
package eventually

import (
	"testing"
	"time"
)

// True polls cond until it holds, and fails t when limit passes
// first, saying what it waited for. It polls often at first, so a fast
// condition costs a fast test, then backs off to at most a twentieth of
// the limit (and never more than a quarter second), so a slow one (a
// Kubernetes rollout) does not spin.
func True(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	wait, most := time.Millisecond, min(limit/20, 250*time.Millisecond)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(wait)
		wait = min(2*wait, max(most, time.Millisecond))
	}
}
