package dispatchtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// QueueOpener returns a function that opens a Queue over one fresh, empty
// database, once per replica (each with its own connections).
type QueueOpener func(t *testing.T) func() dispatch.Queue

// TestCluster runs the multi-replica contract: two dispatch.Cluster
// replicas over one shared queue, each with its own registry over one
// shared agent store, and fake agents on loopback.
func TestCluster(t *testing.T, open QueueOpener) {
	tests := []struct {
		name string
		run  func(t *testing.T, open func() dispatch.Queue)
	}{
		{"DeliveredExactlyOnce", testDeliveredOnce},
		{"ClusterWideAgentLimit", testClusterWideLimit},
		{"PriorityThenAge", testClusterOrder},
		{"LeaseTakeover", testLeaseTakeover},
		{"PartitionedReplicaLetsGo", testPartition},
		{"CancelAcrossReplicas", testCancelAcross},
		{"OneTerminalState", testOneTerminal},
		{"QueueTimeout", testClusterTimeout},
		{"MaxPendingIsClusterWide", testClusterQueueFull},
		{"NewAgentStartsWaitingTask", testClusterPump},
		{"RetryFailsOver", testClusterRetry},
		{"ShutdownReleases", testShutdownReleases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, open(t)) })
	}
}

// ClusterConfig is the settings the suite runs replicas with: leases and
// polls long enough that only notifications can explain a prompt reaction.
var ClusterConfig = dispatch.Config{
	AgentConcurrency: 4,
	MaxPending:       1000,
	Retention:        time.Hour,
	RetryBackoff:     time.Millisecond,
	RetryBackoffMax:  5 * time.Millisecond,
	MaxResultBytes:   1 << 20,
	LeaseDuration:    time.Hour,
	PollInterval:     time.Hour,
}

// Cluster is a set of replicas over one queue, for tests.
type Cluster struct {
	t        testing.TB
	open     func() dispatch.Queue
	agents   *registry.MemoryStore
	Replicas []*Replica
}

// Replica is one orchestrator of a Cluster.
type Replica struct {
	Agents *registry.Registry
	D      *dispatch.Cluster
	Logs   *observer.ObservedLogs
	queue  *killableQueue
	cancel context.CancelFunc
	done   chan struct{}
}

// NewCluster makes n replicas over queues open returns, not running yet.
func NewCluster(t testing.TB, open func() dispatch.Queue, cfg dispatch.Config, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, open: open, agents: registry.NewMemoryStore()}
	for i := range n {
		core, logs := observer.New(zap.DebugLevel)
		log := zap.New(core).With(zap.Int("replica_index", i))
		agents, err := registry.New(registry.Options{
			Config: registry.Config{
				HeartbeatInterval: time.Minute, MissedHeartbeats: 3, EvictAfter: time.Hour,
				AllowedNetworks: []string{"127.0.0.0/8"},
			},
			Store:  c.agents,
			Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		q := &killableQueue{Queue: open()}
		q.ctx, q.kill = context.WithCancel(context.Background())
		d, err := dispatch.NewCluster(dispatch.ClusterOptions{
			Config: cfg, Queue: q, Agents: agents, Logger: log, Replica: fmt.Sprintf("replica-%d", i),
		})
		if err != nil {
			t.Fatal(err)
		}
		agents.OnChange(d.Pump)
		r := &Replica{Agents: agents, D: d, Logs: logs, queue: q}
		c.Replicas = append(c.Replicas, r)
		t.Cleanup(func() {
			r.Stop()
			q.kill()
			if t.Failed() { // what the replica saw, to tell why
				for _, e := range logs.All() {
					if e.Level >= zap.InfoLevel {
						t.Logf("replica %d: %s %s %v", i, e.Level, e.Message, e.ContextMap())
					}
				}
			}
		})
	}
	return c
}

// Start runs the replica's loop.
func (r *Replica) Start() {
	if r.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		r.D.Run(ctx)
	}()
}

// Stop ends the replica's loop as a SIGTERM would (after Drain), and
// waits for it.
func (r *Replica) Stop() {
	if r.done == nil {
		return
	}
	r.cancel()
	<-r.done
}

// Kill ends the replica as a SIGKILL would: from now on it cannot touch
// the database (its leases are neither renewed nor released, no outcome
// is recorded), then its loop stops.
func (r *Replica) Kill() {
	r.queue.dead.Store(true)
	r.queue.kill()
	r.Stop()
}

