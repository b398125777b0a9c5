package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// The exact key sets of the wire protocol's objects.
var (
	registerKeys  = []string{"agent_id", "registered_at", "heartbeat_url", "heartbeat_interval_seconds"}
	heartbeatKeys = []string{"received", "next_interval_seconds", "timestamp"}
	agentKeys     = []string{"id", "name", "type", "host", "port", "capabilities", "status", "version", "registered_at", "last_seen", "metadata", "announced_host", "address_source"}
	agentListKeys = []string{"agents", "count"}
)

// call serves one request through the router: a raw body ("" for none,
// then without Content-Type either) and header name/value pairs.
func (f *fixture) call(method, path, body string, header ...string) *httptest.ResponseRecorder {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return f.do(req)
}

// mustJSON encodes v, for request bodies.
func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// objectOf decodes a JSON object response, checking its Content-Type.
func objectOf(t testing.TB, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || m == nil {
		t.Fatalf("body %q is not a JSON object: %v", rec.Body, err)
	}
	return m
}

// expect checks the status code and decodes the JSON object body.
func expect(t testing.TB, what string, rec *httptest.ResponseRecorder, code int) map[string]any {
	t.Helper()
	if rec.Code != code {
		t.Fatalf("%s = %d %s, want %d", what, rec.Code, strings.TrimSpace(rec.Body.String()), code)
	}
	return objectOf(t, rec)
}

// expectError checks the status and that the body is exactly
// {"error": "..."}, and returns the message.
func expectError(t testing.TB, what string, rec *httptest.ResponseRecorder, code int) string {
	t.Helper()
	if rec.Code != code {
		t.Fatalf("%s = %d %s, want %d", what, rec.Code, strings.TrimSpace(rec.Body.String()), code)
	}
	msg, err := errorMessage(rec)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return msg
}

// errorMessage returns the message of a body that must be exactly
// {"error": "<non-empty string>"} with Content-Type application/json.
func errorMessage(rec *httptest.ResponseRecorder) (string, error) {
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		return "", fmt.Errorf("error Content-Type = %q, want application/json (body %q)", ct, rec.Body)
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		return "", fmt.Errorf("error body %q is not JSON: %v", rec.Body, err)
	}
	msg, ok := m["error"].(string)
	if len(m) != 1 || !ok || msg == "" {
		return "", fmt.Errorf("error body %q is not exactly {\"error\": \"...\"}", rec.Body)
	}
	return msg, nil
}

func keysOf(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// wantKeys checks that m has exactly keys.
func wantKeys(t testing.TB, what string, m map[string]any, keys ...string) {
	t.Helper()
	want := slices.Clone(keys)
	slices.Sort(want)
	if got := keysOf(m); !slices.Equal(got, want) {
		t.Errorf("%s keys = %v, want exactly %v", what, got, want)
	}
}

// wantInt returns v as an int, failing unless it is a JSON integer.
func wantInt(t testing.TB, what string, v any) int {
	t.Helper()
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) {
		t.Fatalf("%s = %v (%T), want an integer", what, v, v)
	}
	return int(f)
}

// wantString returns v as a string, failing unless it is one.
func wantString(t testing.TB, what string, v any) string {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("%s = %v (%T), want a string", what, v, v)
	}
	return s
}

// wantTime parses v as an RFC 3339 timestamp.
func wantTime(t testing.TB, what string, v any) time.Time {
	t.Helper()
	s := wantString(t, what, v)
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("%s = %q is not RFC 3339: %v", what, s, err)
	}
	return at
}

// agentBody is a registration of a cost agent on 127.0.0.1.
func agentBody(name string, port int, caps ...string) map[string]any {
	return map[string]any{
		"name": name, "type": "cost", "host": "127.0.0.1", "port": port,
		"capabilities": caps, "version": "1.0.0", "metadata": map[string]any{"region": "eu"},
	}
}

// register registers an agent through the API and returns its id.
func (f *fixture) register(t testing.TB, body map[string]any) string {
	t.Helper()
	rec := f.call(http.MethodPost, "/agents/register", mustJSON(t, body))
	m := expect(t, "POST /agents/register", rec, http.StatusCreated)
	id, _ := m["agent_id"].(string)
	if id == "" {
		t.Fatalf("register answered no agent_id: %s", rec.Body)
	}
	return id
}

