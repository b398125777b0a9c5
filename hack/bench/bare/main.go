// Command bare is the benchmark's reference server: plain net/http, no
// middleware, answering /live, /ready and /health with fixed bytes shaped
// like the orchestrator's answers, behind an http.Server with the
// orchestrator's default timeouts. It also answers POST
// /agents/{id}/heartbeat the way a bare handler would (decode the JSON
// body, answer the orchestrator's 200 JSON), and POST /task as a fake agent
// that completes every task at once; both with the wire types of
// pkg/orchestrator, decoded as the orchestrator decodes (numbers in
// metadata kept exact). It listens on 127.0.0.1:$PORT and exits 0 on
// SIGTERM or SIGINT.
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

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
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
			var hb orchestrator.HeartbeatRequest
			if decode(w, r, &hb) {
				writeJSON(w, http.StatusOK, orchestrator.HeartbeatResponse{Received: true, NextIntervalSeconds: heartbeatInterval,
					Timestamp: time.Now().UTC().Truncate(time.Second)})
			}
			return
		}
	}
	switch r.URL.Path {
	case "/task":
		var t orchestrator.Delivery
		if decode(w, r, &t) {
			writeJSON(w, http.StatusOK, orchestrator.DeliveryReply{TaskID: t.TaskID, Status: orchestrator.TaskCompleted, Result: taskResult})
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
