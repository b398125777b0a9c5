package coordination

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// MemoryStore is a Store in process memory: fast, bounded by maxRecords
// and Prune, and lost on restart.
type MemoryStore struct {
	mu              sync.RWMutex
	seq             uint64 // orders the rows of every table, and makes cursors
	coordinations   map[string]*memCoordination
	recommendations table[orchestrator.Recommendation]
	approvals       table[orchestrator.Approval]
	plans           table[orchestrator.Plan]
	events          []orchestrator.Event
	eventSeq        uint64
	records         int
	// runs are the plans' run leases, by plan id; resources are the
	// resource leases, by customer and resource, naming the holding plan.
	runs      map[string]runLease
	resources map[resourceKey]string
}

type runLease struct {
	owner string
	until time.Time
}

type resourceKey struct{ customer, resource string }

// memCoordination is a stored coordination and the ids of its records.
type memCoordination struct {
	c                                   Coordination
	recommendations, approvals, plansOf []string
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		coordinations:   map[string]*memCoordination{},
		recommendations: newTable[orchestrator.Recommendation](),
		approvals:       newTable[orchestrator.Approval](),
		plans:           newTable[orchestrator.Plan](),
		runs:            map[string]runLease{},
		resources:       map[resourceKey]string{},
	}
}

var _ Store = (*MemoryStore)(nil)

// table is one kind of record: by id, and in the order stored (seq) for
// pages. Deleted rows are removed from both.
type table[T any] struct {
	byID  map[string]*row[T]
	order []*row[T]
}

type row[T any] struct {
	id           string
	seq          uint64
	coordination string
	v            T
}

func newTable[T any]() table[T] { return table[T]{byID: map[string]*row[T]{}} }

func (t *table[T]) add(seq uint64, id, coordination string, v T) {
	r := &row[T]{id: id, seq: seq, coordination: coordination, v: v}
	t.byID[id] = r
	t.order = append(t.order, r)
}

// page returns up to limit values matching match, after the cursor, each
// cloned, and the cursor of the next page ("" when no match follows).
func (t *table[T]) page(after string, limit int, match func(*T) bool, clone func(T) T) ([]T, string, error) {
	var from uint64
	if after != "" {
		n, err := strconv.ParseUint(after, 10, 64)
		if err != nil {
			return nil, "", &FieldError{Field: "after", Msg: "is not a cursor this store returned"}
		}
		from = n
	}
	start, _ := slices.BinarySearchFunc(t.order, from, func(r *row[T], after uint64) int {
		if r.seq <= after {
			return -1
		}
		return 1
	})
	out := []T{}
	last := from
	for _, r := range t.order[start:] {
		if !match(&r.v) {
			continue
		}
		if len(out) >= limit {
			if len(out) == 0 {
				return out, "", nil
			}
			// Another match follows the page: the next page starts
			// after the page's last value.
			return out, strconv.FormatUint(last, 10), nil
		}
		out = append(out, clone(r.v))
		last = r.seq
	}
	return out, "", nil
}

func (t *table[T]) remove(ids []string) {
	for _, id := range ids {
		delete(t.byID, id)
	}
	t.order = slices.DeleteFunc(t.order, func(r *row[T]) bool { return t.byID[r.id] != r })
}