// checkAgent checks an Agent object's shape and returns it.
func checkAgent(t testing.TB, what string, m map[string]any) map[string]any {
	t.Helper()
	wantKeys(t, what, m, agentKeys...)
	if _, ok := m["capabilities"].([]any); !ok {
		t.Errorf("%s capabilities = %v (%T), want an array", what, m["capabilities"], m["capabilities"])
	}
	if _, ok := m["metadata"].(map[string]any); !ok {
		t.Errorf("%s metadata = %v (%T), want an object", what, m["metadata"], m["metadata"])
	}
	if st := wantString(t, what+" status", m["status"]); !slices.Contains([]string{"healthy", "degraded", "unhealthy", "unreachable"}, st) {
		t.Errorf("%s status = %q", what, st)
	}
	if typ := wantString(t, what+" type", m["type"]); !slices.Contains([]string{"cost", "performance", "resource", "application"}, typ) {
		t.Errorf("%s type = %q", what, typ)
	}
	wantInt(t, what+" port", m["port"])
	wantTime(t, what+" registered_at", m["registered_at"])
	wantTime(t, what+" last_seen", m["last_seen"])
	return m
}

// getAgent reads GET /agents/{id}, expecting 200.
func (f *fixture) getAgent(t testing.TB, id string) map[string]any {
	t.Helper()
	return checkAgent(t, "GET /agents/"+id, expect(t, "GET /agents/"+id, f.get("/agents/"+id), http.StatusOK))
}

// listAgents reads an agent list, checking its shape, and returns the agents.
func (f *fixture) listAgents(t testing.TB, path string, header ...string) []map[string]any {
	t.Helper()
	m := expect(t, "GET "+path, f.call(http.MethodGet, path, "", header...), http.StatusOK)
	wantKeys(t, "GET "+path, m, agentListKeys...)
	raw, ok := m["agents"].([]any)
	if !ok {
		t.Fatalf("GET %s agents = %v (%T), want an array (never null)", path, m["agents"], m["agents"])
	}
	if n := wantInt(t, "count", m["count"]); n != len(raw) {
		t.Errorf("GET %s count = %d, but %d agents listed", path, n, len(raw))
	}
	out := make([]map[string]any, len(raw))
	for i, a := range raw {
		obj, ok := a.(map[string]any)
		if !ok {
			t.Fatalf("GET %s agents[%d] = %v, want an object", path, i, a)
		}
		out[i] = checkAgent(t, fmt.Sprintf("GET %s agents[%d]", path, i), obj)
	}
	return out
}

// stubResolver answers DNS lookups from a table; other names do not exist.
type stubResolver map[string][]string

func (r stubResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := r[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	out := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		out[i] = netip.MustParseAddr(a)
	}
	return out, nil
}

// useResolver makes the registry resolve agent host names with r instead
// of DNS. Call it before the first request.
func (f *fixture) useResolver(r registry.Resolver) { f.agents.Guard().Resolver = r }

func TestRegisterAgent(t *testing.T) {
	f := newFixture(t, defaultConfig)
	before := time.Now().Add(-time.Second)
	rec := f.call(http.MethodPost, "/agents/register", mustJSON(t, agentBody("cost-1", 8001, "analyze", "report")))
	m := expect(t, "register", rec, http.StatusCreated)
	wantKeys(t, "register response", m, registerKeys...)
	id := wantString(t, "agent_id", m["agent_id"])
	if id == "" {
		t.Fatal("agent_id is empty")
	}
	registeredAt := wantTime(t, "registered_at", m["registered_at"])
	if registeredAt.Before(before) || registeredAt.After(time.Now().Add(time.Second)) {
		t.Errorf("registered_at = %s, want about now", registeredAt)
	}
	if got := m["heartbeat_url"]; got != "/agents/"+id+"/heartbeat" {
		t.Errorf("heartbeat_url = %v, want /agents/%s/heartbeat", got, id)
	}
	if n := wantInt(t, "heartbeat_interval_seconds", m["heartbeat_interval_seconds"]); n != 30 {
		t.Errorf("heartbeat_interval_seconds = %d, want 30", n)
	}

	a := f.getAgent(t, id)
	for key, want := range map[string]any{
		"id": id, "name": "cost-1", "type": "cost", "host": "127.0.0.1", "port": float64(8001),
		"status": "healthy", "version": "1.0.0",
	} {
		if a[key] != want {
			t.Errorf("agent %s = %v, want %v", key, a[key], want)
		}
	}
	if caps := fmt.Sprint(a["capabilities"]); caps != "[analyze report]" {
		t.Errorf("agent capabilities = %s, want [analyze report]", caps)
	}
	if meta := fmt.Sprint(a["metadata"]); meta != "map[region:eu]" {
		t.Errorf("agent metadata = %s, want map[region:eu]", meta)
	}

	// An agent restart registers again: same name, host and port, the same
	// agent, still 201, with the new fields.
	again := agentBody("cost-1", 8001, "analyze")
	again["version"] = "1.1.0"
	rec = f.call(http.MethodPost, "/agents/register", mustJSON(t, again))
	m = expect(t, "re-register", rec, http.StatusCreated)
	wantKeys(t, "re-register response", m, registerKeys...)
	if m["agent_id"] != id {
		t.Errorf("re-register agent_id = %v, want the same %s", m["agent_id"], id)
	}
	a = f.getAgent(t, id)
	if a["version"] != "1.1.0" || fmt.Sprint(a["capabilities"]) != "[analyze]" {
		t.Errorf("re-registered agent = %v, want version 1.1.0 and capabilities [analyze]", a)
	}

	// Another port is another agent; so is another name.
	other := f.register(t, agentBody("cost-1", 8002, "analyze"))
	renamed := f.register(t, agentBody("cost-2", 8001, "analyze"))
	if other == id || renamed == id || other == renamed {
		t.Errorf("ids %s, %s, %s: want three distinct agents", id, other, renamed)
	}
	if n := len(f.listAgents(t, "/agents")); n != 3 {
		t.Errorf("GET /agents lists %d agents, want 3", n)
	}
}

