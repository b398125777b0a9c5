package postgres

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/storeerr"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// CoordinationStore is the coordination.Store in PostgreSQL (tables
// coordinations, coordination_*, migrations/00004_coordination.sql and
// 00005_plan_runs.sql): the records survive restarts and every replica
// shares them.
//
// Each method is one transaction. Updates read their row under SELECT ...
// FOR UPDATE, run the change in Go and write the row and its effects
// before committing, so concurrent decisions of one approval, from any
// replicas, take turns and each sees the one before. COORDINATION_MAX_RECORDS
// is held across replicas by a conditional update of coordination_totals
// (see the migration), taken last in every transaction; the same row
// numbers the events, so they become visible in seq order.
//
// A plan's run lease is two columns of its row (owner, lease_until),
// taken by ClaimPlans with FOR UPDATE SKIP LOCKED and checked by
// UpdateRun under the row's lock; its resource leases are rows of
// coordination_resource_leases, taken and freed in the transaction of
// the plan's update (leaseResources).
type CoordinationStore struct {
	pool *pgxpool.Pool
}

// NewCoordinationStore returns the store over pool, whose schema must be
// migrated.
func NewCoordinationStore(pool *pgxpool.Pool) *CoordinationStore {
	return &CoordinationStore{pool: pool}
}

var _ coordination.Store = (*CoordinationStore)(nil)

// coordPruneBatch is how many coordinations one transaction of Prune
// deletes: a long backlog is pruned in short transactions, none holding
// coordination_totals for long.
const coordPruneBatch = 200

// coordRetries is how many times a transaction that lost a deadlock or a
// serialization conflict is run again before the error is returned.
const coordRetries = 5

// Column lists, in the order of their scan functions.
const (
	coordRecColumns = `record_id, id, coordination_id, customer_id, agent_id, agent_type, type, title, description,
	action, risk_level, estimated_savings, estimated_impact, affected_resources, parameters, dependencies, priority,
	confidence, created_at, expires_at, status, metadata, superseded_by`
	coordApprovalColumns = `id, recommendation_id, customer_id, risk_level, status, requested_by, requested_at,
	approved_by, approved_at, rejected_by, rejected_at, rejection_reason, expires_at, required_approvals, approvals`
	coordPlanColumns = `id, recommendation_id, customer_id, steps, status, current_step, created_at, started_at,
	completed_at, rolled_back_at, total_duration_ms, waiting_for`
	coordEventColumns   = `seq, at, customer_id, kind, subject, actor, request_id, details`
	coordinationColumns = `id, customer_id, created_at, actor, request_id, total_recommendations, recommendations_kept,
	approvals_required, auto_approved, conflicts`
)

// coordJSON is v as JSON. Slices are encoded alone, not through their
// record's omitempty tags, so that nil and empty stay apart: the records
// come back as they went in.
func coordJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("postgres: encoding a coordination record: %w", err)
	}
	return b, nil
}

func coordUnJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("postgres: decoding a coordination record: %w", err)
	}
	return nil
}

// coordTimePtr is t, or NULL when nil.
func coordTimePtr(t *time.Time) pgtype.Timestamptz {
	if t == nil {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: *t, Valid: true}
}

// coordPtrTime is ts in UTC, or nil when NULL.
func coordPtrTime(ts pgtype.Timestamptz) *time.Time {
	if !ts.Valid {
		return nil
	}
	t := ts.Time.UTC()
	return &t
}

func scanCoordination(row pgx.Row) (coordination.Coordination, error) {
	var (
		c                            coordination.Coordination
		created                      time.Time
		total, kept, required, autoA int32
		conflicts                    []byte
	)
	if err := row.Scan(&c.ID, &c.CustomerID, &created, &c.Actor, &c.RequestID, &total, &kept, &required, &autoA, &conflicts); err != nil {
		return coordination.Coordination{}, err
	}
	c.CreatedAt = created.UTC()
	c.TotalRecommendations, c.RecommendationsKept, c.ApprovalsRequired, c.AutoApproved = int(total), int(kept), int(required), int(autoA)
	return c, coordUnJSON(conflicts, &c.Conflicts)
}

func scanRecommendation(row pgx.Row) (orchestrator.Recommendation, error) {
	var (
		r                       orchestrator.Recommendation
		agentType, risk, status string
		impact, params, meta    []byte
		affected, deps          []byte
		priority                int64
		created                 time.Time
		expires                 pgtype.Timestamptz
	)
	if err := row.Scan(&r.RecordID, &r.ID, &r.CoordinationID, &r.CustomerID, &r.AgentID, &agentType, &r.Type, &r.Title,
		&r.Description, &r.Action, &risk, &r.EstimatedSavings, &impact, &affected, &params, &deps, &priority,
		&r.Confidence, &created, &expires, &status, &meta, &r.SupersededBy); err != nil {
		return orchestrator.Recommendation{}, err
	}
	r.AgentType, r.RiskLevel, r.Status = orchestrator.AgentType(agentType), orchestrator.RiskLevel(risk), orchestrator.RecommendationStatus(status)
	r.EstimatedImpact, r.Parameters, r.Metadata = impact, params, meta
	r.Priority = int(priority)
	r.CreatedAt, r.ExpiresAt = created.UTC(), coordPtrTime(expires)
	if err := coordUnJSON(affected, &r.AffectedResources); err != nil {
		return orchestrator.Recommendation{}, err
	}
	return r, coordUnJSON(deps, &r.Dependencies)
}

