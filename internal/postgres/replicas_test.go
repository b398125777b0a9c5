package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// replica is one orchestrator's registry over the shared database, with
// its own connection pool and its own log.
type replica struct {
	*registry.Registry
	logs *observer.ObservedLogs
}

// clock is the time every replica reads: tests move it, never sleep.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time            { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) advance(d time.Duration)   { c.ns.Add(int64(d)) }
func newClock(start time.Time) *clock      { c := &clock{}; c.ns.Store(start.UnixNano()); return c }
func (r replica) count(message string) int { return r.logs.FilterMessage(message).Len() }

var replicaConfig = registry.Config{
	HeartbeatInterval: 30 * time.Second,
	MissedHeartbeats:  3,
	EvictAfter:        time.Hour,
	AllowedNetworks:   []string{"10.0.0.0/8"},
	MaxAgents:         1000,
}

// replicas returns n registries over one migrated database, each with a
// pool of its own, as n orchestrator pods would be.
func replicas(t *testing.T, n int, cfg registry.Config, c *clock) []replica {
	t.Helper()
	url := pgtest.NewDatabase(t)
	if _, err := postgres.Migrate(context.Background(), open(t, url)); err != nil {
		t.Fatal(err)
	}
	out := make([]replica, n)
	for i := range out {
		core, logs := observer.New(zapcore.InfoLevel)
		r, err := registry.New(registry.Options{
			Config:  cfg,
			Store:   postgres.NewAgentStore(open(t, url)),
			Logger:  zap.New(core),
			Metrics: prometheus.NewRegistry(),
			Now:     c.now,
		})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = replica{Registry: r, logs: logs}
	}
	return out
}

