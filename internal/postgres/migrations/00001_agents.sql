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
    -- registry's total budget counts (agent_totals keeps the sum).
    metadata_bytes        integer NOT NULL DEFAULT 0 CHECK (metadata_bytes >= 0),
    chosen_id             boolean NOT NULL DEFAULT false,
    announced_host        text NOT NULL DEFAULT '',
    -- address_source is empty for an agent stored without one (the
    -- registry always says), which means announced.
    address_source        text NOT NULL DEFAULT 'announced' CHECK (address_source IN ('', 'announced', 'request')),
    health_check_endpoint text NOT NULL DEFAULT ''
);

-- Re-registration of an agent whose ID the registry generated finds it by
-- name, host and port.
CREATE UNIQUE INDEX agents_identity ON agents (name, host, port) WHERE NOT chosen_id;
-- Routing: the agents of a type with a capability.
CREATE INDEX agents_routing ON agents USING gin (capabilities);
-- Listing, oldest registration first: all agents, or those of one type.
CREATE INDEX agents_registered ON agents (registered_at, id);
CREATE INDEX agents_type_registered ON agents (type, registered_at, id);
-- The liveness sweeps: agents silent since a cutoff.
CREATE INDEX agents_last_seen ON agents (last_seen);

-- agent_totals is the registry's one row of running totals: how many agents
-- there are and the metadata they hold. AGENT_MAX_AGENTS and
-- AGENT_MAX_METADATA_TOTAL_BYTES are checked against it, under its row
-- lock, in the transaction that changes an agent, so replicas registering
-- at once can never pass them together, and a heartbeat's check reads no
-- other agent. Every transaction locks agent rows before this row, never
-- after, so the two cannot deadlock.
CREATE TABLE agent_totals (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    agents         bigint NOT NULL DEFAULT 0 CHECK (agents >= 0),
    metadata_bytes bigint NOT NULL DEFAULT 0 CHECK (metadata_bytes >= 0)
);
INSERT INTO agent_totals DEFAULT VALUES;

-- +goose Down
DROP TABLE agent_totals;
DROP TABLE agents;
