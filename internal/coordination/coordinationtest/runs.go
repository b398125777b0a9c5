package coordinationtest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// The run leases (ClaimPlans, UpdateRun, RenewRuns, ReleaseRun) and the
// resource leases (Effects.Acquire and Release): what lets the executors
// of several replicas run each plan once, and one plan at a time per
// resource.

// plansBatch is batch(name, customer, sec, len(statuses)) with plan i,
// name-p<i>, of recommendation i, in statuses[i].
func plansBatch(name, customer string, sec int, statuses ...orchestrator.PlanStatus) coordination.Batch {
	b := batch(name, customer, sec, len(statuses))
	for i, st := range statuses {
		p := plan(fmt.Sprintf("%s-p%d", name, i), b.Recommendations[i], sec)
		p.Status = st
		b.Plans = append(b.Plans, p)
	}
	return b
}

func planIDs(plans []orchestrator.Plan) []string {
	ids := []string{}
	for _, p := range plans {
		ids = append(ids, p.ID)
	}
	return ids
}

// claim is ClaimPlans from now (seconds) until until, and the ids it
// took, in the order returned.
func claim(t *testing.T, s coordination.Store, owner string, now, until, limit int) []string {
	t.Helper()
	plans, err := s.ClaimPlans(context.Background(), owner, at(now), at(until), limit)
	if err != nil {
		t.Fatalf("ClaimPlans(%s at %d): %v", owner, now, err)
	}
	return planIDs(plans)
}

func eventCount(t *testing.T, s coordination.Store) int {
	t.Helper()
	events, _, err := s.Events(context.Background(), coordination.EventQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(events)
}

// setStatus stores plan id in status st.
func setStatus(t *testing.T, s coordination.Store, id string, st orchestrator.PlanStatus) {
	t.Helper()
	if _, err := s.UpdatePlan(context.Background(), id, func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.Status = st
		return coordination.Effects{}, nil
	}); err != nil {
		t.Fatalf("UpdatePlan(%s) to %s: %v", id, st, err)
	}
}

func testClaimPlans(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, plansBatch("c1", "acme", 0,
		orchestrator.PlanPending, orchestrator.PlanRunning, orchestrator.PlanCompleted, orchestrator.PlanRollingBack,
		orchestrator.PlanFailed, orchestrator.PlanCancelled, orchestrator.PlanRolledBack, orchestrator.PlanRollbackFailed))
	mustCreate(t, s, plansBatch("c2", "other", 1, orchestrator.PlanRunning))

	// Only the running and rolling_back plans, of every customer, oldest
	// first, as stored.
	got, err := s.ClaimPlans(ctx, "a", at(100), at(130), 10)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "claimed", planIDs(got), []string{"c1-p1", "c1-p3", "c2-p0"})
	for _, p := range got {
		if stored, err := s.Plan(ctx, p.ID); err != nil || !reflect.DeepEqual(stored, p) {
			t.Errorf("claimed %+v, stored %+v (%v)", p, stored, err)
		}
	}

	// Held and not lapsed: nobody takes them, their holder included.
	if ids := claim(t, s, "b", 129, 159, 10); len(ids) != 0 {
		t.Errorf("claimed %v held until 130 at 129, want none", ids)
	}
	if ids := claim(t, s, "a", 129, 159, 10); len(ids) != 0 {
		t.Errorf("the holder claimed %v again, want none", ids)
	}
	// Lapsed at until: taken over, up to the limit, oldest first.
	equal(t, "taken over at 130, 2 at most", claim(t, s, "b", 130, 160, 2), []string{"c1-p1", "c1-p3"})
	equal(t, "the rest", claim(t, s, "c", 130, 160, 10), []string{"c2-p0"})
	if ids := claim(t, s, "d", 130, 160, 10); len(ids) != 0 {
		t.Errorf("claimed %v when every plan is held, want none", ids)
	}

	// A plan that starts running later is claimed in its place by age;
	// one that ends is not claimed however long its lease has lapsed.
	setStatus(t, s, "c1-p0", orchestrator.PlanRunning)
	setStatus(t, s, "c1-p3", orchestrator.PlanRolledBack)
	if ids := claim(t, s, "e", 200, 230, 0); len(ids) != 0 {
		t.Errorf("a limit of 0 claimed %v", ids)
	}
	equal(t, "claimed at 200", claim(t, s, "f", 200, 230, 10), []string{"c1-p0", "c1-p1", "c2-p0"})
}