func scanApproval(row pgx.Row) (orchestrator.Approval, error) {
	var (
		a                  orchestrator.Approval
		risk, status       string
		requested, expires time.Time
		approved, rejected pgtype.Timestamptz
		required           int32
		votes              []byte
	)
	if err := row.Scan(&a.ID, &a.RecommendationID, &a.CustomerID, &risk, &status, &a.RequestedBy, &requested,
		&a.ApprovedBy, &approved, &a.RejectedBy, &rejected, &a.RejectionReason, &expires, &required, &votes); err != nil {
		return orchestrator.Approval{}, err
	}
	a.RiskLevel, a.Status = orchestrator.RiskLevel(risk), orchestrator.ApprovalStatus(status)
	a.RequestedAt, a.ExpiresAt = requested.UTC(), expires.UTC()
	a.ApprovedAt, a.RejectedAt = coordPtrTime(approved), coordPtrTime(rejected)
	a.RequiredApprovals = int(required)
	if err := coordUnJSON(votes, &a.Approvals); err != nil {
		return orchestrator.Approval{}, err
	}
	for i := range a.Approvals {
		a.Approvals[i].At = a.Approvals[i].At.UTC()
	}
	return a, nil
}

func scanPlan(row pgx.Row) (orchestrator.Plan, error) {
	var (
		p                              orchestrator.Plan
		status                         string
		steps                          []byte
		current                        int32
		created                        time.Time
		started, completed, rolledBack pgtype.Timestamptz
	)
	if err := row.Scan(&p.ID, &p.RecommendationID, &p.CustomerID, &steps, &status, &current, &created, &started,
		&completed, &rolledBack, &p.TotalDurationMS, &p.WaitingFor); err != nil {
		return orchestrator.Plan{}, err
	}
	p.Status, p.CurrentStep = orchestrator.PlanStatus(status), int(current)
	p.CreatedAt = created.UTC()
	p.StartedAt, p.CompletedAt, p.RolledBackAt = coordPtrTime(started), coordPtrTime(completed), coordPtrTime(rolledBack)
	return p, coordUnJSON(steps, &p.Steps)
}

func scanEvent(row pgx.Row) (orchestrator.Event, error) {
	var (
		e       orchestrator.Event
		seq     int64
		at      time.Time
		kind    string
		details []byte
	)
	if err := row.Scan(&seq, &at, &e.CustomerID, &kind, &e.SubjectID, &e.Actor, &e.RequestID, &details); err != nil {
		return orchestrator.Event{}, err
	}
	e.Seq = uint64(seq) //nolint:gosec // G115: CHECK (seq > 0)
	e.At, e.Kind, e.Details = at.UTC(), orchestrator.EventKind(kind), details
	return e, nil
}

