// Package dispatch runs tasks: it chooses a healthy, capable agent,
// delivers the task, retries and fails over when that can help, and
// records the outcome in a Store.
//
// Scheduling state (tasks in flight per agent, the waiting queues) lives
// in the Dispatcher under one mutex; task records live in the Store. The
// Store is the authority on terminal states: every change goes through
// Store.Update, which refuses to touch a terminal task, so a late agent
// reply after a cancel or a timeout can never overwrite the outcome.
//
// Stopping has two steps. Drain refuses new tasks and lets the accepted
// ones finish, until its context ends; then Run's end aborts what is
// left, records each such task as failed and logs it by id: no accepted
// task ends without a terminal state and a log line.
package dispatch

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/config/bound"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// Config sets how tasks are scheduled, retried and kept.
type Config struct {
	// AgentConcurrency is how many tasks one agent gets at once; more
	// wait in a queue, highest priority first.
	AgentConcurrency int `env:"TASK_AGENT_CONCURRENCY, default=4"`
	// MaxPending bounds the queue of waiting tasks; beyond it a submission
	// is refused with 429.
	MaxPending int `env:"TASK_MAX_PENDING, default=10000"`
	// Retention is how long a finished task stays readable.
	Retention time.Duration `env:"TASK_RETENTION, default=1h"`
	// RetryBackoff is the delay before the first retry; it doubles with
	// each retry up to RetryBackoffMax, with jitter.
	RetryBackoff    time.Duration `env:"TASK_RETRY_BACKOFF, default=500ms"`
	RetryBackoffMax time.Duration `env:"TASK_RETRY_BACKOFF_MAX, default=30s"`
	// MaxResultBytes bounds the agent reply the orchestrator reads.
	MaxResultBytes int64 `env:"TASK_MAX_RESULT_BYTES, default=4194304"`
	// LeaseDuration (with a database) is how long a replica's claim on a
	// task it delivers lasts unless renewed (every third of it): when a
	// replica dies, another takes its tasks over after at most this long.
	LeaseDuration time.Duration `env:"TASK_LEASE_DURATION, default=15s"`
	// PollInterval (with a database) is how often each replica looks at
	// the shared queue when no notification woke it: a safety net only,
	// new work and freed slots are announced at once.
	PollInterval time.Duration `env:"TASK_POLL_INTERVAL, default=5s"`
}

// Limits of the settings, from how they are used. Run prunes every
// Retention/4 (a ticker: it must be positive), so under a second it would
// spin; past a year the memory store only grows. backoff shifts
// RetryBackoff left up to MaxRetriesLimit times, which an hour survives
// without overflowing; a retry delay over an hour outlives any task
// timeout. MaxResultBytes+1 bounds the read of a reply, so it must stay
// far from the largest int64; a gibibyte is already more than a reply
// held in memory should be. A lease is renewed every third of its
// duration: under a second, a garbage-collection pause or a slow commit
// would let another replica take over a task still being delivered; past
// an hour a dead replica's tasks wait that long. A poll under 100ms is
// the tight loop notifications exist to avoid.
const (
	minRetention        = time.Second
	maxRetention        = 365 * 24 * time.Hour
	minRetryBackoff     = time.Millisecond
	maxRetryBackoff     = time.Hour
	maxAgentConcurrency = 10_000
	maxPendingLimit     = 1_000_000
	minMaxResultBytes   = 1024
	maxMaxResultBytes   = 1 << 30
	minLeaseDuration    = time.Second
	maxLeaseDuration    = time.Hour
	minPollInterval     = 100 * time.Millisecond
	maxPollInterval     = time.Hour
)

