package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
)

// fuzzFixture is a fixture for fuzzing: logs are not kept (millions of
// requests), and host names resolve from a table, never through DNS.
func fuzzFixture(f *testing.F, opts fixtureOptions) *fixture {
	fx := newFixtureWith(f, defaultConfig, zapcore.FatalLevel, opts)
	fx.useResolver(stubResolver{"agent.internal": {"10.0.0.7"}, "localhost": {"127.0.0.1", "::1"}, "public.example": {"8.8.8.8"}})
	return fx
}

// checkFuzzResponse fails on a 500 and on a non-2xx body that is not
// exactly {"error": "..."}, and on a status outside allowed.
func checkFuzzResponse(t *testing.T, what string, body []byte, rec *httptest.ResponseRecorder, allowed ...int) {
	t.Helper()
	if rec.Code == http.StatusInternalServerError {
		t.Fatalf("%s %q = 500 %s", what, body, rec.Body)
	}
	ok := false
	for _, code := range allowed {
		ok = ok || rec.Code == code
	}
	if !ok {
		t.Fatalf("%s %q = %d %s, want one of %v", what, body, rec.Code, rec.Body, allowed)
	}
	if rec.Code >= 300 {
		if _, err := errorMessage(rec); err != nil {
			t.Fatalf("%s %q = %d: %v", what, body, rec.Code, err)
		}
	}
}

// fuzzSeeds are bodies every fuzz target starts from, besides its own.
var fuzzSeeds = []string{
	"", " ", "null", "{}", "[]", "{", "}", `""`, "0", "-0", "1e999", "true", "nope",
	"{} {}", "{}x", `{"a":1,}`, "\x00", "\xff\xfe", "{\"\xff\":1}", `{"\u0000":"\ud800"}`,
	// Deeply nested, but small: large seeds make the fuzzer spend its time
	// minimising. TestDecodeBody has the bodies past the depth limit.
	strings.Repeat("[", 200), `{"metadata":` + strings.Repeat(`{"a":`, 200) + "1" + strings.Repeat("}", 200) + "}",
	`{"metadata":{"n":123456789012345678901234567890e-5}}`,
}

