package dispatch

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// ClusterOptions are a Cluster's collaborators. Client, Now, NewID and
// Replica have defaults (see Options; Replica: the host name and a random
// suffix).
type ClusterOptions struct {
	Config  Config
	Queue   Queue
	Agents  Agents
	Logger  *zap.Logger
	Metrics prometheus.Registerer
	Client  *http.Client
	Now     func() time.Time
	NewID   func() string
	// Replica names this replica in the leases it holds; unique per
	// process.
	Replica string
}

// Cluster schedules and delivers tasks as one of several replicas over a
// shared Queue: the Dispatcher's behaviour (routing, failover, retries
// with backoff, queue timeouts, cancel), with the scheduling state in the
// Queue instead of this process's memory.
//
// A task any replica accepted is claimed by one replica at a time, in a
// claim that sees every agent's tasks in flight across the cluster. The
// claimer holds a lease on it, renewed every third of TASK_LEASE_DURATION
// while it delivers; when a replica dies, its leases lapse and any other
// replica takes the tasks over (delivered again: at least once, with the
// same task_id). Replicas wake one another through the Queue's
// notifications: a new task, a retry or a freed slot is claimed at once,
// a cancel aborts the delivery wherever it runs; TASK_POLL_INTERVAL is a
// safety net only.
//
// Stopping: Drain refuses new tasks, stops claiming and waits for this
// replica's deliveries in flight; Run's end aborts those left and releases
// them back to the queue, for another replica or the next pod. Waiting
// tasks stay in the queue untouched: nothing is failed at shutdown,
// because nothing is lost.
type Cluster struct {
	cfg     Config
	queue   Queue
	agents  Agents
	log     *zap.Logger
	client  *http.Client
	now     func() time.Time
	newID   func() string
	metrics *metrics
	replica string

	// base is the parent of every delivery; stop cancels it.
	base context.Context
	stop context.CancelFunc
	// wg counts the claims and deliveries running.
	wg sync.WaitGroup
	// wake has an element when the run loop should look at the queue.
	wake  chan struct{}
	depth atomic.Int64

	claims claimer
	// listening is closed once the listener first hears every
	// notification: claims wait for it (up to listenWait), so that no
	// delivery starts that a cancel elsewhere could not abort at once.
	listening  chan struct{}
	listenOnce sync.Once

	mu               sync.Mutex
	draining, closed bool
	idle             chan struct{} // closed when the last delivery ends while Drain waits
	live             map[string]*delivery
	turns            map[route]turn
	// waiters are the Submits waiting to learn whether a claim took their
	// task.
	waiters map[string]chan Task
	// backlog: waiting tasks may be left that a change of the agents could
	// start (so Pump must wake the loop).
	backlog bool
	// next is how long after the last claim a waiting task's backoff or
	// deadline ends.
	next time.Duration
	// lastPump and pumpPending pace Pump.
	lastPump    time.Time
	pumpPending bool
}

// delivery is one attempt this replica runs.
type delivery struct {
	task   Task
	lease  Lease
	agent  registry.Candidate
	cancel context.CancelFunc
	// cancelled: an operator cancelled the task; lost: the lease is no
	// longer this replica's.
	cancelled, lost bool
	// renewed is when the lease was last known extended (this replica's
	// clock).
	renewed time.Time
}

// claimer runs one claim at a time in this process (the database runs
// one at a time across the cluster), and lets callers wait for a claim
// that started after their call.
type claimer struct {
	mu            sync.Mutex
	cond          *sync.Cond
	running       bool
	started, done uint64
}

// claimBatch bounds the tasks one claim transaction takes; listenWait
// bounds how long claims wait for the listener at startup; pumpEvery paces
// Pump.
const (
	claimBatch = 64
	listenWait = 5 * time.Second
	pumpEvery  = 50 * time.Millisecond
)

// Messages recorded in tasks, and the cadence of recording retries.
const (
	cancelMessage = "cancelled by an operator"
	rescueMessage = "the orchestrator replica delivering the task stopped before the agent answered " +
		"(its lease lapsed); the agent may have run it"
	recordRetry = 500 * time.Millisecond
)

