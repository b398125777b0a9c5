// Package coordinationtest is the contract every coordination.Store must
// meet. Run it from a test of each implementation:
//
//	func TestMemoryStore(t *testing.T) {
//		coordinationtest.TestStore(t, func(*testing.T) coordination.Store { return coordination.NewMemoryStore() })
//	}
//
// open is called once per subtest and must return an empty store. Times
// the suite stores are whole seconds in UTC and JSON fields are compact,
// so a store that serializes records can pass it unchanged.
package coordinationtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(seconds int) time.Time { return t0.Add(time.Duration(seconds) * time.Second) }

// plenty is a record limit no test reaches.
const plenty = 1_000_000

// TestStore runs the Store contract against stores made by open.
func TestStore(t *testing.T, open func(t *testing.T) coordination.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s coordination.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"NotFound", testNotFound},
		{"CreateIsAllOrNothing", testCreateAllOrNothing},
		{"Full", testFull},
		{"UpdateApprovalAppliesEffects", testUpdateApprovalEffects},
		{"FailingUpdateChangesNothing", testFailingUpdate},
		{"UpdateKeepsIdentity", testUpdateIdentity},
		{"UpdatePlan", testUpdatePlan},
		{"ConcurrentDecisionsHaveOneWinner", testConcurrentDecide},
		{"ConcurrentUpdatesLoseNothing", testConcurrentVotes},
		{"ListFiltersAndPages", testLists},
		{"ApprovalsExpiredBy", testExpiredBy},
		{"ApprovalsOfRecommendation", testApprovalsOfRecommendation},
		{"BadCursor", testBadCursor},
		{"EventsOrderAndPages", testEvents},
		{"CountRecommendations", testCount},
		{"Prune", testPrune},
		{"ReturnedRecordsDoNotAlias", testNoAliasing},
		{"CancelledContext", testCancelledContext},
		{"ClaimPlans", testClaimPlans},
		{"ClaimPlansConcurrently", testClaimPlansConcurrently},
		{"UpdateRun", testUpdateRun},
		{"RenewRuns", testRenewRuns},
		{"ReleaseRun", testReleaseRun},
		{"ResourceLeases", testResourceLeases},
		{"ConcurrentAcquiresHaveOneWinner", testConcurrentAcquires},
		{"PruneFreesLeases", testPruneFreesLeases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, open(t))
		})
	}
}

// batch is a coordination n of customer with one recommendation, one
// pending approval and one event per index i, created at second sec;
// ids are prefixed by name. Every recommendation waits for approval.
func batch(name, customer string, sec, n int) coordination.Batch {
	b := coordination.Batch{Coordination: coordination.Coordination{
		ID: name, CustomerID: customer, CreatedAt: at(sec), Actor: "submitter", RequestID: "req-" + name,
		TotalRecommendations: n, RecommendationsKept: n, ApprovalsRequired: n,
		Conflicts: []orchestrator.Conflict{{
			ID: name + "-c", Type: orchestrator.ConflictResource, RecommendationIDs: []string{"x", "y"},
			Description: "x and y both change i-1", Severity: orchestrator.RiskLow, Resolved: true,
			Resolution: "x kept; y superseded by x", DetectedAt: at(sec),
		}},
	}}
	for i := range n {
		recID := fmt.Sprintf("%s-r%d", name, i)
		b.Recommendations = append(b.Recommendations, orchestrator.Recommendation{
			ID: fmt.Sprintf("rec-%d", i), RecordID: recID, CoordinationID: name, AgentID: "agent-1",
			AgentType: orchestrator.AgentTypeCost, CustomerID: customer, Action: "scale_down",
			RiskLevel: orchestrator.RiskMedium, EstimatedSavings: 12.5, EstimatedImpact: json.RawMessage(`{"cpu":-2}`),
			AffectedResources: []string{"i-1", "i-2"}, Parameters: json.RawMessage(`{"to":2}`),
			Dependencies: []string{}, Priority: i, Confidence: 0.5, CreatedAt: at(sec),
			Status: orchestrator.RecommendationPending, Metadata: json.RawMessage(`{"k":"v"}`),
		})
		b.Approvals = append(b.Approvals, orchestrator.Approval{
			ID: fmt.Sprintf("%s-a%d", name, i), RecommendationID: recID, CustomerID: customer,
			RiskLevel: orchestrator.RiskMedium, Status: orchestrator.ApprovalPending, RequestedBy: "submitter",
			RequestedAt: at(sec), ExpiresAt: at(sec + 100), RequiredApprovals: 1,
		})
		b.Events = append(b.Events, orchestrator.Event{
			At: at(sec), CustomerID: customer, Kind: orchestrator.EventApprovalRequested,
			SubjectID: fmt.Sprintf("%s-a%d", name, i), Actor: "submitter", RequestID: "req-" + name,
			Details: json.RawMessage(`{"i":` + fmt.Sprint(i) + `}`),
		})
	}
	return b
}

