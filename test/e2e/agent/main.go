// Command agent is the e2e suite's test agent: a minimal OptiInfra agent
// that speaks the wire protocol existing agents use, built only on the
// standard library. It registers with the orchestrator, heartbeats at the
// interval it is told, serves POST /task, and unregisters on SIGTERM.
//
// Settings, from the environment:
//
//	ORCHESTRATOR_URL    the orchestrator's base URL (required), e.g. http://orch-orchestrator:8080
//	AGENT_HOST          the host the orchestrator delivers tasks to (required; the pod IP
//	                    from the downward API in Kubernetes)
//	AGENT_PORT          the port this agent listens on and registers (default 8000)
//	AGENT_NAME          the registered name (default: the hostname, i.e. the pod name)
//	AGENT_TYPE          cost, performance, resource or application (default cost)
//	AGENT_CAPABILITIES  comma-separated task types it handles (default e2e-echo)
//	AGENT_TOKEN_FILE    a file whose first line is the agent bearer token (optional)
//
// A task of a type it handles is answered 200 with
// {"task_id","status":"completed","result":{"hostname","host","task_type","parameters"},"execution_time_ms"};
// any other type gets 400 {"task_id","status":"failed","error"}. GET /live
// always answers 200; GET /ready answers 200 once registered.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// version is reported at registration.
const version = "e2e-1"

type agent struct {
	orchestrator string
	name, typ    string
	host         string
	port         int
	capabilities []string
	token        string
	hostname     string
	client       *http.Client

	mu       sync.Mutex
	id       string
	interval time.Duration
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
		orchestrator: strings.TrimSuffix(os.Getenv("ORCHESTRATOR_URL"), "/"),
		name:         getenv("AGENT_NAME", hostname),
		typ:          getenv("AGENT_TYPE", "cost"),
		host:         os.Getenv("AGENT_HOST"),
		hostname:     hostname,
		client:       &http.Client{Timeout: 10 * time.Second},
	}
	if a.orchestrator == "" {
		return nil, errors.New("ORCHESTRATOR_URL is not set")
	}
	if a.host == "" {
		return nil, errors.New("AGENT_HOST is not set")
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

	mux := http.NewServeMux()
	mux.HandleFunc("POST /task", a.handleTask)
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if a.agentID() == "" {
			http.Error(w, "not registered yet", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	srv := &http.Server{
		Addr:              net.JoinHostPort("", strconv.Itoa(a.port)),
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
	}
	listener, err := (&net.ListenConfig{}).Listen(ctx, "tcp", srv.Addr)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(listener) }()
	log.Printf("listening on %s; orchestrator %s; registering as %s (%s) at %s:%d with capabilities %v",
		srv.Addr, a.orchestrator, a.name, a.typ, a.host, a.port, a.capabilities)

	a.heartbeatLoop(ctx)

	// SIGTERM: leave the registry first, so no new task is routed here,
	// then finish the requests in flight.
	if id := a.agentID(); id != "" {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.unregister(uctx, id); err != nil {
			log.Printf("unregister %s: %v", id, err)
		} else {
			log.Printf("unregistered %s", id)
		}
		cancel()
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
	return nil
}

func (a *agent) agentID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// heartbeatLoop registers (retrying until the orchestrator answers 201),
// then heartbeats at once and at every interval until ctx ends. A 404
// means the orchestrator forgot this agent (a restart): register again.
func (a *agent) heartbeatLoop(ctx context.Context) {
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		id := a.agentID()
		if id == "" {
			if err := a.register(ctx); err != nil {
				log.Printf("register: %v (retrying)", err)
				wait = time.Second
				continue
			}
			id = a.agentID()
		}
		status, err := a.heartbeat(ctx, id)
		switch {
		case err != nil:
			log.Printf("heartbeat %s: %v", id, err)
		case status == http.StatusNotFound:
			log.Printf("heartbeat %s: 404, registering again", id)
			a.mu.Lock()
			a.id = ""
			a.mu.Unlock()
			wait = 0
			continue
		}
		a.mu.Lock()
		wait = a.interval
		a.mu.Unlock()
	}
}

func (a *agent) register(ctx context.Context) error {
	body := map[string]any{
		"name": a.name, "type": a.typ, "host": a.host, "port": a.port,
		"capabilities": a.capabilities, "version": version,
		"metadata": map[string]any{"hostname": a.hostname, "e2e": true},
	}
	var out struct {
		AgentID           string `json:"agent_id"`
		HeartbeatInterval int    `json:"heartbeat_interval_seconds"`
	}
	status, err := a.call(ctx, "/agents/register", body, &out)
	if err != nil {
		return err
	}
	if status != http.StatusCreated || out.AgentID == "" {
		return fmt.Errorf("POST /agents/register: status %d, agent_id %q", status, out.AgentID)
	}
	interval := time.Duration(out.HeartbeatInterval) * time.Second
	if interval <= 0 {
		interval = 30 * time.Second
	}
	a.mu.Lock()
	a.id, a.interval = out.AgentID, interval
	a.mu.Unlock()
	log.Printf("registered as %s; heartbeat every %s", out.AgentID, interval)
	return nil
}

func (a *agent) heartbeat(ctx context.Context, id string) (int, error) {
	body := map[string]any{"status": "healthy", "metadata": map[string]any{"hostname": a.hostname}}
	return a.call(ctx, "/agents/"+id+"/heartbeat", body, nil)
}

// unregister sends no body and no Content-Type, as existing agents do.
func (a *agent) unregister(ctx context.Context, id string) error {
	status, err := a.call(ctx, "/agents/"+id+"/unregister", nil, nil)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("status %d", status)
	}
	return nil
}

// call POSTs body (nil: none) as JSON to the orchestrator and decodes the
// answer into out when given.
func (a *agent) call(ctx context.Context, path string, body, out any) (int, error) {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.orchestrator+path, reader)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decoding %s: %w", data, err)
		}
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotFound {
		return resp.StatusCode, fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(data))
	}
	return resp.StatusCode, nil
}

// handleTask runs a task: it echoes its parameters with where it ran.
func (a *agent) handleTask(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	var task struct {
		TaskID     string          `json:"task_id"`
		TaskType   string          `json:"task_type"`
		Parameters json.RawMessage `json:"parameters"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&task); err != nil {
		reply(w, http.StatusBadRequest, map[string]any{"task_id": "", "status": "failed", "error": "bad task: " + err.Error()})
		return
	}
	if !slices.Contains(a.capabilities, task.TaskType) {
		reply(w, http.StatusBadRequest, map[string]any{"task_id": task.TaskID, "status": "failed",
			"error": fmt.Sprintf("task type %q not supported", task.TaskType)})
		return
	}
	log.Printf("task %s (%s) done", task.TaskID, task.TaskType)
	reply(w, http.StatusOK, map[string]any{
		"task_id": task.TaskID,
		"status":  "completed",
		"result": map[string]any{
			"hostname":   a.hostname,
			"host":       a.host,
			"agent_name": a.name,
			"task_type":  task.TaskType,
			"parameters": task.Parameters,
		},
		"execution_time_ms": float64(time.Since(started).Microseconds()) / 1000,
	})
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