func TestRegisterAgentEmptyCollections(t *testing.T) {
	f := newFixture(t, defaultConfig)
	for _, body := range []string{
		`{"name":"bare","type":"cost","host":"127.0.0.1","port":9000}`,
		`{"name":"nulls","type":"cost","host":"127.0.0.1","port":9000,"capabilities":null,"metadata":null,"version":null}`,
		`{"name":"empties","type":"cost","host":"127.0.0.1","port":9000,"capabilities":[],"metadata":{}}`,
	} {
		m := expect(t, "register "+body, f.call(http.MethodPost, "/agents/register", body), http.StatusCreated)
		id := m["agent_id"].(string)
		rec := f.get("/agents/" + id)
		if !strings.Contains(rec.Body.String(), `"capabilities":[]`) || !strings.Contains(rec.Body.String(), `"metadata":{}`) {
			t.Errorf("GET /agents/%s = %s, want \"capabilities\":[] and \"metadata\":{} (never null)", id, rec.Body)
		}
		checkAgent(t, body, objectOf(t, rec))
	}
	rec := f.get("/agents")
	if strings.Contains(rec.Body.String(), ":null") {
		t.Errorf("GET /agents has a null: %s", rec.Body)
	}
}

func TestRegisterAgentRejects(t *testing.T) {
	f := newFixture(t, defaultConfig)
	f.useResolver(stubResolver{"agent.internal": {"10.1.2.3"}})
	valid := func(change func(m map[string]any)) string {
		m := map[string]any{"name": "a", "type": "cost", "host": "127.0.0.1", "port": 8000, "capabilities": []string{"x"}, "metadata": map[string]any{}}
		change(m)
		return mustJSON(t, m)
	}
	set := func(key string, v any) string { return valid(func(m map[string]any) { m[key] = v }) }
	drop := func(key string) string { return valid(func(m map[string]any) { delete(m, key) }) }
	for _, tc := range []struct {
		name, body string
		code       int
		field      string // the message starts with "<field>:"
	}{
		{"no name", drop("name"), 400, "name"},
		{"empty name", set("name", ""), 400, "name"},
		{"blank name", set("name", "   "), 400, "name"},
		{"name with a newline", set("name", "a\nb"), 400, "name"},
		{"long name", set("name", strings.Repeat("n", 129)), 400, "name"},
		{"name a number", set("name", 5), 400, "name"},
		{"no type", drop("type"), 400, "type"},
		{"bad type", set("type", "bogus"), 400, "type"},
		{"type a number", set("type", 1), 400, "type"},
		{"no host", drop("host"), 400, "host"},
		{"empty host", set("host", ""), 400, "host"},
		{"host with scheme", set("host", "http://10.0.0.1"), 400, "host"},
		{"host with port", set("host", "10.0.0.1:8080"), 400, "host"},
		{"host with path", set("host", "10.0.0.1/task"), 400, "host"},
		{"name host with path", set("host", "agent.internal/x"), 400, "host"},
		{"host with userinfo", set("host", "user@10.0.0.1"), 400, "host"},
		{"bracketed IPv6 host", set("host", "[::1]"), 400, "host"},
		{"host that does not resolve", set("host", "nx.internal"), 400, "host"},
		{"no port", drop("port"), 400, "port"},
		{"null port", set("port", nil), 400, "port"},
		{"port a string", set("port", "80"), 400, "port"},
		{"port a fraction", set("port", 1.5), 400, "port"},
		{"port zero", set("port", 0), 400, "port"},
		{"port negative", set("port", -1), 400, "port"},
		{"port too big", set("port", 65536), 400, "port"},
		{"port huge", `{"name":"a","type":"cost","host":"127.0.0.1","port":1e30}`, 400, "port"},
		{"capabilities a string", set("capabilities", "x"), 400, "capabilities"},
		{"capabilities of numbers", set("capabilities", []int{1}), 400, "capabilities"},
		{"capability with a space", set("capabilities", []string{"bad cap"}), 400, "capabilities[0]"},
		{"empty capability", set("capabilities", []string{"ok", ""}), 400, "capabilities[1]"},
		{"too many capabilities", set("capabilities", manyStrings(65)), 400, "capabilities"},
		{"metadata an array", set("metadata", []any{}), 400, "metadata"},
		{"metadata a string", set("metadata", "x"), 400, "metadata"},
		{"version a number", set("version", 1), 400, "version"},
		{"long version", set("version", strings.Repeat("v", 65)), 400, "version"},
		{"public host", set("host", "8.8.8.8"), 403, "host"},
		{"metadata service host", set("host", "169.254.169.254"), 403, "host"},
		{"unspecified host", set("host", "0.0.0.0"), 403, "host"},
		{"mapped public host", set("host", "::ffff:8.8.8.8"), 403, "host"},
		{"public IPv6 host", set("host", "2001:4860:4860::8888"), 403, "host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := expectError(t, tc.body, f.call(http.MethodPost, "/agents/register", tc.body), tc.code)
			if !strings.HasPrefix(msg, tc.field+":") {
				t.Errorf("message %q does not name the field %s", msg, tc.field)
			}
		})
	}
	for _, body := range []string{"", "   ", "nope", "[]", `"agent"`, "null", "{", `{"name":"a"} {}`, `{"name":`} {
		expectError(t, fmt.Sprintf("register %q", body), f.call(http.MethodPost, "/agents/register", body), 400)
	}
	if n := len(f.listAgents(t, "/agents")); n != 0 {
		t.Errorf("rejected registrations left %d agents", n)
	}
}