// Partition cuts the replica from the database but lets it run, as a
// network partition would.
func (r *Replica) Partition() {
	r.queue.dead.Store(true)
	r.queue.kill()
}

// StartAll starts every replica.
func (c *Cluster) StartAll() {
	for _, r := range c.Replicas {
		r.Start()
	}
}

// Agent is a fake agent's /task endpoint.
type Agent struct {
	ID  string
	srv *httptest.Server

	mu       sync.Mutex
	got      []string // task IDs, in arrival order
	inFlight int
	maxSeen  int
	running  map[string]int // deliveries in progress, by task ID
	twice    []string       // task IDs delivered twice at the same time
	answer   func(w http.ResponseWriter, r *http.Request, taskID string)
}

// Completed answers that the task ran.
func Completed(w http.ResponseWriter, _ *http.Request, id string) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"task_id":%q,"status":"completed","result":{"ok":true}}`, id)
}

// AddAgent starts a fake cost agent with the capability "analyze",
// registered through replica i.
func (c *Cluster) AddAgent(i int, name string, answer func(http.ResponseWriter, *http.Request, string)) *Agent {
	c.t.Helper()
	a := &Agent{answer: answer, running: map[string]int{}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var body struct {
			TaskID string `json:"task_id"`
		}
		_ = json.Unmarshal(data, &body)
		a.mu.Lock()
		a.got = append(a.got, body.TaskID)
		a.inFlight++
		a.maxSeen = max(a.maxSeen, a.inFlight)
		if a.running[body.TaskID]++; a.running[body.TaskID] > 1 {
			a.twice = append(a.twice, body.TaskID)
		}
		answer := a.answer
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			a.inFlight--
			if a.running[body.TaskID]--; a.running[body.TaskID] == 0 {
				delete(a.running, body.TaskID)
			}
			a.mu.Unlock()
		}()
		answer(w, r, body.TaskID)
	}))
	c.t.Cleanup(a.srv.Close)
	_, portStr, _ := net.SplitHostPort(a.srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	reg, _, err := c.Replicas[i].Agents.Register(context.Background(), registry.Registration{
		Name: name, Type: "cost", Host: "127.0.0.1", Port: port, Capabilities: []string{"analyze"},
	})
	if err != nil {
		c.t.Fatal(err)
	}
	a.ID = reg.ID
	return a
}

// URL is the agent's base URL (its /task endpoint is under it).
func (a *Agent) URL() string { return a.srv.URL }

// Received returns the task IDs the agent got, in order.
func (a *Agent) Received() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

// DeliveredTwiceAtOnce lists the tasks the agent got a second time while
// the first delivery was still running.
func (a *Agent) DeliveredTwiceAtOnce() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.twice)
}

// MaxConcurrent is the most deliveries the agent had at once.
func (a *Agent) MaxConcurrent() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.maxSeen
}

// SetAnswer changes how the agent answers from now on.
func (a *Agent) SetAnswer(answer func(http.ResponseWriter, *http.Request, string)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.answer = answer
}

// Submit submits an "analyze" cost task through replica i.
func (c *Cluster) Submit(i int, req dispatch.Request) dispatch.Task {
	c.t.Helper()
	req.AgentType, req.TaskType = "cost", "analyze"
	t, err := c.Replicas[i].D.Submit(context.Background(), req)
	if err != nil {
		c.t.Fatalf("Submit through replica %d: %v", i, err)
	}
	return t
}

// Wait polls task id through replica i until it is terminal.
func (c *Cluster) Wait(i int, id string) dispatch.Task {
	c.t.Helper()
	var t dispatch.Task
	waitFor(c.t, "task "+id+" to finish", func() bool {
		var err error
		t, err = c.Replicas[i].D.Get(context.Background(), id)
		if err != nil {
			c.t.Fatal(err)
		}
		return t.Status.Terminal()
	})
	return t
}

// waitFor polls cond until it holds, failing t after a minute: a bound for
// a broken test, not a claim about speed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hold answers once release is closed or the call is aborted.
func hold(release <-chan struct{}) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, id string) {
		select {
		case <-release:
			Completed(w, r, id)
		case <-r.Context().Done():
		}
	}
}

func countOf(ids []string, id string) int {
	n := 0
	for _, x := range ids {
		if x == id {
			n++
		}
	}
	return n
}

// Tasks submitted through either replica are each delivered once, by
// whichever replica claimed them; the agent registered through one
// replica is routable from the other.
func testDeliveredOnce(t *testing.T, open func() dispatch.Queue) {
	c := NewCluster(t, open, ClusterConfig, 2)
	c.StartAll()
	agents := []*Agent{c.AddAgent(0, "a", Completed), c.AddAgent(1, "b", Completed)}
	var ids []string
	for i := range 40 {
		ids = append(ids, c.Submit(i%2, dispatch.Request{}).ID)
	}
	for i, id := range ids {
		if got := c.Wait((i+1)%2, id); got.Status != dispatch.StatusCompleted || string(got.Result) != `{"ok":true}` {
			t.Errorf("task %s: %s %s %s", id, got.Status, got.Result, got.Error)
		}
	}
	all := append(agents[0].Received(), agents[1].Received()...)
	for _, id := range ids {
		if n := countOf(all, id); n != 1 {
			t.Errorf("task %s delivered %d times, want once", id, n)
		}
	}
	if len(all) != len(ids) {
		t.Errorf("agents got %d deliveries for %d tasks", len(all), len(ids))
	}
}

// TASK_AGENT_CONCURRENCY holds across the cluster: the agent never has
// more deliveries at once than the limit, though both replicas deliver.
func testClusterWideLimit(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.AgentConcurrency = 2
	c := NewCluster(t, open, cfg, 2)
	c.StartAll()
	agent := c.AddAgent(0, "slow", func(w http.ResponseWriter, r *http.Request, id string) {
		time.Sleep(20 * time.Millisecond)
		Completed(w, r, id)
	})
	var ids []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for range 15 {
				id := c.Submit(w, dispatch.Request{}).ID
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		if got := c.Wait(0, id); got.Status != dispatch.StatusCompleted {
			t.Errorf("task %s: %s %s", id, got.Status, got.Error)
		}
	}
	if m := agent.MaxConcurrent(); m != 2 {
		t.Errorf("the agent had at most %d deliveries at once, want exactly the limit 2 (30 tasks, 2 replicas)", m)
	}
	delivered := map[string]bool{}
	for _, r := range c.Replicas {
		for _, e := range r.Logs.All() {
			if e.Message == "task attempt failed; retrying" {
				t.Errorf("unexpected retry: %v", e.ContextMap())
			}
		}
	}
	for _, id := range agent.Received() {
		if delivered[id] {
			t.Errorf("task %s delivered twice", id)
		}
		delivered[id] = true
	}
}

// Waiting tasks start in priority order, then oldest first, whichever
// replica took them.
func testClusterOrder(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.AgentConcurrency = 1
	c := NewCluster(t, open, cfg, 2)
	c.StartAll()
	release := make(chan struct{}, 100)
	agent := c.AddAgent(0, "one-at-a-time", func(w http.ResponseWriter, r *http.Request, id string) {
		select {
		case <-release:
			Completed(w, r, id)
		case <-r.Context().Done():
		}
	})
	first := c.Submit(0, dispatch.Request{})
	waitFor(t, "the first delivery", func() bool { return len(agent.Received()) == 1 })
	priorities := []int{1, 5, 1, 9, 5, 1, 9}
	byPriority := map[int][]string{}
	for i, p := range priorities {
		id := c.Submit(i%2, dispatch.Request{Priority: p}).ID
		byPriority[p] = append(byPriority[p], id)
	}
	want := []string{first.ID}
	for _, p := range []int{9, 5, 1} {
		want = append(want, byPriority[p]...)
	}
	for range want {
		release <- struct{}{}
	}
	for _, id := range want {
		c.Wait(1, id)
	}
	if got := agent.Received(); !slices.Equal(got, want) {
		t.Errorf("delivery order %v, want %v (priority, then submission)", got, want)
	}
}

// A replica that dies mid-delivery leaves no task stuck: once its lease
// lapses, the other replica delivers the task again with the same
// task_id, or fails it when no retries are left.
func testLeaseTakeover(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.LeaseDuration = time.Second
	c := NewCluster(t, open, cfg, 2)
	a, b := c.Replicas[0], c.Replicas[1]
	a.Start()
	var calls atomic.Int32
	agent := c.AddAgent(0, "agent", func(w http.ResponseWriter, r *http.Request, id string) {
		if calls.Add(1) <= 2 { // the dying replica's deliveries never end
			<-r.Context().Done()
			return
		}
		Completed(w, r, id)
	})
	retried := c.Submit(0, dispatch.Request{})
	noRetries := c.Submit(0, dispatch.Request{MaxRetries: new(int)})
	waitFor(t, "both deliveries from replica 0", func() bool { return len(agent.Received()) == 2 })
	a.Kill()
	b.Start()

	got := c.Wait(1, retried.ID)
	if got.Status != dispatch.StatusCompleted || got.RetryCount != 1 {
		t.Errorf("task taken over: %s after %d retries (%s), want completed after 1", got.Status, got.RetryCount, got.Error)
	}
	if n := countOf(agent.Received(), retried.ID); n != 2 {
		t.Errorf("task taken over delivered %d times, want twice with the same task_id", n)
	}
	failed := c.Wait(1, noRetries.ID)
	if failed.Status != dispatch.StatusFailed || !containsAll(failed.Error, "replica", "stopped") {
		t.Errorf("task without retries: %s %q, want failed saying the replica stopped", failed.Status, failed.Error)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// A replica cut from the database gives up its deliveries before its
// leases lapse, so when another replica takes the tasks over, no task is
// delivered twice at the same time.
func testPartition(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.LeaseDuration = time.Second
	c := NewCluster(t, open, cfg, 2)
	a, b := c.Replicas[0], c.Replicas[1]
	a.Start()
	aborted := make(chan struct{})
	var calls atomic.Int32
	agent := c.AddAgent(0, "agent", func(w http.ResponseWriter, r *http.Request, id string) {
		if calls.Add(1) == 1 { // the partitioned replica's delivery
			<-r.Context().Done()
			close(aborted)
			return
		}
		Completed(w, r, id)
	})
	task := c.Submit(0, dispatch.Request{})
	waitFor(t, "the delivery", func() bool { return len(agent.Received()) == 1 })
	a.Partition()
	b.Start()
	got := c.Wait(1, task.ID)
	if got.Status != dispatch.StatusCompleted {
		t.Errorf("task after the partition: %s %q", got.Status, got.Error)
	}
	select {
	case <-aborted:
	default:
		t.Error("the partitioned replica's delivery was still running when the task completed elsewhere")
	}
	if twice := agent.DeliveredTwiceAtOnce(); len(twice) > 0 {
		t.Errorf("tasks delivered twice at the same time: %v", twice)
	}
	if a.Logs.FilterMessage("delivery aborted: its lease could not be renewed, and another replica may take the task over").Len() != 1 {
		t.Error("the partitioned replica did not say why it aborted the delivery")
	}
}

// Cancel through one replica aborts the other replica's call to the agent:
// with leases and polls of an hour, only the notification can.
func testCancelAcross(t *testing.T, open func() dispatch.Queue) {
	c := NewCluster(t, open, ClusterConfig, 2)
	a, b := c.Replicas[0], c.Replicas[1]
	a.Start()
	aborted := make(chan string, 1)
	agent := c.AddAgent(0, "agent", func(_ http.ResponseWriter, r *http.Request, id string) {
		<-r.Context().Done()
		aborted <- id
	})
	task := c.Submit(0, dispatch.Request{})
	waitFor(t, "the delivery", func() bool { return len(agent.Received()) == 1 })
	got, err := b.D.Cancel(context.Background(), task.ID)
	if err != nil || got.Status != dispatch.StatusCancelled {
		t.Fatalf("Cancel through replica 1 = %s, %v", got.Status, err)
	}
	select {
	case id := <-aborted:
		if id != task.ID {
			t.Errorf("aborted %s, want %s", id, task.ID)
		}
	case <-time.After(time.Minute):
		t.Fatal("replica 0's call to the agent was not aborted")
	}
	waitFor(t, "replica 0 to drop the delivery", func() bool {
		return a.Logs.FilterMessage("agent reply after cancel dropped").Len() == 1
	})
	if final := c.Wait(0, task.ID); final.Status != dispatch.StatusCancelled {
		t.Errorf("task is %s after the cancel", final.Status)
	}
}

// Completions racing cancels through both replicas: every task ends in
// exactly one terminal state, the one whose writer was told it won.
func testOneTerminal(t *testing.T, open func() dispatch.Queue) {
	c := NewCluster(t, open, ClusterConfig, 2)
	c.StartAll()
	c.AddAgent(0, "a", func(w http.ResponseWriter, r *http.Request, id string) {
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond) //nolint:gosec // G404: spread, not secrecy
		Completed(w, r, id)
	})
	const n = 40
	type result struct {
		id        string
		cancelled bool
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := c.Submit(i%2, dispatch.Request{}).ID
			time.Sleep(time.Duration(rand.IntN(4)) * time.Millisecond) //nolint:gosec // G404: spread, not secrecy
			_, err := c.Replicas[(i+1)%2].D.Cancel(context.Background(), id)
			if err != nil && !errors.Is(err, dispatch.ErrFinished) {
				t.Errorf("Cancel(%s): %v", id, err)
			}
			results[i] = result{id, err == nil}
		})
	}
	wg.Wait()
	for _, r := range results {
		got := c.Wait(0, r.id)
		want := dispatch.StatusCompleted
		if r.cancelled {
			want = dispatch.StatusCancelled
		}
		if got.Status != want {
			t.Errorf("task %s is %s, but the cancel said cancelled=%t", r.id, got.Status, r.cancelled)
		}
	}
	// Settle, then look again: no late writer changed anything.
	for _, rep := range c.Replicas {
		rep.Stop()
	}
	for _, r := range results {
		got, _ := c.Replicas[1].D.Get(context.Background(), r.id)
		if (got.Status == dispatch.StatusCancelled) != r.cancelled {
			t.Errorf("task %s changed to %s after the fact", r.id, got.Status)
		}
	}
}

// A task no agent has a slot for within its timeout ends as timeout.
func testClusterTimeout(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.AgentConcurrency = 1
	c := NewCluster(t, open, cfg, 2)
	c.StartAll()
	release := make(chan struct{})
	agent := c.AddAgent(0, "busy", hold(release))
	t.Cleanup(func() { close(release) })
	c.Submit(0, dispatch.Request{})
	waitFor(t, "the slot to be taken", func() bool { return len(agent.Received()) == 1 })
	one := 1
	waiting := c.Submit(1, dispatch.Request{TimeoutSeconds: &one})
	if waiting.Status != dispatch.StatusPending {
		t.Fatalf("task submitted to a full agent is %s, want pending", waiting.Status)
	}
	got := c.Wait(0, waiting.ID)
	if got.Status != dispatch.StatusTimeout || !strings.Contains(got.Error, `had a free slot within 1s`) {
		t.Errorf("task waiting past its timeout: %s %q", got.Status, got.Error)
	}
}

// TASK_MAX_PENDING counts the tasks waiting across the cluster, whichever
// replica accepted them.
func testClusterQueueFull(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.AgentConcurrency, cfg.MaxPending = 1, 3
	c := NewCluster(t, open, cfg, 2)
	c.StartAll()
	release := make(chan struct{})
	agent := c.AddAgent(0, "busy", hold(release))
	t.Cleanup(func() { close(release) })
	c.Submit(0, dispatch.Request{})
	waitFor(t, "the slot to be taken", func() bool { return len(agent.Received()) == 1 })
	for i := range 3 {
		if got := c.Submit(i%2, dispatch.Request{}); got.Status != dispatch.StatusPending {
			t.Fatalf("task %d is %s, want pending", i, got.Status)
		}
	}
	for i := range 2 {
		_, err := c.Replicas[i].D.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"})
		if !errors.Is(err, dispatch.ErrQueueFull) || !strings.Contains(err.Error(), "TASK_MAX_PENDING") {
			t.Errorf("Submit through replica %d with 3 tasks waiting = %v, want ErrQueueFull", i, err)
		}
	}
}

// A task waiting for a free slot starts when another capable agent
// registers, through either replica: with an hour-long poll, only the
// registry's Pump can start it.
func testClusterPump(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.AgentConcurrency = 1
	c := NewCluster(t, open, cfg, 2)
	c.StartAll()
	release := make(chan struct{})
	busy := c.AddAgent(0, "busy", hold(release))
	t.Cleanup(func() { close(release) })
	c.Submit(0, dispatch.Request{})
	waitFor(t, "the slot to be taken", func() bool { return len(busy.Received()) == 1 })
	before := time.Now()
	waiting := c.Submit(0, dispatch.Request{})
	if waiting.Status != dispatch.StatusPending {
		t.Fatalf("task submitted to a full agent is %s, want pending", waiting.Status)
	}
	// The claims the submission's notification started find no agent; only
	// once they are over does the new agent come.
	for i, r := range c.Replicas {
		waitFor(t, fmt.Sprintf("replica %d to look at the queue", i), func() bool { return r.queue.claimedSince(before) })
	}
	fresh := c.AddAgent(1, "fresh", Completed)
	got := c.Wait(0, waiting.ID)
	if got.Status != dispatch.StatusCompleted || got.AgentID != fresh.ID {
		t.Errorf("waiting task: %s on %s, want completed on the agent that registered", got.Status, got.AgentID)
	}
}

// A failed attempt is retried after its backoff, on an agent not tried
// yet when there is one, through whichever replica.
func testClusterRetry(t *testing.T, open func() dispatch.Queue) {
	cfg := ClusterConfig
	cfg.RetryBackoff, cfg.RetryBackoffMax = 50*time.Millisecond, 50*time.Millisecond
	c := NewCluster(t, open, cfg, 2)
	c.StartAll()
	failing := c.AddAgent(0, "failing", func(w http.ResponseWriter, _ *http.Request, id string) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"task_id":%q,"status":"failed","error":"overloaded"}`, id)
	})
	task := c.Submit(0, dispatch.Request{AgentID: failing.ID})
	got := c.Wait(1, task.ID)
	if got.Status != dispatch.StatusFailed || got.RetryCount != 3 || !strings.Contains(got.Error, "overloaded") {
		t.Errorf("pinned task on a failing agent: %s after %d retries %q, want failed after 3", got.Status, got.RetryCount, got.Error)
	}
	if n := len(failing.Received()); n != 4 {
		t.Errorf("failing agent got %d attempts, want 4", n)
	}
	healthy := c.AddAgent(1, "healthy", Completed)
	failing.SetAnswer(func(w http.ResponseWriter, _ *http.Request, id string) {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, `{"task_id":%q,"status":"failed","error":"boom"}`, id)
	})
	// Whichever agent the first attempt goes to, the retry goes to the
	// other; a task that lands on the healthy one first just completes.
	for range 6 {
		id := c.Submit(1, dispatch.Request{}).ID
		got := c.Wait(0, id)
		if got.Status != dispatch.StatusCompleted || got.AgentID != healthy.ID || got.RetryCount > 1 {
			t.Errorf("task %s: %s on %s after %d retries, want completed on the healthy agent after at most 1",
				id, got.Status, got.AgentID, got.RetryCount)
		}
	}
}

