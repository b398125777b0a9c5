package coordination

import (
	"context"
	"errors"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Errors of the coordination store.
var (
	// ErrFull: storing the coordination would take the store past
	// COORDINATION_MAX_RECORDS (503 with Retry-After, not 429: the
	// capacity is the orchestrator's, not a rate the client passed, and it
	// frees as the sweep prunes settled coordinations). Nothing is stored.
	ErrFull = errors.New("the coordination store is full; retry after settled coordinations are pruned")

	// ErrExists: a record with the same id is stored already. The engine
	// generates ids, so this is a bug or an id collision, never a
	// client's fault (500).
	ErrExists = errors.New("coordination record id already taken")

	// ErrNoChange is returned by a change function of UpdateApproval or
	// UpdatePlan that finds nothing to do (an approval the sweep would
	// expire was decided meanwhile): the store changes nothing, and the
	// update returns it.
	ErrNoChange = errors.New("nothing to change")

	// ErrLeaseLost is returned by UpdateRun when the caller no longer
	// holds the plan's run lease: it lapsed and another executor took
	// the plan over. Nothing is stored; the caller stops running it.
	ErrLeaseLost = errors.New("the plan's run lease is held by another executor")

	// ErrResourceBusy is wrapped by the *BusyError of an update whose
	// Effects.Acquire names a resource another plan holds.
	ErrResourceBusy = errors.New("resource held by another plan")
)

// BusyError is an Effects.Acquire refused: Resource (of the plan's
// customer) is held by plan Holder. Nothing was stored.
type BusyError struct {
	Resource string
	Holder   string
}

func (e *BusyError) Error() string {
	return "resource " + e.Resource + " is held by plan " + e.Holder
}

// Unwrap returns ErrResourceBusy.
func (e *BusyError) Unwrap() error { return ErrResourceBusy }

// Coordination is what one POST /coordination/coordinate decided, as the
// store keeps it: with its recommendations, approvals and plans (stored
// as their own records, which change afterwards), it rebuilds the answer.
// Conflicts never change once resolved, so they are kept here whole.
type Coordination struct {
	ID         string
	CustomerID string
	CreatedAt  time.Time
	// Actor and RequestID are who submitted the batch, and in which
	// request.
	Actor     string
	RequestID string
	// The counts of the answer, as decided then.
	TotalRecommendations int
	RecommendationsKept  int
	ApprovalsRequired    int
	AutoApproved         int
	Conflicts            []orchestrator.Conflict
}

// Batch is everything one coordination stores: CreateCoordination keeps
// it in one atomic step, so a failure leaves none of it.
type Batch struct {
	Coordination    Coordination
	Recommendations []orchestrator.Recommendation
	Approvals       []orchestrator.Approval
	Plans           []orchestrator.Plan
	Events          []orchestrator.Event
}

// Records is how many records b counts against COORDINATION_MAX_RECORDS:
// its recommendations, conflicts, approvals and plans.
func (b Batch) Records() int {
	return len(b.Recommendations) + len(b.Coordination.Conflicts) + len(b.Approvals) + len(b.Plans)
}

// Effects are what a decision on an approval, or a change of a plan,
// does beside changing that record. The store applies them in the same
// atomic step as the change.
type Effects struct {
	// RecommendationStatus, when set, becomes the status of the
	// recommendation the approval or plan is for.
	RecommendationStatus orchestrator.RecommendationStatus
	// Plan, when set, is stored as a new plan.
	Plan *orchestrator.Plan
	// Events are appended to the log; the store assigns their Seq.
	Events []orchestrator.Event
	// Acquire, on a plan's update, takes the resource leases of these
	// resources (of the plan's customer) for the plan: all of them, or,
	// when another plan holds one, none, and the update fails with a
	// *BusyError and stores nothing. Leases the plan holds already are
	// kept. One plan at a time per resource.
	Acquire []string
	// Release, on a plan's update, frees every resource lease the plan
	// holds.
	Release bool
}

// RecommendationQuery selects a page of recommendations, oldest first.
// Empty fields select everything.
type RecommendationQuery struct {
	CustomerID string
	Status     orchestrator.RecommendationStatus
	// After is the cursor a previous page returned: the page starts after
	// it. Empty starts at the beginning.
	After string
	// Limit is the most to return; the engine bounds it (1 to MaxPage,
	// DefaultPage when 0). A store given 0 returns none.
	Limit int
}

// ApprovalQuery selects a page of approvals, oldest first.
type ApprovalQuery struct {
	CustomerID string
	Status     orchestrator.ApprovalStatus
	// RecommendationID, when set, selects the approvals of the
	// recommendation whose RecordID it is (one at most: the engine asks
	// one approval per recommendation). The portal decides by
	// recommendation, not by approval.
	RecommendationID string
	// ExpiredBy, when set, selects the approvals whose expires_at is at or
	// before it (the sweep's query).
	ExpiredBy time.Time
	After     string
	Limit     int
}

// PlanQuery selects a page of plans, oldest first.
type PlanQuery struct {
	CustomerID string
	Status     orchestrator.PlanStatus
	After      string
	Limit      int
}

// EventQuery selects a page of the audit log, in Seq order.
type EventQuery struct {
	CustomerID string
	// After selects the events with a greater Seq.
	After uint64
	// Since selects the events at or after it, when set.
	Since time.Time
	Limit int
}

// Store keeps the coordination records: coordinations, recommendations
// (under their RecordID), approvals, plans and the append-only audit log.
// Every method is safe for concurrent use and atomic: a reader never
// sees half a change. The contract every implementation must meet is the
// suite in package coordinationtest; the memory store passes it, and a
// PostgreSQL store must too (each change one transaction, the updates
// under SELECT ... FOR UPDATE). Records go in and come out as copies: a
// caller never shares a slice or a map with the store.
//
// Cursors (the After of a query, the next a list returns) are opaque
// strings a store makes; a malformed one is refused with a *FieldError on
// "after". A list returns next == "" when there is nothing after its
// page.
type Store interface {
	// CreateCoordination stores b whole, assigning its events' Seq, or
	// nothing: ErrFull when holding b.Records() more would take the store
	// past maxRecords, ErrExists when an id is taken.
	CreateCoordination(ctx context.Context, b Batch, maxRecords int) error
	// Coordination returns coordination id. ErrNotFound when unknown.
	Coordination(ctx context.Context, id string) (Coordination, error)

	// Recommendation returns the recommendation whose RecordID is id.
	Recommendation(ctx context.Context, id string) (orchestrator.Recommendation, error)
	// Recommendations returns a page of recommendations.
	Recommendations(ctx context.Context, q RecommendationQuery) (page []orchestrator.Recommendation, next string, err error)
	// CoordinationRecords returns the recommendations, approvals and
	// plans of coordination id, in the order they were stored.
	CoordinationRecords(ctx context.Context, id string) (Batch, error)

	// Approval returns approval id.
	Approval(ctx context.Context, id string) (orchestrator.Approval, error)
	// Approvals returns a page of approvals.
	Approvals(ctx context.Context, q ApprovalQuery) (page []orchestrator.Approval, next string, err error)
	// UpdateApproval calls change with approval id and a copy of its
	// recommendation, and stores the approval as change leaves it, with
	// change's effects, in one atomic step; concurrent updates of one
	// approval take turns, so change always sees the latest. When change
	// fails, nothing is stored and its error is returned with the
	// approval as it was. ErrNotFound when id is unknown. The id, the
	// recommendation id and the customer are not change's to change.
	UpdateApproval(ctx context.Context, id string, change func(*orchestrator.Approval, orchestrator.Recommendation) (Effects, error)) (orchestrator.Approval, error)

	// Plan returns plan id.
	Plan(ctx context.Context, id string) (orchestrator.Plan, error)
	// Plans returns a page of plans.
	Plans(ctx context.Context, q PlanQuery) (page []orchestrator.Plan, next string, err error)
	// UpdatePlan is UpdateApproval for plan id.
	UpdatePlan(ctx context.Context, id string, change func(*orchestrator.Plan, orchestrator.Recommendation) (Effects, error)) (orchestrator.Plan, error)

	// ClaimPlans takes the run lease, for owner until until, of up to
	// limit plans that are running or rolling_back and whose lease is
	// free or lapsed at now, oldest first, and returns them. Concurrent
	// claims (other replicas' included) never take the same plan: an
	// executor that dies stops renewing, and its plans are taken over
	// once their leases lapse.
	ClaimPlans(ctx context.Context, owner string, now, until time.Time, limit int) ([]orchestrator.Plan, error)
	// UpdateRun is UpdatePlan for the holder of plan id's run lease: it
	// extends the lease to until in the same atomic step. ErrLeaseLost
	// when owner does not hold it (another took it over, or it was
	// released); nothing is stored then.
	UpdateRun(ctx context.Context, id, owner string, until time.Time, change func(*orchestrator.Plan, orchestrator.Recommendation) (Effects, error)) (orchestrator.Plan, error)
	// RenewRuns extends to until owner's run leases of the plans ids and
	// returns the ids whose lease owner no longer holds.
	RenewRuns(ctx context.Context, owner string, ids []string, until time.Time) (lost []string, err error)
	// ReleaseRun frees owner's run lease of plan id, so that another
	// executor may take the plan at once; nothing when owner does not
	// hold it.
	ReleaseRun(ctx context.Context, id, owner string) error

	// Events returns a page of the audit log, and the Seq to pass as
	// After for the next (0 when there is none).
	Events(ctx context.Context, q EventQuery) (page []orchestrator.Event, next uint64, err error)

	// CountRecommendations counts the recommendations by status.
	CountRecommendations(ctx context.Context) (map[orchestrator.RecommendationStatus]int, error)
	// Records is how many records the store holds, as maxRecords counts
	// them.
	Records(ctx context.Context) (int, error)
	// Prune deletes the coordinations settled before cutoff, with their
	// records, and the events before cutoff; it returns how many
	// coordinations it deleted. A coordination is settled when no approval
	// of it is pending and every plan of it is in a terminal state; it
	// settled at the latest of its created_at, its approvals' approved_at,
	// rejected_at or (expired) expires_at, and its plans' completed_at and
	// rolled_back_at: times the records carry, so the store needs no clock.
	Prune(ctx context.Context, cutoff time.Time) (int, error)
}

// Page sizes of the engine's lists.
const (
	DefaultPage = 100
	MaxPage     = 1000
)
