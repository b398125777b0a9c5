package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/storeerr"
)

// TaskStore is the task store and the shared queue in PostgreSQL (table
// tasks, migrations/00002_tasks.sql): a dispatch.Queue, on which every
// replica's dispatch.Cluster claims and delivers.
//
// Every change is a conditional UPDATE that never touches a terminal row
// (status NOT IN the terminal states), so a terminal state is final in SQL
// whichever replica writes. Claims run one at a time across the cluster
// under a transaction-scoped advisory lock, so the per-agent in-flight
// counts they read from the dispatched rows are exact. Notifications go
// out in the same transaction as the change they announce.
type TaskStore struct {
	pool *pgxpool.Pool
}

// NewTaskStore returns the store over pool, whose schema must be migrated.
func NewTaskStore(pool *pgxpool.Pool) *TaskStore { return &TaskStore{pool: pool} }

var _ dispatch.Queue = (*TaskStore)(nil)

// Channels of the task notifications, and the advisory lock of claims
// ("tasks/cl" in ASCII).
const (
	taskWakeChannel   = "orchestrator_tasks"
	taskCancelChannel = "orchestrator_task_cancel"
	taskClaimLockID   = 0x7461736b732f636c
)

// taskColumns are the columns of a dispatch.Task, in scanTask's order.
const taskColumns = `seq, id, task_type, agent_type, pinned_agent_id, agent_id, parameters, priority,
	timeout_seconds, max_retries, metadata, status, result, error, created_at, started_at, completed_at, retry_count`

const taskTerminal = `('completed', 'failed', 'timeout', 'cancelled')`

// taskNotifyWake is a statement that wakes the replicas when the
// transaction it runs in commits; taskNotifyIfWaiting only when tasks
// wait (a freed slot matters to nobody else).
const (
	taskNotifyWake      = `SELECT pg_notify('` + taskWakeChannel + `', '')`
	taskNotifyIfWaiting = taskNotifyWake + ` WHERE ` + taskAnyWaiting
)

// taskWaitingInOrder reads the waiting tasks in the order of their index
// (tasks_waiting), and every read of the waiting set goes through it: the
// planner then walks that partial index, which holds only waiting tasks,
// never the table, which holds every finished task kept for
// TASK_RETENTION. A plain EXISTS or count over status IN (...) is planned
// from the column's statistics, and after an ANALYZE that ran during a
// backlog it scans the whole table (measured: 280 µs per look over 6,400
// rows, growing with them).
const (
	taskWaitingInOrder = `SELECT seq FROM tasks WHERE status IN ('pending', 'retrying') ORDER BY priority DESC, seq`
	taskAnyWaiting     = `(` + taskWaitingInOrder + ` LIMIT 1) IS NOT NULL`
)