// coordQuerier is a pool or a transaction.
type coordQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func insertRecommendation(ctx context.Context, q coordQuerier, coord string, r orchestrator.Recommendation) error {
	affected, err := coordJSON(r.AffectedResources)
	if err != nil {
		return err
	}
	deps, err := coordJSON(r.Dependencies)
	if err != nil {
		return err
	}
	_, err = q.Exec(ctx, `INSERT INTO coordination_recommendations (`+coordRecColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)`,
		r.RecordID, r.ID, coord, r.CustomerID, r.AgentID, string(r.AgentType), r.Type, r.Title, r.Description,
		r.Action, string(r.RiskLevel), r.EstimatedSavings, taskJSON(r.EstimatedImpact), affected, taskJSON(r.Parameters),
		deps, int64(r.Priority), r.Confidence, r.CreatedAt, coordTimePtr(r.ExpiresAt), string(r.Status),
		taskJSON(r.Metadata), r.SupersededBy)
	return err
}

func insertApproval(ctx context.Context, q coordQuerier, coord string, a orchestrator.Approval) error {
	votes, err := coordJSON(a.Approvals)
	if err != nil {
		return err
	}
	_, err = q.Exec(ctx, `INSERT INTO coordination_approvals (coordination_id, `+coordApprovalColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
		coord, a.ID, a.RecommendationID, a.CustomerID, string(a.RiskLevel), string(a.Status), a.RequestedBy,
		a.RequestedAt, a.ApprovedBy, coordTimePtr(a.ApprovedAt), a.RejectedBy, coordTimePtr(a.RejectedAt),
		a.RejectionReason, a.ExpiresAt, a.RequiredApprovals, votes)
	return err
}

func insertPlan(ctx context.Context, q coordQuerier, coord string, p orchestrator.Plan) error {
	steps, err := coordJSON(p.Steps)
	if err != nil {
		return err
	}
	_, err = q.Exec(ctx, `INSERT INTO coordination_plans (coordination_id, `+coordPlanColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		coord, p.ID, p.RecommendationID, p.CustomerID, steps, string(p.Status), p.CurrentStep, p.CreatedAt,
		coordTimePtr(p.StartedAt), coordTimePtr(p.CompletedAt), coordTimePtr(p.RolledBackAt), p.TotalDurationMS,
		p.WaitingFor)
	return err
}

// finish takes coordination_totals, last in the transaction: it adds
// records to the count, refusing with ErrFull when the count would pass
// maxRecords (a negative maxRecords sets no limit), and appends events
// with the next seqs.
func finish(ctx context.Context, tx pgx.Tx, records, maxRecords int, events []orchestrator.Event) error {
	if records == 0 && len(events) == 0 {
		return nil
	}
	var last int64
	err := tx.QueryRow(ctx, `UPDATE coordination_totals SET records = records + $1, event_seq = event_seq + $2
		WHERE $3::bigint < 0 OR records + $1 <= $3
		RETURNING event_seq`, int64(records), int64(len(events)), int64(maxRecords)).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		return coordination.ErrFull
	}
	if err != nil {
		return err
	}
	first := last - int64(len(events)) + 1
	for i, e := range events {
		if _, err := tx.Exec(ctx, `INSERT INTO coordination_events (`+coordEventColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			first+int64(i), e.At, e.CustomerID, string(e.Kind), e.SubjectID, e.Actor, e.RequestID, taskJSON(e.Details)); err != nil {
			return err
		}
	}
	return nil
}

// CreateCoordination implements coordination.Store: every row, then the
// count under coordination_totals' lock, in one transaction.
func (s *CoordinationStore) CreateCoordination(ctx context.Context, b coordination.Batch, maxRecords int) error {
	c := b.Coordination
	conflicts, err := coordJSON(c.Conflicts)
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO coordinations (`+coordinationColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			c.ID, c.CustomerID, c.CreatedAt, c.Actor, c.RequestID, c.TotalRecommendations, c.RecommendationsKept,
			c.ApprovalsRequired, c.AutoApproved, conflicts); err != nil {
			return err
		}
		for _, r := range b.Recommendations {
			if err := insertRecommendation(ctx, tx, c.ID, r); err != nil {
				return err
			}
		}
		for _, a := range b.Approvals {
			if err := insertApproval(ctx, tx, c.ID, a); err != nil {
				return err
			}
		}
		for _, p := range b.Plans {
			if err := insertPlan(ctx, tx, c.ID, p); err != nil {
				return err
			}
		}
		return finish(ctx, tx, b.Records(), max(maxRecords, 0), b.Events)
	})
}

// Coordination implements coordination.Store.
func (s *CoordinationStore) Coordination(ctx context.Context, id string) (coordination.Coordination, error) {
	if !storable(id) {
		return coordination.Coordination{}, coordination.ErrNotFound
	}
	c, err := scanCoordination(s.pool.QueryRow(ctx, `SELECT `+coordinationColumns+` FROM coordinations WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return coordination.Coordination{}, coordination.ErrNotFound
	}
	return c, coordErr(ctx, err)
}

// CoordinationRecords implements coordination.Store, in one snapshot.
func (s *CoordinationStore) CoordinationRecords(ctx context.Context, id string) (coordination.Batch, error) {
	if !storable(id) {
		return coordination.Batch{}, coordination.ErrNotFound
	}
	var b coordination.Batch
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		c, err := scanCoordination(tx.QueryRow(ctx, `SELECT `+coordinationColumns+` FROM coordinations WHERE id = $1`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return coordination.ErrNotFound
		}
		if err != nil {
			return err
		}
		b = coordination.Batch{Coordination: c}
		if b.Recommendations, err = coordRows(ctx, tx, scanRecommendation, `SELECT `+coordRecColumns+`
			FROM coordination_recommendations WHERE coordination_id = $1 ORDER BY seq`, id); err != nil {
			return err
		}
		if b.Approvals, err = coordRows(ctx, tx, scanApproval, `SELECT `+coordApprovalColumns+`
			FROM coordination_approvals WHERE coordination_id = $1 ORDER BY seq`, id); err != nil {
			return err
		}
		b.Plans, err = coordRows(ctx, tx, scanPlan, `SELECT `+coordPlanColumns+`
			FROM coordination_plans WHERE coordination_id = $1 ORDER BY seq`, id)
		return err
	})
	if err != nil {
		return coordination.Batch{}, err
	}
	// A coordination without records of a kind has none (nil), as the
	// memory store answers.
	if len(b.Recommendations) == 0 {
		b.Recommendations = nil
	}
	if len(b.Approvals) == 0 {
		b.Approvals = nil
	}
	if len(b.Plans) == 0 {
		b.Plans = nil
	}
	return b, nil
}

// coordRows runs sql and scans every row with scan; never nil.
func coordRows[T any](ctx context.Context, q coordQuerier, scan func(pgx.Row) (T, error), sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Recommendation implements coordination.Store.
func (s *CoordinationStore) Recommendation(ctx context.Context, id string) (orchestrator.Recommendation, error) {
	if !storable(id) {
		return orchestrator.Recommendation{}, coordination.ErrNotFound
	}
	r, err := scanRecommendation(s.pool.QueryRow(ctx, `SELECT `+coordRecColumns+`
		FROM coordination_recommendations WHERE record_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return orchestrator.Recommendation{}, coordination.ErrNotFound
	}
	return r, coordErr(ctx, err)
}

// coordFilter builds the WHERE clause of a list: each condition is added
// only when its filter is set, so that the planner sees a plain predicate
// it can match to an index, not "$1 is empty OR column = $1".
type coordFilter struct {
	conds []string
	args  []any
	none  bool // a filter no record can match
}

func (f *coordFilter) add(cond string, arg any) {
	f.args = append(f.args, arg)
	f.conds = append(f.conds, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(f.args))))
}