func manyStrings(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("cap%d", i)
	}
	return out
}

func TestRegisterAgentHostNames(t *testing.T) {
	f := newFixture(t, defaultConfig)
	f.useResolver(stubResolver{
		"agent.internal":  {"10.1.2.3"},
		"public.example":  {"8.8.8.8"},
		"mixed.example":   {"10.0.0.1", "169.254.169.254"},
		"metadata.google": {"169.254.169.254"},
	})
	body := agentBody("named", 8000, "x")
	body["host"] = "Agent.Internal"
	id := f.register(t, body)
	if host := f.getAgent(t, id)["host"]; host != "agent.internal" {
		t.Errorf("host = %v, want agent.internal (lower-cased)", host)
	}
	for _, host := range []string{"public.example", "mixed.example", "metadata.google"} {
		body["host"] = host
		msg := expectError(t, "register host "+host, f.call(http.MethodPost, "/agents/register", mustJSON(t, body)), http.StatusForbidden)
		if !strings.HasPrefix(msg, "host:") {
			t.Errorf("403 message %q does not name the host field", msg)
		}
	}
}

func TestHeartbeat(t *testing.T) {
	f := newFixture(t, defaultConfig)
	id := f.register(t, agentBody("hb", 8000, "x"))
	path := "/agents/" + id + "/heartbeat"

	check := func(what string, rec *httptest.ResponseRecorder) {
		t.Helper()
		m := expect(t, what, rec, http.StatusOK)
		wantKeys(t, what, m, heartbeatKeys...)
		if m["received"] != true {
			t.Errorf("%s received = %v, want true", what, m["received"])
		}
		if n := wantInt(t, what+" next_interval_seconds", m["next_interval_seconds"]); n != 30 {
			t.Errorf("%s next_interval_seconds = %d, want 30", what, n)
		}
		if at := wantTime(t, what+" timestamp", m["timestamp"]); time.Since(at) > time.Minute || time.Until(at) > time.Second {
			t.Errorf("%s timestamp = %s, want now", what, at)
		}
	}

	// No body and no Content-Type at all.
	req := httptest.NewRequest(http.MethodPost, path, nil)
	check("heartbeat without a body", f.do(req))
	check("heartbeat {}", f.call(http.MethodPost, path, "{}"))
	check("heartbeat whitespace", f.call(http.MethodPost, path, " \n"))
	for _, status := range []string{"", "healthy", "degraded", "unhealthy", "healthy"} {
		check("heartbeat "+status, f.call(http.MethodPost, path, mustJSON(t, map[string]any{"status": status, "metadata": map[string]any{"load": 0.5}})))
	}
	a := f.getAgent(t, id)
	if a["status"] != "healthy" {
		t.Errorf("status after a healthy heartbeat = %v", a["status"])
	}
	if fmt.Sprint(a["metadata"]) != "map[load:0.5 region:eu]" {
		t.Errorf("metadata after a heartbeat = %v, want the registration's and the heartbeat's", a["metadata"])
	}

	check("heartbeat degraded", f.call(http.MethodPost, path, `{"status":"degraded"}`))
	if st := f.getAgent(t, id)["status"]; st != "degraded" {
		t.Errorf("GET /agents/{id} status = %v, want degraded", st)
	}
	if list := f.listAgents(t, "/agents"); len(list) != 1 || list[0]["status"] != "degraded" {
		t.Errorf("GET /agents = %v, want the agent listed as degraded", list)
	}
	if list := f.listAgents(t, "/agents/type/cost"); len(list) != 1 || list[0]["status"] != "degraded" {
		t.Errorf("GET /agents/type/cost = %v, want the agent listed as degraded", list)
	}
	check("heartbeat unhealthy", f.call(http.MethodPost, path, `{"status":"unhealthy"}`))
	if st := f.getAgent(t, id)["status"]; st != "unhealthy" {
		t.Errorf("status = %v, want unhealthy", st)
	}

	for _, tc := range []struct{ body, field string }{
		{`{"status":"sleepy"}`, "status"},
		{`{"status":"unreachable"}`, "status"}, // the orchestrator's to say
		{`{"status":"HEALTHY"}`, "status"},
		{`{"status":5}`, "status"},
		{`{"status":null,"metadata":[]}`, "metadata"},
		{`{"metadata":"x"}`, "metadata"},
	} {
		msg := expectError(t, "heartbeat "+tc.body, f.call(http.MethodPost, path, tc.body), http.StatusBadRequest)
		if !strings.HasPrefix(msg, tc.field+":") {
			t.Errorf("heartbeat %s: message %q does not name %s", tc.body, msg, tc.field)
		}
	}
	for _, body := range []string{"nope", "[]", `{"status":"healthy"`, "{} {}"} {
		expectError(t, "heartbeat "+body, f.call(http.MethodPost, path, body), http.StatusBadRequest)
	}
	if st := f.getAgent(t, id)["status"]; st != "unhealthy" {
		t.Errorf("rejected heartbeats changed the status to %v", st)
	}

	msg := expectError(t, "heartbeat of an unknown agent", f.call(http.MethodPost, "/agents/no-such-agent/heartbeat", `{"status":"healthy"}`), http.StatusNotFound)
	if !strings.Contains(msg, "no-such-agent") {
		t.Errorf("404 message %q does not name the agent", msg)
	}
	expectError(t, "empty heartbeat of an unknown agent", f.do(httptest.NewRequest(http.MethodPost, "/agents/nope/heartbeat", nil)), http.StatusNotFound)
}