// Validate reports every setting that cannot be used, naming its variable.
func (c Config) Validate() error {
	errs := []error{
		bound.Int("TASK_AGENT_CONCURRENCY", int64(c.AgentConcurrency), 1, maxAgentConcurrency),
		bound.Int("TASK_MAX_PENDING", int64(c.MaxPending), 0, maxPendingLimit),
		bound.Duration("TASK_RETENTION", c.Retention, minRetention, maxRetention),
		bound.Duration("TASK_RETRY_BACKOFF", c.RetryBackoff, minRetryBackoff, maxRetryBackoff),
		bound.Int("TASK_MAX_RESULT_BYTES", c.MaxResultBytes, minMaxResultBytes, maxMaxResultBytes),
		bound.Duration("TASK_LEASE_DURATION", c.LeaseDuration, minLeaseDuration, maxLeaseDuration),
		bound.Duration("TASK_POLL_INTERVAL", c.PollInterval, minPollInterval, maxPollInterval),
	}
	if c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("TASK_RETRY_BACKOFF_MAX=%q: must be at least TASK_RETRY_BACKOFF (%s)", c.RetryBackoffMax, c.RetryBackoff))
	} else {
		errs = append(errs, bound.Duration("TASK_RETRY_BACKOFF_MAX", c.RetryBackoffMax, minRetryBackoff, maxRetryBackoff))
	}
	return errors.Join(errs...)
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddInt("agent_concurrency", c.AgentConcurrency)
	enc.AddInt("max_pending", c.MaxPending)
	enc.AddDuration("retention", c.Retention)
	enc.AddDuration("retry_backoff", c.RetryBackoff)
	enc.AddDuration("retry_backoff_max", c.RetryBackoffMax)
	enc.AddInt64("max_result_bytes", c.MaxResultBytes)
	enc.AddDuration("lease_duration", c.LeaseDuration)
	enc.AddDuration("poll_interval", c.PollInterval)
	return nil
}

// Errors Submit and Cancel return besides the stores' and FieldErrors.
var (
	// ErrNoCapableAgent: no agent can take the task now (503).
	ErrNoCapableAgent = errors.New("no capable agent")
	// ErrQueueFull: TASK_MAX_PENDING tasks are already waiting (429).
	ErrQueueFull = errors.New("task queue full")
	// ErrShuttingDown: the orchestrator is stopping (503).
	ErrShuttingDown = errors.New("orchestrator shutting down")
	// ErrDrainTimeout: Drain's context ended with tasks unfinished.
	ErrDrainTimeout = errors.New("shutdown timeout: tasks unfinished")
)

// Agents is what the dispatcher needs of the registry.
type Agents interface {
	Get(ctx context.Context, id string) (registry.Agent, error)
	Routable(ctx context.Context, typ registry.Type, capability string, buf []registry.Candidate) ([]registry.Candidate, error)
	Guard() *registry.Guard
}

// Options are the Dispatcher's collaborators. Client, Now and NewID
// default to a delivery client that only connects inside the agents'
// allowed networks, the real clock and UUIDs.
type Options struct {
	Config  Config
	Store   Store
	Agents  Agents
	Logger  *zap.Logger
	Metrics prometheus.Registerer
	Client  *http.Client
	Now     func() time.Time
	NewID   func() string
}

// Dispatcher schedules and delivers tasks.
type Dispatcher struct {
	cfg     Config
	store   Store
	agents  Agents
	log     *zap.Logger
	client  *http.Client
	now     func() time.Time
	newID   func() string
	metrics *metrics

	// base is the parent of every delivery attempt; stop cancels it.
	base context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu sync.Mutex
	// stopping logs each outcome (ShutdownStarted); draining also refuses
	// new tasks (Drain); closed also stops starting any (Run's end).
	stopping bool
	draining bool
	closed   bool
	// idle is closed when the last live job goes while Drain waits.
	idle     chan struct{}
	inFlight map[string]int // agent ID -> attempts in flight
	// turns is each route's round-robin position; Run forgets the routes
	// that had no choice to make since its previous tick, so the map
	// holds the routes in use, not every task type and pinned agent seen.
	turns   map[route]turn
	queues  map[route]*jobQueue
	pending int
	jobs    map[string]*job // tasks not yet terminal, by ID
	buf     []registry.Candidate
}

// route is what decides which agents can take a task.
type route struct {
	agentType registry.Type
	taskType  string
	pinned    string
}

// turn is where a route's round robin stands.
type turn struct {
	next uint64
	used bool // since Run's last prune
}

// job is the dispatcher's state for one live task.
type job struct {
	task  Task // as submitted; Seq set once stored
	route route
	// index is the job's place in its route's queue, -1 when not queued.
	index    int
	attempts int             // attempts started
	tried    map[string]bool // agents an attempt went to
	// timer is the queue deadline while queued, the backoff while retrying
	// (see afterLocked).
	timer *time.Timer
	// cancelAttempt aborts the attempt in flight, if any.
	cancelAttempt context.CancelFunc
	cancelled     bool
	lastErr       string
}

