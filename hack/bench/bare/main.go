// Command bare is the benchmark's reference server: plain net/http, no
// middleware, answering /live, /ready and /health with fixed bytes shaped
// like the orchestrator's answers, behind an http.Server with the
// orchestrator's default timeouts. It also answers POST
// /agents/{id}/heartbeat the way a bare handler would (decode the JSON
// body, answer the orchestrator's 200 JSON), and POST /task as a fake agent
// that completes every task at once. It listens on 127.0.0.1:$PORT and
// exits 0 on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// probeBody is what the orchestrator's /live and /ready write when passing.
var probeBody = []byte("{}\n")

// healthBody has the shape and size (~440 bytes) of the orchestrator's /health.
var healthBody = []byte(`{"status":"ok","live":true,"ready":true,"draining":false,` +
	`"timestamp":"2026-01-01T00:00:00.000000000Z","version":"dev","uptime":"1m0s","uptime_seconds":60.123456789,` +
	`"checks":{"draining":{"kind":"readiness","status":"ok","last_run":"2026-01-01T00:00:00.000000000Z"},` +
	`"ping":{"kind":"liveness","status":"ok","last_run":"2026-01-01T00:00:00.000000000Z"},` +
	`"started":{"kind":"readiness","status":"ok","last_run":"2026-01-01T00:00:00.000000000Z"}}}` + "\n")

// heartbeatInterval is what the orchestrator tells agents by default.
const heartbeatInterval = 30

// heartbeat is the body agents send, decoded as the orchestrator does
// (numbers in metadata kept exact).
type heartbeat struct {
	Status   string         `json:"status"`
	Metadata map[string]any `json:"metadata"`
}

type heartbeatReply struct {
	Received            bool      `json:"received"`
	NextIntervalSeconds int       `json:"next_interval_seconds"`
	Timestamp           time.Time `json:"timestamp"`
}

// task is the body the orchestrator delivers to an agent's /task.
type task struct {
	TaskID         string          `json:"task_id"`
	TaskType       string          `json:"task_type"`
	Parameters     json.RawMessage `json:"parameters"`
	TimeoutSeconds int             `json:"timeout_seconds"`
	Priority       int             `json:"priority"`
}

type taskReply struct {
	TaskID          string          `json:"task_id"`
	Status          string          `json:"status"`
	Result          json.RawMessage `json:"result"`
	ExecutionTimeMS int             `json:"execution_time_ms"`
}

var taskResult = json.RawMessage(`{"savings_usd":12.5}`)

// writeJSON writes v as the orchestrator writes its JSON answers.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// decode reads one JSON object from r's body into v.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return false
	}
	return true
}

func handle(w http.ResponseWriter, r *http.Request) {
	if id, ok := strings.CutPrefix(r.URL.Path, "/agents/"); ok && r.Method == http.MethodPost {
		if id, ok = strings.CutSuffix(id, "/heartbeat"); ok && id != "" && !strings.Contains(id, "/") {
			var hb heartbeat
			if decode(w, r, &hb) {
				writeJSON(w, http.StatusOK, heartbeatReply{true, heartbeatInterval, time.Now().UTC().Truncate(time.Second)})
			}
			return
		}
	}
	switch r.URL.Path {
	case "/task":
		var t task
		if decode(w, r, &t) {
			writeJSON(w, http.StatusOK, taskReply{t.TaskID, "completed", taskResult, 0})
		}
	case "/live", "/ready":
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(probeBody)
	case "/health":
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(healthBody)
	default:
		http.NotFound(w, r)
	}
}

func main() {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Getenv("PORT")))
	if err != nil {
		os.Stderr.WriteString("bare: " + err.Error() + "\n")
		os.Exit(1)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(handle),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    65536,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		os.Stderr.WriteString("bare: " + err.Error() + "\n")
		os.Exit(1)
	}
}
