package coordination_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// brief is a conflict as the tests compare it: type and members.
func brief(cs []orchestrator.Conflict) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = string(c.Type) + ":" + strings.Join(c.RecommendationIDs, ",")
	}
	return out
}

func TestDetect(t *testing.T) {
	table := defaultConfig(t).ContradictoryActions
	for _, tc := range []struct {
		name string
		recs []orchestrator.Recommendation
		want []string
	}{
		{"no shared resource", []orchestrator.Recommendation{rec("a", on("i-1")), rec("b", on("i-2")), rec("c")}, nil},
		{"one shared resource", []orchestrator.Recommendation{rec("a", on("i-1", "i-2")), rec("b", on("i-2", "i-3"))}, []string{"resource:a,b"}},
		{"two shared resources, one conflict", []orchestrator.Recommendation{rec("b", on("i-1", "i-2")), rec("a", on("i-2", "i-1", "i-1"))}, []string{"resource:a,b"}},
		{"three on one resource", []orchestrator.Recommendation{rec("c", on("x")), rec("a", on("x")), rec("b", on("x"))},
			[]string{"resource:a,b", "resource:a,c", "resource:b,c"}},
		{"contradictory actions", []orchestrator.Recommendation{rec("a", on("x"), action("scale_up")), rec("b", on("x"), action("scale_down"))}, []string{"action:a,b"}},
		{"contradictory actions the other way", []orchestrator.Recommendation{rec("a", on("x"), action("scale_down")), rec("b", on("x"), action("scale_up"))}, []string{"action:a,b"}},
		{"spot and on demand", []orchestrator.Recommendation{rec("b", on("x"), action("migrate_to_on_demand")), rec("a", on("x"), action("migrate_to_spot"))}, []string{"action:a,b"}},
		{"contradictory actions on different resources", []orchestrator.Recommendation{rec("a", on("x"), action("scale_up")), rec("b", on("y"), action("scale_down"))}, nil},
		{"same action twice", []orchestrator.Recommendation{rec("a", on("x"), action("scale_up")), rec("b", on("x"), action("scale_up"))}, []string{"resource:a,b"}},
		{"a dependency orders a shared resource", []orchestrator.Recommendation{rec("snap", on("x")), rec("move", on("x"), dependsOn("snap"))}, nil},
		{"self dependency", []orchestrator.Recommendation{rec("a", dependsOn("a")), rec("b")}, []string{"dependency:a"}},
		{"two-cycle", []orchestrator.Recommendation{rec("a", dependsOn("b")), rec("b", dependsOn("a"))}, []string{"dependency:a,b"}},
		{"four-cycle and a tail", []orchestrator.Recommendation{
			rec("d", dependsOn("a")), rec("c", dependsOn("d")), rec("b", dependsOn("c")), rec("a", dependsOn("b")), rec("e", dependsOn("a")),
		}, []string{"dependency:a,b,c,d"}},
		{"a chain is no cycle", []orchestrator.Recommendation{rec("a", dependsOn("b")), rec("b", dependsOn("c")), rec("c")}, nil},
		{"two cycles", []orchestrator.Recommendation{rec("a", dependsOn("b")), rec("b", dependsOn("a")), rec("c", dependsOn("c"))}, []string{"dependency:a,b", "dependency:c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := coordination.Detect(tc.recs, table, counter("c"), now)
			if !slices.Equal(brief(got), tc.want) {
				t.Errorf("conflicts = %v, want %v", brief(got), tc.want)
			}
			for i, c := range got {
				if want := fmt.Sprintf("c-%d", i+1); c.ID != want || !c.DetectedAt.Equal(now) || c.Description == "" || c.Resolved {
					t.Errorf("conflict %d = %+v: want id %s, detected now, described, not resolved", i, c, want)
				}
			}
		})
	}
}

func TestDetectSeverityIsTheRiskiest(t *testing.T) {
	got := coordination.Detect([]orchestrator.Recommendation{
		rec("a", on("x")), rec("b", on("x"), func(r *orchestrator.Recommendation) { r.RiskLevel = orchestrator.RiskHigh }),
	}, nil, counter("c"), now)
	if len(got) != 1 || got[0].Severity != orchestrator.RiskHigh {
		t.Errorf("conflicts = %+v, want one of severity high", got)
	}
}

// outcome is a recommendation as the tests compare it.
func outcome(recs []orchestrator.Recommendation) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID + "=" + string(r.Status)
		if r.SupersededBy != "" {
			out[i] += ">" + r.SupersededBy
		}
	}
	return out
}

