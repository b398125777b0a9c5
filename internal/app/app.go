// Package app assembles the orchestrator from its parts (health,
// metrics, the agent registry, the dispatcher, tokens, the HTTP API) and
// runs it: the one wiring that cmd/orchestrator and the benchmarks share.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/inflight"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/server"
)

// Options are what New needs. TaskStore defaults to the in-memory store.
// With TaskQueue (PostgreSQL), tasks are scheduled by a dispatch.Cluster
// over it, shared with every other replica, and TaskStore is unused.
type Options struct {
	Config    *config.Config
	Logger    *zap.Logger
	Build     buildinfo.Info
	TaskStore dispatch.Store
	// Database, when set (see OpenDatabase), keeps the agents in
	// PostgreSQL, shared with every replica, and makes the database a
	// readiness dependency. The caller closes it after Serve returns.
	Database *pgxpool.Pool
	// TaskQueue, when set, is the shared task queue of several replicas:
	// tasks are dispatched by a dispatch.Cluster over it. With Database
	// set and no TaskQueue, the database's queue is used.
	TaskQueue dispatch.Queue
	// Now is the clock of the coordination engine (approvals' expiry);
	// it defaults to time.Now. Tests pass a fake one.
	Now func() time.Time
}

// Tasks is the dispatcher the service runs: dispatch.Dispatcher in memory
// (one replica), dispatch.Cluster over a shared queue (several).
type Tasks interface {
	api.Tasks
	Pump()
	Run(ctx context.Context)
	Drain(ctx context.Context) error
	ShutdownStarted()
}

// Service is the orchestrator, wired and not yet running.
type Service struct {
	Agents *registry.Registry
	Tasks  Tasks
	// Coordination coordinates agents' recommendations and runs their
	// plans through Tasks; its records are in the database when there is
	// one, else in this process's memory.
	Coordination *coordination.Engine
	Handler      http.Handler
	// Health holds the probes' checks and the started and draining
	// switches; Serve marks the service started once it listens.
	Health *health.Health
	// Metrics is the Prometheus registry /metrics serves.
	Metrics *prometheus.Registry
	// InFlight lists the requests being served.
	InFlight *inflight.Tracker
	cfg      *config.Config
	log      *zap.Logger
}

