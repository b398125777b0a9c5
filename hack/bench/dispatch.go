package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/optiinfra/orchestrator/internal/app"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/logging"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Task dispatch overhead: what the orchestrator adds to one task over a
// direct call to the same agent.
//
// The agent is the bare server's POST /task (a fake agent that completes
// every task at once) on serverCPU, GOMAXPROCS=1. The orchestrator runs in
// this process, wired as cmd/orchestrator wires it with the default
// settings (production logger at info, writing nowhere), on loadCPU with
// GOMAXPROCS=1 like the server. In process, the harness sees the exact
// moment a task is recorded completed (watchedStore), where polling GET
// /tasks/{id} would add its own delay. Three paths, one task at a time:
//
//   - direct: POST /task to the agent with the body the dispatcher sends,
//     read and decode the answer, with the dispatcher's own HTTP client;
//   - dispatcher: Dispatcher.Submit, then the wait until the task is
//     recorded completed;
//   - HTTP API: POST /tasks to the orchestrator's handler (the full
//     middleware chain, on loopback), then the same wait.
//
// The paths take turns in blocks of tasks, so that other load on the
// machine falls on all of them alike. Each task's latency is timed; the
// process's CPU time (getrusage) is read around each block, which gives the
// CPU per task of each path: the client's alone for direct, the client's
// plus the orchestrator's for the others. The agent's work is the same in
// all three and not counted.

// dispatchPath is one way of running a task; run returns once the task
// has completed.
type dispatchPath struct {
	name string
	run  func(ctx context.Context, i int) error
}

// dispatchResult is one path's measurements.
type dispatchResult struct {
	name      string
	latencies []time.Duration
	cpu       time.Duration // process CPU time over all its blocks
}

func (r dispatchResult) cpuPerTask() time.Duration {
	return r.cpu / time.Duration(len(r.latencies))
}

func (r dispatchResult) median() time.Duration {
	return time.Duration(median(seconds(r.latencies)) * float64(time.Second))
}

// watchedStore is the dispatcher's store, telling waiters when a task
// reaches a terminal state.
type watchedStore struct {
	dispatch.Store
	mu      sync.Mutex
	waiters map[string]*waiter
}

type waiter struct {
	done   chan struct{}
	status dispatch.Status
	err    string
}

func (s *watchedStore) waiter(id string) *waiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.waiters[id]
	if w == nil {
		w = &waiter{done: make(chan struct{})}
		s.waiters[id] = w
	}
	return w
}

// Update implements dispatch.Store.
func (s *watchedStore) Update(ctx context.Context, id string, change func(*dispatch.Task) error) (dispatch.Task, error) {
	t, err := s.Store.Update(ctx, id, change)
	if err == nil && t.Status.Terminal() {
		w := s.waiter(id)
		w.status, w.err = t.Status, t.Error
		close(w.done)
	}
	return t, err
}

// wait blocks until task id is terminal and fails unless it completed.
func (s *watchedStore) wait(ctx context.Context, id string) error {
	w := s.waiter(id)
	select {
	case <-w.done:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return fmt.Errorf("task %s: not finished after 10s", id)
	}
	s.mu.Lock()
	delete(s.waiters, id)
	s.mu.Unlock()
	if w.status != dispatch.StatusCompleted {
		return fmt.Errorf("task %s: %s: %s", id, w.status, w.err)
	}
	return nil
}

// inProcess is the orchestrator, wired in this process.
type inProcess struct {
	tasks app.Tasks
	store *watchedStore
	url   string // base URL of its HTTP API
	stop  func() error
}

