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
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/inflight"
	"github.com/optiinfra/orchestrator/internal/logging"
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
	registry := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build.Collector(),
		checks.Collector(),
	} {
		if err := registry.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	inFlight := &inflight.Tracker{}
	handler, err := api.New(api.Options{
		Config:   cfg.API,
		Logger:   log,
		Registry: registry,
		Health:   checks,
		Build:    build,
		InFlight: inFlight,
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

	healthCtx, stopHealth := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { checks.Run(healthCtx) })
	defer func() {
		stopHealth()
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
