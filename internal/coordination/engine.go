package coordination

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Actor is who acts on the engine, and in which request.
type Actor struct {
	// Name is who acts: an operator's name, or the body's user_id when
	// authentication is off (the API decides which). Decisions (approve,
	// reject, cancel) refuse an empty one with a FieldError on user_id.
	Name string
	// RequestID is the request's X-Request-ID, recorded in the events.
	RequestID string
}

// EngineOptions are what NewEngine builds an Engine from.
type EngineOptions struct {
	Store  Store
	Config Config
	// Logger defaults to one that logs nothing.
	Logger *zap.Logger
	// Metrics, when set, is where the engine registers its series.
	Metrics prometheus.Registerer
	// Now defaults to time.Now; tests pass a fake clock.
	Now func() time.Time
	// NewID names every record; it defaults to random UUIDs.
	NewID func() string
	// Tasks, when set, is the dispatcher plans are executed through;
	// without it plans cannot run (ErrExecutionUnavailable).
	Tasks Tasks
	// Owner names this executor in the plans' run leases; it must differ
	// from every other replica's. It defaults to a random one.
	Owner string
}

// Engine coordinates recommendations over a Store: it decides each batch
// (Coordinate), takes people's decisions (Approve, Reject, CancelPlan),
// expires approvals and prunes settled records (Sweep, Run), and records
// every change in the audit log. Its methods are safe for concurrent use;
// every read-modify-write is one atomic Store update, so concurrent
// decisions on one approval have one winner, across replicas sharing a
// store too.
type Engine struct {
	store   Store
	cfg     Config
	log     *zap.Logger
	now     func() time.Time
	newID   func() string
	metrics *metrics
	tasks   Tasks
	owner   string
	runner  *runner
}

