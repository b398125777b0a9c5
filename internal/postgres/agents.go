package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// AgentStore is the agent registry's Store in PostgreSQL (the agents and
// agent_totals tables of migrations/00001_agents.sql), shared by every
// replica: an agent registered through one is seen, routed to and
// heartbeats through all. Each method is one transaction. The limits are
// checked against agent_totals under its row lock in the transaction that
// changes the agent; the liveness sweeps are conditional updates, safe to
// run on every replica at once (each agent is marked or evicted by one).
//
// Errors that mean the database cannot be reached now wrap
// storeerr.ErrUnavailable.
type AgentStore struct {
	pool *pgxpool.Pool
}

// NewAgentStore returns the store over pool, whose database must be
// migrated.
func NewAgentStore(pool *pgxpool.Pool) *AgentStore { return &AgentStore{pool: pool} }

var _ registry.Store = (*AgentStore)(nil)

// sweepLockID is the transaction-level advisory lock the liveness sweeps
// take, so that two replicas sweeping at once do not lock the same agents
// in different orders (a deadlock PostgreSQL would end after a second).
const sweepLockID = 0x6167656e7473 // "agents"

// maxAgentTxAttempts bounds how often a transaction is run again after a
// deadlock, a serialization failure or a registration racing another for
// the same agent.
const maxAgentTxAttempts = 5

// agentColumns are the columns scanAgent reads, in its order.
const agentColumns = `id, name, type, host, port, capabilities, status, version, registered_at, last_seen,
	owner, metadata, heartbeat_metadata, chosen_id, announced_host, address_source, health_check_endpoint`

// scanAgent reads agentColumns, then extra, from row.
func scanAgent(row pgx.Row, extra ...any) (registry.Agent, error) {
	var a registry.Agent
	var typ, status, source string
	var metadata, heartbeat []byte
	dest := append([]any{&a.ID, &a.Name, &typ, &a.Host, &a.Port, &a.Capabilities, &status, &a.Version,
		&a.RegisteredAt, &a.LastSeen, &a.Owner, &metadata, &heartbeat, &a.ChosenID, &a.AnnouncedHost,
		&source, &a.HealthCheckEndpoint}, extra...)
	if err := row.Scan(dest...); err != nil {
		return registry.Agent{}, err
	}
	a.Type, a.Status, a.AddressSource = registry.Type(typ), registry.Status(status), registry.AddressSource(source)
	a.RegisteredAt, a.LastSeen = a.RegisteredAt.UTC(), a.LastSeen.UTC()
	if len(metadata) > 0 {
		a.Metadata = json.RawMessage(metadata)
	}
	if len(heartbeat) > 0 {
		a.HeartbeatMetadata = json.RawMessage(heartbeat)
	}
	return a, nil
}

// collectAgents reads every row of rows as an agent.
func collectAgents(rows pgx.Rows) ([]registry.Agent, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (registry.Agent, error) { return scanAgent(row) })
}

// jsonOrNull is metadata as a query argument: NULL for none, the JSON
// text as given otherwise (a json column keeps it byte for byte).
func jsonOrNull(m json.RawMessage) any {
	if len(m) == 0 {
		return nil
	}
	return string(m)
}

// capabilitiesOf never passes NULL for the NOT NULL array.
func capabilitiesOf(a registry.Agent) []string {
	if a.Capabilities == nil {
		return []string{}
	}
	return a.Capabilities
}

// inTx runs fn in a transaction, again after a deadlock or a
// serialization failure, and maps connection failures to
// storeerr.ErrUnavailable. fn returning errRegisterAgain runs it again too.
func (s *AgentStore) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.inTxWith(ctx, pgx.TxOptions{}, fn)
}

// inTxWith is inTx with the transaction's options.
func (s *AgentStore) inTxWith(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	var err error
	for range maxAgentTxAttempts {
		err = pgx.BeginTxFunc(ctx, s.pool, opts, fn)
		if !isRetryable(err) && !errors.Is(err, errRegisterAgain) {
			break
		}
	}
	if errors.Is(err, errRegisterAgain) {
		err = errors.New("registry: the agent changed concurrently too often; try again")
	}
	return unavailable(ctx, err)
}

// errRegisterAgain makes inTx run its function again: a registration lost a race
// for its agent's row to another, and must now find that row.
var errRegisterAgain = errors.New("retry")

