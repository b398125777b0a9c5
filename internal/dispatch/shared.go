package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Queue is the task queue several replicas share (PostgreSQL): the
// records, the waiting tasks and who delivers which. Every method is
// atomic and safe to call from any replica at any time; the state that
// decides scheduling (a task's status, its attempts and the agents it
// tried, the leases) lives in the Queue, not in a replica's memory. The
// Cluster runs on top of it. Every error that means "the database cannot
// be reached now" wraps storeerr.ErrUnavailable.
type Queue interface {
	Store

	// Enqueue stores t as pending (like Create) unless maxPending tasks
	// already wait across the cluster (ErrQueueFull), counted with the
	// insert. It wakes no replica: the one that enqueues claims at once,
	// and calls Wake when the task is left waiting.
	//
	// With direct.Agents, Enqueue also claims t, in the same round trip,
	// when no other claim runs and no other task waits that could start
	// now (so that t passes none): for the least loaded of direct.Agents with fewer than
	// direct.Limit tasks in flight across the cluster, the first in
	// their order among equals, leased to direct.Owner. claimed is then
	// t's claim; otherwise nil, and t waits for Claim.
	Enqueue(ctx context.Context, t Task, maxPending int, direct DirectClaim) (stored Task, claimed *Claimed, err error)

	// Wake tells every replica (Notifications.Wake) that tasks wait
	// which a change of the agents could start.
	Wake(ctx context.Context) error

	// Claim assigns waiting tasks (pending, or retrying past their
	// backoff) to agents, best first (priority, then age), under a lock
	// that one claim holds at a time across the cluster. It offers each
	// task to req.Choose with every agent's cluster-wide count of tasks
	// in flight; a task Choose cannot place blocks its route (agent type,
	// task type, pinned agent) for the rest of the claim. A claimed task
	// is dispatched to the chosen agent, one more attempt, leased to
	// req.Owner for req.Lease.
	Claim(ctx context.Context, req ClaimRequest) (ClaimResult, error)

	// Finish records the outcome of l's attempt: status is terminal, and
	// wakes the replicas when tasks wait (an agent's slot is free). It
	// changes nothing and returns ErrFinished (with the task) when the
	// task is already terminal, ErrLeaseLost when l is no longer the task's
	// attempt (another replica took it over).
	Finish(ctx context.Context, l Lease, status Status, result json.RawMessage, msg string) (Task, error)

	// Retry puts l's task back to waiting (retrying) after a failed
	// attempt, not to be claimed before delay has passed; its queue
	// deadline counts from then. Errors as Finish's.
	Retry(ctx context.Context, l Lease, msg string, delay time.Duration) (Task, error)

	// Release puts back to waiting the tasks of leases whose deliveries
	// this replica gave up without an outcome (it is stopping); the
	// attempt does not count. It returns the IDs it released.
	Release(ctx context.Context, leases []Lease) ([]string, error)

	// Renew extends by lease the leases owner holds on the tasks ids and
	// returns the IDs it renewed: an ID missing is no longer owner's to
	// deliver (cancelled, finished, or taken over).
	Renew(ctx context.Context, owner string, ids []string, lease time.Duration) ([]string, error)

	// Rescue takes over the dispatched tasks whose lease lapsed (their
	// replica died): each goes back to waiting as after a failed attempt,
	// or, with no retries left, ends failed; msg is the error recorded.
	// It returns the tasks it changed.
	Rescue(ctx context.Context, msg string) ([]Task, error)

	// ExpireWaiting ends as timeout the waiting tasks past their queue
	// deadline, and returns them.
	ExpireWaiting(ctx context.Context) ([]Task, error)

	// Cancel ends task id as cancelled with msg, telling the replica
	// delivering it (Notifications.Cancelled). ErrFinished (with the task)
	// when it had already finished.
	Cancel(ctx context.Context, id, msg string) (Task, error)

	// Waiting counts the waiting tasks across the cluster.
	Waiting(ctx context.Context) (int, error)

	// Listen delivers the cluster's notifications to n until ctx ends,
	// reconnecting by itself; after each (re)connection, once it hears
	// every notification, it calls n.Connected (those sent meanwhile were
	// lost).
	Listen(ctx context.Context, n Notifications) error
}

// ErrLeaseLost means the attempt is no longer the task's (another replica
// took it over after the lease lapsed); its outcome is not recorded.
var ErrLeaseLost = errors.New("task lease lost to another replica")

// Lease names one attempt of a task: the replica that delivers it and the
// attempt's number.
type Lease struct {
	ID      string
	Owner   string
	Attempt int
}

// Notifications are what a replica hears from the others.
type Notifications struct {
	// Wake: there may be new work (a task left waiting or retried, a slot
	// freed while tasks wait).
	Wake func()
	// Cancelled: task id was cancelled; stop delivering it.
	Cancelled func(id string)
	// Connected: the listener is (again) hearing everything; what was
	// sent while it was away is lost.
	Connected func()
	// Error: the listening connection failed; it reconnects.
	Error func(error)
}

// Claimable is a waiting task offered to ClaimRequest.Choose.
type Claimable struct {
	Task
	// Attempts is how many attempts the task had.
	Attempts int
	// Tried are the agents those attempts went to.
	Tried []string
}

// ClaimRequest is what a claim needs.
type ClaimRequest struct {
	Owner string
	Lease time.Duration
	// Limit bounds the tasks claimed.
	Limit int
	// Choose returns the agent to start t on, given each agent's tasks in
	// flight across the cluster (including this claim's), or false when
	// no agent can take it now.
	Choose func(ctx context.Context, t Claimable, inFlight map[string]int) (agentID string, ok bool, err error)
}

// DirectClaim is what Enqueue needs to claim the task it stores.
type DirectClaim struct {
	Owner string
	Lease time.Duration
	// Agents are the task's candidates, in the order to prefer among
	// equally loaded ones; none: no claim.
	Agents []string
	// Limit is the tasks in flight an agent may have (TASK_AGENT_CONCURRENCY).
	Limit int
}

// Claimed is a task a claim dispatched, and its lease.
type Claimed struct {
	Task  Task
	Lease Lease
}

// ClaimResult is what a claim did, and when the queue next needs a look.
type ClaimResult struct {
	Claimed []Claimed
	// Waiting reports whether waiting tasks are left (blocked ones, or
	// retries in their backoff).
	Waiting bool
	// Next is how long until the earliest retry backoff or queue deadline
	// of a waiting task ends; zero when none.
	Next time.Duration
}