func testClaimPlansConcurrently(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	// One plan, many claimers at once: exactly one takes it.
	mustCreate(t, s, plansBatch("c1", "acme", 0, orchestrator.PlanRunning))
	const n = 16
	claimed := make([][]orchestrator.Plan, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			if claimed[i], err = s.ClaimPlans(ctx, fmt.Sprint("owner-", i), at(100), at(130), 1); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	winners := 0
	for _, plans := range claimed {
		winners += len(plans)
	}
	if winners != 1 {
		t.Fatalf("%d claims of one plan won, want exactly 1", winners)
	}

	// Many plans, many claimers: each plan to one of them at most, and
	// what they left is there for the next claim.
	statuses := make([]orchestrator.PlanStatus, 20)
	for i := range statuses {
		statuses[i] = orchestrator.PlanRunning
	}
	mustCreate(t, s, plansBatch("c2", "acme", 1, statuses...))
	const claimers = 8
	owners := make([]string, claimers+1)
	claimed = make([][]orchestrator.Plan, claimers+1)
	for i := range claimers {
		owners[i] = fmt.Sprint("claimer-", i)
		wg.Go(func() {
			var err error
			if claimed[i], err = s.ClaimPlans(ctx, owners[i], at(100), at(130), 4); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	owners[claimers] = "late"
	var err error
	if claimed[claimers], err = s.ClaimPlans(ctx, "late", at(100), at(130), 100); err != nil {
		t.Fatal(err)
	}
	holder := map[string]string{}
	var all []string
	for i, plans := range claimed {
		for _, p := range plans {
			if h, taken := holder[p.ID]; taken {
				t.Errorf("%s claimed by %s and %s", p.ID, h, owners[i])
			}
			holder[p.ID] = owners[i]
			all = append(all, p.ID)
		}
	}
	want := planIDs(plansBatch("c2", "acme", 1, statuses...).Plans)
	slices.Sort(all)
	slices.Sort(want)
	equal(t, "plans claimed in all", all, want)
	// The store agrees on who holds each.
	for _, owner := range owners {
		lost, err := s.RenewRuns(ctx, owner, want, at(130))
		if err != nil {
			t.Fatal(err)
		}
		var wantLost []string
		for _, id := range want {
			if holder[id] != owner {
				wantLost = append(wantLost, id)
			}
		}
		slices.Sort(lost)
		equal(t, owner+"'s lost leases", lost, wantLost)
	}
}

func testUpdateRun(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, plansBatch("c1", "acme", 0, orchestrator.PlanRunning, orchestrator.PlanRunning, orchestrator.PlanPending))
	equal(t, "claimed", claim(t, s, "a", 100, 130, 1), []string{"c1-p0"})

	// The holder's change is stored with its effects, and its lease is
	// extended.
	before := eventCount(t, s)
	p, err := s.UpdateRun(ctx, "c1-p0", "a", at(200), func(p *orchestrator.Plan, rec orchestrator.Recommendation) (coordination.Effects, error) {
		if rec.RecordID != "c1-r0" {
			return coordination.Effects{}, fmt.Errorf("change saw recommendation %q", rec.RecordID)
		}
		p.CurrentStep, p.Steps[0].Status, p.WaitingFor = 1, orchestrator.StepCompleted, "resource i-9"
		return coordination.Effects{RecommendationStatus: orchestrator.RecommendationExecuting,
			Events: []orchestrator.Event{{At: at(110), CustomerID: "acme", Kind: orchestrator.EventStepCompleted, SubjectID: p.ID}}}, nil
	})
	if err != nil || p.CurrentStep != 1 || p.Steps[0].Status != orchestrator.StepCompleted {
		t.Fatalf("UpdateRun = %+v, %v", p, err)
	}
	if stored, _ := s.Plan(ctx, "c1-p0"); !reflect.DeepEqual(stored, p) {
		t.Errorf("stored %+v, returned %+v", stored, p)
	}
	if r, _ := s.Recommendation(ctx, "c1-r0"); r.Status != orchestrator.RecommendationExecuting {
		t.Errorf("recommendation %s, want executing", r.Status)
	}
	if n := eventCount(t, s); n != before+1 {
		t.Errorf("%d events, want %d", n, before+1)
	}
	equal(t, "claimed at 150, c1-p0's lease extended to 200", claim(t, s, "b", 150, 180, 10), []string{"c1-p1"})
	// UpdatePlan (an operator's cancel, say) leaves the lease as it was.
	if _, err := s.UpdatePlan(ctx, "c1-p1", func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.WaitingFor = "dependency c1-p0"
		return coordination.Effects{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if ids := claim(t, s, "z", 170, 200, 10); len(ids) != 0 {
		t.Errorf("claimed %v at 170 after an UpdatePlan, want none: b holds c1-p1 to 180", ids)
	}
	if lost, err := s.RenewRuns(ctx, "b", []string{"c1-p1"}, at(180)); err != nil || len(lost) != 0 {
		t.Errorf("b lost %v (%v) after an UpdatePlan of its plan", lost, err)
	}

	// A caller who does not hold the lease changes nothing.
	lost := func(id, owner, why string) {
		t.Helper()
		before, _ := s.Plan(ctx, id)
		events := eventCount(t, s)
		got, err := s.UpdateRun(ctx, id, owner, at(1000), func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
			p.Status = orchestrator.PlanCancelled
			return coordination.Effects{RecommendationStatus: orchestrator.RecommendationCancelled, Acquire: []string{"i-lost"},
				Events: []orchestrator.Event{{At: at(1), CustomerID: "acme", Kind: orchestrator.EventPlanCancelled, SubjectID: id}}}, nil
		})
		if !errors.Is(err, coordination.ErrLeaseLost) {
			t.Errorf("UpdateRun(%s) by %q (%s): %v, want ErrLeaseLost", id, owner, why, err)
		}
		if after, _ := s.Plan(ctx, id); !reflect.DeepEqual(after, before) || got.Status != before.Status {
			t.Errorf("UpdateRun(%s) by %q (%s) stored %+v or returned %+v, want %+v unchanged", id, owner, why, after, got, before)
		}
		if r, _ := s.Recommendation(ctx, before.RecommendationID); r.Status == orchestrator.RecommendationCancelled {
			t.Errorf("UpdateRun(%s) by %q (%s) changed the recommendation", id, owner, why)
		}
		if n := eventCount(t, s); n != events {
			t.Errorf("UpdateRun(%s) by %q (%s) logged %d events", id, owner, why, n-events)
		}
	}
	lost("c1-p0", "b", "another holds it")
	lost("c1-p2", "a", "never claimed")
	lost("c1-p2", "", "never claimed, no owner")
	// The refused change above took no resource lease.
	if err := acquire(s, "c1-p1", "i-lost"); err != nil {
		t.Errorf("a resource named by a refused UpdateRun: %v", err)
	}

	// A change that fails, or whose Acquire is refused, stores nothing
	// and leaves the lease as it was (to 200).
	boom := errors.New("boom")
	if _, err := s.UpdateRun(ctx, "c1-p0", "a", at(1000), func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.CurrentStep = 2
		return coordination.Effects{}, boom
	}); !errors.Is(err, boom) {
		t.Errorf("a failing change: %v, want boom", err)
	}
	if _, err := s.UpdateRun(ctx, "c1-p0", "a", at(1000), func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.CurrentStep = 2
		return coordination.Effects{Acquire: []string{"i-lost"}}, nil
	}); !errors.Is(err, coordination.ErrResourceBusy) {
		t.Errorf("an Acquire of c1-p1's resource: %v, want ErrResourceBusy", err)
	}
	if p, _ := s.Plan(ctx, "c1-p0"); p.CurrentStep != 1 {
		t.Errorf("current step %d after refused changes, want 1", p.CurrentStep)
	}
	// Lapsed at 200 and taken over: the first holder's updates are lost,
	// the new holder's go through.
	equal(t, "taken over at 200", claim(t, s, "c", 200, 230, 1), []string{"c1-p0"})
	lost("c1-p0", "a", "taken over")
	if _, err := s.UpdateRun(ctx, "c1-p0", "c", at(260), func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.CurrentStep = 2
		return coordination.Effects{}, nil
	}); err != nil {
		t.Errorf("the new holder's UpdateRun: %v", err)
	}
	// Released: nobody's.
	if err := s.ReleaseRun(ctx, "c1-p0", "c"); err != nil {
		t.Fatal(err)
	}
	lost("c1-p0", "c", "released")
	lost("c1-p0", "", "released, no owner")

	if _, err := s.UpdateRun(ctx, "nope", "a", at(1000), func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error) {
		return coordination.Effects{}, nil
	}); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("UpdateRun of an unknown plan: %v, want ErrNotFound", err)
	}
}

