package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/registry"
)

var (
	agentV1Keys = []string{"agent_id", "agent_name", "agent_type", "endpoint", "host", "port", "capabilities", "status", "version",
		"health_check_endpoint", "registered_at", "last_heartbeat", "metadata", "announced_host", "address_source"}
	registerV1Keys  = []string{"agent_id", "status", "message", "heartbeat_interval_seconds", "heartbeat_url", "registered_at", "host", "port", "address_source"}
	heartbeatV1Keys = []string{"status", "agent_id", "timestamp", "heartbeat_interval_seconds"}
)

// podAddr is where the tests' /api/v1 requests come from, unless they say
// otherwise: a pod's address, inside the default AGENT_ALLOWED_NETWORKS.
const podAddr = "10.244.1.7"

// callFrom is call with the request coming from remote ("ip:port").
func (f *fixture) callFrom(remote, method, path, body string, header ...string) *httptest.ResponseRecorder {
	var req *http.Request
	if body != "" {
		req = httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	} else {
		req = httptest.NewRequest(method, path, nil)
	}
	req.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return f.do(req)
}

// v1 sends a request of the dialect from podAddr.
func (f *fixture) v1(method, path, body string, header ...string) *httptest.ResponseRecorder {
	return f.callFrom(podAddr+":40312", method, path, body, header...)
}

// The three bodies OptiInfra's agents send, as they send them.
const (
	performanceBody = `{"agent_id":"performance-agent-001","agent_type":"performance","capabilities":["latency_analysis"],` +
		`"endpoint":"http://localhost:8002","health_check_endpoint":"/api/v1/health","version":"0.1.0","metadata":{"model":"llama"}}`
	resourceBody = `{"agent_id":"resource-agent-001","agent_type":"resource","capabilities":["gpu_utilization"],` +
		`"endpoint":"http://localhost:8003","health_check_endpoint":"http://localhost:8003/api/v1/health","version":"0.1.0","status":"active","metadata":{}}`
	applicationBody = `{"agent_id":"application-agent-001","agent_name":"Application Agent","agent_type":"application","version":"0.1.0",` +
		`"host":"0.0.0.0","port":8004,"capabilities":["quality_monitoring"],"status":"active"}`
)

// checkAgentV1 checks an AgentV1 object's shape and returns it.
func checkAgentV1(t testing.TB, what string, m map[string]any) map[string]any {
	t.Helper()
	wantKeys(t, what, m, agentV1Keys...)
	if _, ok := m["capabilities"].([]any); !ok {
		t.Errorf("%s capabilities = %v, want an array", what, m["capabilities"])
	}
	if _, ok := m["metadata"].(map[string]any); !ok {
		t.Errorf("%s metadata = %v, want an object", what, m["metadata"])
	}
	port := wantInt(t, what+" port", m["port"])
	if want := "http://" + wantString(t, what+" host", m["host"]) + ":" + strconv.Itoa(port); m["endpoint"] != want &&
		!strings.Contains(wantString(t, "host", m["host"]), ":") {
		t.Errorf("%s endpoint = %v, want %s", what, m["endpoint"], want)
	}
	wantTime(t, what+" registered_at", m["registered_at"])
	wantTime(t, what+" last_heartbeat", m["last_heartbeat"])
	return m
}

// listV1 reads GET path of the dialect and returns the agents by id.
func (f *fixture) listV1(t testing.TB, path string) map[string]map[string]any {
	t.Helper()
	m := expect(t, "GET "+path, f.v1(http.MethodGet, path, ""), http.StatusOK)
	wantKeys(t, "GET "+path, m, agentListKeys...)
	raw, ok := m["agents"].([]any)
	if !ok {
		t.Fatalf("GET %s agents = %v, want an array", path, m["agents"])
	}
	if n := wantInt(t, "count", m["count"]); n != len(raw) {
		t.Errorf("GET %s count = %d, %d agents listed", path, n, len(raw))
	}
	out := map[string]map[string]any{}
	for _, a := range raw {
		obj, _ := a.(map[string]any)
		obj = checkAgentV1(t, "GET "+path+" agent", obj)
		out[wantString(t, "agent_id", obj["agent_id"])] = obj
	}
	return out
}