// FuzzRegister: no body crashes the router or answers 500; every error is
// {"error": "..."}; every 201 is a registration readable back; and the
// agents listed are exactly the distinct agent_ids answered.
func FuzzRegister(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		`{"name":"a","type":"cost","host":"127.0.0.1","port":8000,"capabilities":["analyze"],"version":"1","metadata":{"k":"v"}}`,
		`{"name":"a","type":"cost","host":"127.0.0.1","port":8000}`,
		`{"name":"b","type":"performance","host":"agent.internal","port":65535,"capabilities":[],"metadata":{}}`,
		`{"name":"c","type":"resource","host":"localhost","port":1,"capabilities":null,"metadata":null}`,
		`{"name":"d","type":"application","host":"::1","port":9000,"capabilities":["a","a","b"]}`,
		`{"name":"e","type":"cost","host":"public.example","port":80}`,
		`{"name":"f","type":"cost","host":"169.254.169.254","port":80}`,
		`{"name":"g","type":"cost","host":"http://127.0.0.1","port":80}`,
		`{"name":"h","type":"cost","host":"127.0.0.1","port":"80"}`,
		`{"name":"i","type":"cost","host":"127.0.0.1","port":1.5}`,
		`{"name":"j","type":"cost","host":"127.0.0.1","port":-1}`,
		`{"name":"k","type":"bogus","host":"127.0.0.1","port":80}`,
		`{"name":"l","type":"cost","host":"127.0.0.1","port":80,"capabilities":"x"}`,
		`{"name":"m","type":"cost","host":"127.0.0.1","port":80,"metadata":[]}`,
		`{"name":"\u0000","type":"cost","host":"127.0.0.1","port":80}`,
		`{"NAME":"n","TYPE":"cost","Host":"127.0.0.1","PORT":80}`,
		`{"name":"o","type":"cost","host":"127.0.0.1","port":80,"port":81}`,
		`{"name":"p","type":"cost","host":" 10.1.1.1 ","port":80}`,
		`{"name":"q","type":"cost","host":"fe80::1%eth0","port":80}`,
	} {
		f.Add([]byte(s))
	}
	fx := fuzzFixture(f, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	seen := map[string]bool{}
	calls := 0
	f.Fuzz(func(t *testing.T, body []byte) {
		calls++
		rec := fx.do(httptest.NewRequest(http.MethodPost, "/agents/register", bytes.NewReader(body)))
		checkFuzzResponse(t, "register", body, rec, 201, 400, 403, 413)
		if rec.Code == http.StatusCreated {
			m := objectOf(t, rec)
			wantKeys(t, "register response", m, registerKeys...)
			id := wantString(t, "agent_id", m["agent_id"])
			if m["heartbeat_url"] != "/agents/"+id+"/heartbeat" {
				t.Fatalf("heartbeat_url = %v", m["heartbeat_url"])
			}
			wantTime(t, "registered_at", m["registered_at"])
			seen[id] = true
			a := fx.getAgent(t, id)
			if a["status"] != "healthy" {
				t.Fatalf("a registered agent is %v", a["status"])
			}
			if t.Failed() {
				t.FailNow()
			}
		}
		// Listing every agent each time would make fuzzing quadratic.
		if len(seen) < 100 || calls%64 == 0 {
			if n := len(fx.listAgents(t, "/agents")); n != len(seen) {
				t.Fatalf("GET /agents lists %d agents, but %d distinct agent_ids were answered", n, len(seen))
			}
		}
	})
}

// FuzzHeartbeat: whatever the body, a heartbeat answers 200 (and the agent
// then has the reported status) or an error, never 500, and the agent
// stays registered with a valid status.
func FuzzHeartbeat(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		`{"status":"healthy","metadata":{"cpu":0.5}}`, `{"status":"degraded"}`, `{"status":"unhealthy","metadata":{}}`,
		`{"status":""}`, `{"status":null}`, `{"status":"sleepy"}`, `{"status":"unreachable"}`, `{"status":5}`,
		`{"metadata":[]}`, `{"metadata":null}`, `{"metadata":{"n":1230e78945678901234567894565}}`, `{"STATUS":"degraded"}`, `{"status":"degraded","status":"healthy"}`,
		`{"status":"healthy"} {}`, `{"status":"he\u0061lthy"}`,
	} {
		f.Add([]byte(s))
	}
	fx := fuzzFixture(f, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	id := fx.register(f, agentBody("fuzzed", 8000, "analyze"))
	path := "/agents/" + id + "/heartbeat"
	f.Fuzz(func(t *testing.T, body []byte) {
		before := fx.getAgent(t, id)["status"]
		rec := fx.do(httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		checkFuzzResponse(t, "heartbeat", body, rec, 200, 400, 413)
		after := fx.getAgent(t, id)["status"]
		if rec.Code != http.StatusOK {
			if after != before {
				t.Fatalf("a refused heartbeat %q changed the status from %v to %v", body, before, after)
			}
			return
		}
		m := objectOf(t, rec)
		wantKeys(t, "heartbeat response", m, heartbeatKeys...)
		wantTime(t, "timestamp", m["timestamp"])
		// The status the agent reported, decoded as the handler does.
		var req struct {
			Status string `json:"status"`
		}
		if len(bytes.TrimSpace(body)) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				t.Fatalf("heartbeat %q accepted, but it does not decode: %v", body, err)
			}
		}
		want := req.Status
		if want == "" {
			want = "healthy"
		}
		if after != want {
			t.Fatalf("after heartbeat %q the agent is %v, want %s", body, after, want)
		}
		if n := len(fx.listAgents(t, "/agents")); n != 1 {
			t.Fatalf("%d agents listed, want 1", n)
		}
	})
}

