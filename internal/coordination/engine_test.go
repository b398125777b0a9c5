package coordination_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/coordination/coordinationtest"
	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// clock is a fake clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

type env struct {
	engine  *coordination.Engine
	store   *coordination.MemoryStore
	clock   *clock
	metrics *prometheus.Registry
}

// newEnv is an engine over a memory store with the default configuration,
// changed by change, a fake clock at now and ids id-1, id-2, ...
func newEnv(t *testing.T, change ...func(*coordination.Config)) *env {
	t.Helper()
	cfg := defaultConfig(t)
	for _, c := range change {
		c(&cfg)
	}
	var mu sync.Mutex
	next := counter("id")
	e := &env{store: coordination.NewMemoryStore(), clock: &clock{t: now}, metrics: prometheus.NewRegistry()}
	engine, err := coordination.NewEngine(coordination.EngineOptions{
		Store: e.store, Config: cfg, Metrics: e.metrics, Now: e.clock.Now,
		NewID: func() string { mu.Lock(); defer mu.Unlock(); return next() },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.engine = engine
	return e
}

var (
	submitter = coordination.Actor{Name: "sam", RequestID: "req-1"}
	alice     = coordination.Actor{Name: "alice", RequestID: "req-2"}
	bob       = coordination.Actor{Name: "bob", RequestID: "req-3"}
)

func risk(r orchestrator.RiskLevel) func(*orchestrator.Recommendation) {
	return func(rec *orchestrator.Recommendation) { rec.RiskLevel = r }
}

func (e *env) coordinate(t *testing.T, autoApprove bool, recs ...orchestrator.Recommendation) orchestrator.CoordinateResponse {
	t.Helper()
	resp, err := e.engine.Coordinate(context.Background(), submitter, orchestrator.CoordinateRequest{
		CustomerID: "acme", Recommendations: recs, AutoApprove: autoApprove,
	})
	if err != nil {
		t.Fatalf("Coordinate: %v", err)
	}
	return resp
}

// byID finds the recommendation the agent named id in resp.
func byID(t *testing.T, resp orchestrator.CoordinateResponse, id string) orchestrator.Recommendation {
	t.Helper()
	for _, r := range resp.Recommendations {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no recommendation %s in the answer", id)
	return orchestrator.Recommendation{}
}

func TestCoordinateMigrateToSpotAndScaleDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, true,
		rec("spot", action("migrate_to_spot"), on("i-1", "i-2"), func(r *orchestrator.Recommendation) { r.AgentID = "cost-agent" }),
		rec("down", action("scale_down"), on("cluster-1"), risk(orchestrator.RiskMedium)))

	if resp.ID == "" || !resp.CreatedAt.Equal(now) || resp.TotalRecommendations != 2 || resp.ConflictsDetected != 0 ||
		resp.RecommendationsKept != 2 || resp.ApprovalsRequired != 1 || resp.AutoApproved != 1 {
		t.Errorf("answer %+v", resp)
	}
	if ids := []string{resp.Recommendations[0].ID, resp.Recommendations[1].ID}; !slices.Equal(ids, []string{"spot", "down"}) {
		t.Errorf("recommendations in order %v, want the request's", ids)
	}
	spot, down := byID(t, resp, "spot"), byID(t, resp, "down")
	if spot.Status != orchestrator.RecommendationAutoApproved || down.Status != orchestrator.RecommendationPending {
		t.Errorf("statuses spot %s, down %s; want auto_approved, pending", spot.Status, down.Status)
	}
	if spot.RecordID == "" || spot.RecordID == spot.ID || spot.CoordinationID != resp.ID || spot.CustomerID != "acme" {
		t.Errorf("spot stored as %+v: want a record id of its own, the coordination and the customer", spot)
	}
	if len(resp.ExecutionPlans) != 1 || !slices.Equal(stepsOf(resp.ExecutionPlans[0].Steps), []string{"take_snapshot/cr", "migrate_workload/cr", "validate_quality/c"}) ||
		resp.ExecutionPlans[0].RecommendationID != spot.RecordID || resp.ExecutionPlans[0].Status != orchestrator.PlanPending {
		t.Errorf("plans %+v, want spot's pending take_snapshot, migrate_workload, validate_quality", resp.ExecutionPlans)
	}
	if len(resp.Approvals) != 1 || resp.Approvals[0].RecommendationID != down.RecordID || resp.Approvals[0].RequestedBy != "sam" ||
		!resp.Approvals[0].ExpiresAt.Equal(now.Add(48*time.Hour)) {
		t.Errorf("approvals %+v, want down's, requested by sam, expiring in 48h", resp.Approvals)
	}

	stored, err := e.engine.Recommendation(ctx, down.RecordID)
	if err != nil || stored.Status != orchestrator.RecommendationPending || stored.ID != "down" {
		t.Errorf("stored down = %+v, %v", stored, err)
	}
	rebuilt, err := e.engine.Coordination(ctx, resp.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rebuilt) != fmt.Sprint(resp) {
		t.Errorf("rebuilt answer\n%+v\nwant\n%+v", rebuilt, resp)
	}

	// The downscale approved: its plan is validate_capacity, scale,
	// validate_performance.
	_, plan, err := e.engine.Approve(ctx, resp.Approvals[0].ID, alice)
	if err != nil || plan == nil {
		t.Fatalf("Approve = %v, %v", plan, err)
	}
	if got := stepsOf(plan.Steps); !slices.Equal(got, []string{"validate_capacity/c", "scale/cr", "validate_performance/c"}) {
		t.Errorf("scale_down steps %v", got)
	}
	if r, _ := e.engine.Recommendation(ctx, down.RecordID); r.Status != orchestrator.RecommendationApproved {
		t.Errorf("down is %s after approval, want approved", r.Status)
	}
	if p, err := e.engine.Plan(ctx, plan.ID); err != nil || p.RecommendationID != down.RecordID {
		t.Errorf("stored plan %+v, %v", p, err)
	}
}

func TestCoordinateRecordIDsDoNotCollideAcrossBatches(t *testing.T) {
	e := newEnv(t)
	first := e.coordinate(t, false, rec("r1", on("x")))
	second := e.coordinate(t, false, rec("r1", on("x")))
	a, b := first.Recommendations[0], second.Recommendations[0]
	if a.RecordID == b.RecordID {
		t.Fatalf("two batches' r1 share record id %s", a.RecordID)
	}
	if got, _ := e.engine.Recommendation(context.Background(), b.RecordID); got.CoordinationID != second.ID {
		t.Errorf("record %s is of coordination %s, want %s", b.RecordID, got.CoordinationID, second.ID)
	}
}

func TestCoordinateConflicts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false,
		rec("up", action("scale_up"), on("i-1"), prio(1)),
		rec("down", action("scale_down"), on("i-1"), prio(5)),
		// The three-way case: b loses to a, and so cannot knock out c.
		rec("a", on("x"), prio(3)),
		rec("b", on("x", "y"), prio(2)),
		rec("c", on("y"), prio(1)))
	if resp.ConflictsDetected != 3 || resp.ConflictsResolved != 3 || resp.RecommendationsKept != 3 || resp.ApprovalsRequired != 3 || resp.AutoApproved != 0 {
		t.Errorf("answer counts %+v", resp)
	}
	var order []string
	for _, r := range resp.Recommendations {
		order = append(order, r.ID)
	}
	if !slices.Equal(order, []string{"up", "down", "a", "b", "c"}) {
		t.Errorf("recommendations in order %v, want the request's", order)
	}
	for id, want := range map[string]string{"up": "superseded by down", "down": "pending", "a": "pending", "b": "superseded by a", "c": "pending"} {
		r := byID(t, resp, id)
		got := string(r.Status)
		if r.SupersededBy != "" {
			got += " by " + r.SupersededBy
		}
		if got != want {
			t.Errorf("%s: %s, want %s", id, got, want)
		}
	}
	types := map[orchestrator.ConflictType]int{}
	for _, c := range resp.Conflicts {
		types[c.Type]++
	}
	if types[orchestrator.ConflictAction] != 1 || types[orchestrator.ConflictResource] != 2 {
		t.Errorf("conflicts by type %v, want 1 action and 2 resource", types)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(`
# HELP orchestrator_coordination_conflicts_total Conflicts detected among coordinated recommendations, by type (resource, action, dependency).
# TYPE orchestrator_coordination_conflicts_total counter
orchestrator_coordination_conflicts_total{type="action"} 1
orchestrator_coordination_conflicts_total{type="dependency"} 0
orchestrator_coordination_conflicts_total{type="resource"} 2
`), "orchestrator_coordination_conflicts_total"); err != nil {
		t.Error(err)
	}
	events, _, err := e.engine.Events(ctx, coordination.EventQuery{CustomerID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	superseded := 0
	for _, ev := range events {
		if ev.Kind == orchestrator.EventRecommendationSuperseded {
			superseded++
			if ev.Actor != "sam" || ev.RequestID != "req-1" || !strings.Contains(string(ev.Details), `"superseded_by"`) {
				t.Errorf("superseded event %+v", ev)
			}
		}
	}
	if superseded != 2 {
		t.Errorf("%d superseded events, want 2", superseded)
	}
}

func TestAutoApprovePolicy(t *testing.T) {
	for _, tc := range []struct {
		name        string
		autoApprove bool
		maxRisk     orchestrator.RiskLevel
		auto        []string // the agents' ids auto-approved
	}{
		{"auto_approve false approves nothing", false, orchestrator.RiskLow, nil},
		{"low by default", true, orchestrator.RiskLow, []string{"low"}},
		{"threshold medium", true, orchestrator.RiskMedium, []string{"low", "medium"}},
		{"threshold critical", true, orchestrator.RiskCritical, []string{"low", "medium", "high", "critical"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *coordination.Config) { c.AutoApproveMaxRisk = tc.maxRisk })
			var recs []orchestrator.Recommendation
			for _, r := range orchestrator.RiskLevels {
				recs = append(recs, rec(string(r), risk(r), on("res-"+string(r))))
			}
			resp := e.coordinate(t, tc.autoApprove, recs...)
			var auto []string
			for _, r := range resp.Recommendations {
				if r.Status == orchestrator.RecommendationAutoApproved {
					auto = append(auto, r.ID)
				}
			}
			if !slices.Equal(auto, tc.auto) || resp.AutoApproved != len(tc.auto) || len(resp.ExecutionPlans) != len(tc.auto) ||
				resp.ApprovalsRequired != 4-len(tc.auto) || len(resp.Approvals) != 4-len(tc.auto) {
				t.Errorf("auto-approved %v (%d plans, %d approvals), want %v", auto, len(resp.ExecutionPlans), len(resp.Approvals), tc.auto)
			}
		})
	}
}