// NewCluster returns a Cluster; call Run to claim, renew and stop.
func NewCluster(opts ClusterOptions) (*Cluster, error) {
	if opts.Queue == nil || opts.Agents == nil {
		return nil, errors.New("dispatch: a cluster needs a Queue and Agents")
	}
	c := &Cluster{
		cfg:       opts.Config,
		queue:     opts.Queue,
		agents:    opts.Agents,
		log:       opts.Logger,
		client:    opts.Client,
		now:       opts.Now,
		newID:     opts.NewID,
		replica:   opts.Replica,
		wake:      make(chan struct{}, 1),
		listening: make(chan struct{}),
		live:      map[string]*delivery{},
		turns:     map[route]turn{},
		waiters:   map[string]chan Task{},
		backlog:   true,
	}
	c.claims.cond = sync.NewCond(&c.claims.mu)
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.client == nil {
		c.client = NewClient(opts.Agents.Guard())
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.newID == nil {
		c.newID = uuid.NewString
	}
	if c.replica == "" {
		c.replica = ReplicaName()
	}
	c.log = c.log.With(zap.String("replica", c.replica))
	c.base, c.stop = context.WithCancel(context.Background())
	var err error
	c.metrics, err = newMetrics(opts.Metrics,
		func() float64 { return float64(c.depth.Load()) },
		func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(len(c.live))
		})
	if err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// ReplicaName is the host name (a pod's name) and a random suffix: unique
// even when a pod restarts under the same name.
func ReplicaName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "orchestrator"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// Replica is the name this replica holds leases under.
func (c *Cluster) Replica() string { return c.replica }

// Submit validates req, checks that an agent can take it, and stores it in
// the shared queue, which wakes every replica. It claims at once: the task
// comes back dispatched when this replica took it, else pending (another
// replica may have).
func (c *Cluster) Submit(ctx context.Context, req Request) (Task, error) {
	t, err := req.validate()
	if err != nil {
		return Task{}, err
	}
	rt := route{agentType: t.AgentType, taskType: t.TaskType, pinned: t.PinnedAgentID}
	if rt.pinned != "" {
		if err := checkPinned(ctx, c.agents, rt); err != nil {
			return Task{}, err
		}
	}
	c.mu.Lock()
	refused := c.draining || c.closed
	c.mu.Unlock()
	if refused {
		return Task{}, ErrShuttingDown
	}
	candidates, err := c.candidates(ctx, rt)
	if err != nil {
		return Task{}, err
	}
	if len(candidates) == 0 {
		c.metrics.rejected.WithLabelValues("no_capable_agent").Inc()
		return Task{}, noAgentError(rt)
	}
	// The database keeps microseconds: the task returned is the one stored.
	t.ID, t.CreatedAt = cmp.Or(req.ID, c.newID()), c.now().UTC().Truncate(time.Microsecond)
	// Waiting before the task exists: the claim that takes it may be one
	// the insert's own notification started.
	claimed := make(chan Task, 1)
	c.mu.Lock()
	c.waiters[t.ID] = claimed
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, t.ID)
		c.mu.Unlock()
	}()
	stored, direct, err := c.queue.Enqueue(ctx, t, c.cfg.MaxPending, c.directClaim(rt, candidates))
	if errors.Is(err, ErrQueueFull) {
		c.metrics.rejected.WithLabelValues("queue_full").Inc()
		return Task{}, fmt.Errorf("%w: %d tasks are waiting for an agent across the cluster (TASK_MAX_PENDING)", ErrQueueFull, c.cfg.MaxPending)
	}
	if err != nil {
		return Task{}, err
	}
	c.metrics.submitted.WithLabelValues(string(t.AgentType)).Inc()
	if direct != nil {
		for _, a := range candidates {
			if a.ID == direct.Task.AgentID {
				c.start([]Claimed{*direct}, map[string]registry.Candidate{t.ID: a})
				return direct.Task, nil
			}
		}
	}
	c.mu.Lock()
	c.backlog = true
	c.mu.Unlock()
	c.claim(claimed, map[route][]registry.Candidate{rt: candidates})
	select {
	case t := <-claimed:
		return t, nil
	default:
	}
	// Left waiting (or claimed by another replica, which this one cannot
	// tell): the other replicas learn that tasks wait, so that an agent
	// registering or heartbeating through them starts it. Without the
	// notification, their poll does.
	if err := c.queue.Wake(ctx); err != nil {
		c.log.Warn("waking the other replicas failed; their poll finds the task", zap.String("task_id", t.ID), zap.Error(err))
	}
	return stored, nil
}