// plan is a pending plan of rec, named id.
func plan(id string, rec orchestrator.Recommendation, sec int) orchestrator.Plan {
	return orchestrator.Plan{
		ID: id, RecommendationID: rec.RecordID, CustomerID: rec.CustomerID, Status: orchestrator.PlanPending,
		CreatedAt: at(sec),
		Steps: []orchestrator.PlanStep{{
			ID: id + "-s0", Action: "scale", AgentType: rec.AgentType, Parameters: json.RawMessage(`{"to":2}`),
			Critical: true, Reversible: true, Status: orchestrator.StepPending,
		}},
	}
}

func mustCreate(t *testing.T, s coordination.Store, b coordination.Batch) {
	t.Helper()
	if err := s.CreateCoordination(context.Background(), b, plenty); err != nil {
		t.Fatalf("CreateCoordination(%s): %v", b.Coordination.ID, err)
	}
}

func equal(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func testRoundTrip(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	b := batch("c1", "acme", 0, 2)
	b.Plans = []orchestrator.Plan{plan("c1-p0", b.Recommendations[0], 0)}
	b.Plans[0].WaitingFor = "dependency c0-p0"
	b.Plans[0].Steps[0].TaskID, b.Plans[0].Steps[0].RollbackOf = "c1-p0-s0", "c0-p0-s0"
	mustCreate(t, s, b)

	c, err := s.Coordination(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "coordination", c, b.Coordination)
	got, err := s.CoordinationRecords(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	want := b
	want.Events = nil
	equal(t, "records", got, want)
	r, err := s.Recommendation(ctx, "c1-r1")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "recommendation", r, b.Recommendations[1])
	a, err := s.Approval(ctx, "c1-a0")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "approval", a, b.Approvals[0])
	p, err := s.Plan(ctx, "c1-p0")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "plan", p, b.Plans[0])
	if n, err := s.Records(ctx); err != nil || n != b.Records() {
		t.Errorf("Records = %d, %v; want %d", n, err, b.Records())
	}
	events, _, err := s.Events(ctx, coordination.EventQuery{Limit: 10})
	if err != nil || len(events) != 2 {
		t.Fatalf("Events = %v, %v; want the batch's 2", events, err)
	}
	for i, e := range events {
		want := b.Events[i]
		want.Seq = e.Seq
		equal(t, "event", e, want)
	}
	if events[0].Seq == 0 || events[1].Seq <= events[0].Seq {
		t.Errorf("event seqs %d, %d: want increasing from 1", events[0].Seq, events[1].Seq)
	}
}

