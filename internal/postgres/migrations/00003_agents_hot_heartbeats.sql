-- Heartbeats as heap-only (HOT) updates. A heartbeat rewrites its agent's
-- row (status, last_seen, heartbeat metadata); with an index on last_seen
-- every heartbeat also wrote an entry into each of the table's six
-- indexes, the GIN index on capabilities included, and make bench measured
-- half the heartbeats per second (docs/benchmarks.md). Without it, and
-- with room left on each page for the row's next version, PostgreSQL
-- updates the row in place of its page and touches no index.
--
-- The liveness sweeps, which looked agents up by last_seen, scan the
-- table instead: one sequential scan of a few MB per sweep interval for
-- 10,000 agents, against one index entry per heartbeat.

-- +goose Up
DROP INDEX agents_last_seen;
ALTER TABLE agents SET (fillfactor = 70);

-- +goose Down
ALTER TABLE agents RESET (fillfactor);
CREATE INDEX agents_last_seen ON agents (last_seen);