// directClaim is what Submit asks the queue to claim its task with: the
// candidates in round-robin order (pick's, among the least loaded), once
// the listener hears cancels; none before.
func (c *Cluster) directClaim(rt route, candidates []registry.Candidate) DirectClaim {
	select {
	case <-c.listening:
	default:
		return DirectClaim{}
	}
	agents := make([]string, len(candidates))
	first := 0
	if len(candidates) > 1 {
		first = int(c.nextTurn(rt) % uint64(len(candidates))) //nolint:gosec // G115: less than len(candidates)
	}
	for i := range candidates {
		agents[i] = candidates[(first+i)%len(candidates)].ID
	}
	return DirectClaim{Owner: c.replica, Lease: c.cfg.LeaseDuration, Agents: agents, Limit: c.cfg.AgentConcurrency}
}

// candidates returns the agents that may take tasks of rt now, regardless
// of their load.
func (c *Cluster) candidates(ctx context.Context, rt route) ([]registry.Candidate, error) {
	cands, err := c.agents.Routable(ctx, rt.agentType, rt.taskType, nil)
	if err != nil || rt.pinned == "" {
		return cands, err
	}
	for _, x := range cands {
		if x.ID == rt.pinned {
			return []registry.Candidate{x}, nil
		}
	}
	return nil, nil
}

// claim returns once a claim that started after the call has ended,
// running it itself when none is running, or once a claim has sent a task
// on claimed (nil: none to wait for). A claim the call runs itself starts
// from the candidates in known (read a moment ago), instead of reading
// them again.
func (c *Cluster) claim(claimed chan Task, known map[route][]registry.Candidate) {
	cl := &c.claims
	cl.mu.Lock()
	defer cl.mu.Unlock()
	target := cl.started + 1
	for cl.done < target && len(claimed) == 0 {
		if cl.running {
			cl.cond.Wait()
			continue
		}
		cl.running = true
		cl.started++
		round := cl.started
		cl.mu.Unlock()
		c.claimRound(known)
		cl.mu.Lock()
		cl.running, cl.done = false, round
		cl.cond.Broadcast()
	}
}

// claimRound claims waiting tasks while agents have free slots, and starts
// delivering them. The candidates of the routes in known are not read
// again.
func (c *Cluster) claimRound(known map[route][]registry.Candidate) {
	c.mu.Lock()
	if c.draining || c.closed {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()
	select {
	case <-c.listening:
	default:
		wait := time.NewTimer(listenWait)
		select {
		case <-c.listening:
		case <-c.base.Done():
		case <-wait.C: // the database may be down; the claim will say so
		}
		wait.Stop()
	}

	routes := map[route][]registry.Candidate{}
	maps.Copy(routes, known)
	chosen := map[string]registry.Candidate{}
	choose := func(ctx context.Context, t Claimable, inFlight map[string]int) (string, bool, error) {
		rt := route{agentType: t.AgentType, taskType: t.TaskType, pinned: t.PinnedAgentID}
		cands, ok := routes[rt]
		if !ok {
			var err error
			if cands, err = c.candidates(ctx, rt); err != nil {
				return "", false, err
			}
			routes[rt] = cands
		}
		agent, ok := pick(cands, c.cfg.AgentConcurrency,
			func(id string) int { return inFlight[id] },
			func(id string) bool { return slices.Contains(t.Tried, id) },
			func() uint64 { return c.nextTurn(rt) })
		if ok {
			chosen[t.ID] = agent
		}
		return agent.ID, ok, nil
	}
	for {
		ctx, cancel := context.WithTimeout(c.base, storeTimeout)
		res, err := c.queue.Claim(ctx, ClaimRequest{Owner: c.replica, Lease: c.cfg.LeaseDuration, Limit: claimBatch, Choose: choose})
		cancel()
		if err != nil {
			if c.base.Err() == nil {
				c.log.Error("claiming waiting tasks", zap.Error(err))
			}
			c.mu.Lock()
			c.backlog = true
			c.mu.Unlock()
			return
		}
		c.start(res.Claimed, chosen)
		c.mu.Lock()
		c.backlog, c.next = res.Waiting, res.Next
		c.mu.Unlock()
		if len(res.Claimed) < claimBatch {
			return
		}
	}
}

// nextTurn is rt's round-robin position, advanced.
func (c *Cluster) nextTurn(rt route) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	tn := c.turns[rt]
	c.turns[rt] = turn{next: tn.next + 1, used: true}
	return tn.next
}