func testRenewRuns(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, plansBatch("c1", "acme", 0,
		orchestrator.PlanRunning, orchestrator.PlanRunning, orchestrator.PlanRunning, orchestrator.PlanRunning))
	equal(t, "a's claim", claim(t, s, "a", 100, 130, 2), []string{"c1-p0", "c1-p1"})
	equal(t, "b's claim", claim(t, s, "b", 100, 130, 1), []string{"c1-p2"})

	renew := func(owner string, ids []string, until int) []string {
		t.Helper()
		lost, err := s.RenewRuns(ctx, owner, ids, at(until))
		if err != nil {
			t.Fatalf("RenewRuns(%q): %v", owner, err)
		}
		slices.Sort(lost)
		return lost
	}
	// Lost: another's, one nobody claimed, an unknown id.
	equal(t, "lost", renew("a", []string{"c1-p0", "c1-p1", "c1-p2", "c1-p3", "nope"}, 200), []string{"c1-p2", "c1-p3", "nope"})
	// Renewed to 200: a claim at 150 takes only the others.
	equal(t, "claimed at 150", claim(t, s, "c", 150, 180, 10), []string{"c1-p2", "c1-p3"})

	if err := s.ReleaseRun(ctx, "c1-p0", "a"); err != nil {
		t.Fatal(err)
	}
	equal(t, "lost after a release", renew("a", []string{"c1-p0", "c1-p1"}, 300), []string{"c1-p0"})
	equal(t, "renewed by nobody", renew("", []string{"c1-p0"}, 300), []string{"c1-p0"})
	if lost := renew("a", nil, 300); len(lost) != 0 {
		t.Errorf("renewing nothing lost %v", lost)
	}
	// c1-p1 was renewed to 300; c1-p0 is free; c's lapsed at 180.
	equal(t, "claimed at 250", claim(t, s, "d", 250, 280, 10), []string{"c1-p0", "c1-p2", "c1-p3"})
	equal(t, "lost after a takeover", renew("c", []string{"c1-p2", "c1-p3"}, 400), []string{"c1-p2", "c1-p3"})
}

