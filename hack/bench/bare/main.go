// Command bare is the benchmark's reference server: plain net/http, no
// middleware, answering /live, /ready and /health with fixed bytes shaped
// like the orchestrator's answers, behind an http.Server with the
// orchestrator's default timeouts. It listens on 127.0.0.1:$PORT and exits 0
// on SIGTERM or SIGINT.
package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/signal"
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

func handle(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
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
