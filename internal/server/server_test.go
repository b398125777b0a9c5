package server

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/optiinfra/orchestrator/internal/inflight"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeHealth struct{ started, draining atomic.Bool }

func (f *fakeHealth) MarkStarted()   { f.started.Store(true) }
func (f *fakeHealth) StartDraining() { f.draining.Store(true) }

// harness runs a Server on a loopback port with a handler that sleeps for
// ?sleep= and records itself in the in-flight tracker.
type harness struct {
	url    string
	health *fakeHealth
	logs   *observer.ObservedLogs
	cancel context.CancelFunc
	done   chan struct{}
	err    error // what Serve returned, once done is closed
}

// wait returns what Serve returned, failing the test if it takes too long.
func (h *harness) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-h.done:
		return h.err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func start(t *testing.T, cfg Config) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tracker := &inflight.Tracker{}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e := &inflight.Entry{Request: inflight.Request{
			Method: r.Method, Path: r.URL.Path, RequestID: r.URL.Query().Get("id"), Started: time.Now(),
		}}
		tracker.Begin(e)
		defer tracker.End(e)
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "done")
	})
	core, logs := observer.New(zapcore.InfoLevel)
	h := &harness{url: "http://" + ln.Addr().String(), health: &fakeHealth{}, logs: logs, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	srv := New(cfg, zap.New(core), handler, h.health, tracker)
	go func() { h.err = srv.Serve(ctx, ln); close(h.done) }()
	t.Cleanup(func() { cancel(); _ = h.wait(t) })
	return h
}

var quickConfig = Config{
	ReadHeaderTimeout: time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
	IdleTimeout: 5 * time.Second, MaxHeaderBytes: 8192,
	ShutdownDelay: 300 * time.Millisecond, ShutdownTimeout: 2 * time.Second,
}

func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestDrainServesThroughTheDelayThenWaitsForInFlight(t *testing.T) {
	h := start(t, quickConfig)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if body, err := get(client, h.url+"/"); err != nil || body != "done" {
		t.Fatalf("before shutdown: %q, %v", body, err)
	}
	if !h.health.started.Load() {
		t.Fatal("MarkStarted not called once serving")
	}

	slow := make(chan error, 1)
	go func() {
		body, err := get(client, h.url+"/?sleep=1s")
		if err == nil && body != "done" {
			err = errors.New("slow request body " + body)
		}
		slow <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the slow request arrive
	h.cancel()

	// Draining starts at once; new connections are still served during the delay.
	deadline := time.Now().Add(time.Second)
	for !h.health.draining.Load() {
		if time.Now().After(deadline) {
			t.Fatal("StartDraining not called after shutdown began")
		}
		time.Sleep(time.Millisecond)
	}
	if body, err := get(client, h.url+"/"); err != nil || body != "done" {
		t.Fatalf("new connection during the delay: %q, %v; want served", body, err)
	}

	if err := <-slow; err != nil {
		t.Fatalf("in-flight request across the drain: %v", err)
	}
	if err := h.wait(t); err != nil {
		t.Fatalf("Serve = %v, want nil after a clean drain", err)
	}
	if _, err := get(client, h.url+"/"); err == nil {
		t.Fatal("the server still accepts connections after the drain")
	}
}

func TestDrainTimeoutCutsOffAndReports(t *testing.T) {
	cfg := quickConfig
	cfg.ShutdownDelay, cfg.ShutdownTimeout = 0, 200*time.Millisecond
	h := start(t, cfg)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	slow := make(chan error, 1)
	go func() { _, err := get(client, h.url+"/stuck?sleep=30s&id=req-42"); slow <- err }()
	time.Sleep(50 * time.Millisecond)
	h.cancel()

	err := h.wait(t)
	if !errors.Is(err, ErrDrainTimeout) || !strings.Contains(err.Error(), "1 request") {
		t.Fatalf("Serve = %v, want ErrDrainTimeout counting 1 request", err)
	}
	if <-slow == nil {
		t.Fatal("the cut-off request succeeded")
	}
	entries := h.logs.FilterMessage("request cut off by shutdown timeout").All()
	if len(entries) != 1 {
		t.Fatalf("cut-off requests logged %d times, want once", len(entries))
	}
	req, _ := entries[0].ContextMap()["request"].(map[string]any)
	if req["request_id"] != "req-42" || req["path"] != "/stuck" {
		t.Fatalf("cut-off log names %v, want req-42 on /stuck", req)
	}
}

func TestServeReportsListenerFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	srv := New(quickConfig, zap.NewNop(), http.NotFoundHandler(), &fakeHealth{}, &inflight.Tracker{})
	if err := srv.Serve(context.Background(), ln); err == nil || errors.Is(err, ErrDrainTimeout) {
		t.Fatalf("Serve on a closed listener = %v, want a serve error", err)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := quickConfig
	valid.Port = 8080
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"PORT", func(c *Config) { c.Port = 65536 }},
		{"HTTP_READ_HEADER_TIMEOUT", func(c *Config) { c.ReadHeaderTimeout = 0 }},
		// 1ns passes "greater than 0" but times out every request.
		{"HTTP_READ_HEADER_TIMEOUT", func(c *Config) { c.ReadHeaderTimeout = time.Nanosecond }},
		{"HTTP_WRITE_TIMEOUT", func(c *Config) { c.WriteTimeout = time.Nanosecond }},
		{"HTTP_READ_TIMEOUT", func(c *Config) { c.ReadTimeout = math.MaxInt64 }},
		{"HTTP_IDLE_TIMEOUT", func(c *Config) { c.IdleTimeout = -time.Second }},
		{"SHUTDOWN_DELAY", func(c *Config) { c.ShutdownDelay = -time.Second }},
		// A delay of centuries would never let the process stop.
		{"SHUTDOWN_DELAY", func(c *Config) { c.ShutdownDelay = math.MaxInt64 }},
		{"SHUTDOWN_TIMEOUT", func(c *Config) { c.ShutdownTimeout = 0 }},
		// 1ns cuts off a connection still closing after its response.
		{"SHUTDOWN_TIMEOUT", func(c *Config) { c.ShutdownTimeout = time.Nanosecond }},
		{"HTTP_MAX_HEADER_BYTES", func(c *Config) { c.MaxHeaderBytes = 100 }},
	} {
		c := valid
		tc.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.name+"=") {
			t.Errorf("%s: Validate() = %v, want an error naming it", tc.name, err)
		}
	}
	edges := valid
	edges.ReadHeaderTimeout, edges.IdleTimeout, edges.ShutdownDelay, edges.ShutdownTimeout =
		100*time.Millisecond, 24*time.Hour, time.Hour, 100*time.Millisecond
	if err := edges.Validate(); err != nil {
		t.Errorf("the limits themselves: %v", err)
	}
}
