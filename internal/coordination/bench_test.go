package coordination_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// BenchmarkPlanStepOverhead measures what running a change as a plan
// costs over sending its one step as a plain task, through the same
// dispatcher to the same fake agent: the plan adds the coordination
// (validation, conflicts, the store), the run lease, the step's records
// and events, and the executor's polling. It alternates blocks of each
// and reports each one's CPU time per change and their ratio, task over
// plan (1 would be free). CPU time, not wall time: the executor polls
// the step's task every COORDINATION_POLL_INTERVAL (10ms here), so wall
// time measures the poll, and on a shared machine other processes' time
// counts for neither.
func BenchmarkPlanStepOverhead(b *testing.B) {
	const block = 20
	x := newExec(b)
	x.agent(nil, "tune")
	ctx := context.Background()
	n := 0
	task := func() {
		tk, err := x.tasks.Submit(ctx, dispatch.Request{TaskType: "tune", AgentType: "cost"})
		if err != nil {
			b.Fatal(err)
		}
		for {
			got, err := x.tasks.Get(ctx, tk.ID)
			if err != nil {
				b.Fatal(err)
			}
			if got.Status.Terminal() {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	plan := func() {
		n++
		out := x.coordinate(true, rec(fmt.Sprint("r", n), on(fmt.Sprint("i-", n))))
		for {
			p, err := x.engine.Plan(ctx, out.ExecutionPlans[0].ID)
			if err != nil {
				b.Fatal(err)
			}
			if p.Status.Terminal() {
				if p.Status != orchestrator.PlanCompleted {
					b.Fatalf("plan %s", p.Status)
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	runs := [2]func(){task, plan}
	for _, run := range runs { // warm up
		run()
	}
	var cpu [2]time.Duration
	done := 0
	b.ResetTimer()
	for done < b.N {
		k := min(block, b.N-done)
		for i, run := range runs {
			before := processCPU(b)
			for range k {
				run()
			}
			cpu[i] += processCPU(b) - before
		}
		done += k
	}
	b.StopTimer()
	taskUs, planUs := float64(cpu[0].Microseconds())/float64(done), float64(cpu[1].Microseconds())/float64(done)
	b.ReportMetric(taskUs, "task-cpu-us/op")
	b.ReportMetric(planUs, "plan-cpu-us/op")
	b.ReportMetric(taskUs/planUs, "ratio")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCoordinateWorstBatch is a full batch (COORDINATION_MAX_BATCH)
// of recommendations all on one resource: n(n-1)/2 conflicts, the most
// work one request can ask for, each time into an empty memory store.
func BenchmarkCoordinateWorstBatch(b *testing.B) {
	cfg := defaultConfig(b)
	recs := make([]orchestrator.Recommendation, cfg.MaxBatch)
	for i := range recs {
		recs[i] = rec(fmt.Sprint("r", i), on("i-shared"), prio(i))
	}
	req := orchestrator.CoordinateRequest{CustomerID: "acme", Recommendations: recs}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		e, err := coordination.NewEngine(coordination.EngineOptions{Store: coordination.NewMemoryStore(), Config: cfg})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := e.Coordinate(context.Background(), coordination.Actor{Name: "agent"}, req); err != nil {
			b.Fatal(err)
		}
	}
}

// processCPU is this process's user and system CPU time, every thread
// included.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
