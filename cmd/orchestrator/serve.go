package main

import (
	"context"
	"fmt"
	"io"
	"net"
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
	"github.com/optiinfra/orchestrator/internal/logging"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/server"
)

// dotEnvFile is loaded from the working directory for local runs; real
// environment variables win over it.
const dotEnvFile = ".env"

// serve wires the service together and runs it until ctx ends.
func serve(ctx context.Context, env map[string]string, stdout io.Writer) error {
	env, err := config.WithDotEnv(env, dotEnvFile)
	if err != nil {
		return err
	}
	cfg, err := config.Load(ctx, env)
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Log, stdout)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}

	build := buildinfo.Read()
	checks := health.New(health.Options{Config: cfg.Health, Logger: log.Named("health"), Version: build.Version})
	metrics := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build.Collector(),
		checks.Collector(),
	} {
		if err := metrics.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	agents, err := registry.New(registry.Options{
		Config:  cfg.Registry,
		Store:   registry.NewMemoryStore(),
		Logger:  log.Named("agents"),
		Metrics: metrics,
	})
	if err != nil {
		return err
	}
	tasks, err := dispatch.New(dispatch.Options{
		Config:  cfg.Dispatch,
		Store:   dispatch.NewMemoryStore(),
		Agents:  agents,
		Logger:  log.Named("tasks"),
		Metrics: metrics,
	})
	if err != nil {
		return err
	}
	agents.OnChange(tasks.Pump)
	tokens, err := auth.New(cfg.Auth)
	if err != nil {
		return err // validated already; a token file may have changed since
	}
	inFlight := &inflight.Tracker{}
	handler, err := api.New(api.Options{
		Config:   cfg.API,
		Logger:   log,
		Registry: metrics,
		Health:   checks,
		Build:    build,
		InFlight: inFlight,
		Agents:   agents,
		Tasks:    tasks,
		Auth:     tokens,
	})
	if err != nil {
		return err
	}

	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Server.Address())
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("orchestrator listening",
		zap.String("address", ln.Addr().String()),
		zap.String("version", build.Version),
		zap.String("commit", build.Commit),
		zap.String("build_date", build.BuildDate),
		zap.String("go_version", build.GoVersion),
		zap.Object("config", cfg))

	// The background loops outlive ctx (the signal) on purpose: they stop
	// once the server has drained, so tasks in flight can finish.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { checks.Run(bgCtx) })
	wg.Go(func() { agents.Run(bgCtx) })
	wg.Go(func() { tasks.Run(bgCtx) })
	defer func() {
		stopBackground()
		wg.Wait()
	}()

	err = server.New(cfg.Server, log, handler, checks, inFlight).Serve(ctx, ln)
	if err != nil {
		log.Error("stopped with an error", zap.Error(err))
		return err
	}
	log.Info("stopped")
	return nil
}
