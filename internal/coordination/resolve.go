package coordination

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Compare ranks two recommendations for conflict resolution: negative when
// a comes first. Higher priority first, then higher estimated savings,
// then higher confidence, then lower risk, then the smaller id, so that
// two recommendations of one batch (whose ids differ) never tie.
func Compare(a, b orchestrator.Recommendation) int {
	return cmp.Or(
		cmp.Compare(b.Priority, a.Priority),
		cmp.Compare(b.EstimatedSavings, a.EstimatedSavings),
		cmp.Compare(b.Confidence, a.Confidence),
		cmp.Compare(a.RiskLevel.Rank(), b.RiskLevel.Rank()),
		cmp.Compare(a.ID, b.ID),
	)
}

// Resolve decides which recommendations of a validated batch are kept,
// given the conflicts Detect found among them, and returns every
// recommendation with its new status, best-ranked first (see Compare),
// and the conflicts resolved, followed by the dependency conflicts the
// resolution itself caused.
//
// The rule is greedy: recommendations are taken best-ranked first, and
// each is kept only if it conflicts with none already kept, so a
// recommendation that was discarded never knocks out another. A
// recommendation that loses becomes superseded, SupersededBy naming the
// best-ranked kept recommendation it conflicts with. Kept ones are
// pending (the approval policy comes next).
//
// Dependencies bend the order: a recommendation is decided only after
// those it depends on, and a dependency is taken at the rank of the
// best-ranked recommendation waiting for it, so that a low-ranked
// prerequisite of a high-ranked change is decided before the changes
// that change outranks. A recommendation whose dependency is not kept
// cannot be kept: it is rejected, with a new dependency conflict naming
// it and the dependencies it lost. Every member of a dependency cycle is
// rejected: no order applies them, and keeping one would mean applying
// it before a change its author said must come first.
//
// The answer does not depend on the order of recs or conflicts. newID
// names the new conflicts; now is their detected_at. The work is O(n^2 +
// e + c) for n recommendations, e dependencies and c conflicts.
func Resolve(recs []orchestrator.Recommendation, conflicts []orchestrator.Conflict, newID func() string, now time.Time) ([]orchestrator.Recommendation, []orchestrator.Conflict) {
	out := make([]orchestrator.Recommendation, len(recs))
	copy(out, recs)
	slices.SortFunc(out, Compare)
	g := newGraph(out)
	n := len(out)
	// out is in rank order: an index is a rank.

	conflicts = append([]orchestrator.Conflict(nil), conflicts...)
	sortConflicts(conflicts)
	rivals := make([][]int, n) // the pair conflicts of each recommendation
	inCycle := make([]bool, n)
	for _, c := range conflicts {
		ids := make([]int, 0, len(c.RecommendationIDs))
		for _, id := range c.RecommendationIDs {
			if i, ok := g.index[id]; ok {
				ids = append(ids, i)
			}
		}
		switch c.Type {
		case orchestrator.ConflictDependency:
			for _, i := range ids {
				inCycle[i] = true
			}
		default:
			for _, a := range ids {
				for _, b := range ids {
					if a != b {
						rivals[a] = append(rivals[a], b)
					}
				}
			}
		}
	}

	// effective[i] is the best rank among i and everything waiting for it,
	// directly or not. Walking from the best-ranked down, each index is
	// given its rank once, by the first (best) walk that reaches it.
	effective := make([]int, n)
	for i := range effective {
		effective[i] = -1
	}
	for r := range n {
		var walk func(i int)
		walk = func(i int) {
			if effective[i] >= 0 {
				return
			}
			effective[i] = r
			for _, d := range g.depList[i] {
				walk(d)
			}
		}
		walk(r)
	}

	// waiting[i] counts the undecided dependencies of i; dependents[d]
	// are those waiting for d.
	waiting := make([]int, n)
	dependents := make([][]int, n)
	for i := range n {
		for _, d := range g.depList[i] {
			dependents[d] = append(dependents[d], i)
			waiting[i]++
		}
	}
	var extra []orchestrator.Conflict
	kept := make([]bool, n)
	decided := make([]bool, n)
	decide := func(i int) {
		decided[i] = true
		for _, w := range dependents[i] {
			waiting[w]--
		}
	}
	for i := range n {
		if inCycle[i] {
			out[i].Status, out[i].SupersededBy = orchestrator.RecommendationRejected, ""
			decide(i)
		}
	}
	for {
		next := -1
		for i := range n {
			if !decided[i] && waiting[i] <= 0 && (next < 0 || effective[i] < effective[next]) {
				next = i // ties in effective rank go to the better rank: the lower index, found first
			}
		}
		if next < 0 {
			break
		}
		i := next
		var lost []string
		for _, d := range g.depList[i] {
			if !kept[d] {
				lost = append(lost, out[d].ID)
			}
		}
		winner := -1
		for _, r := range rivals[i] {
			if kept[r] && (winner < 0 || r < winner) {
				winner = r
			}
		}
		switch {
		case len(lost) > 0:
			out[i].Status, out[i].SupersededBy = orchestrator.RecommendationRejected, ""
			extra = append(extra, orchestrator.Conflict{
				Type:              orchestrator.ConflictDependency,
				RecommendationIDs: append([]string{out[i].ID}, lost...),
				Severity:          out[i].RiskLevel,
				Description:       fmt.Sprintf("%s depends on %s, which will not be applied", out[i].ID, listOf(lost)),
				Resolved:          true,
				Resolution:        out[i].ID + " rejected",
				DetectedAt:        now,
			})
		case winner >= 0:
			out[i].Status, out[i].SupersededBy = orchestrator.RecommendationSuperseded, out[winner].ID
		default:
			out[i].Status, out[i].SupersededBy = orchestrator.RecommendationPending, ""
			kept[i] = true
		}
		decide(i)
	}
	// Only a cycle the conflicts did not report leaves recommendations
	// undecided; they can never be applied either.
	for i := range n {
		if !decided[i] {
			out[i].Status, out[i].SupersededBy = orchestrator.RecommendationRejected, ""
		}
	}

	for k, c := range conflicts {
		var parts []string
		for _, id := range c.RecommendationIDs {
			i, ok := g.index[id]
			if !ok {
				continue
			}
			part := id + " " + string(out[i].Status)
			if kept[i] {
				part = id + " kept"
			} else if out[i].SupersededBy != "" {
				part += " by " + out[i].SupersededBy
			}
			parts = append(parts, part)
		}
		conflicts[k].Resolved = true
		conflicts[k].Resolution = strings.Join(parts, "; ")
	}
	for k := range extra {
		extra[k].ID = newID()
	}
	return out, append(conflicts, extra...)
}
