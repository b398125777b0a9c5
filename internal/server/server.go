// Package server runs the HTTP server's lifecycle: serve on a listener that
// is already open, then drain on shutdown without dropping a request.
//
// The drain follows the Kubernetes termination flow. When the pod is deleted
// the kubelet sends SIGTERM while kube-proxy, ingress controllers and other
// clients are still learning, asynchronously, that the pod's endpoint is
// gone. So on shutdown the server:
//
//  1. fails /ready at once (the drain switch) while /live stays 200;
//  2. keeps serving normally for ShutdownDelay, the window in which traffic
//     may still arrive, but answers every request with "Connection: close"
//     so clients holding a keep-alive connection reconnect, to other pods;
//  3. stops accepting, closes idle connections and lets in-flight requests
//     finish within ShutdownTimeout;
//  4. if that time runs out, logs each request it cuts off and returns
//     ErrDrainTimeout.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/config/bound"
	"github.com/optiinfra/orchestrator/internal/inflight"
)

// Listen is where the server listens: all the probe command reads.
type Listen struct {
	// Host is the address to bind; empty means every interface.
	Host string `env:"HTTP_HOST"`
	// Port is the TCP port; 0 picks a free one (tests use it).
	Port int `env:"PORT, default=8080"`
}

// Address is the host:port to listen on.
func (l Listen) Address() string { return net.JoinHostPort(l.Host, strconv.Itoa(l.Port)) }

// Validate reports a port that is not one.
func (l Listen) Validate() error {
	if l.Port < 0 || l.Port > 65535 {
		return fmt.Errorf("PORT=%q: must be a TCP port, 0 to 65535", strconv.Itoa(l.Port))
	}
	return nil
}

// Config is how the server listens, times out and drains.
type Config struct {
	Listen

	// ReadHeaderTimeout bounds reading the request headers (slowloris).
	ReadHeaderTimeout time.Duration `env:"HTTP_READ_HEADER_TIMEOUT, default=5s"`
	// ReadTimeout bounds reading the whole request, body included.
	ReadTimeout time.Duration `env:"HTTP_READ_TIMEOUT, default=30s"`
	// WriteTimeout bounds the time from the end of the headers to the end
	// of the response.
	WriteTimeout time.Duration `env:"HTTP_WRITE_TIMEOUT, default=30s"`
	// IdleTimeout closes keep-alive connections idle for longer.
	IdleTimeout time.Duration `env:"HTTP_IDLE_TIMEOUT, default=120s"`
	// MaxHeaderBytes bounds the size of the request headers.
	MaxHeaderBytes int `env:"HTTP_MAX_HEADER_BYTES, default=65536"`

	// ShutdownDelay is how long the server keeps serving, with /ready
	// failing, after the shutdown signal.
	ShutdownDelay time.Duration `env:"SHUTDOWN_DELAY, default=5s"`
	// ShutdownTimeout bounds the wait for in-flight requests after the
	// delay; the accepted tasks get until the same moment (internal/app).
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT, default=20s"`
}

// Limits of the durations. An HTTP timeout under 100ms fails ordinary
// requests (1ns fails every one); hours are as patient as a server gets.
// The drain bounds keep a shutdown finite: the kubelet's grace period must
// cover SHUTDOWN_DELAY + SHUTDOWN_TIMEOUT anyway.
const (
	minHTTPTimeout     = 100 * time.Millisecond
	maxHTTPTimeout     = 24 * time.Hour
	maxShutdownDelay   = time.Hour
	minShutdownTimeout = 100 * time.Millisecond
	maxShutdownTimeout = time.Hour
)

