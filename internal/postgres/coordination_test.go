package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/coordination/coordinationtest"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/storeerr"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

func TestCoordinationStore(t *testing.T) {
	coordinationtest.TestStore(t, func(t *testing.T) coordination.Store {
		return postgres.NewCoordinationStore(migratedPool(t, pgtest.NewDatabase(t)))
	})
}

// twoReplicas is two coordination stores over one fresh database, each
// with a pool of its own, as two replicas have.
func twoReplicas(t *testing.T) [2]*postgres.CoordinationStore {
	url := pgtest.NewDatabase(t)
	migratedPool(t, url)
	return [2]*postgres.CoordinationStore{postgres.NewCoordinationStore(open(t, url)), postgres.NewCoordinationStore(open(t, url))}
}

// pendingBatch is coordination id of acme with one recommendation waiting
// for approval id+"-a", expiring at expires.
func pendingBatch(id string, expires time.Time) coordination.Batch {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	rec := orchestrator.Recommendation{ID: "r", RecordID: id + "-r", CoordinationID: id, CustomerID: "acme",
		AgentType: orchestrator.AgentTypeCost, Action: "scale_down", RiskLevel: orchestrator.RiskMedium,
		CreatedAt: now, Status: orchestrator.RecommendationPending}
	return coordination.Batch{
		Coordination:    coordination.Coordination{ID: id, CustomerID: "acme", CreatedAt: now},
		Recommendations: []orchestrator.Recommendation{rec},
		Approvals: []orchestrator.Approval{{ID: id + "-a", RecommendationID: rec.RecordID, CustomerID: "acme",
			RiskLevel: orchestrator.RiskMedium, Status: orchestrator.ApprovalPending, RequestedBy: "submitter",
			RequestedAt: now, ExpiresAt: expires, RequiredApprovals: 1}},
	}
}

// Two replicas deciding the same approval at once: exactly one wins, one
// plan is created and one event logged, whichever replica each decision
// reached.
func TestCoordinationStoreReplicasDecideOnce(t *testing.T) {
	stores := twoReplicas(t)
	ctx := context.Background()
	if err := stores[0].CreateCoordination(ctx, pendingBatch("c1", time.Now().Add(time.Hour)), 100); err != nil {
		t.Fatal(err)
	}
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = stores[i%2].UpdateApproval(ctx, "c1-a", func(a *orchestrator.Approval, rec orchestrator.Recommendation) (coordination.Effects, error) {
				if a.Status != orchestrator.ApprovalPending {
					return coordination.Effects{}, coordination.ErrAlreadyDecided
				}
				now := time.Now().UTC()
				a.Status, a.ApprovedBy, a.ApprovedAt = orchestrator.ApprovalApproved, fmt.Sprint("user-", i), &now
				p := orchestrator.Plan{ID: fmt.Sprint("plan-", i), RecommendationID: rec.RecordID, CustomerID: rec.CustomerID,
					Status: orchestrator.PlanPending, CreatedAt: now, Steps: []orchestrator.PlanStep{}}
				return coordination.Effects{RecommendationStatus: orchestrator.RecommendationApproved, Plan: &p,
					Events: []orchestrator.Event{{At: now, CustomerID: "acme", Kind: orchestrator.EventApprovalApproved, SubjectID: a.ID}}}, nil
			})
		})
	}
	wg.Wait()
	coordinationtest.OneWinner(t, errs)
	for i, s := range stores {
		plans, _, err := s.Plans(ctx, coordination.PlanQuery{Limit: 100})
		if err != nil || len(plans) != 1 {
			t.Errorf("replica %d sees %d plans (%v), want the winner's only", i, len(plans), err)
		}
		events, _, err := s.Events(ctx, coordination.EventQuery{Limit: 100})
		if err != nil || len(events) != 1 {
			t.Errorf("replica %d sees %d events (%v), want the winner's only", i, len(events), err)
		}
		if n, err := s.Records(ctx); err != nil || n != 3 {
			t.Errorf("replica %d counts %d records (%v), want 3: the recommendation, the approval, one plan", i, n, err)
		}
	}
}

