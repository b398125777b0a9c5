package coordination

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Tasks is the dispatcher the executor sends plan steps through:
// dispatch.Dispatcher in memory, dispatch.Cluster over PostgreSQL.
type Tasks interface {
	Submit(ctx context.Context, req dispatch.Request) (dispatch.Task, error)
	Get(ctx context.Context, id string) (dispatch.Task, error)
	Cancel(ctx context.Context, id string) (dispatch.Task, error)
}

// The executor runs plans that are running or rolling_back, each in a
// goroutine of its own, holding the plan's run lease in the store. Every
// change it makes is one UpdateRun, which fails once the lease is lost,
// so of two replicas that both believe they run a plan only one changes
// it. What it needs to go on is in the plan itself: the current step, and
// the step's task, whose id is the step's. A replica that takes a plan
// over (its executor died, its lease lapsed) resumes at the current step:
// when that step had started, it waits for the same task, which the
// dispatcher delivers again if its replica died too, else it submits it.
//
// A plan's first step starts when the plans of its recommendation's
// dependencies have completed (a dependency that ended otherwise cancels
// it), and when it can take the resource leases of every affected
// resource: one plan at a time per resource. It holds them until it ends.

// runner is the executor's state in the engine: the plans it runs.
type runner struct {
	mu      sync.Mutex
	running map[string]context.CancelFunc
	wg      sync.WaitGroup
	// wake asks the loop to look for plans now (a plan was started here,
	// or one ended and freed a slot).
	wake chan struct{}
}

func newRunner() *runner {
	return &runner{running: map[string]context.CancelFunc{}, wake: make(chan struct{}, 1)}
}

func (r *runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) runningPlans() int {
	e.runner.mu.Lock()
	defer e.runner.mu.Unlock()
	return len(e.runner.running)
}

// execute claims plans to run and keeps their leases until ctx ends; it
// returns once every plan goroutine has.
func (e *Engine) execute(ctx context.Context) {
	r := e.runner
	defer r.wg.Wait()
	renew := time.NewTicker(e.cfg.RunLease / 3)
	defer renew.Stop()
	// Plans another replica left are looked for every second: a lapsed
	// lease is found within a second of lapsing.
	look := time.NewTicker(max(e.cfg.PollInterval, time.Second))
	defer look.Stop()
	for {
		e.claim(ctx)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-look.C:
		case <-renew.C:
			e.renew(ctx)
		}
	}
}

// claim takes as many plans as there are free slots and starts them.
func (e *Engine) claim(ctx context.Context) {
	r := e.runner
	r.mu.Lock()
	free := e.cfg.MaxRunning - len(r.running)
	r.mu.Unlock()
	if free <= 0 {
		return
	}
	now := e.now()
	plans, err := e.store.ClaimPlans(ctx, e.owner, now, now.Add(e.cfg.RunLease), free)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("claiming plans to run", zap.Error(err))
		}
		return
	}
	for _, p := range plans {
		r.mu.Lock()
		if _, dup := r.running[p.ID]; dup {
			r.mu.Unlock()
			continue // running here already: the lease lapsed while it ran
		}
		pctx, cancel := context.WithCancel(ctx)
		r.running[p.ID] = cancel
		r.mu.Unlock()
		if p.CurrentStep > 0 || (len(p.Steps) > 0 && p.Steps[0].Status != orchestrator.StepPending) {
			e.log.Info("resuming plan", zap.String("plan_id", p.ID), zap.String("status", string(p.Status)), zap.Int("current_step", p.CurrentStep))
		}
		r.wg.Go(func() {
			defer func() {
				r.mu.Lock()
				delete(r.running, p.ID)
				r.mu.Unlock()
				cancel()
				r.poke()
			}()
			e.runPlan(pctx, p)
		})
	}
}