func (f *coordFilter) eq(column, value string) {
	switch {
	case !storable(value):
		// No stored text holds a NUL (PostgreSQL refuses it, even as a
		// parameter): the filter matches nothing.
		f.none = true
	case value != "":
		f.add(column+" = ?", value)
	}
}

// coordPage lists up to limit rows of table matching f after the cursor, in
// seq order, and the cursor of the next page ("" when no match follows):
// one more row than the page is read to know.
func coordPage[T any](ctx context.Context, s *CoordinationStore, scan func(pgx.Row) (T, error), columns, table string, f coordFilter, after string, limit int) ([]T, string, error) {
	if after != "" {
		n, err := strconv.ParseUint(after, 10, 63)
		if err != nil {
			return nil, "", &coordination.FieldError{Field: "after", Msg: "is not a cursor this store returned"}
		}
		f.add("seq > ?", int64(n))
	}
	if limit <= 0 || f.none {
		return []T{}, "", coordErr(ctx, ctx.Err())
	}
	where := ""
	if len(f.conds) > 0 {
		where = " WHERE " + strings.Join(f.conds, " AND ")
	}
	seqs := []int64{}
	out, err := coordRows(ctx, s.pool, func(row pgx.Row) (T, error) {
		var seq int64
		v, err := scan(extraRow{row, []any{&seq}})
		seqs = append(seqs, seq)
		return v, err
	}, `SELECT `+columns+`, seq FROM `+table+where+` ORDER BY seq LIMIT `+strconv.Itoa(limit+1), f.args...)
	if err != nil {
		return nil, "", coordErr(ctx, err)
	}
	if len(out) <= limit {
		return out, "", nil
	}
	return out[:limit], strconv.FormatInt(seqs[limit-1], 10), nil
}

// extraRow is a row with columns after the ones a record's scan function
// reads (a list's seq, a record's coordination_id): they go to extra.
type extraRow struct {
	pgx.Row
	extra []any
}

func (r extraRow) Scan(dest ...any) error { return r.Row.Scan(append(dest, r.extra...)...) }

// Recommendations implements coordination.Store.
func (s *CoordinationStore) Recommendations(ctx context.Context, q coordination.RecommendationQuery) ([]orchestrator.Recommendation, string, error) {
	var f coordFilter
	f.eq("customer_id", q.CustomerID)
	f.eq("status", string(q.Status))
	return coordPage(ctx, s, scanRecommendation, coordRecColumns, "coordination_recommendations", f, q.After, q.Limit)
}