func TestResolve(t *testing.T) {
	table := defaultConfig(t).ContradictoryActions
	with := func(f func(*orchestrator.Recommendation)) func(*orchestrator.Recommendation) { return f }
	for _, tc := range []struct {
		name  string
		recs  []orchestrator.Recommendation
		want  []string // in rank order
		extra []string // the conflicts resolution adds
	}{
		{"no conflict", []orchestrator.Recommendation{rec("b"), rec("a")}, []string{"a=pending", "b=pending"}, nil},
		// A discarded recommendation must not knock out a third: B loses
		// to A, so C, which conflicts only with B, is kept.
		{"three-way", []orchestrator.Recommendation{
			rec("C", prio(1), on("y")), rec("B", prio(2), on("x", "y")), rec("A", prio(3), on("x")),
		}, []string{"A=pending", "B=superseded>A", "C=pending"}, nil},
		{"superseded by the best-ranked kept rival", []orchestrator.Recommendation{
			rec("low", prio(1), on("x", "y")), rec("top", prio(3), on("x")), rec("mid", prio(2), on("y")),
		}, []string{"top=pending", "mid=pending", "low=superseded>top"}, nil},
		{"savings after priority", []orchestrator.Recommendation{
			rec("a", on("x"), with(func(r *orchestrator.Recommendation) { r.EstimatedSavings = 10 })),
			rec("b", on("x"), with(func(r *orchestrator.Recommendation) { r.EstimatedSavings = 20 })),
		}, []string{"b=pending", "a=superseded>b"}, nil},
		{"confidence after savings", []orchestrator.Recommendation{
			rec("a", on("x"), with(func(r *orchestrator.Recommendation) { r.Confidence = 0.4 })),
			rec("b", on("x"), with(func(r *orchestrator.Recommendation) { r.Confidence = 0.9 })),
		}, []string{"b=pending", "a=superseded>b"}, nil},
		{"lower risk after confidence", []orchestrator.Recommendation{
			rec("a", on("x"), with(func(r *orchestrator.Recommendation) { r.RiskLevel = orchestrator.RiskHigh })),
			rec("b", on("x"), with(func(r *orchestrator.Recommendation) { r.RiskLevel = orchestrator.RiskMedium })),
		}, []string{"b=pending", "a=superseded>b"}, nil},
		{"id last", []orchestrator.Recommendation{rec("b", on("x")), rec("a", on("x"))}, []string{"a=pending", "b=superseded>a"}, nil},
		{"action conflict", []orchestrator.Recommendation{
			rec("up", prio(1), on("x"), action("scale_up")), rec("down", prio(2), on("x"), action("scale_down")),
		}, []string{"down=pending", "up=superseded>down"}, nil},
		{"cycle rejected whole", []orchestrator.Recommendation{
			rec("a", prio(9), dependsOn("b")), rec("b", dependsOn("a")), rec("c"),
		}, []string{"a=rejected", "b=rejected", "c=pending"}, nil},
		{"depending on a cycle", []orchestrator.Recommendation{
			rec("a", dependsOn("a")), rec("b", dependsOn("a")),
		}, []string{"a=rejected", "b=rejected"}, []string{"dependency:b,a"}},
		// dep loses to rival, so its dependent cannot be kept either, and
		// is rejected transitively.
		{"dependency superseded", []orchestrator.Recommendation{
			rec("rival", prio(5), on("x")), rec("dep", prio(1), on("x")), rec("child", prio(1), dependsOn("dep")), rec("grandchild", dependsOn("child")),
		}, []string{"rival=pending", "child=rejected", "dep=superseded>rival", "grandchild=rejected"}, []string{"dependency:child,dep", "dependency:grandchild,child"}},
		// top outranks rival and needs prep first: prep is decided at top's
		// rank, ahead of rival, so top wins and rival is superseded.
		{"a prerequisite takes its dependent's rank", []orchestrator.Recommendation{
			rec("top", prio(9), on("x"), dependsOn("prep")), rec("rival", prio(5), on("x")), rec("prep", prio(1), on("p")),
		}, []string{"top=pending", "rival=superseded>top", "prep=pending"}, nil},
		{"a dependency sharing the resource is kept with it", []orchestrator.Recommendation{
			rec("snap", on("i-1")), rec("move", prio(2), on("i-1"), dependsOn("snap")),
		}, []string{"move=pending", "snap=pending"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conflicts := coordination.Detect(tc.recs, table, counter("c"), now)
			got, resolved := coordination.Resolve(tc.recs, conflicts, counter("x"), now)
			if !slices.Equal(outcome(got), tc.want) {
				t.Errorf("resolved = %v, want %v", outcome(got), tc.want)
			}
			if extra := brief(resolved[len(conflicts):]); !slices.Equal(extra, tc.extra) {
				t.Errorf("new conflicts = %v, want %v", extra, tc.extra)
			}
			for i, c := range resolved {
				if !c.Resolved || c.Resolution == "" || c.ID == "" {
					t.Errorf("conflict %d not resolved: %+v", i, c)
				}
			}
			for _, r := range tc.recs {
				if r.Status != "" {
					t.Errorf("Resolve changed its input: %s is %s", r.ID, r.Status)
				}
			}
		})
	}
}

