package coordination_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The executor is tested against the real dispatcher and registry, with
// fake agents: HTTP servers on loopback that answer /task as the test
// says, per task type.

// stepCall is a task an agent received.
type stepCall struct {
	TaskID     string         `json:"task_id"`
	TaskType   string         `json:"task_type"`
	Parameters map[string]any `json:"parameters"`
}

// coordinationOf is the "coordination" object the executor adds to a
// step's parameters.
func (c stepCall) coordinationOf(t *testing.T) map[string]any {
	t.Helper()
	m, ok := c.Parameters["coordination"].(map[string]any)
	if !ok {
		t.Fatalf("task %s (%s) has no coordination parameters: %v", c.TaskID, c.TaskType, c.Parameters)
	}
	return m
}

// answer is how a fake agent answers one task: it writes the response,
// or blocks, or hangs up.
type answer func(w http.ResponseWriter, r *http.Request, c stepCall)

// done answers completed with a result naming the step.
func done(w http.ResponseWriter, _ *http.Request, c stepCall) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"task_id":%q,"status":"completed","result":{"did":%q}}`, c.TaskID, c.TaskType)
}

// refuse answers 400: the agent will not do it, so no retry.
func refuse(w http.ResponseWriter, _ *http.Request, c stepCall) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, `{"task_id":%q,"status":"failed","error":"quality below threshold"}`, c.TaskID)
}

// exec is a test's orchestrator: registry, dispatcher and engine, run
// until the test ends.
type exec struct {
	t      testing.TB
	agents *registry.Registry
	tasks  *dispatch.Dispatcher
	store  coordination.Store
	engine *coordination.Engine
	reg    *prometheus.Registry
	mu     sync.Mutex
	calls  []stepCall
}

func execConfig(t testing.TB) coordination.Config {
	cfg, err := loadConfig(t, map[string]string{
		"COORDINATION_POLL_INTERVAL": "10ms", "COORDINATION_RUN_LEASE": "3s", "COORDINATION_AGENT_WAIT": "0s",
		"COORDINATION_STEP_MAX_RETRIES": "1", "COORDINATION_STEP_TIMEOUT": "10s",
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// newExec is a test's orchestrator over a memory store, its engine's
// Config changed by options.
func newExec(t testing.TB, options ...func(*coordination.Config)) *exec {
	return newExecOn(t, coordination.NewMemoryStore(), nil, options...)
}

// newExecOn is newExec over store, sharing the dispatcher of other when
// set: a second replica.
func newExecOn(t testing.TB, store coordination.Store, other *exec, options ...func(*coordination.Config)) *exec {
	t.Helper()
	x := &exec{t: t, store: store, reg: prometheus.NewRegistry()}
	var runs []func(context.Context)
	if other != nil {
		x.agents, x.tasks = other.agents, other.tasks
	} else {
		var err error
		x.agents, err = registry.New(registry.Options{
			Config: registry.Config{HeartbeatInterval: time.Minute, MissedHeartbeats: 3, EvictAfter: time.Hour, AllowedNetworks: []string{"127.0.0.0/8"}},
			Store:  registry.NewMemoryStore(),
		})
		if err != nil {
			t.Fatal(err)
		}
		x.tasks, err = dispatch.New(dispatch.Options{
			Config: dispatch.Config{AgentConcurrency: 4, MaxPending: 100, Retention: time.Hour, RetryBackoff: 10 * time.Millisecond,
				RetryBackoffMax: 50 * time.Millisecond, MaxResultBytes: 1 << 20, LeaseDuration: 15 * time.Second, PollInterval: time.Second},
			Store: dispatch.NewMemoryStore(), Agents: x.agents,
		})
		if err != nil {
			t.Fatal(err)
		}
		x.agents.OnChange(x.tasks.Pump)
		runs = append(runs, x.tasks.Run)
	}
	var err error
	cfg := execConfig(t)
	for _, o := range options {
		o(&cfg)
	}
	x.engine, err = coordination.NewEngine(coordination.EngineOptions{Store: store, Config: cfg, Tasks: x.tasks, Metrics: x.reg})
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, x.engine.Run)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, run := range runs {
		wg.Go(func() { run(ctx) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return x
}

// agent starts a fake cost agent serving taskTypes, answering
// each as answers says (done for a type not in it).
func (x *exec) agent(answers map[string]answer, taskTypes ...string) {
	x.t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c stepCall
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		x.mu.Lock()
		x.calls = append(x.calls, c)
		x.mu.Unlock()
		if a, ok := answers[c.TaskType]; ok {
			a(w, r, c)
			return
		}
		done(w, r, c)
	}))
	x.t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	if _, _, err := x.agents.Register(context.Background(), registry.Registration{
		Name: "agent", Type: "cost", Host: "127.0.0.1", Port: p, Capabilities: taskTypes,
	}); err != nil {
		x.t.Fatal(err)
	}
}

// steps are every step task type a migrate_to_spot plan sends, rollbacks
// included.
var steps = []string{"take_snapshot", "migrate_workload", "validate_quality",
	"rollback_take_snapshot", "rollback_migrate_workload", "tune", "rollback_tune"}

// received is the task types the agents received, in order.
func (x *exec) received() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for _, c := range x.calls {
		out = append(out, c.TaskType)
	}
	return out
}

func (x *exec) call(taskType string) stepCall {
	x.t.Helper()
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.calls {
		if c.TaskType == taskType {
			return c
		}
	}
	x.t.Fatalf("no %s task received (got %v)", taskType, x.calls)
	return stepCall{}
}

// coordinate submits recs for acme, auto-approved, executed at once when
// executeNow, and returns the answer.
func (x *exec) coordinate(executeNow bool, recs ...orchestrator.Recommendation) orchestrator.CoordinateResponse {
	x.t.Helper()
	out, err := x.engine.Coordinate(context.Background(), coordination.Actor{Name: "agent-1"},
		orchestrator.CoordinateRequest{CustomerID: "acme", Recommendations: recs, AutoApprove: true, ExecuteNow: executeNow})
	if err != nil {
		x.t.Fatal(err)
	}
	return out
}

// wait polls plan id until until says it is done with it.
func (x *exec) wait(id string, what string, until func(orchestrator.Plan) bool) orchestrator.Plan {
	x.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p, err := x.engine.Plan(context.Background(), id)
		if err != nil {
			x.t.Fatal(err)
		}
		if until(p) {
			return p
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("plan %s: still %s (step %d) waiting for %s: %+v", id, p.Status, p.CurrentStep, what, p.Steps)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (x *exec) waitEnd(id string) orchestrator.Plan {
	x.t.Helper()
	return x.wait(id, "its end", func(p orchestrator.Plan) bool { return p.Status.Terminal() })
}

// stepStatuses is each step's action and status.
func stepStatuses(p orchestrator.Plan) []string {
	var out []string
	for _, s := range p.Steps {
		out = append(out, s.Action+":"+string(s.Status))
	}
	return out
}

func (x *exec) recStatus(id string) orchestrator.RecommendationStatus {
	x.t.Helper()
	r, err := x.engine.Recommendation(context.Background(), id)
	if err != nil {
		x.t.Fatal(err)
	}
	return r.Status
}

// eventKinds are the kinds of the events about subject, in order.
func (x *exec) eventKinds(subject string) []orchestrator.EventKind {
	x.t.Helper()
	page, _, err := x.engine.Events(context.Background(), coordination.EventQuery{Limit: coordination.MaxPage})
	if err != nil {
		x.t.Fatal(err)
	}
	var out []orchestrator.EventKind
	for _, e := range page {
		if e.SubjectID == subject {
			out = append(out, e.Kind)
		}
	}
	return out
}

func spot(id string, change ...func(*orchestrator.Recommendation)) orchestrator.Recommendation {
	return rec(id, append([]func(*orchestrator.Recommendation){action("migrate_to_spot"), on("i-1"), func(r *orchestrator.Recommendation) {
		r.Parameters = json.RawMessage(`{"target":"spot","max_price":0.4}`)
	}}, change...)...)
}

func TestPlanRunsItsStepsInOrder(t *testing.T) {
	x := newExec(t)
	x.agent(nil, steps...)
	out := x.coordinate(true, spot("r1"))
	if len(out.ExecutionPlans) != 1 || out.ExecutionPlans[0].Status != orchestrator.PlanRunning || out.Recommendations[0].Status != orchestrator.RecommendationExecuting {
		t.Fatalf("execute_now answer: %+v", out.ExecutionPlans)
	}
	p := x.waitEnd(out.ExecutionPlans[0].ID)
	if p.Status != orchestrator.PlanCompleted || p.CompletedAt == nil || p.CurrentStep != 3 {
		t.Fatalf("plan %s at step %d, want completed: %v", p.Status, p.CurrentStep, stepStatuses(p))
	}
	if got, want := x.received(), []string{"take_snapshot", "migrate_workload", "validate_quality"}; !slices.Equal(got, want) {
		t.Fatalf("agents received %v, want %v", got, want)
	}
	for _, s := range p.Steps {
		if s.Status != orchestrator.StepCompleted || s.TaskID != s.ID || s.AgentID == "" || s.StartedAt == nil || s.CompletedAt == nil ||
			string(s.Result) != fmt.Sprintf(`{"did":%q}`, s.Action) {
			t.Errorf("step %+v", s)
		}
	}
	// The task carries the recommendation's parameters, and says which
	// plan, step and recommendation it is for, and what it touches.
	c := x.call("migrate_workload")
	if c.TaskID != p.Steps[1].ID || c.Parameters["target"] != "spot" || c.Parameters["max_price"] != 0.4 {
		t.Errorf("migrate_workload task %+v", c)
	}
	co := c.coordinationOf(t)
	rid := out.Recommendations[0].RecordID
	if co["plan_id"] != p.ID || co["step_id"] != p.Steps[1].ID || co["recommendation_id"] != rid || co["customer_id"] != "acme" ||
		co["action"] != "migrate_to_spot" || fmt.Sprint(co["affected_resources"]) != "[i-1]" {
		t.Errorf("coordination parameters %v", co)
	}
	if s := x.recStatus(rid); s != orchestrator.RecommendationCompleted {
		t.Errorf("recommendation %s, want completed", s)
	}
	want := []orchestrator.EventKind{orchestrator.EventPlanCreated, orchestrator.EventPlanStarted,
		orchestrator.EventStepStarted, orchestrator.EventStepCompleted, orchestrator.EventStepStarted, orchestrator.EventStepCompleted,
		orchestrator.EventStepStarted, orchestrator.EventStepCompleted, orchestrator.EventPlanCompleted}
	if got := x.eventKinds(p.ID); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if n := counterValue(t, x.reg, "orchestrator_coordination_plans_finished_total", "completed"); n != 1 {
		t.Errorf("plans finished completed = %v, want 1", n)
	}
	if n := histogramCount(t, x.reg, "orchestrator_coordination_plan_duration_seconds"); n != 1 {
		t.Errorf("%d plan durations observed, want 1", n)
	}
}

// counterValue is the value of the counter of family name whose label has
// value v.
func counterValue(t *testing.T, reg *prometheus.Registry, name, v string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == v {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, v)
	return 0
}

func TestCriticalStepFailureRollsBackInReverseOrder(t *testing.T) {
	x := newExec(t)
	x.agent(map[string]answer{"validate_quality": refuse}, steps...)
	out := x.coordinate(true, spot("r1"))
	p := x.waitEnd(out.ExecutionPlans[0].ID)
	if p.Status != orchestrator.PlanRolledBack || p.RolledBackAt == nil {
		t.Fatalf("plan %s, want rolled_back: %v", p.Status, stepStatuses(p))
	}
	want := []string{"take_snapshot:rolled_back", "migrate_workload:rolled_back", "validate_quality:failed",
		"rollback_migrate_workload:completed", "rollback_take_snapshot:completed"}
	if got := stepStatuses(p); !slices.Equal(got, want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	if got := x.received(); !slices.Equal(got, []string{"take_snapshot", "migrate_workload", "validate_quality",
		"rollback_migrate_workload", "rollback_take_snapshot"}) {
		t.Errorf("agents received %v", got)
	}
	if p.Steps[2].Error == "" {
		t.Error("the failed step says nothing")
	}
	// A rollback task carries the step it undoes, and that step's result.
	co := x.call("rollback_migrate_workload").coordinationOf(t)
	if co["rollback_of"] != p.Steps[1].ID || fmt.Sprint(co["step_result"]) != "map[did:migrate_workload]" {
		t.Errorf("rollback parameters %v", co)
	}
	if s := x.recStatus(out.Recommendations[0].RecordID); s != orchestrator.RecommendationRolledBack {
		t.Errorf("recommendation %s, want rolled_back", s)
	}
	if got := x.eventKinds(p.ID); !slices.Contains(got, orchestrator.EventPlanRollingBack) || got[len(got)-1] != orchestrator.EventPlanRolledBack {
		t.Errorf("events %v", got)
	}
	if n := counterValue(t, x.reg, "orchestrator_coordination_rollbacks_total", "rolled_back"); n != 1 {
		t.Errorf("rollbacks rolled_back = %v, want 1", n)
	}
}

func TestFailedRollbackStepStopsTheRollback(t *testing.T) {
	x := newExec(t)
	x.agent(map[string]answer{"validate_quality": refuse, "rollback_migrate_workload": refuse}, steps...)
	out := x.coordinate(true, spot("r1"))
	p := x.waitEnd(out.ExecutionPlans[0].ID)
	if p.Status != orchestrator.PlanRollbackFailed || p.RolledBackAt == nil {
		t.Fatalf("plan %s, want rollback_failed: %v", p.Status, stepStatuses(p))
	}
	want := []string{"take_snapshot:completed", "migrate_workload:completed", "validate_quality:failed",
		"rollback_migrate_workload:failed", "rollback_take_snapshot:skipped"}
	if got := stepStatuses(p); !slices.Equal(got, want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	if slices.Contains(x.received(), "rollback_take_snapshot") {
		t.Error("rollback went on past a failed rollback step")
	}
	if s := x.recStatus(out.Recommendations[0].RecordID); s != orchestrator.RecommendationFailed {
		t.Errorf("recommendation %s, want failed", s)
	}
}

// A failed step that is not critical does not stop the plan; a critical
// one with nothing reversible done fails it, with nothing to roll back.
func TestFailureWithNothingToUndo(t *testing.T) {
	x := newExec(t)
	x.agent(map[string]answer{"validate_capacity": refuse}, "validate_capacity", "scale", "validate_performance")
	out := x.coordinate(true, rec("r1", action("scale_down"), on("c-1")))
	p := x.waitEnd(out.ExecutionPlans[0].ID)
	if p.Status != orchestrator.PlanFailed {
		t.Fatalf("plan %s, want failed: %v", p.Status, stepStatuses(p))
	}
	if got, want := stepStatuses(p), []string{"validate_capacity:failed", "scale:skipped", "validate_performance:skipped"}; !slices.Equal(got, want) {
		t.Errorf("steps %v, want %v", got, want)
	}
}

func TestCancelMidPlanAbortsTheRunningStep(t *testing.T) {
	x := newExec(t)
	aborted := make(chan struct{})
	x.agent(map[string]answer{"migrate_workload": func(_ http.ResponseWriter, r *http.Request, _ stepCall) {
		<-r.Context().Done() // works until the orchestrator hangs up
		close(aborted)
	}}, steps...)
	out := x.coordinate(true, spot("r1"))
	id := out.ExecutionPlans[0].ID
	x.wait(id, "migrate_workload to run", func(p orchestrator.Plan) bool {
		return p.CurrentStep == 1 && p.Steps[1].Status == orchestrator.StepRunning
	})
	p, err := x.engine.CancelPlan(context.Background(), id, coordination.Actor{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != orchestrator.PlanCancelled {
		t.Fatalf("cancel answered %s", p.Status)
	}
	select {
	case <-aborted:
	case <-time.After(10 * time.Second):
		t.Fatal("the running step's call to the agent was not aborted")
	}
	task, err := x.tasks.Get(context.Background(), p.Steps[1].TaskID)
	if err != nil || task.Status != dispatch.StatusCancelled {
		t.Errorf("the step's task: %v %s, want cancelled", err, task.Status)
	}
	time.Sleep(100 * time.Millisecond) // the executor's polls, had it gone on
	p = x.waitEnd(id)
	if got, want := stepStatuses(p), []string{"take_snapshot:completed", "migrate_workload:cancelled", "validate_quality:skipped"}; !slices.Equal(got, want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	if got := x.received(); !slices.Equal(got, []string{"take_snapshot", "migrate_workload"}) {
		t.Errorf("agents received %v after the cancel", got)
	}
	if s := x.recStatus(out.Recommendations[0].RecordID); s != orchestrator.RecommendationCancelled {
		t.Errorf("recommendation %s, want cancelled", s)
	}
	if _, err := x.engine.CancelPlan(context.Background(), id, coordination.Actor{Name: "bob"}); !errors.Is(err, coordination.ErrInvalidTransition) {
		t.Errorf("second cancel: %v, want ErrInvalidTransition", err)
	}
}

// An agent that dies in the middle of a step (its connection drops) is
// the dispatcher's to retry, with the same task id; when it dies on
// every attempt the step fails and the plan rolls back.
func TestAgentDyingMidStep(t *testing.T) {
	for _, tc := range []struct {
		name   string
		deaths int
		want   orchestrator.PlanStatus
	}{
		{"comes back", 1, orchestrator.PlanCompleted},
		{"stays dead", 100, orchestrator.PlanRolledBack},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newExec(t)
			var mu sync.Mutex
			deaths := tc.deaths
			x.agent(map[string]answer{"migrate_workload": func(w http.ResponseWriter, r *http.Request, c stepCall) {
				mu.Lock()
				die := deaths > 0
				deaths--
				mu.Unlock()
				if !die {
					done(w, r, c)
					return
				}
				if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
					_ = conn.Close()
				}
			}}, steps...)
			out := x.coordinate(true, spot("r1"))
			p := x.waitEnd(out.ExecutionPlans[0].ID)
			if p.Status != tc.want {
				t.Fatalf("plan %s, want %s: %v", p.Status, tc.want, stepStatuses(p))
			}
			var ids []string
			x.mu.Lock()
			for _, c := range x.calls {
				if c.TaskType == "migrate_workload" {
					ids = append(ids, c.TaskID)
				}
			}
			x.mu.Unlock()
			// COORDINATION_STEP_MAX_RETRIES=1: two attempts at most.
			if len(ids) != 2 || ids[0] != p.Steps[1].ID || ids[1] != ids[0] {
				t.Errorf("migrate_workload delivered as %v, want twice as task %s", ids, p.Steps[1].ID)
			}
		})
	}
}

func TestExecuteTwiceOrUnapproved(t *testing.T) {
	x := newExec(t)
	x.agent(nil, steps...)
	ctx, bob := context.Background(), coordination.Actor{Name: "bob"}
	out := x.coordinate(false, spot("r1"))
	id := out.ExecutionPlans[0].ID
	if out.ExecutionPlans[0].Status != orchestrator.PlanPending {
		t.Fatalf("without execute_now the plan is %s", out.ExecutionPlans[0].Status)
	}
	p, err := x.engine.ExecutePlan(ctx, id, bob)
	if err != nil || p.Status != orchestrator.PlanRunning || p.StartedAt == nil {
		t.Fatalf("execute: %v, %s", err, p.Status)
	}
	if _, err := x.engine.ExecutePlan(ctx, id, bob); !errors.Is(err, coordination.ErrInvalidTransition) {
		t.Errorf("second execute: %v, want ErrInvalidTransition", err)
	}
	if p = x.waitEnd(id); p.Status != orchestrator.PlanCompleted {
		t.Errorf("plan %s", p.Status)
	}
	if _, err := x.engine.ExecutePlan(ctx, id, bob); !errors.Is(err, coordination.ErrInvalidTransition) {
		t.Errorf("execute of a completed plan: %v, want ErrInvalidTransition", err)
	}
	if _, err := x.engine.ExecutePlan(ctx, "nope", bob); !errors.Is(err, coordination.ErrNotFound) {
		t.Errorf("execute of an unknown plan: %v, want ErrNotFound", err)
	}
	// A cancelled plan cannot run.
	out = x.coordinate(false, spot("r2", on("i-2")))
	if _, err := x.engine.CancelPlan(ctx, out.ExecutionPlans[0].ID, bob); err != nil {
		t.Fatal(err)
	}
	if _, err := x.engine.ExecutePlan(ctx, out.ExecutionPlans[0].ID, bob); !errors.Is(err, coordination.ErrInvalidTransition) {
		t.Errorf("execute of a cancelled plan: %v, want ErrInvalidTransition", err)
	}
}

// Two approved plans touching one instance never run at once: the
// second waits for the first's resource lease, saying so.
func TestOnePlanAtATimePerResource(t *testing.T) {
	x := newExec(t)
	release := make(chan struct{})
	x.agent(map[string]answer{"migrate_workload": func(w http.ResponseWriter, r *http.Request, c stepCall) {
		if c.coordinationOf(t)["recommendation_id"] == firstRec.Load() {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		done(w, r, c)
	}}, steps...)
	first := x.coordinate(true, spot("r1"))
	firstRec.Store(first.Recommendations[0].RecordID)
	x.wait(first.ExecutionPlans[0].ID, "migrate_workload to run", func(p orchestrator.Plan) bool { return p.CurrentStep == 1 })
	second := x.coordinate(true, spot("r2"))
	id := second.ExecutionPlans[0].ID
	p := x.wait(id, "it to wait for i-1", func(p orchestrator.Plan) bool { return p.WaitingFor != "" })
	if want := "resource i-1 is held by plan " + first.ExecutionPlans[0].ID; p.WaitingFor != want || p.Steps[0].Status != orchestrator.StepPending {
		t.Errorf("second plan waits for %q (step %s), want %q", p.WaitingFor, p.Steps[0].Status, want)
	}
	close(release)
	if p := x.waitEnd(id); p.Status != orchestrator.PlanCompleted || p.WaitingFor != "" {
		t.Fatalf("second plan %s waiting for %q", p.Status, p.WaitingFor)
	}
	// The second plan's first step started after the first plan ended.
	fp, _ := x.engine.Plan(context.Background(), first.ExecutionPlans[0].ID)
	sp, _ := x.engine.Plan(context.Background(), id)
	if sp.Steps[0].StartedAt.Before(*fp.CompletedAt) {
		t.Errorf("second plan started at %v, before the first ended at %v", sp.Steps[0].StartedAt, fp.CompletedAt)
	}
}

var firstRec atomicString

type atomicString struct {
	mu sync.Mutex
	s  string
}

func (a *atomicString) Store(s string) { a.mu.Lock(); a.s = s; a.mu.Unlock() }
func (a *atomicString) Load() string   { a.mu.Lock(); defer a.mu.Unlock(); return a.s }

// Plans run in dependency order, and a dependency that fails cancels its
// dependents.
func TestPlansRunInDependencyOrder(t *testing.T) {
	x := newExec(t)
	x.agent(nil, steps...)
	out := x.coordinate(true, rec("base", on("db-1")), rec("top", on("db-2"), dependsOn("base")))
	for _, p := range out.ExecutionPlans {
		if p := x.waitEnd(p.ID); p.Status != orchestrator.PlanCompleted {
			t.Fatalf("plan %s %s", p.RecommendationID, p.Status)
		}
	}
	got := x.received()
	baseTask, topTask := out.ExecutionPlans[0].Steps[0].ID, out.ExecutionPlans[1].Steps[0].ID
	x.mu.Lock()
	order := []string{x.calls[0].TaskID, x.calls[1].TaskID}
	x.mu.Unlock()
	if len(got) != 2 || order[0] != baseTask || order[1] != topTask {
		t.Errorf("tasks ran %v (%v), want base's %s then top's %s", order, got, baseTask, topTask)
	}

	// A failing dependency: the dependent is cancelled, never run.
	x2 := newExec(t)
	x2.agent(map[string]answer{"tune": refuse}, append(steps, "resize")...)
	out = x2.coordinate(true, rec("base", on("db-1")), rec("top", on("db-2"), dependsOn("base"), action("resize")))
	base, top := x2.waitEnd(out.ExecutionPlans[0].ID), x2.waitEnd(out.ExecutionPlans[1].ID)
	if base.Status != orchestrator.PlanFailed || top.Status != orchestrator.PlanCancelled {
		t.Errorf("base %s, top %s; want failed and cancelled", base.Status, top.Status)
	}
	if slices.Contains(x2.received(), "resize") {
		t.Error("the dependent's step ran after its dependency failed")
	}
}

// histogramCount is how many observations the histograms of family name
// hold, all labels together.
func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// dyingStore is a replica's view of the shared store, cut off when the
// replica dies: from then on every call fails, so it can neither renew
// nor release its leases, as a killed process cannot.
type dyingStore struct {
	coordination.Store
	mu   sync.Mutex
	dead bool
}

var errDead = errors.New("the replica is dead")

func (d *dyingStore) kill() { d.mu.Lock(); d.dead = true; d.mu.Unlock() }

func (d *dyingStore) alive() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return errDead
	}
	return nil
}

func (d *dyingStore) Plan(ctx context.Context, id string) (orchestrator.Plan, error) {
	if err := d.alive(); err != nil {
		return orchestrator.Plan{}, err
	}
	return d.Store.Plan(ctx, id)
}

func (d *dyingStore) Recommendation(ctx context.Context, id string) (orchestrator.Recommendation, error) {
	if err := d.alive(); err != nil {
		return orchestrator.Recommendation{}, err
	}
	return d.Store.Recommendation(ctx, id)
}

func (d *dyingStore) ClaimPlans(ctx context.Context, owner string, now, until time.Time, limit int) ([]orchestrator.Plan, error) {
	if err := d.alive(); err != nil {
		return nil, err
	}
	return d.Store.ClaimPlans(ctx, owner, now, until, limit)
}

func (d *dyingStore) UpdateRun(ctx context.Context, id, owner string, until time.Time, change func(*orchestrator.Plan, orchestrator.Recommendation) (coordination.Effects, error)) (orchestrator.Plan, error) {
	if err := d.alive(); err != nil {
		return orchestrator.Plan{}, err
	}
	return d.Store.UpdateRun(ctx, id, owner, until, change)
}

func (d *dyingStore) RenewRuns(ctx context.Context, owner string, ids []string, until time.Time) ([]string, error) {
	if err := d.alive(); err != nil {
		return nil, err
	}
	return d.Store.RenewRuns(ctx, owner, ids, until)
}

func (d *dyingStore) ReleaseRun(ctx context.Context, id, owner string) error {
	if err := d.alive(); err != nil {
		return err
	}
	return d.Store.ReleaseRun(ctx, id, owner)
}

// A replica that dies in the middle of a step leaves its plan to another
// once the run lease lapses: the other resumes at the current step,
// waits for the step's task that was sent (it is never sent twice), and
// runs the rest.
func TestAnotherReplicaResumesADeadReplicasPlan(t *testing.T) {
	shared := coordination.NewMemoryStore()
	view := &dyingStore{Store: shared}
	first := newExecOn(t, view, nil)
	release := make(chan struct{})
	first.agent(map[string]answer{"migrate_workload": func(w http.ResponseWriter, r *http.Request, c stepCall) {
		select {
		case <-release:
			done(w, r, c)
		case <-r.Context().Done():
		}
	}}, steps...)
	out := first.coordinate(true, spot("r1"))
	id := out.ExecutionPlans[0].ID
	first.wait(id, "migrate_workload to run", func(p orchestrator.Plan) bool {
		return p.CurrentStep == 1 && p.Steps[1].Status == orchestrator.StepRunning
	})

	view.kill()
	second := newExecOn(t, shared, first) // the same dispatcher: the task outlives the replica, as in PostgreSQL
	close(release)                        // the agent finishes the step the dead replica sent
	p := second.waitEnd(id)
	if p.Status != orchestrator.PlanCompleted {
		t.Fatalf("plan %s after the takeover: %v", p.Status, stepStatuses(p))
	}
	if got, want := first.received(), []string{"take_snapshot", "migrate_workload", "validate_quality"}; !slices.Equal(got, want) {
		t.Errorf("agents received %v, want each step once: %v", got, want)
	}
}

// A step waits up to COORDINATION_AGENT_WAIT for an agent of its type,
// saying so, and runs once one registers; without one in time it fails.
func TestStepWaitsForAnAgent(t *testing.T) {
	x := newExec(t, func(c *coordination.Config) { c.AgentWait = time.Hour })
	out := x.coordinate(true, spot("r1"))
	id := out.ExecutionPlans[0].ID
	p := x.wait(id, "it to wait for an agent", func(p orchestrator.Plan) bool { return p.WaitingFor != "" })
	if p.Steps[0].Status != orchestrator.StepRunning || !strings.Contains(p.WaitingFor, "take_snapshot") {
		t.Errorf("waiting plan: step %s, waiting for %q", p.Steps[0].Status, p.WaitingFor)
	}
	x.agent(nil, steps...)
	if p = x.waitEnd(id); p.Status != orchestrator.PlanCompleted || p.WaitingFor != "" {
		t.Errorf("plan %s waiting for %q once the agent came", p.Status, p.WaitingFor)
	}

	// COORDINATION_AGENT_WAIT=0: no agent fails the step at once.
	x = newExec(t)
	p = x.waitEnd(x.coordinate(true, spot("r1")).ExecutionPlans[0].ID)
	if p.Status != orchestrator.PlanFailed || !strings.Contains(p.Steps[0].Error, "no healthy cost agent") {
		t.Errorf("plan %s, first step %q", p.Status, p.Steps[0].Error)
	}
}
