package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// The readiness check forgives two failed pings in a row, fails from the
// third, naming the cause without the password, and passes again as soon
// as a ping does, the count starting over.
func TestReadinessGrace(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	pool, err := postgres.Open(context.Background(), postgres.Config{MaxConns: 2, ConnectTimeout: time.Second}, srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	check := postgres.Readiness(pool)
	ping := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return check(ctx)
	}
	if err := ping(); err != nil {
		t.Fatalf("with the database up: %v", err)
	}
	for round := range 2 {
		srv.Stop()
		for i := range 2 {
			if err := ping(); err != nil {
				t.Fatalf("round %d: failed ping %d of the grace = %v, want it forgiven", round, i+1, err)
			}
		}
		err := ping()
		if err == nil || !strings.Contains(err.Error(), "database unreachable (3 pings in a row failed)") || strings.Contains(err.Error(), srv.Password()) {
			t.Fatalf("round %d: third failed ping = %v, want the database unreachable, without the password", round, err)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := ping(); err != nil {
			t.Fatalf("round %d: with the database back: %v", round, err)
		}
	}
}