// renew extends the leases of the plans running here, and stops those
// whose lease was lost (another replica took them over after this one
// failed to renew in time).
func (e *Engine) renew(ctx context.Context) {
	r := e.runner
	r.mu.Lock()
	ids := make([]string, 0, len(r.running))
	for id := range r.running {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	lost, err := e.store.RenewRuns(ctx, e.owner, ids, e.now().Add(e.cfg.RunLease))
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("renewing plan leases", zap.Error(err))
		}
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range lost {
		if cancel, ok := r.running[id]; ok {
			e.log.Warn("lost the lease of a running plan; another replica runs it", zap.String("plan_id", id))
			cancel()
		}
	}
}

// errStop ends a plan's goroutine: the plan ended, or is another's.
var errStop = errors.New("stop running the plan")

// runPlan runs p until it ends, its lease is lost, or ctx ends. At the
// end the lease is released, so that at shutdown another replica takes
// the plan over at once instead of after the lease lapses.
func (e *Engine) runPlan(ctx context.Context, p orchestrator.Plan) {
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := e.store.ReleaseRun(rctx, p.ID, e.owner); err != nil {
			e.log.Warn("releasing a plan's lease", zap.String("plan_id", p.ID), zap.Error(err))
		}
	}()
	for ctx.Err() == nil {
		next, wait, err := e.advance(ctx, p)
		switch {
		case errors.Is(err, errStop), errors.Is(err, ErrLeaseLost), errors.Is(err, ErrNotFound):
			return
		case err != nil:
			if ctx.Err() == nil {
				e.log.Warn("running a plan", zap.String("plan_id", p.ID), zap.Error(err))
			}
			wait = true
		default:
			p = next
		}
		if wait {
			select {
			case <-ctx.Done():
			case <-time.After(e.cfg.PollInterval):
			}
		}
	}
}

// advance takes one step of p's execution and returns the plan as it is
// now, and whether to wait before the next (the plan waits for a
// dependency, a resource, an agent or its step's task).
func (e *Engine) advance(ctx context.Context, p orchestrator.Plan) (orchestrator.Plan, bool, error) {
	if p.Status != orchestrator.PlanRunning && p.Status != orchestrator.PlanRollingBack {
		return p, false, errStop
	}
	if p.CurrentStep >= len(p.Steps) {
		// Every step ended but the plan did not: a change was lost
		// half-way. End it as its steps say.
		next, err := e.update(ctx, p.ID, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (Effects, error) {
			return e.finishPlan(p, e.now(), ""), nil
		})
		return next, false, err
	}
	st := p.Steps[p.CurrentStep]
	switch st.Status {
	case orchestrator.StepPending:
		return e.startStep(ctx, p)
	case orchestrator.StepRunning:
		return e.pollStep(ctx, p, st)
	}
	// The current step ended but the plan did not move on: reload it.
	next, err := e.store.Plan(ctx, p.ID)
	return next, true, err
}

// update is UpdateRun under this executor's lease.
func (e *Engine) update(ctx context.Context, id string, change func(*orchestrator.Plan, orchestrator.Recommendation) (Effects, error)) (orchestrator.Plan, error) {
	return e.store.UpdateRun(ctx, id, e.owner, e.now().Add(e.cfg.RunLease), change)
}

