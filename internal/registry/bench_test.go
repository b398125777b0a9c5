package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The registry's hot paths with 10,000 registered agents, each with a
// reference of 10 agents measured in the same run: the large case reports
// its time per operation over the reference's as x_vs_10_agents, so the
// scaling is read from one invocation rather than compared across runs.

// benchSizes are the agent counts measured; the first is the reference.
var benchSizes = []int{10, 10_000}

// newBenchRegistry returns a registry (in-memory store, metrics registered
// as in production) holding n healthy agents of type cost, all with the
// capability "analyze", and their IDs.
func newBenchRegistry(b *testing.B, n int) (*Registry, []string) {
	b.Helper()
	r, err := New(Options{
		Config: Config{
			HeartbeatInterval: 30 * time.Second,
			MissedHeartbeats:  3,
			EvictAfter:        24 * time.Hour,
			AllowedNetworks:   []string{"10.0.0.0/8"},
		},
		Store:   NewMemoryStore(),
		Metrics: prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i := range n {
		a, _, err := r.Register(context.Background(), Registration{
			Name:         fmt.Sprintf("cost-agent-%d", i),
			Type:         string(TypeCost),
			Host:         fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff),
			Port:         8000,
			Capabilities: []string{"analyze", "recommend", "report"},
			Version:      "1.0.0",
			Metadata:     json.RawMessage(`{"region":"eu-west-1"}`),
		})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = a.ID
	}
	return r, ids
}

// benchScaling carries the reference case's time per operation to the large
// case within one benchmark.
type benchScaling struct{ ref float64 }

// report records b's time per operation (call it after the loop): the
// reference's is remembered, the others report their ratio to it.
func (s *benchScaling) report(b *testing.B, n int) {
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	if n == benchSizes[0] {
		s.ref = per
		return
	}
	if s.ref > 0 {
		b.ReportMetric(per/s.ref, fmt.Sprintf("x_vs_%d_agents", benchSizes[0]))
	}
}

// BenchmarkHeartbeat is Registry.Heartbeat, the work behind POST
// /agents/{id}/heartbeat, cycling over every registered agent.
func BenchmarkHeartbeat(b *testing.B) {
	var s benchScaling
	meta := json.RawMessage(`{"cpu_percent":12.5,"tasks_running":1}`)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			r, ids := newBenchRegistry(b, n)
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := r.Heartbeat(ctx, Actor{}, ids[i], "healthy", meta); err != nil {
					b.Fatal(err)
				}
				if i++; i == n {
					i = 0
				}
			}
			s.report(b, n)
		})
	}
}

// BenchmarkRoutable is Registry.Routable for a (type, capability) every
// agent has: the worst case of the candidate list a routing decision reads.
func BenchmarkRoutable(b *testing.B) {
	var s benchScaling
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			r, _ := newBenchRegistry(b, n)
			ctx := context.Background()
			var buf []Candidate
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = r.Routable(ctx, TypeCost, "analyze", buf[:0]); err != nil || len(buf) != n {
					b.Fatalf("Routable: %d candidates, %v; want %d", len(buf), err, n)
				}
			}
			s.report(b, n)
		})
	}
}