// New returns a Dispatcher; call Run to prune finished tasks and to stop
// it.
func New(opts Options) (*Dispatcher, error) {
	d := &Dispatcher{
		cfg:      opts.Config,
		store:    opts.Store,
		agents:   opts.Agents,
		log:      opts.Logger,
		client:   opts.Client,
		now:      opts.Now,
		newID:    opts.NewID,
		inFlight: map[string]int{},
		turns:    map[route]turn{},
		queues:   map[route]*jobQueue{},
		jobs:     map[string]*job{},
	}
	if d.log == nil {
		d.log = zap.NewNop()
	}
	if d.client == nil {
		d.client = NewClient(opts.Agents.Guard())
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.newID == nil {
		d.newID = uuid.NewString
	}
	d.base, d.stop = context.WithCancel(context.Background())
	var err error
	if d.metrics, err = newMetrics(opts.Metrics, d.queueDepth, d.tasksInFlight); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// queueDepth is the queue depth gauge's value: the tasks waiting.
func (d *Dispatcher) queueDepth() float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return float64(d.pending)
}

// tasksInFlight is the in-flight gauge's value: the deliveries running.
func (d *Dispatcher) tasksInFlight() float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.inFlight {
		n += c
	}
	return float64(n)
}

// Submit validates req, checks that an agent can take it, stores it and
// starts it at once when an agent has a free slot, else queues it.
func (d *Dispatcher) Submit(ctx context.Context, req Request) (Task, error) {
	t, err := req.validate()
	if err != nil {
		return Task{}, err
	}
	rt := route{agentType: t.AgentType, taskType: t.TaskType, pinned: t.PinnedAgentID}
	if rt.pinned != "" {
		if err := d.checkPinned(ctx, rt); err != nil {
			return Task{}, err
		}
	}
	t.ID, t.CreatedAt = cmp.Or(req.ID, d.newID()), d.now().UTC()
	j := &job{task: t, route: rt, index: -1, tried: map[string]bool{}}

	d.mu.Lock()
	if d.draining || d.closed {
		d.mu.Unlock()
		return Task{}, ErrShuttingDown
	}
	candidates, err := d.candidatesLocked(ctx, rt)
	if err != nil {
		d.mu.Unlock()
		return Task{}, err
	}
	if len(candidates) == 0 {
		d.mu.Unlock()
		d.metrics.rejected.WithLabelValues("no_capable_agent").Inc()
		return Task{}, noAgentError(rt)
	}
	agent, ok := d.chooseLocked(j, candidates)
	if !ok && d.pending >= d.cfg.MaxPending {
		waiting := d.pending
		d.mu.Unlock()
		d.metrics.rejected.WithLabelValues("queue_full").Inc()
		return Task{}, fmt.Errorf("%w: %d tasks are waiting for an agent (TASK_MAX_PENDING)", ErrQueueFull, waiting)
	}
	if ok {
		d.reserveLocked(j, agent)
		t.Status, t.AgentID, t.StartedAt = StatusDispatched, agent.ID, t.CreatedAt
	}
	d.mu.Unlock()

	stored, err := d.store.Create(ctx, t)
	if err != nil {
		if ok {
			d.release(j, agent.ID)
		}
		return Task{}, err
	}
	j.task.Seq = stored.Seq
	d.metrics.submitted.WithLabelValues(string(t.AgentType)).Inc()

	d.mu.Lock()
	if d.closed {
		// Run stopped while the task was being stored, and missed this job.
		if ok {
			d.releaseLocked(j, agent.ID)
		}
		d.mu.Unlock()
		d.finish(j, StatusFailed, nil, "the orchestrator shut down before the task could start")
		return Task{}, ErrShuttingDown
	}
	d.jobs[t.ID] = j
	if ok {
		d.startLocked(j, agent)
	} else {
		d.enqueueLocked(j)
		d.pumpLocked()
	}
	d.mu.Unlock()
	return stored, nil
}

// NoAgentError explains why no agent can take a task.
type NoAgentError struct{ msg string }

func (e *NoAgentError) Error() string { return e.msg }

