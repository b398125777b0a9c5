-- The tasks (internal/dispatch), and the shared queue of the ones waiting:
-- every replica claims from here, so the per-agent in-flight limit and the
-- priority-then-age order hold across the cluster. Parameters, metadata and
-- results are kept as sent (type json): opaque to the service.
--
-- A waiting task is pending or retrying. A claim (under an advisory lock)
-- makes it dispatched, with agent_id, attempts+1, lease_owner and
-- lease_expires; the owner renews the lease while it delivers; a lapsed
-- lease is taken over by any replica. Every change to a task is a
-- conditional UPDATE that never touches a terminal row.

-- +goose Up
CREATE TABLE tasks (
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id              text PRIMARY KEY CHECK (id <> ''),
    task_type       text NOT NULL,
    agent_type      text NOT NULL CHECK (agent_type IN ('cost', 'performance', 'resource', 'application')),
    pinned_agent_id text NOT NULL DEFAULT '',
    agent_id        text NOT NULL DEFAULT '',
    parameters      json NOT NULL,
    priority        integer NOT NULL,
    timeout_seconds integer NOT NULL CHECK (timeout_seconds > 0),
    max_retries     integer NOT NULL CHECK (max_retries >= 0),
    metadata        json,
    status          text NOT NULL CHECK (status IN ('pending', 'dispatched', 'retrying', 'completed', 'failed', 'timeout', 'cancelled')),
    result          json,
    error           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    completed_at    timestamptz,
    retry_count     integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    -- Scheduling state, shared by the replicas.
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    tried           text[] NOT NULL DEFAULT '{}',
    -- A waiting task is not claimed before not_before (a retry's backoff),
    -- and times out at deadline if no agent took it by then.
    not_before      timestamptz,
    deadline        timestamptz NOT NULL,
    -- The replica delivering a dispatched task, and when its claim lapses
    -- unless renewed: another replica then takes the task over.
    lease_owner     text NOT NULL DEFAULT '',
    lease_expires   timestamptz,
    CHECK ((status IN ('completed', 'failed', 'timeout', 'cancelled')) = (completed_at IS NOT NULL))
);

-- Claiming: the waiting tasks, best first.
CREATE INDEX tasks_waiting ON tasks (priority DESC, seq) WHERE status IN ('pending', 'retrying');
-- The queue deadlines and the end of retries' backoff: the next time a
-- replica has something to do.
CREATE INDEX tasks_deadline ON tasks (deadline) WHERE status IN ('pending', 'retrying');
CREATE INDEX tasks_not_before ON tasks (not_before) WHERE status = 'retrying';
-- The cluster-wide in-flight count per agent, lapsed leases, and a
-- replica's own leases (renewal).
CREATE INDEX tasks_dispatched ON tasks (agent_id) WHERE status = 'dispatched';
CREATE INDEX tasks_leases ON tasks (lease_expires) WHERE status = 'dispatched';
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE status = 'dispatched';
-- Listing by status, in submission order.
CREATE INDEX tasks_status_seq ON tasks (status, seq);
-- Retention: finished tasks by completion time.
CREATE INDEX tasks_completed ON tasks (completed_at) WHERE completed_at IS NOT NULL;

-- +goose Down
DROP TABLE tasks;