// CreateCoordination implements Store.
func (s *MemoryStore) CreateCoordination(ctx context.Context, b Batch, maxRecords int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b = cloneBatch(b) // the store's own copy, made before the lock is taken
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.records+b.Records() > maxRecords {
		return ErrFull
	}
	if _, taken := s.coordinations[b.Coordination.ID]; taken || b.Coordination.ID == "" {
		return ErrExists
	}
	seen := map[string]bool{}
	taken := func(id string, stored bool) bool {
		dup := id == "" || stored || seen[id]
		seen[id] = true
		return dup
	}
	for _, r := range b.Recommendations {
		if _, ok := s.recommendations.byID[r.RecordID]; taken("r"+r.RecordID, ok) {
			return ErrExists
		}
	}
	for _, a := range b.Approvals {
		if _, ok := s.approvals.byID[a.ID]; taken("a"+a.ID, ok) {
			return ErrExists
		}
	}
	for _, p := range b.Plans {
		if _, ok := s.plans.byID[p.ID]; taken("p"+p.ID, ok) {
			return ErrExists
		}
	}
	mc := &memCoordination{c: b.Coordination}
	for _, r := range b.Recommendations {
		s.seq++
		s.recommendations.add(s.seq, r.RecordID, mc.c.ID, r)
		mc.recommendations = append(mc.recommendations, r.RecordID)
	}
	for _, a := range b.Approvals {
		s.seq++
		s.approvals.add(s.seq, a.ID, mc.c.ID, a)
		mc.approvals = append(mc.approvals, a.ID)
	}
	for _, p := range b.Plans {
		s.addPlan(mc, p)
	}
	s.coordinations[mc.c.ID] = mc
	s.records += b.Records()
	s.appendEvents(b.Events)
	return nil
}

// addPlan stores p as a plan of mc. Call it with s.mu held.
func (s *MemoryStore) addPlan(mc *memCoordination, p orchestrator.Plan) {
	s.seq++
	s.plans.add(s.seq, p.ID, mc.c.ID, p)
	mc.plansOf = append(mc.plansOf, p.ID)
}

// appendEvents assigns each event its Seq and appends it. Call it with
// s.mu held.
func (s *MemoryStore) appendEvents(events []orchestrator.Event) {
	for _, e := range events {
		s.eventSeq++
		e.Seq = s.eventSeq
		s.events = append(s.events, e)
	}
}

