package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"go.uber.org/zap/zapcore"
)

// decodeSample has a field of each kind the request types use.
type decodeSample struct {
	Name  string          `json:"name"`
	Port  *int            `json:"port"`
	Caps  []string        `json:"caps"`
	Meta  map[string]any  `json:"meta"`
	Inner struct{ N int } `json:"inner"`
	Ratio float64         `json:"ratio"`
	On    bool            `json:"on"`
	Raw   json.RawMessage `json:"raw"`
}

func TestDecodeBody(t *testing.T) {
	for _, tc := range []struct {
		body   string
		status int    // 0: decoded
		msg    string // the exact message
	}{
		{"", 400, "the request body is empty: send a JSON object"},
		{" \t\r\n", 400, "the request body is empty: send a JSON object"},
		{"{", 400, "the request body is not valid JSON: it ends too early"},
		{`{"name":`, 400, "the request body is not valid JSON: it ends too early"},
		{`{"name":"a"`, 400, "the request body is not valid JSON: it ends too early"},
		{"{]", 400, "the request body is not valid JSON (at byte 2): invalid character ']' looking for beginning of object key string"},
		{"nope", 400, "the request body is not valid JSON (at byte 2): invalid character 'o' in literal null (expecting 'u')"},
		{`{"name" "a"}`, 400, "the request body is not valid JSON (at byte 9): invalid character '\"' after object key"},
		{`{"name":"a",}`, 400, "the request body is not valid JSON (at byte 13): invalid character '}' looking for beginning of object key string"},
		{"{\"name\":\"\x01\"}", 400, "the request body is not valid JSON (at byte 10): invalid character '\\x01' in string literal"},
		{"[]", 400, "the request body must be a JSON object, not array"},
		{"5", 400, "the request body must be a JSON object, not number"},
		{`"x"`, 400, "the request body must be a JSON object, not string"},
		{"true", 400, "the request body must be a JSON object, not bool"},
		{`{"port":"80"}`, 400, "port: must be an integer, not string"},
		{`{"port":1.5}`, 400, "port: must be an integer, not number 1.5"},
		{`{"port":1e30}`, 400, "port: must be an integer, not number 1e30"},
		{`{"port":-99999999999999999999}`, 400, "port: must be an integer, not number -99999999999999999999"},
		{`{"port":{}}`, 400, "port: must be an integer, not object"},
		{`{"name":5}`, 400, "name: must be a string, not number"},
		{`{"name":["a"]}`, 400, "name: must be a string, not array"},
		{`{"caps":"x"}`, 400, "caps: must be an array of strings, not string"},
		{`{"caps":{}}`, 400, "caps: must be an array of strings, not object"},
		{`{"caps":[1]}`, 400, "caps: must be a string, not number"},
		{`{"meta":[]}`, 400, "meta: must be an object, not array"},
		{`{"meta":"x"}`, 400, "meta: must be an object, not string"},
		{`{"inner":{"N":"x"}}`, 400, "inner.N: must be an integer, not string"},
		{`{"inner":[]}`, 400, "inner: must be an object, not array"},
		{`{"ratio":"x"}`, 400, "ratio: must be a number, not string"},
		{`{"on":1}`, 400, "on: must be true or false, not number"},
		{`{"port":"80","name":5}`, 400, "port: must be an integer, not string"}, // the first one
		{`{"name":"a"} {}`, 400, "the request body has more than one JSON value"},
		{`{"name":"a"}{"name":"b"}`, 400, "the request body has more than one JSON value"},
		{`{"name":"a"} 5`, 400, "the request body has more than one JSON value"},
		{`{"name":"a"}x`, 400, "the request body has data after its JSON value that is not JSON"},
		{`{"name":"a"} ]`, 400, "the request body has data after its JSON value that is not JSON"},
		{strings.Repeat("[", 10001), 400, "the request body is not valid JSON (at byte 10001): invalid character '[' exceeded max depth"},
		{`{"raw":` + strings.Repeat("[", 10001), 400, "the request body is not valid JSON (at byte 10007): invalid character '[' exceeded max depth"},

		// Accepted.
		{"null", 0, ""},
		{"{}", 0, ""},
		{" {} \n", 0, ""},
		{`{"unknown":1,"name":"a","NAME":"b"}`, 0, ""}, // unknown fields ignored; keys match case-insensitively, the last wins
		{`{"name":"\u00e9\ud83d\ude00","port":null,"caps":null,"meta":null,"raw":null}`, 0, ""},
		{`{"port":8080,"caps":["a","b"],"meta":{"n":12345678901234567890,"f":0.1},"inner":{"N":-1},"ratio":1e-9,"on":true,"raw":[1,{"x":null}]}`, 0, ""},
		{"{\"name\":\"\xff\"}", 0, ""}, // invalid UTF-8 becomes U+FFFD, as encoding/json does
	} {
		t.Run(tc.body[:min(len(tc.body), 40)], func(t *testing.T) {
			var v decodeSample
			err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body)), &v)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("decodeBody(%.60q) = %v, want it decoded", tc.body, err)
				}
				return
			}
			var be *bodyError
			if !errors.As(err, &be) {
				t.Fatalf("decodeBody(%.60q) = %v (%T), want a *bodyError", tc.body, err, err)
			}
			if be.status != tc.status || be.msg != tc.msg {
				t.Errorf("decodeBody(%.60q) = %d %q, want %d %q", tc.body, be.status, be.msg, tc.status, tc.msg)
			}
		})
	}
}