// startStep starts the current step of p: for the first step of a
// running plan, once its dependencies have completed and it holds its
// resources.
func (e *Engine) startStep(ctx context.Context, p orchestrator.Plan) (orchestrator.Plan, bool, error) {
	rec, err := e.store.Recommendation(ctx, p.RecommendationID)
	if err != nil {
		return p, true, err
	}
	if p.Status == orchestrator.PlanRunning && p.CurrentStep == 0 {
		waitFor, cancelWhy, err := e.dependencies(ctx, rec)
		if err != nil {
			return p, true, err
		}
		if cancelWhy != "" {
			next, err := e.update(ctx, p.ID, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (Effects, error) {
				if p.Status != orchestrator.PlanRunning || p.CurrentStep != 0 {
					return Effects{}, ErrNoChange
				}
				return e.cancel(p, Actor{}, cancelWhy, e.now())
			})
			if err == nil {
				e.finished(next)
			}
			return next, false, noChange(err)
		}
		if waitFor != "" {
			return e.waitFor(ctx, p, waitFor)
		}
	}
	stepID := p.Steps[p.CurrentStep].ID
	now := e.now()
	next, err := e.update(ctx, p.ID, func(p *orchestrator.Plan, rec orchestrator.Recommendation) (Effects, error) {
		if (p.Status != orchestrator.PlanRunning && p.Status != orchestrator.PlanRollingBack) ||
			p.CurrentStep >= len(p.Steps) || p.Steps[p.CurrentStep].ID != stepID || p.Steps[p.CurrentStep].Status != orchestrator.StepPending {
			return Effects{}, ErrNoChange
		}
		st := &p.Steps[p.CurrentStep]
		st.Status, st.TaskID, st.StartedAt = orchestrator.StepRunning, st.ID, &now
		p.WaitingFor = ""
		return Effects{
			Acquire: rec.AffectedResources,
			Events: []orchestrator.Event{event(now, Actor{}, p.CustomerID, orchestrator.EventStepStarted, p.ID,
				map[string]any{"step_id": st.ID, "action": st.Action, "task_id": st.TaskID})},
		}, nil
	})
	var busy *BusyError
	switch {
	case errors.As(err, &busy):
		return e.waitFor(ctx, p, busy.Error())
	case err != nil:
		return next, false, noChange(err)
	}
	return e.pollStep(ctx, next, next.Steps[next.CurrentStep])
}

// noChange is nil for ErrNoChange: the plan changed meanwhile, and the
// caller goes on from the plan returned, which is the stored one.
func noChange(err error) error {
	if errors.Is(err, ErrNoChange) {
		return nil
	}
	return err
}

// waitFor records why p waits (when that changed) and waits.
func (e *Engine) waitFor(ctx context.Context, p orchestrator.Plan, why string) (orchestrator.Plan, bool, error) {
	if p.WaitingFor == why {
		return p, true, nil
	}
	next, err := e.update(ctx, p.ID, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (Effects, error) {
		if p.WaitingFor == why || (p.Status != orchestrator.PlanRunning && p.Status != orchestrator.PlanRollingBack) {
			return Effects{}, ErrNoChange
		}
		p.WaitingFor = why
		return Effects{}, nil
	})
	return next, true, noChange(err)
}

// dependencies says whether rec's plan must wait for its dependencies
// (waitFor names one not yet completed) or be cancelled (cancelWhy names
// one that will never complete). Dependencies name recommendations of
// the same batch by the agent's id.
func (e *Engine) dependencies(ctx context.Context, rec orchestrator.Recommendation) (waitFor, cancelWhy string, err error) {
	if len(rec.Dependencies) == 0 {
		return "", "", nil
	}
	b, err := e.store.CoordinationRecords(ctx, rec.CoordinationID)
	if err != nil {
		return "", "", err
	}
	for _, dep := range rec.Dependencies {
		i := slices.IndexFunc(b.Recommendations, func(r orchestrator.Recommendation) bool { return r.ID == dep })
		if i < 0 {
			return "", fmt.Sprintf("dependency %s is gone", dep), nil
		}
		d := b.Recommendations[i]
		switch d.Status {
		case orchestrator.RecommendationCompleted:
			continue
		case orchestrator.RecommendationPending, orchestrator.RecommendationApproved, orchestrator.RecommendationAutoApproved,
			orchestrator.RecommendationExecuting:
			if waitFor == "" {
				waitFor = fmt.Sprintf("dependency %s (recommendation %s) is %s", dep, d.RecordID, d.Status)
			}
		default:
			return "", fmt.Sprintf("dependency %s (recommendation %s) is %s", dep, d.RecordID, d.Status), nil
		}
	}
	return waitFor, "", nil
}