// Approval implements coordination.Store.
func (s *CoordinationStore) Approval(ctx context.Context, id string) (orchestrator.Approval, error) {
	if !storable(id) {
		return orchestrator.Approval{}, coordination.ErrNotFound
	}
	a, err := scanApproval(s.pool.QueryRow(ctx, `SELECT `+coordApprovalColumns+` FROM coordination_approvals WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return orchestrator.Approval{}, coordination.ErrNotFound
	}
	return a, coordErr(ctx, err)
}

// Approvals implements coordination.Store.
func (s *CoordinationStore) Approvals(ctx context.Context, q coordination.ApprovalQuery) ([]orchestrator.Approval, string, error) {
	var f coordFilter
	f.eq("customer_id", q.CustomerID)
	f.eq("status", string(q.Status))
	f.eq("recommendation_id", q.RecommendationID)
	if !q.ExpiredBy.IsZero() {
		f.add("expires_at <= ?", q.ExpiredBy)
	}
	return coordPage(ctx, s, scanApproval, coordApprovalColumns, "coordination_approvals", f, q.After, q.Limit)
}

// Plan implements coordination.Store.
func (s *CoordinationStore) Plan(ctx context.Context, id string) (orchestrator.Plan, error) {
	if !storable(id) {
		return orchestrator.Plan{}, coordination.ErrNotFound
	}
	p, err := scanPlan(s.pool.QueryRow(ctx, `SELECT `+coordPlanColumns+` FROM coordination_plans WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return orchestrator.Plan{}, coordination.ErrNotFound
	}
	return p, coordErr(ctx, err)
}

// Plans implements coordination.Store.
func (s *CoordinationStore) Plans(ctx context.Context, q coordination.PlanQuery) ([]orchestrator.Plan, string, error) {
	var f coordFilter
	f.eq("customer_id", q.CustomerID)
	f.eq("status", string(q.Status))
	return coordPage(ctx, s, scanPlan, coordPlanColumns, "coordination_plans", f, q.After, q.Limit)
}

// recommendationIn is a copy of recommendation id, or the zero one when
// it is gone.
func recommendationIn(ctx context.Context, tx pgx.Tx, id string) (orchestrator.Recommendation, error) {
	r, err := scanRecommendation(tx.QueryRow(ctx, `SELECT `+coordRecColumns+`
		FROM coordination_recommendations WHERE record_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return orchestrator.Recommendation{}, nil
	}
	return r, err
}

// apply does eff in tx for a record of coordination coord whose
// recommendation is recID. A new plan is counted against no limit: it
// takes the place of the approval's answer, one per recommendation.
func apply(ctx context.Context, tx pgx.Tx, coord, recID string, eff coordination.Effects) error {
	if eff.RecommendationStatus != "" {
		if _, err := tx.Exec(ctx, `UPDATE coordination_recommendations SET status = $2 WHERE record_id = $1`,
			recID, string(eff.RecommendationStatus)); err != nil {
			return err
		}
	}
	records := 0
	if eff.Plan != nil {
		if err := insertPlan(ctx, tx, coord, *eff.Plan); err != nil {
			return err
		}
		records = 1
	}
	return finish(ctx, tx, records, -1, eff.Events)
}

// UpdateApproval implements coordination.Store.
func (s *CoordinationStore) UpdateApproval(ctx context.Context, id string, change func(*orchestrator.Approval, orchestrator.Recommendation) (coordination.Effects, error)) (orchestrator.Approval, error) {
	if !storable(id) {
		return orchestrator.Approval{}, coordination.ErrNotFound
	}
	var out orchestrator.Approval
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var coord string
		a, err := scanApproval(extraRow{tx.QueryRow(ctx, `SELECT `+coordApprovalColumns+`, coordination_id
			FROM coordination_approvals WHERE id = $1 FOR UPDATE`, id), []any{&coord}})
		if errors.Is(err, pgx.ErrNoRows) {
			return coordination.ErrNotFound
		}
		if err != nil {
			return err
		}
		out = a
		rec, err := recommendationIn(ctx, tx, a.RecommendationID)
		if err != nil {
			return err
		}
		updated := approvalCopy(a)
		eff, err := change(&updated, rec)
		if err != nil {
			return err
		}
		updated.ID, updated.RecommendationID, updated.CustomerID = a.ID, a.RecommendationID, a.CustomerID
		votes, err := coordJSON(updated.Approvals)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE coordination_approvals SET risk_level = $2, status = $3, requested_by = $4,
				requested_at = $5, approved_by = $6, approved_at = $7, rejected_by = $8, rejected_at = $9,
				rejection_reason = $10, expires_at = $11, required_approvals = $12, approvals = $13
			WHERE id = $1`,
			id, string(updated.RiskLevel), string(updated.Status), updated.RequestedBy, updated.RequestedAt,
			updated.ApprovedBy, coordTimePtr(updated.ApprovedAt), updated.RejectedBy, coordTimePtr(updated.RejectedAt),
			updated.RejectionReason, updated.ExpiresAt, updated.RequiredApprovals, votes); err != nil {
			return err
		}
		if err := apply(ctx, tx, coord, a.RecommendationID, eff); err != nil {
			return err
		}
		out = updated
		return nil
	})
	return out, err
}

// approvalCopy and planCopy copy what a change function may modify in
// place, so that the record as read stays whole for a failed change's
// answer.
func approvalCopy(a orchestrator.Approval) orchestrator.Approval {
	a.ApprovedAt, a.RejectedAt = clonePtr(a.ApprovedAt), clonePtr(a.RejectedAt)
	a.Approvals = slices.Clone(a.Approvals)
	return a
}

func planCopy(p orchestrator.Plan) orchestrator.Plan {
	p.Steps = slices.Clone(p.Steps)
	for i, st := range p.Steps {
		st.Parameters, st.Result = bytes.Clone(st.Parameters), bytes.Clone(st.Result)
		st.StartedAt, st.CompletedAt = clonePtr(st.StartedAt), clonePtr(st.CompletedAt)
		p.Steps[i] = st
	}
	p.StartedAt, p.CompletedAt, p.RolledBackAt = clonePtr(p.StartedAt), clonePtr(p.CompletedAt), clonePtr(p.RolledBackAt)
	return p
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// UpdatePlan implements coordination.Store.
func (s *CoordinationStore) UpdatePlan(ctx context.Context, id string, change func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error)) (orchestrator.Plan, error) {
	return s.updatePlan(ctx, id, nil, change)
}

// UpdateRun implements coordination.Store: UpdatePlan for the owner the
// plan's row names, read under the row's lock. A ClaimPlans skips a
// locked row, so no takeover comes between the check and the change.
func (s *CoordinationStore) UpdateRun(ctx context.Context, id, owner string, until time.Time, change func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error)) (orchestrator.Plan, error) {
	return s.updatePlan(ctx, id, &runLease{owner: owner, until: until}, change)
}

