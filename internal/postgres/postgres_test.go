package postgres_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

func open(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Config{MaxConns: 4, ConnectTimeout: 5e9}, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Ten replicas starting at once apply each migration exactly once.
func TestMigrateConcurrently(t *testing.T) {
	url := pgtest.NewDatabase(t)
	var wg sync.WaitGroup
	applied := make([][]int64, 10)
	errs := make([]error, 10)
	for i := range 10 {
		pool := open(t, url)
		wg.Go(func() { applied[i], errs[i] = postgres.Migrate(context.Background(), pool) })
	}
	wg.Wait()
	total := 0
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		total += len(applied[i])
	}
	if want := int(postgres.LatestVersion()); total != want || want < 2 {
		t.Fatalf("%d migrations applied across ten replicas, want each of the %d once", total, want)
	}
	pool := open(t, url)
	if err := postgres.CheckSchema(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Status(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if !s.Applied {
			t.Errorf("migration %d (%s) not applied", s.Version, s.Name)
		}
	}
}

// A schema newer than the binary is refused before anything is applied;
// one behind is reported by CheckSchema.
func TestSchemaVersions(t *testing.T) {
	pool := open(t, pgtest.NewDatabase(t))
	ctx := context.Background()
	err := postgres.CheckSchema(ctx, pool)
	if err == nil || !strings.Contains(err.Error(), "run `orchestrator migrate up`") {
		t.Fatalf("CheckSchema on an empty database = %v, want a pending-migrations error", err)
	}
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, postgres.LatestVersion()+1); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{
		"Migrate":     func() error { _, err := postgres.Migrate(ctx, pool); return err }(),
		"CheckSchema": postgres.CheckSchema(ctx, pool),
	} {
		if !errors.Is(err, postgres.ErrSchemaTooNew) || !strings.Contains(err.Error(), "run a newer orchestrator") {
			t.Errorf("%s on a newer schema = %v, want ErrSchemaTooNew", what, err)
		}
	}
}

// The password never appears in an error, whatever goes wrong.
func TestErrorsHideThePassword(t *testing.T) {
	srv := pgtest.Shared(t)
	good := pgtest.NewDatabase(t)
	wrongPassword := strings.Replace(good, srv.Password(), "s3cr3t-wrong-pass", 1)
	noDatabase := strings.Replace(good, "/test_", "/missing_", 1)
	badPort := strings.Replace(good, "sslmode=disable", "sslmode=disable&port=notaport", 1)
	cfg := postgres.Config{MaxConns: 2, ConnectTimeout: 2e9}
	for _, url := range []string{wrongPassword, noDatabase, badPort, "postgres://u:s3cr3t-wrong-pass@127.0.0.1:1/db"} {
		_, err := postgres.Open(context.Background(), cfg, url)
		if err == nil {
			t.Fatalf("Open(%s) succeeded", postgres.Describe(url))
		}
		for _, secret := range []string{srv.Password(), "s3cr3t-wrong-pass"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Open's error shows the password: %v", err)
			}
		}
		cfg := postgres.Config{URL: url, MaxConns: 2, ConnectTimeout: 2e9}
		if err := cfg.Validate(); err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("Validate's error shows the password: %v", err)
		}
	}
	if d := postgres.Describe(good); strings.Contains(d, srv.Password()) || !strings.Contains(d, pgtest.User+"@127.0.0.1:") {
		t.Errorf("Describe = %q", d)
	}
}

// migratedPool opens a pool on url's database, with the schema applied.
func migratedPool(tb testing.TB, url string) *pgxpool.Pool {
	tb.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Config{MaxConns: 8, ConnectTimeout: 5e9}, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	if _, err := postgres.Migrate(context.Background(), pool); err != nil {
		tb.Fatal(err)
	}
	return pool
}

// The transactions of soft state commit without waiting for the WAL flush;
// the others, on a durable server, still wait.
func TestAsyncCommitIsPerTransaction(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{Durable: true})
	pool := open(t, srv.NewDatabase(t))
	ctx := context.Background()
	show := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) string {
		var v string
		if err := q.QueryRow(ctx, "SHOW synchronous_commit").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	conn, err := pool.Acquire(ctx) // one connection, so that a leak would show
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.BeginTx(ctx, postgres.AsyncCommit)
	if err != nil {
		t.Fatal(err)
	}
	if got := show(tx); got != "off" {
		t.Errorf("synchronous_commit in an async transaction = %q, want off", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := show(conn); got != "on" {
		t.Errorf("synchronous_commit outside it = %q, want on (SET LOCAL must not leak into the pooled connection)", got)
	}
}
