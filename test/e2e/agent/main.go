// Command agent is the e2e suite's test agent: a minimal OptiInfra agent
// built on the Go SDK (pkg/orchestrator, itself standard library only),
// so the suite runs the SDK's agent side against the real orchestrator on
// a cluster. It registers with the orchestrator, heartbeats at the interval
// it is told, serves POST /task, and unregisters on SIGTERM.
//
// With AGENT_DIALECT=v1 it speaks the orchestrator's /api/v1 dialect
// instead (v1.go), as OptiInfra's application agent does: it registers
// through POST /api/v1/agents/register with an id of its own choosing,
// announcing "host":"0.0.0.0" by default (the orchestrator then registers
// the address the request came from: the pod IP), heartbeats through
// POST /api/v1/agents/{id}/heartbeat, and deletes itself with
// DELETE /api/v1/agents/{id} on SIGTERM. Tasks reach it the same way.
//
// Settings, from the environment:
//
//	ORCHESTRATOR_URL    the orchestrator's base URL (required), e.g. http://orch-orchestrator:8080
//	AGENT_DIALECT       "a" (default): /agents/...; "v1": /api/v1/agents/...
//	AGENT_HOST          the host the orchestrator delivers tasks to (required in dialect A; the pod IP
//	                    from the downward API in Kubernetes); in dialect v1 the host it announces
//	                    (default 0.0.0.0: the orchestrator takes the request's address)
//	AGENT_PORT          the port this agent listens on and registers (default 8000)
//	AGENT_ID            dialect v1 only: the agent's own id (default: the hostname, i.e. the pod name)
//	AGENT_NAME          the registered name (default: the hostname, i.e. the pod name)
//	AGENT_TYPE          cost, performance, resource or application (default cost)
//	AGENT_CAPABILITIES  comma-separated task types it handles (default e2e-echo), plan step
//	                    types too, e.g. e2e-echo,take_snapshot,migrate_workload,validate_quality
//	AGENT_TOKEN_FILE    a file whose first line is the agent bearer token (optional)
//
// A task of a type it handles is answered 200 with
// {"task_id","status":"completed","result":{"hostname","host","agent_name","agent_id","dialect","task_type","parameters"},"execution_time_ms"},
// host being where the orchestrator registered it (in dialect v1, from its
// answer to the registration);
// any other type gets 400 {"task_id","status":"failed","error"}. A
// parameter "sleep_ms" (a number) makes the task take that long, or until
// the orchestrator gives up on the attempt.
//
// A task whose parameters hold a "coordination" object is a step of one of
// the orchestrator's execution plans (task_type the step's action:
// take_snapshot, migrate_workload, validate_quality, rollback_<action>);
// the agent serves the step types in AGENT_CAPABILITIES (steps.go). Its
// result names what it did instead of echoing the parameters:
// {"step","task_id","plan_id","step_id","recommendation_id","customer_id",
// "action","resources"} beside hostname, host, agent_name, agent_id,
// dialect and task_type; take_snapshot adds "snapshot_id" (snap-<task_id>);
// rollback_<action> adds "rollback_of", "undid" and "step_result", the
// undone step's result as the orchestrator sent it, and
// rollback_take_snapshot "deleted_snapshot_id" read from it. A parameter
// "fail_steps" (a list of step types) makes those steps answer 400
// failed, so a plan can be made to fail, and roll back, at any step.
//
// GET /live always answers 200;
// GET /ready answers 200 once registered; GET /deliveries counts the
// deliveries of each task_id and the most at the same time (ledger.go).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// version is reported at registration.
const version = "e2e-1"

type agent struct {
	orchestrator string
	dialect      string // "a" or "v1"
	id           string // dialect v1: the agent's own id
	name, typ    string
	host         string
	port         int
	capabilities []string
	token        string
	hostname     string

	// keeper keeps the registration alive; set by run.
	keeper interface{ AgentID() string }
	v1     *v1Agent // the keeper in dialect v1

	deliveries *ledger
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	a, err := fromEnv()
	if err != nil {
		log.Printf("agent: %v", err)
		os.Exit(2)
	}
	if err := a.run(); err != nil {
		log.Printf("agent: %v", err)
		os.Exit(1)
	}
}