// Both replicas sweep: each expired approval is expired once, with one
// event, as the engine's sweep does it (a change that finds the approval
// decided changes nothing).
func TestCoordinationStoreReplicasExpireOnce(t *testing.T) {
	stores := twoReplicas(t)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	for i := range 5 {
		if err := stores[i%2].CreateCoordination(ctx, pendingBatch(fmt.Sprint("c", i), past), 100); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu      sync.Mutex
		expired int
	)
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Go(func() {
			due, _, err := s.Approvals(ctx, coordination.ApprovalQuery{Status: orchestrator.ApprovalPending, ExpiredBy: time.Now(), Limit: 100})
			if err != nil {
				t.Error(err)
				return
			}
			for _, a := range due {
				_, err := s.UpdateApproval(ctx, a.ID, func(a *orchestrator.Approval, _ orchestrator.Recommendation) (coordination.Effects, error) {
					if a.Status != orchestrator.ApprovalPending {
						return coordination.Effects{}, coordination.ErrNoChange
					}
					a.Status = orchestrator.ApprovalExpired
					return coordination.Effects{RecommendationStatus: orchestrator.RecommendationExpired,
						Events: []orchestrator.Event{{At: time.Now().UTC(), CustomerID: a.CustomerID, Kind: orchestrator.EventApprovalExpired, SubjectID: a.ID}}}, nil
				})
				switch {
				case err == nil:
					mu.Lock()
					expired++
					mu.Unlock()
				case !errors.Is(err, coordination.ErrNoChange):
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if expired != 5 {
		t.Errorf("%d expiries across the replicas, want 5: each approval once", expired)
	}
	events, _, err := stores[0].Events(ctx, coordination.EventQuery{Limit: 100})
	if err != nil || len(events) != 5 {
		t.Errorf("%d expiry events (%v), want 5", len(events), err)
	}
}

// The record limit holds across replicas: submissions racing through two
// stores for the last places never pass it together.
func TestCoordinationStoreReplicasShareTheLimit(t *testing.T) {
	stores := twoReplicas(t)
	ctx := context.Background()
	const limit = 10 // each batch holds 2 records: 5 fit
	errs := make([]error, 12)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			errs[i] = stores[i%2].CreateCoordination(ctx, pendingBatch(fmt.Sprint("c", i), time.Now().Add(time.Hour)), limit)
		})
	}
	wg.Wait()
	stored := 0
	for _, err := range errs {
		switch {
		case err == nil:
			stored++
		case !errors.Is(err, coordination.ErrFull):
			t.Errorf("a refusal: %v, want ErrFull", err)
		}
	}
	if stored != 5 {
		t.Errorf("%d coordinations stored, want 5 (the limit's worth)", stored)
	}
	if n, err := stores[1].Records(ctx); err != nil || n != limit {
		t.Errorf("Records = %d, %v; want %d", n, err, limit)
	}
}

// A database that cannot be reached is ErrUnavailable (503), not a 500.
func TestCoordinationStoreUnavailable(t *testing.T) {
	url := pgtest.NewDatabase(t)
	pool := migratedPool(t, url)
	s := postgres.NewCoordinationStore(pool)
	pool.Close()
	ctx := context.Background()
	if err := s.CreateCoordination(ctx, pendingBatch("c1", time.Now()), 100); !errors.Is(err, storeerr.ErrUnavailable) {
		t.Errorf("CreateCoordination on a closed pool: %v, want ErrUnavailable", err)
	}
	if _, _, err := s.Approvals(ctx, coordination.ApprovalQuery{Limit: 1}); !errors.Is(err, storeerr.ErrUnavailable) {
		t.Errorf("Approvals on a closed pool: %v, want ErrUnavailable", err)
	}
}

// PostgreSQL text cannot hold a NUL character, even as a parameter: an id
// or a filter holding one matches nothing (404, an empty list), and a
// record holding one is refused as the client's mistake (400), never a
// 500.
func TestCoordinationStoreNUL(t *testing.T) {
	s := postgres.NewCoordinationStore(migratedPool(t, pgtest.NewDatabase(t)))
	ctx := context.Background()
	b := pendingBatch("c1", time.Now().Add(time.Hour))
	if err := s.CreateCoordination(ctx, b, 100); err != nil {
		t.Fatal(err)
	}
	nul := "c1-a\x00"
	noop := func() (coordination.Effects, error) { return coordination.Effects{}, nil }
	for name, err := range map[string]error{
		"Coordination":   second(s.Coordination(ctx, nul)),
		"Records":        second(s.CoordinationRecords(ctx, nul)),
		"Recommendation": second(s.Recommendation(ctx, nul)),
		"Approval":       second(s.Approval(ctx, nul)),
		"Plan":           second(s.Plan(ctx, nul)),
		"UpdateApproval": second(s.UpdateApproval(ctx, nul, func(*orchestrator.Approval, orchestrator.Recommendation) (coordination.Effects, error) { return noop() })),
		"UpdatePlan":     second(s.UpdatePlan(ctx, nul, func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error) { return noop() })),
	} {
		if !errors.Is(err, coordination.ErrNotFound) {
			t.Errorf("%s of an id with a NUL: %v, want ErrNotFound", name, err)
		}
	}
	if page, _, err := s.Approvals(ctx, coordination.ApprovalQuery{CustomerID: "acme\x00", Limit: 10}); err != nil || len(page) != 0 {
		t.Errorf("approvals of a customer with a NUL = %v, %v; want none", page, err)
	}
	if page, _, err := s.Events(ctx, coordination.EventQuery{CustomerID: "acme\x00", Limit: 10}); err != nil || len(page) != 0 {
		t.Errorf("events of a customer with a NUL = %v, %v; want none", page, err)
	}
	b = pendingBatch("c2", time.Now().Add(time.Hour))
	b.Recommendations[0].Title = "a\x00b"
	var fe *coordination.FieldError
	if err := s.CreateCoordination(ctx, b, 100); !errors.As(err, &fe) {
		t.Errorf("a title with a NUL: %v, want a FieldError", err)
	}
	if _, err := s.UpdateApproval(ctx, "c1-a", func(a *orchestrator.Approval, _ orchestrator.Recommendation) (coordination.Effects, error) {
		a.Status, a.RejectionReason = orchestrator.ApprovalRejected, "no\x00"
		return coordination.Effects{}, nil
	}); !errors.As(err, &fe) {
		t.Errorf("a reason with a NUL: %v, want a FieldError", err)
	}
}