func TestUnregisterAgent(t *testing.T) {
	f := newFixture(t, defaultConfig)
	id := f.register(t, agentBody("leaving", 8000, "x"))
	keep := f.register(t, agentBody("staying", 8001, "x"))

	// As existing agents send it: no body, no Content-Type.
	req := httptest.NewRequest(http.MethodPost, "/agents/"+id+"/unregister", nil)
	if req.Header.Get("Content-Type") != "" {
		t.Fatal("test request has a Content-Type")
	}
	m := expect(t, "unregister", f.do(req), http.StatusOK)
	wantKeys(t, "unregister response", m, "message")
	if msg := wantString(t, "message", m["message"]); !strings.Contains(msg, id) || !strings.Contains(msg, "unregistered") {
		t.Errorf("message = %q, want it to say agent %s unregistered", msg, id)
	}

	expectError(t, "GET after unregister", f.get("/agents/"+id), http.StatusNotFound)
	expectError(t, "heartbeat after unregister", f.call(http.MethodPost, "/agents/"+id+"/heartbeat", "{}"), http.StatusNotFound)
	expectError(t, "unregister again", f.do(httptest.NewRequest(http.MethodPost, "/agents/"+id+"/unregister", nil)), http.StatusNotFound)
	list := f.listAgents(t, "/agents")
	if len(list) != 1 || list[0]["id"] != keep {
		t.Errorf("GET /agents after unregister = %v, want only %s", list, keep)
	}

	// A body, even a strange one, is not looked at.
	m = expect(t, "unregister with a body", f.call(http.MethodPost, "/agents/"+keep+"/unregister", "not json"), http.StatusOK)
	wantKeys(t, "unregister response", m, "message")

	// Registering again after unregistering makes a new agent.
	if again := f.register(t, agentBody("leaving", 8000, "x")); again == id {
		t.Errorf("re-registering after unregister returned the old id %s", id)
	}
}