// pollStep looks at the task of p's running step st: submits it when it
// does not exist yet, settles the step when it has ended.
func (e *Engine) pollStep(ctx context.Context, p orchestrator.Plan, st orchestrator.PlanStep) (orchestrator.Plan, bool, error) {
	t, err := e.tasks.Get(ctx, st.TaskID)
	if errors.Is(err, dispatch.ErrNotFound) {
		return e.submit(ctx, p, st)
	}
	if err != nil {
		return p, true, err
	}
	if !t.Status.Terminal() {
		return p, true, nil
	}
	next, err := e.settle(ctx, p, st, t)
	return next, false, err
}

// submit sends step st of p as its task, named by the step's id. A task
// that exists already (submitted before this executor took the plan
// over) is the step's: it is waited for, not sent again.
func (e *Engine) submit(ctx context.Context, p orchestrator.Plan, st orchestrator.PlanStep) (orchestrator.Plan, bool, error) {
	rec, err := e.store.Recommendation(ctx, p.RecommendationID)
	if err != nil {
		return p, true, err
	}
	req, err := stepRequest(p, st, rec, e.cfg)
	if err == nil {
		_, err = e.tasks.Submit(ctx, req)
	}
	var noAgent *dispatch.NoAgentError
	switch {
	case err == nil, errors.Is(err, dispatch.ErrExists):
		if p.WaitingFor == "" {
			return p, true, nil
		}
		next, err := e.update(ctx, p.ID, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (Effects, error) {
			if p.WaitingFor == "" {
				return Effects{}, ErrNoChange
			}
			p.WaitingFor = "" // an agent came
			return Effects{}, nil
		})
		return next, true, noChange(err)
	case errors.As(err, &noAgent):
		// An agent restarting is not a failed step: wait for one, up to
		// COORDINATION_AGENT_WAIT from the step's start.
		if st.StartedAt != nil && e.now().Sub(*st.StartedAt) < e.cfg.AgentWait {
			return e.waitFor(ctx, p, err.Error())
		}
	case errors.Is(err, dispatch.ErrQueueFull), errors.Is(err, dispatch.ErrShuttingDown), ctx.Err() != nil:
		return p, true, err
	case !errors.Is(err, registry.ErrInvalid) && !errors.Is(err, errInvalidTask):
		return p, true, err // the store failed: try again
	}
	// The step cannot be sent: it fails as its task would have.
	failed := dispatch.Task{ID: st.TaskID, Status: dispatch.StatusFailed, Error: "the step's task could not be submitted: " + err.Error()}
	next, serr := e.settle(ctx, p, st, failed)
	return next, false, serr
}

// stepParametersKey is the key of the object the executor adds to a
// step's parameters; a recommendation's parameters may not use it.
const stepParametersKey = "coordination"

// errInvalidTask wraps a dispatcher refusal of a step's request.
var errInvalidTask = errors.New("invalid step task")

// stepRequest is the task of step st of p, whose recommendation is rec:
// task_type the step's action, to an agent of the recommendation's type,
// parameters the recommendation's, with a "coordination" object added
// naming the plan, step and recommendation, the affected resources, and
// for a rollback step the step it undoes and that step's result.
func stepRequest(p orchestrator.Plan, st orchestrator.PlanStep, rec orchestrator.Recommendation, cfg Config) (dispatch.Request, error) {
	params := map[string]json.RawMessage{}
	if len(st.Parameters) > 0 && string(st.Parameters) != "null" {
		if err := json.Unmarshal(st.Parameters, &params); err != nil {
			return dispatch.Request{}, fmt.Errorf("%w: parameters: %w", errInvalidTask, err)
		}
	}
	c := map[string]any{
		"plan_id": p.ID, "step_id": st.ID, "recommendation_id": p.RecommendationID, "customer_id": p.CustomerID,
		"action": rec.Action, "affected_resources": nonNil(rec.AffectedResources),
	}
	if st.RollbackOf != "" {
		c["rollback_of"] = st.RollbackOf
		if i := slices.IndexFunc(p.Steps, func(s orchestrator.PlanStep) bool { return s.ID == st.RollbackOf }); i >= 0 && len(p.Steps[i].Result) > 0 {
			c["step_result"] = p.Steps[i].Result
		}
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return dispatch.Request{}, fmt.Errorf("%w: %w", errInvalidTask, err)
	}
	params[stepParametersKey] = raw
	body, err := json.Marshal(params)
	if err != nil {
		return dispatch.Request{}, fmt.Errorf("%w: %w", errInvalidTask, err)
	}
	meta, _ := json.Marshal(map[string]string{"plan_id": p.ID, "step_id": st.ID, "recommendation_id": p.RecommendationID})
	timeout, retries := int(cfg.StepTimeout/time.Second), cfg.StepMaxRetries
	return dispatch.Request{
		ID: st.TaskID, TaskType: st.Action, AgentType: string(st.AgentType), Parameters: body,
		TimeoutSeconds: &timeout, MaxRetries: &retries, Metadata: meta,
	}, nil
}

