package main

import (
	"context"
	"fmt"
	"io"
	"net"

	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/app"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/logging"
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
	opts := app.Options{Config: cfg, Logger: log, Build: build}
	if cfg.Database.Enabled() {
		// Closed last: after Serve has drained requests and tasks and
		// stopped the background loops that use it.
		if opts.Database, err = app.OpenDatabase(ctx, cfg.Database, log.Named("database")); err != nil {
			return err
		}
		defer opts.Database.Close()
	}
	svc, err := app.New(opts)
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

	err = svc.Serve(ctx, ln)
	if err != nil {
		log.Error("stopped with an error", zap.Error(err))
		return err
	}
	log.Info("stopped")
	return nil
}
