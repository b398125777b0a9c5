package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Readiness of the database: how often a replica pings it, and how many
// pings in a row must fail before /ready does. A single lost ping (a
// failover, a restart of a pooler) does not take every replica out of
// its Service at once; a database gone for ReadinessGrace does. Requests
// that need it get 503 meanwhile either way.
const (
	ReadinessInterval = 2 * time.Second
	readinessFailures = 3
	// ReadinessGrace is about how long the database may be unreachable
	// before /ready fails: readinessFailures pings ReadinessInterval
	// apart.
	ReadinessGrace = (readinessFailures - 1) * ReadinessInterval
)

// Readiness returns the readiness dependency check of the database behind
// pool: a ping, which passes until readinessFailures pings in a row have
// failed. Its error names the cause, never the password.
func Readiness(pool *pgxpool.Pool) func(context.Context) error {
	password := pool.Config().ConnConfig.Password
	var mu sync.Mutex
	failures := 0
	return func(ctx context.Context) error {
		err := pool.Ping(ctx)
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			failures = 0
			return nil
		}
		failures++
		if failures < readinessFailures {
			return nil
		}
		return fmt.Errorf("database unreachable (%d pings in a row failed): %s", failures, redact(err.Error(), password))
	}
}
