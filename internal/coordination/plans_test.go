package coordination_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// stepsOf writes steps as action/flags: c critical, r reversible.
func stepsOf(steps []orchestrator.PlanStep) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.Action + "/"
		if s.Critical {
			out[i] += "c"
		}
		if s.Reversible {
			out[i] += "r"
		}
	}
	return out
}

func TestNewPlan(t *testing.T) {
	templates := defaultConfig(t).PlanTemplates
	for _, tc := range []struct {
		action string
		want   []string
	}{
		{"migrate_to_spot", []string{"take_snapshot/cr", "migrate_workload/cr", "validate_quality/c"}},
		{"scale_down", []string{"validate_capacity/c", "scale/cr", "validate_performance/c"}},
		{"tune_kv_cache", []string{"tune_kv_cache/cr"}},
	} {
		r := rec("r1", action(tc.action), func(r *orchestrator.Recommendation) {
			r.AgentType, r.CustomerID, r.Parameters = orchestrator.AgentTypeResource, "cust", []byte(`{"n":2}`)
		})
		p := coordination.NewPlan(r, templates, counter("id"), now)
		if got := stepsOf(p.Steps); !slices.Equal(got, tc.want) {
			t.Errorf("%s: steps %v, want %v", tc.action, got, tc.want)
		}
		if p.ID != "id-1" || p.RecommendationID != "r1" || p.CustomerID != "cust" || p.Status != orchestrator.PlanPending ||
			!p.CreatedAt.Equal(now) || p.CurrentStep != 0 || p.StartedAt != nil {
			t.Errorf("%s: plan %+v", tc.action, p)
		}
		for i, s := range p.Steps {
			if s.ID != fmt.Sprintf("id-%d", i+2) || s.AgentType != orchestrator.AgentTypeResource || string(s.Parameters) != `{"n":2}` ||
				s.Status != orchestrator.StepPending || s.AgentID != "" {
				t.Errorf("%s: step %d = %+v", tc.action, i, s)
			}
		}
	}
}

func TestCanTransition(t *testing.T) {
	all := []orchestrator.PlanStatus{
		orchestrator.PlanPending, orchestrator.PlanRunning, orchestrator.PlanCompleted, orchestrator.PlanFailed,
		orchestrator.PlanRollingBack, orchestrator.PlanRolledBack, orchestrator.PlanRollbackFailed, orchestrator.PlanCancelled,
	}
	allowed := map[[2]orchestrator.PlanStatus]bool{
		{orchestrator.PlanPending, orchestrator.PlanRunning}:            true,
		{orchestrator.PlanPending, orchestrator.PlanCancelled}:          true,
		{orchestrator.PlanRunning, orchestrator.PlanCompleted}:          true,
		{orchestrator.PlanRunning, orchestrator.PlanFailed}:             true,
		{orchestrator.PlanRunning, orchestrator.PlanRollingBack}:        true,
		{orchestrator.PlanRunning, orchestrator.PlanCancelled}:          true,
		{orchestrator.PlanRollingBack, orchestrator.PlanRolledBack}:     true,
		{orchestrator.PlanRollingBack, orchestrator.PlanRollbackFailed}: true,
	}
	// Every pair, so that a move added by mistake shows as well as one
	// missing.
	for _, from := range all {
		for _, to := range all {
			want := allowed[[2]orchestrator.PlanStatus{from, to}]
			if got := coordination.CanTransition(from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", from, to, got, want)
			}
			if from.Terminal() && want {
				t.Errorf("terminal %s may move to %s", from, to)
			}
		}
	}
}