func testNotFound(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 1))
	noop := func() (coordination.Effects, error) { return coordination.Effects{}, nil }
	for name, err := range map[string]error{
		"Coordination":        second(s.Coordination(ctx, "nope")),
		"CoordinationRecords": second(s.CoordinationRecords(ctx, "nope")),
		"Recommendation":      second(s.Recommendation(ctx, "rec-0")), // the agent's id is not a record id
		"Approval":            second(s.Approval(ctx, "nope")),
		"Plan":                second(s.Plan(ctx, "nope")),
		"UpdateApproval": second(s.UpdateApproval(ctx, "nope", func(*orchestrator.Approval, orchestrator.Recommendation) (coordination.Effects, error) {
			return noop()
		})),
		"UpdatePlan": second(s.UpdatePlan(ctx, "nope", func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error) {
			return noop()
		})),
	} {
		if !errors.Is(err, coordination.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func testCreateAllOrNothing(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 1))
	before, _ := s.Records(ctx)
	for name, b := range map[string]coordination.Batch{
		"coordination id taken": batch("c1", "acme", 1, 1),
		"approval id taken": func() coordination.Batch {
			b := batch("c2", "acme", 1, 2)
			b.Approvals[1].ID = "c1-a0"
			return b
		}(),
		"recommendation id twice": func() coordination.Batch {
			b := batch("c3", "acme", 1, 2)
			b.Recommendations[1].RecordID = b.Recommendations[0].RecordID
			return b
		}(),
	} {
		if err := s.CreateCoordination(ctx, b, plenty); !errors.Is(err, coordination.ErrExists) {
			t.Errorf("%s: %v, want ErrExists", name, err)
		}
	}
	for _, id := range []string{"c2-r0", "c3-r0"} {
		if _, err := s.Recommendation(ctx, id); !errors.Is(err, coordination.ErrNotFound) {
			t.Errorf("%s of a refused batch: %v, want ErrNotFound", id, err)
		}
	}
	if after, _ := s.Records(ctx); after != before {
		t.Errorf("records %d after refusals, want %d", after, before)
	}
	if events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 10}); len(events) != 1 {
		t.Errorf("%d events, want the first batch's 1", len(events))
	}
}

func testFull(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	b := batch("c1", "acme", 0, 2) // 2 recommendations, 2 approvals, 1 conflict
	if err := s.CreateCoordination(ctx, b, 5); err != nil {
		t.Fatalf("a batch of exactly the limit: %v", err)
	}
	if err := s.CreateCoordination(ctx, batch("c2", "acme", 0, 1), 7); !errors.Is(err, coordination.ErrFull) {
		t.Fatalf("past the limit: %v, want ErrFull", err)
	}
	if _, err := s.Coordination(ctx, "c2"); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("a refused coordination was stored: %v", err)
	}
	if err := s.CreateCoordination(ctx, batch("c3", "acme", 0, 1), 8); err != nil {
		t.Errorf("up to the limit: %v", err)
	}
}

// approve is a change that approves a pending approval by who at sec, or
// refuses with ErrAlreadyDecided; the recommendation is approved and a
// plan is created.
func approve(who string, sec int, planID string) func(*orchestrator.Approval, orchestrator.Recommendation) (coordination.Effects, error) {
	return func(a *orchestrator.Approval, rec orchestrator.Recommendation) (coordination.Effects, error) {
		if a.Status != orchestrator.ApprovalPending {
			return coordination.Effects{}, coordination.ErrAlreadyDecided
		}
		when := at(sec)
		a.Status, a.ApprovedBy, a.ApprovedAt = orchestrator.ApprovalApproved, who, &when
		p := plan(planID, rec, sec)
		return coordination.Effects{
			RecommendationStatus: orchestrator.RecommendationApproved,
			Plan:                 &p,
			Events: []orchestrator.Event{{At: when, CustomerID: a.CustomerID, Kind: orchestrator.EventApprovalApproved,
				SubjectID: a.ID, Actor: who, RequestID: "req-" + who}},
		}, nil
	}
}