// startOrchestrator wires the service as cmd/orchestrator does
// (internal/service), with the default settings, serves the API on a
// loopback port and registers the fake agent at agentPort.
func startOrchestrator(ctx context.Context, agentPort int, taskType string) (*inProcess, error) {
	cfg, err := config.Load(ctx, map[string]string{"SHUTDOWN_DELAY": "0s"})
	if err != nil {
		return nil, err
	}
	log, err := logging.New(cfg.Log, io.Discard)
	if err != nil {
		return nil, err
	}
	store := &watchedStore{Store: dispatch.NewMemoryStore(), waiters: map[string]*waiter{}}
	svc, err := app.New(app.Options{Config: cfg, Logger: log, Build: buildinfo.Read(), TaskStore: store})
	if err != nil {
		return nil, err
	}
	if _, _, err := svc.Agents.Register(ctx, registry.Registration{
		Name: "fake-agent", Type: string(registry.TypeCost), Host: "127.0.0.1", Port: agentPort,
		Capabilities: []string{taskType}, Version: "1.0.0",
	}); err != nil {
		return nil, err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = svc.Serve(runCtx, ln) })
	stop := func() error {
		cancel()
		wg.Wait()
		return serveErr
	}
	return &inProcess{tasks: svc.Tasks, store: store, url: "http://" + ln.Addr().String(), stop: stop}, nil
}

// dispatchOverhead measures the three paths against the fake agent.
func dispatchOverhead(ctx context.Context, agent *server, o options) ([]dispatchResult, error) {
	progress(fmt.Sprintf("task dispatch: %d tasks per path, direct, through the dispatcher and through the HTTP API", o.tasks))
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	orch, err := startOrchestrator(ctx, agent.port, o.dispatchTaskType)
	if err != nil {
		return nil, fmt.Errorf("starting the orchestrator in process: %w", err)
	}
	results, err := runDispatchPaths(ctx, dispatchPaths(agent, orch, o.dispatchTaskType), o)
	if stopErr := orch.stop(); err == nil && stopErr != nil {
		err = fmt.Errorf("stopping the orchestrator in process: %w", stopErr)
	}
	return results, err
}

// taskParameters are the parameters of every task.
var taskParameters = json.RawMessage(`{"resource_id":"i-0123456789abcdef0","window":"7d"}`)

// dispatchPaths returns the direct path first: the reference.
func dispatchPaths(agent *server, orch *inProcess, taskType string) []dispatchPath {
	// The dispatcher's own client (same transport settings and guard) for
	// the direct calls; a plain keep-alive client for the HTTP API.
	direct := dispatch.NewClient(&registry.Guard{Networks: mustNetworks("127.0.0.0/8")})
	operator := &http.Client{Timeout: 10 * time.Second}
	agentURL := agent.url("/task")
	submitBody, _ := json.Marshal(orchestrator.TaskRequest{TaskType: taskType, AgentType: orchestrator.AgentTypeCost, Parameters: taskParameters})
	return []dispatchPath{
		directPath(direct, agentURL, taskType),
		{"Dispatcher.Submit, until completed", func(ctx context.Context, _ int) error {
			t, err := orch.tasks.Submit(ctx, dispatch.Request{TaskType: taskType, AgentType: "cost", Parameters: taskParameters})
			if err != nil {
				return err
			}
			return orch.store.wait(ctx, t.ID)
		}},
		{"POST /tasks, until completed", func(ctx context.Context, _ int) error {
			a, err := post(ctx, operator, orch.url+"/tasks", submitBody)
			if err != nil {
				return err
			}
			var created orchestrator.TaskAccepted
			if a.status != http.StatusCreated || json.Unmarshal([]byte(a.body), &created) != nil {
				return fmt.Errorf("POST /tasks: %d %s", a.status, a.body)
			}
			return orch.store.wait(ctx, created.TaskID)
		}},
	}
}

