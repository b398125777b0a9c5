package coordination_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// FuzzCoordinateRequest decodes any bytes as a coordinate request,
// validates it, and resolves the valid ones twice, the second time
// reversed: no panic, the same answer, and the resolution's invariants.
func FuzzCoordinateRequest(f *testing.F) {
	for _, seed := range []string{
		`{"customer_id":"c","recommendations":[{"id":"a","agent_type":"cost","action":"scale_up","risk_level":"low","affected_resources":["x"],"priority":2},` +
			`{"id":"b","agent_type":"cost","action":"scale_down","risk_level":"high","affected_resources":["x","y"],"dependencies":["c"]},` +
			`{"id":"c","agent_type":"resource","action":"tune","risk_level":"medium","affected_resources":["y"],"dependencies":["b"],"confidence":1}]}`,
		`{"customer_id":"c","recommendations":[{"id":"a","agent_type":"cost","action":"t","risk_level":"critical","dependencies":["a"]}]}`,
		`{"customer_id":"c","recommendations":[{"id":"a"},{"id":"a"}]}`,
		`{}`, `[]`, `null`,
	} {
		f.Add([]byte(seed))
	}
	cfg := defaultConfig(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req orchestrator.CoordinateRequest
		if json.Unmarshal(data, &req) != nil || coordination.Validate(req, cfg) != nil {
			return
		}
		resolve := func(recs []orchestrator.Recommendation) string {
			conflicts := coordination.Detect(recs, cfg.ContradictoryActions, counter("c"), now)
			got, resolved := coordination.Resolve(recs, conflicts, counter("x"), now)
			b, err := json.Marshal([]any{got, resolved})
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		first := resolve(req.Recommendations)
		reversed := slices.Clone(req.Recommendations)
		slices.Reverse(reversed)
		if second := resolve(reversed); second != first {
			t.Fatalf("reversed input resolved differently:\n%s\n%s", second, first)
		}
		checkInvariants(t, req.Recommendations, cfg.ContradictoryActions)
	})
}