func TestRegisterV1(t *testing.T) {
	f := newFixture(t, defaultConfig)
	for _, tc := range []struct {
		body, id, name, host, announced, source, health string
		port                                            int
	}{
		{performanceBody, "performance-agent-001", "performance-agent-001", podAddr, "localhost", "request", "/api/v1/health", 8002},
		{resourceBody, "resource-agent-001", "resource-agent-001", podAddr, "localhost", "request", "http://localhost:8003/api/v1/health", 8003},
		{applicationBody, "application-agent-001", "Application Agent", podAddr, "0.0.0.0", "request", "", 8004},
	} {
		t.Run(tc.id, func(t *testing.T) {
			m := expect(t, "register", f.v1(http.MethodPost, "/api/v1/agents/register", tc.body), http.StatusOK)
			wantKeys(t, "register response", m, registerV1Keys...)
			if m["agent_id"] != tc.id || m["status"] != "registered" || m["heartbeat_url"] != "/api/v1/agents/"+tc.id+"/heartbeat" ||
				wantInt(t, "interval", m["heartbeat_interval_seconds"]) != 30 || m["host"] != tc.host ||
				wantInt(t, "port", m["port"]) != tc.port || m["address_source"] != tc.source {
				t.Errorf("register answered %v", m)
			}
			first := wantTime(t, "registered_at", m["registered_at"])

			a := checkAgentV1(t, "GET", expect(t, "GET", f.v1(http.MethodGet, "/api/v1/agents/"+tc.id, ""), http.StatusOK))
			if a["agent_name"] != tc.name || a["announced_host"] != tc.announced || a["address_source"] != tc.source ||
				a["health_check_endpoint"] != tc.health || a["status"] != "healthy" ||
				a["endpoint"] != "http://"+tc.host+":"+strconv.Itoa(tc.port) {
				t.Errorf("GET /api/v1/agents/%s = %v", tc.id, a)
			}

			// A restart registers again: 200, the same agent, updated.
			again := strings.Replace(tc.body, `"version":"0.1.0"`, `"version":"0.2.0"`, 1)
			m = expect(t, "register again", f.v1(http.MethodPost, "/api/v1/agents/register", again), http.StatusOK)
			if !wantTime(t, "registered_at", m["registered_at"]).Equal(first) || !strings.Contains(wantString(t, "message", m["message"]), "again") {
				t.Errorf("registering again answered %v, want the first registered_at and a message saying so", m)
			}
			if v := f.v1(http.MethodGet, "/api/v1/agents/"+tc.id, ""); !strings.Contains(v.Body.String(), `"version":"0.2.0"`) {
				t.Errorf("after registering again: %s", v.Body)
			}
		})
	}
	all := f.listV1(t, "/api/v1/agents")
	if len(all) != 3 {
		t.Errorf("GET /api/v1/agents lists %d agents, want 3 (no duplicates): %v", len(all), keysOfAgents(all))
	}
	if perf := f.listV1(t, "/api/v1/agents?agent_type=performance"); len(perf) != 1 || perf["performance-agent-001"] == nil {
		t.Errorf("?agent_type=performance lists %v", keysOfAgents(perf))
	}
	if none := f.listV1(t, "/api/v1/agents?agent_type=cost"); len(none) != 0 {
		t.Errorf("?agent_type=cost lists %v", keysOfAgents(none))
	}
	msg := expectError(t, "?agent_type=robot", f.v1(http.MethodGet, "/api/v1/agents?agent_type=robot", ""), http.StatusBadRequest)
	if !strings.HasPrefix(msg, "agent_type: ") {
		t.Errorf("?agent_type=robot: %q does not name agent_type", msg)
	}
	for _, path := range []string{"/api/v1/agents", "/api/v1/agents/performance-agent-001"} {
		if rec := f.v1(http.MethodHead, path, ""); rec.Code != http.StatusOK {
			t.Errorf("HEAD %s = %d, want 200", path, rec.Code)
		}
	}
	if rec := f.v1(http.MethodHead, "/api/v1/agents/nobody", ""); rec.Code != http.StatusNotFound {
		t.Errorf("HEAD of an unknown agent = %d, want 404", rec.Code)
	}
	expectError(t, "GET unknown", f.v1(http.MethodGet, "/api/v1/agents/nobody", ""), http.StatusNotFound)
}

func keysOfAgents(m map[string]map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestRegisterV1Address: where the registered host comes from, by what
// the agent announced and where the request came from.
func TestRegisterV1Address(t *testing.T) {
	f := newFixtureWith(t, api.Config{MaxBodyBytes: 1 << 20, TrustedProxies: []string{"10.0.0.0/24"}}, zapcore.DebugLevel,
		fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	body := func(id, endpoint string) string {
		return `{"agent_id":"` + id + `","agent_type":"performance","endpoint":"` + endpoint + `"}`
	}
	for i, tc := range []struct {
		name, endpoint, remote, xff string
		host, source                string
		code                        int
	}{
		{"announced private", "http://10.1.2.3:8002", "10.244.1.7:1", "", "10.1.2.3", "announced", 200},
		{"localhost from a pod", "http://localhost:8002", "10.244.1.7:1", "", "10.244.1.7", "request", 200},
		{"0.0.0.0 from a pod", "http://0.0.0.0:8002", "10.244.1.7:1", "", "10.244.1.7", "request", 200},
		{"[::] from an IPv6 pod", "http://[::]:8002", "[fd00::7]:1", "", "fd00::7", "request", 200},
		{"localhost from loopback", "http://127.0.0.1:8002", "127.0.0.1:1", "", "127.0.0.1", "announced", 200},
		{"0.0.0.0 from loopback", "http://0.0.0.0:8002", "127.0.0.1:1", "", "127.0.0.1", "request", 200},
		// X-Forwarded-For is ignored from a peer that is no trusted proxy...
		{"untrusted proxy", "http://0.0.0.0:8002", "10.244.1.7:1", "10.9.9.9", "10.244.1.7", "request", 200},
		// ...and followed from one that is, to the right-most untrusted hop.
		{"trusted proxy", "http://0.0.0.0:8002", "10.0.0.5:1", "10.9.9.9", "10.9.9.9", "request", 200},
		{"trusted chain", "http://0.0.0.0:8002", "10.0.0.5:1", "203.0.113.1, 10.9.9.9, 10.0.0.6", "10.9.9.9", "request", 200},
		{"spoofed left-most", "http://0.0.0.0:8002", "10.0.0.5:1", "10.9.9.8, 203.0.113.1", "", "", 403},
		{"garbage hop", "http://0.0.0.0:8002", "10.0.0.5:1", "10.9.9.9, nonsense", "10.0.0.5", "request", 200},
		// The address found passes AGENT_ALLOWED_NETWORKS like any other.
		{"0.0.0.0 from a public peer", "http://0.0.0.0:8002", "203.0.113.7:1", "", "", "", 403},
		{"localhost from a public peer", "http://localhost:8002", "203.0.113.7:1", "", "", "", 403},
		{"announced public", "http://8.8.8.8:8002", "10.244.1.7:1", "", "", "", 403},
	} {
		id := "agent-" + strconv.Itoa(i)
		t.Run(tc.name, func(t *testing.T) {
			var header []string
			if tc.xff != "" {
				header = []string{"X-Forwarded-For", tc.xff}
			}
			rec := f.callFrom(tc.remote, http.MethodPost, "/api/v1/agents/register", body(id, tc.endpoint), header...)
			if tc.code != http.StatusOK {
				if msg := expectError(t, "register", rec, tc.code); !strings.HasPrefix(msg, "endpoint: host not allowed") {
					t.Errorf("refusal %q does not name endpoint", msg)
				}
				return
			}
			m := expect(t, "register", rec, http.StatusOK)
			if m["host"] != tc.host || m["address_source"] != tc.source {
				t.Errorf("registered at %v (%v), want %s (%s)", m["host"], m["address_source"], tc.host, tc.source)
			}
		})
	}
}

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64")}
	for _, tc := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"192.0.2.1:1234", nil, "192.0.2.1"},
		{"192.0.2.1:1234", []string{"10.9.9.9"}, "192.0.2.1"},
		{"[::ffff:10.1.1.1]:80", nil, "10.1.1.1"},
		{"[fe80::1%eth0]:80", nil, "fe80::1"},
		{"10.0.0.1:1", nil, "10.0.0.1"},
		{"10.0.0.1:1", []string{"10.9.9.9"}, "10.9.9.9"},
		{"10.0.0.1:1", []string{"1.1.1.1, 10.9.9.9"}, "10.9.9.9"},
		{"10.0.0.1:1", []string{"1.1.1.1", "10.9.9.9, 10.0.0.2"}, "10.9.9.9"},
		{"10.0.0.1:1", []string{"10.0.0.3, 10.0.0.2"}, "10.0.0.3"},
		{"10.0.0.1:1", []string{"10.9.9.9:5555"}, "10.9.9.9"},
		{"10.0.0.1:1", []string{"[fd01::1]:80"}, "fd01::1"},
		{"10.0.0.1:1", []string{"unknown"}, "10.0.0.1"},
		{"10.0.0.1:1", []string{"10.9.9.9, unknown, 10.0.0.2"}, "10.0.0.2"},
		{"10.0.0.1:1", []string{""}, "10.0.0.1"},
		{"[fd00::1]:1", []string{"10.9.9.9"}, "10.9.9.9"},
		{"pipe", nil, ""},
		{"pipe", []string{"10.9.9.9"}, ""},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		got := api.ClientAddr(r, trusted)
		if (tc.want == "" && got.IsValid()) || (tc.want != "" && got != netip.MustParseAddr(tc.want)) {
			t.Errorf("clientAddr(%s, X-Forwarded-For %q) = %v, want %q", tc.remote, tc.xff, got, tc.want)
		}
	}
	// Nothing trusted: the header never counts.
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.RemoteAddr, r.Header["X-Forwarded-For"] = "10.0.0.1:1", []string{"10.9.9.9"}
	if got := api.ClientAddr(r, nil); got != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("clientAddr without trusted proxies = %v, want the peer", got)
	}
}