// runLease is the run lease an UpdateRun holds, and the time it extends
// it to.
type runLease struct {
	owner string
	until time.Time
}

// updatePlan is UpdatePlan, and UpdateRun when run is set. The plan's
// row is taken first, then its resource leases (in sorted order), the
// recommendation, coordination_totals last: the order every transaction
// of this store takes them in.
func (s *CoordinationStore) updatePlan(ctx context.Context, id string, run *runLease, change func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error)) (orchestrator.Plan, error) {
	if !storable(id) {
		return orchestrator.Plan{}, coordination.ErrNotFound
	}
	var out orchestrator.Plan
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var coord, owner string
		p, err := scanPlan(extraRow{tx.QueryRow(ctx, `SELECT `+coordPlanColumns+`, coordination_id, owner
			FROM coordination_plans WHERE id = $1 FOR UPDATE`, id), []any{&coord, &owner}})
		if errors.Is(err, pgx.ErrNoRows) {
			return coordination.ErrNotFound
		}
		if err != nil {
			return err
		}
		out = p
		// '' is the owner of a plan nobody has claimed or whose lease was
		// released: nobody holds that.
		if run != nil && (run.owner == "" || run.owner != owner) {
			return coordination.ErrLeaseLost
		}
		rec, err := recommendationIn(ctx, tx, p.RecommendationID)
		if err != nil {
			return err
		}
		updated := planCopy(p)
		eff, err := change(&updated, rec)
		if err != nil {
			return err
		}
		updated.ID, updated.RecommendationID, updated.CustomerID = p.ID, p.RecommendationID, p.CustomerID
		steps, err := coordJSON(updated.Steps)
		if err != nil {
			return err
		}
		var until pgtype.Timestamptz // NULL: UpdatePlan leaves the lease as it is
		if run != nil {
			until = pgtype.Timestamptz{Time: run.until, Valid: true}
		}
		if _, err := tx.Exec(ctx, `UPDATE coordination_plans SET steps = $2, status = $3, current_step = $4,
				created_at = $5, started_at = $6, completed_at = $7, rolled_back_at = $8, total_duration_ms = $9,
				waiting_for = $10, lease_until = coalesce($11, lease_until)
			WHERE id = $1`,
			id, steps, string(updated.Status), updated.CurrentStep, updated.CreatedAt, coordTimePtr(updated.StartedAt),
			coordTimePtr(updated.CompletedAt), coordTimePtr(updated.RolledBackAt), updated.TotalDurationMS,
			updated.WaitingFor, until); err != nil {
			return err
		}
		if err := leaseResources(ctx, tx, p.ID, p.CustomerID, eff); err != nil {
			return err
		}
		if err := apply(ctx, tx, coord, p.RecommendationID, eff); err != nil {
			return err
		}
		out = updated
		return nil
	})
	return out, err
}