// Unwrap makes errors.Is(err, ErrNoCapableAgent) true.
func (e *NoAgentError) Unwrap() error { return ErrNoCapableAgent }

func noAgentError(rt route) error {
	if rt.pinned != "" {
		return &NoAgentError{fmt.Sprintf("agent %s is not healthy: it cannot take %q tasks now", rt.pinned, rt.taskType)}
	}
	return &NoAgentError{fmt.Sprintf("no healthy %s agent has the capability %q", rt.agentType, rt.taskType)}
}

// checkPinned explains why a pinned agent cannot take the task, if it
// cannot. An agent that is unknown, of another type or without the
// capability is a mistake in the request (a FieldError: 400), which a
// retry cannot mend; one that is only unhealthy now is left to routing
// (503: that can change).
func (d *Dispatcher) checkPinned(ctx context.Context, rt route) error {
	return checkPinned(ctx, d.agents, rt)
}

func checkPinned(ctx context.Context, agents Agents, rt route) error {
	a, err := agents.Get(ctx, rt.pinned)
	pinnedErr := func(format string, args ...any) error {
		return &registry.FieldError{Field: "agent_id", Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return pinnedErr("agent %.64q is not registered", rt.pinned)
	case err != nil:
		return err
	case a.Type != rt.agentType:
		return pinnedErr("agent %s is a %s agent, not %s", a.ID, a.Type, rt.agentType)
	case !a.HasCapability(rt.taskType):
		return pinnedErr("agent %s does not have the capability %q", a.ID, rt.taskType)
	}
	return nil
}

// candidatesLocked returns the agents that may take tasks of rt now,
// regardless of their load, in d.buf.
func (d *Dispatcher) candidatesLocked(ctx context.Context, rt route) ([]registry.Candidate, error) {
	cands, err := d.agents.Routable(ctx, rt.agentType, rt.taskType, d.buf[:0])
	d.buf = cands[:0]
	if err != nil || rt.pinned == "" {
		return cands, err
	}
	for _, c := range cands {
		if c.ID == rt.pinned {
			return []registry.Candidate{c}, nil
		}
	}
	return nil, nil
}

// chooseLocked picks the agent for j's next attempt (see pick).
func (d *Dispatcher) chooseLocked(j *job, candidates []registry.Candidate) (registry.Candidate, bool) {
	return pick(candidates, d.cfg.AgentConcurrency,
		func(id string) int { return d.inFlight[id] },
		func(id string) bool { return j.tried[id] },
		func() uint64 {
			tn := d.turns[j.route]
			d.turns[j.route] = turn{next: tn.next + 1, used: true}
			return tn.next
		})
}

// pick chooses, among candidates with a free slot (load under limit), an
// agent not tried yet if there is one (failover), the least loaded, and
// among equals the next in round-robin order: next returns the route's
// turn, and is called only when there is a choice (never for a pinned
// task).
func pick(candidates []registry.Candidate, limit int, load func(string) int, tried func(string) bool, next func() uint64) (registry.Candidate, bool) {
	type rank struct {
		tried bool
		load  int
	}
	better := func(a, b rank) bool {
		if a.tried != b.tried {
			return !a.tried
		}
		return a.load < b.load
	}
	var best rank
	ties := 0
	for _, c := range candidates {
		l := load(c.ID)
		if l >= limit {
			continue
		}
		r := rank{tried(c.ID), l}
		switch {
		case ties == 0 || better(r, best):
			best, ties = r, 1
		case r == best:
			ties++
		}
	}
	if ties == 0 {
		return registry.Candidate{}, false
	}
	var n uint64
	if ties > 1 {
		n = next() % uint64(ties)
	}
	for _, c := range candidates {
		l := load(c.ID)
		if l < limit && (rank{tried(c.ID), l}) == best {
			if n == 0 {
				return c, true
			}
			n--
		}
	}
	panic("dispatch: pick lost a tie") // unreachable: ties counted above
}

// reserveLocked takes a slot of agent for j's next attempt.
func (d *Dispatcher) reserveLocked(j *job, agent registry.Candidate) {
	d.inFlight[agent.ID]++
	j.attempts++
	j.tried[agent.ID] = true
}

// startLocked runs j's attempt on agent (whose slot is reserved).
func (d *Dispatcher) startLocked(j *job, agent registry.Candidate) {
	ctx, cancel := context.WithTimeout(d.base, time.Duration(j.task.TimeoutSeconds)*time.Second)
	j.cancelAttempt = cancel
	d.wg.Go(func() {
		defer cancel()
		d.attempt(ctx, j, agent)
	})
}

// release gives back agent's slot and lets waiting tasks have it.
func (d *Dispatcher) release(j *job, agentID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseLocked(j, agentID)
	d.pumpLocked()
}

// releaseLocked gives back agent's slot: every release goes through it, so
// an agent with nothing in flight leaves no entry behind.
func (d *Dispatcher) releaseLocked(j *job, agentID string) {
	d.inFlight[agentID]--
	if d.inFlight[agentID] <= 0 {
		delete(d.inFlight, agentID)
	}
	j.cancelAttempt = nil
}

// enqueueLocked puts j in its route's queue until an agent is free or
// timeout_seconds pass.
func (d *Dispatcher) enqueueLocked(j *job) {
	q := d.queues[j.route]
	if q == nil {
		q = &jobQueue{}
		d.queues[j.route] = q
	}
	heap.Push(q, j)
	d.pending++
	wait := time.Duration(j.task.TimeoutSeconds) * time.Second
	j.timer = d.afterLocked(wait, func() { d.expire(j, wait) })
}

// afterLocked runs f after delay, on a goroutine the dispatcher owns: it
// counts in d.wg from now, so shutdown waits for it to finish, unless
// stopTimerLocked stops it before it fires. Never called once closed.
func (d *Dispatcher) afterLocked(delay time.Duration, f func()) *time.Timer {
	d.wg.Add(1)
	return time.AfterFunc(delay, func() {
		defer d.wg.Done()
		f()
	})
}

// stopTimerLocked stops j's timer. One stopped before it fired will never
// run, so nothing waits for it any more; one that fired counts itself out.
func (d *Dispatcher) stopTimerLocked(j *job) {
	if j.timer != nil && j.timer.Stop() {
		d.wg.Done()
	}
	j.timer = nil
}

// dequeueLocked takes j out of its queue.
func (d *Dispatcher) dequeueLocked(j *job) {
	q := d.queues[j.route]
	if q == nil || j.index < 0 {
		return
	}
	q.remove(j)
	d.pending--
	if q.Len() == 0 {
		delete(d.queues, j.route)
	}
}

// Pump starts waiting tasks that an agent can now take; the registry calls
// it when an agent registers or heartbeats.
func (d *Dispatcher) Pump() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pumpLocked()
}