// NewEngine returns an engine over o.Store, after checking o.Config and
// registering the metrics.
func NewEngine(o EngineOptions) (*Engine, error) {
	if o.Store == nil {
		return nil, errors.New("coordination: NewEngine without a Store")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{store: o.Store, cfg: o.Config, log: o.Logger, now: o.Now, newID: o.NewID, tasks: o.Tasks, owner: o.Owner, runner: newRunner()}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.newID == nil {
		e.newID = uuid.NewString
	}
	if e.owner == "" {
		e.owner = uuid.NewString()
	}
	m, err := newMetrics(o.Metrics, e)
	if err != nil {
		return nil, err
	}
	e.metrics = m
	return e, nil
}

// event is an event of the actor's, at now.
func event(now time.Time, actor Actor, customer string, kind orchestrator.EventKind, subject string, details map[string]any) orchestrator.Event {
	e := orchestrator.Event{At: now, CustomerID: customer, Kind: kind, SubjectID: subject,
		Actor: strings.TrimSpace(actor.Name), RequestID: actor.RequestID}
	if len(details) > 0 {
		// A map of strings and numbers always marshals.
		e.Details, _ = json.Marshal(details)
	}
	return e
}

// recordRef is rec as its approval and plan name it: by its RecordID,
// unique across batches, rather than the agent's id.
func recordRef(rec orchestrator.Recommendation) orchestrator.Recommendation {
	rec.ID = rec.RecordID
	return rec
}

// Coordinate decides a batch: it validates req, detects and resolves the
// conflicts, gives each kept recommendation its approval or, when
// auto-approved, its pending plan, and stores all of it with its events
// in one atomic step. Recommendations are stored under a new RecordID
// each (their id is the agent's, and agents reuse ids from batch to
// batch); approvals and plans name them by it. The approvals are
// requested by actor.Name, or by the recommending agent when the actor
// has no name: whoever submitted the batch must not approve it.
//
// With req.ExecuteNow the auto-approved recommendations' plans are
// stored running, for the executor to take.
//
// Errors: a *FieldError (ErrInvalid; ErrTooLarge for a batch over
// COORDINATION_MAX_BATCH), ErrExecutionUnavailable for execute_now
// without a dispatcher (after validation, before anything is stored),
// ErrFull when the store holds COORDINATION_MAX_RECORDS.
func (e *Engine) Coordinate(ctx context.Context, actor Actor, req orchestrator.CoordinateRequest) (orchestrator.CoordinateResponse, error) {
	if err := Validate(req, e.cfg); err != nil {
		return orchestrator.CoordinateResponse{}, err
	}
	if req.ExecuteNow && e.tasks == nil {
		return orchestrator.CoordinateResponse{}, ErrExecutionUnavailable
	}
	now := e.now()
	c := Coordination{ID: e.newID(), CustomerID: req.CustomerID, CreatedAt: now,
		Actor: strings.TrimSpace(actor.Name), RequestID: actor.RequestID, TotalRecommendations: len(req.Recommendations)}
	recs := make([]orchestrator.Recommendation, len(req.Recommendations))
	for i, r := range req.Recommendations {
		r = cloneRecommendation(r) // nothing stored shares the caller's slices
		r.CustomerID, r.CreatedAt, r.Status, r.SupersededBy = req.CustomerID, now, "", ""
		r.RecordID, r.CoordinationID = e.newID(), c.ID
		recs[i] = r
	}
	detected := Detect(recs, e.cfg.ContradictoryActions, e.newID, now)
	resolved, conflicts := Resolve(recs, detected, e.newID, now)
	c.Conflicts = conflicts

	// Resolve answers in rank order; the batch is kept in the caller's.
	byID := make(map[string]orchestrator.Recommendation, len(resolved))
	for _, r := range resolved {
		byID[r.ID] = r
	}
	b := Batch{Coordination: c}
	b.Events = append(b.Events, event(now, actor, c.CustomerID, orchestrator.EventCoordinationCreated, c.ID,
		map[string]any{"recommendations": len(recs), "conflicts": len(conflicts)}))
	for _, orig := range recs {
		r := byID[orig.ID]
		switch r.Status {
		case orchestrator.RecommendationSuperseded:
			b.Events = append(b.Events, event(now, actor, c.CustomerID, orchestrator.EventRecommendationSuperseded, r.RecordID,
				map[string]any{"id": r.ID, "superseded_by": r.SupersededBy}))
		case orchestrator.RecommendationRejected:
			b.Events = append(b.Events, event(now, actor, c.CustomerID, orchestrator.EventRecommendationRejected, r.RecordID,
				map[string]any{"id": r.ID, "reason": "dependency conflict"}))
		case orchestrator.RecommendationPending:
			b.Coordination.RecommendationsKept++
			if NeedsApproval(r.RiskLevel, req.AutoApprove, e.cfg) {
				requester := c.Actor
				if requester == "" {
					requester = r.AgentID
				}
				a := NewApproval(recordRef(r), requester, e.newID, now, e.cfg)
				b.Approvals = append(b.Approvals, a)
				b.Events = append(b.Events, event(now, actor, c.CustomerID, orchestrator.EventApprovalRequested, a.ID,
					map[string]any{"recommendation_id": r.RecordID, "risk_level": string(r.RiskLevel), "required_approvals": a.RequiredApprovals}))
				break
			}
			r.Status = orchestrator.RecommendationAutoApproved
			p := NewPlan(recordRef(r), e.cfg.PlanTemplates, e.newID, now)
			b.Events = append(b.Events,
				event(now, actor, c.CustomerID, orchestrator.EventRecommendationAutoApproved, r.RecordID, map[string]any{"id": r.ID}),
				event(now, actor, c.CustomerID, orchestrator.EventPlanCreated, p.ID, map[string]any{"recommendation_id": r.RecordID}))
			if req.ExecuteNow {
				p, _ = Transition(p, orchestrator.PlanRunning, now) // a new plan is pending
				r.Status = orchestrator.RecommendationExecuting
				b.Events = append(b.Events, event(now, actor, c.CustomerID, orchestrator.EventPlanStarted, p.ID,
					map[string]any{"recommendation_id": r.RecordID, "execute_now": true}))
			}
			b.Plans = append(b.Plans, p)
		}
		b.Recommendations = append(b.Recommendations, r)
	}
	b.Coordination.ApprovalsRequired, b.Coordination.AutoApproved = len(b.Approvals), len(b.Plans)
	if err := e.store.CreateCoordination(ctx, b, e.cfg.MaxRecords); err != nil {
		return orchestrator.CoordinateResponse{}, err
	}
	for _, cf := range conflicts {
		e.metrics.conflicts.WithLabelValues(string(cf.Type)).Inc()
	}
	if req.ExecuteNow && len(b.Plans) > 0 {
		e.runner.poke()
	}
	e.log.Info("coordinated recommendations", zap.String("coordination_id", c.ID), zap.String("customer_id", c.CustomerID),
		zap.Int("recommendations", len(recs)), zap.Int("conflicts", len(conflicts)),
		zap.Int("approvals_required", len(b.Approvals)), zap.Int("auto_approved", len(b.Plans)), zap.String("request_id", actor.RequestID))
	return response(b), nil
}

// Coordination rebuilds the answer of coordination id, its records as
// they are now (an approval since decided shows decided). ErrNotFound
// when unknown or pruned.
func (e *Engine) Coordination(ctx context.Context, id string) (orchestrator.CoordinateResponse, error) {
	b, err := e.store.CoordinationRecords(ctx, id)
	if err != nil {
		return orchestrator.CoordinateResponse{}, err
	}
	return response(b), nil
}

// response is the answer of the coordination b records. Lists are never
// null: an empty list is [] on the wire.
func response(b Batch) orchestrator.CoordinateResponse {
	c := b.Coordination
	r := orchestrator.CoordinateResponse{
		ID: c.ID, TotalRecommendations: c.TotalRecommendations, ConflictsDetected: len(c.Conflicts),
		RecommendationsKept: c.RecommendationsKept, ApprovalsRequired: c.ApprovalsRequired, AutoApproved: c.AutoApproved,
		Conflicts: nonNil(c.Conflicts), Recommendations: nonNil(b.Recommendations), Approvals: nonNil(b.Approvals),
		ExecutionPlans: nonNil(b.Plans), CreatedAt: c.CreatedAt,
	}
	for _, cf := range c.Conflicts {
		if cf.Resolved {
			r.ConflictsResolved++
		}
	}
	return r
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// limit is q's page size: DefaultPage for 0, a FieldError outside 1 to
// MaxPage.
func limit(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultPage, nil
	case n < 0 || n > MaxPage:
		return 0, &FieldError{Field: "limit", Msg: fmt.Sprintf("%d: must be from 1 to %d", n, MaxPage)}
	}
	return n, nil
}

// Recommendations returns a page of recommendations, oldest first, and
// the cursor of the next ("" after the last).
func (e *Engine) Recommendations(ctx context.Context, q RecommendationQuery) ([]orchestrator.Recommendation, string, error) {
	n, err := limit(q.Limit)
	if err != nil {
		return nil, "", err
	}
	q.Limit = n
	return e.store.Recommendations(ctx, q)
}

// Recommendation returns the recommendation whose RecordID is id.
func (e *Engine) Recommendation(ctx context.Context, id string) (orchestrator.Recommendation, error) {
	return e.store.Recommendation(ctx, id)
}

// Approvals returns a page of approvals, oldest first: the pending ones
// when q.Status is empty.
func (e *Engine) Approvals(ctx context.Context, q ApprovalQuery) ([]orchestrator.Approval, string, error) {
	n, err := limit(q.Limit)
	if err != nil {
		return nil, "", err
	}
	q.Limit = n
	if q.Status == "" {
		q.Status = orchestrator.ApprovalPending
	}
	return e.store.Approvals(ctx, q)
}

// Approval returns approval id.
func (e *Engine) Approval(ctx context.Context, id string) (orchestrator.Approval, error) {
	return e.store.Approval(ctx, id)
}

// Plans returns a page of plans, oldest first.
func (e *Engine) Plans(ctx context.Context, q PlanQuery) ([]orchestrator.Plan, string, error) {
	n, err := limit(q.Limit)
	if err != nil {
		return nil, "", err
	}
	q.Limit = n
	return e.store.Plans(ctx, q)
}

// Plan returns plan id.
func (e *Engine) Plan(ctx context.Context, id string) (orchestrator.Plan, error) {
	return e.store.Plan(ctx, id)
}

// Events returns a page of the audit log in order, and the Seq to pass
// as q.After for the next page (0 after the last).
func (e *Engine) Events(ctx context.Context, q EventQuery) ([]orchestrator.Event, uint64, error) {
	n, err := limit(q.Limit)
	if err != nil {
		return nil, 0, err
	}
	q.Limit = n
	return e.store.Events(ctx, q)
}

// needName refuses a decision without a name: who decides must be
// recorded.
func needName(actor Actor) error {
	if strings.TrimSpace(actor.Name) == "" {
		return &FieldError{Field: "user_id", Msg: "is required: who decides"}
	}
	return nil
}

// Approve records actor's approval of approval id. When the approval is
// complete (one approver, two different ones for critical risk) the
// recommendation becomes approved and its pending plan is created and
// returned; before, the plan is nil and the approval stays pending. The
// decision, the recommendation's status, the plan and the events are one
// atomic store update, so of concurrent decisions on one approval exactly
// one wins and the others get ErrAlreadyDecided.
//
// Errors: ErrNotFound, ErrAlreadyDecided, ErrExpired, ErrSelfApproval,
// ErrAlreadyApproved, a FieldError on user_id for an empty actor.Name.
func (e *Engine) Approve(ctx context.Context, id string, actor Actor) (orchestrator.Approval, *orchestrator.Plan, error) {
	return e.decide(ctx, id, actor, Decision{By: actor.Name, Approve: true})
}

// Reject records actor's rejection of approval id, with reason: the
// approval and its recommendation become rejected. Errors as Approve's,
// but for ErrAlreadyApproved.
func (e *Engine) Reject(ctx context.Context, id string, actor Actor, reason string) (orchestrator.Approval, error) {
	a, _, err := e.decide(ctx, id, actor, Decision{By: actor.Name, Reason: reason})
	return a, err
}

// ApproveRecommendation is Approve for the approval of the recommendation
// whose RecordID is recordID: the portal decides by recommendation.
// Errors as Approve's; ErrNotFound for an unknown recommendation, and
// ErrAlreadyDecided for one that has no approval (auto-approved,
// superseded or rejected by the resolution): nothing is left to decide.
func (e *Engine) ApproveRecommendation(ctx context.Context, recordID string, actor Actor) (orchestrator.Approval, *orchestrator.Plan, error) {
	id, err := e.approvalOf(ctx, recordID)
	if err != nil {
		return orchestrator.Approval{}, nil, err
	}
	return e.Approve(ctx, id, actor)
}

// RejectRecommendation is Reject for the approval of the recommendation
// whose RecordID is recordID, with ApproveRecommendation's errors.
func (e *Engine) RejectRecommendation(ctx context.Context, recordID string, actor Actor, reason string) (orchestrator.Approval, error) {
	id, err := e.approvalOf(ctx, recordID)
	if err != nil {
		return orchestrator.Approval{}, err
	}
	return e.Reject(ctx, id, actor, reason)
}

// approvalOf is the id of the approval of recommendation recordID.
func (e *Engine) approvalOf(ctx context.Context, recordID string) (string, error) {
	rec, err := e.store.Recommendation(ctx, recordID)
	if err != nil {
		return "", err
	}
	page, _, err := e.store.Approvals(ctx, ApprovalQuery{RecommendationID: recordID, Limit: 1})
	if err != nil {
		return "", err
	}
	if len(page) == 0 {
		return "", fmt.Errorf("%w: recommendation %s is %s and waits for no approval", ErrAlreadyDecided, recordID, rec.Status)
	}
	return page[0].ID, nil
}

func (e *Engine) decide(ctx context.Context, id string, actor Actor, d Decision) (orchestrator.Approval, *orchestrator.Plan, error) {
	if err := needName(actor); err != nil {
		return orchestrator.Approval{}, nil, err
	}
	now := e.now()
	var plan *orchestrator.Plan
	a, err := e.store.UpdateApproval(ctx, id, func(a *orchestrator.Approval, rec orchestrator.Recommendation) (Effects, error) {
		plan = nil // a store may run the change again (a retried transaction)
		next, err := Decide(*a, d, now)
		if err != nil {
			return Effects{}, err
		}
		*a = next
		var eff Effects
		switch next.Status {
		case orchestrator.ApprovalApproved:
			p := NewPlan(recordRef(rec), e.cfg.PlanTemplates, e.newID, now)
			plan = &p
			eff.RecommendationStatus, eff.Plan = orchestrator.RecommendationApproved, plan
			eff.Events = []orchestrator.Event{
				event(now, actor, a.CustomerID, orchestrator.EventApprovalApproved, a.ID, map[string]any{"recommendation_id": a.RecommendationID}),
				event(now, actor, a.CustomerID, orchestrator.EventPlanCreated, p.ID, map[string]any{"recommendation_id": a.RecommendationID}),
			}
		case orchestrator.ApprovalRejected:
			eff.RecommendationStatus = orchestrator.RecommendationRejected
			eff.Events = []orchestrator.Event{event(now, actor, a.CustomerID, orchestrator.EventApprovalRejected, a.ID,
				map[string]any{"recommendation_id": a.RecommendationID, "reason": d.Reason})}
		default: // the first of two approvers
			eff.Events = []orchestrator.Event{event(now, actor, a.CustomerID, orchestrator.EventApprovalVoted, a.ID,
				map[string]any{"recommendation_id": a.RecommendationID, "approvals": len(a.Approvals), "required_approvals": a.RequiredApprovals})}
		}
		return eff, nil
	})
	if err != nil {
		return a, nil, err
	}
	switch a.Status {
	case orchestrator.ApprovalApproved, orchestrator.ApprovalRejected:
		e.metrics.decided.WithLabelValues(string(a.Status)).Inc()
	}
	e.log.Info("approval decided", zap.String("approval_id", a.ID), zap.String("status", string(a.Status)),
		zap.String("by", strings.TrimSpace(actor.Name)), zap.String("request_id", actor.RequestID))
	return a, plan, nil
}

// ExecutePlan starts plan id: it becomes running and its recommendation
// executing, and this replica's executor takes it (or another's, when
// this one is full). It returns the plan as started. Errors: ErrNotFound,
// ErrInvalidTransition for a plan that is not pending (executed already,
// cancelled), ErrExecutionUnavailable without a dispatcher, a FieldError
// on user_id for an empty actor.Name.
func (e *Engine) ExecutePlan(ctx context.Context, id string, actor Actor) (orchestrator.Plan, error) {
	if err := needName(actor); err != nil {
		return orchestrator.Plan{}, err
	}
	if e.tasks == nil {
		return orchestrator.Plan{}, ErrExecutionUnavailable
	}
	now := e.now()
	p, err := e.store.UpdatePlan(ctx, id, func(p *orchestrator.Plan, rec orchestrator.Recommendation) (Effects, error) {
		if p.Status != orchestrator.PlanPending {
			return Effects{}, fmt.Errorf("%w: plan %s is %s; only a pending plan can be executed", ErrInvalidTransition, p.ID, p.Status)
		}
		switch rec.Status {
		case orchestrator.RecommendationApproved, orchestrator.RecommendationAutoApproved:
		default:
			return Effects{}, fmt.Errorf("%w: plan %s is for recommendation %s, which is %s, not approved", ErrInvalidTransition, p.ID, rec.RecordID, rec.Status)
		}
		next, err := Transition(*p, orchestrator.PlanRunning, now)
		if err != nil {
			return Effects{}, err
		}
		*p = next
		return Effects{
			RecommendationStatus: orchestrator.RecommendationExecuting,
			Events: []orchestrator.Event{event(now, actor, p.CustomerID, orchestrator.EventPlanStarted, p.ID,
				map[string]any{"recommendation_id": p.RecommendationID})},
		}, nil
	})
	if err != nil {
		return p, err
	}
	e.log.Info("plan started", zap.String("plan_id", p.ID), zap.String("by", strings.TrimSpace(actor.Name)), zap.String("request_id", actor.RequestID))
	e.runner.poke()
	return p, nil
}

// CancelPlan cancels plan id, pending or running, and its recommendation
// becomes cancelled. The steps not started are skipped; a step running
// becomes cancelled and its task is cancelled (the agent's call aborted);
// the steps completed stay done. A plan rolling back cannot be cancelled:
// stopping half-way would leave the resources in neither state. Errors:
// ErrNotFound, ErrInvalidTransition for a plan neither pending nor
// running (a second cancel included), a FieldError on user_id for an
// empty actor.Name.
func (e *Engine) CancelPlan(ctx context.Context, id string, actor Actor) (orchestrator.Plan, error) {
	if err := needName(actor); err != nil {
		return orchestrator.Plan{}, err
	}
	now := e.now()
	p, err := e.store.UpdatePlan(ctx, id, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (Effects, error) {
		return e.cancel(p, actor, "", now)
	})
	if err != nil {
		return p, err
	}
	for _, st := range p.Steps {
		if st.Status == orchestrator.StepCancelled && st.TaskID != "" && e.tasks != nil {
			if _, err := e.tasks.Cancel(ctx, st.TaskID); err != nil && !errors.Is(err, dispatch.ErrFinished) && !errors.Is(err, dispatch.ErrNotFound) {
				e.log.Warn("cancelling a cancelled plan's task", zap.String("plan_id", p.ID), zap.String("task_id", st.TaskID), zap.Error(err))
			}
		}
	}
	e.countFinished(p)
	e.log.Info("plan cancelled", zap.String("plan_id", p.ID), zap.String("by", strings.TrimSpace(actor.Name)), zap.String("request_id", actor.RequestID))
	return p, nil
}

// cancel moves p to cancelled in a store update: by actor, or by the
// executor (why says why: a dependency that will not complete).
func (e *Engine) cancel(p *orchestrator.Plan, actor Actor, why string, now time.Time) (Effects, error) {
	if p.Status != orchestrator.PlanPending && p.Status != orchestrator.PlanRunning {
		return Effects{}, fmt.Errorf("%w: plan %s is %s; only a pending or running plan can be cancelled", ErrInvalidTransition, p.ID, p.Status)
	}
	next, err := Transition(*p, orchestrator.PlanCancelled, now)
	if err != nil {
		return Effects{}, err
	}
	for i := range next.Steps {
		switch next.Steps[i].Status {
		case orchestrator.StepPending:
			next.Steps[i].Status = orchestrator.StepSkipped
		case orchestrator.StepRunning:
			next.Steps[i].Status, next.Steps[i].CompletedAt = orchestrator.StepCancelled, &now
		}
	}
	next.WaitingFor = ""
	*p = next
	details := map[string]any{"recommendation_id": p.RecommendationID}
	if why != "" {
		details["reason"] = why
	}
	return Effects{
		RecommendationStatus: orchestrator.RecommendationCancelled,
		Release:              true,
		Events:               []orchestrator.Event{event(now, actor, p.CustomerID, orchestrator.EventPlanCancelled, p.ID, details)},
	}, nil
}

// Sweep expires every pending approval past its expires_at (its
// recommendation becomes expired, an approval.expired event with no
// actor is appended), then prunes what settled longer than
// COORDINATION_RETENTION ago. Each approval is expired by its own atomic
// update, so a decision racing the sweep either lands first (and the
// approval is left alone) or is refused with ErrExpired. It goes on past
// a failure and returns them all.
func (e *Engine) Sweep(ctx context.Context) error {
	now := e.now()
	var errs []error
	after := ""
	for {
		page, next, err := e.store.Approvals(ctx, ApprovalQuery{Status: orchestrator.ApprovalPending, ExpiredBy: now, After: after, Limit: MaxPage})
		if err != nil {
			errs = append(errs, fmt.Errorf("listing expired approvals: %w", err))
			break
		}
		for _, a := range page {
			if err := e.expire(ctx, a.ID, now); err != nil {
				errs = append(errs, fmt.Errorf("expiring approval %s: %w", a.ID, err))
			}
		}
		if next == "" || ctx.Err() != nil {
			break
		}
		after = next
	}
	pruned, err := e.store.Prune(ctx, now.Add(-e.cfg.Retention))
	if err != nil {
		errs = append(errs, fmt.Errorf("pruning settled coordinations: %w", err))
	}
	if pruned > 0 {
		e.log.Debug("pruned settled coordinations", zap.Int("count", pruned))
	}
	return errors.Join(errs...)
}

func (e *Engine) expire(ctx context.Context, id string, now time.Time) error {
	_, err := e.store.UpdateApproval(ctx, id, func(a *orchestrator.Approval, _ orchestrator.Recommendation) (Effects, error) {
		next, ok := Expire(*a, now)
		if !ok {
			return Effects{}, ErrNoChange // decided since it was listed
		}
		*a = next
		return Effects{
			RecommendationStatus: orchestrator.RecommendationExpired,
			Events: []orchestrator.Event{event(now, Actor{}, a.CustomerID, orchestrator.EventApprovalExpired, a.ID,
				map[string]any{"recommendation_id": a.RecommendationID, "expires_at": a.ExpiresAt.Format(time.RFC3339)})},
		}, nil
	})
	switch {
	case errors.Is(err, ErrNoChange), errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	e.metrics.decided.WithLabelValues(string(orchestrator.ApprovalExpired)).Inc()
	return nil
}

// Run sweeps at once, then every COORDINATION_SWEEP_INTERVAL, and runs
// the executor (with a dispatcher), until ctx ends. The caller runs it in
// a goroutine; it has returned when every goroutine it started has: the
// plans running here are left for another replica (their leases
// released), their tasks to the dispatcher's own drain.
func (e *Engine) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if e.tasks != nil {
		wg.Go(func() { e.execute(ctx) })
	}
	defer wg.Wait()
	tick := time.NewTicker(e.cfg.SweepInterval)
	defer tick.Stop()
	for {
		if err := e.Sweep(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("sweeping coordination records", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
