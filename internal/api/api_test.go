package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/app"
	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/inflight"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	agents "github.com/optiinfra/orchestrator/internal/registry"
)

// TestMain checks for leaked goroutines; the tests with a database share
// one PostgreSQL server, removed once they have run.
func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

// fixture is the real service as internal/app wires it, driven through
// its handler without a listener, logs captured: a real agent registry
// and dispatcher on in-memory stores, background loops running, stopped
// when the test ends.
type fixture struct {
	handler    http.Handler
	health     *health.Health
	registry   *prometheus.Registry
	logs       *observer.ObservedLogs
	inFlight   *inflight.Tracker
	agents     *agents.Registry
	dispatcher app.Tasks
	// coordination is the engine behind /coordination, to sweep by hand.
	coordination *coordination.Engine
}

// fixtureOptions change the fixture's domain settings.
type fixtureOptions struct {
	agents   agents.Config
	dispatch dispatch.Config
	auth     auth.Config
	// beforeStart, when set, sees the service before its background loops
	// start: the time to add readiness checks.
	beforeStart func(*app.Service)
	// database, when set, keeps the agents in PostgreSQL (app.Options).
	database *pgxpool.Pool
	// now, when set, is the coordination engine's clock (app.Options).
	now func() time.Time
	// coordination, when set, replaces testEnv's coordination settings.
	coordination *coordination.Config
}

// testEnv is the fixture's environment: the production defaults, with
// short retries so tests do not wait.
var testEnv = map[string]string{
	"HEALTH_CHECK_INTERVAL":  "1s",
	"HEALTH_CHECK_TIMEOUT":   "1s",
	"TASK_MAX_PENDING":       "100",
	"TASK_RETRY_BACKOFF":     "1ms",
	"TASK_RETRY_BACKOFF_MAX": "10ms",
	"TASK_MAX_RESULT_BYTES":  "1048576",
}

// testAgentsConfig and testDispatchConfig are testEnv's settings of the
// agent registry and the dispatcher, for tests to vary.
var (
	testAgentsConfig   = loadTestEnv().Registry
	testDispatchConfig = loadTestEnv().Dispatch
)

// loadTestEnv loads testEnv as the service loads its environment.
func loadTestEnv() *config.Config {
	cfg, err := config.Load(context.Background(), testEnv)
	if err != nil {
		panic(err) // a typo in testEnv
	}
	return cfg
}

// testBuild is the build the fixture reports.
var testBuild = buildinfo.Info{Version: "1.2.3", Commit: "abc1234", BuildDate: "2026-11-26T00:00:00Z", GoVersion: "go1.26.8"}

func newFixture(t testing.TB, cfg api.Config) *fixture {
	t.Helper()
	return newFixtureAt(t, cfg, zapcore.DebugLevel)
}

// newFixtureAt builds the fixture with logs captured from level up.
func newFixtureAt(t testing.TB, cfg api.Config, level zapcore.Level) *fixture {
	t.Helper()
	return newFixtureWith(t, cfg, level, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
}

// newFixtureWith builds the fixture with the given domain settings, on
// testEnv's settings of everything else.
func newFixtureWith(t testing.TB, cfg api.Config, level zapcore.Level, fo fixtureOptions) *fixture {
	t.Helper()
	conf := loadTestEnv()
	conf.API, conf.Registry, conf.Dispatch, conf.Auth = cfg, fo.agents, fo.dispatch, fo.auth
	if fo.coordination != nil {
		conf.Coordination = *fo.coordination
	}
	if err := conf.Validate(); err != nil {
		t.Fatalf("the fixture's settings: %v", err) // as the service would refuse to start
	}
	core, logs := observer.New(level)
	svc, err := app.New(app.Options{Config: conf, Logger: zap.New(core), Build: testBuild, Database: fo.database, Now: fo.now})
	if err != nil {
		t.Fatal(err)
	}
	if fo.beforeStart != nil {
		fo.beforeStart(svc)
	}
	t.Cleanup(svc.Start(context.Background()))
	svc.Health.MarkStarted() // as the server does once it listens
	return &fixture{
		handler:      svc.Handler,
		health:       svc.Health,
		registry:     svc.Metrics,
		logs:         logs,
		inFlight:     svc.InFlight,
		agents:       svc.Agents,
		dispatcher:   svc.Tasks,
		coordination: svc.Coordination,
	}
}

var defaultConfig = api.Config{MaxBodyBytes: 1 << 20}

func (f *fixture) do(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, req)
	return rec
}