// pumpLocked starts queued jobs while agents have free slots, always the
// best waiting job first across routes (priority, then age). When a
// route's best job cannot start, no job of that route can, so the route
// is skipped for the rest of this pump.
func (d *Dispatcher) pumpLocked() {
	if d.pending == 0 || d.closed {
		return
	}
	blocked := map[route]bool{}
	for {
		var best *jobQueue
		for rt, q := range d.queues {
			if !blocked[rt] && (best == nil || jobQueue{(*q)[0], (*best)[0]}.Less(0, 1)) {
				best = q
			}
		}
		if best == nil {
			return
		}
		j := (*best)[0]
		candidates, err := d.candidatesLocked(d.base, j.route)
		if err != nil {
			d.log.Error("listing agents for waiting tasks", zap.Error(err))
			return
		}
		agent, ok := d.chooseLocked(j, candidates)
		if !ok {
			blocked[j.route] = true
			continue
		}
		d.dequeueLocked(j)
		d.stopTimerLocked(j)
		d.reserveLocked(j, agent)
		d.startLocked(j, agent)
	}
}

// attempt delivers j to agent once and acts on the outcome.
func (d *Dispatcher) attempt(ctx context.Context, j *job, agent registry.Candidate) {
	id := j.task.ID
	_, err := d.update(id, func(t *Task) error {
		t.Status, t.AgentID, t.RetryCount = StatusDispatched, agent.ID, j.attempts-1
		if t.StartedAt.IsZero() {
			t.StartedAt = d.now().UTC()
		}
		return nil
	})
	if err != nil {
		d.release(j, agent.ID)
		if !errors.Is(err, ErrFinished) {
			d.log.Error("recording a task as dispatched", zap.String("task_id", id), zap.Error(err))
			d.finish(j, StatusFailed, nil, "the orchestrator could not record the task: "+err.Error())
		} else {
			d.forget(j)
		}
		return
	}
	out := deliver(ctx, d.client, d.cfg.MaxResultBytes, j.task, agent)
	d.metrics.attempts.WithLabelValues(string(j.task.AgentType), string(out.kind)).Inc()
	d.release(j, agent.ID)
	d.settle(j, agent, out)
}