// Stopping a replica releases its deliveries in flight back to the queue
// (not failed), and the other replica delivers them; waiting tasks stay.
func testShutdownReleases(t *testing.T, open func() dispatch.Queue) {
	c := NewCluster(t, open, ClusterConfig, 2)
	a, b := c.Replicas[0], c.Replicas[1]
	a.Start()
	var calls atomic.Int32
	agent := c.AddAgent(0, "agent", func(w http.ResponseWriter, r *http.Request, id string) {
		if calls.Add(1) == 1 {
			<-r.Context().Done() // the stopping replica's delivery
			return
		}
		Completed(w, r, id)
	})
	task := c.Submit(0, dispatch.Request{})
	waitFor(t, "the delivery", func() bool { return len(agent.Received()) == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no time to drain
	if err := a.D.Drain(ctx); !errors.Is(err, dispatch.ErrDrainTimeout) {
		t.Errorf("Drain with a delivery in flight = %v, want ErrDrainTimeout", err)
	}
	if _, err := a.D.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"}); !errors.Is(err, dispatch.ErrShuttingDown) {
		t.Errorf("Submit while draining = %v, want ErrShuttingDown", err)
	}
	a.Stop()
	if a.Logs.FilterMessage("delivery unfinished at shutdown: the task is back in the queue, for another replica").Len() != 1 {
		t.Errorf("the released task was not logged by id: %v", a.Logs.All())
	}
	if got, _ := b.D.Get(context.Background(), task.ID); got.Status != dispatch.StatusPending {
		t.Errorf("released task is %s, want pending", got.Status)
	}
	b.Start()
	got := c.Wait(1, task.ID)
	if got.Status != dispatch.StatusCompleted || got.RetryCount != 0 {
		t.Errorf("released task: %s after %d retries, want completed, the release not counted", got.Status, got.RetryCount)
	}
}

// killableQueue is a replica's view of the database, which Kill cuts.
type killableQueue struct {
	dispatch.Queue
	dead atomic.Bool
	ctx  context.Context // ends on Kill
	kill context.CancelFunc

	mu             sync.Mutex
	claiming       int       // claims running
	lastClaimStart time.Time // when the last claim to end had started
}

// claimedSince reports whether a claim that started after t has ended, and
// none is running.
func (k *killableQueue) claimedSince(t time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.claiming == 0 && k.lastClaimStart.After(t)
}

var errKilled = errors.New("replica killed: no database")

func (k *killableQueue) alive() error {
	if k.dead.Load() {
		return errKilled
	}
	return nil
}

func (k *killableQueue) Create(ctx context.Context, t dispatch.Task) (dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, err
	}
	return k.Queue.Create(ctx, t)
}