func TestTransition(t *testing.T) {
	p := coordination.NewPlan(rec("r", action("scale_down")), defaultConfig(t).PlanTemplates, counter("id"), now)
	start, end := now.Add(time.Second), now.Add(3*time.Second)
	var err error
	if p, err = coordination.Transition(p, orchestrator.PlanRunning, start); err != nil || p.StartedAt == nil || !p.StartedAt.Equal(start) {
		t.Fatalf("to running: %v, started %v", err, p.StartedAt)
	}
	// Executing twice is a running plan asked to run again.
	if _, err := coordination.Transition(p, orchestrator.PlanRunning, end); !errors.Is(err, coordination.ErrInvalidTransition) {
		t.Errorf("running twice: %v, want ErrInvalidTransition", err)
	}
	if failed, err := coordination.Transition(p, orchestrator.PlanFailed, end); err != nil || failed.CompletedAt == nil || failed.TotalDurationMS != 2000 {
		t.Fatalf("to failed: %v, completed %v after %dms", err, failed.CompletedAt, failed.TotalDurationMS)
	}
	if p, err = coordination.Transition(p, orchestrator.PlanRollingBack, end); err != nil || p.CompletedAt == nil || p.TotalDurationMS != 2000 {
		t.Fatalf("to rolling back: %v, completed %v after %dms", err, p.CompletedAt, p.TotalDurationMS)
	}
	if p, err = coordination.Transition(p, orchestrator.PlanRolledBack, end.Add(time.Second)); err != nil || p.RolledBackAt == nil ||
		!p.RolledBackAt.Equal(end.Add(time.Second)) || p.TotalDurationMS != 3000 {
		t.Fatalf("to rolled back: %v, at %v, %dms in all", err, p.RolledBackAt, p.TotalDurationMS)
	}
	before := p
	if p, err = coordination.Transition(p, orchestrator.PlanCancelled, end); !errors.Is(err, coordination.ErrInvalidTransition) || p.Status != before.Status {
		t.Errorf("cancelling a rolled back plan: %v, status %s", err, p.Status)
	}
}

func TestRollbackSteps(t *testing.T) {
	p := coordination.NewPlan(rec("r", action("migrate_to_spot")), defaultConfig(t).PlanTemplates, counter("id"), now)
	// take_snapshot and migrate_workload done, validate_quality failed.
	p.Steps[0].Status, p.Steps[1].Status, p.Steps[2].Status = orchestrator.StepCompleted, orchestrator.StepCompleted, orchestrator.StepFailed
	p.Steps[1].Parameters = []byte(`{"k":1}`)
	got := coordination.RollbackSteps(p, counter("rb"))
	if want := []string{"rollback_migrate_workload/c", "rollback_take_snapshot/c"}; !slices.Equal(stepsOf(got), want) {
		t.Fatalf("rollback steps %v, want %v", stepsOf(got), want)
	}
	if got[0].RollbackOf != p.Steps[1].ID || got[0].ID != "rb-1" || got[1].ID != "rb-2" || string(got[0].Parameters) != `{"k":1}` ||
		got[0].Status != orchestrator.StepPending || got[1].RollbackOf != p.Steps[0].ID {
		t.Errorf("rollback steps %+v", got)
	}

	// Irreversible completed steps, and steps not completed, are left.
	p = coordination.NewPlan(rec("r", action("scale_down")), defaultConfig(t).PlanTemplates, counter("id"), now)
	p.Steps[0].Status, p.Steps[1].Status = orchestrator.StepCompleted, orchestrator.StepFailed
	if got := coordination.RollbackSteps(p, counter("rb")); len(got) != 0 {
		t.Errorf("rollback of a validation and a failed step: %v", stepsOf(got))
	}
	// Rollback steps appended to a plan are not rolled back themselves.
	p.Steps[1].Status = orchestrator.StepCompleted
	p.Steps = append(p.Steps, coordination.RollbackSteps(p, counter("rb"))...)
	p.Steps[len(p.Steps)-1].Status = orchestrator.StepCompleted
	if got := stepsOf(coordination.RollbackSteps(p, counter("rb"))); !slices.Equal(got, []string{"rollback_scale/c"}) {
		t.Errorf("rollback steps %v, want only rollback_scale", got)
	}
}