func testUpdateApprovalEffects(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 2))
	var seen orchestrator.Recommendation
	change := approve("alice", 5, "c1-p1")
	a, err := s.UpdateApproval(ctx, "c1-a1", func(a *orchestrator.Approval, rec orchestrator.Recommendation) (coordination.Effects, error) {
		seen = rec
		return change(a, rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen.RecordID != "c1-r1" || seen.Action != "scale_down" {
		t.Errorf("change saw recommendation %+v, want c1-r1", seen)
	}
	if a.Status != orchestrator.ApprovalApproved || a.ApprovedBy != "alice" || !a.ApprovedAt.Equal(at(5)) {
		t.Errorf("returned %+v, want approved by alice", a)
	}
	if stored, _ := s.Approval(ctx, "c1-a1"); !reflect.DeepEqual(stored, a) {
		t.Errorf("stored %+v, returned %+v", stored, a)
	}
	if r, _ := s.Recommendation(ctx, "c1-r1"); r.Status != orchestrator.RecommendationApproved {
		t.Errorf("recommendation %s, want approved", r.Status)
	}
	if r, _ := s.Recommendation(ctx, "c1-r0"); r.Status != orchestrator.RecommendationPending {
		t.Errorf("the other recommendation became %s", r.Status)
	}
	p, err := s.Plan(ctx, "c1-p1")
	if err != nil || p.RecommendationID != "c1-r1" {
		t.Errorf("plan %+v, %v; want the plan of c1-r1", p, err)
	}
	recs, _ := s.CoordinationRecords(ctx, "c1")
	if len(recs.Plans) != 1 || recs.Plans[0].ID != "c1-p1" {
		t.Errorf("coordination's plans %+v, want c1-p1", recs.Plans)
	}
	if plans, _, _ := s.Plans(ctx, coordination.PlanQuery{CustomerID: "acme", Limit: 10}); len(plans) != 1 {
		t.Errorf("listed %d plans, want 1", len(plans))
	}
	events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 10})
	if len(events) != 3 || events[2].Kind != orchestrator.EventApprovalApproved || events[2].Actor != "alice" || events[2].RequestID != "req-alice" {
		t.Errorf("events %+v, want the decision last, by alice", events)
	}
}

func testFailingUpdate(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	b := batch("c1", "acme", 0, 1)
	b.Plans = []orchestrator.Plan{plan("c1-p0", b.Recommendations[0], 0)}
	mustCreate(t, s, b)
	boom := errors.New("boom")
	a, err := s.UpdateApproval(ctx, "c1-a0", func(a *orchestrator.Approval, _ orchestrator.Recommendation) (coordination.Effects, error) {
		a.Status = orchestrator.ApprovalRejected
		return coordination.Effects{RecommendationStatus: orchestrator.RecommendationRejected,
			Events: []orchestrator.Event{{At: at(1), CustomerID: "acme", Kind: orchestrator.EventApprovalRejected}}}, boom
	})
	if !errors.Is(err, boom) || a.Status != orchestrator.ApprovalPending {
		t.Errorf("UpdateApproval = %+v, %v; want the approval unchanged and boom", a, err)
	}
	p, err := s.UpdatePlan(ctx, "c1-p0", func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.Status = orchestrator.PlanCancelled
		return coordination.Effects{}, coordination.ErrNoChange
	})
	if !errors.Is(err, coordination.ErrNoChange) || p.Status != orchestrator.PlanPending {
		t.Errorf("UpdatePlan = %+v, %v; want the plan unchanged and ErrNoChange", p, err)
	}
	if a, _ := s.Approval(ctx, "c1-a0"); a.Status != orchestrator.ApprovalPending {
		t.Errorf("stored approval %s after a failed change", a.Status)
	}
	if p, _ := s.Plan(ctx, "c1-p0"); p.Status != orchestrator.PlanPending {
		t.Errorf("stored plan %s after a failed change", p.Status)
	}
	if r, _ := s.Recommendation(ctx, "c1-r0"); r.Status != orchestrator.RecommendationPending {
		t.Errorf("recommendation %s after a failed change", r.Status)
	}
	if events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 10}); len(events) != 1 {
		t.Errorf("%d events, want only the batch's", len(events))
	}
}

