package orchestrator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/app"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// The tests here run the Client, the TaskHandler and the Heartbeater
// against the real orchestrator (internal/app, wired as the binary wires
// it, in this process): a contract test of both sides of the wire.

const (
	agentToken    = "contract-agent-token-0123456789"
	operatorToken = "contract-operator-token-0123456789"
	// intervalSeconds is the heartbeat interval the service names: not the
	// default, so a Heartbeater that ignored it would show.
	intervalSeconds = 7
)

// startService runs the real service on a loopback port with both token
// roles on, until the test ends, and returns its base URL.
func startService(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	cfg, err := config.Load(ctx, map[string]string{
		"SHUTDOWN_DELAY":           "0s",
		"AUTH_AGENT_TOKENS":        agentToken,
		"AUTH_OPERATOR_TOKENS":     operatorToken,
		"AGENT_HEARTBEAT_INTERVAL": strconv.Itoa(intervalSeconds) + "s",
		"TASK_RETRY_BACKOFF":       "1ms",
		"TASK_RETRY_BACKOFF_MAX":   "2ms",
	})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := app.New(app.Options{Config: cfg, Logger: zap.NewNop(), Build: buildinfo.Read()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- svc.Serve(runCtx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("the service: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// clients returns an agent's and an operator's Client of base.
func clients(t *testing.T, base string) (agent, operator *orchestrator.Client) {
	t.Helper()
	return newClient(t, base, orchestrator.WithToken(agentToken)), newClient(t, base, orchestrator.WithToken(operatorToken))
}

// startAgent serves fn as an agent's POST /task on a loopback port and
// returns the port. Every delivery's raw body is sent to bodies, if given.
func startAgent(t *testing.T, fn orchestrator.TaskFunc, bodies chan<- []byte) int {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("POST /task", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		if bodies != nil {
			bodies <- data
		}
		r.Body = io.NopCloser(bytes.NewReader(data))
		fn.ServeHTTP(w, r)
	}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

func TestContractAgents(t *testing.T) {
	ctx := context.Background()
	base := startService(t)
	agent, operator := clients(t, base)
	reg := orchestrator.Registration{Name: "cost-1", Type: orchestrator.AgentTypeCost, Host: "127.0.0.1", Port: 9001,
		Capabilities: []string{"analyze", "forecast"}, Version: "1.4.0", Metadata: map[string]any{"region": "eu-west-1"}}

	registered, err := agent.Register(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	id := registered.AgentID
	if id == "" || registered.HeartbeatURL != "/agents/"+id+"/heartbeat" ||
		registered.HeartbeatIntervalSeconds != intervalSeconds || registered.RegisteredAt.IsZero() {
		t.Errorf("Register = %+v", registered)
	}
	if again, err := agent.Register(ctx, reg); err != nil || again.AgentID != id {
		t.Errorf("registering again: %+v, %v; want the same agent_id %s", again, err, id)
	}

	hb, err := agent.Heartbeat(ctx, id, orchestrator.HeartbeatRequest{Status: orchestrator.AgentDegraded, Metadata: map[string]any{"cpu_percent": 12.5}})
	if err != nil || !hb.Received || hb.NextIntervalSeconds != intervalSeconds || hb.Timestamp.IsZero() {
		t.Errorf("Heartbeat = %+v, %v", hb, err)
	}
	// An empty heartbeat means healthy; it sends no metadata, so the
	// previous heartbeat's stays.
	if _, err := agent.Heartbeat(ctx, id, orchestrator.HeartbeatRequest{}); err != nil {
		t.Errorf("an empty heartbeat: %v", err)
	}

	got, err := operator.GetAgent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want := orchestrator.Agent{ID: id, Name: reg.Name, Type: reg.Type, Host: reg.Host, Port: reg.Port, Capabilities: reg.Capabilities,
		Status: orchestrator.AgentHealthy, Version: reg.Version, RegisteredAt: got.RegisteredAt, LastSeen: got.LastSeen,
		Metadata: map[string]any{"region": "eu-west-1", "cpu_percent": 12.5}, AnnouncedHost: reg.Host, AddressSource: orchestrator.AddressAnnounced}
	if !reflect.DeepEqual(got, want) || got.LastSeen.Before(got.RegisteredAt) {
		t.Errorf("GetAgent =\n %+v\nwant\n %+v", got, want)
	}

	for typ, n := range map[orchestrator.AgentType]int{"": 1, orchestrator.AgentTypeCost: 1, orchestrator.AgentTypeResource: 0} {
		list, err := operator.ListAgents(ctx, typ)
		if err != nil || len(list) != n || (n == 1 && list[0].ID != id) || list == nil {
			t.Errorf("ListAgents(%q) = %+v, %v; want %d agent(s), an empty list rather than nil", typ, list, err, n)
		}
	}
	_, err = operator.ListAgents(ctx, "gpu")
	expectAPIError(t, "ListAgents(gpu)", err, 400, `type: "gpu" is not an agent type`)

	// Refusals carry the server's message.
	bad := reg
	bad.Port = 0
	_, err = agent.Register(ctx, bad)
	expectAPIError(t, "Register with port 0", err, 400, "port: must be an integer from 1 to 65535")
	bad = reg
	bad.Host = "203.0.113.7"
	_, err = agent.Register(ctx, bad)
	expectAPIError(t, "Register with a public host", err, 403, "host: ")

	// Each role's token, and only it.
	_, err = operator.Register(ctx, reg)
	expectAPIError(t, "Register with the operator token", err, 401, "agent role")
	_, err = agent.ListAgents(ctx, "")
	expectAPIError(t, "ListAgents with the agent token", err, 401, "operator role")
	_, err = newClient(t, base).GetAgent(ctx, id)
	expectAPIError(t, "GetAgent without a token", err, 401, "a bearer token is required")

	if err := agent.Unregister(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = operator.GetAgent(ctx, id)
	expectAPIError(t, "GetAgent after Unregister", err, 404, `agent "`+id+`" not found`)
	_, err = agent.Heartbeat(ctx, id, orchestrator.HeartbeatRequest{})
	if !orchestrator.IsNotFound(err) {
		t.Errorf("Heartbeat after Unregister: %v, want a 404", err)
	}
	expectAPIError(t, "Unregister twice", agent.Unregister(ctx, id), 404, "not found")
}

func TestContractTasks(t *testing.T) {
	ctx := context.Background()
	agent, operator := clients(t, startService(t))

	started := make(chan string, 1)  // task IDs of "block" tasks the agent runs
	cancelled := make(chan error, 1) // what their contexts ended with
	bodies := make(chan []byte, 100)
	port := startAgent(t, func(ctx context.Context, d orchestrator.Delivery) (any, error) {
		switch d.TaskType {
		case "analyze":
			var p struct{ Values []float64 }
			if err := json.Unmarshal(d.Parameters, &p); err != nil {
				return nil, orchestrator.Reject(err)
			}
			return map[string]any{"delivery": d, "sum": p.Values[0] + p.Values[1]}, nil
		case "quiet":
			return nil, nil
		case "flaky":
			return nil, errors.New("backend down")
		case "refuse":
			return nil, orchestrator.Reject(errors.New("no such account"))
		case "block":
			started <- d.TaskID
			<-ctx.Done()
			cancelled <- ctx.Err()
			return nil, ctx.Err()
		}
		return nil, orchestrator.Reject(errors.New("unknown task type " + d.TaskType))
	}, bodies)
	if _, err := agent.Register(ctx, orchestrator.Registration{Name: "worker", Type: orchestrator.AgentTypeCost, Host: "127.0.0.1", Port: port,
		Capabilities: []string{"analyze", "quiet", "flaky", "refuse", "block"}}); err != nil {
		t.Fatal(err)
	}
	wait := func(id string) orchestrator.Task {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		task, err := operator.WaitTask(wctx, id, 5*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		return task
	}
	var submitted []string
	submit := func(req orchestrator.TaskRequest) orchestrator.TaskAccepted {
		t.Helper()
		accepted, err := operator.SubmitTask(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if accepted.StatusURL != "/tasks/"+accepted.TaskID || accepted.CreatedAt.IsZero() ||
			(accepted.Status != orchestrator.TaskDispatched && accepted.Status != orchestrator.TaskPending) {
			t.Errorf("SubmitTask = %+v", accepted)
		}
		submitted = append(submitted, accepted.TaskID)
		return accepted
	}

	t.Run("a result completes the task", func(t *testing.T) {
		accepted := submit(orchestrator.TaskRequest{TaskType: "analyze", AgentType: orchestrator.AgentTypeCost,
			Parameters: json.RawMessage(`{"values":[1.5,2]}`), Priority: 5, TimeoutSeconds: new(20),
			Metadata: json.RawMessage(`{"requested_by":"ops"}`)})
		task := wait(accepted.TaskID)
		if task.Status != orchestrator.TaskCompleted || task.RetryCount != 0 || task.Error != "" || task.StartedAt == nil || task.CompletedAt == nil {
			t.Fatalf("task = %+v", task)
		}
		want := orchestrator.Task{TaskID: accepted.TaskID, TaskType: "analyze", AgentType: orchestrator.AgentTypeCost, Status: orchestrator.TaskCompleted,
			AgentID: task.AgentID, Parameters: json.RawMessage(`{"values":[1.5,2]}`), Priority: 5, TimeoutSeconds: 20,
			MaxRetries: orchestrator.DefaultMaxRetries, Metadata: json.RawMessage(`{"requested_by":"ops"}`), Result: task.Result,
			CreatedAt: task.CreatedAt, StartedAt: task.StartedAt, CompletedAt: task.CompletedAt}
		if !reflect.DeepEqual(task, want) || task.AgentID == "" {
			t.Errorf("task =\n %+v\nwant\n %+v", task, want)
		}
		var result struct {
			Delivery orchestrator.Delivery
			Sum      float64
		}
		if err := json.Unmarshal(task.Result, &result); err != nil {
			t.Fatal(err)
		}
		wantDelivery := orchestrator.Delivery{TaskID: accepted.TaskID, TaskType: "analyze", Parameters: json.RawMessage(`{"values":[1.5,2]}`),
			TimeoutSeconds: 20, Priority: 5, Metadata: json.RawMessage(`{"requested_by":"ops"}`)}
		if !reflect.DeepEqual(result.Delivery, wantDelivery) || result.Sum != 3.5 {
			t.Errorf("the agent was delivered %+v (sum %v), want %+v (sum 3.5)", result.Delivery, result.Sum, wantDelivery)
		}
		// The body as sent holds no field Delivery lacks, and Delivery
		// encodes it back as it was.
		raw := <-bodies
		var d orchestrator.Delivery
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("the delivery %s does not decode strictly into Delivery: %v", raw, err)
		}
		if again, _ := json.Marshal(d); !equalJSON(t, again, raw) {
			t.Errorf("the delivery %s encodes back as %s", raw, again)
		}
	})

	t.Run("no result", func(t *testing.T) {
		task := wait(submit(orchestrator.TaskRequest{TaskType: "quiet", AgentType: orchestrator.AgentTypeCost}).TaskID)
		if task.Status != orchestrator.TaskCompleted || task.Result != nil || task.Metadata != nil || string(task.Parameters) != `{}` {
			t.Errorf("task = %+v, want completed without result or metadata, with parameters {}", task)
		}
		<-bodies
	})

	t.Run("an error is retried", func(t *testing.T) {
		task := wait(submit(orchestrator.TaskRequest{TaskType: "flaky", AgentType: orchestrator.AgentTypeCost, MaxRetries: new(1)}).TaskID)
		if task.Status != orchestrator.TaskFailed || task.RetryCount != 1 || !strings.Contains(task.Error, "agent answered 500: backend down") {
			t.Errorf("task = %+v, want failed after 1 retry with the agent's error", task)
		}
		<-bodies
		<-bodies
	})

	t.Run("a rejection is not retried", func(t *testing.T) {
		task := wait(submit(orchestrator.TaskRequest{TaskType: "refuse", AgentType: orchestrator.AgentTypeCost, MaxRetries: new(3)}).TaskID)
		if task.Status != orchestrator.TaskFailed || task.RetryCount != 0 || !strings.Contains(task.Error, "agent answered 400: no such account") {
			t.Errorf("task = %+v, want failed at once with the agent's error", task)
		}
		<-bodies
	})

	t.Run("cancel", func(t *testing.T) {
		accepted := submit(orchestrator.TaskRequest{TaskType: "block", AgentType: orchestrator.AgentTypeCost, MaxRetries: new(0)})
		if got := <-started; got != accepted.TaskID {
			t.Fatalf("the agent started %s, want %s", got, accepted.TaskID)
		}
		task, err := operator.CancelTask(ctx, accepted.TaskID)
		if err != nil || task.Status != orchestrator.TaskCancelled || task.TaskID != accepted.TaskID {
			t.Errorf("CancelTask = %+v, %v; want the task, cancelled", task, err)
		}
		if err := <-cancelled; !errors.Is(err, context.Canceled) {
			t.Errorf("the agent's context ended with %v, want context.Canceled", err)
		}
		_, err = operator.CancelTask(ctx, accepted.TaskID)
		expectAPIError(t, "CancelTask twice", err, 409, "task already finished")
		<-bodies
	})

	t.Run("refusals", func(t *testing.T) {
		_, err := operator.SubmitTask(ctx, orchestrator.TaskRequest{TaskType: "forecast", AgentType: orchestrator.AgentTypeCost})
		expectAPIError(t, "SubmitTask nobody can run", err, 503, `no healthy cost agent has the capability "forecast"`)
		_, err = operator.SubmitTask(ctx, orchestrator.TaskRequest{TaskType: "analyze", AgentType: orchestrator.AgentTypeCost, TimeoutSeconds: new(0)})
		expectAPIError(t, "SubmitTask with timeout 0", err, 400, "timeout_seconds: must be from 1 to 300")
		_, err = operator.SubmitTask(ctx, orchestrator.TaskRequest{TaskType: "analyze", AgentType: orchestrator.AgentTypeCost, Parameters: json.RawMessage(`[1]`)})
		expectAPIError(t, "SubmitTask with an array of parameters", err, 400, "parameters: must be a JSON object")
		_, err = agent.SubmitTask(ctx, orchestrator.TaskRequest{TaskType: "analyze", AgentType: orchestrator.AgentTypeCost})
		expectAPIError(t, "SubmitTask with the agent token", err, 401, "operator role")
		_, err = operator.GetTask(ctx, "no-such-task")
		expectAPIError(t, "GetTask of an unknown task", err, 404, `task "no-such-task" not found`)
		_, err = operator.ListTasks(ctx, orchestrator.ListTasksOptions{Limit: 5000})
		expectAPIError(t, "ListTasks with limit 5000", err, 400, "limit: must be an integer from 1 to 1000")
		_, err = operator.ListTasks(ctx, orchestrator.ListTasksOptions{Status: "done"})
		expectAPIError(t, "ListTasks of status done", err, 400, "status: ")
	})

	t.Run("list", func(t *testing.T) {
		all, err := operator.ListTasks(ctx, orchestrator.ListTasksOptions{})
		if err != nil || all.Count != len(submitted) || all.NextCursor != "" {
			t.Fatalf("ListTasks = %d tasks (count %d, next %q), %v; want %d and no next page", len(all.Tasks), all.Count, all.NextCursor, err, len(submitted))
		}
		// Page by page, one task each, in submission order.
		var paged []string
		opts := orchestrator.ListTasksOptions{Limit: 1}
		for range len(submitted) + 1 {
			page, err := operator.ListTasks(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range page.Tasks {
				paged = append(paged, task.TaskID)
			}
			if page.NextCursor == "" {
				break
			}
			opts.Cursor = page.NextCursor
		}
		if !slices.Equal(paged, submitted) {
			t.Errorf("paged through %v, want %v", paged, submitted)
		}
		failed, err := operator.ListTasks(ctx, orchestrator.ListTasksOptions{Status: orchestrator.TaskFailed})
		if err != nil {
			t.Fatal(err)
		}
		statuses := map[orchestrator.TaskStatus]int{}
		for _, task := range failed.Tasks {
			statuses[task.Status]++
		}
		if !maps.Equal(statuses, map[orchestrator.TaskStatus]int{orchestrator.TaskFailed: 2}) {
			t.Errorf("ListTasks(failed) statuses %v, want the 2 failed tasks", statuses)
		}
	})
}

// TestContractHeartbeater runs a Heartbeater against the real service:
// registered at once, heartbeating at the service's interval, registered
// again when the service forgets it, unregistered when stopped.
func TestContractHeartbeater(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent, operator := clients(t, startService(t))
	h := &orchestrator.Heartbeater{
		Client:       agent,
		Registration: orchestrator.Registration{Name: "hb", Type: orchestrator.AgentTypeResource, Host: "127.0.0.1", Port: 9100, Capabilities: []string{"scale"}},
		Report: func() orchestrator.HeartbeatRequest {
			return orchestrator.HeartbeatRequest{Metadata: map[string]any{"tasks_running": 2.0}}
		},
	}
	// Each wait hands its duration to the test and goes on when told.
	waits, proceed := make(chan time.Duration), make(chan bool)
	orchestrator.SetWait(h, func(ctx context.Context, d time.Duration) bool {
		waits <- d
		return <-proceed
	})
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = h.Run(ctx) })

	if d := <-waits; d != intervalSeconds*time.Second {
		t.Errorf("waited %s after the first heartbeat, want the service's %ds", d, intervalSeconds)
	}
	first := h.AgentID()
	a, err := operator.GetAgent(ctx, first)
	if err != nil || a.Status != orchestrator.AgentHealthy || a.Metadata["tasks_running"] != 2.0 {
		t.Errorf("GetAgent = %+v, %v; want healthy with the heartbeat's metadata", a, err)
	}

	// The service forgets the agent: the next heartbeat's 404 registers
	// it again, at once.
	if err := agent.Unregister(ctx, first); err != nil {
		t.Fatal(err)
	}
	proceed <- true
	if d := <-waits; d != intervalSeconds*time.Second {
		t.Errorf("waited %s after registering again, want %ds", d, intervalSeconds)
	}
	second := h.AgentID()
	if second == "" || second == first {
		t.Errorf("after a 404 the agent is %q, want registered again (it was %s)", second, first)
	}
	if _, err := operator.GetAgent(ctx, second); err != nil {
		t.Errorf("GetAgent of the new registration: %v", err)
	}

	// Stopped: it unregisters.
	cancel()
	proceed <- false
	wg.Wait()
	if runErr != nil {
		t.Errorf("Run = %v", runErr)
	}
	if list, err := operator.ListAgents(context.Background(), ""); err != nil || len(list) != 0 {
		t.Errorf("agents after Run ended: %+v, %v; want none", list, err)
	}
}

// expectAPIError fails the test unless err is an *APIError with status
// code and a message containing msg.
func expectAPIError(t *testing.T, what string, err error, code int, msg string) {
	t.Helper()
	var apiErr *orchestrator.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != code || !strings.Contains(apiErr.Message, msg) {
		t.Errorf("%s: error %v, want an APIError %d with %q", what, err, code, msg)
		return
	}
	for _, token := range []string{agentToken, operatorToken} {
		if strings.Contains(err.Error(), token) {
			t.Errorf("%s: the error shows a token: %v", what, err)
		}
	}
}

// newClient is a Client of base whose idle connections close with the test.
func newClient(t *testing.T, base string, opts ...orchestrator.Option) *orchestrator.Client {
	t.Helper()
	c, err := orchestrator.NewClient(base, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// equalJSON reports whether a and b hold the same JSON value.
func equalJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}