func TestTrustedProxiesSetting(t *testing.T) {
	if err := (api.Config{MaxBodyBytes: 1, TrustedProxies: []string{"10.0.0.0/8", " fd00::/8 ", ""}}).Validate(); err != nil {
		t.Errorf("valid HTTP_TRUSTED_PROXIES: %v", err)
	}
	err := (api.Config{MaxBodyBytes: 1, TrustedProxies: []string{"10.0.0.0/8", "proxy"}}).Validate()
	if err == nil || !strings.Contains(err.Error(), `HTTP_TRUSTED_PROXIES="10.0.0.0/8,proxy"`) {
		t.Errorf("Validate of a bad CIDR = %v, want an error naming HTTP_TRUSTED_PROXIES", err)
	}
	if _, err := api.New(api.Options{Config: api.Config{MaxBodyBytes: 1, TrustedProxies: []string{"proxy"}}}); err == nil {
		t.Error("New with a bad HTTP_TRUSTED_PROXIES succeeded")
	}
}

func TestRegisterV1Rejects(t *testing.T) {
	cfg := testAgentsConfig
	cfg.MaxMetadataBytes, cfg.MaxMetadataDepth = 64, 2
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: cfg, dispatch: testDispatchConfig})
	f.useResolver(stubResolver{})
	generated := f.register(t, agentBody("generated", 8001))
	with := func(fields string) string {
		return `{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1:8002"` + fields + `}`
	}
	for _, tc := range []struct {
		body  string
		code  int
		field string // the start of the message
	}{
		{``, 400, "the request body is empty"},
		{`not json`, 400, "the request body is not valid JSON"},
		{`[]`, 400, "the request body must be a JSON object"},
		{`{"agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`, 400, "agent_id: is required"},
		{`{"agent_id":"../x","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`, 400, "agent_id: "},
		{`{"agent_id":"..","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`, 400, "agent_id: "},
		{`{"agent_id":"` + strings.Repeat("x", 129) + `","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`, 400, "agent_id: "},
		{`{"agent_id":5,"agent_type":"performance"}`, 400, "agent_id: must be a string"},
		{`{"agent_id":"a1","endpoint":"http://10.1.1.1:8002"}`, 400, "agent_type: is required"},
		{`{"agent_id":"a1","agent_type":"robot","endpoint":"http://10.1.1.1:8002"}`, 400, "agent_type: "},
		{`{"agent_id":"a1","agent_type":"performance"}`, 400, "endpoint: is required (or host and port)"},
		{`{"agent_id":"a1","agent_type":"performance","host":"10.1.1.1"}`, 400, "port: is required"},
		{`{"agent_id":"a1","agent_type":"performance","host":"10.1.1.1","port":0}`, 400, "port: "},
		{`{"agent_id":"a1","agent_type":"performance","port":8000}`, 400, "host: is required"},
		{`{"agent_id":"a1","agent_type":"performance","host":"http://x","port":8000}`, 400, "host: "},
		{`{"agent_id":"a1","agent_type":"performance","host":"nowhere.test","port":8000}`, 400, "host: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"https://10.1.1.1:8002"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1:8002/api"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1:8002/?x=1"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1:8002#f"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://u:p@10.1.1.1:8002"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1:0"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://10.1.1.1:99999"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://:8002"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"10.1.1.1:8002"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://bad_host:8002"}`, 400, "endpoint: "},
		{`{"agent_id":"a1","agent_type":"performance","endpoint":"http://8.8.8.8:8002"}`, 403, "endpoint: host not allowed"},
		{`{"agent_id":"a1","agent_type":"performance","host":"8.8.8.8","port":8002}`, 403, "host: host not allowed"},
		{with(`,"status":"sleepy"`), 400, "status: "},
		{with(`,"agent_name":"` + strings.Repeat("n", 129) + `"`), 400, "agent_name: "},
		{with(`,"version":"` + strings.Repeat("v", 65) + `"`), 400, "version: "},
		{with(`,"capabilities":["bad cap"]`), 400, "capabilities[0]: "},
		{with(`,"health_check_endpoint":"` + strings.Repeat("h", 513) + `"`), 400, "health_check_endpoint: "},
		{with(`,"metadata":[1]`), 400, "metadata: must be an object"},
		{with(`,"metadata":{"a":{"b":{}}}`), 400, "metadata: nests"},
		{with(`,"metadata":{"pad":"` + strings.Repeat("x", 64) + `"}`), 413, "metadata: is"},
		{`{"agent_id":"` + generated + `","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`, 409, "agent_id: "},
	} {
		name := tc.body
		if len(name) > 70 {
			name = name[:70]
		}
		t.Run(name, func(t *testing.T) {
			msg := expectError(t, "register", f.v1(http.MethodPost, "/api/v1/agents/register", tc.body), tc.code)
			if !strings.HasPrefix(msg, tc.field) {
				t.Errorf("message %q, want it to start with %q", msg, tc.field)
			}
		})
	}
	if n := len(f.listV1(t, "/api/v1/agents")); n != 1 {
		t.Errorf("%d agents after refused registrations, want the generated one", n)
	}
}