// Register implements registry.Store.
func (s *AgentStore) Register(ctx context.Context, a registry.Agent, lim registry.Limits) (registry.Agent, bool, error) {
	var stored registry.Agent
	var created bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		stored, created, err = registerAgent(ctx, tx, a, lim)
		return err
	})
	if err != nil {
		return registry.Agent{}, false, err
	}
	return stored, created, nil
}

// registerAgent is Register in tx. It locks the agent's row (the one found, or
// the one it inserts) before agent_totals, as every transaction does.
func registerAgent(ctx context.Context, tx pgx.Tx, a registry.Agent, lim registry.Limits) (registry.Agent, bool, error) {
	find := `SELECT ` + agentColumns + `, metadata_bytes FROM agents
		WHERE name = $1 AND host = $2 AND port = $3 AND NOT chosen_id FOR UPDATE`
	args := []any{a.Name, a.Host, a.Port}
	if a.ChosenID {
		find = `SELECT ` + agentColumns + `, metadata_bytes FROM agents WHERE id = $1 FOR UPDATE`
		args = []any{a.ID}
	}
	var oldBytes int
	old, err := scanAgent(tx.QueryRow(ctx, find, args...), &oldBytes)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return insertAgent(ctx, tx, a, lim)
	case err != nil:
		return registry.Agent{}, false, err
	case a.ChosenID && !old.ChosenID:
		return registry.Agent{}, false, registry.ErrIDTaken
	case old.Owner != "" && a.Owner != "" && old.Owner != a.Owner:
		return registry.Agent{}, false, registry.ErrNotOwner
	}
	if old.Owner != "" {
		a.Owner = old.Owner
	}
	if err := growMetadata(ctx, tx, a.MetadataBytes()-oldBytes, lim); err != nil {
		return registry.Agent{}, false, err
	}
	stored, err := scanAgent(tx.QueryRow(ctx, `UPDATE agents SET
			name = $2, type = $3, host = $4, port = $5, capabilities = $6, status = $7, version = $8,
			last_seen = $9, owner = $10, metadata = $11, heartbeat_metadata = $12, metadata_bytes = $13,
			announced_host = $14, address_source = $15, health_check_endpoint = $16
		WHERE id = $1
		RETURNING `+agentColumns,
		old.ID, a.Name, a.Type, a.Host, a.Port, capabilitiesOf(a), a.Status, a.Version,
		a.LastSeen, a.Owner, jsonOrNull(a.Metadata), jsonOrNull(a.HeartbeatMetadata), a.MetadataBytes(),
		a.AnnouncedHost, a.AddressSource, a.HealthCheckEndpoint))
	return stored, false, err
}

// insertAgent stores a new agent, then counts it in agent_totals within lim.
func insertAgent(ctx context.Context, tx pgx.Tx, a registry.Agent, lim registry.Limits) (registry.Agent, bool, error) {
	if a.ID == "" {
		return registry.Agent{}, false, errors.New("registry: agent ID empty")
	}
	// ON CONFLICT DO NOTHING waits for a registration of the same agent
	// running at the same time; when that one committed, the row is
	// there now and the whole registration runs again to update it.
	stored, err := scanAgent(tx.QueryRow(ctx, `INSERT INTO agents (`+agentColumns+`, metadata_bytes)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
		ON CONFLICT DO NOTHING
		RETURNING `+agentColumns,
		a.ID, a.Name, a.Type, a.Host, a.Port, capabilitiesOf(a), a.Status, a.Version, a.RegisteredAt, a.LastSeen,
		a.Owner, jsonOrNull(a.Metadata), jsonOrNull(a.HeartbeatMetadata), a.ChosenID, a.AnnouncedHost,
		a.AddressSource, a.HealthCheckEndpoint, a.MetadataBytes()))
	if errors.Is(err, pgx.ErrNoRows) {
		var chosen bool
		err := tx.QueryRow(ctx, `SELECT chosen_id FROM agents WHERE id = $1`, a.ID).Scan(&chosen)
		if err == nil && !a.ChosenID {
			// A generated ID that another agent has: never overwrite it.
			return registry.Agent{}, false, fmt.Errorf("registry: agent ID %q already taken", a.ID)
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return registry.Agent{}, false, err
		}
		return registry.Agent{}, false, errRegisterAgain
	}
	if err != nil {
		return registry.Agent{}, false, err
	}
	var agents, held int64
	if err := tx.QueryRow(ctx, `SELECT agents, metadata_bytes FROM agent_totals FOR UPDATE`).Scan(&agents, &held); err != nil {
		return registry.Agent{}, false, err
	}
	size := int64(a.MetadataBytes())
	switch {
	case agents >= int64(lim.Agents):
		return registry.Agent{}, false, registry.ErrFull
	case size > 0 && size > int64(lim.MetadataBytes)-held:
		return registry.Agent{}, false, registry.ErrMetadataBudget
	}
	_, err = tx.Exec(ctx, `UPDATE agent_totals SET agents = agents + 1, metadata_bytes = metadata_bytes + $1::bigint`, size)
	return stored, true, err
}

