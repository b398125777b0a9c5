package coordination

import (
	"fmt"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// rollbackPrefix names the task that undoes a step: rollback_<action>.
const rollbackPrefix = "rollback_"

// NewPlan returns the pending plan of an approved recommendation: the
// steps of templates[rec.Action], or one critical, reversible step whose
// action is rec.Action when there is no template. Every step goes to an
// agent of rec.AgentType, carries rec.Parameters, and will run as a
// dispatcher task whose task_type is the step's action. newID names the
// plan and each step.
func NewPlan(rec orchestrator.Recommendation, templates Templates, newID func() string, now time.Time) orchestrator.Plan {
	tmpl, ok := templates[rec.Action]
	if !ok || len(tmpl) == 0 {
		tmpl = []StepTemplate{{Action: rec.Action, Critical: true, Reversible: true}}
	}
	p := orchestrator.Plan{
		ID:               newID(),
		RecommendationID: rec.ID,
		CustomerID:       rec.CustomerID,
		Status:           orchestrator.PlanPending,
		CreatedAt:        now,
		Steps:            make([]orchestrator.PlanStep, len(tmpl)),
	}
	for i, st := range tmpl {
		p.Steps[i] = orchestrator.PlanStep{
			ID:         newID(),
			Action:     st.Action,
			AgentType:  rec.AgentType,
			Parameters: rec.Parameters,
			Critical:   st.Critical,
			Reversible: st.Reversible,
			Status:     orchestrator.StepPending,
		}
	}
	return p
}

// transitions are the moves of a plan's status. A failed critical step
// moves a running plan to rolling_back when it completed a reversible
// step, else to failed, which is then final: a plan is failed only when
// nothing is left to undo, so that every state a reader sees is one it
// stays in or leaves by the rules here. A running plan is cancelled
// between steps, or during one (its task is cancelled); the steps it
// completed stay done (cancelled is final, so undoing them would be a
// failure's rollback, not a cancel). Rollback itself cannot be
// cancelled: stopping half-way would leave the resources in neither
// state.
var transitions = map[orchestrator.PlanStatus][]orchestrator.PlanStatus{
	orchestrator.PlanPending:     {orchestrator.PlanRunning, orchestrator.PlanCancelled},
	orchestrator.PlanRunning:     {orchestrator.PlanCompleted, orchestrator.PlanFailed, orchestrator.PlanRollingBack, orchestrator.PlanCancelled},
	orchestrator.PlanRollingBack: {orchestrator.PlanRolledBack, orchestrator.PlanRollbackFailed},
}

// CanTransition reports whether a plan may move from one status to
// another. Terminal statuses move nowhere; no status moves to itself.
func CanTransition(from, to orchestrator.PlanStatus) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Transition returns p moved to status to at now, with the times that
// move sets: started_at on running, completed_at (and total_duration_ms
// from started_at) on completed, failed and cancelled, rolled_back_at on
// rolled_back and rollback_failed. It returns ErrInvalidTransition when
// CanTransition refuses the move.
func Transition(p orchestrator.Plan, to orchestrator.PlanStatus, now time.Time) (orchestrator.Plan, error) {
	if !CanTransition(p.Status, to) {
		return p, fmt.Errorf("%w: plan %s is %s and cannot become %s", ErrInvalidTransition, p.ID, p.Status, to)
	}
	p.Status = to
	switch to {
	case orchestrator.PlanRunning:
		p.StartedAt = &now
	case orchestrator.PlanCompleted, orchestrator.PlanFailed, orchestrator.PlanCancelled:
		p.CompletedAt = &now
		if p.StartedAt != nil {
			p.TotalDurationMS = now.Sub(*p.StartedAt).Milliseconds()
		}
	case orchestrator.PlanRollingBack:
		p.CompletedAt = &now // the forward run ended here
		if p.StartedAt != nil {
			p.TotalDurationMS = now.Sub(*p.StartedAt).Milliseconds()
		}
	case orchestrator.PlanRolledBack, orchestrator.PlanRollbackFailed:
		p.RolledBackAt = &now
		if p.StartedAt != nil {
			p.TotalDurationMS = now.Sub(*p.StartedAt).Milliseconds()
		}
	}
	return p, nil
}

// RollbackSteps returns the steps that undo p: one per completed,
// reversible step, latest first, each a pending step whose action is
// rollback_<action>, with the parameters of the step it undoes and
// RollbackOf naming it (the executor sends that step's result along).
// newID names each (a step's id is its task's, so it must be one a task
// id may be).
func RollbackSteps(p orchestrator.Plan, newID func() string) []orchestrator.PlanStep {
	var out []orchestrator.PlanStep
	for i := len(p.Steps) - 1; i >= 0; i-- {
		s := p.Steps[i]
		if s.Status != orchestrator.StepCompleted || !s.Reversible || s.RollbackOf != "" {
			continue
		}
		out = append(out, orchestrator.PlanStep{
			ID:         newID(),
			Action:     rollbackPrefix + s.Action,
			AgentType:  s.AgentType,
			Parameters: s.Parameters,
			Critical:   true,
			Status:     orchestrator.StepPending,
			RollbackOf: s.ID,
		})
	}
	return out
}