func fromEnv() (*agent, error) {
	hostname, _ := os.Hostname()
	a := &agent{
		orchestrator: os.Getenv("ORCHESTRATOR_URL"),
		dialect:      getenv("AGENT_DIALECT", "a"),
		name:         getenv("AGENT_NAME", hostname),
		typ:          getenv("AGENT_TYPE", "cost"),
		host:         os.Getenv("AGENT_HOST"),
		hostname:     hostname,
		deliveries:   newLedger(),
	}
	if a.orchestrator == "" {
		return nil, errors.New("ORCHESTRATOR_URL is not set")
	}
	switch a.dialect {
	case "a":
		if a.host == "" {
			return nil, errors.New("AGENT_HOST is not set")
		}
	case "v1":
		a.id = getenv("AGENT_ID", hostname)
		if a.id == "" {
			return nil, errors.New("AGENT_ID is not set and there is no hostname")
		}
		a.host = getenv("AGENT_HOST", "0.0.0.0")
	default:
		return nil, fmt.Errorf(`AGENT_DIALECT=%q: must be "a" or "v1"`, a.dialect)
	}
	port, err := strconv.Atoi(getenv("AGENT_PORT", "8000"))
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("AGENT_PORT=%q: must be a port number", os.Getenv("AGENT_PORT"))
	}
	a.port = port
	for c := range strings.SplitSeq(getenv("AGENT_CAPABILITIES", "e2e-echo"), ",") {
		if c = strings.TrimSpace(c); c != "" {
			a.capabilities = append(a.capabilities, c)
		}
	}
	if file := os.Getenv("AGENT_TOKEN_FILE"); file != "" {
		data, err := os.ReadFile(file) // #nosec G304 G703 -- the path is this agent's own setting
		if err != nil {
			return nil, fmt.Errorf("AGENT_TOKEN_FILE: %w", err)
		}
		a.token, _, _ = strings.Cut(strings.TrimSpace(string(data)), "\n")
		a.token = strings.TrimSpace(a.token)
	}
	return a, nil
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func (a *agent) run() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var keep func(context.Context) error
	if a.dialect == "v1" {
		a.v1 = newV1Agent(a.orchestrator, a.token, orchestrator.RegistrationV1{
			AgentID: a.id, AgentName: a.name, AgentType: orchestrator.AgentType(a.typ), Version: version,
			Host: a.host, Port: a.port, Capabilities: a.capabilities, Status: orchestrator.StatusWordActive,
		})
		a.keeper = a.v1
		keep = func(ctx context.Context) error { return a.v1.Run(ctx, log.Printf) }
	} else {
		var opts []orchestrator.Option
		if a.token != "" {
			opts = append(opts, orchestrator.WithToken(a.token))
		}
		client, err := orchestrator.NewClient(a.orchestrator, opts...)
		if err != nil {
			return err
		}
		hb := &orchestrator.Heartbeater{
			Client: client,
			Registration: orchestrator.Registration{
				Name: a.name, Type: orchestrator.AgentType(a.typ), Host: a.host, Port: a.port,
				Capabilities: a.capabilities, Version: version,
				Metadata: map[string]any{"hostname": a.hostname, "e2e": true},
			},
			Report: func() orchestrator.HeartbeatRequest {
				return orchestrator.HeartbeatRequest{Status: orchestrator.AgentHealthy, Metadata: map[string]any{"hostname": a.hostname}}
			},
			Logf: log.Printf,
		}
		a.keeper = hb
		keep = hb.Run
	}

	srv := &http.Server{
		Addr:              net.JoinHostPort("", strconv.Itoa(a.port)),
		Handler:           a.handler(),
		ReadHeaderTimeout: 5 * time.Second,
	}
	listener, err := (&net.ListenConfig{}).Listen(ctx, "tcp", srv.Addr)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(listener) }()
	log.Printf("listening on %s; orchestrator %s; registering (dialect %s) as %s (%s) at %s:%d with capabilities %v",
		srv.Addr, a.orchestrator, a.dialect, a.name, a.typ, a.host, a.port, a.capabilities)

	// Until SIGTERM; then it leaves the registry first, so no new task is
	// routed here, and the requests in flight finish after.
	runErr := keep(ctx)
	if runErr != nil && ctx.Err() != nil {
		// Unregistering failed: the orchestrator stops routing here once
		// the heartbeats stop. Not a reason to exit non-zero.
		log.Print(runErr)
		runErr = nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Print("stopped")
	return runErr // the orchestrator refused the registration for good, if set
}

// handler serves the agent's routes; a.keeper must be set.
func (a *agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /task", orchestrator.TaskFunc(a.runTask))
	mux.Handle("GET /deliveries", a.deliveries)
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if a.keeper.AgentID() == "" {
			http.Error(w, "not registered yet", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	return mux
}

// runTask runs a task: it echoes its parameters with where it ran, or
// for a plan step (steps.go) says what it did.
func (a *agent) runTask(ctx context.Context, d orchestrator.Delivery) (any, error) {
	defer a.deliveries.begin(d.TaskID)()
	if !slices.Contains(a.capabilities, d.TaskType) {
		return nil, orchestrator.Reject(fmt.Errorf("task type %q not supported", d.TaskType))
	}
	coordination, failSteps, isStep, err := planStep(d)
	if err != nil {
		return nil, err
	}
	if isStep && slices.Contains(failSteps, d.TaskType) {
		log.Printf("task %s (%s) failed: requested by fail_steps", d.TaskID, d.TaskType)
		return nil, orchestrator.Reject(fmt.Errorf("step %s of plan %s failed: requested by fail_steps", d.TaskType, coordination.PlanID))
	}
	var p struct {
		SleepMS int `json:"sleep_ms"`
	}
	if err := json.Unmarshal(d.Parameters, &p); err == nil && p.SleepMS > 0 {
		select {
		case <-time.After(time.Duration(p.SleepMS) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	log.Printf("task %s (%s) done", d.TaskID, d.TaskType)
	host := a.host
	if a.v1 != nil {
		host = a.v1.Registered().Host // where the orchestrator registered it
	}
	result := map[string]any{
		"hostname":   a.hostname,
		"host":       host,
		"agent_name": a.name,
		"agent_id":   a.keeper.AgentID(),
		"dialect":    a.dialect,
		"task_type":  d.TaskType,
		"parameters": d.Parameters,
	}
	if isStep {
		return stepResult(d, coordination, result), nil
	}
	return result, nil
}
