package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/inflight"
)

// unmatchedRoute labels requests no route matched (404 and 405), so that
// scanners probing random paths cannot blow up the metrics' cardinality.
const unmatchedRoute = "unmatched"

// httpMetrics are the request metrics, labelled by route template.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight prometheus.GaugeFunc

	// unmatched is the route of requests no route matched (404, 405).
	unmatched *route

	// series holds the labelled children by seriesKey, so that a route's
	// cache misses share them. The keys are bounded: methods are
	// normalised and routes are templates.
	series sync.Map
}

type seriesKey struct {
	method, route string
	code          int
}

// series is the labelled children of one method, route and code.
type series struct {
	code     int
	requests prometheus.Counter
	duration prometheus.Observer
}

// seriesCache holds a route's series of the status code it last answered,
// per method: a probe answers GET 200 request after request, so its series
// is one pointer away, with no labels to hash.
type seriesCache [len(methodLabels)]atomic.Pointer[series]

// lookup returns the series of a request to rt with the method (an index
// in methodLabels) answered with code.
func (m *httpMetrics) lookup(rt *route, method, code int) *series {
	last := &rt.series[method]
	if s := last.Load(); s != nil && s.code == code {
		return s
	}
	k := seriesKey{method: methodLabels[method], route: rt.template, code: code}
	v, ok := m.series.Load(k)
	if !ok {
		v, _ = m.series.LoadOrStore(k, &series{
			code:     code,
			requests: m.requests.WithLabelValues(k.method, k.route, strconv.Itoa(code)),
			duration: m.duration.WithLabelValues(k.method, k.route),
		})
	}
	s := v.(*series)
	last.Store(s)
	return s
}

func newHTTPMetrics(reg prometheus.Registerer, inFlight *inflight.Tracker) (*httpMetrics, error) {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_http_requests_total",
			Help: "HTTP requests served, by method, route template and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "orchestrator_http_request_duration_seconds",
			Help:    "Time from the start of a request to the end of its response, by method and route template.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route"}),
		// Read from the in-flight list at scrape time: nothing to update
		// per request.
		inFlight: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "orchestrator_http_requests_in_flight",
			Help: "HTTP requests being served now, plain /live and /ready probes aside.",
		}, func() float64 { return float64(inFlight.Len()) }),
		unmatched: &route{template: unmatchedRoute},
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering HTTP metrics: %w", err)
		}
	}
	return m, nil
}

// drainer tells whether the server is draining.
type drainer interface{ Draining() bool }