func (f *fixture) get(path string) *httptest.ResponseRecorder {
	return f.do(httptest.NewRequest(http.MethodGet, path, nil))
}

func decodeError(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type = %q, want application/json", ct)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body) != 1 || body["error"] == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"} (%v)", rec.Body, err)
	}
	return body["error"]
}

func TestRoutes(t *testing.T) {
	f := newFixture(t, defaultConfig)
	for _, tc := range []struct {
		path, contentType, body string
		code                    int
	}{
		{"/", "application/json", `{"service":"OptiInfra Orchestrator","version":"1.2.3","status":"running"}` + "\n", 200},
		{"/version", "application/json", `{"version":"1.2.3","commit":"abc1234","build_date":"2026-11-26T00:00:00Z","go_version":"go1.26.8"}` + "\n", 200},
		{"/live", "application/json; charset=utf-8", "{}\n", 200},
		{"/ready", "application/json; charset=utf-8", "{}\n", 200},
		{"/health", "application/json", "", 200},
		{"/metrics", "", "", 200},
	} {
		t.Run(tc.path, func(t *testing.T) {
			rec := f.get(tc.path)
			if rec.Code != tc.code {
				t.Fatalf("GET %s = %d, want %d", tc.path, rec.Code, tc.code)
			}
			if tc.contentType != "" && rec.Header().Get("Content-Type") != tc.contentType {
				t.Errorf("Content-Type = %q, want %q", rec.Header().Get("Content-Type"), tc.contentType)
			}
			if tc.body != "" && rec.Body.String() != tc.body {
				t.Errorf("body = %q, want %q", rec.Body, tc.body)
			}
			head := f.do(httptest.NewRequest(http.MethodHead, tc.path, nil))
			if head.Code != tc.code {
				t.Errorf("HEAD %s = %d, want %d", tc.path, head.Code, tc.code)
			}
		})
	}
}

// TestHeadWhereverGet: every route that serves GET serves HEAD too, with
// the GET's status and headers.
func TestHeadWhereverGet(t *testing.T) {
	f := newFixture(t, defaultConfig)
	agentID := f.register(t, agentBody("head", 8000, "analyze"))
	for path, methods := range routes(t, f.handler) {
		if slices.Contains(methods, http.MethodGet) && !slices.Contains(methods, http.MethodHead) {
			t.Errorf("%s serves GET but not HEAD (%v)", path, methods)
		}
	}
	for _, path := range []string{"/agents", "/agents/type/cost", "/agents/" + agentID, "/agents/unknown", "/tasks", "/tasks?status=bogus", "/tasks/unknown"} {
		get := f.get(path)
		head := f.do(httptest.NewRequest(http.MethodHead, path, nil))
		if head.Code != get.Code || head.Header().Get("Content-Type") != get.Header().Get("Content-Type") {
			t.Errorf("HEAD %s = %d %q, GET = %d %q: want the same", path, head.Code, head.Header().Get("Content-Type"), get.Code, get.Header().Get("Content-Type"))
		}
	}
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	f := newFixture(t, defaultConfig)
	rec := f.get("/no/such/path")
	if rec.Code != http.StatusNotFound {
		t.Fatalf("GET unknown path = %d, want 404", rec.Code)
	}
	if msg := decodeError(t, rec); !strings.Contains(msg, "/no/such/path") {
		t.Errorf("404 message %q does not name the path", msg)
	}

	// Paths near a static route are mux's to answer, as if there were no
	// exact-match table in front of it.
	if rec := f.get("/ready/"); rec.Code != http.StatusNotFound {
		t.Errorf("GET /ready/ = %d, want 404", rec.Code)
	}
	if rec := f.get("//ready"); rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "/ready" {
		t.Errorf("GET //ready = %d to %q, want mux's 301 to /ready", rec.Code, rec.Header().Get("Location"))
	}

	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, "BREW"} {
		rec = f.do(httptest.NewRequest(method, "/ready", nil))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Fatalf("%s /ready = %d, want 405", method, rec.Code)
		}
		if allow := rec.Header().Get("Allow"); allow != "GET, HEAD" {
			t.Errorf("%s /ready Allow = %q, want \"GET, HEAD\"", method, allow)
		}
		decodeError(t, rec)
	}
}