// settle moves j on after an attempt: done, retried, or failed for good.
func (d *Dispatcher) settle(j *job, agent registry.Candidate, out outcome) {
	log := d.log.With(zap.String("task_id", j.task.ID), zap.String("agent_id", agent.ID), zap.Int("attempt", j.attempts))
	d.mu.Lock()
	cancelled, closed := j.cancelled, d.closed
	d.mu.Unlock()
	switch {
	case cancelled:
		log.Info("agent reply after cancel dropped", zap.String("reply", string(out.kind)))
		return
	case out.kind == attemptSuccess:
		d.finish(j, StatusCompleted, out.result, "")
		return
	case closed:
		return // aborted by Run's end, which records and logs the task
	}
	j.lastErr = out.err
	final := StatusFailed
	if out.kind == attemptTimeout {
		final = StatusTimeout
	}
	if !out.retryable() || j.attempts > j.task.MaxRetries {
		log.Info("task failed", zap.String("reason", out.err), zap.Bool("retryable", out.retryable()))
		d.finish(j, final, nil, out.err)
		return
	}
	delay := d.backoff(j.attempts)
	log.Info("task attempt failed; retrying", zap.String("reason", out.err), zap.Duration("backoff", delay))
	if _, err := d.update(j.task.ID, func(t *Task) error {
		t.Status, t.Error = StatusRetrying, out.err
		return nil
	}); err != nil {
		if !errors.Is(err, ErrFinished) {
			d.finish(j, final, nil, out.err)
		}
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if j.cancelled || d.closed {
		return
	}
	j.timer = d.afterLocked(delay, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if j.cancelled || d.closed {
			return
		}
		d.enqueueLocked(j)
		d.pumpLocked()
	})
}

// backoff is the delay before retry n (1-based): exponential, capped, and
// jittered over its upper half so that retries of many tasks spread out.
func (d *Dispatcher) backoff(n int) time.Duration { return d.cfg.backoff(n) }

func (c Config) backoff(n int) time.Duration {
	delay := c.RetryBackoffMax
	if n-1 < 30 {
		delay = min(c.RetryBackoff<<(n-1), c.RetryBackoffMax)
	}
	return delay/2 + rand.N(delay/2+1) //nolint:gosec // G404: jitter needs spread, not secrecy
}

// expire fails j with timeout when it waited its whole timeout in a queue.
func (d *Dispatcher) expire(j *job, waited time.Duration) {
	d.mu.Lock()
	if j.index < 0 || j.cancelled || d.closed {
		d.mu.Unlock()
		return
	}
	d.dequeueLocked(j)
	d.mu.Unlock()
	msg := fmt.Sprintf("no %s agent with the capability %q had a free slot within %s", j.route.agentType, j.route.taskType, waited)
	if j.lastErr != "" {
		msg += "; last attempt: " + j.lastErr
	}
	// Logged like a task that failed after its attempts ("task failed").
	d.log.Info("task timed out waiting for a free agent", zap.String("task_id", j.task.ID), zap.String("reason", msg))
	d.finish(j, StatusTimeout, nil, msg)
}

// finish records j's terminal state and forgets j.
func (d *Dispatcher) finish(j *job, status Status, result []byte, msg string) {
	t, err := d.update(j.task.ID, func(t *Task) error {
		t.Status, t.Result, t.Error, t.CompletedAt = status, result, msg, d.now().UTC()
		return nil
	})
	stopping := d.forget(j)
	switch {
	case errors.Is(err, ErrFinished):
		d.log.Info("outcome dropped: the task had already finished",
			zap.String("task_id", j.task.ID), zap.String("dropped", string(status)), zap.String("status", string(t.Status)))
	case err != nil:
		d.log.Error("recording a task's outcome", zap.String("task_id", j.task.ID), zap.Error(err))
	default:
		d.metrics.finished(t)
		if stopping {
			// The record goes with the process, and the API that serves
			// it stops soon: the log keeps the outcome.
			d.log.Info("task finished during shutdown",
				zap.String("task_id", j.task.ID), zap.String("status", string(t.Status)), zap.String("agent_id", t.AgentID))
		}
	}
}

