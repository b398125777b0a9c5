package pgtest_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// Launch is how a program that is not a test (hack/bench) gets a server:
// it must honour Durable, give a usable database, and leave no process
// behind once destroyed.
func TestLaunch(t *testing.T) {
	for _, tc := range []struct {
		durable bool
		fsync   string
	}{{false, "off"}, {true, "on"}} {
		s, err := pgtest.Launch(pgtest.Options{Durable: tc.durable})
		if err != nil {
			t.Fatal(err)
		}
		destroyed := false
		t.Cleanup(func() {
			if !destroyed {
				s.Destroy()
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		dbURL, err := s.CreateDatabase(ctx, "launched")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		var db, fsync string
		err = conn.QueryRow(ctx, "SELECT current_database(), current_setting('fsync')").Scan(&db, &fsync)
		_ = conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if db != "launched" || fsync != tc.fsync {
			t.Errorf("Durable %v: database %q, fsync %s; want launched, %s", tc.durable, db, fsync, tc.fsync)
		}

		pid := s.PID()
		if pid <= 0 {
			t.Fatalf("PID of a running server: %d", pid)
		}
		s.Destroy()
		destroyed = true
		if got := s.PID(); got != 0 {
			t.Errorf("PID after Destroy: %d, want 0", got)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("postmaster %d after Destroy: kill -0 gave %v, want ESRCH", pid, err)
		}
	}
}