// settle records the outcome of step st's task t and moves p on: to the
// next step, to its end, or into rollback.
func (e *Engine) settle(ctx context.Context, p orchestrator.Plan, st orchestrator.PlanStep, t dispatch.Task) (orchestrator.Plan, error) {
	now := e.now()
	next, err := e.update(ctx, p.ID, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (Effects, error) {
		if (p.Status != orchestrator.PlanRunning && p.Status != orchestrator.PlanRollingBack) ||
			p.CurrentStep >= len(p.Steps) || p.Steps[p.CurrentStep].ID != st.ID || p.Steps[p.CurrentStep].Status != orchestrator.StepRunning {
			return Effects{}, ErrNoChange
		}
		return e.settleStep(p, t, now), nil
	})
	if err != nil {
		return next, noChange(err)
	}
	if s := next.Steps[slices.IndexFunc(next.Steps, func(s orchestrator.PlanStep) bool { return s.ID == st.ID })]; s.Status == orchestrator.StepCompleted {
		e.metrics.steps.WithLabelValues(string(orchestrator.StepCompleted)).Inc()
	} else {
		e.metrics.steps.WithLabelValues(string(orchestrator.StepFailed)).Inc()
	}
	if next.Status == orchestrator.PlanRollingBack && p.Status == orchestrator.PlanRunning {
		e.metrics.rollbacks.WithLabelValues("started").Inc()
	}
	if next.Status.Terminal() {
		e.finished(next)
	}
	return next, nil
}

// settleStep applies task t's outcome to p's current step, in a store
// update, and returns the update's effects.
func (e *Engine) settleStep(p *orchestrator.Plan, t dispatch.Task, now time.Time) Effects {
	st := &p.Steps[p.CurrentStep]
	st.AgentID, st.CompletedAt = t.AgentID, &now
	p.WaitingFor = ""
	if st.StartedAt != nil {
		st.DurationMS = now.Sub(*st.StartedAt).Milliseconds()
	}
	details := map[string]any{"step_id": st.ID, "action": st.Action, "task_id": st.TaskID, "agent_id": t.AgentID}
	failure := "" // what ends the forward run, when it does
	kind := orchestrator.EventStepCompleted
	if t.Status == dispatch.StatusCompleted {
		st.Status, st.Result = orchestrator.StepCompleted, t.Result
		if st.RollbackOf != "" {
			if i := slices.IndexFunc(p.Steps, func(s orchestrator.PlanStep) bool { return s.ID == st.RollbackOf }); i >= 0 {
				p.Steps[i].Status = orchestrator.StepRolledBack
			}
		}
	} else {
		st.Status, st.Error, kind = orchestrator.StepFailed, stepError(t), orchestrator.EventStepFailed
		details["error"] = st.Error
		// A step that is not critical may fail; the plan goes on. A
		// rollback step's failure always ends the rollback.
		if p.Status != orchestrator.PlanRunning || st.Critical {
			failure = st.Error
		}
	}
	stepEvent := event(now, Actor{}, p.CustomerID, kind, p.ID, details)
	if failure == "" {
		p.CurrentStep++
		if p.CurrentStep < len(p.Steps) {
			return Effects{Events: []orchestrator.Event{stepEvent}}
		}
	}
	end := e.finishPlan(p, now, failure)
	end.Events = append([]orchestrator.Event{stepEvent}, end.Events...)
	return end
}

