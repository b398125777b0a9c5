package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"text/tabwriter"

	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/postgres"
)

const migrateUsage = "migrate takes one of: up (apply the pending schema migrations), status (list them)"

// migrate applies or lists the schema migrations of the database that
// DATABASE_URL or DATABASE_URL_FILE names (from the environment and
// ./.env, as serve reads them), for those who run them as a step of
// their own with DATABASE_AUTO_MIGRATE=false. It reads no other setting.
func migrate(ctx context.Context, args []string, env map[string]string, stdout io.Writer) error {
	if len(args) != 1 || (args[0] != "up" && args[0] != "status") {
		return fmt.Errorf("%w: %s", errUsage, migrateUsage)
	}
	env, err := config.WithDotEnv(env, dotEnvFile)
	if err != nil {
		return err
	}
	cfg, err := config.LoadDatabase(ctx, env)
	if err != nil {
		return err
	}
	if !cfg.Enabled() {
		return fmt.Errorf("%w: migrate: no database: set DATABASE_URL or DATABASE_URL_FILE", config.ErrInvalid)
	}
	dbURL, err := cfg.ResolveURL()
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	pool, err := postgres.Open(ctx, cfg, dbURL)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer pool.Close()
	where := postgres.Describe(dbURL)

	if args[0] == "up" {
		applied, err := postgres.Migrate(ctx, pool)
		for _, v := range applied {
			fmt.Fprintf(stdout, "applied %d\n", v)
		}
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		fmt.Fprintf(stdout, "%s: schema at version %d (%d applied now)\n", where, postgres.LatestVersion(), len(applied))
		return nil
	}

	status, err := postgres.Status(ctx, pool)
	if err != nil {
		return fmt.Errorf("migrate status: %w", err)
	}
	fmt.Fprintf(stdout, "%s\n", where)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tMIGRATION")
	pending := 0
	for _, s := range status {
		state := "applied"
		if !s.Applied {
			state, pending = "pending", pending+1
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", s.Version, state, path.Base(s.Name))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if pending > 0 {
		fmt.Fprintf(stdout, "%d pending: run `orchestrator migrate up`, or start the service with DATABASE_AUTO_MIGRATE=true\n", pending)
	}
	return nil
}
