package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// While PostgreSQL is down, every request that needs it answers 503 with
// Retry-After and a JSON error that tells nothing of the database, never
// 500; /live stays 200 and /ready fails after the grace. Once it is back,
// everything works again by itself and no agent accepted before is lost.
func TestDatabaseOutage(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	dbURL := srv.NewDatabase(t)
	ctx := context.Background()
	pool, err := postgres.Open(ctx, postgres.Config{MaxConns: 4, ConnectTimeout: time.Second}, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the service's own cleanup: it stops first
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel,
		fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig, database: pool})
	ready := func() bool { return f.get("/ready").Code == http.StatusOK }

	a := f.register(t, agentBody("cost-1", 8001))
	b := f.register(t, agentBody("cost-2", 8002))
	expect(t, "v1 register", f.v1(http.MethodPost, "/api/v1/agents/register",
		`{"agent_id":"perf-1","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`), http.StatusOK)
	eventually.True(t, 20*time.Second, "/ready with the database up", ready)

	spec := loadSpec(t)
	srv.Stop()
	requests := []struct{ method, path, body string }{
		{http.MethodPost, "/agents/register", mustJSON(t, agentBody("cost-3", 8003, "analyze"))},
		{http.MethodPost, "/agents/" + a + "/heartbeat", `{"status":"healthy"}`},
		{http.MethodGet, "/agents", ""},
		{http.MethodGet, "/agents/" + b, ""},
		{http.MethodPost, "/agents/" + b + "/unregister", ""},
		{http.MethodGet, "/api/v1/agents", ""},
		{http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"perf-1","status":"active"}`},
		{http.MethodPost, "/api/v1/agents/register", `{"agent_id":"perf-2","agent_type":"performance","endpoint":"http://10.1.1.1:8003"}`},
		{http.MethodPost, "/tasks", `{"task_type":"analyze","agent_type":"cost","parameters":{}}`},
	}
	for _, r := range requests {
		var body []byte
		if r.body != "" {
			body = []byte(r.body)
		}
		// As openapi.yaml documents it, Retry-After included.
		rec := spec.exchange(t, f, r.method, r.path, body, nil, true)
		what := r.method + " " + r.path + " with the database down"
		msg := expectError(t, what, rec, http.StatusServiceUnavailable)
		if rec.Header().Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After", what)
		}
		for _, secret := range []string{srv.Password(), "127.0.0.1", "postgres", "SQLSTATE", "dial"} {
			if strings.Contains(msg, secret) {
				t.Errorf("%s: the error %q tells of the database (%q)", what, msg, secret)
			}
		}
	}
	if code := f.get("/live").Code; code != http.StatusOK {
		t.Errorf("/live with the database down = %d, want 200", code)
	}
	eventually.True(t, 30*time.Second, "/ready to fail with the database down", func() bool { return !ready() })
	if code := f.get("/live").Code; code != http.StatusOK {
		t.Errorf("/live with /ready failing = %d, want 200", code)
	}
	health := expect(t, "/health", f.get("/health"), http.StatusServiceUnavailable)
	check, _ := health["checks"].(map[string]any)["database"].(map[string]any)
	if check["status"] != "failed" || strings.Contains(check["error"].(string), srv.Password()) {
		t.Errorf("/health's database check = %v, want failed, without the password", check)
	}
	metrics := f.get("/metrics")
	if metrics.Code != http.StatusOK || strings.Contains(metrics.Body.String(), srv.Password()) {
		t.Errorf("/metrics with the database down = %d; want 200, without the password", metrics.Code)
	}
	for _, e := range f.logs.All() {
		for _, v := range e.ContextMap() {
			if s, ok := v.(string); ok && strings.Contains(s, srv.Password()) {
				t.Errorf("log line %q shows the password", e.Message)
			}
		}
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 30*time.Second, "/ready once the database is back", ready)
	expect(t, "heartbeat once the database is back", f.call(http.MethodPost, "/agents/"+a+"/heartbeat", `{"status":"healthy"}`), http.StatusOK)
	f.register(t, agentBody("cost-3", 8003))
	var names []string
	for _, ag := range f.listAgents(t, "/agents") {
		names = append(names, ag["name"].(string))
	}
	slices.Sort(names)
	if want := []string{"cost-1", "cost-2", "cost-3", "perf-1"}; !slices.Equal(names, want) {
		t.Errorf("agents after the outage = %v, want %v: none lost, none half-written", names, want)
	}
}

// An id PostgreSQL text cannot hold (a NUL, bytes that are not UTF-8),
// sent in a path or a body, names no record: the database mode answers as
// the memory mode does (404, or the 4xx the route gives an unknown id),
// never a 500 from the database refusing the parameter.
func TestDatabaseUnstorableIDs(t *testing.T) {
	ctx := context.Background()
	pool, err := postgres.Open(ctx, postgres.Config{MaxConns: 4, ConnectTimeout: 5 * time.Second}, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := postgres.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	fixtures := map[string]*fixture{
		"memory":     newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig}),
		"PostgreSQL": newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig, database: pool}),
	}
	for _, f := range fixtures {
		f.register(t, agentBody("cost-1", 8001, "analyze"))
	}
	requests := []struct{ method, path, body string }{
		{http.MethodGet, "/agents/a%00b", ""},
		{http.MethodGet, "/agents/%ff%fe", ""},
		{http.MethodPost, "/agents/a%00b/heartbeat", `{"status":"healthy"}`},
		{http.MethodPost, "/agents/%ff/heartbeat", `{}`},
		{http.MethodPost, "/agents/%ff/unregister", ""},
		{http.MethodGet, "/api/v1/agents/%00", ""},
		{http.MethodDelete, "/api/v1/agents/%ff", ""},
		{http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"a\u0000b","status":"active"}`},
		{http.MethodGet, "/tasks/%00", ""},
		{http.MethodGet, "/tasks/%ff", ""},
		{http.MethodDelete, "/tasks/a%00", ""},
		{http.MethodPost, "/tasks", `{"task_type":"analyze","agent_type":"cost","parameters":{},"agent_id":"q\u0000"}`},
		{http.MethodGet, "/coordination/approvals/%ff", ""},
		{http.MethodGet, "/coordination/plans/%00", ""},
	}
	for _, r := range requests {
		codes := map[string]int{}
		for mode, f := range fixtures {
			req := httptest.NewRequest(r.method, "http://orchestrator"+r.path, strings.NewReader(r.body))
			if r.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			rec := f.do(req)
			codes[mode] = rec.Code
			if rec.Code >= 500 {
				t.Errorf("%s %s (%s): %d %s", r.method, r.path, mode, rec.Code, rec.Body)
			}
		}
		if codes["memory"] != codes["PostgreSQL"] {
			t.Errorf("%s %s: memory answers %d, PostgreSQL %d", r.method, r.path, codes["memory"], codes["PostgreSQL"])
		}
	}
}