func testReleaseRun(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, plansBatch("c1", "acme", 0, orchestrator.PlanRunning))
	equal(t, "a's claim", claim(t, s, "a", 100, 1000, 10), []string{"c1-p0"})
	for _, owner := range []string{"b", ""} {
		if err := s.ReleaseRun(ctx, "c1-p0", owner); err != nil {
			t.Errorf("ReleaseRun by %q, who does not hold it: %v", owner, err)
		}
		if ids := claim(t, s, "c", 100, 1000, 10); len(ids) != 0 {
			t.Errorf("claimed %v after a release by %q, who did not hold it; want none", ids, owner)
		}
	}
	if err := s.ReleaseRun(ctx, "c1-p0", "a"); err != nil {
		t.Fatal(err)
	}
	equal(t, "claimed at once after the release", claim(t, s, "c", 100, 1000, 10), []string{"c1-p0"})
	// The former holder's release frees nothing now.
	if err := s.ReleaseRun(ctx, "c1-p0", "a"); err != nil {
		t.Errorf("ReleaseRun by the former holder: %v", err)
	}
	if ids := claim(t, s, "d", 100, 1000, 10); len(ids) != 0 {
		t.Errorf("claimed %v, held by c; want none", ids)
	}
	if err := s.ReleaseRun(ctx, "nope", "a"); err != nil {
		t.Errorf("ReleaseRun of an unknown plan: %v", err)
	}
}

// acquire is an UpdatePlan of id that takes the leases of resources.
func acquire(s coordination.Store, id string, resources ...string) error {
	_, err := s.UpdatePlan(context.Background(), id, func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error) {
		return coordination.Effects{Acquire: resources}, nil
	})
	return err
}