// Validate reports the settings that cannot be used, naming their variables.
func (c Config) Validate() error {
	errs := []error{c.Listen.Validate()}
	errs = append(errs,
		bound.Duration("HTTP_READ_HEADER_TIMEOUT", c.ReadHeaderTimeout, minHTTPTimeout, maxHTTPTimeout),
		bound.Duration("HTTP_READ_TIMEOUT", c.ReadTimeout, minHTTPTimeout, maxHTTPTimeout),
		bound.Duration("HTTP_WRITE_TIMEOUT", c.WriteTimeout, minHTTPTimeout, maxHTTPTimeout),
		bound.Duration("HTTP_IDLE_TIMEOUT", c.IdleTimeout, minHTTPTimeout, maxHTTPTimeout),
		bound.Duration("SHUTDOWN_DELAY", c.ShutdownDelay, 0, maxShutdownDelay),
		bound.Duration("SHUTDOWN_TIMEOUT", c.ShutdownTimeout, minShutdownTimeout, maxShutdownTimeout),
	)
	if c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("HTTP_MAX_HEADER_BYTES=%q: must be between 1024 and 1048576",
			strconv.Itoa(c.MaxHeaderBytes)))
	}
	return errors.Join(errs...)
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("host", c.Host)
	enc.AddInt("port", c.Port)
	enc.AddDuration("read_header_timeout", c.ReadHeaderTimeout)
	enc.AddDuration("read_timeout", c.ReadTimeout)
	enc.AddDuration("write_timeout", c.WriteTimeout)
	enc.AddDuration("idle_timeout", c.IdleTimeout)
	enc.AddInt("max_header_bytes", c.MaxHeaderBytes)
	enc.AddDuration("shutdown_delay", c.ShutdownDelay)
	enc.AddDuration("shutdown_timeout", c.ShutdownTimeout)
	return nil
}

// ErrDrainTimeout means ShutdownTimeout ran out with requests still in flight;
// they were cut off.
var ErrDrainTimeout = errors.New("shutdown timeout: in-flight requests cut off")

// Health is the part of the health package the server drives.
type Health interface {
	MarkStarted()
	StartDraining()
}

// Server serves one handler and drains it on shutdown.
type Server struct {
	cfg      Config
	log      *zap.Logger
	handler  http.Handler
	health   Health
	inFlight *inflight.Tracker
}

// New returns a Server. inFlight is the tracker the handler records its
// requests in; the server reads it to log the requests a drain cuts off.
func New(cfg Config, log *zap.Logger, handler http.Handler, health Health, inFlight *inflight.Tracker) *Server {
	return &Server{cfg: cfg, log: log, handler: handler, health: health, inFlight: inFlight}
}

// Serve serves on ln until ctx ends, then drains (see the package doc). It
// returns nil after a clean drain and ErrDrainTimeout when requests had to
// be cut off.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
	}
	if errorLog, err := zap.NewStdLogAt(s.log.Named("http"), zapcore.WarnLevel); err == nil {
		srv.ErrorLog = errorLog
	}
	// Started before serving: the listener is open already (the caller has
	// logged "listening"), so a request accepted at once must find /ready
	// passing; if Serve fails, the select below ends the process anyway.
	s.health.MarkStarted()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	s.health.StartDraining()
	s.log.Info("shutdown signal received: readiness failing, still serving",
		zap.Duration("shutdown_delay", s.cfg.ShutdownDelay),
		zap.Duration("shutdown_timeout", s.cfg.ShutdownTimeout))
	delay := time.NewTimer(s.cfg.ShutdownDelay)
	defer delay.Stop()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-delay.C:
	}

	s.log.Info("draining: no longer accepting connections, waiting for in-flight requests")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if err == nil {
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		s.log.Info("drained: every in-flight request finished")
		return nil
	}
	cut := s.inFlight.Snapshot()
	for _, r := range cut {
		s.log.Warn("request cut off by shutdown timeout", zap.Object("request", r))
	}
	_ = srv.Close()
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("serve ended with an error after the drain timeout", zap.Error(err))
	}
	return fmt.Errorf("%w: %d request(s) after %s", ErrDrainTimeout, len(cut), s.cfg.ShutdownTimeout)
}
