package postgres_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/dispatch/dispatchtest"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/storeerr"
)

// migrated is a task store on url's database, with the schema applied.
func migrated(t testing.TB, url string) *postgres.TaskStore {
	t.Helper()
	return postgres.NewTaskStore(migratedPool(t, url))
}

func TestTaskStore(t *testing.T) {
	dispatchtest.TestStore(t, func(t *testing.T) dispatch.Store { return migrated(t, pgtest.NewDatabase(t)) })
}

// clusterQueues migrates a fresh database and opens a TaskStore over it
// for each replica, each with a pool of its own.
func clusterQueues(t *testing.T) func() dispatch.Queue {
	url := pgtest.NewDatabase(t)
	migrated(t, url)
	return func() dispatch.Queue { return postgres.NewTaskStore(open(t, url)) }
}

func TestTaskStoreCluster(t *testing.T) {
	dispatchtest.TestCluster(t, clusterQueues)
}

// A database restart in the middle of a stream of tasks (a fast shutdown:
// sessions are ended mid-transaction) loses no accepted task, refusals while it is down say "unavailable" (503, not 500), and
// both replicas recover by themselves: with an hour-long poll and one
// slot, the tasks that wait are started only by the notifications of
// freed slots, so the listeners must have reconnected.
func TestClusterSurvivesDatabaseRestart(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	url := srv.NewDatabase(t)
	migrated(t, url)
	cfg := dispatchtest.ClusterConfig
	cfg.AgentConcurrency, cfg.LeaseDuration = 1, 3*time.Second
	c := dispatchtest.NewCluster(t, func() dispatch.Queue { return postgres.NewTaskStore(open(t, url)) }, cfg, 2)
	c.StartAll()
	agent := c.AddAgent(0, "agent", func(w http.ResponseWriter, r *http.Request, id string) {
		time.Sleep(time.Millisecond)
		dispatchtest.Completed(w, r, id)
	})

	var (
		mu       sync.Mutex
		accepted []string
		refused  int
	)
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted), refused
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			task, err := c.Replicas[i%2].D.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"})
			mu.Lock()
			switch {
			case err == nil:
				accepted = append(accepted, task.ID)
			case errors.Is(err, storeerr.ErrUnavailable):
				refused++
			default:
				t.Errorf("Submit while the database restarts: %v, want success or storeerr.ErrUnavailable", err)
			}
			mu.Unlock()
		}
	})
	defer func() { close(stop); wg.Wait() }()

	waitUntil(t, "tasks accepted before the restart", func() bool { n, _ := counts(); return n >= 20 })
	srv.Stop()
	waitUntil(t, "submissions refused while the database is down", func() bool { _, r := counts(); return r >= 5 })
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	before, _ := counts()
	waitUntil(t, "tasks accepted after the restart", func() bool { n, _ := counts(); return n >= before+20 })
	close(stop)
	wg.Wait()
	stop = make(chan struct{})

	mu.Lock()
	ids := slices.Clone(accepted)
	mu.Unlock()
	for _, id := range ids {
		if got := c.Wait(0, id); got.Status != dispatch.StatusCompleted {
			t.Errorf("task %s accepted around the restart: %s %q", id, got.Status, got.Error)
		}
	}
	received := map[string]bool{}
	for _, id := range agent.Received() {
		received[id] = true
	}
	for _, id := range ids {
		if !received[id] {
			t.Errorf("task %s completed but never delivered", id)
		}
	}
	t.Logf("%d tasks accepted, %d refused while the database was down", len(ids), refused)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Enqueue's direct claim takes the task for the least loaded agent under
// the limit (the first of those given among equals), and only when no
// other task waits that could start now: a task submitted behind a
// waiting one never passes it.
func TestEnqueueClaimsDirectly(t *testing.T) {
	q := migrated(t, pgtest.NewDatabase(t))
	ctx := context.Background()
	n := 0
	enqueue := func(agents []string, limit int) (dispatch.Task, *dispatch.Claimed) {
		t.Helper()
		n++
		task := dispatch.Task{ID: "t" + strconv.Itoa(n), TaskType: "analyze", AgentType: "cost",
			Parameters: []byte(`{}`), TimeoutSeconds: 60, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
		stored, claimed, err := q.Enqueue(ctx, task, 100, dispatch.DirectClaim{Owner: "r1", Lease: time.Minute, Agents: agents, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		return stored, claimed
	}
	claimedBy := func(what string, c *dispatch.Claimed, agent string) {
		t.Helper()
		switch {
		case agent == "" && c != nil:
			t.Errorf("%s: claimed for %s, want left waiting", what, c.Task.AgentID)
		case agent == "":
		case c == nil:
			t.Errorf("%s: left waiting, want claimed for %s", what, agent)
		case c.Task.AgentID != agent || c.Task.Status != dispatch.StatusDispatched || c.Lease != (dispatch.Lease{ID: c.Task.ID, Owner: "r1", Attempt: 1}):
			t.Errorf("%s: %s for %s with lease %+v, want dispatched for %s, attempt 1 of r1", what, c.Task.Status, c.Task.AgentID, c.Lease, agent)
		}
	}

	_, c := enqueue(nil, 1)
	claimedBy("without agents", c, "")
	first, err := q.Claim(ctx, dispatch.ClaimRequest{Owner: "r1", Lease: time.Minute, Limit: 10,
		Choose: func(context.Context, dispatch.Claimable, map[string]int) (string, bool, error) { return "a", true, nil }})
	if err != nil || len(first.Claimed) != 1 {
		t.Fatalf("claiming the first task: %v, %d claimed", err, len(first.Claimed))
	}
	_, c = enqueue([]string{"a", "b"}, 2)
	claimedBy("a busy, b idle", c, "b") // least loaded, though a comes first
	_, c = enqueue([]string{"a", "b"}, 2)
	claimedBy("a and b equally loaded", c, "a") // the first among equals
	_, c = enqueue([]string{"a", "b"}, 2)
	claimedBy("a full", c, "b")
	waiting, c := enqueue([]string{"a", "b"}, 2)
	claimedBy("both full", c, "")
	_, c = enqueue([]string{"c"}, 2)
	claimedBy("behind a waiting task", c, "")
	if got, err := q.Get(ctx, waiting.ID); err != nil || got.Status != dispatch.StatusPending {
		t.Errorf("the task left waiting: %s, %v; want pending", got.Status, err)
	}
}