// Coordination implements Store.
func (s *MemoryStore) Coordination(ctx context.Context, id string) (Coordination, error) {
	if err := ctx.Err(); err != nil {
		return Coordination{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	mc, ok := s.coordinations[id]
	if !ok {
		return Coordination{}, ErrNotFound
	}
	return cloneCoordination(mc.c), nil
}

// CoordinationRecords implements Store.
func (s *MemoryStore) CoordinationRecords(ctx context.Context, id string) (Batch, error) {
	if err := ctx.Err(); err != nil {
		return Batch{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	mc, ok := s.coordinations[id]
	if !ok {
		return Batch{}, ErrNotFound
	}
	b := Batch{Coordination: cloneCoordination(mc.c)}
	for _, rid := range mc.recommendations {
		b.Recommendations = append(b.Recommendations, cloneRecommendation(s.recommendations.byID[rid].v))
	}
	for _, aid := range mc.approvals {
		b.Approvals = append(b.Approvals, cloneApproval(s.approvals.byID[aid].v))
	}
	for _, pid := range mc.plansOf {
		b.Plans = append(b.Plans, clonePlan(s.plans.byID[pid].v))
	}
	return b, nil
}

// Recommendation implements Store.
func (s *MemoryStore) Recommendation(ctx context.Context, id string) (orchestrator.Recommendation, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Recommendation{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.recommendations.byID[id]
	if !ok {
		return orchestrator.Recommendation{}, ErrNotFound
	}
	return cloneRecommendation(r.v), nil
}

// Recommendations implements Store.
func (s *MemoryStore) Recommendations(ctx context.Context, q RecommendationQuery) ([]orchestrator.Recommendation, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.recommendations.page(q.After, q.Limit, func(r *orchestrator.Recommendation) bool {
		return (q.CustomerID == "" || r.CustomerID == q.CustomerID) && (q.Status == "" || r.Status == q.Status)
	}, cloneRecommendation)
}

// Approval implements Store.
func (s *MemoryStore) Approval(ctx context.Context, id string) (orchestrator.Approval, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Approval{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.approvals.byID[id]
	if !ok {
		return orchestrator.Approval{}, ErrNotFound
	}
	return cloneApproval(a.v), nil
}

// Approvals implements Store.
func (s *MemoryStore) Approvals(ctx context.Context, q ApprovalQuery) ([]orchestrator.Approval, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.approvals.page(q.After, q.Limit, func(a *orchestrator.Approval) bool {
		return (q.CustomerID == "" || a.CustomerID == q.CustomerID) && (q.Status == "" || a.Status == q.Status) &&
			(q.RecommendationID == "" || a.RecommendationID == q.RecommendationID) &&
			(q.ExpiredBy.IsZero() || !a.ExpiresAt.After(q.ExpiredBy))
	}, cloneApproval)
}

// UpdateApproval implements Store.
func (s *MemoryStore) UpdateApproval(ctx context.Context, id string, change func(*orchestrator.Approval, orchestrator.Recommendation) (Effects, error)) (orchestrator.Approval, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Approval{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.approvals.byID[id]
	if !ok {
		return orchestrator.Approval{}, ErrNotFound
	}
	updated := cloneApproval(r.v)
	eff, err := change(&updated, s.recommendationOf(r.v.RecommendationID))
	if err != nil {
		return cloneApproval(r.v), err
	}
	updated.ID, updated.RecommendationID, updated.CustomerID = r.v.ID, r.v.RecommendationID, r.v.CustomerID
	r.v = cloneApproval(updated)
	s.apply(r.coordination, r.v.RecommendationID, eff)
	return updated, nil
}

// Plan implements Store.
func (s *MemoryStore) Plan(ctx context.Context, id string) (orchestrator.Plan, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Plan{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.plans.byID[id]
	if !ok {
		return orchestrator.Plan{}, ErrNotFound
	}
	return clonePlan(p.v), nil
}

// Plans implements Store.
func (s *MemoryStore) Plans(ctx context.Context, q PlanQuery) ([]orchestrator.Plan, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.plans.page(q.After, q.Limit, func(p *orchestrator.Plan) bool {
		return (q.CustomerID == "" || p.CustomerID == q.CustomerID) && (q.Status == "" || p.Status == q.Status)
	}, clonePlan)
}

// UpdatePlan implements Store.
func (s *MemoryStore) UpdatePlan(ctx context.Context, id string, change func(*orchestrator.Plan, orchestrator.Recommendation) (Effects, error)) (orchestrator.Plan, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Plan{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updatePlanLocked(id, change)
}

// UpdateRun implements Store.
func (s *MemoryStore) UpdateRun(ctx context.Context, id, owner string, until time.Time, change func(*orchestrator.Plan, orchestrator.Recommendation) (Effects, error)) (orchestrator.Plan, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Plan{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.plans.byID[id]
	if !ok {
		return orchestrator.Plan{}, ErrNotFound
	}
	if s.runs[id].owner != owner || owner == "" {
		return clonePlan(r.v), ErrLeaseLost
	}
	p, err := s.updatePlanLocked(id, change)
	if err == nil {
		s.runs[id] = runLease{owner: owner, until: until}
	}
	return p, err
}

// updatePlanLocked is UpdatePlan with s.mu held.
func (s *MemoryStore) updatePlanLocked(id string, change func(*orchestrator.Plan, orchestrator.Recommendation) (Effects, error)) (orchestrator.Plan, error) {
	r, ok := s.plans.byID[id]
	if !ok {
		return orchestrator.Plan{}, ErrNotFound
	}
	updated := clonePlan(r.v)
	eff, err := change(&updated, s.recommendationOf(r.v.RecommendationID))
	if err != nil {
		return clonePlan(r.v), err
	}
	for _, res := range eff.Acquire {
		if holder, held := s.resources[resourceKey{r.v.CustomerID, res}]; held && holder != id {
			return clonePlan(r.v), &BusyError{Resource: res, Holder: holder}
		}
	}
	updated.ID, updated.RecommendationID, updated.CustomerID = r.v.ID, r.v.RecommendationID, r.v.CustomerID
	r.v = clonePlan(updated)
	if eff.Release {
		s.releaseResourcesLocked(id)
	}
	for _, res := range eff.Acquire {
		s.resources[resourceKey{r.v.CustomerID, res}] = id
	}
	s.apply(r.coordination, r.v.RecommendationID, eff)
	return updated, nil
}

// releaseResourcesLocked frees the resource leases plan id holds.
func (s *MemoryStore) releaseResourcesLocked(id string) {
	for k, holder := range s.resources {
		if holder == id {
			delete(s.resources, k)
		}
	}
}

// ClaimPlans implements Store.
func (s *MemoryStore) ClaimPlans(ctx context.Context, owner string, now, until time.Time, limit int) ([]orchestrator.Plan, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []orchestrator.Plan
	for _, r := range s.plans.order {
		if len(out) >= limit {
			break
		}
		if r.v.Status != orchestrator.PlanRunning && r.v.Status != orchestrator.PlanRollingBack {
			continue
		}
		if l, held := s.runs[r.id]; held && l.until.After(now) {
			continue
		}
		s.runs[r.id] = runLease{owner: owner, until: until}
		out = append(out, clonePlan(r.v))
	}
	return out, nil
}

// RenewRuns implements Store.
func (s *MemoryStore) RenewRuns(ctx context.Context, owner string, ids []string, until time.Time) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var lost []string
	for _, id := range ids {
		if l, held := s.runs[id]; !held || l.owner != owner {
			lost = append(lost, id)
			continue
		}
		s.runs[id] = runLease{owner: owner, until: until}
	}
	return lost, nil
}

// ReleaseRun implements Store.
func (s *MemoryStore) ReleaseRun(ctx context.Context, id, owner string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runs[id].owner == owner {
		delete(s.runs, id)
	}
	return nil
}

// recommendationOf is a copy of recommendation id, or the zero one when
// it is gone. Call it with s.mu held.
func (s *MemoryStore) recommendationOf(id string) orchestrator.Recommendation {
	if r, ok := s.recommendations.byID[id]; ok {
		return cloneRecommendation(r.v)
	}
	return orchestrator.Recommendation{}
}

// apply does eff for a record of coordination coord whose recommendation
// is recID. A new plan is counted against no limit: it takes the place of
// the approval's answer, one per recommendation. Call it with s.mu held.
func (s *MemoryStore) apply(coord, recID string, eff Effects) {
	if eff.RecommendationStatus != "" {
		if r, ok := s.recommendations.byID[recID]; ok {
			r.v.Status = eff.RecommendationStatus
		}
	}
	if eff.Plan != nil {
		if mc, ok := s.coordinations[coord]; ok {
			s.addPlan(mc, clonePlan(*eff.Plan))
			s.records++
		}
	}
	s.appendEvents(cloneEvents(eff.Events))
}

// Events implements Store.
func (s *MemoryStore) Events(ctx context.Context, q EventQuery) ([]orchestrator.Event, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	start, _ := slices.BinarySearchFunc(s.events, q.After, func(e orchestrator.Event, after uint64) int {
		if e.Seq <= after {
			return -1
		}
		return 1
	})
	out := []orchestrator.Event{}
	for _, e := range s.events[start:] {
		if (q.CustomerID != "" && e.CustomerID != q.CustomerID) || (!q.Since.IsZero() && e.At.Before(q.Since)) {
			continue
		}
		if len(out) >= q.Limit {
			if len(out) == 0 {
				return out, 0, nil
			}
			return out, out[len(out)-1].Seq, nil
		}
		out = append(out, cloneEvent(e))
	}
	return out, 0, nil
}

// CountRecommendations implements Store.
func (s *MemoryStore) CountRecommendations(ctx context.Context) (map[orchestrator.RecommendationStatus]int, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	counts := map[orchestrator.RecommendationStatus]int{}
	for _, r := range s.recommendations.byID {
		counts[r.v.Status]++
	}
	return counts, nil
}

// Records implements Store.
func (s *MemoryStore) Records(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.records, nil
}

// Prune implements Store.
func (s *MemoryStore) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs, apps, plans []string
	pruned := 0
	for id, mc := range s.coordinations {
		settled, ok := s.settledAt(mc)
		if !ok || !settled.Before(cutoff) {
			continue
		}
		recs, apps, plans = append(recs, mc.recommendations...), append(apps, mc.approvals...), append(plans, mc.plansOf...)
		s.records -= len(mc.recommendations) + len(mc.approvals) + len(mc.plansOf) + len(mc.c.Conflicts)
		delete(s.coordinations, id)
		pruned++
	}
	if pruned > 0 {
		s.recommendations.remove(recs)
		s.approvals.remove(apps)
		s.plans.remove(plans)
		for _, id := range plans {
			delete(s.runs, id)
			s.releaseResourcesLocked(id)
		}
	}
	s.events = slices.DeleteFunc(s.events, func(e orchestrator.Event) bool { return e.At.Before(cutoff) })
	return pruned, nil
}

// settledAt is when mc settled, and ok false while it has not. Call it
// with s.mu held.
func (s *MemoryStore) settledAt(mc *memCoordination) (at time.Time, ok bool) {
	at = mc.c.CreatedAt
	later := func(t *time.Time) {
		if t != nil && t.After(at) {
			at = *t
		}
	}
	for _, id := range mc.approvals {
		a := s.approvals.byID[id].v
		switch a.Status {
		case orchestrator.ApprovalPending:
			return time.Time{}, false
		case orchestrator.ApprovalExpired:
			later(&a.ExpiresAt)
		}
		later(a.ApprovedAt)
		later(a.RejectedAt)
	}
	for _, id := range mc.plansOf {
		p := s.plans.byID[id].v
		if !p.Status.Terminal() {
			return time.Time{}, false
		}
		later(p.CompletedAt)
		later(p.RolledBackAt)
	}
	return at, true
}

// The clones copy every slice, map and pointer a record holds, so that
// neither what a caller passed nor what it got back aliases a stored one.

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func cloneRaw(b []byte) []byte {
	if b == nil {
		return nil
	}
	return bytes.Clone(b)
}

func cloneRecommendation(r orchestrator.Recommendation) orchestrator.Recommendation {
	r.EstimatedImpact = cloneRaw(r.EstimatedImpact)
	r.AffectedResources = slices.Clone(r.AffectedResources)
	r.Parameters = cloneRaw(r.Parameters)
	r.Dependencies = slices.Clone(r.Dependencies)
	r.ExpiresAt = clonePtr(r.ExpiresAt)
	r.Metadata = cloneRaw(r.Metadata)
	return r
}

func cloneConflict(c orchestrator.Conflict) orchestrator.Conflict {
	c.RecommendationIDs = slices.Clone(c.RecommendationIDs)
	return c
}

func cloneApproval(a orchestrator.Approval) orchestrator.Approval {
	a.ApprovedAt, a.RejectedAt = clonePtr(a.ApprovedAt), clonePtr(a.RejectedAt)
	a.Approvals = slices.Clone(a.Approvals)
	return a
}

func clonePlan(p orchestrator.Plan) orchestrator.Plan {
	p.Steps = slices.Clone(p.Steps)
	for i, st := range p.Steps {
		st.Parameters, st.Result = cloneRaw(st.Parameters), cloneRaw(st.Result)
		st.StartedAt, st.CompletedAt = clonePtr(st.StartedAt), clonePtr(st.CompletedAt)
		p.Steps[i] = st
	}
	p.StartedAt, p.CompletedAt, p.RolledBackAt = clonePtr(p.StartedAt), clonePtr(p.CompletedAt), clonePtr(p.RolledBackAt)
	return p
}

func cloneEvent(e orchestrator.Event) orchestrator.Event {
	e.Details = cloneRaw(e.Details)
	return e
}

func cloneEvents(es []orchestrator.Event) []orchestrator.Event {
	out := make([]orchestrator.Event, len(es))
	for i, e := range es {
		out[i] = cloneEvent(e)
	}
	return out
}

func cloneCoordination(c Coordination) Coordination {
	c.Conflicts = slices.Clone(c.Conflicts)
	for i := range c.Conflicts {
		c.Conflicts[i] = cloneConflict(c.Conflicts[i])
	}
	return c
}

func cloneBatch(b Batch) Batch {
	out := Batch{Coordination: cloneCoordination(b.Coordination), Events: cloneEvents(b.Events)}
	for _, r := range b.Recommendations {
		out.Recommendations = append(out.Recommendations, cloneRecommendation(r))
	}
	for _, a := range b.Approvals {
		out.Approvals = append(out.Approvals, cloneApproval(a))
	}
	for _, p := range b.Plans {
		out.Plans = append(out.Plans, clonePlan(p))
	}
	return out
}
