-- The coordination records (internal/coordination): what each
-- POST /coordination/coordinate decided, its recommendations, approvals and
-- plans, and the append-only audit log. Kept here so that they survive
-- restarts and every replica serves, decides and sweeps the same records.
--
-- Every record is a row of its own, with the fields the store filters on as
-- columns; what is only carried (the agents' parameters, impact, metadata,
-- a plan's steps, an approval's votes, a coordination's conflicts) is json,
-- kept as written. Each table's seq orders its rows for the lists and makes
-- their cursors. An update reads its row under SELECT ... FOR UPDATE and
-- writes the row and its effects in the same transaction, so two replicas
-- deciding one approval take turns and the second sees the first's decision.

-- +goose Up
CREATE TABLE coordinations (
    id                    text PRIMARY KEY CHECK (id <> ''),
    customer_id           text NOT NULL,
    created_at            timestamptz NOT NULL,
    actor                 text NOT NULL,
    request_id            text NOT NULL,
    total_recommendations integer NOT NULL,
    recommendations_kept  integer NOT NULL,
    approvals_required    integer NOT NULL,
    auto_approved         integer NOT NULL,
    -- The conflicts never change once resolved: kept whole, like the
    -- memory store keeps them. They count against COORDINATION_MAX_RECORDS.
    conflicts             json NOT NULL
);
-- Retention: only coordinations created before the cutoff can have
-- settled before it.
CREATE INDEX coordinations_created ON coordinations (created_at);

CREATE TABLE coordination_recommendations (
    seq                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The server's id; the agent's own id (id) is unique only in its batch.
    record_id          text PRIMARY KEY CHECK (record_id <> ''),
    id                 text NOT NULL,
    coordination_id    text NOT NULL REFERENCES coordinations ON DELETE CASCADE,
    customer_id        text NOT NULL,
    agent_id           text NOT NULL,
    agent_type         text NOT NULL,
    type               text NOT NULL,
    title              text NOT NULL,
    description        text NOT NULL,
    action             text NOT NULL,
    risk_level         text NOT NULL,
    estimated_savings  double precision NOT NULL,
    estimated_impact   json,
    affected_resources json NOT NULL,
    parameters         json,
    dependencies       json NOT NULL,
    priority           bigint NOT NULL,
    confidence         double precision NOT NULL,
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz,
    status             text NOT NULL CHECK (status IN ('', 'pending', 'auto_approved', 'approved', 'rejected', 'superseded',
                           'expired', 'executing', 'completed', 'failed', 'rolled_back', 'cancelled')),
    metadata           json,
    superseded_by      text NOT NULL
);
-- The lists, by customer and by status, in the order stored; a
-- coordination's records; the counts by status (an index-only scan).
CREATE INDEX coordination_recommendations_customer ON coordination_recommendations (customer_id, seq);
CREATE INDEX coordination_recommendations_status ON coordination_recommendations (status, seq);
CREATE INDEX coordination_recommendations_coordination ON coordination_recommendations (coordination_id, seq);

CREATE TABLE coordination_approvals (
    seq                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                 text PRIMARY KEY CHECK (id <> ''),
    coordination_id    text NOT NULL REFERENCES coordinations ON DELETE CASCADE,
    recommendation_id  text NOT NULL,
    customer_id        text NOT NULL,
    risk_level         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    requested_by       text NOT NULL,
    requested_at       timestamptz NOT NULL,
    approved_by        text NOT NULL,
    approved_at        timestamptz,
    rejected_by        text NOT NULL,
    rejected_at        timestamptz,
    rejection_reason   text NOT NULL,
    expires_at         timestamptz NOT NULL,
    required_approvals integer NOT NULL,
    -- The votes so far (a critical approval needs two).
    approvals          json NOT NULL
);
CREATE INDEX coordination_approvals_customer ON coordination_approvals (customer_id, seq);
CREATE INDEX coordination_approvals_status ON coordination_approvals (status, seq);
CREATE INDEX coordination_approvals_coordination ON coordination_approvals (coordination_id, seq);
-- The portal decides by recommendation.
CREATE INDEX coordination_approvals_recommendation ON coordination_approvals (recommendation_id);
-- The expiry sweep: pending approvals by deadline. Each replica sweeps;
-- the expiry itself is an update under FOR UPDATE that changes nothing
-- when the approval is no longer pending, so each expires once.
CREATE INDEX coordination_approvals_expiry ON coordination_approvals (expires_at) WHERE status = 'pending';

CREATE TABLE coordination_plans (
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                text PRIMARY KEY CHECK (id <> ''),
    coordination_id   text NOT NULL REFERENCES coordinations ON DELETE CASCADE,
    recommendation_id text NOT NULL,
    customer_id       text NOT NULL,
    -- The steps change together with the plan, always under its row lock.
    steps             json NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'rolling_back',
                          'rolled_back', 'rollback_failed', 'cancelled')),
    current_step      integer NOT NULL,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    completed_at      timestamptz,
    rolled_back_at    timestamptz,
    total_duration_ms bigint NOT NULL
);
CREATE INDEX coordination_plans_customer ON coordination_plans (customer_id, seq);
CREATE INDEX coordination_plans_status ON coordination_plans (status, seq);
CREATE INDEX coordination_plans_coordination ON coordination_plans (coordination_id, seq);

-- The audit log, append-only. seq is not an identity: it is taken from
-- coordination_totals.event_seq under that row's lock, held to the commit,
-- so events become visible in seq order and a reader paging by seq
-- (GET /coordination/events, After) never skips one that commits late
-- with a smaller number, as identity values, assigned at insert, could.
CREATE TABLE coordination_events (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    customer_id text NOT NULL,
    at         timestamptz NOT NULL,
    kind       text NOT NULL,
    subject    text NOT NULL,
    actor      text NOT NULL,
    request_id text NOT NULL,
    details    json
);
CREATE INDEX coordination_events_customer ON coordination_events (customer_id, seq);
-- Since, and retention.
CREATE INDEX coordination_events_at ON coordination_events (at);

-- coordination_totals is the one row of running totals: the records held,
-- as COORDINATION_MAX_RECORDS counts them (recommendations, conflicts,
-- approvals, plans), and the last event seq. A coordination is refused
-- with a conditional update of this row, whose lock replicas take in turn,
-- so together they can never pass the limit; counting the tables instead
-- would need the same lock and read every row. Every transaction takes
-- this row last, after the records it changes, so they cannot deadlock
-- over it.
CREATE TABLE coordination_totals (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    records   bigint NOT NULL DEFAULT 0 CHECK (records >= 0),
    event_seq bigint NOT NULL DEFAULT 0 CHECK (event_seq >= 0)
);
INSERT INTO coordination_totals DEFAULT VALUES;

-- +goose Down
DROP TABLE coordination_totals;
DROP TABLE coordination_events;
DROP TABLE coordination_plans;
DROP TABLE coordination_approvals;
DROP TABLE coordination_recommendations;
DROP TABLE coordinations;