func testUpdateIdentity(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	b := batch("c1", "acme", 0, 1)
	b.Plans = []orchestrator.Plan{plan("c1-p0", b.Recommendations[0], 0)}
	mustCreate(t, s, b)
	a, err := s.UpdateApproval(ctx, "c1-a0", func(a *orchestrator.Approval, _ orchestrator.Recommendation) (coordination.Effects, error) {
		a.ID, a.RecommendationID, a.CustomerID, a.RequestedBy = "other", "other", "other", "someone"
		return coordination.Effects{}, nil
	})
	if err != nil || a.ID != "c1-a0" || a.RecommendationID != "c1-r0" || a.CustomerID != "acme" || a.RequestedBy != "someone" {
		t.Errorf("UpdateApproval = %+v, %v; want id, recommendation and customer kept, the rest changed", a, err)
	}
	p, err := s.UpdatePlan(ctx, "c1-p0", func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.ID, p.RecommendationID, p.CustomerID, p.CurrentStep = "other", "other", "other", 1
		return coordination.Effects{}, nil
	})
	if err != nil || p.ID != "c1-p0" || p.RecommendationID != "c1-r0" || p.CustomerID != "acme" || p.CurrentStep != 1 {
		t.Errorf("UpdatePlan = %+v, %v; want id, recommendation and customer kept", p, err)
	}
	if _, err := s.Approval(ctx, "other"); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("an update renamed an approval: %v", err)
	}
}

func testUpdatePlan(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	b := batch("c1", "acme", 0, 1)
	b.Plans = []orchestrator.Plan{plan("c1-p0", b.Recommendations[0], 0)}
	mustCreate(t, s, b)
	p, err := s.UpdatePlan(ctx, "c1-p0", func(p *orchestrator.Plan, rec orchestrator.Recommendation) (coordination.Effects, error) {
		if rec.RecordID != "c1-r0" {
			return coordination.Effects{}, fmt.Errorf("change saw recommendation %q", rec.RecordID)
		}
		when := at(3)
		p.Status, p.CompletedAt = orchestrator.PlanCancelled, &when
		p.Steps[0].Status = orchestrator.StepSkipped
		return coordination.Effects{RecommendationStatus: orchestrator.RecommendationCancelled,
			Events: []orchestrator.Event{{At: when, CustomerID: "acme", Kind: orchestrator.EventPlanCancelled, SubjectID: p.ID, Actor: "bob"}}}, nil
	})
	if err != nil || p.Status != orchestrator.PlanCancelled || p.Steps[0].Status != orchestrator.StepSkipped {
		t.Fatalf("UpdatePlan = %+v, %v", p, err)
	}
	if stored, _ := s.Plan(ctx, "c1-p0"); !reflect.DeepEqual(stored, p) {
		t.Errorf("stored %+v, returned %+v", stored, p)
	}
	if r, _ := s.Recommendation(ctx, "c1-r0"); r.Status != orchestrator.RecommendationCancelled {
		t.Errorf("recommendation %s, want cancelled", r.Status)
	}
}

func testConcurrentDecide(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 1))
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.UpdateApproval(ctx, "c1-a0", approve(fmt.Sprintf("user-%d", i), 1, fmt.Sprintf("plan-%d", i)))
		})
	}
	wg.Wait()
	OneWinner(t, errs)
	if plans, _, _ := s.Plans(ctx, coordination.PlanQuery{Limit: 100}); len(plans) != 1 {
		t.Errorf("%d plans, want the winner's only", len(plans))
	}
	if events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 100}); len(events) != 2 {
		t.Errorf("%d events, want the batch's and the winner's", len(events))
	}
}

