package cluster

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// An agent registered through one replica is listed, routable and
// heartbeats through the other; tasks submitted to both are each delivered
// and completed exactly once.
func TestTwoReplicasShareAgentsAndTasks(t *testing.T) {
	db := pgtest.NewDatabase(t)
	agent := newFakeAgent(t)
	a := startReplica(t, "replica A", db)
	b := startReplica(t, "replica B", db)
	hc := newClient(t)
	apiA, apiB := a.api(t, hc), b.api(t, hc)
	ctx := context.Background()

	id := register(t, apiA, agent.registration("shared-agent", orchestrator.AgentTypeCost))
	listed, err := apiB.ListAgents(ctx, "")
	if err != nil {
		t.Fatalf("GET /agents through B: %v", err)
	}
	if len(listed) != 1 || listed[0].ID != id || listed[0].Status != orchestrator.AgentHealthy {
		t.Fatalf("GET /agents through B = %+v, want just %s, healthy", listed, id)
	}
	if _, err := apiB.Heartbeat(ctx, id, orchestrator.HeartbeatRequest{Metadata: map[string]any{"via": "B"}}); err != nil {
		t.Fatalf("heartbeat through B of the agent registered through A: %v", err)
	}
	got, err := apiA.GetAgent(ctx, id)
	if err != nil {
		t.Fatalf("GET /agents/%s through A: %v", id, err)
	}
	if got.Metadata["via"] != "B" {
		t.Errorf("A shows metadata %v, want the heartbeat's through B (via: B)", got.Metadata)
	}

	// Submitted alternately, read back through the other replica.
	const tasks = 40
	ids := make([]string, tasks)
	var wg sync.WaitGroup
	errs := make(chan error, tasks)
	for i := range tasks {
		api := apiA
		if i%2 == 1 {
			api = apiB
		}
		wg.Go(func() {
			accepted, err := api.SubmitTask(ctx, workRequest(orchestrator.AgentTypeCost))
			if err != nil {
				errs <- err
				return
			}
			ids[i] = accepted.TaskID
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("POST /tasks: %v", err)
	}
	for i, taskID := range ids {
		other := apiB
		if i%2 == 1 {
			other = apiA
		}
		task := waitStatus(t, other, taskID, orchestrator.TaskCompleted, 60*time.Second)
		if task.AgentID != id {
			t.Errorf("task %s completed by agent %q, want %s", taskID, task.AgentID, id)
		}
	}
	for _, taskID := range ids {
		if delivered, answered := agent.counts(taskID); delivered != 1 || answered != 1 {
			t.Errorf("task %s delivered %d times, answered %d: want exactly once", taskID, delivered, answered)
		}
	}
	delivered, answered, redelivered := agent.totals()
	t.Logf("%d tasks through two replicas: %d deliveries, %d answered, %d delivered more than once", tasks, delivered, answered, redelivered)
	if delivered != tasks {
		t.Errorf("the agent got %d deliveries, want %d (one per task)", delivered, tasks)
	}
}

// A replica killed with SIGKILL while it delivers leaves no task stuck:
// when its lease runs out, the other takes the task over and delivers it
// again with the same task_id, and it ends completed once.
func TestKilledReplicaDeliveryIsTakenOver(t *testing.T) {
	db := pgtest.NewDatabase(t)
	agent := newFakeAgent(t)
	hc := newClient(t)
	// A alone, so that A is the one delivering.
	a := startReplica(t, "replica A", db)
	apiA := a.api(t, hc)
	id := register(t, apiA, agent.registration("takeover-agent", orchestrator.AgentTypeCost))

	agent.hold()
	accepted := submit(t, apiA)
	first := agent.nextHeld(t)
	if first.taskID != accepted.TaskID {
		t.Fatalf("the agent got task %s, want %s", first.taskID, accepted.TaskID)
	}
	b := startReplica(t, "replica B", db)
	apiB := b.api(t, hc)
	agent.answerAtOnce() // the held delivery stays held: only A's death ends it

	a.kill(t)
	killed := time.Now()
	select {
	case <-first.aborted:
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery of the killed replica was still open 10s after SIGKILL")
	}

	task := waitStatus(t, apiB, accepted.TaskID, orchestrator.TaskCompleted, leaseDuration+60*time.Second)
	t.Logf("B completed task %s %s after A's SIGKILL (lease %s)", accepted.TaskID, time.Since(killed).Round(time.Millisecond), leaseDuration)
	if task.AgentID != id {
		t.Errorf("task completed by agent %q, want %s", task.AgentID, id)
	}
	delivered, answered := agent.counts(accepted.TaskID)
	t.Logf("task %s: %d deliveries, %d answered", accepted.TaskID, delivered, answered)
	if delivered != 2 || answered != 1 {
		t.Errorf("task %s delivered %d times and answered %d, want twice (A's, cut by the kill, and B's) and answered once",
			accepted.TaskID, delivered, answered)
	}
	// Completed is final: a later read still says so.
	again, err := apiB.GetTask(context.Background(), accepted.TaskID)
	if err != nil || again.Status != orchestrator.TaskCompleted || !slices.Equal(again.Result, task.Result) {
		t.Errorf("reading task %s again: %+v, %v; want the same completed task", accepted.TaskID, again, err)
	}
}

// A cancel through B of a task that A is delivering aborts A's call to the
// agent, and the task is not delivered again.
func TestCancelThroughOtherReplicaAbortsDelivery(t *testing.T) {
	db := pgtest.NewDatabase(t)
	agent := newFakeAgent(t)
	hc := newClient(t)
	a := startReplica(t, "replica A", db)
	apiA := a.api(t, hc)
	register(t, apiA, agent.registration("cancel-agent", orchestrator.AgentTypeCost))

	agent.hold()
	accepted := submit(t, apiA)
	held := agent.nextHeld(t)
	b := startReplica(t, "replica B", db)

	apiB := b.api(t, hc)
	cancelled := time.Now()
	answer, err := apiB.CancelTask(context.Background(), accepted.TaskID)
	if err != nil || answer.Status != orchestrator.TaskCancelled {
		t.Fatalf("DELETE /tasks/%s through B = %+v, %v; want 200 with the task cancelled", accepted.TaskID, answer, err)
	}
	select {
	case <-held.aborted:
		t.Logf("A's delivery was aborted %s after the cancel through B", time.Since(cancelled).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("A's delivery was still open 10s after the cancel through B")
	}
	task := waitStatus(t, apiA, accepted.TaskID, orchestrator.TaskCancelled, 30*time.Second)
	if task.CompletedAt == nil {
		t.Errorf("cancelled task has no completed_at: %+v", task)
	}

	// No replica delivers a cancelled task again, even once A's claim
	// would have expired.
	agent.answerAtOnce()
	time.Sleep(leaseDuration + time.Second)
	if delivered, answered := agent.counts(accepted.TaskID); delivered != 1 || answered != 0 {
		t.Errorf("cancelled task %s delivered %d times and answered %d, want once and never answered", accepted.TaskID, delivered, answered)
	}
	again, err := apiB.GetTask(context.Background(), accepted.TaskID)
	if err != nil || again.Status != orchestrator.TaskCancelled {
		t.Errorf("task %s after a lease: %+v, %v; want still cancelled", accepted.TaskID, again, err)
	}
}
