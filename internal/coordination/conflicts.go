package coordination

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Detect returns the conflicts among recs, a batch that passed Validate:
//
//   - resource: two recommendations share an affected resource;
//   - action: two recommendations share an affected resource and their
//     actions contradict each other in actions (either order). It takes
//     the place of the resource conflict of the same pair: one conflict
//     per pair, the more specific;
//   - dependency: recommendations that depend on each other in a cycle,
//     of any length (a recommendation depending on itself is one); one
//     conflict per cycle (strongly connected component).
//
// Two recommendations of which one directly depends on the other do not
// conflict over their resources: the dependency orders them (a snapshot
// before a migration of the same instance), and their plans run in that
// order.
//
// The answer does not depend on the order of recs: conflicts are sorted
// by their recommendation ids, then type, and newID is called for each in
// that order. Ids come from newID rather than from the members' ids
// because recommendation ids are the submitter's and repeat across
// batches, while a conflict id must name one stored conflict. The work
// is O(n^2 + e) for n recommendations with e dependencies, plus the
// resource lists.
func Detect(recs []orchestrator.Recommendation, actions ActionTable, newID func() string, now time.Time) []orchestrator.Conflict {
	g := newGraph(recs)
	var out []orchestrator.Conflict
	risk := func(ids ...int) orchestrator.RiskLevel {
		worst := 0
		for _, i := range ids {
			worst = max(worst, g.recs[i].RiskLevel.Rank())
		}
		return orchestrator.RiskLevels[worst]
	}

	// Pairs sharing a resource, each once, with the resources they share.
	byResource := map[string][]int{}
	for _, i := range g.byID {
		for _, res := range g.recs[i].AffectedResources {
			if l := byResource[res]; len(l) == 0 || l[len(l)-1] != i {
				byResource[res] = append(l, i)
			}
		}
	}
	shared := map[[2]int][]string{}
	for res, members := range byResource {
		for x, a := range members {
			for _, b := range members[x+1:] {
				if g.deps[a][b] || g.deps[b][a] {
					continue
				}
				shared[pairKey(g, a, b)] = append(shared[pairKey(g, a, b)], res)
			}
		}
	}
	for pair, resources := range shared {
		a, b := g.recs[pair[0]], g.recs[pair[1]]
		slices.Sort(resources)
		c := orchestrator.Conflict{
			Type:              orchestrator.ConflictResource,
			RecommendationIDs: []string{a.ID, b.ID},
			Severity:          risk(pair[0], pair[1]),
			DetectedAt:        now,
			Description:       fmt.Sprintf("%s and %s both change %s", a.ID, b.ID, listOf(resources)),
		}
		if actions.Contradict(a.Action, b.Action) {
			c.Type = orchestrator.ConflictAction
			c.Description = fmt.Sprintf("%s (%s) and %s (%s) contradict each other on %s", a.ID, a.Action, b.ID, b.Action, listOf(resources))
		}
		out = append(out, c)
	}

	for _, cycle := range g.cycles() {
		ids := make([]string, len(cycle))
		for k, i := range cycle {
			ids[k] = g.recs[i].ID
		}
		desc := fmt.Sprintf("%s depends on itself: it can never be applied first", ids[0])
		if len(ids) > 1 {
			desc = fmt.Sprintf("%s depend on each other in a cycle: no order applies them", listOf(ids))
		}
		out = append(out, orchestrator.Conflict{
			Type:              orchestrator.ConflictDependency,
			RecommendationIDs: ids,
			Severity:          risk(cycle...),
			DetectedAt:        now,
			Description:       desc,
		})
	}

	sortConflicts(out)
	for i := range out {
		out[i].ID = newID()
	}
	return out
}

// pairKey orders a pair by id, so that a pair is one key whichever way
// it was found.
func pairKey(g *graph, a, b int) [2]int {
	if g.recs[a].ID > g.recs[b].ID {
		a, b = b, a
	}
	return [2]int{a, b}
}

// sortConflicts orders conflicts by their (sorted) recommendation ids,
// then type: an order that does not depend on the batch's.
func sortConflicts(cs []orchestrator.Conflict) {
	slices.SortStableFunc(cs, func(a, b orchestrator.Conflict) int {
		return cmp.Or(slices.Compare(a.RecommendationIDs, b.RecommendationIDs), cmp.Compare(a.Type, b.Type))
	})
}

// listOf names a few items: a, b, c and 4 more.
func listOf(items []string) string {
	const shown = 5
	if len(items) <= shown {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:shown], ", "), len(items)-shown)
}

// graph is a batch indexed for detection and resolution.
type graph struct {
	recs []orchestrator.Recommendation
	// byID are the indexes of recs in id order.
	byID []int
	// deps[i] holds the indexes i depends on (within the batch).
	deps []map[int]bool
	// depList[i] is deps[i] in id order, for deterministic walks.
	depList [][]int
	index   map[string]int
}

func newGraph(recs []orchestrator.Recommendation) *graph {
	g := &graph{recs: recs, index: make(map[string]int, len(recs)), deps: make([]map[int]bool, len(recs)), depList: make([][]int, len(recs))}
	g.byID = make([]int, len(recs))
	for i := range recs {
		g.byID[i] = i
	}
	slices.SortStableFunc(g.byID, func(a, b int) int { return cmp.Compare(recs[a].ID, recs[b].ID) })
	for _, i := range g.byID {
		if _, dup := g.index[recs[i].ID]; !dup {
			g.index[recs[i].ID] = i
		}
	}
	for i, r := range recs {
		g.deps[i] = map[int]bool{}
		for _, d := range r.Dependencies {
			if j, ok := g.index[d]; ok && !g.deps[i][j] {
				g.deps[i][j] = true
				g.depList[i] = append(g.depList[i], j)
			}
		}
		slices.SortFunc(g.depList[i], func(a, b int) int { return cmp.Compare(recs[a].ID, recs[b].ID) })
	}
	return g
}

// cycles returns the dependency cycles (Tarjan's strongly connected
// components with more than one member, or one depending on itself),
// each as indexes in id order.
func (g *graph) cycles() [][]int {
	n := len(g.recs)
	var (
		order   = make([]int, n) // discovery order, from 1; 0 = unvisited
		low     = make([]int, n)
		onStack = make([]bool, n)
		stack   []int
		next    = 1
		out     [][]int
	)
	var visit func(v int)
	visit = func(v int) {
		order[v], low[v] = next, next
		next++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range g.depList[v] {
			switch {
			case order[w] == 0:
				visit(w)
				low[v] = min(low[v], low[w])
			case onStack[w]:
				low[v] = min(low[v], order[w])
			}
		}
		if low[v] != order[v] {
			return
		}
		var scc []int
		for {
			w := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[w] = false
			scc = append(scc, w)
			if w == v {
				break
			}
		}
		if len(scc) > 1 || g.deps[v][v] {
			slices.SortFunc(scc, func(a, b int) int { return cmp.Compare(g.recs[a].ID, g.recs[b].ID) })
			out = append(out, scc)
		}
	}
	for _, v := range g.byID {
		if order[v] == 0 {
			visit(v)
		}
	}
	return out
}