func testConcurrentVotes(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 1))
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := s.UpdateApproval(ctx, "c1-a0", func(a *orchestrator.Approval, _ orchestrator.Recommendation) (coordination.Effects, error) {
				a.Approvals = append(a.Approvals, orchestrator.ApprovalVote{UserID: fmt.Sprint(i), At: at(i)})
				return coordination.Effects{}, nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	a, _ := s.Approval(ctx, "c1-a0")
	if len(a.Approvals) != n {
		t.Errorf("%d votes, want %d: an update was lost", len(a.Approvals), n)
	}
}

func testLists(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 3))
	mustCreate(t, s, batch("c2", "other", 1, 2))
	mustCreate(t, s, batch("c3", "acme", 2, 2))
	if _, err := s.UpdateApproval(ctx, "c3-a0", approve("alice", 5, "c3-p0")); err != nil {
		t.Fatal(err)
	}

	// Every acme recommendation, two at a time, in the order stored.
	var ids []string
	after := ""
	for pages := 0; ; pages++ {
		page, next, err := s.Recommendations(ctx, coordination.RecommendationQuery{CustomerID: "acme", After: after, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		for _, r := range page {
			ids = append(ids, r.RecordID)
		}
		if next == "" {
			break
		}
		after = next
	}
	equal(t, "acme's recommendations, paged", ids, []string{"c1-r0", "c1-r1", "c1-r2", "c3-r0", "c3-r1"})

	page, next, _ := s.Recommendations(ctx, coordination.RecommendationQuery{Status: orchestrator.RecommendationApproved, Limit: 10})
	if len(page) != 1 || page[0].RecordID != "c3-r0" || next != "" {
		t.Errorf("approved recommendations %v (next %q), want c3-r0 alone", page, next)
	}
	// A full last page says there is nothing after it.
	if page, next, _ := s.Recommendations(ctx, coordination.RecommendationQuery{CustomerID: "other", Limit: 2}); len(page) != 2 || next != "" {
		t.Errorf("other's 2 recommendations in a page of 2: %d, next %q; want 2 and no next", len(page), next)
	}
	apps, _, _ := s.Approvals(ctx, coordination.ApprovalQuery{CustomerID: "acme", Status: orchestrator.ApprovalPending, Limit: 10})
	var aids []string
	for _, a := range apps {
		aids = append(aids, a.ID)
	}
	equal(t, "acme's pending approvals", aids, []string{"c1-a0", "c1-a1", "c1-a2", "c3-a1"})
	if plans, _, _ := s.Plans(ctx, coordination.PlanQuery{CustomerID: "other", Limit: 10}); len(plans) != 0 {
		t.Errorf("other has %d plans, want none", len(plans))
	}
	if plans, _, _ := s.Plans(ctx, coordination.PlanQuery{Status: orchestrator.PlanPending, Limit: 10}); len(plans) != 1 || plans[0].ID != "c3-p0" {
		t.Errorf("pending plans %v, want c3-p0", plans)
	}
	if page, _, _ := s.Recommendations(ctx, coordination.RecommendationQuery{CustomerID: "nobody", Limit: 10}); page == nil || len(page) != 0 {
		t.Errorf("an empty list is %#v, want an empty, non-nil slice", page)
	}
}

func testExpiredBy(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 1))  // expires at 100
	mustCreate(t, s, batch("c2", "acme", 50, 1)) // expires at 150
	for _, tc := range []struct {
		by   int
		want int
	}{{99, 0}, {100, 1}, {149, 1}, {150, 2}} {
		got, _, err := s.Approvals(ctx, coordination.ApprovalQuery{Status: orchestrator.ApprovalPending, ExpiredBy: at(tc.by), Limit: 10})
		if err != nil || len(got) != tc.want {
			t.Errorf("expired by %d: %d approvals (%v), want %d", tc.by, len(got), err, tc.want)
		}
	}
}

func testApprovalsOfRecommendation(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 3))
	mustCreate(t, s, batch("c2", "acme", 1, 3))
	got, _, err := s.Approvals(ctx, coordination.ApprovalQuery{RecommendationID: "c2-r1", Limit: 10})
	if err != nil || len(got) != 1 || got[0].ID != "c2-a1" {
		t.Errorf("approvals of c2-r1 = %+v (%v), want c2-a1 alone", got, err)
	}
	got, _, err = s.Approvals(ctx, coordination.ApprovalQuery{RecommendationID: "c2-r1", Status: orchestrator.ApprovalRejected, Limit: 10})
	if err != nil || len(got) != 0 {
		t.Errorf("rejected approvals of c2-r1 = %+v (%v), want none: the filters combine", got, err)
	}
	got, _, err = s.Approvals(ctx, coordination.ApprovalQuery{RecommendationID: "nobody", Limit: 10})
	if err != nil || len(got) != 0 {
		t.Errorf("approvals of an unknown recommendation = %+v (%v), want none", got, err)
	}
}

func testBadCursor(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	var fe *coordination.FieldError
	if _, _, err := s.Recommendations(ctx, coordination.RecommendationQuery{After: "not a cursor", Limit: 1}); !errors.As(err, &fe) || fe.Field != "after" {
		t.Errorf("recommendations: %v, want a FieldError on after", err)
	}
	if _, _, err := s.Plans(ctx, coordination.PlanQuery{After: "-1", Limit: 1}); !errors.As(err, &fe) || fe.Field != "after" {
		t.Errorf("plans: %v, want a FieldError on after", err)
	}
}