func routable(t *testing.T, r replica) []string {
	t.Helper()
	cs, err := r.Routable(context.Background(), registry.TypeCost, "analyze", nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	slices.Sort(ids)
	return ids
}

// An agent registered through one replica is visible, routable and
// heartbeats through the other; registering again through the other
// finds it.
func TestReplicasShareAgents(t *testing.T) {
	ctx := context.Background()
	c := newClock(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
	rs := replicas(t, 2, replicaConfig, c)
	a, b := rs[0], rs[1]

	reg := registry.Registration{Name: "cost-1", Type: "cost", Host: "10.0.0.1", Port: 8001,
		Capabilities: []string{"analyze"}, Metadata: []byte(`{"zone":"a"}`)}
	agent, created, err := a.Register(ctx, reg)
	if err != nil || !created {
		t.Fatalf("Register through A = created %v, %v", created, err)
	}
	got, err := b.Get(ctx, agent.ID)
	if err != nil || got.Name != "cost-1" || string(got.Metadata) != `{"zone":"a"}` {
		t.Fatalf("Get through B = %+v, %v", got, err)
	}
	if ids := routable(t, b); !slices.Equal(ids, []string{agent.ID}) {
		t.Errorf("Routable through B = %v, want [%s]", ids, agent.ID)
	}

	c.advance(10 * time.Second)
	if _, err := b.Heartbeat(ctx, registry.Actor{}, agent.ID, "degraded", []byte(`{"load":1}`)); err != nil {
		t.Fatalf("Heartbeat through B: %v", err)
	}
	got, err = a.Get(ctx, agent.ID)
	if err != nil || got.Status != registry.StatusDegraded || !got.LastSeen.Equal(c.now()) || string(got.HeartbeatMetadata) != `{"load":1}` {
		t.Errorf("Get through A after B's heartbeat = %s seen %v metadata %s, %v; want degraded seen %v", got.Status, got.LastSeen, got.HeartbeatMetadata, err, c.now())
	}
	if ids := routable(t, a); len(ids) != 0 {
		t.Errorf("Routable through A of a degraded agent = %v, want none", ids)
	}

	again, created, err := b.Register(ctx, reg)
	if err != nil || created || again.ID != agent.ID {
		t.Fatalf("Register again through B = %s created %v, %v; want %s updated", again.ID, created, err, agent.ID)
	}
	if ids := routable(t, a); !slices.Equal(ids, []string{agent.ID}) {
		t.Errorf("Routable through A after registering again = %v", ids)
	}
	if _, err := a.Unregister(ctx, registry.Actor{}, agent.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, agent.ID); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get through B after unregistering through A = %v, want ErrNotFound", err)
	}
	if _, err := b.Heartbeat(ctx, registry.Actor{}, agent.ID, "healthy", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Heartbeat through B after unregistering through A = %v, want ErrNotFound", err)
	}
}

// The liveness sweeps run on every replica at once: each silent agent is
// marked unreachable once and evicted once across the cluster, a heartbeat
// through either replica revives it for both, and both see the same
// statuses throughout.
func TestReplicasSweepOnce(t *testing.T) {
	ctx := context.Background()
	const agents = 40
	c := newClock(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
	rs := replicas(t, 2, replicaConfig, c)
	var ids []string
	for i := range agents {
		a, _, err := rs[i%2].Register(ctx, registry.Registration{Name: fmt.Sprintf("agent-%d", i), Type: "cost",
			Host: "10.0.0.1", Port: 8000 + i, Capabilities: []string{"analyze"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.ID)
	}
	slices.Sort(ids)
	// sweepAll sweeps on both replicas at once, rounds times.
	sweepAll := func(rounds int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, 2*rounds)
		for _, r := range rs {
			wg.Go(func() {
				for range rounds {
					if err := r.Sweep(ctx); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	total := func(message string) int { return rs[0].count(message) + rs[1].count(message) }
	marked := func() []string {
		var out []string
		for _, r := range rs {
			for _, e := range r.logs.FilterMessage("agent unreachable: no heartbeat").All() {
				out = append(out, e.ContextMap()["agent_id"].(string))
			}
		}
		slices.Sort(out)
		return out
	}

	sweepAll(3)
	if n := total("agent unreachable: no heartbeat"); n != 0 {
		t.Fatalf("%d agents marked unreachable while all are fresh", n)
	}

	// Half the agents heartbeat (through either replica); then everyone
	// else falls silent past the unreachable cutoff.
	c.advance(60 * time.Second)
	for i, id := range ids[:agents/2] {
		if _, err := rs[i%2].Heartbeat(ctx, registry.Actor{}, id, "healthy", nil); err != nil {
			t.Fatal(err)
		}
	}
	c.advance(31 * time.Second) // the silent ones: 91s > 3 x 30s
	sweepAll(3)
	if got := marked(); !slices.Equal(got, ids[agents/2:]) {
		t.Fatalf("marked unreachable across both replicas: %v\nwant each silent agent once: %v", got, ids[agents/2:])
	}
	for _, r := range rs {
		if got := routable(t, r); !slices.Equal(got, ids[:agents/2]) {
			t.Errorf("Routable = %v, want the agents that heartbeat %v", got, ids[:agents/2])
		}
		for _, id := range ids[agents/2:] {
			if a, err := r.Get(ctx, id); err != nil || a.Status != registry.StatusUnreachable {
				t.Errorf("Get(%s) = %s, %v; want unreachable", id, a.Status, err)
			}
		}
	}

	// A heartbeat through one replica revives an agent for both.
	revived := ids[agents-1]
	if _, err := rs[0].Heartbeat(ctx, registry.Actor{}, revived, "healthy", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if got := routable(t, r); !slices.Contains(got, revived) {
			t.Errorf("Routable after the revival = %v, want %s in it", got, revived)
		}
	}
	sweepAll(2)
	if n := total("agent unreachable: no heartbeat"); n != agents/2 {
		t.Errorf("%d agents marked unreachable after a revival and more sweeps, want still %d", n, agents/2)
	}

	// Past AGENT_EVICT_AFTER every agent silent since goes, once.
	c.advance(time.Hour)
	if _, err := rs[1].Heartbeat(ctx, registry.Actor{}, revived, "healthy", nil); err != nil {
		t.Fatal(err)
	}
	sweepAll(3)
	if n := total("agent evicted: silent past AGENT_EVICT_AFTER"); n != agents-1 {
		t.Errorf("%d agents evicted across both replicas, want %d, each once", n, agents-1)
	}
	for _, r := range rs {
		all, err := r.List(ctx, "")
		if err != nil || len(all) != 1 || all[0].ID != revived {
			t.Errorf("List after eviction = %d agents, %v; want only %s", len(all), err, revived)
		}
	}
}

// AGENT_MAX_AGENTS holds across replicas registering at once.
func TestReplicasShareTheAgentCap(t *testing.T) {
	ctx := context.Background()
	cfg := replicaConfig
	cfg.MaxAgents = 10
	c := newClock(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
	rs := replicas(t, 2, cfg, c)
	var created, full atomic.Int64
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			_, _, err := rs[i%2].Register(ctx, registry.Registration{Name: fmt.Sprintf("agent-%d", i), Type: "cost", Host: "10.0.0.1", Port: 8000 + i})
			switch {
			case errors.Is(err, registry.ErrFull):
				full.Add(1)
			case err != nil:
				t.Error(err)
			default:
				created.Add(1)
			}
		})
	}
	wg.Wait()
	if created.Load() != 10 || full.Load() != 20 {
		t.Errorf("%d registered and %d refused as full across two replicas, want 10 and 20", created.Load(), full.Load())
	}
}
