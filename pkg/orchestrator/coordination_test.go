package orchestrator_test

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// TestCoordinationFieldNames pins the JSON names of the coordination wire
// types to those of OptiInfra's earlier engine (the wire
// protocol), plus the additions this service documents.
func TestCoordinationFieldNames(t *testing.T) {
	for _, tc := range []struct {
		typ  reflect.Type
		want string
	}{
		{reflect.TypeFor[orchestrator.Recommendation](), "id agent_id agent_type customer_id type title description action risk_level estimated_savings estimated_impact affected_resources parameters dependencies priority confidence created_at expires_at status metadata" +
			" superseded_by record_id coordination_id"},
		{reflect.TypeFor[orchestrator.Conflict](), "id type recommendation_ids description severity resolved resolution detected_at"},
		{reflect.TypeFor[orchestrator.Approval](), "id recommendation_id customer_id risk_level status requested_by requested_at approved_by approved_at rejected_by rejected_at rejection_reason expires_at" +
			" required_approvals approvals"},
		{reflect.TypeFor[orchestrator.Plan](), "id recommendation_id customer_id steps status current_step created_at started_at completed_at rolled_back_at total_duration_ms waiting_for"},
		{reflect.TypeFor[orchestrator.PlanStep](), "id action agent_id parameters critical reversible status result error started_at completed_at duration_ms" +
			" agent_type rollback_of task_id"},
		{reflect.TypeFor[orchestrator.Event](), "seq at customer_id kind subject_id actor request_id details"},
		{reflect.TypeFor[orchestrator.CoordinateRequest](), "customer_id recommendations auto_approve execute_now"},
		{reflect.TypeFor[orchestrator.CoordinateResponse](), "id total_recommendations conflicts_detected conflicts_resolved recommendations_kept approvals_required auto_approved conflicts recommendations approvals execution_plans created_at"},
	} {
		got := map[string]bool{}
		for f := range tc.typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			got[name] = true
		}
		want := strings.Fields(tc.want)
		if g := slices.Sorted(maps.Keys(got)); !slices.Equal(g, slices.Sorted(slices.Values(want))) {
			t.Errorf("%s fields = %v, want %v", tc.typ, g, slices.Sorted(slices.Values(want)))
		}
	}
}

func TestRiskLevelRank(t *testing.T) {
	for want, r := range orchestrator.RiskLevels {
		if got := r.Rank(); got != want {
			t.Errorf("%s.Rank() = %d, want %d", r, got, want)
		}
	}
	if got := orchestrator.RiskLevel("severe").Rank(); got != -1 {
		t.Errorf("unknown level rank = %d, want -1", got)
	}
}

func TestPlanStatusTerminal(t *testing.T) {
	terminal := map[orchestrator.PlanStatus]bool{
		orchestrator.PlanCompleted: true, orchestrator.PlanRolledBack: true,
		orchestrator.PlanRollbackFailed: true, orchestrator.PlanCancelled: true,
		orchestrator.PlanPending: false, orchestrator.PlanRunning: false,
		orchestrator.PlanFailed: true, orchestrator.PlanRollingBack: false,
	}
	for s, want := range terminal {
		if got := s.Terminal(); got != want {
			t.Errorf("%s.Terminal() = %v, want %v", s, got, want)
		}
	}
}

// TestRecommendationDecodes decodes a recommendation as OptiInfra's agents
// send it: opaque objects stay as given.
func TestRecommendationDecodes(t *testing.T) {
	in := `{"id":"r1","agent_id":"a","agent_type":"cost","action":"migrate_to_spot","risk_level":"medium",
		"estimated_savings":120.5,"estimated_impact":{"cost":"-30%"},"affected_resources":["i-1"],
		"parameters":{"az":"us-east-1a"},"dependencies":["r0"],"priority":3,"confidence":0.9,
		"created_at":"2026-01-02T03:04:05Z","metadata":{"k":1}}`
	var r orchestrator.Recommendation
	if err := json.Unmarshal([]byte(in), &r); err != nil {
		t.Fatal(err)
	}
	if r.RiskLevel != orchestrator.RiskMedium || string(r.Parameters) != `{"az":"us-east-1a"}` ||
		string(r.EstimatedImpact) != `{"cost":"-30%"}` || r.CreatedAt.Year() != 2026 || r.Dependencies[0] != "r0" {
		t.Errorf("decoded %+v", r)
	}
}