// start delivers the tasks a claim took.
func (c *Cluster) start(claimed []Claimed, agents map[string]registry.Candidate) {
	var orphans []Lease
	c.mu.Lock()
	for _, cl := range claimed {
		select {
		case c.waiters[cl.Task.ID] <- cl.Task: // nil (no waiter) is never ready
		default:
		}
		if c.closed {
			orphans = append(orphans, cl.Lease)
			continue
		}
		ctx, cancel := context.WithTimeout(c.base, time.Duration(cl.Task.TimeoutSeconds)*time.Second)
		d := &delivery{task: cl.Task, lease: cl.Lease, agent: agents[cl.Task.ID], cancel: cancel, renewed: time.Now()}
		c.live[cl.Task.ID] = d
		c.wg.Go(func() {
			defer cancel()
			c.attempt(ctx, d)
		})
	}
	c.mu.Unlock()
	if len(orphans) > 0 { // claimed as Run ended: back to the queue
		ctx, cancel := context.WithTimeout(context.Background(), shutdownRecordTimeout)
		defer cancel()
		if _, err := c.queue.Release(ctx, orphans); err != nil {
			c.log.Error("releasing tasks claimed during shutdown; they are taken over when their lease lapses", zap.Error(err))
		}
	}
}

// attempt delivers d once and records what came of it.
func (c *Cluster) attempt(ctx context.Context, d *delivery) {
	out := deliver(ctx, c.client, c.cfg.MaxResultBytes, d.task, d.agent)
	c.metrics.attempts.WithLabelValues(string(d.task.AgentType), string(out.kind)).Inc()
	log := c.log.With(zap.String("task_id", d.task.ID), zap.String("agent_id", d.agent.ID), zap.Int("attempt", d.lease.Attempt))
	c.mu.Lock()
	cancelled, lost, closed := d.cancelled, d.lost, c.closed
	c.mu.Unlock()
	switch {
	case cancelled:
		log.Info("agent reply after cancel dropped", zap.String("reply", string(out.kind)))
		c.forget(d)
		return
	case lost:
		log.Warn("delivery abandoned: the task is no longer this replica's (cancelled, finished or taken over)",
			zap.String("reply", string(out.kind)))
		c.forget(d)
		return
	case out.kind == attemptSuccess:
		c.record(log, d, func(ctx context.Context) (Task, error) {
			return c.queue.Finish(ctx, d.lease, StatusCompleted, out.result, "")
		})
		return
	case closed && out.kind == attemptCancelled:
		return // aborted by Run's end, which releases it
	}
	final := StatusFailed
	if out.kind == attemptTimeout {
		final = StatusTimeout
	}
	if !out.retryable() || d.lease.Attempt > d.task.MaxRetries {
		log.Info("task failed", zap.String("reason", out.err), zap.Bool("retryable", out.retryable()))
		c.record(log, d, func(ctx context.Context) (Task, error) {
			return c.queue.Finish(ctx, d.lease, final, nil, out.err)
		})
		return
	}
	delay := c.cfg.backoff(d.lease.Attempt)
	log.Info("task attempt failed; retrying", zap.String("reason", out.err), zap.Duration("backoff", delay))
	c.record(log, d, func(ctx context.Context) (Task, error) {
		return c.queue.Retry(ctx, d.lease, out.err, delay)
	})
}