func (k *killableQueue) Get(ctx context.Context, id string) (dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, err
	}
	return k.Queue.Get(ctx, id)
}

func (k *killableQueue) Update(ctx context.Context, id string, change func(*dispatch.Task) error) (dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, err
	}
	return k.Queue.Update(ctx, id, change)
}

func (k *killableQueue) List(ctx context.Context, q dispatch.Query) ([]dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return nil, err
	}
	return k.Queue.List(ctx, q)
}

func (k *killableQueue) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	if err := k.alive(); err != nil {
		return 0, err
	}
	return k.Queue.Prune(ctx, cutoff)
}

func (k *killableQueue) Enqueue(ctx context.Context, t dispatch.Task, maxPending int, direct dispatch.DirectClaim) (dispatch.Task, *dispatch.Claimed, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, nil, err
	}
	return k.Queue.Enqueue(ctx, t, maxPending, direct)
}

func (k *killableQueue) Wake(ctx context.Context) error {
	if err := k.alive(); err != nil {
		return err
	}
	return k.Queue.Wake(ctx)
}

func (k *killableQueue) Claim(ctx context.Context, req dispatch.ClaimRequest) (dispatch.ClaimResult, error) {
	if err := k.alive(); err != nil {
		return dispatch.ClaimResult{}, err
	}
	k.mu.Lock()
	k.claiming++
	start := time.Now()
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.claiming--
		k.lastClaimStart = start
		k.mu.Unlock()
	}()
	return k.Queue.Claim(ctx, req)
}