func TestCriticalNeedsTwoApprovers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, true, rec("r", risk(orchestrator.RiskCritical)))
	id := resp.Approvals[0].ID

	a, plan, err := e.engine.Approve(ctx, id, alice)
	if err != nil || a.Status != orchestrator.ApprovalPending || plan != nil || len(a.Approvals) != 1 {
		t.Fatalf("first approval: %+v, plan %v, %v; want still pending, no plan", a, plan, err)
	}
	if _, _, err := e.engine.Approve(ctx, id, alice); !errors.Is(err, coordination.ErrAlreadyApproved) {
		t.Errorf("alice again: %v, want ErrAlreadyApproved", err)
	}
	if ps, _, _ := e.engine.Plans(ctx, coordination.PlanQuery{}); len(ps) != 0 {
		t.Errorf("%d plans after one of two approvals, want none", len(ps))
	}
	a, plan, err = e.engine.Approve(ctx, id, bob)
	if err != nil || a.Status != orchestrator.ApprovalApproved || a.ApprovedBy != "bob" || plan == nil {
		t.Fatalf("second approval: %+v, plan %v, %v", a, plan, err)
	}
	if r, _ := e.engine.Recommendation(ctx, resp.Recommendations[0].RecordID); r.Status != orchestrator.RecommendationApproved {
		t.Errorf("recommendation %s, want approved", r.Status)
	}
}

func TestSelfApprovalRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("r"))
	id := resp.Approvals[0].ID
	if _, _, err := e.engine.Approve(ctx, id, submitter); !errors.Is(err, coordination.ErrSelfApproval) {
		t.Errorf("the submitter approving: %v, want ErrSelfApproval", err)
	}
	if _, err := e.engine.Reject(ctx, id, submitter, "no"); !errors.Is(err, coordination.ErrSelfApproval) {
		t.Errorf("the submitter rejecting: %v, want ErrSelfApproval", err)
	}
	var fe *coordination.FieldError
	if _, _, err := e.engine.Approve(ctx, id, coordination.Actor{Name: "  "}); !errors.As(err, &fe) || fe.Field != "user_id" {
		t.Errorf("no name: %v, want a FieldError on user_id", err)
	}
	if a, _ := e.engine.Approval(ctx, id); a.Status != orchestrator.ApprovalPending {
		t.Errorf("approval %s after refusals, want pending", a.Status)
	}

	// A batch submitted without a name is requested by its agent.
	resp, err := e.engine.Coordinate(ctx, coordination.Actor{}, orchestrator.CoordinateRequest{CustomerID: "acme",
		Recommendations: []orchestrator.Recommendation{rec("r", func(r *orchestrator.Recommendation) { r.AgentID = "agent-7" })}})
	if err != nil || resp.Approvals[0].RequestedBy != "agent-7" {
		t.Fatalf("requested by %q (%v), want agent-7", resp.Approvals[0].RequestedBy, err)
	}
	if _, _, err := e.engine.Approve(ctx, resp.Approvals[0].ID, coordination.Actor{Name: "agent-7"}); !errors.Is(err, coordination.ErrSelfApproval) {
		t.Errorf("the agent approving its own: %v, want ErrSelfApproval", err)
	}
}

func TestDecidingTwiceRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("r1", on("x")), rec("r2", on("y")))
	approved, rejected := resp.Approvals[0].ID, resp.Approvals[1].ID
	if _, _, err := e.engine.Approve(ctx, approved, alice); err != nil {
		t.Fatal(err)
	}
	a, err := e.engine.Reject(ctx, rejected, alice, "too risky")
	if err != nil || a.Status != orchestrator.ApprovalRejected || a.RejectedBy != "alice" || a.RejectionReason != "too risky" {
		t.Fatalf("Reject = %+v, %v", a, err)
	}
	if r, _ := e.engine.Recommendation(ctx, resp.Recommendations[1].RecordID); r.Status != orchestrator.RecommendationRejected {
		t.Errorf("rejected recommendation is %s", r.Status)
	}
	for _, id := range []string{approved, rejected} {
		if _, _, err := e.engine.Approve(ctx, id, bob); !errors.Is(err, coordination.ErrAlreadyDecided) {
			t.Errorf("approving %s again: %v, want ErrAlreadyDecided", id, err)
		}
		if _, err := e.engine.Reject(ctx, id, bob, ""); !errors.Is(err, coordination.ErrAlreadyDecided) {
			t.Errorf("rejecting %s again: %v, want ErrAlreadyDecided", id, err)
		}
	}
	if ps, _, _ := e.engine.Plans(ctx, coordination.PlanQuery{}); len(ps) != 1 {
		t.Errorf("%d plans, want the approved one's", len(ps))
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(`
# HELP orchestrator_coordination_approvals_decided_total Approvals decided, by outcome: approved, rejected, or expired by the sweep.
# TYPE orchestrator_coordination_approvals_decided_total counter
orchestrator_coordination_approvals_decided_total{outcome="approved"} 1
orchestrator_coordination_approvals_decided_total{outcome="expired"} 0
orchestrator_coordination_approvals_decided_total{outcome="rejected"} 1
`), "orchestrator_coordination_approvals_decided_total"); err != nil {
		t.Error(err)
	}
}

func TestSweepExpiresApprovals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("med", risk(orchestrator.RiskMedium), on("x")), rec("crit", risk(orchestrator.RiskCritical), on("y")))
	med, crit := resp.Approvals[0], resp.Approvals[1]

	e.clock.Add(4*time.Hour - time.Second)
	if err := e.engine.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.engine.Approval(ctx, crit.ID); a.Status != orchestrator.ApprovalPending {
		t.Fatalf("critical approval %s a second before its 4h, want pending", a.Status)
	}
	e.clock.Add(time.Second)
	// Past the deadline, a decision is refused even before the sweep.
	if _, _, err := e.engine.Approve(ctx, crit.ID, alice); !errors.Is(err, coordination.ErrExpired) {
		t.Errorf("approving at the deadline: %v, want ErrExpired", err)
	}
	if err := e.engine.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.engine.Approval(ctx, crit.ID); a.Status != orchestrator.ApprovalExpired {
		t.Errorf("critical approval %s after its 4h, want expired", a.Status)
	}
	if a, _ := e.engine.Approval(ctx, med.ID); a.Status != orchestrator.ApprovalPending {
		t.Errorf("medium approval %s after 4h, want pending (48h)", a.Status)
	}
	if r, _ := e.engine.Recommendation(ctx, byID(t, resp, "crit").RecordID); r.Status != orchestrator.RecommendationExpired {
		t.Errorf("critical recommendation %s, want expired", r.Status)
	}
	if _, _, err := e.engine.Approve(ctx, crit.ID, alice); !errors.Is(err, coordination.ErrExpired) {
		t.Errorf("approving an expired approval: %v, want ErrExpired", err)
	}
	if pending, _, _ := e.engine.Approvals(ctx, coordination.ApprovalQuery{CustomerID: "acme"}); len(pending) != 1 || pending[0].ID != med.ID {
		t.Errorf("pending approvals %v, want the medium one", pending)
	}
	// A second sweep expires nothing twice.
	if err := e.engine.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	events, _, _ := e.engine.Events(ctx, coordination.EventQuery{CustomerID: "acme"})
	expired := 0
	for _, ev := range events {
		if ev.Kind == orchestrator.EventApprovalExpired {
			expired++
			if ev.SubjectID != crit.ID || ev.Actor != "" {
				t.Errorf("expired event %+v", ev)
			}
		}
	}
	if expired != 1 {
		t.Errorf("%d expired events, want 1", expired)
	}
	if got := decided(t, e, "expired"); got != 1 {
		t.Errorf("expired counter %v, want 1", got)
	}
}