// record writes what an attempt came to, trying again while the database
// cannot be reached, for up to a lease (which the renewals keep while d is
// live); if it never can, the lease lapses and another replica delivers
// the task again.
func (c *Cluster) record(log *zap.Logger, d *delivery, write func(context.Context) (Task, error)) {
	defer c.forget(d)
	deadline := time.Now().Add(c.cfg.LeaseDuration)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		t, err := write(ctx)
		cancel()
		switch {
		case err == nil:
			if t.Status.Terminal() {
				c.metrics.finished(t)
			}
			return
		case errors.Is(err, ErrFinished):
			log.Info("outcome dropped: the task had already finished", zap.String("status", string(t.Status)))
			return
		case errors.Is(err, ErrLeaseLost):
			log.Warn("outcome dropped: another replica took the task over after its lease lapsed")
			return
		}
		if time.Now().After(deadline) {
			log.Error("recording a task's outcome failed; it is delivered again once its lease lapses", zap.Error(err))
			return
		}
		log.Warn("recording a task's outcome failed; trying again", zap.Error(err))
		select {
		case <-time.After(recordRetry):
		case <-c.base.Done():
			log.Error("recording a task's outcome failed as the replica stopped; it is delivered again once its lease lapses", zap.Error(err))
			return
		}
	}
}

// forget drops d from the live deliveries, and tells Drain when it was the
// last.
func (c *Cluster) forget(d *delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live[d.task.ID] == d {
		delete(c.live, d.task.ID)
	}
	if c.idle != nil && len(c.live) == 0 {
		close(c.idle)
		c.idle = nil
	}
}

// Get returns task id.
func (c *Cluster) Get(ctx context.Context, id string) (Task, error) { return c.queue.Get(ctx, id) }

// List returns a page of tasks.
func (c *Cluster) List(ctx context.Context, q Query) ([]Task, error) { return c.queue.List(ctx, q) }

// Cancel ends task id as cancelled, wherever it is: waiting, or being
// delivered by this replica or another (told through the queue's
// notifications, which aborts the call to the agent). ErrFinished (with
// the task) when it had already finished.
func (c *Cluster) Cancel(ctx context.Context, id string) (Task, error) {
	t, err := c.queue.Cancel(ctx, id, cancelMessage)
	if err != nil {
		return t, err
	}
	c.metrics.finished(t)
	c.abort(id)
	c.log.Info("task cancelled", zap.String("task_id", id))
	return t, nil
}

// abort stops this replica's delivery of task id, if it runs one.
func (c *Cluster) abort(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.live[id]; d != nil && !d.cancelled {
		d.cancelled = true
		d.cancel()
	}
}

// Pump looks at the queue again when waiting tasks may now start; the
// registry calls it when an agent registers or heartbeats. Only when tasks
// wait, and at most once per pumpEvery: a fleet's heartbeats (hundreds a
// second) must not each cost a claim, which reads the waiting tasks; the
// last pump of a burst is kept, so an agent that just registered is seen.
func (c *Cluster) Pump() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.backlog || c.pumpPending {
		return
	}
	wait := time.Until(c.lastPump.Add(pumpEvery))
	if wait <= 0 {
		c.lastPump = time.Now()
		c.poke()
		return
	}
	c.pumpPending = true
	time.AfterFunc(wait, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.pumpPending, c.lastPump = false, time.Now()
		c.poke()
	})
}

// poke wakes the run loop.
func (c *Cluster) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run claims and delivers tasks, listens to the other replicas, renews
// this replica's leases and takes over lapsed ones, expires waiting tasks
// and prunes finished ones, until ctx ends; then it stops the cluster
// dispatcher: deliveries still in flight are aborted and released back to
// the queue, each logged by id, and Run returns once every goroutine it
// and the deliveries started has. Call Drain first to let deliveries
// finish.
func (c *Cluster) Run(ctx context.Context) {
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	bg.Go(func() { c.listen(bgCtx) })
	bg.Go(func() { c.maintain(bgCtx) })
	defer func() {
		c.shutdown()
		stopBackground()
		bg.Wait()
	}()

	timer := time.NewTimer(0)
	defer timer.Stop()
	var due, lastPrune time.Time
	pruneEvery := min(c.cfg.Retention/4, time.Minute)
	for {
		now := time.Now()
		if !now.Before(due) {
			c.expire(ctx)
			c.refreshDepth(ctx)
			if now.Sub(lastPrune) >= pruneEvery {
				c.prune(ctx)
				lastPrune = now
			}
			due = now.Add(c.cfg.PollInterval)
		}
		c.claim(nil, nil)
		c.mu.Lock()
		next := c.next
		c.mu.Unlock()
		if next > 0 && now.Add(next).Before(due) {
			due = now.Add(next)
		}
		timer.Reset(time.Until(due))
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-timer.C:
		}
	}
}

