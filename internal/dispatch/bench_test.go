package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// Routing with 10,000 registered agents, and a reference of 10 agents
// measured in the same run: each large case reports its time per operation
// over the reference's as x_vs_10_agents, so the scaling is read from one
// invocation rather than compared across runs.
//
// Two layouts of the agents:
//   - same: every agent is a cost agent with the capability "analyze", the
//     task's: the worst case, every agent is a candidate;
//   - spread: the agents are spread evenly over the 4 types and 20
//     capabilities (one each), so a task's (type, capability) has 1/80 of
//     them as candidates (1 of 10, 125 of 10,000).

// benchSizes are the agent counts measured; the first is the reference.
var benchSizes = []int{10, 10_000}

const benchCapabilities = 20

// benchLayout places agent i of n: its type and capability.
type benchLayout struct {
	name  string
	place func(i int) (registry.Type, string)
}

var benchLayouts = []benchLayout{
	{"same", func(int) (registry.Type, string) { return registry.TypeCost, "analyze" }},
	{"spread", func(i int) (registry.Type, string) {
		return registry.Types[i%len(registry.Types)], fmt.Sprintf("task-%02d", i/len(registry.Types)%benchCapabilities)
	}},
}

// benchRequest is the task both layouts route: its (type, capability)
// has candidates in each.
func benchRequest(l benchLayout) Request {
	typ, capability := l.place(0)
	return Request{
		TaskType:   capability,
		AgentType:  string(typ),
		Parameters: json.RawMessage(`{"resource_id":"i-0123456789abcdef0","window":"7d"}`),
	}
}

// benchAgentReply is what the in-memory agent answers every delivery.
var benchAgentReply = []byte(`{"task_id":"t","status":"completed","result":{"savings_usd":12.5},"execution_time_ms":1}`)

// benchTransport answers every delivery at once with benchAgentReply, in
// memory: the benchmarks measure the dispatcher, not the network.
type benchTransport struct{}

func (benchTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	return &http.Response{
		StatusCode:    http.StatusOK,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(benchAgentReply)),
		ContentLength: int64(len(benchAgentReply)),
		Request:       req,
	}, nil
}

// newBenchDispatcher returns a dispatcher (production defaults, in-memory
// stores, metrics registered as in production) over a registry holding n
// healthy agents placed by l.
func newBenchDispatcher(b *testing.B, n int, l benchLayout) *Dispatcher {
	b.Helper()
	metrics := prometheus.NewRegistry()
	agents, err := registry.New(registry.Options{
		Config: registry.Config{
			HeartbeatInterval: 30 * time.Second,
			MissedHeartbeats:  3,
			EvictAfter:        24 * time.Hour,
			AllowedNetworks:   []string{"10.0.0.0/8"},
		},
		Store:   registry.NewMemoryStore(),
		Metrics: metrics,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for i := range n {
		typ, capability := l.place(i)
		if _, _, err := agents.Register(ctx, registry.Registration{
			Name:         fmt.Sprintf("agent-%d", i),
			Type:         string(typ),
			Host:         fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff),
			Port:         8000,
			Capabilities: []string{capability},
			Version:      "1.0.0",
		}); err != nil {
			b.Fatal(err)
		}
	}
	d, err := New(Options{
		Config: Config{
			AgentConcurrency: 4,
			MaxPending:       10000,
			Retention:        time.Hour,
			RetryBackoff:     500 * time.Millisecond,
			RetryBackoffMax:  30 * time.Second,
			MaxResultBytes:   4 << 20,
		},
		Store:   NewMemoryStore(),
		Agents:  agents,
		Metrics: metrics,
		Client:  &http.Client{Transport: benchTransport{}},
	})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(runCtx)
	}()
	b.Cleanup(func() {
		stop()
		<-done
	})
	return d
}

// benchScaling carries the reference case's time per operation to the
// large case within one benchmark.
type benchScaling map[string]float64

// report records b's time per operation under key (call it after the
// loop): the reference size's is remembered, the others report their ratio
// to it.
func (s benchScaling) report(b *testing.B, key string, n int) {
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	if n == benchSizes[0] {
		s[key] = per
		return
	}
	if ref := s[key]; ref > 0 {
		b.ReportMetric(per/ref, fmt.Sprintf("x_vs_%d_agents", benchSizes[0]))
	}
}

// routeOnce is Submit up to the choice of an agent, the same steps in the
// same order: validate, name the task, list the routable candidates and
// choose the least loaded under the dispatcher's lock. Nothing is reserved,
// stored or started, so every call sees the same idle agents (all tied on
// load: the round-robin pass walks the candidates too).
func routeOnce(ctx context.Context, d *Dispatcher, req Request) (registry.Candidate, error) {
	t, err := req.validate()
	if err != nil {
		return registry.Candidate{}, err
	}
	rt := route{agentType: t.AgentType, taskType: t.TaskType, pinned: t.PinnedAgentID}
	t.ID, t.CreatedAt = d.newID(), d.now().UTC()
	j := &job{task: t, route: rt, index: -1, tried: map[string]bool{}}
	d.mu.Lock()
	defer d.mu.Unlock()
	candidates, err := d.candidatesLocked(ctx, rt)
	if err != nil {
		return registry.Candidate{}, err
	}
	agent, ok := d.chooseLocked(j, candidates)
	if !ok {
		return registry.Candidate{}, noAgentError(rt)
	}
	return agent, nil
}

// BenchmarkRoute is the routing decision of Submit (see routeOnce).
func BenchmarkRoute(b *testing.B) {
	s := benchScaling{}
	for _, l := range benchLayouts {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/agents=%d", l.name, n), func(b *testing.B) {
				d := newBenchDispatcher(b, n, l)
				req, ctx := benchRequest(l), context.Background()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := routeOnce(ctx, d, req); err != nil {
						b.Fatal(err)
					}
				}
				s.report(b, l.name, n)
			})
		}
	}
}

// BenchmarkSubmit is a whole task, one at a time: Submit, then the delivery
// to an in-memory agent that answers at once, until the task is recorded
// completed; in the worst layout only (same), to show what share of a task
// routing takes at 10,000 agents. The network is left out; the harness of
// make bench (hack/bench) measures it over loopback against a direct call.
func BenchmarkSubmit(b *testing.B) {
	s := benchScaling{}
	for _, l := range benchLayouts[:1] {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/agents=%d", l.name, n), func(b *testing.B) {
				d := newBenchDispatcher(b, n, l)
				req, ctx := benchRequest(l), context.Background()
				var last Task
				b.ReportAllocs()
				for b.Loop() {
					t, err := d.Submit(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					d.wg.Wait() // the attempt's goroutine records the outcome before it returns
					last = t
				}
				s.report(b, l.name, n)
				if got, err := d.Get(ctx, last.ID); err != nil || got.Status != StatusCompleted {
					b.Fatalf("last task: %+v, %v; want completed", got, err)
				}
			})
		}
	}
}