func second[T any](_ T, err error) error { return err }

// Plans acquiring the same resources at once through two replicas, each
// naming them in its own order: one wins each round, and PostgreSQL
// counts no deadlock, since every transaction takes its leases in sorted
// order. (A deadlock would not fail the acquires: the loser is run
// again. Only the database's count shows it.)
func TestCoordinationStoreReplicasAcquireWithoutDeadlock(t *testing.T) {
	url := pgtest.NewDatabase(t)
	admin := migratedPool(t, url)
	ctx := context.Background()
	// Each lease inserted takes a while, so that the concurrent acquires
	// overlap: inserted at full speed, even leases taken in any order
	// would rarely meet in a deadlock. A BEFORE trigger fires for every
	// row proposed, before ON CONFLICT looks for a conflict.
	if _, err := admin.Exec(ctx, `CREATE FUNCTION slow_lease() RETURNS trigger LANGUAGE plpgsql
			AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$;
		CREATE TRIGGER slow_lease BEFORE INSERT ON coordination_resource_leases
			FOR EACH ROW EXECUTE FUNCTION slow_lease()`); err != nil {
		t.Fatal(err)
	}
	// The replicas' sessions carry a name of their own, to know when they
	// are gone.
	const app = "acquire-test"
	replicaURL := url + map[bool]string{true: "&", false: "?"}[strings.Contains(url, "?")] + "application_name=" + app
	pools := []*pgxpool.Pool{open(t, replicaURL), open(t, replicaURL)}
	coordinationtest.ConcurrentAcquires(t, []coordination.Store{
		postgres.NewCoordinationStore(pools[0]), postgres.NewCoordinationStore(pools[1]),
	}, 10)

	// A backend adds its counts to pg_stat_database as it exits: once the
	// replicas' sessions are gone, their deadlocks are counted.
	for _, p := range pools {
		p.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var sessions int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&sessions); err != nil {
			t.Fatal(err)
		}
		if sessions == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d replica sessions still open", sessions)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var deadlocks int64
	if err := admin.QueryRow(ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&deadlocks); err != nil {
		t.Fatal(err)
	}
	if deadlocks != 0 {
		t.Errorf("%d deadlocks while acquiring, want none", deadlocks)
	}
}