// listen hears the other replicas until ctx ends.
func (c *Cluster) listen(ctx context.Context) {
	wake := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.backlog = true
		c.poke()
	}
	notes := Notifications{
		Wake:      wake,
		Cancelled: c.abort,
		Connected: func() {
			c.listenOnce.Do(func() { close(c.listening) })
			wake()
		},
		Error: func(err error) {
			c.log.Warn("listening for task notifications failed; reconnecting (the poll still runs)", zap.Error(err))
		},
	}
	for ctx.Err() == nil {
		err := c.queue.Listen(ctx, notes)
		if ctx.Err() != nil {
			return
		}
		c.log.Error("listening for task notifications", zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// maintain renews this replica's leases and takes over lapsed ones, every
// third of a lease, until ctx ends.
func (c *Cluster) maintain(ctx context.Context) {
	tick := time.NewTicker(c.cfg.LeaseDuration / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			c.renew(ctx)
			c.rescue(ctx)
		}
	}
}

// renew extends the leases of the deliveries running here, and aborts
// those the queue says are no longer this replica's, and those whose lease
// it could not extend for two thirds of a lease: another replica may take
// them over soon, and a task must not be delivered twice at the same time.
func (c *Cluster) renew(ctx context.Context) {
	now := time.Now()
	c.mu.Lock()
	running := make(map[string]*delivery, len(c.live))
	ids := make([]string, 0, len(c.live))
	for id, d := range c.live {
		if !d.cancelled && !d.lost {
			running[id] = d
			ids = append(ids, id)
		}
	}
	c.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	kept, err := c.queue.Renew(rctx, c.replica, ids, c.cfg.LeaseDuration)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.log.Warn("renewing task leases failed", zap.Int("tasks", len(ids)), zap.Error(err))
		for id, d := range running {
			if c.live[id] == d && !d.cancelled && now.Sub(d.renewed) > c.cfg.LeaseDuration*2/3 {
				d.lost = true
				d.cancel()
				c.log.Warn("delivery aborted: its lease could not be renewed, and another replica may take the task over",
					zap.String("task_id", id), zap.String("agent_id", d.agent.ID))
			}
		}
		return
	}
	for _, id := range kept {
		if d := running[id]; d != nil {
			d.renewed = now
		}
		delete(running, id)
	}
	// Every delivery in running was live before the renewal was sent, so
	// after its claim committed: the renewal saw its lease if it still was.
	for id, d := range running {
		if c.live[id] == d && !d.cancelled {
			d.lost = true
			d.cancel()
		}
	}
}

// rescue takes over the tasks of replicas whose leases lapsed.
func (c *Cluster) rescue(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	tasks, err := c.queue.Rescue(rctx, rescueMessage)
	if err != nil {
		c.log.Warn("taking over lapsed task leases failed", zap.Error(err))
		return
	}
	for _, t := range tasks {
		fields := []zap.Field{zap.String("task_id", t.ID), zap.String("agent_id", t.AgentID), zap.String("status", string(t.Status))}
		if t.Status.Terminal() {
			c.metrics.finished(t)
			c.log.Warn("task failed: the replica delivering it stopped, and no retries were left", fields...)
		} else {
			c.log.Warn("task taken over from a replica that stopped: it is delivered again", fields...)
		}
	}
}

// expire ends the waiting tasks past their queue deadline.
func (c *Cluster) expire(ctx context.Context) {
	ectx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	tasks, err := c.queue.ExpireWaiting(ectx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("expiring waiting tasks", zap.Error(err))
		}
		return
	}
	for _, t := range tasks {
		c.metrics.finished(t)
		c.log.Info("task timed out waiting for a free agent", zap.String("task_id", t.ID), zap.String("reason", t.Error))
	}
}