// FuzzSubmitTask: whatever the body, POST /tasks answers 201 with a task
// readable back, or an error, never 500; the tasks listed are exactly the
// task_ids answered.
func FuzzSubmitTask(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		`{"task_type":"analyze","agent_type":"cost"}`,
		`{"task_type":"analyze","agent_type":"cost","parameters":{"result":[1,"x",null]},"priority":5,"timeout_seconds":10,"max_retries":0,"metadata":{"k":"v"}}`,
		`{"task_type":"analyze","agent_type":"cost","parameters":null,"metadata":null}`,
		`{"task_type":"tune","agent_type":"performance","parameters":{}}`,
		`{"task_type":"analyze","agent_type":"cost","agent_id":"nope"}`,
		`{"task_type":"analyze","agent_type":"cost","parameters":[]}`,
		`{"task_type":"analyze","agent_type":"cost","parameters":"x"}`,
		`{"task_type":"analyze","agent_type":"cost","timeout_seconds":0}`,
		`{"task_type":"analyze","agent_type":"cost","timeout_seconds":301}`,
		`{"task_type":"analyze","agent_type":"cost","timeout_seconds":"5"}`,
		`{"task_type":"analyze","agent_type":"cost","max_retries":-1}`,
		`{"task_type":"analyze","agent_type":"cost","priority":"high"}`,
		`{"task_type":"analyze","agent_type":"cost","priority":99999999999999999999}`,
		`{"task_type":"analyze","agent_type":"bogus"}`,
		`{"task_type":"a b","agent_type":"cost"}`,
		`{"task_type":"report","agent_type":"cost"}`,
		`{"task_type":"analyze","agent_type":"cost","parameters":{"a":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}}`,
		`{"task_type":"analyze","agent_type":"cost","parameters":{"a":1}}garbage`,
		`{"task_type":"analyze","agent_type":"cost","parameters":{"a":1,"a":2}}`,
		`{"task_type":"analyze","agent_type":"cost","metadata":{"\ud800":"\u0000"}}`,
	} {
		f.Add([]byte(s))
	}
	fx := fuzzFixture(f, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	cost := newStubAgent(f, stubComplete)
	fx.registerStub(f, cost, "fuzz-cost", "cost", "analyze")
	perf := newStubAgent(f, stubComplete)
	fx.registerStub(f, perf, "fuzz-perf", "performance", "tune", "analyze")
	seen := map[string]bool{}
	calls := 0
	f.Fuzz(func(t *testing.T, body []byte) {
		calls++
		rec := fx.do(httptest.NewRequest(http.MethodPost, "/tasks", bytes.NewReader(body)))
		checkFuzzResponse(t, "POST /tasks", body, rec, 201, 400, 413, 429, 503)
		if rec.Code == http.StatusCreated {
			m := objectOf(t, rec)
			wantKeys(t, "submit response", m, submitKeys...)
			id := wantString(t, "task_id", m["task_id"])
			if seen[id] {
				t.Fatalf("task_id %s answered twice", id)
			}
			seen[id] = true
			if rec.Header().Get("Location") != "/tasks/"+id {
				t.Fatalf("Location = %q", rec.Header().Get("Location"))
			}
			fx.getTask(t, id)
			if t.Failed() {
				t.FailNow()
			}
		}
		if len(seen) < 100 || calls%64 == 0 {
			if n := len(fx.allTasks(t, "", 1000)); n != len(seen) {
				t.Fatalf("GET /tasks lists %d tasks, but %d task_ids were answered", n, len(seen))
			}
		}
	})
}