// release is an UpdatePlan of id that frees its resource leases and
// takes those of resources.
func release(t *testing.T, s coordination.Store, id string, resources ...string) {
	t.Helper()
	if _, err := s.UpdatePlan(context.Background(), id, func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error) {
		return coordination.Effects{Release: true, Acquire: resources}, nil
	}); err != nil {
		t.Fatalf("release %s: %v", id, err)
	}
}

func mustAcquire(t *testing.T, s coordination.Store, id string, resources ...string) {
	t.Helper()
	if err := acquire(s, id, resources...); err != nil {
		t.Fatalf("%s acquiring %v: %v", id, resources, err)
	}
}

// wantBusy fails t unless err is the *BusyError of resource held by
// holder.
func wantBusy(t *testing.T, err error, resource, holder string) {
	t.Helper()
	var busy *coordination.BusyError
	if !errors.As(err, &busy) || !errors.Is(err, coordination.ErrResourceBusy) || busy.Resource != resource || busy.Holder != holder {
		t.Errorf("%v, want %s busy, held by %s", err, resource, holder)
	}
}

func testResourceLeases(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	mustCreate(t, s, plansBatch("c1", "acme", 0, orchestrator.PlanRunning, orchestrator.PlanRunning, orchestrator.PlanRunning))
	mustCreate(t, s, plansBatch("c2", "other", 1, orchestrator.PlanRunning))
	mustAcquire(t, s, "c1-p0", "i-1", "i-2")

	// Another plan of the customer sharing i-2: refused whole, nothing
	// stored.
	before, _ := s.Plan(ctx, "c1-p1")
	events := eventCount(t, s)
	p, err := s.UpdatePlan(ctx, "c1-p1", func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		p.CurrentStep, p.WaitingFor = 1, ""
		return coordination.Effects{Acquire: []string{"i-3", "i-2"}, RecommendationStatus: orchestrator.RecommendationExecuting,
			Events: []orchestrator.Event{{At: at(5), CustomerID: "acme", Kind: orchestrator.EventStepStarted, SubjectID: p.ID}}}, nil
	})
	wantBusy(t, err, "i-2", "c1-p0")
	if !reflect.DeepEqual(p, before) {
		t.Errorf("a refused Acquire returned %+v, want the plan as it was %+v", p, before)
	}
	if after, _ := s.Plan(ctx, "c1-p1"); !reflect.DeepEqual(after, before) {
		t.Errorf("a refused Acquire stored %+v, want %+v", after, before)
	}
	if r, _ := s.Recommendation(ctx, "c1-r1"); r.Status != orchestrator.RecommendationPending {
		t.Errorf("a refused Acquire set the recommendation %s", r.Status)
	}
	if n := eventCount(t, s); n != events {
		t.Errorf("a refused Acquire logged %d events", n-events)
	}
	// None of its leases was taken: i-3 is free.
	mustAcquire(t, s, "c1-p2", "i-3")
	release(t, s, "c1-p2")

	// Another customer's i-1 is another resource.
	mustAcquire(t, s, "c2-p0", "i-1", "i-2")
	// The holder acquiring again keeps its leases and adds to them; a
	// resource named twice is one lease.
	mustAcquire(t, s, "c1-p0", "i-2", "i-1", "i-4", "i-4")
	wantBusy(t, acquire(s, "c1-p1", "i-4"), "i-4", "c1-p0")
	wantBusy(t, acquire(s, "c1-p1", "i-1"), "i-1", "c1-p0")

	// Release frees every lease of the plan: another takes them.
	release(t, s, "c1-p0")
	mustAcquire(t, s, "c1-p1", "i-1", "i-2", "i-3", "i-4")
	// Release and Acquire in one update: the plan holds exactly the new
	// ones.
	release(t, s, "c1-p1", "i-4", "i-5")
	mustAcquire(t, s, "c1-p0", "i-1", "i-2", "i-3")
	wantBusy(t, acquire(s, "c1-p0", "i-5"), "i-5", "c1-p1")
	wantBusy(t, acquire(s, "c1-p2", "i-4"), "i-4", "c1-p1")
	// Through all this, the other customer's leases stayed c2-p0's.
	mustCreate(t, s, plansBatch("c3", "other", 2, orchestrator.PlanRunning))
	wantBusy(t, acquire(s, "c3-p0", "i-2"), "i-2", "c2-p0")
}