func TestResolveResolution(t *testing.T) {
	recs := []orchestrator.Recommendation{rec("C", prio(1), on("y")), rec("B", prio(2), on("x", "y")), rec("A", prio(3), on("x"))}
	_, got := coordination.Resolve(recs, coordination.Detect(recs, nil, counter("c"), now), counter("x"), now)
	want := []string{"A kept; B superseded by A", "B superseded by A; C kept"}
	for i, c := range got {
		if c.Resolution != want[i] {
			t.Errorf("conflict %s resolution = %q, want %q", brief(got[i:i+1]), c.Resolution, want[i])
		}
	}
}

// randomBatch is a valid batch of n recommendations with many conflicts:
// few resources, contradictory actions, ties in every rank key, and
// dependencies (some cyclic).
func randomBatch(rng *rand.Rand, n int) []orchestrator.Recommendation {
	actions := []string{"scale_up", "scale_down", "start", "stop", "tune", "migrate_to_spot"}
	recs := make([]orchestrator.Recommendation, n)
	for i := range recs {
		r := rec(fmt.Sprintf("r%03d", i), prio(rng.IntN(3)), action(actions[rng.IntN(len(actions))]))
		r.EstimatedSavings = float64(rng.IntN(3) * 10)
		r.Confidence = float64(rng.IntN(3)) / 2
		r.RiskLevel = orchestrator.RiskLevels[rng.IntN(4)]
		for range rng.IntN(3) {
			r.AffectedResources = append(r.AffectedResources, fmt.Sprintf("i-%d", rng.IntN(n/2+1)))
		}
		if rng.IntN(4) == 0 {
			r.Dependencies = append(r.Dependencies, fmt.Sprintf("r%03d", rng.IntN(n)))
		}
		recs[i] = r
	}
	return recs
}

// TestResolveIgnoresInputOrder shuffles batches and expects the same
// conflicts, statuses and winners, byte for byte.
func TestResolveIgnoresInputOrder(t *testing.T) {
	table := defaultConfig(t).ContradictoryActions
	rng := rand.New(rand.NewPCG(1, 2))
	coordinate := func(recs []orchestrator.Recommendation) string {
		conflicts := coordination.Detect(recs, table, counter("c"), now)
		got, resolved := coordination.Resolve(recs, conflicts, counter("x"), now)
		b, err := json.Marshal([]any{got, resolved})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for batch := range 20 {
		recs := randomBatch(rng, 100)
		want := coordinate(recs)
		if !strings.Contains(want, `"superseded"`) || !strings.Contains(want, `"dependency"`) {
			t.Fatalf("batch %d has no supersession or dependency conflict: a weak test", batch)
		}
		for range 10 {
			rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
			if got := coordinate(recs); got != want {
				t.Fatalf("batch %d: shuffled input resolved differently:\n%s\nwant\n%s", batch, got, want)
			}
		}
		checkInvariants(t, recs, table)
	}
}

// checkInvariants checks what every resolution promises: no two kept
// recommendations conflict, every superseded one conflicts with its kept
// winner, which outranks it, and every kept one has its dependencies kept.
func checkInvariants(t *testing.T, recs []orchestrator.Recommendation, table coordination.ActionTable) {
	t.Helper()
	conflicts := coordination.Detect(recs, table, counter("c"), now)
	got, _ := coordination.Resolve(recs, conflicts, counter("x"), now)
	status := map[string]orchestrator.Recommendation{}
	dependents := map[string][]string{}
	for _, r := range got {
		status[r.ID] = r
		for _, d := range r.Dependencies {
			dependents[d] = append(dependents[d], r.ID)
		}
	}
	rivals := map[[2]string]bool{}
	for _, c := range conflicts {
		if c.Type != orchestrator.ConflictDependency {
			a, b := c.RecommendationIDs[0], c.RecommendationIDs[1]
			rivals[[2]string{a, b}], rivals[[2]string{b, a}] = true, true
			if status[a].Status == orchestrator.RecommendationPending && status[b].Status == orchestrator.RecommendationPending {
				t.Errorf("%s and %s conflict and are both kept", a, b)
			}
		}
	}
	for _, r := range got {
		switch r.Status {
		case orchestrator.RecommendationSuperseded:
			w := status[r.SupersededBy]
			if w.Status != orchestrator.RecommendationPending || !rivals[[2]string{r.ID, w.ID}] {
				t.Errorf("%s superseded by %s (%s), which is not a kept rival", r.ID, w.ID, w.Status)
			}
			// A winner may rank lower only as the prerequisite of a
			// better-ranked recommendation, decided at that one's rank.
			if coordination.Compare(w, r) > 0 && len(dependents[w.ID]) == 0 {
				t.Errorf("%s superseded by %s, which ranks lower and nothing waits for", r.ID, w.ID)
			}
		case orchestrator.RecommendationPending:
			for _, d := range r.Dependencies {
				if status[d].Status != orchestrator.RecommendationPending {
					t.Errorf("%s kept, but its dependency %s is %s", r.ID, d, status[d].Status)
				}
			}
		case orchestrator.RecommendationRejected:
		default:
			t.Errorf("%s has status %q", r.ID, r.Status)
		}
	}
}
