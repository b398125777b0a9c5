// Package coordination is the domain core of recommendation coordination:
// agents recommend changes, and before any is applied the orchestrator
// detects and resolves the conflicts between them, asks people to approve
// the risky ones, and turns the approved ones into plans of steps that
// agents carry out, with rollback.
//
// Its core is pure: functions over explicit inputs, no HTTP, no stores,
// no goroutines, no clock (now is always passed in) and no randomness
// (ids come from a newID function the caller passes). The Engine (the
// stores, the expiry sweep, the executor) and the API routes are built
// on it. It works on the wire types of
// pkg/orchestrator (Recommendation, Conflict, Approval, Plan), which are
// the records the stores keep; a richer domain type can come with the
// stores if they need one.
//
// # The path of a batch
//
// Validate checks a CoordinateRequest and names the first bad field with
// its index (recommendations[2].risk_level) in a FieldError. Detect finds
// the conflicts of the batch; Resolve decides which recommendations are
// kept; NeedsApproval and NewApproval give each kept one its approval, or
// none; Decide applies a person's decision; NewPlan turns an approved
// recommendation into a plan, which Transition moves through its states
// and RollbackSteps undoes.
//
// # Conflicts
//
// Two recommendations sharing an affected resource conflict (type
// resource); when their actions also contradict each other in the
// configured table, in either order, the conflict is of type action
// instead: one conflict per pair, the more specific. Contradictory
// actions on different resources do not conflict. A direct dependency
// between two recommendations exempts their shared resources: it orders
// them (a snapshot before the migration of the same instance), and their
// plans run in that order. Recommendations depending on each other in a
// cycle of any length, a recommendation depending on itself included,
// form one dependency conflict per cycle (Tarjan's strongly connected
// components).
//
// # Resolution
//
// Recommendations are ranked by priority, then estimated savings, then
// confidence (all higher first), then risk (lower first), then id (so no
// two tie). Taken in that order, each is kept only if it conflicts with
// none already kept: a recommendation that lost never knocks out a
// third. A loser becomes superseded, superseded_by naming the best-ranked
// kept recommendation it conflicts with. Every member of a dependency
// cycle is rejected: no order satisfies its dependencies, and keeping one
// member would apply it before a change its author said must come first.
// A recommendation whose dependency is not kept cannot be kept either: it
// is rejected, and a dependency conflict records why. Dependencies bend
// the order: a recommendation is decided after its dependencies, each
// taken at the rank of the best-ranked recommendation waiting for it, so
// a modest prerequisite of an important change is not beaten by the
// changes the important one outranks. The answer does not depend on the
// order of the batch, and costs O(n^2) for n recommendations (pairs of a
// shared resource) plus the dependencies and resources.
//
// # Approvals
//
// Without auto_approve every kept recommendation waits for a person; with
// it, only those above COORDINATION_AUTO_APPROVE_MAX_RISK do. An approval
// expires after the time configured for its risk. A critical change needs
// two different approvers: the first approval is recorded in approvals
// and the status stays pending; the same person approving again is
// refused. Anyone but the requester may reject, which ends the approval;
// the requester may decide nothing (403). Deciding a decided approval is
// refused (409), as is deciding one past its expiry (410) even before the
// sweep has marked it.
//
// # Plans
//
// A plan's steps come from the template of the recommendation's action
// (COORDINATION_PLAN_TEMPLATES); any other action is one step of that
// action. Each step becomes a dispatcher task whose task_type is the
// step's action, sent to an agent of the recommendation's agent_type. By
// default validate_* steps are critical and irreversible and every other
// step critical and reversible; a template may say otherwise per step.
// A failed critical step ends the forward run; RollbackSteps then gives
// the completed reversible steps in reverse order, each as
// rollback_<action>. A plan moves pending -> running -> completed, or
// running -> rolling_back -> rolled_back | rollback_failed, or running ->
// failed when nothing was left to undo; pending and running plans may be
// cancelled. Completed, failed, rolled_back, rollback_failed and
// cancelled are final.
//
// # Execution
//
// The Engine's executor (executor.go) runs the plans that are running
// or rolling back through a Tasks dispatcher, each under a run lease in
// the Store, so that across replicas sharing a store each plan is run by
// one at a time, and a dead replica's plans are taken over when their
// leases lapse. Everything it needs to resume is in the plan: the
// current step, and that step's task, named by the step's id.
package coordination
