package postgres_test

import (
	"context"
	"regexp"
	"slices"
	"testing"

	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// A heartbeat rewrites an agent's row. PostgreSQL can make that a
// heap-only (HOT) update, writing no index entry, only when no index
// covers a column the heartbeat changes and the row's page has room for
// the new version. Otherwise every heartbeat adds an entry to each of the
// table's indexes, the GIN index on capabilities included: make bench
// measured that at half the heartbeats per second (docs/benchmarks.md).
func TestHeartbeatColumnsAreNotIndexed(t *testing.T) {
	pool := open(t, pgtest.NewDatabase(t))
	ctx := context.Background()
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// What AgentStore.Heartbeat writes, with or without metadata.
	written := []string{"status", "last_seen", "heartbeat_metadata", "metadata_bytes"}
	rows, err := pool.Query(ctx, `SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'agents'::regclass`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatal(err)
		}
		for _, col := range written {
			if regexp.MustCompile(`\b` + col + `\b`).MatchString(def) {
				t.Errorf("index %s covers %s, which every heartbeat writes: %s", name, col, def)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	var options []string
	if err := pool.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'agents'::regclass`).Scan(&options); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(options, regexp.MustCompile(`^fillfactor=([1-8][0-9]|9[0-5])$`).MatchString) {
		t.Errorf("agents reloptions %q: want a fillfactor of at most 95, leaving room on each page for heartbeats' new row versions", options)
	}
}