func TestRequestID(t *testing.T) {
	f := newFixture(t, defaultConfig)
	get := func(incoming string) string {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if incoming != "" {
			req.Header.Set(api.RequestIDHeader, incoming)
		}
		return f.do(req).Header().Get(api.RequestIDHeader)
	}
	for _, sane := range []string{"abc-123", "4bf92f3577b34da6a3ce929d0e0e4736", "req_01HZX/ab+c=d@e.f:g"} {
		if got := get(sane); got != sane {
			t.Errorf("incoming id %q echoed as %q", sane, got)
		}
	}
	generated := map[string]bool{}
	for _, bad := range []string{"", "has space", "quote\"d", strings.Repeat("a", 129), "newline\nx", "ünïcode"} {
		got := get(bad)
		if got == bad || !api.SaneRequestID(got) || len(got) != 36 || generated[got] {
			t.Errorf("incoming id %q: got %q, want a fresh 36-character id", bad, got)
		}
		generated[got] = true
	}
}

func TestPanicIsRecovered(t *testing.T) {
	f := newFixture(t, api.Config{MaxBodyBytes: 1 << 20, FaultsEnabled: true})
	rec := f.get("/faults/panic")
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("GET /faults/panic = %d, want 500", rec.Code)
	}
	if msg := decodeError(t, rec); msg != "internal server error" {
		t.Errorf("500 message = %q; a panic's value must not leak to clients", msg)
	}
	entries := f.logs.FilterMessage("panic serving request").All()
	if len(entries) != 1 {
		t.Fatalf("panic logged %d times, want once", len(entries))
	}
	if e := entries[0]; e.Level != zapcore.ErrorLevel || !strings.Contains(fmt.Sprint(e.ContextMap()["stacktrace"]), "panicHandler") ||
		e.ContextMap()["request_id"] == "" {
		t.Errorf("panic log entry = %+v, want error level with the panicking stack and the request id", e)
	}
	if rec := f.get("/"); rec.Code != http.StatusOK {
		t.Fatalf("GET / after a panic = %d, want 200", rec.Code)
	}
}

func TestFaultsAreOffByDefault(t *testing.T) {
	f := newFixture(t, defaultConfig)
	for _, path := range []string{"/faults/panic", "/faults/delay?duration=1s", "/faults/unready"} {
		if rec := f.get(path); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s without FAULTS_ENABLED = %d, want 404", path, rec.Code)
		}
	}
}

func TestDelayFault(t *testing.T) {
	f := newFixture(t, api.Config{MaxBodyBytes: 1 << 20, FaultsEnabled: true})
	if rec := f.get("/faults/delay?duration=1ms"); rec.Code != http.StatusOK {
		t.Fatalf("delay 1ms = %d %s", rec.Code, rec.Body)
	}
	for _, bad := range []string{"", "abc", "-1s", "6m"} {
		rec := f.get("/faults/delay?duration=" + bad)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("delay %q = %d, want 400", bad, rec.Code)
		}
		decodeError(t, rec)
	}
}