// ConcurrentAcquires has plans of one customer acquire the same
// resources at once, each naming them in an order of its own, for rounds
// rounds: in each, exactly one wins and the others are refused with a
// *BusyError; the winner then releases them for the next round. Store
// tests run it through several replicas' stores.
func ConcurrentAcquires(t *testing.T, stores []coordination.Store, rounds int) {
	t.Helper()
	const plans = 8
	statuses := make([]orchestrator.PlanStatus, plans)
	for i := range statuses {
		statuses[i] = orchestrator.PlanRunning
	}
	mustCreate(t, stores[0], plansBatch("c1", "acme", 0, statuses...))
	resources := []string{"i-1", "i-2", "i-3", "i-4", "i-5"}
	for round := range rounds {
		errs := make([]error, plans)
		var wg sync.WaitGroup
		for i := range plans {
			wg.Go(func() {
				order := append(slices.Clone(resources[i%len(resources):]), resources[:i%len(resources)]...)
				if i%2 == 1 {
					slices.Reverse(order)
				}
				errs[i] = acquire(stores[i%len(stores)], fmt.Sprintf("c1-p%d", i), order...)
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Errorf("round %d: c1-p%d and c1-p%d both took the resources", round, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, coordination.ErrResourceBusy):
				t.Errorf("round %d: c1-p%d: %v, want ErrResourceBusy", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no plan took the resources", round)
		}
		release(t, stores[0], fmt.Sprintf("c1-p%d", winner))
	}

	// Pairs of plans swapping their leases, each in one update (Release
	// and Acquire): each swap is taken whole, or refused as busy.
	for round := range rounds {
		for i := range plans {
			release(t, stores[0], fmt.Sprintf("c1-p%d", i))
		}
		for i := range plans {
			mustAcquire(t, stores[0], fmt.Sprintf("c1-p%d", i), fmt.Sprint("s-", i))
		}
		errs := make([]error, plans)
		var wg sync.WaitGroup
		for i := range plans {
			wg.Go(func() {
				_, errs[i] = stores[i%len(stores)].UpdatePlan(context.Background(), fmt.Sprintf("c1-p%d", i),
					func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error) {
						return coordination.Effects{Release: true, Acquire: []string{fmt.Sprint("s-", i^1)}}, nil
					})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil && !errors.Is(err, coordination.ErrResourceBusy) {
				t.Errorf("swap round %d: c1-p%d: %v, want success or ErrResourceBusy", round, i, err)
			}
		}
	}
}

func testConcurrentAcquires(t *testing.T, s coordination.Store) {
	ConcurrentAcquires(t, []coordination.Store{s}, 3)
}

func testPruneFreesLeases(t *testing.T, s coordination.Store) {
	ctx := context.Background()
	// c1's approval was decided, and its plan failed at 5 holding i-1:
	// failed is terminal, so c1 settled at 5.
	b := plansBatch("c1", "acme", 0, orchestrator.PlanRunning)
	decided := at(1)
	b.Approvals[0].Status, b.Approvals[0].ApprovedBy, b.Approvals[0].ApprovedAt = orchestrator.ApprovalApproved, "alice", &decided
	mustCreate(t, s, b)
	mustCreate(t, s, plansBatch("c2", "acme", 1, orchestrator.PlanRunning))
	equal(t, "claimed", claim(t, s, "a", 2, 1000, 1), []string{"c1-p0"})
	mustAcquire(t, s, "c1-p0", "i-1")
	if _, err := s.UpdatePlan(ctx, "c1-p0", func(p *orchestrator.Plan, _ orchestrator.Recommendation) (coordination.Effects, error) {
		when := at(5)
		p.Status, p.CompletedAt = orchestrator.PlanFailed, &when
		return coordination.Effects{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	wantBusy(t, acquire(s, "c2-p0", "i-1"), "i-1", "c1-p0")
	if n, err := s.Prune(ctx, at(6)); err != nil || n != 1 {
		t.Fatalf("Prune(6) = %d, %v; want c1, settled at 5", n, err)
	}
	if err := acquire(s, "c2-p0", "i-1"); err != nil {
		t.Errorf("i-1 after its holder was pruned: %v", err)
	}
}
