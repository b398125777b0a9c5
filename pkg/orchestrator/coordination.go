package orchestrator

import (
	"encoding/json"
	"slices"
	"time"
)

// The wire types of recommendation coordination (the /coordination routes):
// agents recommend changes, the orchestrator detects and resolves the
// conflicts between them, asks people to approve the risky ones, and runs
// the approved ones as plans of steps carried out by agents. Field names
// are those of OptiInfra's earlier coordination engine; fields it did not
// have are marked as additions.

// RiskLevel is how much harm a recommendation can do if it goes wrong.
type RiskLevel string

// Risk levels, from the least to the most dangerous.
const (
	RiskLow      RiskLevel = "low"
	RiskMedium   RiskLevel = "medium"
	RiskHigh     RiskLevel = "high"
	RiskCritical RiskLevel = "critical"
)

// RiskLevels lists the risk levels in order, the least dangerous first.
var RiskLevels = []RiskLevel{RiskLow, RiskMedium, RiskHigh, RiskCritical}

// Rank is r's place in RiskLevels (0 for low), or -1 for an unknown level.
func (r RiskLevel) Rank() int { return slices.Index(RiskLevels, r) }

// RecommendationStatus is where a recommendation is in its life.
type RecommendationStatus string

// Recommendation statuses. After coordination a recommendation is pending
// (waiting for a person), auto_approved, superseded (it lost a conflict:
// SupersededBy names the winner) or rejected (by a person, or by the
// orchestrator because it is in a dependency cycle or depends on a
// recommendation that will not be applied; the conflicts say which).
// Approval moves it to approved; running its plan to executing, then
// completed, failed or rolled_back. An approval that expires leaves it
// expired; a cancelled plan leaves it cancelled.
const (
	RecommendationPending      RecommendationStatus = "pending"
	RecommendationAutoApproved RecommendationStatus = "auto_approved"
	RecommendationApproved     RecommendationStatus = "approved"
	RecommendationRejected     RecommendationStatus = "rejected"
	RecommendationSuperseded   RecommendationStatus = "superseded"
	RecommendationExpired      RecommendationStatus = "expired"
	RecommendationExecuting    RecommendationStatus = "executing"
	RecommendationCompleted    RecommendationStatus = "completed"
	RecommendationFailed       RecommendationStatus = "failed"
	RecommendationRolledBack   RecommendationStatus = "rolled_back"
	RecommendationCancelled    RecommendationStatus = "cancelled"
)

// Recommendation is a change an agent proposes, as it is submitted in a
// CoordinateRequest and as the orchestrator shows it.
type Recommendation struct {
	// ID is chosen by the submitter and unique within its batch. Agents
	// reuse their ids from batch to batch, so it names a recommendation
	// only within its coordination: RecordID names it in the orchestrator.
	ID string `json:"id"`
	// RecordID is the orchestrator's id of the stored recommendation,
	// unique across batches: GET /coordination/recommendations/{id}, and
	// the recommendation_id of its approval and plan, use it. Set by the
	// orchestrator; a submitted one is ignored. An addition.
	RecordID string `json:"record_id,omitempty"`
	// CoordinationID is the id of the coordination (the POST
	// /coordination/coordinate answer) the recommendation came in. Set by
	// the orchestrator. An addition.
	CoordinationID string `json:"coordination_id,omitempty"`
	// AgentID is the agent that made the recommendation.
	AgentID string `json:"agent_id,omitempty"`
	// AgentType is the type of the agents that carry the recommendation's
	// plan out.
	AgentType AgentType `json:"agent_type"`
	// CustomerID is the customer the change is for; empty in a request
	// means the request's.
	CustomerID  string `json:"customer_id,omitempty"`
	Type        string `json:"type,omitempty"`
	Title       string `json:"title,omitempty"`
	Description string `json:"description,omitempty"`
	// Action is what to do (scale_down, migrate_to_spot, ...): it chooses
	// the plan's steps and the task types agents are sent.
	Action    string    `json:"action"`
	RiskLevel RiskLevel `json:"risk_level"`
	// EstimatedSavings ranks the recommendation in conflicts: more first.
	EstimatedSavings float64 `json:"estimated_savings"`
	// EstimatedImpact is any JSON value, kept as given.
	EstimatedImpact json.RawMessage `json:"estimated_impact,omitempty"`
	// AffectedResources name what the change touches (instance ids, ...):
	// two recommendations sharing one conflict.
	AffectedResources []string `json:"affected_resources,omitempty"`
	// Parameters is a JSON object passed to the agents as is.
	Parameters json.RawMessage `json:"parameters,omitempty"`
	// Dependencies are ids of recommendations of the same batch that must
	// be applied first.
	Dependencies []string `json:"dependencies,omitempty"`
	// Priority ranks the recommendation in conflicts: higher first.
	Priority int `json:"priority"`
	// Confidence is from 0 to 1; it ranks after savings.
	Confidence float64 `json:"confidence"`
	// CreatedAt is when the orchestrator received the recommendation.
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Status is set by the orchestrator; a submitted one is ignored.
	Status RecommendationStatus `json:"status,omitempty"`
	// Metadata is a JSON object kept as given.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// SupersededBy is the id of the recommendation that won the conflict
	// this one lost (status superseded). An addition.
	SupersededBy string `json:"superseded_by,omitempty"`
}

