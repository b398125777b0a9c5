package api

// This file is compiled into the tests only. It exposes, to the tests of
// package api_test, the few unexported names they look at. Those tests
// live outside package api because they build their fixture with
// internal/app, which imports this package.

import (
	"net/http"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/optiinfra/orchestrator/internal/inflight"
)

// SaneRequestID is saneRequestID, for tests.
var SaneRequestID = saneRequestID

// UnmatchedRoute is the route label of requests no route matched, for tests.
const UnmatchedRoute = unmatchedRoute

// OpenAPIDocument is the embedded OpenAPI document, for tests.
var OpenAPIDocument = openAPIDocument

// Middleware is the handler New returns, for tests.
type Middleware = middleware

// Router is the router the Middleware of New wraps, for tests.
type Router = router

// NewMiddleware returns the middleware as New builds it, around next,
// with its metrics on a registry of their own; for tests.
func NewMiddleware(next http.Handler, log *zap.Logger, drain interface{ Draining() bool },
	inFlight *inflight.Tracker, maxBodyBytes int64,
) (*Middleware, error) {
	metrics, err := newHTTPMetrics(prometheus.NewRegistry(), &inflight.Tracker{})
	if err != nil {
		return nil, err
	}
	return &middleware{next: next, log: log, metrics: metrics, drain: drain, inFlight: inFlight, maxBodyBytes: maxBodyBytes}, nil
}

// Next is the handler m wraps, for tests.
func (m *middleware) Next() http.Handler { return m.next }

// SetNext makes m wrap next instead, for tests.
func (m *middleware) SetNext(next http.Handler) { m.next = next }

// Requests is m's request counter, for tests.
func (m *middleware) Requests() *prometheus.CounterVec { return m.metrics.requests }

// Mux is the gorilla/mux router behind rt, for tests.
func (rt *router) Mux() *mux.Router { return rt.mux }

// HasPlainProbes reports whether m answers plain probes ahead of the
// router, for tests.
func (m *middleware) HasPlainProbes() bool { return m.probes != nil }

// WithoutPlainProbes returns the same chain as m, sharing its metrics, log
// and drain switch, that sends probes through the router like any
// request; for tests that compare the two paths.
func (m *middleware) WithoutPlainProbes() *Middleware {
	return &middleware{
		next: m.next, log: m.log, metrics: m.metrics, drain: m.drain,
		inFlight: m.inFlight, maxBodyBytes: m.maxBodyBytes,
	}
}

// ClientAddr is clientAddr, for tests.
var ClientAddr = clientAddr

// RequireRole is requireRole, for tests of what it puts in the context.
var RequireRole = requireRole