// decided reads orchestrator_coordination_approvals_decided_total{outcome}.
func decided(t *testing.T, e *env, outcome string) float64 {
	t.Helper()
	families, err := e.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "orchestrator_coordination_approvals_decided_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no approvals decided{outcome=%q}", outcome)
	return 0
}

func TestSweepPrunesSettledCoordinations(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("r"))
	if _, err := e.engine.Reject(ctx, resp.Approvals[0].ID, alice, ""); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(7 * 24 * time.Hour) // settled exactly a retention ago: kept
	if err := e.engine.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.engine.Coordination(ctx, resp.ID); err != nil {
		t.Fatalf("pruned before the retention had passed: %v", err)
	}
	e.clock.Add(time.Second)
	if err := e.engine.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.engine.Coordination(ctx, resp.ID); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("after the retention: %v, want ErrNotFound", err)
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for name, err := range map[string]error{
		"Approve":        func() error { _, _, err := e.engine.Approve(ctx, "nope", alice); return err }(),
		"Reject":         func() error { _, err := e.engine.Reject(ctx, "nope", alice, ""); return err }(),
		"Approval":       func() error { _, err := e.engine.Approval(ctx, "nope"); return err }(),
		"Recommendation": func() error { _, err := e.engine.Recommendation(ctx, "nope"); return err }(),
		"Plan":           func() error { _, err := e.engine.Plan(ctx, "nope"); return err }(),
		"CancelPlan":     func() error { _, err := e.engine.CancelPlan(ctx, "nope", alice); return err }(),
		"Coordination":   func() error { _, err := e.engine.Coordination(ctx, "nope"); return err }(),
	} {
		if !errors.Is(err, coordination.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
}

func TestCancelPlan(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, true, rec("r", action("scale_down")))
	id := resp.ExecutionPlans[0].ID
	e.clock.Add(time.Minute)
	if _, err := e.engine.CancelPlan(ctx, id, coordination.Actor{}); !errors.As(err, new(*coordination.FieldError)) {
		t.Errorf("cancel without a name: %v, want a FieldError", err)
	}
	p, err := e.engine.CancelPlan(ctx, id, bob)
	if err != nil || p.Status != orchestrator.PlanCancelled || p.CompletedAt == nil || !p.CompletedAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("CancelPlan = %+v, %v", p, err)
	}
	for _, s := range p.Steps {
		if s.Status != orchestrator.StepSkipped {
			t.Errorf("step %s is %s, want skipped", s.Action, s.Status)
		}
	}
	if r, _ := e.engine.Recommendation(ctx, resp.Recommendations[0].RecordID); r.Status != orchestrator.RecommendationCancelled {
		t.Errorf("recommendation %s, want cancelled", r.Status)
	}
	if _, err := e.engine.CancelPlan(ctx, id, bob); !errors.Is(err, coordination.ErrInvalidTransition) {
		t.Errorf("cancelling twice: %v, want ErrInvalidTransition", err)
	}
	events, _, _ := e.engine.Events(ctx, coordination.EventQuery{CustomerID: "acme", Since: now.Add(time.Minute)})
	if len(events) != 1 || events[0].Kind != orchestrator.EventPlanCancelled || events[0].Actor != "bob" || events[0].RequestID != "req-3" || events[0].SubjectID != id {
		t.Errorf("events since the cancel %+v, want one plan.cancelled by bob in req-3", events)
	}
}