// directPath POSTs to the agent at agentURL what the dispatcher sends, and
// reads and decodes the answer as it does, with client (the dispatcher's
// own), without the dispatcher: the reference every other path is
// compared with.
func directPath(client *http.Client, agentURL, taskType string) dispatchPath {
	return dispatchPath{"direct POST /task", func(ctx context.Context, i int) error {
		// What the dispatcher sends and reads, without the dispatcher.
		body, err := json.Marshal(orchestrator.Delivery{
			TaskID: "direct-" + strconv.Itoa(i), TaskType: taskType, Parameters: taskParameters,
			TimeoutSeconds: dispatch.DefaultTimeoutSeconds,
		})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, agentURL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		data, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		var reply orchestrator.DeliveryReply
		if err := json.Unmarshal(data, &reply); err != nil || resp.StatusCode != http.StatusOK || reply.Status != orchestrator.TaskCompleted {
			return fmt.Errorf("direct call: %d %s", resp.StatusCode, data)
		}
		return nil
	}}
}

func mustNetworks(cidrs ...string) []netip.Prefix {
	p, err := registry.ParseNetworks(cidrs)
	if err != nil {
		panic(err)
	}
	return p
}

// runDispatchPaths warms every path up, then runs o.tasks tasks on each in
// blocks of o.tasksPerBlock, the paths taking turns (in a rotating order).
func runDispatchPaths(ctx context.Context, paths []dispatchPath, o options) ([]dispatchResult, error) {
	results := make([]dispatchResult, len(paths))
	for i, p := range paths {
		results[i].name = p.name
		for n := range o.dispatchWarmup {
			if err := p.run(ctx, -1-n); err != nil {
				return nil, fmt.Errorf("%s (warm-up): %w", p.name, err)
			}
		}
	}
	seq := 0
	for block := range o.tasks / o.tasksPerBlock {
		for k := range paths {
			i := (block + k) % len(paths)
			cpu0, err := processCPU()
			if err != nil {
				return nil, err
			}
			for range o.tasksPerBlock {
				begin := time.Now()
				if err := paths[i].run(ctx, seq); err != nil {
					return nil, fmt.Errorf("%s: %w", paths[i].name, err)
				}
				results[i].latencies = append(results[i].latencies, time.Since(begin))
				seq++
			}
			cpu1, err := processCPU()
			if err != nil {
				return nil, err
			}
			results[i].cpu += cpu1 - cpu0
		}
	}
	return results, nil
}

// processCPU is this process's user+system CPU time, every thread included.
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// reportDispatch prints the dispatch table: each path's latency and CPU
// per task, and the orchestrator paths' overhead over the direct call.
func reportDispatch(out io.Writer, o options, results []dispatchResult) {
	fmt.Fprintf(out, "\nTask dispatch: one task at a time to a fake agent (the bare server's POST /task) on CPU %s, GOMAXPROCS=1;\n", serverCPU)
	fmt.Fprintf(out, "the client and the orchestrator (in process, default settings) on CPU %s, GOMAXPROCS=1. %d tasks per path after\n", loadCPU, o.tasks)
	fmt.Fprintf(out, "%d of warm-up, in blocks of %d taking turns. Overhead: the path's median latency minus the direct call's; ratio:\n", o.dispatchWarmup, o.tasksPerBlock)
	fmt.Fprintln(out, "the path's median over the direct call's. CPU/task: client and orchestrator CPU time per task, the agent's excluded.")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "path\tmedian\tp90\toverhead\tratio\tCPU/task\tCPU overhead\tCPU ratio\t")
	ref := results[0]
	for i, r := range results {
		line := fmt.Sprintf("%s\t%s\t%s", r.name, us(r.median()), us(p90(r.latencies)))
		if i == 0 {
			fmt.Fprintf(w, "%s\t\t\t%s\t\t\t\n", line, us(r.cpuPerTask()))
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%.2f\t%s\t%s\t%.2f\t\n", line,
			"+"+us(r.median()-ref.median()), r.median().Seconds()/ref.median().Seconds(),
			us(r.cpuPerTask()), "+"+us(r.cpuPerTask()-ref.cpuPerTask()), r.cpuPerTask().Seconds()/ref.cpuPerTask().Seconds())
	}
	w.Flush()
}

func us(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}