// refreshDepth updates the queue depth gauge.
func (c *Cluster) refreshDepth(ctx context.Context) {
	dctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if n, err := c.queue.Waiting(dctx); err == nil {
		c.depth.Store(int64(n))
	}
}

// prune deletes the finished tasks past their retention, and forgets the
// round-robin positions of routes unused since the last prune.
func (c *Cluster) prune(ctx context.Context) {
	c.mu.Lock()
	for rt, tn := range c.turns {
		if !tn.used {
			delete(c.turns, rt)
			continue
		}
		tn.used = false
		c.turns[rt] = tn
	}
	c.mu.Unlock()
	n, err := c.queue.Prune(ctx, c.now().Add(-c.cfg.Retention))
	if err != nil && ctx.Err() == nil {
		c.log.Error("pruning finished tasks", zap.Error(err))
	}
	if n > 0 {
		c.log.Debug("pruned finished tasks", zap.Int("count", n))
	}
}

// ShutdownStarted notes that the orchestrator is stopping; it still takes
// tasks. (Unlike the in-memory Dispatcher, nothing more is logged: the
// records outlive the process.)
func (c *Cluster) ShutdownStarted() {}

// Drain refuses new tasks (ErrShuttingDown), stops claiming, and waits
// while this replica's deliveries in flight finish. It returns nil once
// none is left, or an error wrapping ErrDrainTimeout when ctx ends first;
// Run's end releases those left to the queue. Waiting tasks are other
// replicas' (or the next pod's) to deliver.
func (c *Cluster) Drain(ctx context.Context) error {
	c.mu.Lock()
	c.draining = true
	if len(c.live) == 0 || c.closed {
		c.mu.Unlock()
		return nil
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	idle, running := c.idle, len(c.live)
	c.mu.Unlock()

	fields := []zap.Field{zap.Int("tasks", running)}
	if deadline, ok := ctx.Deadline(); ok {
		fields = append(fields, zap.Duration("within", max(0, time.Until(deadline)).Round(time.Millisecond)))
	}
	c.log.Info("draining tasks: new tasks refused, no more claimed; waiting for deliveries in flight", fields...)
	select {
	case <-idle:
		c.log.Info("drained: every delivery in flight finished", zap.Int("tasks", running))
		return nil
	case <-ctx.Done():
	}
	c.mu.Lock()
	left := len(c.live)
	c.mu.Unlock()
	if left == 0 {
		return nil
	}
	c.log.Warn("drain time is up: deliveries in flight will be aborted and released back to the queue", zap.Int("tasks", left))
	return fmt.Errorf("%w: %d task(s)", ErrDrainTimeout, left)
}

// shutdown aborts the deliveries left, waits for every claim and delivery
// to end, and releases the aborted ones back to the queue.
func (c *Cluster) shutdown() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()

	c.mu.Lock()
	left := make([]*delivery, 0, len(c.live))
	for _, d := range c.live {
		left = append(left, d)
	}
	c.live = map[string]*delivery{}
	c.mu.Unlock()
	if len(left) > 0 {
		slices.SortFunc(left, func(a, b *delivery) int { return cmp.Compare(a.task.Seq, b.task.Seq) })
		leases := make([]Lease, len(left))
		for i, d := range left {
			leases[i] = d.lease
		}
		ctx, cancel := context.WithTimeout(context.Background(), shutdownRecordTimeout)
		released, err := c.queue.Release(ctx, leases)
		cancel()
		for _, d := range left {
			fields := []zap.Field{zap.String("task_id", d.task.ID), zap.String("agent_id", d.agent.ID), zap.Int("attempt", d.lease.Attempt)}
			switch {
			case slices.Contains(released, d.task.ID):
				c.log.Warn("delivery unfinished at shutdown: the task is back in the queue, for another replica", fields...)
			case err != nil:
				c.log.Error("delivery unfinished at shutdown, and the task could not be released: another replica takes it over when its lease lapses",
					append(fields, zap.Error(err))...)
			default:
				c.log.Info("delivery unfinished at shutdown: the task had already moved on (cancelled or taken over)", fields...)
			}
		}
	}
	if t, ok := c.client.Transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}
