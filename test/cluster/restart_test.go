package cluster

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// pool is the set of replicas a load balancer sends to: a replica leaves
// it before its SIGTERM, as a pod leaves its Service's endpoints.
type pool struct {
	mu       sync.Mutex
	replicas []*replica
	next     int
}

func (p *pool) pick() *replica {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return p.replicas[p.next%len(p.replicas)]
}

func (p *pool) remove(r *replica) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.replicas {
		if x == r {
			p.replicas = append(p.replicas[:i], p.replicas[i+1:]...)
			return
		}
	}
}

func (p *pool) add(r *replica) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replicas = append(p.replicas, r)
}

// Every agent and every unfinished task survives restarting both
// replicas, at once and then one by one; heartbeats keep getting 200
// through the rolling restart; the tasks that waited are delivered after
// it, each once.
func TestRestartedReplicasFindAgentsAndTasks(t *testing.T) {
	db := pgtest.NewDatabase(t)
	worker, other := newFakeAgent(t), newFakeAgent(t)
	// One task at a time per agent, so that the rest wait in the queue; a
	// second of serving after SIGTERM, as behind a Service, so that a
	// heartbeat sent just before a replica left the pool is answered.
	env := []string{"TASK_AGENT_CONCURRENCY=1", "SHUTDOWN_DELAY=1s"}
	a := startReplica(t, "replica A", db, env...)
	b := startReplica(t, "replica B", db, env...)
	hc := newClient(t)
	apiA, apiB := a.api(t, hc), b.api(t, hc)
	ctx := context.Background()

	workerID := register(t, apiA, worker.registration("restart-worker", orchestrator.AgentTypeCost))
	otherID := register(t, apiB, other.registration("restart-other", orchestrator.AgentTypePerformance))

	// The worker holds the first task; four more wait for its one slot.
	worker.hold()
	first := submit(t, apiA)
	held := worker.nextHeld(t)
	if held.taskID != first.TaskID {
		t.Fatalf("the worker got task %s, want %s", held.taskID, first.TaskID)
	}
	var waiting []string
	for i := range 4 {
		api := apiA
		if i%2 == 1 {
			api = apiB
		}
		accepted := submit(t, api)
		if accepted.Status != orchestrator.TaskPending {
			t.Fatalf("task %d submitted while the worker's slot is taken is %s, want pending", i, accepted.Status)
		}
		waiting = append(waiting, accepted.TaskID)
	}
	// Degraded, the worker gets no new task: once it answers the first,
	// the four stay pending through every restart.
	if _, err := apiB.Heartbeat(ctx, workerID, orchestrator.HeartbeatRequest{Status: orchestrator.AgentDegraded}); err != nil {
		t.Fatalf("degraded heartbeat: %v", err)
	}
	worker.releaseHeld()
	waitStatus(t, apiB, first.TaskID, orchestrator.TaskCompleted, 30*time.Second)

	// Both replicas stop, then two new ones start: nothing is left in any
	// process's memory.
	var wg sync.WaitGroup
	for _, r := range []*replica{a, b} {
		wg.Go(func() {
			if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Errorf("SIGTERM to %s: %v", r.name, err)
			}
			<-r.exited
		})
	}
	wg.Wait()
	for _, r := range []*replica{a, b} {
		if code := r.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("%s exited %d after SIGTERM, want 0", r.name, code)
		}
	}
	t.Log("both replicas stopped")
	a2 := startReplica(t, "replica A2", db, env...)
	b2 := startReplica(t, "replica B2", db, env...)
	for _, r := range []*replica{a2, b2} {
		api := r.api(t, hc)
		checkAgents(t, api, r.name, map[string]orchestrator.AgentStatus{workerID: orchestrator.AgentDegraded, otherID: orchestrator.AgentHealthy})
		if task, err := api.GetTask(ctx, first.TaskID); err != nil || task.Status != orchestrator.TaskCompleted {
			t.Errorf("task %s through %s: %+v, %v; want completed", first.TaskID, r.name, task, err)
		}
		for _, taskID := range waiting {
			if task, err := api.GetTask(ctx, taskID); err != nil || task.Status != orchestrator.TaskPending {
				t.Errorf("waiting task %s through %s: %+v, %v; want pending", taskID, r.name, task, err)
			}
		}
	}

	// A rolling restart under heartbeats: A2 leaves the pool and stops
	// while B2 serves, A3 joins; then B2 while A3 serves, B3 joins. Every
	// heartbeat gets 200.
	lb := &pool{replicas: []*replica{a2, b2}}
	var mu sync.Mutex
	heartbeats := map[string]int{}
	var failures []string
	stop := make(chan struct{})
	var load sync.WaitGroup
	for _, hb := range []struct {
		id     string
		status orchestrator.AgentStatus
	}{{workerID, orchestrator.AgentDegraded}, {otherID, orchestrator.AgentHealthy}} {
		load.Go(func() {
			for {
				r := lb.pick()
				res := call(hc, http.MethodPost, r.base+"/agents/"+hb.id+"/heartbeat", orchestrator.HeartbeatRequest{Status: hb.status})
				mu.Lock()
				heartbeats[r.name]++
				if res.err != nil || res.status != http.StatusOK {
					failures = append(failures, fmt.Sprintf("heartbeat of %s through %s: %s", hb.id, r.name, res))
				}
				mu.Unlock()
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	stopLoad := sync.OnceFunc(func() { close(stop); load.Wait() })
	t.Cleanup(stopLoad)
	roll := func(old *replica, name string) *replica {
		lb.remove(old)
		old.terminate(t)
		r := startReplica(t, name, db, env...)
		lb.add(r)
		return r
	}
	servedBy := func(names ...string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, name := range names {
				if heartbeats[name] == 0 {
					return false
				}
			}
			return true
		}
	}
	eventually.True(t, 30*time.Second, "heartbeats through A2 and B2", servedBy(a2.name, b2.name))
	a3 := roll(a2, "replica A3")
	eventually.True(t, 30*time.Second, "heartbeats through A3", servedBy(a3.name))
	b3 := roll(b2, "replica B3")
	time.Sleep(500 * time.Millisecond) // heartbeats through both new replicas
	stopLoad()
	t.Logf("heartbeats through the rolling restart, by replica: %v", heartbeats)
	for _, f := range failures {
		t.Errorf("want 200: %s", f)
	}
	if heartbeats[a3.name] == 0 || heartbeats[b3.name] == 0 {
		t.Errorf("heartbeats by replica %v: want some through each new replica", heartbeats)
	}

	// Healthy again, the worker gets the four waiting tasks, each once.
	apiA3, apiB3 := a3.api(t, hc), b3.api(t, hc)
	checkAgents(t, apiA3, a3.name, map[string]orchestrator.AgentStatus{workerID: orchestrator.AgentDegraded, otherID: orchestrator.AgentHealthy})
	for _, taskID := range waiting {
		if delivered, _ := worker.counts(taskID); delivered != 0 {
			t.Errorf("task %s was delivered %d times to a degraded agent", taskID, delivered)
		}
	}
	if _, err := apiB3.Heartbeat(ctx, workerID, orchestrator.HeartbeatRequest{Status: orchestrator.AgentHealthy}); err != nil {
		t.Fatalf("healthy heartbeat: %v", err)
	}
	for i, taskID := range waiting {
		api := apiA3
		if i%2 == 1 {
			api = apiB3
		}
		waitStatus(t, api, taskID, orchestrator.TaskCompleted, 60*time.Second)
	}
	for _, taskID := range append([]string{first.TaskID}, waiting...) {
		if delivered, answered := worker.counts(taskID); delivered != 1 || answered != 1 {
			t.Errorf("task %s delivered %d times and answered %d, want once", taskID, delivered, answered)
		}
	}
	delivered, answered, redelivered := worker.totals()
	t.Logf("%d tasks across two restarts: %d deliveries, %d answered, %d delivered more than once",
		1+len(waiting), delivered, answered, redelivered)
}

// checkAgents checks that api lists exactly the agents want, in those
// statuses.
func checkAgents(t *testing.T, api *orchestrator.Client, via string, want map[string]orchestrator.AgentStatus) {
	t.Helper()
	agents, err := api.ListAgents(context.Background(), "")
	if err != nil {
		t.Fatalf("GET /agents through %s: %v", via, err)
	}
	got := map[string]orchestrator.AgentStatus{}
	for _, a := range agents {
		got[a.ID] = a.Status
	}
	if len(got) != len(want) {
		t.Errorf("GET /agents through %s = %v, want %v", via, got, want)
		return
	}
	for id, status := range want {
		if got[id] != status {
			t.Errorf("GET /agents through %s = %v, want %v", via, got, want)
			return
		}
	}
}