func TestDecodeBodyValues(t *testing.T) {
	var v decodeSample
	body := `{"name":"a","NAME":"b","port":8080,"caps":["x","y"],"meta":{"n":12345678901234567890,"nested":{"f":0.1}},"raw":[1, 2]}`
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), &v); err != nil {
		t.Fatal(err)
	}
	if v.Name != "b" || v.Port == nil || *v.Port != 8080 || len(v.Caps) != 2 || string(v.Raw) != "[1, 2]" {
		t.Errorf("decoded %+v", v)
	}
	// Numbers in maps stay exact.
	if n, ok := v.Meta["n"].(json.Number); !ok || n.String() != "12345678901234567890" {
		t.Errorf("meta.n = %v (%T), want the exact json.Number", v.Meta["n"], v.Meta["n"])
	}
	if f, ok := v.Meta["nested"].(map[string]any)["f"].(json.Number); !ok || f.String() != "0.1" {
		t.Errorf("meta.nested.f = %v", v.Meta["nested"])
	}
	v = decodeSample{}
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{\"name\":\"\xff\"}")), &v); err != nil || v.Name != "\ufffd" {
		t.Errorf("invalid UTF-8: name %q, err %v", v.Name, err)
	}
}

func TestDecodeBodyReadErrors(t *testing.T) {
	// Over the limit the middleware sets: 413 naming the limit.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"name":"far too long for the limit"}`))
	req.Body = http.MaxBytesReader(rec, req.Body, 8)
	var v decodeSample
	var be *bodyError
	if err := decodeBody(req, &v); !errors.As(err, &be) || be.status != 413 || be.msg != "request body too large: the limit is 8 bytes" {
		t.Errorf("body over the limit: %v", err)
	}
	// Any other read error: 400.
	req = httptest.NewRequest(http.MethodPost, "/", nil)
	req.Body = io.NopCloser(iotest.ErrReader(errors.New("connection reset")))
	if err := decodeBody(req, &v); !errors.As(err, &be) || be.status != 400 || be.msg != "reading the request body: connection reset" {
		t.Errorf("read error: %v", err)
	}
	// The empty-body error is recognisable, as the heartbeat handler needs.
	req = httptest.NewRequest(http.MethodPost, "/", nil)
	if err := decodeBody(req, &v); !errors.Is(err, errEmptyBody) {
		t.Errorf("no body: %v, want errors.Is(err, errEmptyBody)", err)
	}
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(" \n")), &v); !errors.Is(err, errEmptyBody) {
		t.Errorf("blank body: %v, want errors.Is(err, errEmptyBody)", err)
	}
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader("nope")), &v); errors.Is(err, errEmptyBody) {
		t.Errorf("a body that is not JSON is taken for an empty one: %v", err)
	}
}

func TestExplainJSON(t *testing.T) {
	intType, strType := reflect.TypeFor[int](), reflect.TypeFor[string]()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&json.SyntaxError{Offset: 7}, "the request body is not valid JSON (at byte 7): "},
		{fmt.Errorf("wrapped: %w", io.ErrUnexpectedEOF), "the request body is not valid JSON: it ends too early"},
		{&json.UnmarshalTypeError{Value: "array", Type: reflect.TypeFor[decodeSample]()}, "the request body must be a JSON object, not array"},
		{&json.UnmarshalTypeError{Value: "string", Type: intType, Field: "a.b"}, "a.b: must be an integer, not string"},
		{&json.UnmarshalTypeError{Value: "number", Type: strType, Field: "s"}, "s: must be a string, not number"},
		{errors.New("something else"), "the request body is not valid JSON: something else"},
	} {
		if got := explainJSON(tc.err); got != tc.want {
			t.Errorf("explainJSON(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestJSONKind(t *testing.T) {
	for _, tc := range []struct {
		typ  reflect.Type
		want string
	}{
		{reflect.TypeFor[string](), "a string"},
		{reflect.TypeFor[*string](), "a string"},
		{reflect.TypeFor[int](), "an integer"},
		{reflect.TypeFor[**int](), "an integer"},
		{reflect.TypeFor[uint8](), "an integer"},
		{reflect.TypeFor[int64](), "an integer"},
		{reflect.TypeFor[float64](), "a number"},
		{reflect.TypeFor[float32](), "a number"},
		{reflect.TypeFor[bool](), "true or false"},
		{reflect.TypeFor[[]string](), "an array of strings"},
		{reflect.TypeFor[[]int](), "an array of integers"},
		{reflect.TypeFor[[]float64](), "an array of numbers"},
		{reflect.TypeFor[[]map[string]any](), "an array of objects"},
		{reflect.TypeFor[[3]int](), "an array of integers"},
		{reflect.TypeFor[[]bool](), "an array of true or false values"},
		{reflect.TypeFor[[][]string](), "an array of arrays of strings"},
		{reflect.TypeFor[[]*int](), "an array of integers"},
		{reflect.TypeFor[map[string]int](), "an object"},
		{reflect.TypeFor[decodeSample](), "an object"},
	} {
		if got := jsonKind(tc.typ); got != tc.want {
			t.Errorf("jsonKind(%v) = %q, want %q", tc.typ, got, tc.want)
		}
	}
}

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
		`{"metadata":[]}`, `{"metadata":null}`, `{"STATUS":"degraded"}`, `{"status":"degraded","status":"healthy"}`,
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