// New wires the service from opts.
func New(opts Options) (*Service, error) {
	cfg, log := opts.Config, opts.Logger
	s := &Service{cfg: cfg, log: log, InFlight: &inflight.Tracker{}, Metrics: prometheus.NewRegistry()}
	s.Health = health.New(health.Options{Config: cfg.Health, Logger: log.Named("health"), Version: opts.Build.Version})
	metrics := s.Metrics
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		opts.Build.Collector(),
		s.Health.Collector(),
	} {
		if err := metrics.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	var agentStore registry.Store = registry.NewMemoryStore()
	if opts.Database != nil {
		agentStore = postgres.NewAgentStore(opts.Database)
		s.Health.AddReadinessDependencyEvery("database", postgres.ReadinessInterval, postgres.Readiness(opts.Database))
	}
	var err error
	s.Agents, err = registry.New(registry.Options{
		Config:  cfg.Registry,
		Store:   agentStore,
		Logger:  log.Named("agents"),
		Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	if s.Tasks, err = newTasks(opts, s.Agents, metrics); err != nil {
		return nil, err
	}
	s.Agents.OnChange(s.Tasks.Pump)
	// With a database, the coordination records are shared by the
	// replicas and survive restarts; every replica sweeps, and each
	// expiry is a conditional update, so an approval expires once.
	var coordStore coordination.Store = coordination.NewMemoryStore()
	if opts.Database != nil {
		coordStore = postgres.NewCoordinationStore(opts.Database)
	}
	s.Coordination, err = coordination.NewEngine(coordination.EngineOptions{
		Store:   coordStore,
		Config:  cfg.Coordination,
		Logger:  log.Named("coordination"),
		Metrics: metrics,
		Now:     opts.Now,
		Tasks:   s.Tasks,
		Owner:   executorName(),
	})
	if err != nil {
		return nil, err
	}
	tokens, err := auth.New(cfg.Auth)
	if err != nil {
		return nil, err // validated already; a token file may have changed since
	}
	s.Handler, err = api.New(api.Options{
		Config:       cfg.API,
		Logger:       log,
		Metrics:      metrics,
		Health:       s.Health,
		Build:        opts.Build,
		InFlight:     s.InFlight,
		Agents:       s.Agents,
		Tasks:        s.Tasks,
		Coordination: s.Coordination,
		Auth:         tokens,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// executorName names this replica's plan executor in the plans' run
// leases: the pod's name (the hostname) for the operator reading them,
// and a random part, so that a pod restarted under the same name is not
// taken for its previous life.
func executorName() string {
	host, _ := os.Hostname()
	return cmp.Or(host, "orchestrator") + "/" + uuid.NewString()[:8]
}

// newTasks builds the dispatcher: a cluster over opts.TaskQueue when set,
// else one over opts.TaskStore or memory.
func newTasks(opts Options, agents *registry.Registry, metrics prometheus.Registerer) (Tasks, error) {
	log := opts.Logger.Named("tasks")
	if opts.TaskQueue == nil && opts.Database != nil {
		opts.TaskQueue = postgres.NewTaskStore(opts.Database)
	}
	if opts.TaskQueue != nil {
		return dispatch.NewCluster(dispatch.ClusterOptions{
			Config: opts.Config.Dispatch, Queue: opts.TaskQueue, Agents: agents, Logger: log, Metrics: metrics,
		})
	}
	store := opts.TaskStore
	if store == nil {
		store = dispatch.NewMemoryStore()
	}
	return dispatch.New(dispatch.Options{Config: opts.Config.Dispatch, Store: store, Agents: agents, Logger: log, Metrics: metrics})
}

// Serve serves on ln until ctx ends, then drains (see internal/server)
// and lets the accepted tasks finish. The shutdown budget counts from the
// moment ctx ends: SHUTDOWN_DELAY of serving, then SHUTDOWN_TIMEOUT, the
// same for requests and tasks, so the process exits within the grace
// period the chart computes from them. Tasks run through the whole
// budget, overlapping the HTTP drain (those accepted during the delay
// run too); once the server has stopped, Serve waits for the tasks left
// until the budget's end, then the dispatcher aborts, records and logs
// the unfinished ones. The background loops (see Start) outlive ctx on
// purpose: they stop last.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	stopBackground := s.Start(ctx)
	defer stopBackground()

	signalled := make(chan time.Time, 1)
	stopWatching := context.AfterFunc(ctx, func() {
		s.Tasks.ShutdownStarted()
		signalled <- time.Now()
	})
	err := server.New(s.cfg.Server, s.log, s.Handler, s.Health, s.InFlight).Serve(ctx, ln)
	if stopWatching() {
		return err // the server failed before any shutdown signal: stop now
	}
	budget := s.cfg.Server.ShutdownDelay + s.cfg.Server.ShutdownTimeout
	drainCtx, cancel := context.WithDeadline(context.Background(), (<-signalled).Add(budget))
	defer cancel()
	return errors.Join(err, s.Tasks.Drain(drainCtx))
}

// Start runs the background loops (health checks, agent liveness, task
// delivery and pruning, the coordination sweep) and returns the function that stops them and waits
// for them to end. ctx lends the loops its values, not its end: they run
// until stop is called. Serve starts them itself; Start is for driving
// Handler without serving (the API tests do), where the caller marks the
// service started (Health.MarkStarted) as the server would once listening.
// Register readiness checks before Start: Health refuses them after.
func (s *Service) Start(ctx context.Context) (stop func()) {
	bgCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.Health.Freeze()
	var wg sync.WaitGroup
	wg.Go(func() { s.Health.Run(bgCtx) })
	wg.Go(func() { s.Agents.Run(bgCtx) })
	wg.Go(func() { s.Tasks.Run(bgCtx) })
	wg.Go(func() { s.Coordination.Run(bgCtx) })
	return func() {
		cancel()
		wg.Wait()
	}
}