func TestEventsRecordActorAndRequest(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("r"))
	if _, _, err := e.engine.Approve(ctx, resp.Approvals[0].ID, alice); err != nil {
		t.Fatal(err)
	}
	events, next, err := e.engine.Events(ctx, coordination.EventQuery{CustomerID: "acme"})
	if err != nil || next != 0 {
		t.Fatalf("Events: next %d, %v", next, err)
	}
	var got []string
	for _, ev := range events {
		got = append(got, fmt.Sprintf("%s %s %s", ev.Kind, ev.Actor, ev.RequestID))
	}
	want := []string{
		"coordination.created sam req-1",
		"approval.requested sam req-1",
		"approval.approved alice req-2",
		"plan.created alice req-2",
	}
	if !slices.Equal(got, want) {
		t.Errorf("events\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if others, _, _ := e.engine.Events(ctx, coordination.EventQuery{CustomerID: "other"}); len(others) != 0 {
		t.Errorf("another customer sees %d events", len(others))
	}
}

func TestConcurrentApprovalsOneWinner(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("r"))
	id := resp.Approvals[0].ID
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, _, errs[i] = e.engine.Approve(ctx, id, coordination.Actor{Name: fmt.Sprintf("op-%d", i)})
		})
	}
	wg.Wait()
	coordinationtest.OneWinner(t, errs)
	if ps, _, _ := e.engine.Plans(ctx, coordination.PlanQuery{}); len(ps) != 1 {
		t.Errorf("%d plans, want 1", len(ps))
	}
}

func TestExecuteNowRefusedBeforeStoring(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, err := e.engine.Coordinate(ctx, submitter, orchestrator.CoordinateRequest{CustomerID: "acme",
		Recommendations: []orchestrator.Recommendation{rec("r")}, AutoApprove: true, ExecuteNow: true})
	if !errors.Is(err, coordination.ErrExecutionUnavailable) {
		t.Fatalf("execute_now: %v, want ErrExecutionUnavailable", err)
	}
	if n, _ := e.store.Records(ctx); n != 0 {
		t.Errorf("%d records stored by a refused request", n)
	}
	if events, _, _ := e.engine.Events(ctx, coordination.EventQuery{}); len(events) != 0 {
		t.Errorf("%d events of a refused request", len(events))
	}
	// A bad request is refused for what is wrong with it first.
	_, err = e.engine.Coordinate(ctx, submitter, orchestrator.CoordinateRequest{CustomerID: "acme",
		Recommendations: []orchestrator.Recommendation{rec("r", risk("severe"))}, ExecuteNow: true})
	if !errors.Is(err, coordination.ErrInvalid) {
		t.Errorf("a bad request with execute_now: %v, want ErrInvalid", err)
	}
}

func TestCoordinateFull(t *testing.T) {
	e := newEnv(t, func(c *coordination.Config) { c.MaxRecords = 1000 })
	ctx := context.Background()
	// 50 recommendations on one resource: 1225 conflicts.
	var recs []orchestrator.Recommendation
	for i := range 50 {
		recs = append(recs, rec(fmt.Sprintf("r%d", i), on("x")))
	}
	_, err := e.engine.Coordinate(ctx, submitter, orchestrator.CoordinateRequest{CustomerID: "acme", Recommendations: recs})
	if !errors.Is(err, coordination.ErrFull) {
		t.Fatalf("past COORDINATION_MAX_RECORDS: %v, want ErrFull", err)
	}
	if n, _ := e.store.Records(ctx); n != 0 {
		t.Errorf("%d records stored by a refused request", n)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(`
# HELP orchestrator_coordination_conflicts_total Conflicts detected among coordinated recommendations, by type (resource, action, dependency).
# TYPE orchestrator_coordination_conflicts_total counter
orchestrator_coordination_conflicts_total{type="action"} 0
orchestrator_coordination_conflicts_total{type="dependency"} 0
orchestrator_coordination_conflicts_total{type="resource"} 0
`), "orchestrator_coordination_conflicts_total"); err != nil {
		t.Errorf("a refused batch counted its conflicts: %v", err)
	}
}