// middleware is the chain every request goes through, 404s and 405s
// included: request id, in-flight tracking, Connection: close while
// draining, body limit, panic recovery, then metrics and the access log.
// Plain probes take a shorter way through it (serveProbe).
type middleware struct {
	next         http.Handler
	log          *zap.Logger
	metrics      *httpMetrics
	drain        drainer
	inFlight     *inflight.Tracker
	maxBodyBytes int64
	// probes answers plain probes ahead of the router; nil sends them
	// through it like any request.
	probes *plainProbes
	// recorders recycles the per-request recorders: a recorder is most of
	// what a request would allocate here.
	recorders sync.Pool
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rt, kind, ok := m.probes.match(r); ok {
		m.serveProbe(w, r, rt, kind)
		return
	}
	start := time.Now()
	id := m.identify(w.Header(), r)
	rec, _ := m.recorders.Get().(*recorder)
	if rec == nil {
		rec = new(recorder)
	}
	*rec = recorder{ResponseWriter: w, outcome: outcome{status: http.StatusOK, route: m.metrics.unmatched}}
	rec.inFlight.Request = inflight.Request{
		Method: r.Method, Path: r.URL.Path, RequestID: id, Remote: r.RemoteAddr, Started: start,
	}
	m.inFlight.Begin(&rec.inFlight)
	returned := false
	defer func() {
		m.inFlight.End(&rec.inFlight)
		m.observe(r, &rec.outcome, id, time.Since(start))
		// Once the handler has returned, nothing uses the recorder any more
		// (net/http forbids using a ResponseWriter after its handler
		// returns). After a panic that net/http aborts the response for,
		// leave it to the garbage collector.
		if returned {
			rec.ResponseWriter, rec.err = nil, nil // hold on to nothing while pooled
			m.recorders.Put(rec)
		}
	}()

	if r.ContentLength > m.maxBodyBytes {
		writeError(rec, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request body too large: the limit is %d bytes", m.maxBodyBytes))
		returned = true
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		// w, not rec: net/http's own writer learns of an overrun and closes
		// the connection instead of reading the rest of the body.
		r.Body = http.MaxBytesReader(w, r.Body, m.maxBodyBytes)
	}
	m.serveRecovering(rec, r, id)
	returned = true
}

// identify gives the answer its X-Request-Id (the incoming id when it is
// sane, else a new one) and, while the server drains, Connection: close.
// It returns the id.
func (m *middleware) identify(header http.Header, r *http.Request) string {
	var incoming string
	if v := r.Header[RequestIDHeader]; len(v) > 0 { // net/http canonicalises incoming keys
		incoming = v[0]
	}
	value := requestID(incoming)
	header[RequestIDHeader] = value // the key is canonical already: skip Set's conversion
	if m.drain.Draining() {
		// Tell keep-alive clients to reconnect: their next connection goes
		// to a pod that is not shutting down. net/http closes the
		// connection after this response.
		header.Set("Connection", "close")
	}
	return value[0]
}

// identifyProbe is identify for a plain probe: a sane X-Request-Id the
// caller sent comes back (and is logged), but none is generated. The
// kubelet and load balancers send none and read none; generating one and
// writing the header cost about a twentieth of a probe (docs/benchmarks.md).
// Every other request, probes with a query included, still gets one.
func (m *middleware) identifyProbe(header http.Header, r *http.Request) string {
	var id string
	if v := r.Header[RequestIDHeader]; len(v) > 0 && saneRequestID(v[0]) {
		id = v[0]
		header[RequestIDHeader] = v[:1:1]
	}
	if m.drain.Draining() {
		header.Set("Connection", "close")
	}
	return id
}

// plainProbes are /live and /ready without a query: what the kubelet and
// load balancers call, by the thousand.
type plainProbes struct {
	health *health.Health
	// live and ready are the router's routes of the same paths: the same
	// metric series and the same quiet access log.
	live, ready *route
}

// match tells whether r is a plain probe: GET or HEAD of /live or /ready,
// with no query and no body. Anything else, ?verbose or a body or another
// method, goes through the router like any request.
func (p *plainProbes) match(r *http.Request) (*route, health.Kind, bool) {
	if p == nil || r.URL.RawQuery != "" || r.ContentLength != 0 ||
		(r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return nil, "", false
	}
	switch r.URL.Path {
	case p.live.template:
		return p.live, health.Liveness, true
	case p.ready.template:
		return p.ready, health.Readiness, true
	}
	return nil, "", false
}

// serveProbe answers a plain probe as the router and the probe handler
// would, through less: it keeps the request id, Connection: close while
// draining, panic recovery, the metrics and the debug access log line,
// and skips the router, the recorder (the answer's status is known) and
// the in-flight list (a probe reads memory and is over in microseconds:
// nothing a drain would wait for or report).
func (m *middleware) serveProbe(w http.ResponseWriter, r *http.Request, rt *route, kind health.Kind) {
	start := time.Now()
	id := m.identifyProbe(w.Header(), r)
	out := outcome{route: rt, status: http.StatusOK}
	defer func() { m.observe(r, &out, id, time.Since(start)) }()
	defer func() {
		if v := recover(); v != nil {
			// A readiness check panicked, before anything was written.
			rec := &recorder{ResponseWriter: w, outcome: out}
			defer func() { out = rec.outcome }()
			m.recovered(v, rec, r, id)
		}
	}()
	status, n := m.probes.health.AnswerProbe(w, kind)
	out.status, out.bytes, out.wroteHeader = status, int64(n), true
}

// serveRecovering serves r with the router, recovering a panic.
func (m *middleware) serveRecovering(rec *recorder, r *http.Request, id string) {
	defer func() {
		if v := recover(); v != nil {
			m.recovered(v, rec, r, id)
		}
	}()
	m.next.ServeHTTP(rec, r)
}

// recovered turns a panic v in a handler into a 500 and a logged stack
// trace; the server keeps running. If the handler had already begun its
// response, the connection is aborted instead, so that the client sees an
// error rather than a truncated body that looks complete. It must be
// called from the deferred function that recovered v.
func (m *middleware) recovered(v any, rec *recorder, r *http.Request, id string) {
	if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
		panic(v) // the handler asked net/http to abort the response
	}
	// The stack is taken here, inside the deferred call, so it shows the
	// frames that panicked.
	m.log.WithOptions(zap.AddStacktrace(zapcore.FatalLevel)).Error("panic serving request",
		zap.Any("panic", v), zap.Stack("stacktrace"),
		zap.String("method", r.Method), zap.String("route", rec.route.template),
		zap.String("path", r.URL.Path), zap.String("request_id", id))
	if rec.wroteHeader {
		rec.status = http.StatusInternalServerError // for the log and metrics
		panic(http.ErrAbortHandler)
	}
	writeError(rec, http.StatusInternalServerError, "internal server error")
}

// observe records the request in the metrics and the access log. Quiet
// routes (probes, /metrics) are logged at debug only: the kubelet and
// Prometheus call them every few seconds.
func (m *middleware) observe(r *http.Request, out *outcome, id string, took time.Duration) {
	s := m.metrics.lookup(out.route, methodIndex(r.Method), out.status)
	s.requests.Inc()
	s.duration.Observe(took.Seconds())

	level := zapcore.InfoLevel
	switch {
	case out.err != nil:
		level = zapcore.ErrorLevel
	case out.route.quiet:
		level = zapcore.DebugLevel
	}
	if ce := m.log.Check(level, "request"); ce != nil {
		ce.Write(
			zap.String("method", r.Method),
			zap.String("route", out.route.template),
			zap.String("path", r.URL.Path),
			zap.Int("status", out.status),
			zap.Int64("bytes", out.bytes),
			zap.Float64("duration_ms", float64(took.Microseconds())/1000),
			zap.String("request_id", id),
			zap.String("remote_addr", r.RemoteAddr),
			zap.String("user_agent", r.UserAgent()),
			zap.NamedError("error", out.err), // skipped when nil
		)
	}
}

// methodLabels are the method label's values: the standard methods, then
// OTHER for any other, which keeps the label bounded.
var methodLabels = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace, "OTHER",
}

// methodIndex returns the index of m's label in methodLabels.
func methodIndex(m string) int {
	switch m {
	case http.MethodGet:
		return 0
	case http.MethodHead:
		return 1
	case http.MethodPost:
		return 2
	case http.MethodPut:
		return 3
	case http.MethodPatch:
		return 4
	case http.MethodDelete:
		return 5
	case http.MethodOptions:
		return 6
	case http.MethodConnect:
		return 7
	case http.MethodTrace:
		return 8
	}
	return len(methodLabels) - 1
}
