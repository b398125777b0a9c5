package postgres_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/dispatch/dispatchtest"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// benchCluster is replicas Cluster dispatchers over one fresh database
// on the shared server, with agents fast fake agents.
func benchCluster(b *testing.B, replicas, agents int) (*dispatchtest.Cluster, []*dispatchtest.Agent, string) {
	b.Helper()
	url := pgtest.NewDatabase(b)
	migrated(b, url)
	cfg := dispatchtest.ClusterConfig
	cfg.AgentConcurrency, cfg.MaxPending, cfg.LeaseDuration, cfg.PollInterval = 8, 1_000_000, 15*time.Second, 5*time.Second
	c := dispatchtest.NewCluster(b, func() dispatch.Queue {
		pool, err := postgres.Open(context.Background(), postgres.Config{MaxConns: 10, ConnectTimeout: 5 * time.Second}, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(pool.Close)
		return postgres.NewTaskStore(pool)
	}, cfg, replicas)
	c.StartAll()
	fakes := make([]*dispatchtest.Agent, agents)
	for i := range fakes {
		fakes[i] = c.AddAgent(i%replicas, fmt.Sprintf("fast-%d", i), dispatchtest.Completed)
	}
	return c, fakes, url
}

// BenchmarkClusterLatency is one task at a time, submitted through the
// replicas in turn, from Submit until Get reads it completed (Get polled
// back to back: at most one Get's time late), beside a direct POST of the
// same delivery to the same fake agent. Reported: the p50 and p99 of
// each, and the p50 overhead of going through the cluster.
func BenchmarkClusterLatency(b *testing.B) {
	for _, replicas := range []int{1, 2} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			c, agents, _ := benchCluster(b, replicas, 1)
			client := dispatch.NewClient(&registry.Guard{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
			body := []byte(`{"task_id":"direct","task_type":"analyze","parameters":{"resource_id":"i-0123"},"timeout_seconds":30,"priority":0}`)
			direct := func() time.Duration {
				start := time.Now()
				resp, err := client.Post(agents[0].URL()+"/task", "application/json", bytes.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				return time.Since(start)
			}
			ctx := context.Background()
			req := dispatch.Request{AgentType: "cost", TaskType: "analyze", Parameters: []byte(`{"resource_id":"i-0123"}`)}
			through := func(i int) time.Duration {
				start := time.Now()
				d := c.Replicas[i%replicas].D
				t, err := d.Submit(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				for !t.Status.Terminal() {
					if t, err = d.Get(ctx, t.ID); err != nil {
						b.Fatal(err)
					}
				}
				if t.Status != dispatch.StatusCompleted {
					b.Fatalf("task %s: %s %s", t.ID, t.Status, t.Error)
				}
				return time.Since(start)
			}
			for range 20 { // warm connections and plans
				direct()
				through(0)
			}
			var directs, throughs []time.Duration
			i := 0
			for b.Loop() {
				directs = append(directs, direct())
				throughs = append(throughs, through(i))
				i++
			}
			b.StopTimer()
			p := func(ds []time.Duration, q float64) float64 {
				slices.Sort(ds)
				return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(p(throughs, 0.5), "p50-ms")
			b.ReportMetric(p(throughs, 0.99), "p99-ms")
			b.ReportMetric(p(directs, 0.5), "direct-p50-ms")
			b.ReportMetric(p(throughs, 0.5)-p(directs, 0.5), "overhead-p50-ms")
		})
	}
}

// BenchmarkClusterThroughput submits b.N tasks from 32 clients spread
// over the replicas, to 8 fast agents with 8 slots each, and reports the
// tasks completed per second, from the first submission until the last
// is completed (counted in SQL every 5ms).
func BenchmarkClusterThroughput(b *testing.B) {
	for _, replicas := range []int{1, 2} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			c, _, url := benchCluster(b, replicas, 8)
			pool := open(b, url)
			ctx := context.Background()
			req := dispatch.Request{AgentType: "cost", TaskType: "analyze", Parameters: []byte(`{"resource_id":"i-0123"}`)}
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			next := make(chan int)
			for w := range 32 {
				wg.Go(func() {
					for range next {
						if _, err := c.Replicas[w%replicas].D.Submit(ctx, req); err != nil {
							b.Error(err)
						}
					}
				})
			}
			for i := range b.N {
				next <- i
			}
			close(next)
			wg.Wait()
			for {
				var done int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM tasks WHERE status = 'completed'`).Scan(&done); err != nil {
					b.Fatal(err)
				}
				if done >= b.N {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tasks/s")
		})
	}
}