// ConflictType is why two or more recommendations cannot all be applied.
type ConflictType string

// Conflict types.
const (
	// ConflictResource: two recommendations touch the same resource.
	ConflictResource ConflictType = "resource"
	// ConflictAction: two recommendations touching the same resource do
	// contradictory things (scale_up and scale_down).
	ConflictAction ConflictType = "action"
	// ConflictDependency: recommendations depend on each other in a
	// cycle, or one depends on a recommendation that will not be applied.
	ConflictDependency ConflictType = "dependency"
)

// Conflict is a set of recommendations that cannot all be applied, and
// how the orchestrator resolved it.
type Conflict struct {
	ID   string       `json:"id"`
	Type ConflictType `json:"type"`
	// RecommendationIDs are the recommendations in conflict, sorted.
	RecommendationIDs []string `json:"recommendation_ids"`
	Description       string   `json:"description"`
	// Severity is the risk level of the riskiest recommendation involved.
	Severity RiskLevel `json:"severity"`
	Resolved bool      `json:"resolved"`
	// Resolution says what became of each recommendation involved.
	Resolution string    `json:"resolution,omitempty"`
	DetectedAt time.Time `json:"detected_at"`
}

// ApprovalStatus is where an approval is in its life. Only pending
// approvals can be decided.
type ApprovalStatus string

// Approval statuses.
const (
	ApprovalPending  ApprovalStatus = "pending"
	ApprovalApproved ApprovalStatus = "approved"
	ApprovalRejected ApprovalStatus = "rejected"
	ApprovalExpired  ApprovalStatus = "expired"
)

// ApprovalVote is one person's approval of an Approval. An addition.
type ApprovalVote struct {
	UserID string    `json:"user_id"`
	At     time.Time `json:"at"`
}

// Approval is a person's decision a recommendation waits for.
type Approval struct {
	ID string `json:"id"`
	// RecommendationID is the RecordID of the recommendation approved.
	RecommendationID string         `json:"recommendation_id"`
	CustomerID       string         `json:"customer_id"`
	RiskLevel        RiskLevel      `json:"risk_level"`
	Status           ApprovalStatus `json:"status"`
	// RequestedBy is who asked for the change; they cannot decide it.
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
	// ApprovedBy and ApprovedAt are set when the approval is complete:
	// the approver who completed it.
	ApprovedBy      string     `json:"approved_by,omitempty"`
	ApprovedAt      *time.Time `json:"approved_at,omitempty"`
	RejectedBy      string     `json:"rejected_by,omitempty"`
	RejectedAt      *time.Time `json:"rejected_at,omitempty"`
	RejectionReason string     `json:"rejection_reason,omitempty"`
	// ExpiresAt is when a pending approval expires.
	ExpiresAt time.Time `json:"expires_at"`
	// RequiredApprovals is how many different people must approve: 2 for
	// critical risk, else 1. An addition.
	RequiredApprovals int `json:"required_approvals"`
	// Approvals are the approvals given so far, in order. An addition.
	Approvals []ApprovalVote `json:"approvals,omitempty"`
}