// forget drops j from the live jobs, and reports whether the orchestrator
// is stopping.
func (d *Dispatcher) forget(j *job) (stopping bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgetLocked(j)
	return d.stopping
}

// forgetLocked drops j from the live jobs, and tells Drain when it was
// the last.
func (d *Dispatcher) forgetLocked(j *job) {
	if d.jobs[j.task.ID] == j {
		delete(d.jobs, j.task.ID)
	}
	if d.idle != nil && len(d.jobs) == 0 {
		close(d.idle)
		d.idle = nil
	}
}

// update changes a task in the store with a deadline of its own: outcomes
// are recorded even while the dispatcher stops.
func (d *Dispatcher) update(id string, change func(*Task) error) (Task, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return d.store.Update(ctx, id, change)
}

const storeTimeout = 5 * time.Second

// Get returns task id.
func (d *Dispatcher) Get(ctx context.Context, id string) (Task, error) {
	return d.store.Get(ctx, id)
}

// List returns a page of tasks.
func (d *Dispatcher) List(ctx context.Context, q Query) ([]Task, error) {
	return d.store.List(ctx, q)
}

// Cancel stops task id: it is marked cancelled, taken out of its queue,
// and its attempt in flight is aborted. ErrFinished (with the task) when it
// had already finished.
func (d *Dispatcher) Cancel(ctx context.Context, id string) (Task, error) {
	t, err := d.store.Update(ctx, id, func(t *Task) error {
		t.Status, t.CompletedAt = StatusCancelled, d.now().UTC()
		t.Error = "cancelled by an operator"
		return nil
	})
	if err != nil {
		return t, err
	}
	d.metrics.finished(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	if j := d.jobs[id]; j != nil {
		j.cancelled = true
		d.forgetLocked(j)
		d.dequeueLocked(j)
		d.stopTimerLocked(j)
		if j.cancelAttempt != nil {
			j.cancelAttempt()
		}
	}
	d.log.Info("task cancelled", zap.String("task_id", id))
	return t, nil
}

// Run prunes finished tasks past their retention until ctx ends, then
// stops the dispatcher: attempts in flight are aborted, every task not
// finished yet is recorded as failed and logged by id with the state it
// was in, and Run returns once every delivery goroutine and every timer
// function (queue deadlines, retry backoffs) has. Call Drain first to let
// accepted tasks finish.
func (d *Dispatcher) Run(ctx context.Context) {
	tick := time.NewTicker(min(d.cfg.Retention/4, time.Minute))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			d.shutdown()
			return
		case <-tick.C:
			d.pruneTurns()
			n, err := d.store.Prune(ctx, d.now().Add(-d.cfg.Retention))
			if err != nil && ctx.Err() == nil {
				d.log.Error("pruning finished tasks", zap.Error(err))
			}
			if n > 0 {
				d.log.Debug("pruned finished tasks", zap.Int("count", n))
			}
		}
	}
}

// pruneTurns forgets the round-robin position of the routes that had no
// choice to make since the last prune; a route back in use starts over,
// which costs nothing but the order of one rotation.
func (d *Dispatcher) pruneTurns() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for rt, tn := range d.turns {
		if !tn.used {
			delete(d.turns, rt)
			continue
		}
		tn.used = false
		d.turns[rt] = tn
	}
}

// ShutdownStarted notes that the orchestrator is stopping; it still takes
// tasks. From now on each task that finishes is logged with its outcome:
// its record goes with the process, and the API that serves it stops
// soon.
func (d *Dispatcher) ShutdownStarted() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopping = true
}