// growMetadata changes the metadata agent_totals holds by delta bytes, refusing
// with ErrMetadataBudget to grow it past lim. Shrinking, or keeping the
// size, is never refused, even past the budget. The condition is
// evaluated on the row as it is once locked, so concurrent changes pass
// the budget together never.
func growMetadata(ctx context.Context, tx pgx.Tx, delta int, lim registry.Limits) error {
	if delta == 0 {
		return nil
	}
	tag, err := tx.Exec(ctx, `UPDATE agent_totals SET metadata_bytes = metadata_bytes + $1
		WHERE $1::bigint < 0 OR metadata_bytes <= $2::bigint - $1::bigint`, delta, lim.MetadataBytes)
	switch {
	case err != nil:
		return err
	case tag.RowsAffected() == 0:
		return registry.ErrMetadataBudget
	}
	return nil
}

// Heartbeat implements registry.Store. Without metadata it is a single
// statement; with metadata, a transaction that locks the agent, then
// agent_totals when the metadata changes size.
func (s *AgentStore) Heartbeat(ctx context.Context, id, owner string, status registry.Status, metadata json.RawMessage, at time.Time, lim registry.Limits) (registry.Agent, registry.Liveness, error) {
	if !storable(id) {
		return registry.Agent{}, registry.Liveness{}, registry.ErrNotFound
	}
	var updated registry.Agent
	var before registry.Liveness
	if len(metadata) == 0 {
		var err error
		updated, before, err = heartbeatOnly(ctx, s.pool, id, owner, status, at, nil)
		return updated, before, unavailable(ctx, err)
	}
	// Most heartbeats carry metadata of the size they carried before, which
	// leaves the budget as it is: one statement. Otherwise (or when the
	// agent is unknown or not the caller's) the transaction below decides.
	if updated, before, err := heartbeatOnly(ctx, s.pool, id, owner, status, at, metadata); !errors.Is(err, errMetadataResized) {
		return updated, before, unavailable(ctx, err)
	}
	err := s.inTxWith(ctx, asyncCommit, func(tx pgx.Tx) error {
		var held int
		var prevStatus, prevOwner string
		err := tx.QueryRow(ctx, `SELECT owner, status, last_seen, coalesce(octet_length(heartbeat_metadata::text), 0)
			FROM agents WHERE id = $1 FOR UPDATE`, id).Scan(&prevOwner, &prevStatus, &before.LastSeen, &held)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return registry.ErrNotFound
		case err != nil:
			return err
		case prevOwner != "" && owner != "" && prevOwner != owner:
			return registry.ErrNotOwner
		}
		before.Status, before.LastSeen = registry.Status(prevStatus), before.LastSeen.UTC()
		delta := len(metadata) - held
		if err := growMetadata(ctx, tx, delta, lim); err != nil {
			return err
		}
		updated, err = scanAgent(tx.QueryRow(ctx, `UPDATE agents
			SET status = $2, last_seen = $3, heartbeat_metadata = $4, metadata_bytes = metadata_bytes + $5::integer
			WHERE id = $1
			RETURNING `+agentColumns, id, status, at, string(metadata), delta))
		return err
	})
	if err != nil {
		return registry.Agent{}, registry.Liveness{}, err
	}
	return updated, before, nil
}

// errMetadataResized: heartbeatOnly changed nothing, because the agent's
// heartbeat metadata would change size (and so the budget's count).
var errMetadataResized = errors.New("heartbeat metadata changes size")

