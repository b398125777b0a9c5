-- Plan execution across replicas: who runs each plan (its run lease), and
-- which plan holds each resource (resource leases), so that every plan is
-- executed once and two plans never touch one instance at the same time.
--
-- A run lease is two columns of the plan's row, not an advisory lock: it
-- is written in the transactions that change the plan, so it is visible
-- (a reader sees who runs a plan and until when), it outlives a dropped
-- connection (a replica whose connection blips keeps its plans, where a
-- session lock would be gone and another replica could start the same
-- step), and it lapses on its own when the replica holding it dies and
-- stops renewing, at a time the replicas' clocks agree on well enough: the
-- store compares lease_until with the claimer's now, never the database's.
-- A lapsed lease is taken over by the next ClaimPlans; the former holder's
-- next update finds another owner and stores nothing (ErrLeaseLost).

-- +goose Up
ALTER TABLE coordination_plans
    -- The executor holding the run lease ('' for none) and until when.
    -- A plan whose lease_until is NULL or past is free to claim.
    ADD COLUMN owner       text NOT NULL DEFAULT '',
    ADD COLUMN lease_until timestamptz,
    -- Why a running plan has not started its first step (a dependency, a
    -- busy resource); '' once it runs.
    ADD COLUMN waiting_for text NOT NULL DEFAULT '';

-- ClaimPlans: the plans being executed, oldest first. Plans end, so this
-- stays as small as the work in flight however many plans are kept.
CREATE INDEX coordination_plans_active ON coordination_plans (seq) WHERE status IN ('running', 'rolling_back');

-- The resource leases: one plan at a time per resource of a customer
-- (the primary key is the lease). A plan takes its leases in the same
-- transaction as the change that needs them (INSERT ... ON CONFLICT DO
-- NOTHING, then a look at who holds them: all or none), in sorted order,
-- so that two plans wanting overlapping resources wait for each other in
-- one direction and never deadlock; it frees them by deleting its rows.
-- The leases go with their plan when it is deleted (Prune), so a plan
-- that ended without freeing them holds them no longer than its records.
CREATE TABLE coordination_resource_leases (
    customer_id text NOT NULL,
    resource    text NOT NULL,
    plan_id     text NOT NULL REFERENCES coordination_plans (id) ON DELETE CASCADE,
    PRIMARY KEY (customer_id, resource)
);
-- Release, and the cascade from a deleted plan.
CREATE INDEX coordination_resource_leases_plan ON coordination_resource_leases (plan_id);

-- +goose Down
DROP TABLE coordination_resource_leases;
DROP INDEX coordination_plans_active;
ALTER TABLE coordination_plans DROP COLUMN waiting_for, DROP COLUMN lease_until, DROP COLUMN owner;
