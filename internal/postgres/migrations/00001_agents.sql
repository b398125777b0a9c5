-- The agent registry (internal/registry): one row per agent, shared by every
-- replica. Metadata is kept as the agent sent it (type json, not jsonb):
-- an opaque payload the service never queries into, returned byte for byte,
-- whose size the registry budgets; jsonb would reorder keys and could spell
-- a 5-byte 1e300 as 301 digits, defeating AGENT_MAX_METADATA_TOTAL_BYTES.

-- +goose Up
CREATE TABLE agents (
    id                    text PRIMARY KEY CHECK (id <> ''),
    name                  text NOT NULL,
    type                  text NOT NULL CHECK (type IN ('cost', 'performance', 'resource', 'application')),
    host                  text NOT NULL,
    port                  integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    capabilities          text[] NOT NULL DEFAULT '{}',
    status                text NOT NULL CHECK (status IN ('healthy', 'degraded', 'unhealthy', 'unreachable')),
    version               text NOT NULL DEFAULT '',
    registered_at         timestamptz NOT NULL,
    last_seen             timestamptz NOT NULL,
    owner                 text NOT NULL DEFAULT '',
    metadata              json,
    heartbeat_metadata    json,
    -- metadata_bytes is the stored size of both metadata texts, which the
    -- registry's total budget counts (SUM over this column).
    metadata_bytes        integer NOT NULL DEFAULT 0 CHECK (metadata_bytes >= 0),
    chosen_id             boolean NOT NULL DEFAULT false,
    announced_host        text NOT NULL DEFAULT '',
    address_source        text NOT NULL DEFAULT 'announced' CHECK (address_source IN ('announced', 'request')),
    health_check_endpoint text NOT NULL DEFAULT ''
);

-- Re-registration of an agent whose ID the registry generated finds it by
-- name, host and port.
CREATE UNIQUE INDEX agents_identity ON agents (name, host, port) WHERE NOT chosen_id;
-- Routing: the agents of a type with a capability.
CREATE INDEX agents_routing ON agents USING gin (capabilities);
CREATE INDEX agents_type ON agents (type);
-- The liveness sweeps: agents silent since a cutoff.
CREATE INDEX agents_last_seen ON agents (last_seen);

-- +goose Down
DROP TABLE agents;