func TestHeartbeatV1(t *testing.T) {
	cfg := testAgentsConfig
	cfg.MaxMetadataBytes, cfg.MaxMetadataDepth, cfg.MaxMetadataTotalBytes = 64, 2, 70
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: cfg, dispatch: testDispatchConfig})
	expect(t, "register", f.v1(http.MethodPost, "/api/v1/agents/register",
		`{"agent_id":"perf-1","agent_type":"performance","endpoint":"http://10.1.1.1:8002","metadata":{"model":"m"}}`), http.StatusOK)
	status := func() string {
		return wantString(t, "status", expect(t, "GET", f.v1(http.MethodGet, "/api/v1/agents/perf-1", ""), http.StatusOK)["status"])
	}
	for word, want := range map[string]string{
		"active": "healthy", "healthy": "healthy", "": "healthy", "degraded": "degraded",
		"inactive": "unhealthy", "unhealthy": "unhealthy", "error": "unhealthy",
	} {
		for _, form := range []struct{ path, body string }{
			{"/api/v1/agents/heartbeat", `{"agent_id":"perf-1","timestamp":"2026-01-01T00:00:00Z","status":"` + word + `"}`},
			{"/api/v1/agents/perf-1/heartbeat", `{"status":"` + word + `","timestamp":1767225600.5}`},
		} {
			// From another state, so each heartbeat has a change to make.
			f.agents.Heartbeat(t.Context(), registry.Actor{}, "perf-1", "degraded", nil) //nolint:errcheck // set up only
			if word == "degraded" {
				f.agents.Heartbeat(t.Context(), registry.Actor{}, "perf-1", "healthy", nil) //nolint:errcheck // set up only
			}
			m := expect(t, "heartbeat "+form.body, f.v1(http.MethodPost, form.path, form.body), http.StatusOK)
			wantKeys(t, "heartbeat response", m, heartbeatV1Keys...)
			if m["status"] != "ok" || m["agent_id"] != "perf-1" || wantInt(t, "interval", m["heartbeat_interval_seconds"]) != 30 {
				t.Errorf("heartbeat answered %v", m)
			}
			wantTime(t, "timestamp", m["timestamp"])
			if got := status(); got != want {
				t.Errorf("after %s %s the agent is %s, want %s", form.path, form.body, got, want)
			}
		}
	}
	// No body at all on the path form: healthy.
	f.agents.Heartbeat(t.Context(), registry.Actor{}, "perf-1", "unhealthy", nil) //nolint:errcheck // set up only
	expect(t, "empty heartbeat", f.v1(http.MethodPost, "/api/v1/agents/perf-1/heartbeat", ""), http.StatusOK)
	if got := status(); got != "healthy" {
		t.Errorf("after an empty heartbeat the agent is %s", got)
	}

	// Metrics are the heartbeat's metadata, laid over the registration's.
	expect(t, "metrics", f.v1(http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"perf-1","metrics":{"p95":1.5}}`), http.StatusOK)
	meta := expect(t, "GET", f.v1(http.MethodGet, "/api/v1/agents/perf-1", ""), http.StatusOK)["metadata"]
	if mustJSON(t, meta) != `{"model":"m","p95":1.5}` {
		t.Errorf("metadata after metrics = %s", mustJSON(t, meta))
	}

	for _, tc := range []struct {
		path, body string
		code       int
		msg        string
	}{
		{"/api/v1/agents/heartbeat", ``, 400, "the request body is empty"},
		{"/api/v1/agents/heartbeat", `{"status":"active"}`, 400, "agent_id: is required"},
		{"/api/v1/agents/heartbeat", `{"agent_id":"","status":"active"}`, 400, "agent_id: is required"},
		{"/api/v1/agents/heartbeat", `{"agent_id":"nobody"}`, 404, `agent "nobody" not found`},
		{"/api/v1/agents/nobody/heartbeat", ``, 404, `agent "nobody" not found`},
		{"/api/v1/agents/heartbeat", `{"agent_id":"perf-1","status":"sleepy"}`, 400, "status: "},
		{"/api/v1/agents/perf-1/heartbeat", `{"status":"unreachable"}`, 400, "status: "},
		{"/api/v1/agents/perf-1/heartbeat", `{"status":1}`, 400, "status: must be a string"},
		{"/api/v1/agents/perf-1/heartbeat", `{"timestamp":{"s":1}}`, 400, "timestamp: "},
		{"/api/v1/agents/perf-1/heartbeat", `{"timestamp":true}`, 400, "timestamp: "},
		{"/api/v1/agents/perf-1/heartbeat", `{"agent_id":"other"}`, 400, "agent_id: "},
		{"/api/v1/agents/perf-1/heartbeat", `{"metrics":[1]}`, 400, "metrics: must be an object"},
		{"/api/v1/agents/perf-1/heartbeat", `{"metrics":{"a":{"b":{}}}}`, 400, "metrics: nests"},
		{"/api/v1/agents/perf-1/heartbeat", `{"metrics":{"pad":"` + strings.Repeat("x", 64) + `"}}`, 413, "metrics: is"},
		// 13 bytes of registration metadata and 62 of metrics pass
		// AGENT_MAX_METADATA_TOTAL_BYTES=70.
		{"/api/v1/agents/perf-1/heartbeat", `{"metrics":{"pad":"` + strings.Repeat("x", 52) + `"}}`, 507, "the agent registry's metadata budget is spent"},
	} {
		t.Run(tc.path+" "+tc.body, func(t *testing.T) {
			before := status()
			msg := expectError(t, "heartbeat", f.v1(http.MethodPost, tc.path, tc.body), tc.code)
			if !strings.HasPrefix(msg, tc.msg) {
				t.Errorf("message %q, want it to start with %q", msg, tc.msg)
			}
			if after := status(); after != before {
				t.Errorf("a refused heartbeat changed the status from %s to %s", before, after)
			}
		})
	}
	// A matching agent_id in the path form is fine.
	expect(t, "matching agent_id", f.v1(http.MethodPost, "/api/v1/agents/perf-1/heartbeat", `{"agent_id":"perf-1"}`), http.StatusOK)
}

func TestDeleteV1(t *testing.T) {
	f := newFixture(t, defaultConfig)
	expect(t, "register", f.v1(http.MethodPost, "/api/v1/agents/register", applicationBody), http.StatusOK)
	m := expect(t, "DELETE", f.v1(http.MethodDelete, "/api/v1/agents/application-agent-001", ""), http.StatusOK)
	wantKeys(t, "DELETE response", m, "message", "agent_id")
	if m["agent_id"] != "application-agent-001" || !strings.Contains(wantString(t, "message", m["message"]), "unregistered") {
		t.Errorf("DELETE answered %v", m)
	}
	expectError(t, "DELETE again", f.v1(http.MethodDelete, "/api/v1/agents/application-agent-001", ""), http.StatusNotFound)
	expectError(t, "GET after DELETE", f.v1(http.MethodGet, "/api/v1/agents/application-agent-001", ""), http.StatusNotFound)
	expectError(t, "heartbeat after DELETE", f.v1(http.MethodPost, "/api/v1/agents/application-agent-001/heartbeat", ""), http.StatusNotFound)
	// The id is free again: registering it anew answers 200.
	expect(t, "register again", f.v1(http.MethodPost, "/api/v1/agents/register", applicationBody), http.StatusOK)
}

func TestV1Limits(t *testing.T) {
	cfg := testAgentsConfig
	cfg.MaxAgents = 1
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: cfg, dispatch: testDispatchConfig})
	expect(t, "register", f.v1(http.MethodPost, "/api/v1/agents/register", performanceBody), http.StatusOK)
	msg := expectError(t, "a second agent", f.v1(http.MethodPost, "/api/v1/agents/register", resourceBody), http.StatusInsufficientStorage)
	if !strings.Contains(msg, "AGENT_MAX_AGENTS") {
		t.Errorf("507 message %q does not name AGENT_MAX_AGENTS", msg)
	}
	expect(t, "the known agent again", f.v1(http.MethodPost, "/api/v1/agents/register", performanceBody), http.StatusOK)
	// The cap counts agents of both dialects.
	expectError(t, "a dialect A agent", f.call(http.MethodPost, "/agents/register", mustJSON(t, agentBody("a", 8001))), http.StatusInsufficientStorage)
	// A body over HTTP_MAX_BODY_BYTES is 413 on every route of the dialect.
	small := newFixture(t, api.Config{MaxBodyBytes: 16})
	for _, path := range []string{"/api/v1/agents/register", "/api/v1/agents/heartbeat", "/api/v1/agents/x/heartbeat"} {
		expectError(t, path, small.v1(http.MethodPost, path, `{"agent_id":"`+strings.Repeat("x", 32)+`"}`), http.StatusRequestEntityTooLarge)
	}
}

// TestV1CrossDialect: one registry behind both dialects.
func TestV1CrossDialect(t *testing.T) {
	f := newFixture(t, defaultConfig)
	stub := newStubAgent(t, stubComplete)

	// Registered in B (from loopback, at the stub's address): listed by A
	// with its chosen id, readable, and routable for POST /tasks.
	body := `{"agent_id":"perf-b","agent_type":"performance","capabilities":["latency_analysis"],"endpoint":"http://127.0.0.1:` +
		strconv.Itoa(stub.port) + `"}`
	expect(t, "register in B", f.callFrom("127.0.0.1:5000", http.MethodPost, "/api/v1/agents/register", body), http.StatusOK)
	inA := f.listAgents(t, "/agents")
	if len(inA) != 1 || inA[0]["id"] != "perf-b" || inA[0]["announced_host"] != "127.0.0.1" || inA[0]["address_source"] != "announced" {
		t.Fatalf("GET /agents = %v, want perf-b", inA)
	}
	if a := f.getAgent(t, "perf-b"); a["type"] != "performance" || wantInt(t, "port", a["port"]) != stub.port {
		t.Errorf("GET /agents/perf-b = %v", a)
	}
	if n := len(f.listAgents(t, "/agents/type/performance")); n != 1 {
		t.Errorf("GET /agents/type/performance lists %d", n)
	}
	task := expect(t, "POST /tasks", f.call(http.MethodPost, "/tasks", `{"task_type":"latency_analysis","agent_type":"performance"}`), http.StatusCreated)
	if task["agent_id"] != "perf-b" {
		t.Fatalf("the task went to %v, want perf-b", task["agent_id"])
	}
	if done := waitForTask(t, f, wantString(t, "task_id", task["task_id"])); done["status"] != "completed" {
		t.Errorf("the task ended %v", done["status"])
	}
	stub.delivery(t, wantString(t, "task_id", task["task_id"]))

	// A's heartbeat and unregister work on it.
	expect(t, "A heartbeat", f.call(http.MethodPost, "/agents/perf-b/heartbeat", `{"status":"degraded"}`), http.StatusOK)
	if st := f.listV1(t, "/api/v1/agents")["perf-b"]["status"]; st != "degraded" {
		t.Errorf("after A's heartbeat B lists %v", st)
	}
	// A's re-registration by name, host and port never matches it.
	aBody := map[string]any{"name": "perf-b", "type": "performance", "host": "127.0.0.1", "port": stub.port}
	if id := f.register(t, aBody); id == "perf-b" {
		t.Error("A's registration with a B agent's name, host and port took the B agent")
	}
	expect(t, "A unregister", f.call(http.MethodPost, "/agents/perf-b/unregister", ""), http.StatusOK)
	expectError(t, "B read after A unregister", f.v1(http.MethodGet, "/api/v1/agents/perf-b", ""), http.StatusNotFound)

	// Registered in A: listed by B, heartbeatable and deletable in B, and
	// its id cannot be taken by a B registration.
	aID := f.register(t, agentBody("cost-a", 8001, "analyze"))
	listed := f.listV1(t, "/api/v1/agents")[aID]
	if listed == nil || listed["agent_name"] != "cost-a" || listed["agent_type"] != "cost" || listed["address_source"] != "announced" ||
		listed["endpoint"] != "http://127.0.0.1:8001" || listed["health_check_endpoint"] != "" {
		t.Fatalf("B lists the A agent as %v", listed)
	}
	expect(t, "B heartbeat of an A agent", f.v1(http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"`+aID+`","status":"inactive"}`), http.StatusOK)
	if st := f.getAgent(t, aID)["status"]; st != "unhealthy" {
		t.Errorf("after B's heartbeat A shows %v", st)
	}
	expectError(t, "B register of an A id", f.v1(http.MethodPost, "/api/v1/agents/register",
		`{"agent_id":"`+aID+`","agent_type":"cost","endpoint":"http://10.1.1.1:8001"}`), http.StatusConflict)
	if a := f.getAgent(t, aID); a["host"] != "127.0.0.1" || a["name"] != "cost-a" {
		t.Errorf("the 409 changed the A agent: %v", a)
	}
	expect(t, "B delete of an A agent", f.v1(http.MethodDelete, "/api/v1/agents/"+aID, ""), http.StatusOK)
	expectError(t, "A read after B delete", f.get("/agents/"+aID), http.StatusNotFound)
}

// TestV1Auth: the dialect's roles, and binding across both dialects.
func TestV1Auth(t *testing.T) {
	const second = "second-agent-token-0123456789"
	af := newAuthFixture(t, auth.Config{AgentTokens: agentToken + "," + second, OperatorTokens: operatorToken})
	asAgent, asSecond, asOperator := bearer(agentToken), bearer(second), bearer(operatorToken)
	v1 := func(method, path, body string, header []string) *httptest.ResponseRecorder {
		rec := af.v1(method, path, body, header...)
		af.responses = append(af.responses, rec)
		return rec
	}
	// Without a token, or with the wrong role's, every route is 401.
	for _, tc := range []struct {
		method, path, body string
		wrong              []string
	}{
		{http.MethodPost, "/api/v1/agents/register", performanceBody, asOperator},
		{http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"performance-agent-001"}`, asOperator},
		{http.MethodPost, "/api/v1/agents/performance-agent-001/heartbeat", ``, asOperator},
		{http.MethodGet, "/api/v1/agents", ``, asAgent},
		{http.MethodHead, "/api/v1/agents", ``, asAgent},
		{http.MethodGet, "/api/v1/agents/performance-agent-001", ``, asAgent},
		{http.MethodHead, "/api/v1/agents/performance-agent-001", ``, asAgent},
		{http.MethodDelete, "/api/v1/agents/performance-agent-001", ``, bearer(otherToken)},
	} {
		for _, h := range [][]string{nil, bearer(otherToken), tc.wrong} {
			rec := v1(tc.method, tc.path, tc.body, h)
			if tc.method == http.MethodHead {
				if rec.Code != http.StatusUnauthorized {
					t.Errorf("%s %s with %v = %d, want 401", tc.method, tc.path, h, rec.Code)
				}
				continue
			}
			want401(t, tc.method+" "+tc.path, rec)
		}
	}

	// Bound to the token that registered it, in B...
	expect(t, "register", v1(http.MethodPost, "/api/v1/agents/register", performanceBody, asAgent), http.StatusOK)
	const id = "performance-agent-001"
	for _, tc := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/v1/agents/register", performanceBody},
		{http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"` + id + `"}`},
		{http.MethodPost, "/api/v1/agents/" + id + "/heartbeat", ``},
		{http.MethodDelete, "/api/v1/agents/" + id, ``},
		{http.MethodPost, "/agents/" + id + "/heartbeat", ``},
		{http.MethodPost, "/agents/" + id + "/unregister", ``},
	} {
		msg := expectError(t, "the second token's "+tc.method+" "+tc.path, v1(tc.method, tc.path, tc.body, asSecond), http.StatusForbidden)
		if !strings.Contains(msg, id) || strings.Contains(msg, "sha256") {
			t.Errorf("403 message %q: want it to name the agent and no fingerprint", msg)
		}
	}
	expect(t, "the owner's heartbeat", v1(http.MethodPost, "/api/v1/agents/"+id+"/heartbeat", `{"status":"active"}`, asAgent), http.StatusOK)
	expect(t, "the owner registers again", v1(http.MethodPost, "/api/v1/agents/register", performanceBody, asAgent), http.StatusOK)
	m := expect(t, "operator read", v1(http.MethodGet, "/api/v1/agents/"+id, "", asOperator), http.StatusOK)
	if m["agent_id"] != id {
		t.Errorf("operator read %v", m)
	}
	// ...an operator may delete it.
	expect(t, "operator delete", v1(http.MethodDelete, "/api/v1/agents/"+id, "", asOperator), http.StatusOK)

	// And an agent registered in A with one token is bound in B.
	rec := af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("cost-a", 8001)), asAgent...)
	aID := wantString(t, "agent_id", expect(t, "A register", rec, http.StatusCreated)["agent_id"])
	expectError(t, "B heartbeat by the second token", v1(http.MethodPost, "/api/v1/agents/heartbeat", `{"agent_id":"`+aID+`"}`, asSecond), http.StatusForbidden)
	expectError(t, "B delete by the second token", v1(http.MethodDelete, "/api/v1/agents/"+aID, "", asSecond), http.StatusForbidden)
	expect(t, "B delete by the owner", v1(http.MethodDelete, "/api/v1/agents/"+aID, "", asAgent), http.StatusOK)
	af.checkNoLeak(t)
}

// TestOpenAPIErrorAnswersV1 sends failing requests of the dialect and
// checks each answer against openapi.yaml.
func TestOpenAPIErrorAnswersV1(t *testing.T) {
	s := loadSpec(t)
	const owner, other = "agent-token-0123456789", "agent-token-other-0123"
	cfg := testAgentsConfig
	cfg.MaxAgents, cfg.MaxMetadataBytes, cfg.MaxMetadataDepth, cfg.MaxMetadataTotalBytes = 2, 256, 3, 300
	f := newFixtureWith(t, api.Config{MaxBodyBytes: 4096}, zapcore.InfoLevel, fixtureOptions{
		agents: cfg, dispatch: testDispatchConfig, auth: auth.Config{AgentTokens: owner + "," + other},
	})
	as := func(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }
	// The dialect A agent holds 200 bytes of AGENT_MAX_METADATA_TOTAL_BYTES=300.
	pad := func(n int) string { return `{"pad":"` + strings.Repeat("x", n-10) + `"}` } // n bytes
	rec := f.call(http.MethodPost, "/agents/register", `{"name":"generated","type":"cost","host":"10.0.0.1","port":8001,"metadata":`+pad(200)+`}`,
		"Authorization", "Bearer "+owner)
	generated := wantString(t, "agent_id", expect(t, "register in A", rec, http.StatusCreated)["agent_id"])
	reg := `{"agent_id":"p1","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`
	for _, tc := range []struct {
		method, target, body, token string
		code                        int
	}{
		{"POST", "/api/v1/agents/register", reg, owner, 200},
		{"POST", "/api/v1/agents/register", `{"agent_type":"performance"}`, owner, 400},
		{"POST", "/api/v1/agents/register", `{"agent_id":"p2","agent_type":"performance","endpoint":"https://10.1.1.1:8002"}`, owner, 400},
		{"POST", "/api/v1/agents/register", `{"agent_id":"p2","agent_type":"performance","endpoint":"http://8.8.8.8:8002"}`, owner, 403},
		{"POST", "/api/v1/agents/register", reg, other, 403},
		{"POST", "/api/v1/agents/register", `{"agent_id":"` + generated + `","agent_type":"cost","endpoint":"http://10.1.1.1:8002"}`, owner, 409},
		{"POST", "/api/v1/agents/register", `{"agent_id":"p1","agent_type":"performance","endpoint":"http://10.1.1.1:8002","metadata":` + pad(257) + `}`, owner, 413},
		{"POST", "/api/v1/agents/register", `{"x":"` + strings.Repeat("x", 5000) + `"}`, owner, 413},
		{"POST", "/api/v1/agents/register", `{"agent_id":"p3","agent_type":"performance","endpoint":"http://10.1.1.1:8003"}`, owner, 507},
		{"POST", "/api/v1/agents/heartbeat", `{"status":"active"}`, owner, 400},
		{"POST", "/api/v1/agents/heartbeat", `{"agent_id":"nobody"}`, owner, 404},
		{"POST", "/api/v1/agents/heartbeat", `{"agent_id":"p1"}`, other, 403},
		{"POST", "/api/v1/agents/heartbeat", `{"agent_id":"p1","metrics":` + pad(257) + `}`, owner, 413},
		{"POST", "/api/v1/agents/p1/heartbeat", `{"status":"sleepy"}`, owner, 400},
		{"POST", "/api/v1/agents/nobody/heartbeat", ``, owner, 404},
		{"POST", "/api/v1/agents/p1/heartbeat", ``, other, 403},
		{"POST", "/api/v1/agents/p1/heartbeat", `{"metrics":` + pad(257) + `}`, owner, 413},
		// 200 + 100 bytes fill the 300.
		{"POST", "/api/v1/agents/p1/heartbeat", `{"metrics":` + pad(100) + `}`, owner, 200},
		{"POST", "/api/v1/agents/p1/heartbeat", `{"metrics":` + pad(101) + `}`, owner, 507},
		{"POST", "/api/v1/agents/heartbeat", `{"agent_id":"p1","metrics":` + pad(101) + `}`, owner, 507},
		{"POST", "/api/v1/agents/register", `{"agent_id":"p1","agent_type":"performance","endpoint":"http://10.1.1.1:8002","metadata":` + pad(101) + `}`, owner, 507},
		{"GET", "/api/v1/agents?agent_type=robot", ``, "", 400},
		{"HEAD", "/api/v1/agents?agent_type=robot", ``, "", 400},
		{"GET", "/api/v1/agents/nobody", ``, "", 404},
		{"HEAD", "/api/v1/agents/nobody", ``, "", 404},
		{"DELETE", "/api/v1/agents/p1", ``, other, 403},
		{"DELETE", "/api/v1/agents/nobody", ``, owner, 404},
		{"DELETE", "/api/v1/agents/p1", ``, owner, 200},
	} {
		t.Run(tc.method+" "+tc.target+" "+strconv.Itoa(tc.code), func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			var h http.Header
			if tc.token != "" {
				h = as(tc.token)
			}
			if rec := s.exchange(t, f, tc.method, tc.target, body, h, false); rec.Code != tc.code {
				t.Errorf("%s %s %.80s = %d, want %d: %s", tc.method, tc.target, tc.body, rec.Code, tc.code, rec.Body)
			}
		})
	}
}