func TestListAgents(t *testing.T) {
	f := newFixture(t, defaultConfig)
	if list := f.listAgents(t, "/agents"); len(list) != 0 {
		t.Fatalf("empty registry lists %d agents", len(list))
	}
	if rec := f.get("/agents"); !strings.Contains(rec.Body.String(), `"agents":[]`) {
		t.Errorf("empty list = %s, want \"agents\":[]", rec.Body)
	}
	c1 := f.register(t, agentBody("c1", 8001, "x"))
	c2 := f.register(t, agentBody("c2", 8002, "y"))
	perf := agentBody("p1", 8003, "x")
	perf["type"] = "performance"
	p1 := f.register(t, perf)

	ids := func(list []map[string]any) []string {
		var out []string
		for _, a := range list {
			out = append(out, a["id"].(string))
		}
		slices.Sort(out)
		return out
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	if got := ids(f.listAgents(t, "/agents")); !slices.Equal(got, sorted(c1, c2, p1)) {
		t.Errorf("GET /agents ids = %v", got)
	}
	if got := ids(f.listAgents(t, "/agents/type/cost")); !slices.Equal(got, sorted(c1, c2)) {
		t.Errorf("GET /agents/type/cost ids = %v, want %v", got, sorted(c1, c2))
	}
	for _, a := range f.listAgents(t, "/agents/type/cost") {
		if a["type"] != "cost" {
			t.Errorf("GET /agents/type/cost lists a %v agent", a["type"])
		}
	}
	if got := ids(f.listAgents(t, "/agents/type/performance")); !slices.Equal(got, []string{p1}) {
		t.Errorf("GET /agents/type/performance ids = %v", got)
	}
	if got := f.listAgents(t, "/agents/type/application"); len(got) != 0 {
		t.Errorf("GET /agents/type/application = %v, want none", got)
	}
	for _, bad := range []string{"bogus", "Cost", "costs"} {
		msg := expectError(t, "GET /agents/type/"+bad, f.get("/agents/type/"+bad), http.StatusBadRequest)
		if !strings.HasPrefix(msg, "type:") {
			t.Errorf("message %q does not name the type", msg)
		}
	}
	if a := f.getAgent(t, p1); a["type"] != "performance" || a["name"] != "p1" {
		t.Errorf("GET /agents/%s = %v", p1, a)
	}
	msg := expectError(t, "GET unknown agent", f.get("/agents/does-not-exist"), http.StatusNotFound)
	if !strings.Contains(msg, "does-not-exist") {
		t.Errorf("404 message %q does not name the agent", msg)
	}
}

func TestAgentAndTaskRoutesMethodNotAllowed(t *testing.T) {
	f := newFixture(t, defaultConfig)
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodGet, "/agents/x/heartbeat", "POST"},
		{http.MethodPut, "/agents/x/heartbeat", "POST"},
		{http.MethodGet, "/agents/x/unregister", "POST"},
		{http.MethodDelete, "/agents/x/unregister", "POST"},
		{http.MethodPut, "/agents/register", "GET, HEAD, POST"}, // GET /agents/register reads the agent with id "register"
		{http.MethodPost, "/agents", "GET, HEAD"},
		{http.MethodDelete, "/agents", "GET, HEAD"},
		{http.MethodPost, "/agents/type/cost", "GET, HEAD"},
		{http.MethodDelete, "/agents/some-id", "GET, HEAD"},
		{http.MethodPut, "/tasks", "GET, HEAD, POST"},
		{http.MethodDelete, "/tasks", "GET, HEAD, POST"},
		{http.MethodPost, "/tasks/some-id", "DELETE, GET, HEAD"},
		{http.MethodPatch, "/tasks/some-id", "DELETE, GET, HEAD"},
		{http.MethodPost, "/openapi.yaml", "GET, HEAD"},
	} {
		rec := f.call(tc.method, tc.path, "")
		expectError(t, tc.method+" "+tc.path, rec, http.StatusMethodNotAllowed)
		if got := rec.Header().Get("Allow"); got != tc.allow {
			t.Errorf("%s %s Allow = %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
	for _, path := range []string{"/agents/", "/agents/x/y", "/agents/type/", "/tasks/a/b", "/agents/x/heartbeat/extra"} {
		expectError(t, "GET "+path, f.get(path), http.StatusNotFound)
	}
}

func TestRegisterSameAgentConcurrently(t *testing.T) {
	f := newFixture(t, defaultConfig)
	body := mustJSON(t, agentBody("restarting", 8000, "x"))
	ids := make([]string, 20)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			rec := f.call(http.MethodPost, "/agents/register", body)
			var m struct {
				AgentID string `json:"agent_id"`
			}
			if rec.Code != http.StatusCreated || json.Unmarshal(rec.Body.Bytes(), &m) != nil {
				t.Errorf("register = %d %s", rec.Code, rec.Body)
			}
			ids[i] = m.AgentID
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent registrations of one agent got ids %v, want one", ids)
		}
	}
	if n := len(f.listAgents(t, "/agents")); n != 1 {
		t.Errorf("%d agents listed, want 1", n)
	}
}