func testEvents(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 3))
	mustCreate(t, s, batch("c2", "other", 10, 2))
	mustCreate(t, s, batch("c3", "acme", 20, 2))

	var got []string
	var last uint64
	after := uint64(0)
	for pages := 0; ; pages++ {
		page, next, err := s.Events(ctx, coordination.EventQuery{CustomerID: "acme", After: after, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		for _, e := range page {
			if e.Seq <= last {
				t.Errorf("seq %d after %d", e.Seq, last)
			}
			last = e.Seq
			got = append(got, e.SubjectID)
		}
		if next == 0 {
			break
		}
		after = next
	}
	equal(t, "acme's events, paged", got, []string{"c1-a0", "c1-a1", "c1-a2", "c3-a0", "c3-a1"})

	since, _, _ := s.Events(ctx, coordination.EventQuery{Since: at(10), Limit: 10})
	if len(since) != 4 || since[0].SubjectID != "c2-a0" {
		t.Errorf("events since 10s: %v, want c2's and c3's 4", since)
	}
}

func testCount(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, batch("c1", "acme", 0, 3))
	if _, err := s.UpdateApproval(ctx, "c1-a0", approve("alice", 5, "c1-p0")); err != nil {
		t.Fatal(err)
	}
	counts, err := s.CountRecommendations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts[orchestrator.RecommendationPending] != 2 || counts[orchestrator.RecommendationApproved] != 1 {
		t.Errorf("counts %v, want 2 pending and 1 approved", counts)
	}
}

func testPrune(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	// c1: approved at 5, its plan cancelled at 20: settled at 20.
	mustCreate(t, s, batch("c1", "acme", 0, 1))
	if _, err := s.UpdateApproval(ctx, "c1-a0", approve("alice", 5, "c1-p0")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdatePlan(ctx, "c1-p0", func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		when := at(20)
		p.Status, p.CompletedAt = orchestrator.PlanCancelled, &when
		return coordination.Effects{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	// c2: approved at 6, its plan pending: never settled.
	mustCreate(t, s, batch("c2", "acme", 0, 1))
	if _, err := s.UpdateApproval(ctx, "c2-a0", approve("alice", 6, "c2-p0")); err != nil {
		t.Fatal(err)
	}
	// c3: approval pending: never settled.
	mustCreate(t, s, batch("c3", "acme", 0, 1))
	// c4: rejected at 7: settled at 7.
	mustCreate(t, s, batch("c4", "acme", 0, 1))
	if _, err := s.UpdateApproval(ctx, "c4-a0", func(a *orchestrator.Approval, _ orchestrator.Recommendation) (coordination.Effects, error) {
		when := at(7)
		a.Status, a.RejectedBy, a.RejectedAt = orchestrator.ApprovalRejected, "bob", &when
		return coordination.Effects{RecommendationStatus: orchestrator.RecommendationRejected}, nil
	}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Records(ctx)

	if n, err := s.Prune(ctx, at(7)); err != nil || n != 0 {
		t.Errorf("Prune(7) = %d, %v; want 0: c4 settled at 7, not before", n, err)
	}
	if n, err := s.Prune(ctx, at(8)); err != nil || n != 1 {
		t.Errorf("Prune(8) = %d, %v; want c4", n, err)
	}
	if _, err := s.Coordination(ctx, "c4"); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("c4 after prune: %v", err)
	}
	for _, id := range []string{"c4-r0"} {
		if _, err := s.Recommendation(ctx, id); !errors.Is(err, coordination.ErrNotFound) {
			t.Errorf("%s after prune: %v", id, err)
		}
	}
	if _, err := s.Approval(ctx, "c4-a0"); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("c4-a0 after prune: %v", err)
	}
	if n, err := s.Prune(ctx, at(1000)); err != nil || n != 1 {
		t.Errorf("Prune(1000) = %d, %v; want c1 only", n, err)
	}
	if _, err := s.Plan(ctx, "c1-p0"); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("c1's plan after prune: %v", err)
	}
	for _, id := range []string{"c2", "c3"} {
		if _, err := s.Coordination(ctx, id); err != nil {
			t.Errorf("%s, unsettled, was pruned: %v", id, err)
		}
	}
	// c1: 1 recommendation, 1 approval, 1 plan, 1 conflict; c4 without a plan.
	if after, _ := s.Records(ctx); after != before-4-3 {
		t.Errorf("records %d after pruning, want %d", after, before-7)
	}
	left, _, _ := s.Recommendations(ctx, coordination.RecommendationQuery{Limit: 10})
	if len(left) != 2 {
		t.Errorf("%d recommendations left, want c2's and c3's", len(left))
	}
	if events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 100}); len(events) != 0 {
		t.Errorf("%d events before 1000s left, want none", len(events))
	}
}