func scanTask(row pgx.Row, extra ...any) (dispatch.Task, error) {
	var (
		t                                dispatch.Task
		seq                              int64
		agentType, status                string
		params, meta, result             []byte
		created, started, completed      pgtype.Timestamptz
		priority, timeout, retries, rcnt int32
	)
	dest := append([]any{&seq, &t.ID, &t.TaskType, &agentType, &t.PinnedAgentID, &t.AgentID, &params, &priority,
		&timeout, &retries, &meta, &status, &result, &t.Error, &created, &started, &completed, &rcnt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return dispatch.Task{}, err
	}
	t.Seq = uint64(seq) //nolint:gosec // G115: an identity column, never negative
	t.AgentType, t.Status = registry.Type(agentType), dispatch.Status(status)
	t.Parameters, t.Metadata, t.Result = params, meta, result
	t.Priority, t.TimeoutSeconds, t.MaxRetries, t.RetryCount = int(priority), int(timeout), int(retries), int(rcnt)
	t.CreatedAt, t.StartedAt, t.CompletedAt = taskTime(created), taskTime(started), taskTime(completed)
	return t, nil
}

func taskTime(ts pgtype.Timestamptz) time.Time {
	if !ts.Valid {
		return time.Time{}
	}
	return ts.Time.UTC()
}

// taskNullTime is t, or NULL when zero.
func taskNullTime(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

// taskJSON is raw, or NULL when absent: a json column keeps the bytes.
func taskJSON(raw json.RawMessage) []byte {
	if raw == nil {
		return nil
	}
	return []byte(raw)
}

// Create implements dispatch.Store. The task's queue deadline counts from
// now on the database's clock.
func (s *TaskStore) Create(ctx context.Context, t dispatch.Task) (dispatch.Task, error) {
	return s.insert(ctx, s.pool, t)
}

type taskQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (s *TaskStore) insert(ctx context.Context, q taskQuerier, t dispatch.Task) (dispatch.Task, error) {
	if t.ID == "" {
		return dispatch.Task{}, errors.New("postgres: task ID empty")
	}
	var seq int64
	err := q.QueryRow(ctx, `INSERT INTO tasks (id, task_type, agent_type, pinned_agent_id, agent_id, parameters, priority,
			timeout_seconds, max_retries, metadata, status, result, error, created_at, started_at, completed_at, retry_count,
			deadline)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
			now() + $8::int * interval '1 second')
		RETURNING seq`,
		t.ID, t.TaskType, string(t.AgentType), t.PinnedAgentID, t.AgentID, taskJSON(t.Parameters), t.Priority,
		t.TimeoutSeconds, t.MaxRetries, taskJSON(t.Metadata), string(t.Status), taskJSON(t.Result), t.Error,
		t.CreatedAt, taskNullTime(t.StartedAt), taskNullTime(t.CompletedAt), t.RetryCount).Scan(&seq)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return dispatch.Task{}, fmt.Errorf("postgres: task ID %.64q: %w", t.ID, dispatch.ErrExists)
		}
		return dispatch.Task{}, taskErr(err)
	}
	t.Seq = uint64(seq) //nolint:gosec // G115: an identity column, never negative
	return t, nil
}

// Get implements dispatch.Store.
func (s *TaskStore) Get(ctx context.Context, id string) (dispatch.Task, error) {
	if !storable(id) {
		return dispatch.Task{}, dispatch.ErrNotFound
	}
	t, err := scanTask(s.pool.QueryRow(ctx, `SELECT `+taskColumns+` FROM tasks WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return dispatch.Task{}, dispatch.ErrNotFound
	}
	return t, taskErr(err)
}

// Update implements dispatch.Store: the row is read under FOR UPDATE, the
// change applied in Go and written back, in one transaction.
func (s *TaskStore) Update(ctx context.Context, id string, change func(*dispatch.Task) error) (dispatch.Task, error) {
	if !storable(id) {
		return dispatch.Task{}, dispatch.ErrNotFound
	}
	var out dispatch.Task
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		t, err := scanTask(tx.QueryRow(ctx, `SELECT `+taskColumns+` FROM tasks WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return dispatch.ErrNotFound
		}
		if err != nil {
			return err
		}
		out = t
		if t.Status.Terminal() {
			return dispatch.ErrFinished
		}
		updated := t
		if err := change(&updated); err != nil {
			return err
		}
		updated.ID, updated.Seq = t.ID, t.Seq
		tag, err := tx.Exec(ctx, `UPDATE tasks SET task_type = $2, agent_type = $3, pinned_agent_id = $4, agent_id = $5,
				parameters = $6, priority = $7, timeout_seconds = $8, max_retries = $9, metadata = $10, status = $11,
				result = $12, error = $13, created_at = $14, started_at = $15, completed_at = $16, retry_count = $17
			WHERE id = $1 AND status NOT IN `+taskTerminal,
			id, updated.TaskType, string(updated.AgentType), updated.PinnedAgentID, updated.AgentID,
			taskJSON(updated.Parameters), updated.Priority, updated.TimeoutSeconds, updated.MaxRetries,
			taskJSON(updated.Metadata), string(updated.Status), taskJSON(updated.Result), updated.Error,
			updated.CreatedAt, taskNullTime(updated.StartedAt), taskNullTime(updated.CompletedAt), updated.RetryCount)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return dispatch.ErrFinished // unreachable under FOR UPDATE; the guard is the SQL's
		}
		out = updated
		return nil
	})
	return out, err
}

// List implements dispatch.Store.
func (s *TaskStore) List(ctx context.Context, q dispatch.Query) ([]dispatch.Task, error) {
	if q.After > math.MaxInt64 || q.Limit <= 0 {
		return nil, ctx.Err() // past every Seq the identity column can hold
	}
	rows, err := s.pool.Query(ctx, `SELECT `+taskColumns+` FROM tasks
		WHERE seq > $1 AND ($2 = '' OR status = $2) ORDER BY seq LIMIT $3`,
		int64(q.After), string(q.Status), q.Limit) //nolint:gosec // G115: checked above
	if err != nil {
		return nil, taskErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (dispatch.Task, error) { return scanTask(r) })
	return out, taskErr(err)
}