func TestBodyTooLargeOnDomainRoutes(t *testing.T) {
	f := newFixture(t, api.Config{MaxBodyBytes: 64})
	id := f.register(t, map[string]any{"name": "a", "type": "cost", "host": "127.0.0.1", "port": 1})
	big := `{"name":"a","type":"cost","host":"127.0.0.1","port":1,"metadata":{"pad":"` + strings.Repeat("x", 100) + `"}}`
	for _, path := range []string{"/agents/register", "/agents/" + id + "/heartbeat", "/tasks"} {
		msg := expectError(t, "POST "+path+" with a declared length", f.call(http.MethodPost, path, big), http.StatusRequestEntityTooLarge)
		if !strings.Contains(msg, "64 bytes") {
			t.Errorf("413 message %q does not state the limit", msg)
		}
		// Without a declared length the body is cut while it is read.
		req := httptest.NewRequest(http.MethodPost, path, io.NopCloser(strings.NewReader(big)))
		req.ContentLength = -1
		msg = expectError(t, "POST "+path+" chunked", f.do(req), http.StatusRequestEntityTooLarge)
		if !strings.Contains(msg, "64 bytes") {
			t.Errorf("413 message %q does not state the limit", msg)
		}
	}
	if n := len(f.listAgents(t, "/agents")); n != 1 {
		t.Errorf("%d agents after oversized registrations, want 1", n)
	}
}

// TestAgentMetadataLimits: metadata past AGENT_MAX_METADATA_BYTES is a 413
// and past AGENT_MAX_METADATA_DEPTH a 400, each naming the field and the
// limit, at registration and in heartbeats; nothing is stored.
func TestAgentMetadataLimits(t *testing.T) {
	f := newFixture(t, defaultConfig) // the default limits: 65536 bytes, depth 8
	id := f.register(t, agentBody("limits", 8000, "x"))
	atLimit := metadataOf(64 << 10)
	for len(atLimit) < 64<<10 {
		atLimit = atLimit[:len(atLimit)-1] + ` }`
	}
	if len(atLimit) != 64<<10 {
		t.Fatalf("metadata of %d bytes, want 65536", len(atLimit))
	}
	over := atLimit[:len(atLimit)-1] + " }"
	deep := `{"a":` + strings.Repeat("[", 7) + strings.Repeat("]", 7) + `}`    // 8 levels
	tooDeep := `{"a":` + strings.Repeat("[", 8) + strings.Repeat("]", 8) + `}` // 9 levels

	for _, tc := range []struct {
		name, metadata string
		code           int
		msg            string
	}{
		{"at the size limit", atLimit, 201, ""},
		{"a byte over", over, 413, "metadata: is 65537 bytes of JSON; the limit is 65536 bytes (AGENT_MAX_METADATA_BYTES)"},
		{"at the depth limit", deep, 201, ""},
		{"a level too deep", tooDeep, 400, "metadata: nests objects and arrays more than 8 levels deep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := f.call(http.MethodPost, "/agents/register", registrationWith("limits", tc.metadata))
			hb := f.call(http.MethodPost, "/agents/"+id+"/heartbeat", `{"status":"degraded","metadata":`+tc.metadata+`}`)
			if tc.code == 201 {
				expect(t, "register", rec, http.StatusCreated)
				expect(t, "heartbeat", hb, http.StatusOK)
				return
			}
			for what, rec := range map[string]*httptest.ResponseRecorder{"register": rec, "heartbeat": hb} {
				if msg := expectError(t, what, rec, tc.code); !strings.HasPrefix(msg, tc.msg) {
					t.Errorf("%s: message %q, want it to start with %q", what, msg, tc.msg)
				}
			}
		})
	}
	// The refused heartbeats changed nothing: the last accepted one stands.
	a := f.getAgent(t, id)
	if a["status"] != "degraded" || fmt.Sprint(a["metadata"]) != "map[a:[[[[[[[]]]]]]]]" {
		t.Errorf("agent after refused heartbeats = %v %v", a["status"], a["metadata"])
	}
}

// TestRegisterLargeMetadataAllocations: a registration with 64 KiB of
// metadata in thousands of keys is checked and kept as text, not decoded
// into maps and deep-copied: it allocates as often as one with the same
// 64 KiB in a single key (before, 5,500 keys cost about 17,000
// allocations).
func TestRegisterLargeMetadataAllocations(t *testing.T) {
	f := newFixtureAt(t, defaultConfig, zapcore.InfoLevel)
	allocs := func(metadata string) float64 {
		body := registrationWith("big", metadata)
		return testing.AllocsPerRun(20, func() {
			req := httptest.NewRequest(http.MethodPost, "/agents/register", strings.NewReader(body))
			f.handler.ServeHTTP(&discard{h: http.Header{}}, req)
		})
	}
	manyKeys := metadataOf(64 << 10)
	oneKey := `{"k":"` + strings.Repeat("v", len(manyKeys)-8) + `"}`
	if len(oneKey) != len(manyKeys) {
		t.Fatalf("%d and %d bytes of metadata, want the same", len(oneKey), len(manyKeys))
	}
	one, many := allocs(oneKey), allocs(manyKeys)
	if many > one+5 {
		t.Errorf("64 KiB of metadata in %d keys allocates %.0f times, in one key %.0f: it is decoded or copied key by key",
			strings.Count(manyKeys, ":"), many, one)
	}
	t.Logf("allocations per registration with 64 KiB of metadata: %.0f in one key, %.0f in %d keys", one, many, strings.Count(manyKeys, ":"))
}