// stepError says why task t did not complete.
func stepError(t dispatch.Task) string {
	msg := string(t.Status)
	if t.Error != "" {
		msg += ": " + t.Error
	}
	return msg
}

// finishPlan moves p on from its last step, or from a failed critical
// step (failure says why): a running plan completes, or fails into
// rollback when it completed a reversible step, else fails; a rolling
// back plan is rolled back, or its rollback failed. The steps that did
// not run are skipped. It returns the effects: the recommendation's new
// status, the resource leases freed when the plan ended, the events.
func (e *Engine) finishPlan(p *orchestrator.Plan, now time.Time, failure string) Effects {
	skipRest := func() {
		for i := range p.Steps {
			if p.Steps[i].Status == orchestrator.StepPending {
				p.Steps[i].Status = orchestrator.StepSkipped
			}
		}
	}
	var to orchestrator.PlanStatus
	var recStatus orchestrator.RecommendationStatus
	var kind orchestrator.EventKind
	switch {
	case p.Status == orchestrator.PlanRunning && failure == "":
		to, recStatus, kind = orchestrator.PlanCompleted, orchestrator.RecommendationCompleted, orchestrator.EventPlanCompleted
	case p.Status == orchestrator.PlanRunning:
		skipRest()
		if rb := RollbackSteps(*p, e.newID); len(rb) > 0 {
			next, _ := Transition(*p, orchestrator.PlanRollingBack, now)
			*p = next
			p.CurrentStep = len(p.Steps)
			p.Steps = append(p.Steps, rb...)
			return Effects{Events: []orchestrator.Event{event(now, Actor{}, p.CustomerID, orchestrator.EventPlanRollingBack, p.ID,
				map[string]any{"error": failure, "rollback_steps": len(rb)})}}
		}
		to, recStatus, kind = orchestrator.PlanFailed, orchestrator.RecommendationFailed, orchestrator.EventPlanFailed
	case failure == "":
		to, recStatus, kind = orchestrator.PlanRolledBack, orchestrator.RecommendationRolledBack, orchestrator.EventPlanRolledBack
	default:
		// A rollback step failed: the steps before it are not undone,
		// for undoing them under a half-undone later change could make
		// things worse. A person looks (the events say which failed).
		skipRest()
		to, recStatus, kind = orchestrator.PlanRollbackFailed, orchestrator.RecommendationFailed, orchestrator.EventPlanRollbackFailed
	}
	next, _ := Transition(*p, to, now)
	*p = next
	details := map[string]any{"recommendation_id": p.RecommendationID}
	if failure != "" {
		details["error"] = failure
	}
	return Effects{RecommendationStatus: recStatus, Release: true,
		Events: []orchestrator.Event{event(now, Actor{}, p.CustomerID, kind, p.ID, details)}}
}

// finished counts and logs plan p, which the executor just ended.
func (e *Engine) finished(p orchestrator.Plan) {
	e.countFinished(p)
	e.log.Info("plan finished", zap.String("plan_id", p.ID), zap.String("status", string(p.Status)),
		zap.String("recommendation_id", p.RecommendationID), zap.Int64("total_duration_ms", p.TotalDurationMS))
}

// countFinished counts plan p, which just ended, in the metrics.
func (e *Engine) countFinished(p orchestrator.Plan) {
	e.metrics.plansFinished.WithLabelValues(string(p.Status)).Inc()
	if p.StartedAt != nil {
		end := p.CompletedAt
		if p.RolledBackAt != nil {
			end = p.RolledBackAt
		}
		if end != nil {
			e.metrics.planDuration.WithLabelValues(string(p.Status)).Observe(end.Sub(*p.StartedAt).Seconds())
		}
	}
	switch p.Status {
	case orchestrator.PlanRolledBack, orchestrator.PlanRollbackFailed:
		e.metrics.rollbacks.WithLabelValues(string(p.Status)).Inc()
	}
}