// FuzzRegisterV1: no registration body of the dialect crashes the router
// or answers 500; every error is {"error": "..."}; every 200 names an
// agent readable back under its agent_id; and the agents listed are
// exactly the distinct agent_ids answered.
func FuzzRegisterV1(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		performanceBody, resourceBody, applicationBody,
		`{"agent_id":"a","agent_type":"cost","host":"::","port":1}`,
		`{"agent_id":"a","agent_type":"cost","endpoint":"http://[::1]:80/"}`,
		`{"agent_id":"a","agent_type":"cost","endpoint":"http://localhost:80/x?y#z"}`,
		`{"agent_id":"a","agent_type":"cost","endpoint":"https://u:p@h:1"}`,
		`{"agent_id":"..","agent_type":"cost","host":"127.0.0.1","port":1}`,
		`{"agent_id":"a","agent_type":"cost","host":"127.0.0.1","port":1,"status":"error","metrics":{}}`,
		`{"agent_id":"a","agent_name":" ","agent_type":"cost","endpoint":"http://127.0.0.1:65535","health_check_endpoint":"\u0000"}`,
	} {
		f.Add([]byte(s))
	}
	fx := fuzzFixture(f, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	seen := map[string]bool{}
	calls := 0
	f.Fuzz(func(t *testing.T, body []byte) {
		calls++
		req := httptest.NewRequest(http.MethodPost, "/api/v1/agents/register", bytes.NewReader(body))
		req.RemoteAddr = podAddr + ":40312"
		rec := fx.do(req)
		checkFuzzResponse(t, "register", body, rec, 200, 400, 403, 409, 413)
		if rec.Code == http.StatusOK {
			m := objectOf(t, rec)
			wantKeys(t, "register response", m, registerV1Keys...)
			id := wantString(t, "agent_id", m["agent_id"])
			if m["heartbeat_url"] != "/api/v1/agents/"+id+"/heartbeat" {
				t.Fatalf("heartbeat_url = %v", m["heartbeat_url"])
			}
			seen[id] = true
			a := checkAgentV1(t, "GET", expect(t, "GET", fx.v1(http.MethodGet, "/api/v1/agents/"+url.PathEscape(id), ""), http.StatusOK))
			if a["agent_id"] != id {
				t.Fatalf("GET answered agent %v for %s", a["agent_id"], id)
			}
			if t.Failed() {
				t.FailNow()
			}
		}
		if len(seen) < 100 || calls%64 == 0 {
			if n := len(fx.listV1(t, "/api/v1/agents")); n != len(seen) {
				t.Fatalf("GET /api/v1/agents lists %d agents, but %d distinct agent_ids were answered", n, len(seen))
			}
		}
	})
}