// taskPruneBatch bounds the rows one DELETE removes, so that pruning a large
// backlog never holds locks or bloats a transaction for long.
const taskPruneBatch = 1000

// Prune implements dispatch.Store, in batches of taskPruneBatch rows.
func (s *TaskStore) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	total := 0
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM tasks WHERE id IN (
			SELECT id FROM tasks WHERE completed_at < $1 LIMIT $2)`, cutoff, taskPruneBatch)
		if err != nil {
			return total, taskErr(err)
		}
		total += int(tag.RowsAffected())
		if tag.RowsAffected() < taskPruneBatch {
			return total, nil
		}
	}
}

// Enqueue implements dispatch.Queue in one round trip: the insert, if
// fewer than maxPending tasks wait, in a transaction of its own, then the
// direct claim in another.
//
// The insert's commit waits for the WAL flush: a 201 promises the task is
// kept. The count is not locked through that commit, which would make
// every submission in the cluster wait for the previous one's flush:
// submissions racing for the last places may pass maxPending by at most
// their number (replicas x DATABASE_MAX_CONNS). Every task waits in the
// table until a claim takes it, if only for a moment, so a maxPending of
// 0 counts as 1.
//
// The direct claim runs under the claim lock, like Claim, when no claim
// holds it, and commits asynchronously, like Claim: a lost claim is a
// redelivery.
func (s *TaskStore) Enqueue(ctx context.Context, t dispatch.Task, maxPending int, direct dispatch.DirectClaim) (dispatch.Task, *dispatch.Claimed, error) {
	if t.ID == "" {
		return dispatch.Task{}, nil, errors.New("postgres: task ID empty")
	}
	t.Status = dispatch.StatusPending
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`INSERT INTO tasks (id, task_type, agent_type, pinned_agent_id, parameters, priority,
			timeout_seconds, max_retries, metadata, status, created_at, deadline)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, now() + $7::int * interval '1 second'
		WHERE (SELECT count(*) FROM (`+taskWaitingInOrder+` LIMIT greatest($11, 1)) w) < greatest($11, 1)
		RETURNING seq`,
		t.ID, t.TaskType, string(t.AgentType), t.PinnedAgentID, taskJSON(t.Parameters), t.Priority,
		t.TimeoutSeconds, t.MaxRetries, taskJSON(t.Metadata), t.CreatedAt, maxPending)
	b.Queue(`COMMIT`)
	claiming := len(direct.Agents) > 0
	if claiming {
		// The claim lock only if it is free: this connection must not wait
		// for it, because the claim that holds it may be waiting for a
		// connection of this pool (to read candidates). A claim running
		// elsewhere will look at t anyway. Whether the lock was taken is
		// kept in a setting of the transaction, read by the claim below,
		// whose snapshot comes after the lock.
		b.Queue(`BEGIN`)
		b.Queue(setAsyncCommit)
		b.Queue(`SET LOCAL enable_seqscan TO off`)
		b.Queue(`SELECT set_config('orchestrator.claim_locked', pg_try_advisory_xact_lock($1)::text, true)`, int64(taskClaimLockID))
		// The least loaded agent under the limit, the first among equals;
		// and t only if no other task waits that could start now (the
		// conditions of queueWaitingPage), or it would pass that one.
		b.Queue(`WITH pick AS (
				SELECT c.id FROM unnest($1::text[]) WITH ORDINALITY AS c(id, ord),
					LATERAL (SELECT count(*) AS n FROM tasks WHERE status = 'dispatched' AND agent_id = c.id) l
				WHERE l.n < $2
				ORDER BY l.n, c.ord
				LIMIT 1)
			UPDATE tasks t SET status = 'dispatched', agent_id = pick.id, attempts = 1, retry_count = 0,
				tried = ARRAY[pick.id], started_at = now(),
				lease_owner = $4, lease_expires = now() + $5 * interval '1 microsecond'
			FROM pick
			WHERE t.id = $3 AND t.status = 'pending' AND t.attempts = 0
				AND current_setting('orchestrator.claim_locked') = 'true'
				AND (SELECT seq FROM tasks w
					WHERE w.status IN ('pending', 'retrying') AND w.id <> $3
						AND (w.not_before IS NULL OR w.not_before <= now()) AND w.deadline > now()
					ORDER BY w.priority DESC, w.seq LIMIT 1) IS NULL
			RETURNING `+taskPrefixed("t.", taskColumns)+`, t.attempts`,
			direct.Agents, direct.Limit, t.ID, direct.Owner, direct.Lease.Microseconds())
		b.Queue(`COMMIT`)
	}
	br := s.pool.SendBatch(ctx, b)
	var seq int64
	var claimed []dispatch.Claimed
	_, err := br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&seq)
	}
	full := errors.Is(err, pgx.ErrNoRows)
	if full {
		err = nil
	}
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil && claiming {
		if err = execClaimBegin(br); err == nil {
			var rows pgx.Rows
			if rows, err = br.Query(); err == nil {
				claimed, err = collectClaimed(rows, direct.Owner)
			}
		}
		if err == nil {
			_, err = br.Exec()
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	var pgErr *pgconn.PgError
	switch {
	case err == nil && full:
		return dispatch.Task{}, nil, dispatch.ErrQueueFull
	case errors.As(err, &pgErr) && pgErr.Code == "23505":
		return dispatch.Task{}, nil, fmt.Errorf("postgres: task ID %.64q: %w", t.ID, dispatch.ErrExists)
	case err != nil:
		return dispatch.Task{}, nil, taskErr(err)
	}
	t.Seq = uint64(seq) //nolint:gosec // G115: an identity column, never negative
	if len(claimed) == 0 {
		return t, nil, nil
	}
	return t, &claimed[0], nil
}

// Wake implements dispatch.Queue.
func (s *TaskStore) Wake(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, taskNotifyWake)
	return taskErr(err)
}

// taskClaimPage is how many waiting tasks a claim reads at a time; taskMinNext
// keeps a replica whose look at the queue fails from looking again in a
// tight loop.
const (
	taskClaimPage = 100
	taskMinNext   = 10 * time.Millisecond
)

// Claim implements dispatch.Queue, in two round trips when one page of
// waiting tasks is enough: BEGIN, the lock, the in-flight counts and the
// first page in one batch; the claims, what is left and COMMIT in another.
func (s *TaskStore) Claim(ctx context.Context, req dispatch.ClaimRequest) (dispatch.ClaimResult, error) {
	res, err := s.claim(ctx, req)
	return res, taskErr(err)
}

func (s *TaskStore) claim(ctx context.Context, req dispatch.ClaimRequest) (dispatch.ClaimResult, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return dispatch.ClaimResult{}, err
	}
	// A connection released inside the transaction (any error below) is
	// closed by the pool, which rolls the transaction back.
	defer conn.Release()

	b := &pgx.Batch{}
	queueClaimBegin(b)
	b.Queue(`SELECT agent_id, count(*) FROM tasks WHERE status = 'dispatched' GROUP BY agent_id`)
	queueWaitingPage(b, nil, true, 0, 0)
	br := conn.SendBatch(ctx, b)
	inFlight := map[string]int{}
	var page []dispatch.Claimable
	err = func() error {
		defer br.Close()
		if err := execClaimBegin(br); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		var agentID string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&agentID, &n}, func() error { inFlight[agentID] = n; return nil }); err != nil {
			return err
		}
		if page, err = collectWaiting(br.Query()); err != nil {
			return err
		}
		return br.Close()
	}()
	if err != nil {
		return dispatch.ClaimResult{}, err
	}

	var ids, agents []string
	blocked := []string{}
	for {
		var lastPriority int
		var lastSeq int64
		for _, c := range page {
			lastPriority, lastSeq = c.Priority, int64(c.Seq) //nolint:gosec // G115: from a bigint
			key := routeKey(c.Task)
			if len(ids) == req.Limit || slices.Contains(blocked, key) {
				continue
			}
			agent, ok, err := req.Choose(ctx, c, inFlight)
			if err != nil {
				return dispatch.ClaimResult{}, err
			}
			if !ok {
				blocked = append(blocked, key)
				continue
			}
			inFlight[agent]++
			ids, agents = append(ids, c.ID), append(agents, agent)
		}
		if len(page) < taskClaimPage || len(ids) == req.Limit {
			break
		}
		pb := &pgx.Batch{}
		queueWaitingPage(pb, blocked, false, lastPriority, lastSeq)
		pbr := conn.SendBatch(ctx, pb)
		page, err = collectWaiting(pbr.Query())
		if cerr := pbr.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return dispatch.ClaimResult{}, err
		}
	}

	var res dispatch.ClaimResult
	b = &pgx.Batch{}
	if len(ids) > 0 {
		b.Queue(`UPDATE tasks t SET status = 'dispatched', agent_id = c.agent_id,
				attempts = t.attempts + 1, retry_count = t.attempts,
				tried = CASE WHEN c.agent_id = ANY (t.tried) THEN t.tried ELSE array_append(t.tried, c.agent_id) END,
				started_at = coalesce(t.started_at, now()), not_before = NULL,
				lease_owner = $3, lease_expires = now() + $4 * interval '1 microsecond'
			FROM unnest($1::text[], $2::text[]) AS c(id, agent_id)
			WHERE t.id = c.id AND t.status IN ('pending', 'retrying')
			RETURNING `+taskPrefixed("t.", taskColumns)+`, t.attempts`,
			ids, agents, req.Owner, req.Lease.Microseconds())
	}
	// What is left. now() is the transaction's start, which the pages
	// used as well: a backoff that ended since then is still ahead here,
	// so its task is claimed on the next look, not forgotten.
	b.Queue(`SELECT
			` + taskAnyWaiting + `,
			EXTRACT(EPOCH FROM least(
				(SELECT min(not_before) FROM tasks WHERE status = 'retrying' AND not_before > now()),
				(SELECT min(deadline) FROM tasks WHERE status IN ('pending', 'retrying'))) - clock_timestamp())::float8`)
	b.Queue(`COMMIT`)
	br = conn.SendBatch(ctx, b)
	defer br.Close()
	if len(ids) > 0 {
		rows, err := br.Query()
		if err != nil {
			return dispatch.ClaimResult{}, err
		}
		if res.Claimed, err = collectClaimed(rows, req.Owner); err != nil {
			return dispatch.ClaimResult{}, err
		}
	}
	var next pgtype.Float8
	if err := br.QueryRow().Scan(&res.Waiting, &next); err != nil {
		return dispatch.ClaimResult{}, err
	}
	if _, err := br.Exec(); err != nil {
		return dispatch.ClaimResult{}, err
	}
	if err := br.Close(); err != nil {
		return dispatch.ClaimResult{}, err
	}
	if next.Valid {
		res.Next = max(time.Duration(next.Float64*float64(time.Second)), taskMinNext)
	}
	return res, nil
}

// queueClaimBegin queues the start of a claim's transaction, up to the
// claim lock, which one claim holds at a time across the cluster;
// execClaimBegin reads their results.
func queueClaimBegin(b *pgx.Batch) {
	b.Queue(`BEGIN`)
	b.Queue(setAsyncCommit) // see asyncCommit: a lost claim is a redelivery
	// Every read of a claim has a partial index that holds only the rows it
	// wants (waiting or dispatched tasks); the table holds every finished
	// one as well. Statistics taken during a backlog make a scan of the
	// table look cheaper; it never is.
	b.Queue(`SET LOCAL enable_seqscan TO off`)
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(taskClaimLockID))
}

func execClaimBegin(br pgx.BatchResults) error {
	for range 4 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	return nil
}

// collectClaimed reads the tasks a claim's UPDATE returned (the task's
// columns, then attempts), each leased to owner.
func collectClaimed(rows pgx.Rows, owner string) ([]dispatch.Claimed, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (dispatch.Claimed, error) {
		var attempt int32
		t, err := scanTask(r, &attempt)
		return dispatch.Claimed{Task: t, Lease: dispatch.Lease{ID: t.ID, Owner: owner, Attempt: int(attempt)}}, err
	})
}

// queueWaitingPage queues the read of the next taskClaimPage waiting tasks,
// best first, after the one at (lastPriority, lastSeq) unless first,
// leaving out the blocked routes and the tasks not claimable yet (in their
// backoff) or any more (past their deadline: ExpireWaiting's).
func queueWaitingPage(b *pgx.Batch, blocked []string, first bool, lastPriority int, lastSeq int64) {
	if blocked == nil {
		blocked = []string{}
	}
	b.Queue(`SELECT `+taskColumns+`, attempts, tried FROM tasks
		WHERE status IN ('pending', 'retrying')
			AND (not_before IS NULL OR not_before <= now()) AND deadline > now()
			AND (agent_type || '/' || task_type || '/' || pinned_agent_id) <> ALL ($1::text[])
			AND ($2 OR priority < $3 OR (priority = $3 AND seq > $4))
		ORDER BY priority DESC, seq
		LIMIT $5`, blocked, first, lastPriority, lastSeq, taskClaimPage)
}

func collectWaiting(rows pgx.Rows, err error) ([]dispatch.Claimable, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (dispatch.Claimable, error) {
		var c dispatch.Claimable
		var attempts int32
		var err error
		c.Task, err = scanTask(r, &attempts, &c.Tried)
		c.Attempts = int(attempts)
		return c, err
	})
}

// routeKey is what decides which agents can take t, as waitingPage spells
// it.
func routeKey(t dispatch.Task) string {
	return string(t.AgentType) + "/" + t.TaskType + "/" + t.PinnedAgentID
}

// taskPrefixed qualifies every column of a comma-separated list.
func taskPrefixed(prefix, columns string) string {
	out := make([]byte, 0, len(columns)*2)
	out = append(out, prefix...)
	for i := 0; i < len(columns); i++ {
		out = append(out, columns[i])
		if columns[i] == ',' {
			for i+1 < len(columns) && (columns[i+1] == ' ' || columns[i+1] == '\n' || columns[i+1] == '\t') {
				i++
				out = append(out, columns[i])
			}
			out = append(out, prefix...)
		}
	}
	return string(out)
}

// Finish implements dispatch.Queue.
func (s *TaskStore) Finish(ctx context.Context, l dispatch.Lease, status dispatch.Status, result json.RawMessage, msg string) (dispatch.Task, error) {
	if !status.Terminal() {
		return dispatch.Task{}, fmt.Errorf("postgres: Finish with %s, not a terminal status", status)
	}
	return s.leased(ctx, l, taskNotifyIfWaiting, `UPDATE tasks SET status = $4, result = $5, error = $6, completed_at = now(),
			lease_owner = '', lease_expires = NULL
		WHERE id = $1 AND status = 'dispatched' AND lease_owner = $2 AND attempts = $3
		RETURNING `+taskColumns, string(status), taskJSON(result), msg)
}

// Retry implements dispatch.Queue.
func (s *TaskStore) Retry(ctx context.Context, l dispatch.Lease, msg string, delay time.Duration) (dispatch.Task, error) {
	return s.leased(ctx, l, taskNotifyWake, `UPDATE tasks SET status = 'retrying', error = $4,
			not_before = now() + $5 * interval '1 microsecond',
			deadline = now() + $5 * interval '1 microsecond' + timeout_seconds * interval '1 second',
			lease_owner = '', lease_expires = NULL
		WHERE id = $1 AND status = 'dispatched' AND lease_owner = $2 AND attempts = $3
		RETURNING `+taskColumns, msg, delay.Microseconds())
}

// leased runs update, a conditional UPDATE of l's task RETURNING its
// columns, and notify, which wakes the replicas, in one batch: one round
// trip, one transaction. When it changed nothing, it says why.
func (s *TaskStore) leased(ctx context.Context, l dispatch.Lease, notify, update string, args ...any) (dispatch.Task, error) {
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(setAsyncCommit) // see asyncCommit: a lost outcome is a redelivery
	b.Queue(update, append([]any{l.ID, l.Owner, l.Attempt}, args...)...)
	b.Queue(notify)
	b.Queue(`COMMIT`)
	br := s.pool.SendBatch(ctx, b)
	var err error
	for i := 0; i < 2 && err == nil; i++ {
		_, err = br.Exec()
	}
	var t dispatch.Task
	if err == nil {
		t, err = scanTask(br.QueryRow())
	}
	for i := 0; i < 2 && err == nil; i++ {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return t, taskErr(err)
	}
	t, err = s.Get(ctx, l.ID)
	switch {
	case err != nil:
		return t, err
	case t.Status.Terminal():
		return t, dispatch.ErrFinished
	}
	return t, dispatch.ErrLeaseLost
}

// Release implements dispatch.Queue.
func (s *TaskStore) Release(ctx context.Context, leases []dispatch.Lease) ([]string, error) {
	if len(leases) == 0 {
		return nil, nil
	}
	ids, owners, attempts := make([]string, len(leases)), make([]string, len(leases)), make([]int32, len(leases))
	for i, l := range leases {
		ids[i], owners[i], attempts[i] = l.ID, l.Owner, int32(l.Attempt) //nolint:gosec // G115: attempts are few
	}
	var released []string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE tasks t SET
				status = CASE WHEN t.attempts > 1 THEN 'retrying' ELSE 'pending' END,
				attempts = t.attempts - 1, not_before = NULL,
				deadline = now() + t.timeout_seconds * interval '1 second',
				lease_owner = '', lease_expires = NULL
			FROM unnest($1::text[], $2::text[], $3::int[]) AS l(id, owner, attempt)
			WHERE t.id = l.id AND t.status = 'dispatched' AND t.lease_owner = l.owner AND t.attempts = l.attempt
			RETURNING t.id`, ids, owners, attempts)
		if err != nil {
			return err
		}
		if released, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(released) == 0 {
			return err
		}
		_, err = tx.Exec(ctx, taskNotifyWake)
		return err
	})
	return released, err
}

