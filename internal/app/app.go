// Package app assembles the orchestrator from its parts (health,
// metrics, the agent registry, the dispatcher, tokens, the HTTP API) and
// runs it: the one wiring that cmd/orchestrator and the benchmarks share.
package app

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/inflight"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/server"
)

// Options are what New needs. TaskStore defaults to the in-memory store.
type Options struct {
	Config    *config.Config
	Logger    *zap.Logger
	Build     buildinfo.Info
	TaskStore dispatch.Store
}

// Service is the orchestrator, wired and not yet running.
type Service struct {
	Agents   *registry.Registry
	Tasks    *dispatch.Dispatcher
	Handler  http.Handler
	cfg      *config.Config
	log      *zap.Logger
	checks   *health.Health
	inFlight *inflight.Tracker
}

// New wires the service from opts.
func New(opts Options) (*Service, error) {
	cfg, log := opts.Config, opts.Logger
	s := &Service{cfg: cfg, log: log, inFlight: &inflight.Tracker{}}
	s.checks = health.New(health.Options{Config: cfg.Health, Logger: log.Named("health"), Version: opts.Build.Version})
	metrics := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		opts.Build.Collector(),
		s.checks.Collector(),
	} {
		if err := metrics.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	var err error
	s.Agents, err = registry.New(registry.Options{
		Config:  cfg.Registry,
		Store:   registry.NewMemoryStore(),
		Logger:  log.Named("agents"),
		Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	taskStore := opts.TaskStore
	if taskStore == nil {
		taskStore = dispatch.NewMemoryStore()
	}
	s.Tasks, err = dispatch.New(dispatch.Options{
		Config:  cfg.Dispatch,
		Store:   taskStore,
		Agents:  s.Agents,
		Logger:  log.Named("tasks"),
		Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	s.Agents.OnChange(s.Tasks.Pump)
	tokens, err := auth.New(cfg.Auth)
	if err != nil {
		return nil, err // validated already; a token file may have changed since
	}
	s.Handler, err = api.New(api.Options{
		Config:   cfg.API,
		Logger:   log,
		Metrics:  metrics,
		Health:   s.checks,
		Build:    opts.Build,
		InFlight: s.inFlight,
		Agents:   s.Agents,
		Tasks:    s.Tasks,
		Auth:     tokens,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Serve serves on ln until ctx ends, then drains (see internal/server).
// The background loops (health checks, agent liveness, task pruning)
// outlive ctx on purpose: they stop once the server has drained, so tasks
// in flight can finish.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { s.checks.Run(bgCtx) })
	wg.Go(func() { s.Agents.Run(bgCtx) })
	wg.Go(func() { s.Tasks.Run(bgCtx) })
	defer func() {
		stopBackground()
		wg.Wait()
	}()
	return server.New(s.cfg.Server, s.log, s.Handler, s.checks, s.inFlight).Serve(ctx, ln)
}