func TestBodyLimit(t *testing.T) {
	f := newFixture(t, api.Config{MaxBodyBytes: 16, FaultsEnabled: true})
	req := httptest.NewRequest(http.MethodPost, "/faults/delay?duration=0s", strings.NewReader(strings.Repeat("x", 17)))
	rec := f.do(req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("17-byte body with a 16-byte limit = %d, want 413", rec.Code)
	}
	if msg := decodeError(t, rec); !strings.Contains(msg, "16 bytes") {
		t.Errorf("413 message %q does not state the limit", msg)
	}

	// A body without a declared length is cut at the limit while it is read.
	var readErr error
	limited, err := api.NewMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, readErr = io.ReadAll(r.Body)
	}), zap.NewNop(), f.health, f.inFlight, 16)
	if err != nil {
		t.Fatal(err)
	}
	req = httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(strings.Repeat("x", 100))))
	req.ContentLength = -1
	limited.ServeHTTP(httptest.NewRecorder(), req)
	if readErr == nil || !strings.Contains(readErr.Error(), "too large") {
		t.Fatalf("reading a chunked body over the limit: err = %v, want http: request body too large", readErr)
	}
}

func TestMetricsUseRouteTemplates(t *testing.T) {
	f := newFixture(t, defaultConfig)
	f.get("/")
	f.get("/ready")
	f.get("/ready")
	f.get("/secret-token-abc123")
	f.do(httptest.NewRequest(http.MethodPost, "/version", nil))

	for _, tc := range []struct {
		method, route, code string
		want                float64
	}{
		{"GET", "/", "200", 1},
		{"GET", "/ready", "200", 2},
		{"GET", api.UnmatchedRoute, "404", 1},
		{"POST", api.UnmatchedRoute, "405", 1},
	} {
		got := testutil.ToFloat64(f.mustRequests(t).WithLabelValues(tc.method, tc.route, tc.code))
		if got != tc.want {
			t.Errorf("requests{%s %s %s} = %v, want %v", tc.method, tc.route, tc.code, got, tc.want)
		}
	}
	body := f.get("/metrics").Body.String()
	if strings.Contains(body, "secret-token-abc123") {
		t.Error("/metrics exposes a raw request path")
	}
	for _, want := range []string{
		`orchestrator_http_request_duration_seconds_bucket{method="GET",route="/ready",le="0.0005"}`,
		`orchestrator_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		"orchestrator_http_requests_in_flight 1", // the /metrics request itself
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// mustRequests returns the router's request counter.
func (f *fixture) mustRequests(t *testing.T) *prometheus.CounterVec {
	t.Helper()
	m, ok := f.handler.(*api.Middleware)
	if !ok {
		t.Fatalf("handler is a %T, want *middleware", f.handler)
	}
	return m.Requests()
}

func TestAccessLog(t *testing.T) {
	f := newFixture(t, defaultConfig)
	req := httptest.NewRequest(http.MethodGet, "/version", nil)
	req.Header.Set(api.RequestIDHeader, "trace-me")
	f.do(req)
	f.get("/ready")
	f.get("/metrics")

	var info, debug []observer.LoggedEntry
	for _, e := range f.logs.FilterMessage("request").All() {
		switch e.Level {
		case zapcore.InfoLevel:
			info = append(info, e)
		case zapcore.DebugLevel:
			debug = append(debug, e)
		}
	}
	if len(info) != 1 || len(debug) != 2 {
		t.Fatalf("access log: %d info and %d debug lines, want 1 (/version) and 2 (probe, metrics)", len(info), len(debug))
	}
	fields := info[0].ContextMap()
	for key, want := range map[string]any{
		"method": "GET", "route": "/version", "path": "/version", "status": int64(200), "request_id": "trace-me",
		"remote_addr": "192.0.2.1:1234",
	} {
		if fields[key] != want {
			t.Errorf("access log %s = %v (%T), want %v", key, fields[key], fields[key], want)
		}
	}
	for _, key := range []string{"bytes", "duration_ms"} {
		if _, ok := fields[key]; !ok {
			t.Errorf("access log lacks %s", key)
		}
	}
}

func TestDrainingClosesKeepAliveConnections(t *testing.T) {
	f := newFixture(t, defaultConfig)
	if got := f.get("/").Header().Get("Connection"); got != "" {
		t.Fatalf("Connection header before draining = %q, want none", got)
	}
	f.health.StartDraining()
	for _, path := range []string{"/", "/live", "/ready", "/nope"} {
		if got := f.get(path).Header().Get("Connection"); got != "close" {
			t.Errorf("GET %s while draining: Connection = %q, want close", path, got)
		}
	}
	if body := f.get("/").Body.String(); !strings.Contains(body, `"status":"draining"`) {
		t.Errorf("GET / while draining = %s, want status draining", body)
	}
	if code := f.get("/ready").Code; code != http.StatusServiceUnavailable {
		t.Errorf("GET /ready while draining = %d, want 503", code)
	}
	if code := f.get("/live").Code; code != http.StatusOK {
		t.Errorf("GET /live while draining = %d, want 200", code)
	}
}

func TestInFlightTracking(t *testing.T) {
	f := newFixture(t, api.Config{MaxBodyBytes: 1 << 20, FaultsEnabled: true})
	srv := httptest.NewServer(f.handler)
	defer srv.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/faults/delay?duration=300ms", nil)
		req.Header.Set(api.RequestIDHeader, "slow-one")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		snap := f.inFlight.Snapshot()
		if len(snap) == 1 && snap[0].RequestID == "slow-one" && snap[0].Path == "/faults/delay" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("in-flight snapshot never showed the slow request: %+v", snap)
		}
		time.Sleep(time.Millisecond)
	}
	<-done
	if snap := f.inFlight.Snapshot(); len(snap) != 0 {
		t.Fatalf("after the request ended, in flight = %+v", snap)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestPanicAfterTheResponseBeganAbortsTheConnection(t *testing.T) {
	f := newFixture(t, defaultConfig)
	m := f.handler.(*api.Middleware)
	m.SetNext(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "partial")
		panic("late failure")
	}))
	srv := httptest.NewServer(m)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a handler that panicked mid-response produced a complete response")
	}
	if n := len(f.logs.FilterMessage("panic serving request").All()); n != 1 {
		t.Fatalf("panic logged %d times, want once", n)
	}
}

func TestReadinessFaultSwitch(t *testing.T) {
	f := newFixture(t, api.Config{MaxBodyBytes: 1 << 20, FaultsEnabled: true})
	post := func(path string) int {
		return f.do(httptest.NewRequest(http.MethodPost, path, nil)).Code
	}
	if code := f.get("/ready").Code; code != http.StatusOK {
		t.Fatalf("/ready before the switch = %d", code)
	}
	if code := post("/faults/unready"); code != http.StatusOK {
		t.Fatalf("POST /faults/unready = %d", code)
	}
	if code := f.get("/ready").Code; code != http.StatusServiceUnavailable {
		t.Fatalf("/ready after /faults/unready = %d, want 503", code)
	}
	if body := f.get("/ready?verbose").Body.String(); !strings.Contains(body, "[-]fault-injection failed: unready on purpose") {
		t.Fatalf("/ready?verbose does not say why: %s", body)
	}
	if code := f.get("/live").Code; code != http.StatusOK {
		t.Fatalf("/live while unready on purpose = %d, want 200", code)
	}
	if code := post("/faults/ready"); code != http.StatusOK {
		t.Fatalf("POST /faults/ready = %d", code)
	}
	if code := f.get("/ready").Code; code != http.StatusOK {
		t.Fatalf("/ready after /faults/ready = %d, want 200", code)
	}
	if code := f.get("/faults/unready").Code; code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /faults/unready = %d, want 405: the switch changes state", code)
	}
}