// Renew implements dispatch.Queue: one UPDATE for all of owner's leases.
func (s *TaskStore) Renew(ctx context.Context, owner string, ids []string, lease time.Duration) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `UPDATE tasks SET lease_expires = now() + $3 * interval '1 microsecond'
		WHERE status = 'dispatched' AND lease_owner = $1 AND id = ANY ($2::text[])
		RETURNING id`, owner, ids, lease.Microseconds())
	if err != nil {
		return nil, taskErr(err)
	}
	renewed, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return renewed, taskErr(err)
}

// Rescue implements dispatch.Queue. Rows another replica is rescuing at the
// same moment are skipped (SKIP LOCKED), and the UPDATE checks the lease
// again, so running it everywhere is safe.
func (s *TaskStore) Rescue(ctx context.Context, msg string) ([]dispatch.Task, error) {
	return s.changed(ctx, `WITH lapsed AS (
			SELECT id FROM tasks WHERE status = 'dispatched' AND lease_expires < now()
			FOR UPDATE SKIP LOCKED)
		UPDATE tasks t SET
			status = CASE WHEN t.attempts > t.max_retries THEN 'failed' ELSE 'retrying' END,
			completed_at = CASE WHEN t.attempts > t.max_retries THEN now() END,
			error = $1, not_before = NULL,
			deadline = now() + t.timeout_seconds * interval '1 second',
			lease_owner = '', lease_expires = NULL
		FROM lapsed WHERE t.id = lapsed.id AND t.status = 'dispatched' AND t.lease_expires < now()
		RETURNING `+taskPrefixed("t.", taskColumns), msg)
}