// PlanStatus is where an execution plan is in its life.
type PlanStatus string

// Plan statuses: pending -> running -> completed; a failed critical step
// takes a running plan to rolling_back -> rolled_back or rollback_failed
// when it completed a step to undo, else to failed; pending or running ->
// cancelled.
const (
	PlanPending        PlanStatus = "pending"
	PlanRunning        PlanStatus = "running"
	PlanCompleted      PlanStatus = "completed"
	PlanFailed         PlanStatus = "failed"
	PlanRollingBack    PlanStatus = "rolling_back"
	PlanRolledBack     PlanStatus = "rolled_back"
	PlanRollbackFailed PlanStatus = "rollback_failed"
	PlanCancelled      PlanStatus = "cancelled"
)

// Terminal reports whether s is final: completed, failed (nothing was
// left to undo), rolled_back, rollback_failed or cancelled.
func (s PlanStatus) Terminal() bool {
	switch s {
	case PlanCompleted, PlanFailed, PlanRolledBack, PlanRollbackFailed, PlanCancelled:
		return true
	}
	return false
}

// StepStatus is where a plan step is in its life.
type StepStatus string

// Step statuses.
const (
	StepPending    StepStatus = "pending"
	StepRunning    StepStatus = "running"
	StepCompleted  StepStatus = "completed"
	StepFailed     StepStatus = "failed"
	StepSkipped    StepStatus = "skipped" // the plan ended before the step ran
	StepRolledBack StepStatus = "rolled_back"
	// StepCancelled: the plan was cancelled while the step ran; its task
	// was cancelled. An addition.
	StepCancelled StepStatus = "cancelled"
)