// heartbeatOnly records a heartbeat in one statement when it leaves the
// metadata budget as it is: without metadata, or with metadata (non-nil)
// of exactly the size the agent's last heartbeat metadata has. It touches
// one row and not agent_totals. With metadata of another size it changes
// nothing and returns errMetadataResized, also for an unknown agent or
// another owner's: the caller's transaction then tells them apart.
func heartbeatOnly(ctx context.Context, db *pgxpool.Pool, id, owner string, status registry.Status, at time.Time, metadata json.RawMessage) (registry.Agent, registry.Liveness, error) {
	var before registry.Liveness
	var prevStatus string
	var meta *string // NULL keeps the metadata, and matches any size
	if metadata != nil {
		m := string(metadata)
		meta = &m
	}
	// One round trip: the transaction's statements go out in one batch,
	// COMMIT included (a heartbeat that changed nothing commits nothing).
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(setAsyncCommit) // the next heartbeat writes it again
	b.Queue(`WITH old AS (SELECT id, owner, status, last_seen FROM agents WHERE id = $1 FOR UPDATE)
		UPDATE agents SET status = $3, last_seen = $4, heartbeat_metadata = coalesce($5::json, agents.heartbeat_metadata)
		FROM old
		WHERE agents.id = $1 AND agents.id = old.id AND (old.owner = '' OR $2 = '' OR old.owner = $2)
			AND ($5::text IS NULL OR coalesce(octet_length(agents.heartbeat_metadata::text), 0) = octet_length($5::text))
		RETURNING `+agentColumnsOf("agents")+`, old.status, old.last_seen`, id, owner, status, at, meta)
	b.Queue(`COMMIT`)
	br := db.SendBatch(ctx, b)
	var err error
	for i := 0; i < 2 && err == nil; i++ {
		_, err = br.Exec()
	}
	var a registry.Agent
	if err == nil {
		a, err = scanAgent(br.QueryRow(), &prevStatus, &before.LastSeen)
	}
	if err == nil || errors.Is(err, pgx.ErrNoRows) {
		if _, cerr := br.Exec(); err == nil {
			err = cerr
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows) && metadata != nil:
		return registry.Agent{}, registry.Liveness{}, errMetadataResized
	case errors.Is(err, pgx.ErrNoRows):
		return registry.Agent{}, registry.Liveness{}, notFoundOrNotOwner(ctx, db, id)
	case err != nil:
		return registry.Agent{}, registry.Liveness{}, err
	}
	before.Status, before.LastSeen = registry.Status(prevStatus), before.LastSeen.UTC()
	return a, before, nil
}

// agentColumnsOf is agentColumns prefixed with table, for statements that join.
func agentColumnsOf(table string) string {
	return table + `.id, ` + table + `.name, ` + table + `.type, ` + table + `.host, ` + table + `.port, ` +
		table + `.capabilities, ` + table + `.status, ` + table + `.version, ` + table + `.registered_at, ` +
		table + `.last_seen, ` + table + `.owner, ` + table + `.metadata, ` + table + `.heartbeat_metadata, ` +
		table + `.chosen_id, ` + table + `.announced_host, ` + table + `.address_source, ` + table + `.health_check_endpoint`
}

// notFoundOrNotOwner says why a change to agent id found no row to
// change: there is none, or it is bound to another owner.
func notFoundOrNotOwner(ctx context.Context, db *pgxpool.Pool, id string) error {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)`, id).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return registry.ErrNotOwner
	}
	return registry.ErrNotFound
}

// Delete implements registry.Store.
func (s *AgentStore) Delete(ctx context.Context, id, owner string) (registry.Agent, error) {
	if !storable(id) {
		return registry.Agent{}, registry.ErrNotFound
	}
	a, err := scanAgent(s.pool.QueryRow(ctx, `WITH gone AS (
			DELETE FROM agents WHERE id = $1 AND (owner = '' OR $2 = '' OR owner = $2) RETURNING *
		), counted AS (
			UPDATE agent_totals SET agents = agents - 1, metadata_bytes = agent_totals.metadata_bytes - gone.metadata_bytes FROM gone
		)
		SELECT `+agentColumns+` FROM gone`, id, owner))
	if errors.Is(err, pgx.ErrNoRows) {
		err = notFoundOrNotOwner(ctx, s.pool, id)
	}
	if err != nil {
		return registry.Agent{}, unavailable(ctx, err)
	}
	return a, nil
}

// Get implements registry.Store.
func (s *AgentStore) Get(ctx context.Context, id string) (registry.Agent, error) {
	if !storable(id) {
		return registry.Agent{}, registry.ErrNotFound
	}
	a, err := scanAgent(s.pool.QueryRow(ctx, `SELECT `+agentColumns+` FROM agents WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return registry.Agent{}, registry.ErrNotFound
	}
	if err != nil {
		return registry.Agent{}, unavailable(ctx, err)
	}
	return a, nil
}