// ExpireWaiting implements dispatch.Queue. A concurrent run elsewhere
// waits for the row, sees it terminal and skips it.
func (s *TaskStore) ExpireWaiting(ctx context.Context) ([]dispatch.Task, error) {
	return s.changed(ctx, `UPDATE tasks SET status = 'timeout', completed_at = now(),
			error = 'no ' || agent_type || ' agent with the capability "' || task_type
				|| '" had a free slot within ' || timeout_seconds || 's'
				|| CASE WHEN error <> '' THEN '; last attempt: ' || error ELSE '' END
		WHERE status IN ('pending', 'retrying') AND deadline <= now()
		RETURNING `+taskColumns)
}

// changed runs update, which RETURNs the tasks it changed, and wakes the
// replicas when it changed any.
func (s *TaskStore) changed(ctx context.Context, update string, args ...any) ([]dispatch.Task, error) {
	var out []dispatch.Task
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		// The rows wanted are in a partial index (lapsed leases, waiting
		// tasks' deadlines): see the claim's enable_seqscan.
		if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan TO off`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, update, args...)
		if err != nil {
			return err
		}
		if out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (dispatch.Task, error) { return scanTask(r) }); err != nil || len(out) == 0 {
			return err
		}
		_, err = tx.Exec(ctx, taskNotifyWake)
		return err
	})
	return out, err
}

// Cancel implements dispatch.Queue.
func (s *TaskStore) Cancel(ctx context.Context, id, msg string) (dispatch.Task, error) {
	if !storable(id) {
		return dispatch.Task{}, dispatch.ErrNotFound
	}
	var out dispatch.Task
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		t, err := scanTask(tx.QueryRow(ctx, `SELECT `+taskColumns+` FROM tasks WHERE id = $1 FOR UPDATE`, id))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return dispatch.ErrNotFound
		case err != nil:
			return err
		case t.Status.Terminal():
			out = t
			return dispatch.ErrFinished
		}
		if out, err = scanTask(tx.QueryRow(ctx, `UPDATE tasks SET status = 'cancelled', error = $2, completed_at = now(),
				lease_owner = '', lease_expires = NULL
			WHERE id = $1 AND status NOT IN `+taskTerminal+` RETURNING `+taskColumns, id, msg)); err != nil {
			return err
		}
		if t.Status != dispatch.StatusDispatched {
			return nil
		}
		// Its replica aborts the delivery, and the agent's slot is free.
		_, err = tx.Exec(ctx, `SELECT pg_notify('`+taskCancelChannel+`', $1), pg_notify('`+taskWakeChannel+`', '')`, id)
		return err
	})
	return out, err
}

// Waiting implements dispatch.Queue.
func (s *TaskStore) Waiting(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (`+taskWaitingInOrder+`) w`).Scan(&n)
	return n, taskErr(err)
}

