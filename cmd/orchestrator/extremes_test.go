package main

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/config"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

// TestEveryDurationAtItsExtremes starts the whole service with each
// duration setting at the edges of what a time.Duration can hold. Each
// must either be refused before listening (exit 2, naming the variable) or
// give a service that answers /ready and stops cleanly: never a panic in a
// ticker, a timer or an overflowing product. The settings come from the
// struct tags, so a new duration is covered without editing this test.
func TestEveryDurationAtItsExtremes(t *testing.T) {
	extremes := []string{
		"0s", "1ns", "-1ns",
		time.Duration(math.MaxInt64).String(), // 2562047h47m16.854775807s
		time.Duration(math.MinInt64).String(),
	}
	var durations int
	for _, v := range config.Variables() {
		if !v.IsDuration() {
			continue
		}
		durations++
		for _, value := range extremes {
			t.Run(v.Name+"="+value, func(t *testing.T) {
				svc, err := startOrRefuse(t, v.Name+"="+value)
				if svc == nil {
					if !errors.Is(err, config.ErrInvalid) || exitCode(err) != exitUsage {
						t.Fatalf("run = %v (exit %d), want a configuration error and exit 2", err, exitCode(err))
					}
					if !strings.Contains(err.Error(), v.Name) {
						t.Fatalf("error %q does not name %s", err, v.Name)
					}
					return
				}
				// "listening" is logged just before Serve marks the service
				// started, so /ready may say 503 for a moment.
				eventually.True(t, 20*time.Second, "GET /ready = 200", func() bool {
					resp, err := http.Get(svc.base + "/ready") //nolint:noctx // the default client is fine on loopback
					if err != nil {
						t.Fatalf("GET /ready: %v", err)
					}
					resp.Body.Close()
					return resp.StatusCode == http.StatusOK
				})
				svc.cancel()
				if err := svc.wait(t); err != nil {
					t.Fatalf("run after cancel = %v, want a clean stop", err)
				}
			})
		}
	}
	if durations < 10 {
		t.Fatalf("found %d duration settings by reflection; the walk over config.Config is broken", durations)
	}
}

// startOrRefuse runs the service with env on top of the test defaults and
// returns it once it listens, or nil and what run returned if it stopped
// before listening.
func startOrRefuse(t *testing.T, env ...string) (*service, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{logs: newLogLines(), cancel: cancel, done: make(chan struct{})}
	env = append([]string{"PORT=0", "HTTP_HOST=127.0.0.1", "SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=5s"}, env...)
	go func() { s.err = run(ctx, nil, env, s.logs, io.Discard); close(s.done) }()
	t.Cleanup(func() { cancel(); _ = s.wait(t) })
	timeout := time.After(20 * time.Second)
	for {
		if e := s.logs.find("orchestrator listening"); e != nil {
			s.base = "http://" + e["address"].(string)
			return s, nil
		}
		select {
		case <-s.done:
			return nil, s.err
		case <-s.logs.changed:
		case <-timeout:
			t.Fatal("run neither listened nor returned within 20s")
		}
	}
}