// FuzzHeartbeatV1: whatever the body, a heartbeat of the dialect (either
// form) answers 200 (and the agent then has the status its word maps to)
// or an error, never 500; a refused one changes nothing.
func FuzzHeartbeatV1(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), false)
	}
	for _, s := range []string{
		`{"agent_id":"perf-1","timestamp":"now","status":"active","metrics":{"cpu":0.5}}`,
		`{"agent_id":"perf-1","timestamp":12.5,"status":"error"}`, `{"agent_id":"perf-1","timestamp":null,"status":"inactive"}`,
		`{"agent_id":"perf-1","timestamp":[],"status":"degraded"}`, `{"agent_id":"nobody"}`, `{"agent_id":""}`,
		`{"agent_id":"perf-1","status":"ACTIVE"}`, `{"agent_id":"perf-1","metrics":[]}`, `{"agent_id":"perf-1","status":"unreachable"}`,
		`{"status":"active"}`, `{"agent_id":5}`, `{"agent_id":"perf-1","status":"healthy"} {}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	fx := fuzzFixture(f, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	reg := httptest.NewRequest(http.MethodPost, "/api/v1/agents/register", strings.NewReader(
		`{"agent_id":"perf-1","agent_type":"performance","endpoint":"http://10.1.1.1:8002"}`))
	if rec := fx.do(reg); rec.Code != http.StatusOK {
		f.Fatalf("register = %d %s", rec.Code, rec.Body)
	}
	words := map[string]string{"": "healthy", "active": "healthy", "healthy": "healthy", "degraded": "degraded",
		"inactive": "unhealthy", "unhealthy": "unhealthy", "error": "unhealthy"}
	f.Fuzz(func(t *testing.T, body []byte, byPath bool) {
		status := func() any {
			return expect(t, "GET", fx.v1(http.MethodGet, "/api/v1/agents/perf-1", ""), http.StatusOK)["status"]
		}
		before := status()
		path := "/api/v1/agents/heartbeat"
		if byPath {
			path = "/api/v1/agents/perf-1/heartbeat"
		}
		rec := fx.do(httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		checkFuzzResponse(t, "heartbeat", body, rec, 200, 400, 404, 413)
		after := status()
		if rec.Code != http.StatusOK {
			if after != before {
				t.Fatalf("a refused heartbeat %q changed the status from %v to %v", body, before, after)
			}
			return
		}
		m := objectOf(t, rec)
		wantKeys(t, "heartbeat response", m, heartbeatV1Keys...)
		var req struct {
			Status string `json:"status"`
		}
		if len(bytes.TrimSpace(body)) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				t.Fatalf("heartbeat %q accepted, but it does not decode: %v", body, err)
			}
		}
		want, ok := words[req.Status]
		if !ok || after != want {
			t.Fatalf("after heartbeat %q (status %q) the agent is %v, want %q", body, req.Status, after, want)
		}
	})
}