// FuzzCoordinate posts bodies to /coordination/coordinate through the
// real handler: never a 500 or a panic, only the documented statuses, and
// an accepted batch's answer adds up (each kept recommendation has an
// approval or a plan; each superseded one names a kept winner).
func FuzzCoordinate(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	rec := func(id, action, risk string, res string, extra string) string {
		return `{"id":"` + id + `","agent_id":"a1","agent_type":"cost","action":"` + action + `","risk_level":"` + risk +
			`","priority":1,"confidence":0.5,"affected_resources":[` + res + `]` + extra + `}`
	}
	for _, s := range []string{
		`{"customer_id":"acme","recommendations":[]}`,
		`{"customer_id":"acme","auto_approve":true,"recommendations":[` + rec("a", "scale_up", "low", `"x"`, "") + `,` + rec("b", "scale_down", "low", `"x"`, "") + `]}`,
		`{"customer_id":"acme","recommendations":[` + rec("a", "tune", "critical", `"x"`, `,"dependencies":["b"]`) + `,` + rec("b", "tune", "low", `"y"`, `,"dependencies":["a"]`) + `]}`,
		`{"customer_id":"acme","recommendations":[` + rec("a", "tune", "low", `"x"`, `,"dependencies":["a"]`) + `]}`,
		`{"customer_id":"acme","recommendations":[` + rec("a", "tune", "extreme", `"x"`, "") + `]}`,
		`{"customer_id":"acme","recommendations":[` + rec("a", "tune", "low", `"x"`, `,"confidence":2`) + `]}`,
		`{"customer_id":"acme","recommendations":[` + rec("a", "tune", "low", `"x"`, `,"customer_id":"globex"`) + `]}`,
		`{"customer_id":"acme","execute_now":true,"recommendations":[` + rec("a", "tune", "low", `"x"`, "") + `]}`,
		`{"customer_id":"acme","auto_approve":true,"recommendations":[` + rec("a", "migrate_to_spot", "medium", `"x","y"`, `,"parameters":{"k":[1]},"metadata":null`) + `]}`,
		`{"customer_id":"","recommendations":null}`,
		`{"customer_id":"acme","recommendations":[{"id":"a","agent_type":"cost","action":"","risk_level":"low"}]}`,
	} {
		f.Add([]byte(s))
	}
	fx := fuzzFixture(f, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig})
	f.Fuzz(func(t *testing.T, body []byte) {
		res := fx.do(httptest.NewRequest(http.MethodPost, "/coordination/coordinate", bytes.NewReader(body)))
		checkFuzzResponse(t, "POST /coordination/coordinate", body, res, 200, 400, 413, 501, 503)
		if res.Code != http.StatusOK {
			return
		}
		var out struct {
			Total     int `json:"total_recommendations"`
			Kept      int `json:"recommendations_kept"`
			Required  int `json:"approvals_required"`
			Auto      int `json:"auto_approved"`
			Approvals []json.RawMessage
			Plans     []json.RawMessage `json:"execution_plans"`
			Recs      []struct {
				ID           string `json:"id"`
				Status       string `json:"status"`
				SupersededBy string `json:"superseded_by"`
			} `json:"recommendations"`
		}
		if err := json.Unmarshal(res.Body.Bytes(), &out); err != nil {
			t.Fatalf("%q: answer %s: %v", body, res.Body, err)
		}
		kept := map[string]bool{}
		for _, r := range out.Recs {
			if r.Status == "pending" || r.Status == "auto_approved" {
				kept[r.ID] = true
			}
		}
		if out.Total != len(out.Recs) || out.Required != len(out.Approvals) || out.Auto != len(out.Plans) ||
			out.Kept != out.Required+out.Auto || out.Kept != len(kept) {
			t.Fatalf("%q: the answer does not add up: %s", body, res.Body)
		}
		for _, r := range out.Recs {
			if r.Status == "superseded" && !kept[r.SupersededBy] {
				t.Fatalf("%q: %s superseded by %q, which was not kept: %s", body, r.ID, r.SupersededBy, res.Body)
			}
		}
	})
}