// leaseResources does eff's Acquire and Release for plan id of customer
// in tx, which holds the plan's row.
//
// The leases to acquire are inserted first, in sorted order. An insert
// of a lease another transaction has inserted or deleted, and not yet
// committed, waits for it; since every plan inserts in the same order, a
// plan waiting for a lease holds only smaller ones, and no two wait for
// each other. Then a look at who holds them: one held by another plan
// refuses the whole update (the transaction rolls back, its inserts
// with it). Release deletes the plan's other leases last: the rows are
// this plan's own, which nobody else locks, so the deletes never wait
// while holding what another plan waits for.
func leaseResources(ctx context.Context, tx pgx.Tx, id, customer string, eff coordination.Effects) error {
	acquire := slices.Compact(slices.Sorted(slices.Values(eff.Acquire)))
	if acquire == nil {
		acquire = []string{} // an empty array, not NULL, for <> ALL below
	}
	if len(acquire) > 0 {
		tag, err := tx.Exec(ctx, `INSERT INTO coordination_resource_leases (customer_id, resource, plan_id)
			SELECT $1, r, $3 FROM unnest($2::text[]) AS r ORDER BY r
			ON CONFLICT (customer_id, resource) DO NOTHING`, customer, acquire, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() < int64(len(acquire)) {
			// Some were held: by this plan already (kept), or by another.
			busy := coordination.BusyError{}
			err := tx.QueryRow(ctx, `SELECT resource, plan_id FROM coordination_resource_leases
				WHERE customer_id = $1 AND resource = ANY($2) AND plan_id <> $3
				ORDER BY resource LIMIT 1`, customer, acquire, id).Scan(&busy.Resource, &busy.Holder)
			if err == nil {
				return &busy
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
	}
	if eff.Release {
		if _, err := tx.Exec(ctx, `DELETE FROM coordination_resource_leases WHERE plan_id = $1 AND resource <> ALL($2)`,
			id, acquire); err != nil {
			return err
		}
	}
	return nil
}

// Events implements coordination.Store.
func (s *CoordinationStore) Events(ctx context.Context, q coordination.EventQuery) ([]orchestrator.Event, uint64, error) {
	var f coordFilter
	if q.After > 0 {
		f.add("seq > ?", int64(min(q.After, math.MaxInt64))) //nolint:gosec // G115: bounded just above
	}
	f.eq("customer_id", q.CustomerID)
	if q.Limit <= 0 || f.none {
		return []orchestrator.Event{}, 0, coordErr(ctx, ctx.Err())
	}
	if !q.Since.IsZero() {
		f.add("at >= ?", q.Since)
	}
	where := ""
	if len(f.conds) > 0 {
		where = " WHERE " + strings.Join(f.conds, " AND ")
	}
	out, err := coordRows(ctx, s.pool, scanEvent, `SELECT `+coordEventColumns+` FROM coordination_events`+where+
		` ORDER BY seq LIMIT `+strconv.Itoa(q.Limit+1), f.args...)
	if err != nil {
		return nil, 0, coordErr(ctx, err)
	}
	if len(out) <= q.Limit {
		return out, 0, nil
	}
	return out[:q.Limit], out[q.Limit-1].Seq, nil
}

// CountRecommendations implements coordination.Store.
func (s *CoordinationStore) CountRecommendations(ctx context.Context) (map[orchestrator.RecommendationStatus]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT status, count(*) FROM coordination_recommendations GROUP BY status`)
	if err != nil {
		return nil, coordErr(ctx, err)
	}
	defer rows.Close()
	counts := map[orchestrator.RecommendationStatus]int{}
	for rows.Next() {
		var (
			status string
			n      int64
		)
		if err := rows.Scan(&status, &n); err != nil {
			return nil, coordErr(ctx, err)
		}
		counts[orchestrator.RecommendationStatus(status)] = int(n)
	}
	return counts, coordErr(ctx, rows.Err())
}

// Records implements coordination.Store.
func (s *CoordinationStore) Records(ctx context.Context) (int, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT records FROM coordination_totals`).Scan(&n)
	return int(n), coordErr(ctx, err)
}

// coordPlanTerminal is orchestrator.PlanStatus.Terminal in SQL: the plan
// states that are final (failed too: a failed plan with something to
// undo is rolling_back instead), so a coordination whose plans are all in
// them has settled.
const coordPlanTerminal = `('completed', 'failed', 'rolled_back', 'rollback_failed', 'cancelled')`

// coordSettledBefore selects up to $2 coordinations settled before $1
// (coordination.Store's Prune says when that is), skipping the ones
// another replica's prune holds. greatest ignores NULLs.
const coordSettledBefore = `SELECT c.id FROM coordinations c
	WHERE c.created_at < $1
	  AND NOT EXISTS (SELECT 1 FROM coordination_approvals a WHERE a.coordination_id = c.id AND a.status = 'pending')
	  AND NOT EXISTS (SELECT 1 FROM coordination_plans p WHERE p.coordination_id = c.id AND p.status NOT IN ` + coordPlanTerminal + `)
	  AND coalesce((SELECT max(greatest(a.approved_at, a.rejected_at, CASE WHEN a.status = 'expired' THEN a.expires_at END))
	      FROM coordination_approvals a WHERE a.coordination_id = c.id), '-infinity') < $1
	  AND coalesce((SELECT max(greatest(p.completed_at, p.rolled_back_at))
	      FROM coordination_plans p WHERE p.coordination_id = c.id), '-infinity') < $1
	ORDER BY c.created_at
	LIMIT $2
	FOR UPDATE OF c SKIP LOCKED`

// Prune implements coordination.Store, coordPruneBatch coordinations a
// transaction, then the events before cutoff, in batches too.
func (s *CoordinationStore) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	total := 0
	for {
		var n int
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, coordSettledBefore, cutoff, coordPruneBatch)
			if err != nil {
				return err
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil || len(ids) == 0 {
				n = 0
				return err
			}
			n = len(ids)
			var records int64
			if err := tx.QueryRow(ctx, `WITH
				r AS (DELETE FROM coordination_recommendations WHERE coordination_id = ANY($1) RETURNING 1),
				a AS (DELETE FROM coordination_approvals WHERE coordination_id = ANY($1) RETURNING 1),
				p AS (DELETE FROM coordination_plans WHERE coordination_id = ANY($1) RETURNING 1),
				c AS (DELETE FROM coordinations WHERE id = ANY($1) RETURNING json_array_length(conflicts) AS n)
				SELECT (SELECT count(*) FROM r) + (SELECT count(*) FROM a) + (SELECT count(*) FROM p)
					+ (SELECT coalesce(sum(n), 0) FROM c)`, ids).Scan(&records); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE coordination_totals SET records = records - $1`, records)
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < coordPruneBatch {
			break
		}
	}
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM coordination_events WHERE seq IN (
			SELECT seq FROM coordination_events WHERE at < $1 LIMIT $2)`, cutoff, coordPruneBatch*10)
		if err != nil {
			return total, coordErr(ctx, err)
		}
		if tag.RowsAffected() < coordPruneBatch*10 {
			return total, nil
		}
	}
}