// padded is a JSON object of exactly size bytes (at least 10), its text
// starting with label.
func padded(size int, label string) string {
	const frame = len(`{"":""}`)
	return `{"` + label + `":"` + strings.Repeat("x", size-frame-len(label)) + `"}`
}

// TestAgentMetadataBudget: once the agents' metadata fills
// AGENT_MAX_METADATA_TOTAL_BYTES, a registration or heartbeat that grows
// it answers 507 with a message naming the setting and nothing of the
// other agents, and changes nothing; equal or smaller metadata is
// accepted, and unregistering frees the agent's share.
func TestAgentMetadataBudget(t *testing.T) {
	cfg := testAgentsConfig
	cfg.MaxMetadataBytes, cfg.MaxMetadataTotalBytes = 512, 1024
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: cfg, dispatch: testDispatchConfig})
	register := func(name string, port int, metadata string) *httptest.ResponseRecorder {
		return f.call(http.MethodPost, "/agents/register",
			fmt.Sprintf(`{"name":%q,"type":"cost","host":"127.0.0.1","port":%d,"capabilities":["x"],"metadata":%s}`, name, port, metadata))
	}
	heartbeat := func(id, metadata string) *httptest.ResponseRecorder {
		return f.call(http.MethodPost, "/agents/"+id+"/heartbeat", `{"status":"degraded","metadata":`+metadata+`}`)
	}
	idOf := func(rec *httptest.ResponseRecorder) string {
		t.Helper()
		id, _ := expect(t, "register", rec, http.StatusCreated)["agent_id"].(string)
		return id
	}
	// checkRefusal checks a 507's message: the budget, the setting, the
	// request's own size; not the other agent's name, ID or metadata, nor
	// how much the registry holds.
	checkRefusal := func(what string, rec *httptest.ResponseRecorder, size int, others ...string) {
		t.Helper()
		msg := expectError(t, what, rec, http.StatusInsufficientStorage)
		for _, want := range []string{"the agent registry's metadata budget is spent", "AGENT_MAX_METADATA_TOTAL_BYTES=1024", fmt.Sprintf(" %d bytes of metadata", size)} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: message %q does not say %q", what, msg, want)
			}
		}
		for _, secret := range append(others, "confidential", "1000", "1024 bytes") {
			if strings.Contains(msg, secret) {
				t.Errorf("%s: message %q reveals %q", what, msg, secret)
			}
		}
	}

	one := idOf(register("alpha-agent", 8001, padded(500, "confidential")))
	two := idOf(register("beta-agent", 8002, padded(500, "two")))

	// 1000 of 1024 bytes held: 25 more do not fit, neither in a heartbeat
	// nor in a new agent's registration.
	checkRefusal("heartbeat growing past the budget", heartbeat(two, padded(25, "hb")), 25, "alpha-agent", one)
	if a := f.getAgent(t, two); a["status"] != "healthy" || fmt.Sprint(a["metadata"]) != "map[two:"+strings.Repeat("x", 500-10)+"]" {
		t.Errorf("agent after a refused heartbeat = %v with metadata %v; want it unchanged", a["status"], a["metadata"])
	}
	checkRefusal("registration past the budget", register("gamma-agent", 8003, padded(25, "three")), 25, "alpha-agent", one, "beta-agent", two)
	if n := len(f.listAgents(t, "/agents")); n != 2 {
		t.Errorf("%d agents after a refused registration, want 2", n)
	}
	// Exactly the 24 bytes left fit; then equal and smaller always do.
	expect(t, "heartbeat of the 24 bytes left", heartbeat(two, padded(24, "hb")), http.StatusOK)
	expect(t, "heartbeat of equal size at the budget", heartbeat(two, padded(24, "HB")), http.StatusOK)
	checkRefusal("heartbeat growing by a byte at the budget", heartbeat(two, padded(25, "hb")), 25, "alpha-agent", one)
	expect(t, "heartbeat shrinking at the budget", heartbeat(two, padded(10, "h")), http.StatusOK)
	if id := idOf(register("alpha-agent", 8001, padded(100, "smaller"))); id != one {
		t.Errorf("registering alpha-agent again = %s, want its ID %s", id, one)
	}

	// Unregistering frees its share: three fits, which did not before.
	checkRefusal("registration before the unregistration", register("gamma-agent", 8003, padded(500, "three")), 500, "alpha-agent", one)
	expect(t, "unregister", f.call(http.MethodPost, "/agents/"+one+"/unregister", ""), http.StatusOK)
	idOf(register("gamma-agent", 8003, padded(500, "three")))
}