// taskListenRetry is how long the listening connection waits before it
// connects again after losing the database.
const taskListenRetry = time.Second

// Listen implements dispatch.Queue on a connection of its own (not the
// pool's), which it opens again whenever it is lost. The connection
// listens on both channels before anything else runs, so the call to
// n.Connected (the backlog of the wake channel) comes after both.
func (s *TaskStore) Listen(ctx context.Context, n dispatch.Notifications) error {
	l := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
			if err != nil {
				return nil, err
			}
			if _, err := conn.Exec(ctx, `LISTEN `+taskWakeChannel+`; LISTEN `+taskCancelChannel); err != nil {
				_ = conn.Close(ctx)
				return nil, err
			}
			return conn, nil
		},
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() == nil && n.Error != nil {
				n.Error(taskErr(err))
			}
		},
		ReconnectDelay: taskListenRetry,
	}
	l.Handle(taskWakeChannel, wakeHandler{n})
	l.Handle(taskCancelChannel, pgxlisten.HandlerFunc(func(_ context.Context, note *pgconn.Notification, _ *pgx.Conn) error {
		n.Cancelled(note.Payload)
		return nil
	}))
	err := l.Listen(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// wakeHandler wakes on every notification, and says it is connected after
// every connection: what was sent while the listener was away is lost.
type wakeHandler struct{ n dispatch.Notifications }

func (w wakeHandler) HandleNotification(context.Context, *pgconn.Notification, *pgx.Conn) error {
	w.n.Wake()
	return nil
}

func (w wakeHandler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	w.n.Connected()
	return nil
}

// inTx runs f in a transaction, committed when f returns nil. The errors
// of the store's own (ErrNotFound, ErrFinished, ...) pass through
// unchanged; the database's are classified by taskErr.
func (s *TaskStore) inTx(ctx context.Context, f func(pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return taskErr(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := f(tx); err != nil {
		return taskErr(err)
	}
	return taskErr(tx.Commit(ctx))
}

// taskErr marks the errors that mean "the database cannot be reached now"
// (storeerr.ErrUnavailable: the API answers 503), and leaves the others.
func taskErr(err error) error {
	if err == nil || errors.Is(err, storeerr.ErrUnavailable) {
		return err
	}
	for _, own := range []error{dispatch.ErrNotFound, dispatch.ErrFinished, dispatch.ErrLeaseLost, dispatch.ErrQueueFull} {
		if errors.Is(err, own) {
			return err
		}
	}
	if errors.Is(err, context.Canceled) {
		return err // the caller gave up: nothing to say about the database
	}
	// A statement that ran out of its own deadline (the dispatcher's store
	// timeout) met a database that did not answer.
	if isConnectionError(err) || errors.Is(err, context.DeadlineExceeded) {
		return storeerr.Unavailable(err)
	}
	return err
}