// PlanStep is one step of a plan: a task sent to an agent.
type PlanStep struct {
	ID string `json:"id"`
	// Action is the task type of the step's task.
	Action string `json:"action"`
	// AgentID is the agent that ran the step; empty before it ran.
	AgentID string `json:"agent_id,omitempty"`
	// AgentType is the type of agent the step's task goes to: the
	// recommendation's. An addition.
	AgentType AgentType `json:"agent_type"`
	// Parameters is a JSON object: the recommendation's parameters.
	Parameters json.RawMessage `json:"parameters,omitempty"`
	// Critical: when the step fails, the plan fails and is rolled back.
	// A step that is not critical may fail and the plan goes on.
	Critical bool `json:"critical"`
	// Reversible: once completed, a rollback undoes the step with a
	// rollback_<action> task.
	Reversible bool       `json:"reversible"`
	Status     StepStatus `json:"status"`
	// Result is the agent's result, any JSON value.
	Result      json.RawMessage `json:"result,omitempty"`
	Error       string          `json:"error,omitempty"`
	StartedAt   *time.Time      `json:"started_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	DurationMS  int64           `json:"duration_ms,omitempty"`
	// RollbackOf is, for a rollback step, the id of the step it undoes.
	// An addition.
	RollbackOf string `json:"rollback_of,omitempty"`
	// TaskID is the id of the step's task (GET /tasks/{id}), set when
	// the step starts. It is the step's id: a step resumed by another
	// replica is the same task, never a second one. An addition.
	TaskID string `json:"task_id,omitempty"`
}

// Plan is how an approved recommendation is carried out: its steps, run
// in order.
type Plan struct {
	ID string `json:"id"`
	// RecommendationID is the RecordID of the recommendation carried out.
	RecommendationID string     `json:"recommendation_id"`
	CustomerID       string     `json:"customer_id"`
	Steps            []PlanStep `json:"steps"`
	Status           PlanStatus `json:"status"`
	// CurrentStep is the index in Steps of the step running or next to
	// run.
	CurrentStep     int        `json:"current_step"`
	CreatedAt       time.Time  `json:"created_at"`
	StartedAt       *time.Time `json:"started_at,omitempty"`
	CompletedAt     *time.Time `json:"completed_at,omitempty"`
	RolledBackAt    *time.Time `json:"rolled_back_at,omitempty"`
	TotalDurationMS int64      `json:"total_duration_ms,omitempty"`
	// WaitingFor says what a running or rolling back plan waits for: a
	// dependency whose plan has not completed or an affected resource
	// another plan holds (before its first step), or an agent of its type
	// to send a step to. Empty while it runs. An addition.
	WaitingFor string `json:"waiting_for,omitempty"`
}

// CoordinateRequest is the body of POST /coordination/coordinate: a batch
// of recommendations for one customer.
type CoordinateRequest struct {
	CustomerID      string           `json:"customer_id"`
	Recommendations []Recommendation `json:"recommendations"`
	// AutoApprove lets recommendations at or below the orchestrator's
	// auto-approval risk pass without a person; false means every kept
	// recommendation waits for one.
	AutoApprove bool `json:"auto_approve"`
	// ExecuteNow runs the plans of auto-approved recommendations at once.
	ExecuteNow bool `json:"execute_now"`
}

// CoordinateResponse is the 200 answer of POST /coordination/coordinate.
type CoordinateResponse struct {
	ID                   string `json:"id"`
	TotalRecommendations int    `json:"total_recommendations"`
	ConflictsDetected    int    `json:"conflicts_detected"`
	ConflictsResolved    int    `json:"conflicts_resolved"`
	RecommendationsKept  int    `json:"recommendations_kept"`
	ApprovalsRequired    int    `json:"approvals_required"`
	// AutoApproved counts the recommendations that needed no person.
	AutoApproved    int              `json:"auto_approved"`
	Conflicts       []Conflict       `json:"conflicts"`
	Recommendations []Recommendation `json:"recommendations"`
	Approvals       []Approval       `json:"approvals"`
	ExecutionPlans  []Plan           `json:"execution_plans"`
	CreatedAt       time.Time        `json:"created_at"`
}

// EventKind names a change of state recorded in the coordination audit
// log.
type EventKind string

// Event kinds. Each names what changed and how; SubjectID names the
// record: a coordination, a recommendation's RecordID, an approval or a
// plan.
const (
	EventCoordinationCreated        EventKind = "coordination.created"
	EventRecommendationSuperseded   EventKind = "recommendation.superseded"
	EventRecommendationRejected     EventKind = "recommendation.rejected"
	EventRecommendationAutoApproved EventKind = "recommendation.auto_approved"
	EventApprovalRequested          EventKind = "approval.requested"
	// EventApprovalVoted: a first approver of a change that needs two.
	EventApprovalVoted    EventKind = "approval.voted"
	EventApprovalApproved EventKind = "approval.approved"
	EventApprovalRejected EventKind = "approval.rejected"
	EventApprovalExpired  EventKind = "approval.expired"
	EventPlanCreated      EventKind = "plan.created"
	EventPlanCancelled    EventKind = "plan.cancelled"
	// The execution of a plan: started by an operator (or execute_now),
	// then each step's start and outcome, and the plan's end. The
	// executor's events have no actor.
	EventPlanStarted        EventKind = "plan.started"
	EventStepStarted        EventKind = "plan.step_started"
	EventStepCompleted      EventKind = "plan.step_completed"
	EventStepFailed         EventKind = "plan.step_failed"
	EventPlanCompleted      EventKind = "plan.completed"
	EventPlanFailed         EventKind = "plan.failed"
	EventPlanRollingBack    EventKind = "plan.rolling_back"
	EventPlanRolledBack     EventKind = "plan.rolled_back"
	EventPlanRollbackFailed EventKind = "plan.rollback_failed"
)

// Event is one entry of the append-only coordination audit log
// (GET /coordination/events): who changed what, when, in which request.
// An addition.
type Event struct {
	// Seq orders the log: every event has a greater Seq than those
	// appended before it. Pass the last one seen as since to read on.
	Seq        uint64    `json:"seq"`
	At         time.Time `json:"at"`
	CustomerID string    `json:"customer_id"`
	Kind       EventKind `json:"kind"`
	// SubjectID is the id of the record that changed.
	SubjectID string `json:"subject_id"`
	// Actor is who made the change: an operator's name, the submitter of
	// a batch, or empty for the orchestrator itself (the expiry sweep).
	Actor string `json:"actor,omitempty"`
	// RequestID is the X-Request-ID of the request that made the change.
	RequestID string `json:"request_id,omitempty"`
	// Details is a JSON object saying more (a rejection's reason, the
	// winner of a conflict).
	Details json.RawMessage `json:"details,omitempty"`
}