// List implements registry.Store.
func (s *AgentStore) List(ctx context.Context, typ registry.Type) ([]registry.Agent, error) {
	query, args := `SELECT `+agentColumns+` FROM agents ORDER BY registered_at, id`, []any{}
	if typ != "" {
		query, args = `SELECT `+agentColumns+` FROM agents WHERE type = $1 ORDER BY registered_at, id`, []any{typ}
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	agents, err := collectAgents(rows)
	return agents, unavailable(ctx, err)
}

// Count implements registry.Store.
func (s *AgentStore) Count(ctx context.Context, silentSince time.Time) ([]registry.AgentCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT type, CASE WHEN last_seen < $1 THEN 'unreachable' ELSE status END AS effective, count(*)
		FROM agents GROUP BY type, effective`, silentSince)
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	counts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (registry.AgentCount, error) {
		var typ, status string
		var n int
		err := row.Scan(&typ, &status, &n)
		return registry.AgentCount{Type: registry.Type(typ), Status: registry.Status(status), Agents: n}, err
	})
	return counts, unavailable(ctx, err)
}

// Candidates implements registry.Store. They come in ID order: stable
// while the set does not change.
func (s *AgentStore) Candidates(ctx context.Context, typ registry.Type, capability string, buf []registry.Candidate) ([]registry.Candidate, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, host, port, status, last_seen FROM agents
		WHERE type = $1 AND capabilities @> ARRAY[$2::text] ORDER BY id`, typ, capability)
	if err != nil {
		return buf, unavailable(ctx, err)
	}
	defer rows.Close()
	start := len(buf)
	for rows.Next() {
		var c registry.Candidate
		var status string
		if err := rows.Scan(&c.ID, &c.Host, &c.Port, &status, &c.LastSeen); err != nil {
			return buf[:start], unavailable(ctx, err)
		}
		c.Status, c.LastSeen = registry.Status(status), c.LastSeen.UTC()
		buf = append(buf, c)
	}
	if err := rows.Err(); err != nil {
		return buf[:start], unavailable(ctx, err)
	}
	return buf, nil
}

// MarkUnreachable implements registry.Store. The condition is checked on
// each row once locked: of two replicas sweeping at once, one marks an
// agent and the other finds it marked, and a heartbeat that came first
// keeps its agent reachable.
func (s *AgentStore) MarkUnreachable(ctx context.Context, cutoff time.Time) ([]registry.Agent, error) {
	var marked []registry.Agent
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, sweepLockID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `UPDATE agents SET status = 'unreachable'
			WHERE last_seen < $1 AND status <> 'unreachable'
			RETURNING `+agentColumns, cutoff)
		if err != nil {
			return err
		}
		marked, err = collectAgents(rows)
		return err
	})
	if err != nil {
		return nil, err
	}
	return marked, nil
}

// Evict implements registry.Store, and frees the evicted agents' share of
// agent_totals in the same statement.
func (s *AgentStore) Evict(ctx context.Context, cutoff time.Time) ([]registry.Agent, error) {
	var evicted []registry.Agent
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, sweepLockID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `WITH gone AS (
				DELETE FROM agents WHERE last_seen < $1 RETURNING *
			), counted AS (
				UPDATE agent_totals SET agents = agents - (SELECT count(*) FROM gone),
					metadata_bytes = metadata_bytes - (SELECT coalesce(sum(metadata_bytes), 0) FROM gone)
				WHERE EXISTS (SELECT 1 FROM gone)
			)
			SELECT `+agentColumns+` FROM gone`, cutoff)
		if err != nil {
			return err
		}
		evicted, err = collectAgents(rows)
		return err
	})
	if err != nil {
		return nil, err
	}
	return evicted, nil
}

// MetadataBytes implements registry.Store: one row, kept as agents change.
func (s *AgentStore) MetadataBytes(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT metadata_bytes FROM agent_totals`).Scan(&n); err != nil {
		return 0, unavailable(ctx, err)
	}
	return n, nil
}