// inTx runs f in a transaction and commits it, again when it lost to a
// concurrent one (a deadlock, a serialization failure): f reads what it
// changes, so a second run starts from the winner's result.
func (s *CoordinationStore) inTx(ctx context.Context, f func(pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.runTx(ctx, pgx.TxOptions{}, f)
		if err == nil || attempt == coordRetries || !isRetryable(err) || ctx.Err() != nil {
			return coordErr(ctx, err)
		}
	}
}

// readTx runs f in a read-only, repeatable-read transaction: the reads of
// f see one snapshot.
func (s *CoordinationStore) readTx(ctx context.Context, f func(pgx.Tx) error) error {
	return coordErr(ctx, s.runTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, f))
}

func (s *CoordinationStore) runTx(ctx context.Context, opts pgx.TxOptions, f func(pgx.Tx) error) error {
	tx, err := s.pool.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// coordErr turns a unique violation into coordination.ErrExists and a
// NUL character into a *coordination.FieldError, marks
// the errors that mean "the database cannot be reached now"
// (storeerr.ErrUnavailable: the API answers 503), and leaves the others:
// the store's sentinels, a change function's own errors, the caller's
// cancellation.
func coordErr(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, storeerr.ErrUnavailable) {
		return err
	}
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23505":
		return fmt.Errorf("%w: %s", coordination.ErrExists, pgErr.ConstraintName)
	case errors.As(err, &pgErr) && pgErr.Code == "22021":
		// A NUL in a text a client sent (a title, a reason): the memory
		// store keeps it, PostgreSQL text cannot. The client's to fix
		// (400), not the service's (500).
		return &coordination.FieldError{Field: "request", Msg: "a text field holds a NUL character (\\u0000), which cannot be stored"}
	}
	return unavailable(ctx, err)
}

// ClaimPlans implements coordination.Store in one statement: the
// subquery locks up to limit free or lapsed active plans, oldest first
// (the partial index coordination_plans_active), skipping the rows
// another transaction has locked: another replica's claim, whose plans
// are then its own, or an update in flight, whose plan the next claim
// will find. A row another claim took over since this statement's
// snapshot is read again once locked, and left: its lease is no longer
// lapsed.
func (s *CoordinationStore) ClaimPlans(ctx context.Context, owner string, now, until time.Time, limit int) ([]orchestrator.Plan, error) {
	if limit <= 0 {
		return nil, coordErr(ctx, ctx.Err())
	}
	if !storable(owner) {
		return nil, fmt.Errorf("postgres: a run lease owner must be UTF-8 without NUL, not %q", owner)
	}
	seqs := map[string]int64{}
	plans, err := coordRows(ctx, s.pool, func(row pgx.Row) (orchestrator.Plan, error) {
		var seq int64
		p, err := scanPlan(extraRow{row, []any{&seq}})
		seqs[p.ID] = seq
		return p, err
	}, `UPDATE coordination_plans SET owner = $1, lease_until = $3
		WHERE id IN (SELECT id FROM coordination_plans
			WHERE status IN ('running', 'rolling_back') AND (lease_until IS NULL OR lease_until <= $2)
			ORDER BY seq
			LIMIT $4
			FOR UPDATE SKIP LOCKED)
		RETURNING `+coordPlanColumns+`, seq`, owner, now, until, limit)
	if err != nil {
		return nil, coordErr(ctx, err)
	}
	// RETURNING follows no ORDER BY.
	slices.SortFunc(plans, func(a, b orchestrator.Plan) int { return cmp.Compare(seqs[a.ID], seqs[b.ID]) })
	return plans, nil
}

// RenewRuns implements coordination.Store.
func (s *CoordinationStore) RenewRuns(ctx context.Context, owner string, ids []string, until time.Time) ([]string, error) {
	renewable := []string{}
	for _, id := range ids {
		if storable(id) {
			renewable = append(renewable, id)
		}
	}
	renewed := map[string]bool{}
	if owner != "" && storable(owner) && len(renewable) > 0 {
		// A transaction of its own, to be run again should it lose a
		// deadlock to a Prune deleting plans it renews.
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `UPDATE coordination_plans SET lease_until = $3
				WHERE id = ANY($2) AND owner = $1
				RETURNING id`, owner, renewable, until)
			if err != nil {
				return err
			}
			got, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			clear(renewed)
			for _, id := range got {
				renewed[id] = true
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	} else if err := ctx.Err(); err != nil {
		return nil, coordErr(ctx, err)
	}
	var lost []string
	for _, id := range ids {
		if !renewed[id] {
			lost = append(lost, id)
		}
	}
	return lost, nil
}

// ReleaseRun implements coordination.Store.
func (s *CoordinationStore) ReleaseRun(ctx context.Context, id, owner string) error {
	if owner == "" || !storable(owner) || !storable(id) {
		return coordErr(ctx, ctx.Err())
	}
	_, err := s.pool.Exec(ctx, `UPDATE coordination_plans SET owner = '', lease_until = NULL
		WHERE id = $1 AND owner = $2`, id, owner)
	return coordErr(ctx, err)
}