func (k *killableQueue) Finish(ctx context.Context, l dispatch.Lease, status dispatch.Status, result json.RawMessage, msg string) (dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, err
	}
	return k.Queue.Finish(ctx, l, status, result, msg)
}

func (k *killableQueue) Retry(ctx context.Context, l dispatch.Lease, msg string, delay time.Duration) (dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, err
	}
	return k.Queue.Retry(ctx, l, msg, delay)
}

func (k *killableQueue) Release(ctx context.Context, leases []dispatch.Lease) ([]string, error) {
	if err := k.alive(); err != nil {
		return nil, err
	}
	return k.Queue.Release(ctx, leases)
}

func (k *killableQueue) Renew(ctx context.Context, owner string, ids []string, lease time.Duration) ([]string, error) {
	if err := k.alive(); err != nil {
		return nil, err
	}
	return k.Queue.Renew(ctx, owner, ids, lease)
}

func (k *killableQueue) Rescue(ctx context.Context, msg string) ([]dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return nil, err
	}
	return k.Queue.Rescue(ctx, msg)
}

func (k *killableQueue) ExpireWaiting(ctx context.Context) ([]dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return nil, err
	}
	return k.Queue.ExpireWaiting(ctx)
}

func (k *killableQueue) Cancel(ctx context.Context, id, msg string) (dispatch.Task, error) {
	if err := k.alive(); err != nil {
		return dispatch.Task{}, err
	}
	return k.Queue.Cancel(ctx, id, msg)
}

func (k *killableQueue) Waiting(ctx context.Context) (int, error) {
	if err := k.alive(); err != nil {
		return 0, err
	}
	return k.Queue.Waiting(ctx)
}

func (k *killableQueue) Listen(ctx context.Context, n dispatch.Notifications) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(k.ctx, cancel)
	defer stop()
	return k.Queue.Listen(ctx, n)
}
