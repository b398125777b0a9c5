package coordination_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

func TestValidate(t *testing.T) {
	cfg := defaultConfig(t)
	cfg.MaxBatch = 3
	valid := func() orchestrator.CoordinateRequest {
		return orchestrator.CoordinateRequest{CustomerID: "cust", Recommendations: []orchestrator.Recommendation{
			rec("a", on("i-1")), rec("b", dependsOn("c")), rec("c", func(r *orchestrator.Recommendation) { r.CustomerID = "cust" }),
		}}
	}
	for _, tc := range []struct {
		name   string
		change func(*orchestrator.CoordinateRequest)
		field  string // the field the error names; "" when valid
		msg    string // part of the message
	}{
		{"valid", func(*orchestrator.CoordinateRequest) {}, "", ""},
		{"self dependency is a conflict, not invalid", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Dependencies = []string{"a"} }, "", ""},
		{"confidence bounds included", func(r *orchestrator.CoordinateRequest) {
			r.Recommendations[0].Confidence, r.Recommendations[1].Confidence = 0, 1
		}, "", ""},
		{"null parameters", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Parameters = []byte("null") }, "", ""},
		{"no customer", func(r *orchestrator.CoordinateRequest) { r.CustomerID = " " }, "customer_id", "required"},
		{"NUL in customer", func(r *orchestrator.CoordinateRequest) { r.CustomerID = "ac\x00me" }, "customer_id", "NUL"},
		{"NUL in a title", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].Title = "a\x00" }, "recommendations[1].title", "NUL"},
		{"NUL in a resource", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].AffectedResources = []string{"i-\x00"} }, "recommendations[1].affected_resources[0]", "NUL"},
		{"reserved parameter", func(r *orchestrator.CoordinateRequest) {
			r.Recommendations[0].Parameters = []byte(`{"coordination":{"plan_id":"forged"}}`)
		}, "recommendations[0].parameters.coordination", "reserved"},
		{"empty batch", func(r *orchestrator.CoordinateRequest) { r.Recommendations = nil }, "recommendations", "empty"},
		{"batch too large", func(r *orchestrator.CoordinateRequest) {
			r.Recommendations = append(r.Recommendations, rec("d"))
		}, "recommendations", "at most 3"},
		{"missing id", func(r *orchestrator.CoordinateRequest) { r.Recommendations[2].ID = "" }, "recommendations[2].id", "required"},
		{"duplicate id", func(r *orchestrator.CoordinateRequest) { r.Recommendations[2].ID = "a" }, "recommendations[2].id", "recommendations[0].id"},
		{"other customer", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].CustomerID = "other" }, "recommendations[1].customer_id", `"other"`},
		{"no agent type", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].AgentType = "" }, "recommendations[1].agent_type", "required"},
		{"unknown agent type", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].AgentType = "magic" }, "recommendations[1].agent_type", "cost"},
		{"no action", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Action = "" }, "recommendations[0].action", "empty"},
		{"bad action", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Action = "rm -rf" }, "recommendations[0].action", ""},
		{"action too long to roll back", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Action = strings.Repeat("a", 56) }, "recommendations[0].action", "at most 55"},
		{"unknown risk", func(r *orchestrator.CoordinateRequest) { r.Recommendations[2].RiskLevel = "severe" }, "recommendations[2].risk_level", "low, medium, high, critical"},
		{"no risk", func(r *orchestrator.CoordinateRequest) { r.Recommendations[2].RiskLevel = "" }, "recommendations[2].risk_level", ""},
		{"confidence over 1", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].Confidence = 1.01 }, "recommendations[1].confidence", "0 to 1"},
		{"confidence negative", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].Confidence = -0.1 }, "recommendations[1].confidence", ""},
		{"confidence NaN", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].Confidence = math.NaN() }, "recommendations[1].confidence", ""},
		{"savings infinite", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].EstimatedSavings = math.Inf(1) }, "recommendations[1].estimated_savings", ""},
		{"unknown dependency", func(r *orchestrator.CoordinateRequest) { r.Recommendations[1].Dependencies = []string{"c", "zz"} }, "recommendations[1].dependencies[1]", `"zz"`},
		{"empty resource", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].AffectedResources = []string{"i-1", ""} }, "recommendations[0].affected_resources[1]", ""},
		{"parameters not an object", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Parameters = []byte("[1]") }, "recommendations[0].parameters", "object"},
		{"metadata not an object", func(r *orchestrator.CoordinateRequest) { r.Recommendations[0].Metadata = []byte(`"x"`) }, "recommendations[0].metadata", "object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := valid()
			tc.change(&req)
			err := coordination.Validate(req, cfg)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			var fe *coordination.FieldError
			if !errors.As(err, &fe) || !errors.Is(err, coordination.ErrInvalid) {
				t.Fatalf("Validate = %v, want a FieldError", err)
			}
			if fe.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Validate = %q (field %s), want field %s saying %q", err, fe.Field, tc.field, tc.msg)
			}
			if tooLarge := errors.Is(err, coordination.ErrTooLarge); tooLarge != (tc.name == "batch too large") {
				t.Errorf("errors.Is(err, ErrTooLarge) = %v", tooLarge)
			}
		})
	}
}