// Drain refuses new tasks (ErrShuttingDown) and waits while the accepted
// ones finish: deliveries in flight, queued tasks as agents free up,
// retries after their backoff. It returns nil once none is left, or an
// error wrapping ErrDrainTimeout when ctx ends first; the tasks left are
// Run's to abort and record when its context ends. Call it once nothing
// submits any more (the HTTP server has stopped).
func (d *Dispatcher) Drain(ctx context.Context) error {
	d.mu.Lock()
	d.stopping, d.draining = true, true
	if len(d.jobs) == 0 || d.closed {
		d.mu.Unlock()
		return nil
	}
	if d.idle == nil {
		d.idle = make(chan struct{})
	}
	idle, waiting := d.idle, len(d.jobs)
	d.mu.Unlock()

	fields := []zap.Field{zap.Int("tasks", waiting)}
	if deadline, ok := ctx.Deadline(); ok {
		fields = append(fields, zap.Duration("within", max(0, time.Until(deadline)).Round(time.Millisecond)))
	}
	d.log.Info("draining tasks: new tasks refused, waiting for accepted ones to finish", fields...)
	select {
	case <-idle:
		d.log.Info("drained: every accepted task finished", zap.Int("tasks", waiting))
		return nil
	case <-ctx.Done():
	}
	d.mu.Lock()
	left := len(d.jobs)
	d.mu.Unlock()
	if left == 0 {
		return nil
	}
	d.log.Warn("drain time is up: unfinished tasks will be aborted and recorded as failed", zap.Int("tasks", left))
	return fmt.Errorf("%w: %d task(s)", ErrDrainTimeout, left)
}

// shutdownRecordTimeout bounds the recording of the tasks Run's end fails:
// the process must exit within the pod's grace period, whose slack is a
// few seconds.
const shutdownRecordTimeout = 2 * time.Second

func (d *Dispatcher) shutdown() {
	d.mu.Lock()
	d.closed = true
	seen := make(map[*job]Status, len(d.jobs))
	for _, j := range d.jobs {
		d.stopTimerLocked(j)
		seen[j] = j.stateLocked()
		d.dequeueLocked(j)
	}
	d.mu.Unlock()
	d.stop()
	d.wg.Wait()

	// What the attempts and timers did not finish themselves is left.
	d.mu.Lock()
	left := make([]*job, 0, len(d.jobs))
	for _, j := range d.jobs {
		left = append(left, j)
	}
	d.mu.Unlock()
	slices.SortFunc(left, func(a, b *job) int { return cmp.Compare(a.task.Seq, b.task.Seq) })
	ctx, cancel := context.WithTimeout(context.Background(), shutdownRecordTimeout)
	defer cancel()
	for _, j := range left {
		d.abandon(ctx, j, seen[j])
	}
	if t, ok := d.client.Transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// stateLocked is the status j has in the dispatcher's eyes.
func (j *job) stateLocked() Status {
	switch {
	case j.cancelAttempt != nil:
		return StatusDispatched
	case j.attempts == 0:
		return StatusPending
	}
	return StatusRetrying
}

// abandon records j, unfinished when the dispatcher stopped, as failed and
// names it in the log with the state it was in.
func (d *Dispatcher) abandon(ctx context.Context, j *job, seen Status) {
	msg := "the orchestrator shut down before the task could run"
	if seen == StatusDispatched {
		msg = "the orchestrator shut down before the agent answered"
	}
	if j.lastErr != "" {
		msg += "; last attempt: " + j.lastErr
	}
	was := seen
	t, err := d.store.Update(ctx, j.task.ID, func(t *Task) error {
		was = t.Status
		t.Status, t.Error, t.CompletedAt = StatusFailed, msg, d.now().UTC()
		return nil
	})
	d.forget(j)
	fields := []zap.Field{
		zap.String("task_id", j.task.ID), zap.String("status", string(was)),
		zap.String("agent_type", string(j.task.AgentType)), zap.String("task_type", j.task.TaskType),
		zap.Int("attempts", j.attempts),
	}
	if t.AgentID != "" {
		fields = append(fields, zap.String("agent_id", t.AgentID))
	}
	switch {
	case errors.Is(err, ErrFinished): // cancelled meanwhile: it has its outcome
		d.log.Debug("task finished as the orchestrator stopped", append(fields, zap.String("outcome", string(t.Status)))...)
	case err != nil:
		d.log.Error("task unfinished at shutdown, and its failure could not be recorded", append(fields, zap.Error(err))...)
	default:
		d.metrics.finished(t)
		d.log.Warn("task unfinished at shutdown: recorded as failed", fields...)
	}
}