func testNoAliasing(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	b := batch("c1", "acme", 0, 1)
	b.Plans = []orchestrator.Plan{plan("c1-p0", b.Recommendations[0], 0)}
	mustCreate(t, s, b)
	// Change what was passed in...
	b.Recommendations[0].AffectedResources[0] = "changed"
	b.Recommendations[0].Parameters[1] = 'X'
	b.Coordination.Conflicts[0].RecommendationIDs[0] = "changed"
	b.Plans[0].Steps[0].Status = orchestrator.StepFailed
	b.Events[0].Details[1] = 'X'
	// ...and what came out.
	r, _ := s.Recommendation(ctx, "c1-r0")
	r.AffectedResources[0], r.Dependencies = "changed", append(r.Dependencies, "x")
	p, _ := s.Plan(ctx, "c1-p0")
	p.Steps[0].Parameters[1] = 'X'
	c, _ := s.Coordination(ctx, "c1")
	c.Conflicts[0].Description = "changed"
	events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 1})
	events[0].Details[1] = 'X'
	_, _ = s.UpdateApproval(ctx, "c1-a0", func(a *orchestrator.Approval, rec orchestrator.Recommendation) (coordination.Effects, error) {
		rec.AffectedResources[0] = "changed"
		return coordination.Effects{}, nil
	})

	fresh := batch("c1", "acme", 0, 1)
	if r, _ := s.Recommendation(ctx, "c1-r0"); !reflect.DeepEqual(r, fresh.Recommendations[0]) {
		t.Errorf("stored recommendation changed through a caller's copy: %+v", r)
	}
	if p, _ := s.Plan(ctx, "c1-p0"); !reflect.DeepEqual(p, plan("c1-p0", fresh.Recommendations[0], 0)) {
		t.Errorf("stored plan changed through a caller's copy: %+v", p)
	}
	if c, _ := s.Coordination(ctx, "c1"); !reflect.DeepEqual(c, fresh.Coordination) {
		t.Errorf("stored coordination changed through a caller's copy: %+v", c)
	}
	if events, _, _ := s.Events(ctx, coordination.EventQuery{Limit: 1}); string(events[0].Details) != `{"i":0}` {
		t.Errorf("stored event changed through a caller's copy: %s", events[0].Details)
	}
}

func testCancelledContext(t *testing.T, s coordination.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.CreateCoordination(ctx, batch("c1", "acme", 0, 1), plenty); !errors.Is(err, context.Canceled) {
		t.Errorf("CreateCoordination: %v, want context.Canceled", err)
	}
	if _, err := s.Coordination(context.Background(), "c1"); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("a cancelled create stored: %v", err)
	}
	if _, _, err := s.Events(ctx, coordination.EventQuery{Limit: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Events: %v, want context.Canceled", err)
	}
}

// OneWinner fails t unless exactly one of errs, the results of concurrent
// decisions of one approval, is nil and every other is ErrAlreadyDecided.
func OneWinner(t *testing.T, errs []error) {
	t.Helper()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, coordination.ErrAlreadyDecided):
			t.Errorf("a loser got %v, want ErrAlreadyDecided", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d decisions won, want exactly 1", wins)
	}
}