func TestRecommendationsGauge(t *testing.T) {
	e := newEnv(t)
	e.coordinate(t, true, rec("a", on("x"), prio(2)), rec("b", on("x")), rec("c", on("y"), risk(orchestrator.RiskHigh)))
	want := map[string]int{"auto_approved": 1, "superseded": 1, "pending": 1}
	var b strings.Builder
	b.WriteString("# HELP orchestrator_coordination_recommendations Stored recommendations, by status.\n# TYPE orchestrator_coordination_recommendations gauge\n")
	statuses := []string{"approved", "auto_approved", "cancelled", "completed", "executing", "expired", "failed", "pending", "rejected", "rolled_back", "superseded"}
	for _, s := range statuses {
		fmt.Fprintf(&b, "orchestrator_coordination_recommendations{status=%q} %d\n", s, want[s])
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(b.String()), "orchestrator_coordination_recommendations"); err != nil {
		t.Error(err)
	}
}

func TestListsPage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.coordinate(t, false, rec("a", on("x")), rec("b", on("y")), rec("c", on("z")))
	page, next, err := e.engine.Recommendations(ctx, coordination.RecommendationQuery{CustomerID: "acme", Limit: 2})
	if err != nil || len(page) != 2 || next == "" {
		t.Fatalf("first page %d, next %q, %v", len(page), next, err)
	}
	page, next, err = e.engine.Recommendations(ctx, coordination.RecommendationQuery{CustomerID: "acme", Limit: 2, After: next})
	if err != nil || len(page) != 1 || page[0].ID != "c" || next != "" {
		t.Fatalf("second page %v, next %q, %v", page, next, err)
	}
	var fe *coordination.FieldError
	if _, _, err := e.engine.Plans(ctx, coordination.PlanQuery{Limit: coordination.MaxPage + 1}); !errors.As(err, &fe) || fe.Field != "limit" {
		t.Errorf("a page too large: %v, want a FieldError on limit", err)
	}
}

func TestRunSweepsUntilCancelled(t *testing.T) {
	e := newEnv(t)
	resp := e.coordinate(t, false, rec("r", risk(orchestrator.RiskCritical)))
	e.clock.Add(5 * time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.engine.Run(ctx)
	}()
	eventually.True(t, 10*time.Second, "Run expires the approval", func() bool {
		a, _ := e.engine.Approval(context.Background(), resp.Approvals[0].ID)
		return a.Status == orchestrator.ApprovalExpired
	})
	cancel()
	<-done
}

// TestDecideByRecommendation: the portal's ApproveRecommendation and
// RejectRecommendation decide the approval of a recommendation's record
// id; one without an approval is decided already (409), an unknown one
// is not found (404).
func TestDecideByRecommendation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp := e.coordinate(t, false, rec("r1", on("x")), rec("r2", on("y")), rec("r3", on("x"), prio(-1)))
	r1, r2, r3 := byID(t, resp, "r1").RecordID, byID(t, resp, "r2").RecordID, byID(t, resp, "r3").RecordID
	a, plan, err := e.engine.ApproveRecommendation(ctx, r1, alice)
	if err != nil || a.Status != orchestrator.ApprovalApproved || a.RecommendationID != r1 || plan == nil || plan.RecommendationID != r1 {
		t.Fatalf("ApproveRecommendation(r1) = %+v, %+v, %v", a, plan, err)
	}
	a, err = e.engine.RejectRecommendation(ctx, r2, bob, "no")
	if err != nil || a.Status != orchestrator.ApprovalRejected || a.RecommendationID != r2 || a.RejectedBy != "bob" {
		t.Fatalf("RejectRecommendation(r2) = %+v, %v", a, err)
	}
	if _, _, err := e.engine.ApproveRecommendation(ctx, r1, bob); !errors.Is(err, coordination.ErrAlreadyDecided) {
		t.Errorf("approving r1 again: %v, want ErrAlreadyDecided", err)
	}
	if _, err := e.engine.RejectRecommendation(ctx, r3, bob, ""); !errors.Is(err, coordination.ErrAlreadyDecided) ||
		!strings.Contains(err.Error(), "superseded") {
		t.Errorf("rejecting superseded r3: %v, want ErrAlreadyDecided saying superseded", err)
	}
	if _, _, err := e.engine.ApproveRecommendation(ctx, "nope", alice); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("approving an unknown recommendation: %v, want ErrNotFound", err)
	}
	if _, _, err := e.engine.ApproveRecommendation(ctx, r1, coordination.Actor{}); !errors.Is(err, coordination.ErrInvalid) {
		t.Errorf("approving without a name: %v, want a FieldError", err)
	}
}
