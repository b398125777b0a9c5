package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/gorilla/mux"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/app"
	"github.com/optiinfra/orchestrator/internal/auth"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

// The tests here hold openapi.yaml to the real router: every route is
// documented and every documented operation is routed; every documented
// example is sent through the real handler and accepted, and every answer
// (the error answers too) has a status and a body the document allows.

// spec is the embedded document, loaded and validated, with a router that
// finds the operation of a request.
type spec struct {
	doc    *openapi3.T
	router routers.Router
}

func loadSpec(t *testing.T) *spec {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPIDocument)
	if err != nil {
		t.Fatalf("openapi.yaml does not load: %v", err)
	}
	// Validate also checks every example against its schema.
	if err := doc.Validate(context.Background(), openapi3.EnableSchemaFormatValidation()); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI 3 document: %v", err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("openapi.yaml: building a router: %v", err)
	}
	return &spec{doc: doc, router: router}
}

// operation is one documented path and method.
type operation struct {
	path, method string
	op           *openapi3.Operation
	item         *openapi3.PathItem
}

func (o operation) String() string { return o.method + " " + o.path }

// operations lists the documented operations, sorted by path then method.
func (s *spec) operations() []operation {
	var ops []operation
	for _, path := range slices.Sorted(maps.Keys(s.doc.Paths.Map())) {
		item := s.doc.Paths.Value(path)
		for _, method := range slices.Sorted(maps.Keys(item.Operations())) {
			ops = append(ops, operation{path: path, method: method, op: item.GetOperation(method), item: item})
		}
	}
	return ops
}

// parameters are the path item's and the operation's parameters.
func (o operation) parameters() []*openapi3.Parameter {
	var out []*openapi3.Parameter
	for _, list := range []openapi3.Parameters{o.item.Parameters, o.op.Parameters} {
		for _, p := range list {
			out = append(out, p.Value)
		}
	}
	return out
}

// tokenRoles are the roles of the operation's x-token-role: a role name,
// or a list of them whose tokens are all accepted (the first role's having
// none opens the operation); none for an open operation. A value of
// another shape is returned as a role the callers refuse.
func (o operation) tokenRoles() []string {
	switch v := o.op.Extensions["x-token-role"].(type) {
	case nil:
		return nil
	case string:
		return []string{v}
	case []any:
		var roles []string
		for _, r := range v {
			s, _ := r.(string)
			roles = append(roles, s)
		}
		return roles
	default:
		return []string{fmt.Sprint(v)}
	}
}

// muxVariable matches a gorilla/mux template variable with its pattern.
var muxVariable = regexp.MustCompile(`\{([^{}:]+)(:[^{}]*)?\}`)

// routes returns what the real router serves: path template (as OpenAPI
// writes it) -> sorted methods.
func routes(t *testing.T, h http.Handler) map[string][]string {
	t.Helper()
	rt := muxOf(t, h)
	out := map[string][]string{}
	err := rt.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return err
		}
		methods, err := route.GetMethods()
		if err != nil {
			return fmt.Errorf("route %s: %w", tpl, err)
		}
		tpl = muxVariable.ReplaceAllString(tpl, "{$1}")
		out[tpl] = append(out[tpl], methods...)
		return nil
	})
	if err != nil {
		t.Fatalf("walking the router: %v", err)
	}
	for path, methods := range out {
		slices.Sort(methods)
		out[path] = slices.Compact(methods)
	}
	return out
}

// muxOf digs the router out of the handler New returns.
func muxOf(t *testing.T, h http.Handler) *mux.Router {
	t.Helper()
	mw, ok := h.(*api.Middleware)
	if !ok {
		t.Fatalf("New returned a %T, want *middleware", h)
	}
	rt, ok := mw.Next().(*api.Router)
	if !ok {
		t.Fatalf("the middleware wraps a %T, want *router", mw.Next())
	}
	return rt.Mux()
}

func TestOpenAPIDocumentIsValid(t *testing.T) {
	s := loadSpec(t)
	if s.doc.OpenAPI != "3.0.3" {
		t.Errorf("openapi: %q, want 3.0.3", s.doc.OpenAPI)
	}
	if len(s.doc.Security) != 0 {
		t.Errorf("global security %v: security is per operation", s.doc.Security)
	}
	ids := map[string]string{}
	for _, o := range s.operations() {
		if o.op.OperationID == "" || o.op.Summary == "" {
			t.Errorf("%s: needs an operationId and a summary", o)
		}
		if prev, dup := ids[o.op.OperationID]; dup {
			t.Errorf("%s: operationId %q is also %s's", o, o.op.OperationID, prev)
		}
		ids[o.op.OperationID] = o.String()

		// Every request body has an example, and so has every 2xx JSON answer.
		if rb := o.op.RequestBody; rb != nil {
			for ct, mt := range rb.Value.Content {
				if mt.Example == nil && len(mt.Examples) == 0 {
					t.Errorf("%s: the %s request body has no example", o, ct)
				}
			}
		}
		for code, resp := range o.op.Responses.Map() {
			if code == "default" {
				t.Errorf("%s: a default response would allow any status; list the codes", o)
			}
			if mt := resp.Value.Content.Get("application/json"); mt != nil && strings.HasPrefix(code, "2") &&
				mt.Example == nil && len(mt.Examples) == 0 {
				t.Errorf("%s: the %s answer has no example", o, code)
			}
		}

		// The token role and the security requirements say the same thing.
		roles := o.tokenRoles()
		for _, role := range roles {
			if role != "agent" && role != "operator" {
				t.Errorf("%s: x-token-role %q, want agent or operator", o, role)
			}
		}
		switch len(roles) {
		case 0:
			if o.op.Security != nil && len(*o.op.Security) > 0 {
				t.Errorf("%s: security %v without an x-token-role", o, *o.op.Security)
			}
			if o.op.Responses.Status(http.StatusUnauthorized) != nil {
				t.Errorf("%s: documents 401 but is open", o)
			}
		default:
			sec := o.op.Security
			if sec == nil || len(*sec) != 2 || len((*sec)[0]) != 0 || len((*sec)[1]) != 1 || (*sec)[1]["bearerAuth"] == nil {
				t.Errorf("%s: security = %v, want [{}, {bearerAuth: []}] (optional bearer token)", o, sec)
			}
			if o.op.Responses.Status(http.StatusUnauthorized) == nil {
				t.Errorf("%s: needs a token of the %v role but does not document 401", o, roles)
			}
		}
	}
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	s := loadSpec(t)
	documented := map[string][]string{}
	for _, o := range s.operations() {
		documented[o.path] = append(documented[o.path], o.method)
	}

	f := newFixture(t, defaultConfig)
	routed := routes(t, f.handler)
	for path, methods := range routed {
		if doc, ok := documented[path]; !ok {
			t.Errorf("route %s %s is not in openapi.yaml", strings.Join(methods, "|"), path)
		} else if !slices.Equal(doc, methods) {
			t.Errorf("%s: routed for %v, documented for %v", path, methods, doc)
		}
	}
	for path, methods := range documented {
		if _, ok := routed[path]; !ok {
			t.Errorf("openapi.yaml documents %s %s, which is not routed", strings.Join(methods, "|"), path)
		}
	}

	// Each documented operation reaches the route of its own template (not
	// a 404, a 405, or a neighbour such as /agents/{id} for /agents/register).
	rt := muxOf(t, f.handler)
	for _, o := range s.operations() {
		req := httptest.NewRequest(o.method, concretePath(t, o, nil), nil)
		var m mux.RouteMatch
		if !rt.Match(req, &m) || m.MatchErr != nil {
			t.Errorf("%s (as %s): not routed (%v)", o, req.URL.Path, m.MatchErr)
			continue
		}
		if tpl, _ := m.Route.GetPathTemplate(); muxVariable.ReplaceAllString(tpl, "{$1}") != o.path {
			t.Errorf("%s (as %s): routed to %s", o, req.URL.Path, tpl)
		}
	}

	// A method no path documents answers 405, and Allow lists the methods
	// documented for every template the path matches.
	for path := range documented {
		var o operation
		for _, op := range s.operations() {
			if op.path == path {
				o = op
				break
			}
		}
		concrete := concretePath(t, o, nil)
		var want []string
		for other, methods := range documented {
			if templateMatches(other, concrete) {
				want = append(want, methods...)
			}
		}
		slices.Sort(want)
		want = slices.Compact(want)
		rec := f.do(httptest.NewRequest(http.MethodPatch, concrete, nil))
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != strings.Join(want, ", ") {
			t.Errorf("PATCH %s = %d, Allow %q; want 405, Allow %q", concrete, rec.Code, rec.Header().Get("Allow"), strings.Join(want, ", "))
		}
	}

	// The test-only fault routes are the only ones FAULTS_ENABLED adds, and
	// they stay out of the document.
	withFaults := routes(t, newFixture(t, api.Config{MaxBodyBytes: 1 << 20, FaultsEnabled: true}).handler)
	for path, methods := range withFaults {
		if _, ok := routed[path]; ok {
			continue
		}
		if !strings.HasPrefix(path, "/faults/") {
			t.Errorf("FAULTS_ENABLED adds %s %s, outside /faults/", strings.Join(methods, "|"), path)
		}
		if _, ok := documented[path]; ok {
			t.Errorf("test-only route %s is documented", path)
		}
	}
	if len(withFaults) == len(routed) {
		t.Error("FAULTS_ENABLED adds no route: is the fault check above still testing anything?")
	}
}

// templateMatches reports whether an OpenAPI path template matches path.
func templateMatches(template, path string) bool {
	ts, ps := strings.Split(template, "/"), strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if strings.HasPrefix(ts[i], "{") && strings.HasSuffix(ts[i], "}") {
			if ps[i] == "" {
				return false
			}
		} else if ts[i] != ps[i] {
			return false
		}
	}
	return true
}

// concretePath fills the path's parameters from values, else from their
// documented examples.
func concretePath(t *testing.T, o operation, values map[string]string) string {
	t.Helper()
	path := o.path
	for _, p := range o.parameters() {
		if p.In != openapi3.ParameterInPath {
			continue
		}
		v, ok := values[p.Name]
		if !ok {
			ex, isString := p.Example.(string)
			if !isString || ex == "" {
				t.Fatalf("%s: path parameter %q has no string example", o, p.Name)
			}
			v = ex
		}
		path = strings.ReplaceAll(path, "{"+p.Name+"}", url.PathEscape(v))
	}
	return path
}

// requestExamples returns the documented request bodies of o, by name,
// marshalled as JSON ("" names the single `example`). An operation without
// a body gets one request without one.
func requestExamples(t *testing.T, o operation) map[string][]byte {
	t.Helper()
	if o.op.RequestBody == nil {
		return map[string][]byte{"": nil}
	}
	mt := o.op.RequestBody.Value.Content.Get("application/json")
	if mt == nil {
		t.Fatalf("%s: the request body is not application/json", o)
	}
	out := map[string][]byte{}
	add := func(name string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%s: example %q: %v", o, name, err)
		}
		out[name] = b
	}
	if mt.Example != nil {
		add("", mt.Example)
	}
	for name, ex := range mt.Examples {
		add(name, ex.Value.Value)
	}
	return out
}

// exchange sends a request through the fixture's handler and checks it
// against the document: the request (when checkRequest; error cases send
// requests the document forbids on purpose), then the status, headers and
// body of the answer.
func (s *spec) exchange(t *testing.T, f *fixture, method, target string, body []byte, header http.Header, checkRequest bool) *httptest.ResponseRecorder {
	t.Helper()
	newReq := func() *http.Request {
		var r io.Reader
		if body != nil {
			r = bytes.NewReader(body)
		}
		req := httptest.NewRequest(method, target, r)
		// A pod's address: the /api/v1 examples announce localhost and
		// 0.0.0.0, which register the request's address.
		req.RemoteAddr = "10.244.1.7:40312"
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range header {
			req.Header[k] = v
		}
		return req
	}
	req := newReq()
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s: no documented operation: %v", method, target, err)
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if checkRequest {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("%s %s: the request does not match openapi.yaml: %v", method, target, err)
		}
	}

	rec := f.do(newReq())

	if route.Operation.Responses.Status(rec.Code) == nil {
		t.Errorf("%s %s answered %d, which openapi.yaml does not list for %s %s (body %s)",
			method, target, rec.Code, route.Method, route.Path, rec.Body)
		return rec
	}
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 rec.Code,
		Header:                 rec.Header(),
		Body:                   io.NopCloser(bytes.NewReader(rec.Body.Bytes())),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	})
	if err != nil {
		t.Errorf("%s %s answered %d not as openapi.yaml says: %v\nbody: %s", method, target, rec.Code, err, rec.Body)
	}
	return rec
}

// fakeAgent is an agent's /task endpoint on 127.0.0.1. It holds each task
// until release (or until the orchestrator gives up on it), then completes
// it with a result.
type fakeAgent struct {
	srv     *httptest.Server
	gate    chan struct{}
	release func()
}

func newFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	a := &fakeAgent{gate: make(chan struct{})}
	var once sync.Once
	a.release = func() { once.Do(func() { close(a.gate) }) }
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var task struct {
			TaskID string `json:"task_id"`
		}
		if r.URL.Path != "/task" || json.NewDecoder(r.Body).Decode(&task) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		select {
		case <-a.gate:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"task_id":%q,"status":"completed","result":{"monthly_savings_usd":1250.5},"execution_time_ms":3}`, task.TaskID)
	}))
	t.Cleanup(func() {
		a.release()
		a.srv.Close()
	})
	return a
}

// register registers the fake agent through the API as an agent of typ
// with the capability taskType, and returns its id.
func (a *fakeAgent) register(t *testing.T, f *fixture, typ, taskType string) string {
	t.Helper()
	u, _ := url.Parse(a.srv.URL)
	port, _ := strconv.Atoi(u.Port())
	body, _ := json.Marshal(map[string]any{
		"name": "fake-" + typ + "-agent", "type": typ, "host": u.Hostname(), "port": port, "capabilities": []string{taskType},
	})
	rec := f.do(httptest.NewRequest(http.MethodPost, "/agents/register", bytes.NewReader(body)))
	var out struct {
		AgentID string `json:"agent_id"`
	}
	if rec.Code != http.StatusCreated || json.Unmarshal(rec.Body.Bytes(), &out) != nil || out.AgentID == "" {
		t.Fatalf("registering the fake agent: %d %s", rec.Code, rec.Body)
	}
	return out.AgentID
}

// taskExample is the documented POST /tasks example's agent and task type.
func (s *spec) taskExample(t *testing.T) (agentType, taskType string) {
	t.Helper()
	ex, _ := s.doc.Paths.Value("/tasks").Post.RequestBody.Value.Content.Get("application/json").Example.(map[string]any)
	agentType, _ = ex["agent_type"].(string)
	taskType, _ = ex["task_type"].(string)
	if agentType == "" || taskType == "" {
		t.Fatal("the POST /tasks example has no agent_type or task_type")
	}
	return agentType, taskType
}

// operationOrder is the order the examples run in where it matters: the
// registration example's agent is the {id} of the agent operations and is
// unregistered before tasks are submitted (its host does not exist), the
// /api/v1 examples register the {agent_id} of their operations (named in
// the examples) before they use it and unregister it last, and
// the task example's task is read before it is cancelled. The other
// operations follow, in path order.
var operationOrder = []string{
	"POST /agents/register",
	"POST /agents/{id}/heartbeat",
	"GET /agents/{id}",
	"HEAD /agents/{id}",
	"GET /agents",
	"HEAD /agents",
	"GET /agents/type/{type}",
	"HEAD /agents/type/{type}",
	"POST /agents/{id}/unregister",
	"POST /api/v1/agents/register",
	"POST /api/v1/agents/heartbeat",
	"POST /api/v1/agents/{agent_id}/heartbeat",
	"GET /api/v1/agents/{agent_id}",
	"HEAD /api/v1/agents/{agent_id}",
	"GET /api/v1/agents",
	"HEAD /api/v1/agents",
	"DELETE /api/v1/agents/{agent_id}",
	"POST /tasks",
	"GET /tasks/{id}",
	"HEAD /tasks/{id}",
	"GET /tasks",
	"HEAD /tasks",
	"DELETE /tasks/{id}",
	"POST /coordination/coordinate",
}

// coordinationIDs are, for each coordination operation with a path
// parameter, which record of the coordinate example it acts on: the
// approve and reject examples need pending approvals of their own, the
// portal's need recommendations whose approval is pending.
var coordinationIDs = map[string]func(c coordinatedExample) string{
	"GET /coordination/recommendations/{id}":    func(c coordinatedExample) string { return c.Recommendations[0].RecordID },
	"HEAD /coordination/recommendations/{id}":   func(c coordinatedExample) string { return c.Recommendations[0].RecordID },
	"GET /coordination/approvals/{id}":          func(c coordinatedExample) string { return c.Approvals[0].ID },
	"HEAD /coordination/approvals/{id}":         func(c coordinatedExample) string { return c.Approvals[0].ID },
	"POST /coordination/approvals/{id}/approve": func(c coordinatedExample) string { return c.Approvals[0].ID },
	"POST /coordination/approvals/{id}/reject":  func(c coordinatedExample) string { return c.Approvals[1].ID },
	"POST /api/v1/recommendations/{id}/approve": func(c coordinatedExample) string { return c.Approvals[2].RecommendationID },
	"POST /api/v1/recommendations/{id}/reject":  func(c coordinatedExample) string { return c.Approvals[3].RecommendationID },
	"GET /coordination/plans/{id}":              func(c coordinatedExample) string { return c.ExecutionPlans[0].ID },
	"HEAD /coordination/plans/{id}":             func(c coordinatedExample) string { return c.ExecutionPlans[0].ID },
	"POST /coordination/plans/{id}/cancel":      func(c coordinatedExample) string { return c.ExecutionPlans[0].ID },
	"POST /coordination/plans/{id}/execute":     func(c coordinatedExample) string { return c.ExecutionPlans[1].ID },
}

// coordinatedExample is what the coordinate example created.
type coordinatedExample struct {
	Recommendations []struct {
		RecordID string `json:"record_id"`
	} `json:"recommendations"`
	Approvals []struct {
		ID               string `json:"id"`
		RecommendationID string `json:"recommendation_id"`
	} `json:"approvals"`
	ExecutionPlans []struct {
		ID string `json:"id"`
	} `json:"execution_plans"`
}

// exampleStatus is the answer of the examples that cannot succeed, and
// the document says so. None today.
var exampleStatus = map[string]int{}

func TestOpenAPIExamplesAreAccepted(t *testing.T) {
	s := loadSpec(t)
	f := newFixtureAt(t, defaultConfig, zapcore.InfoLevel)
	agent := newFakeAgent(t)
	agentType, taskType := s.taskExample(t)
	agent.register(t, f, agentType, taskType)

	ops := s.operations()
	slices.SortStableFunc(ops, func(a, b operation) int {
		ia, ib := slices.Index(operationOrder, a.String()), slices.Index(operationOrder, b.String())
		if ia < 0 {
			ia = len(operationOrder)
		}
		if ib < 0 {
			ib = len(operationOrder)
		}
		return ia - ib
	})

	// ids collects what the examples create, for the path parameters of
	// the operations that follow.
	ids := map[string]map[string]string{"/agents/": {}, "/tasks/": {}}
	var coordinated coordinatedExample
	values := func(o operation) map[string]string {
		if id, ok := coordinationIDs[o.String()]; ok {
			return map[string]string{"id": id(coordinated)}
		}
		for prefix, v := range ids {
			if strings.HasPrefix(o.path, prefix) {
				return v
			}
		}
		return nil
	}
	for _, o := range ops {
		for name, body := range requestExamples(t, o) {
			target := concretePath(t, o, values(o))
			if strings.HasPrefix(o.path, "/api/v1/recommendations/") {
				target += "?user_id=alice" // operator auth is off: the portal names who decides
			}
			t.Run(strings.TrimSpace(o.String()+" "+name), func(t *testing.T) {
				rec := s.exchange(t, f, o.method, target, body, nil, true)
				if want, ok := exampleStatus[o.String()]; ok {
					if rec.Code != want {
						t.Errorf("%s %s with the documented example answered %d, want %d: %s", o.method, target, rec.Code, want, rec.Body)
					}
					return
				}
				if rec.Code < 200 || rec.Code > 299 {
					t.Fatalf("%s %s with the documented example answered %d: %s", o.method, target, rec.Code, rec.Body)
				}
				var created struct {
					AgentID string `json:"agent_id"`
					TaskID  string `json:"task_id"`
					Status  string `json:"status"`
				}
				switch o.String() {
				case "POST /coordination/coordinate":
					if err := json.Unmarshal(rec.Body.Bytes(), &coordinated); err != nil || len(coordinated.Approvals) < 4 ||
						len(coordinated.ExecutionPlans) < 1 {
						t.Fatalf("the coordinate example made %+v (%v), want 4 approvals and a plan", coordinated, err)
					}
				case "POST /agents/register":
					_ = json.Unmarshal(rec.Body.Bytes(), &created)
					ids["/agents/"]["id"] = created.AgentID
				case "POST /tasks":
					_ = json.Unmarshal(rec.Body.Bytes(), &created)
					ids["/tasks/"]["id"] = created.TaskID
					if created.Status != "dispatched" {
						t.Errorf("the task example was %s, want dispatched to the fake agent", created.Status)
					}
				case "DELETE /tasks/{id}":
					if err := json.Unmarshal(rec.Body.Bytes(), &created); err != nil || created.Status != "cancelled" {
						t.Errorf("DELETE answered a task %q, want cancelled", created.Status)
					}
				}
			})
		}
	}

	// A task that completes, read back: result, started_at and completed_at
	// as documented; cancelling it then is a documented 409.
	agent.release()
	body := requestExamples(t, operation{path: "/tasks", method: http.MethodPost, op: s.doc.Paths.Value("/tasks").Post, item: s.doc.Paths.Value("/tasks")})[""]
	rec := s.exchange(t, f, http.MethodPost, "/tasks", body, nil, true)
	var accepted struct {
		TaskID string `json:"task_id"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &accepted); err != nil || rec.Code != http.StatusCreated {
		t.Fatalf("POST /tasks = %d %s", rec.Code, rec.Body)
	}
	task := waitForTask(t, f, accepted.TaskID)
	if task["status"] != "completed" || task["result"] == nil {
		t.Fatalf("the task ended as %v, want completed with a result", task)
	}
	s.exchange(t, f, http.MethodGet, "/tasks/"+accepted.TaskID, nil, nil, true)
	s.exchange(t, f, http.MethodGet, "/tasks?status=completed&limit=1", nil, nil, true)
	if rec := s.exchange(t, f, http.MethodDelete, "/tasks/"+accepted.TaskID, nil, nil, true); rec.Code != http.StatusConflict {
		t.Errorf("DELETE of a completed task = %d, want 409", rec.Code)
	}
}

// waitForTask polls GET /tasks/{id} until the task is terminal.
func waitForTask(t *testing.T, f *fixture, id string) map[string]any {
	t.Helper()
	var task map[string]any
	eventually.True(t, 10*time.Second, "task "+id+" to finish", func() bool {
		rec := f.get("/tasks/" + id)
		task = nil
		if err := json.Unmarshal(rec.Body.Bytes(), &task); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("GET /tasks/%s = %d %s", id, rec.Code, rec.Body)
		}
		switch task["status"] {
		case "completed", "failed", "timeout", "cancelled":
			return true
		}
		return false
	})
	return task
}

// TestOpenAPIVariants sends the documented query options of the probes
// and the list operations.
func TestOpenAPIVariants(t *testing.T) {
	s := loadSpec(t)
	// The failing check of the end; Health takes checks only before its
	// loops start, so it is there from the start and fails on demand.
	var databaseDown atomic.Bool
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{
		agents: testAgentsConfig, dispatch: testDispatchConfig,
		beforeStart: func(svc *app.Service) {
			svc.Health.AddReadinessCheck("database", func() error {
				if databaseDown.Load() {
					return fmt.Errorf("connection refused")
				}
				return nil
			})
		},
	})
	for _, target := range []string{
		"/live?full=1", "/ready?full=1", "/live?verbose", "/ready?verbose=1", "/ready?exclude=goroutines&exclude=other",
		"/health", "/tasks?status=pending", "/tasks?limit=1000", "/tasks?limit=1&cursor=0", "/agents/type/resource",
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			if route, _, err := s.router.FindRoute(httptest.NewRequest(method, target, nil)); err != nil || route.Operation == nil {
				continue // GET only
			}
			t.Run(method+" "+target, func(t *testing.T) {
				if rec := s.exchange(t, f, method, target, nil, nil, true); rec.Code != http.StatusOK {
					t.Errorf("%s %s = %d, want 200", method, target, rec.Code)
				}
			})
		}
	}

	// Failing probes answer as documented too.
	databaseDown.Store(true)
	for _, target := range []string{"/ready", "/ready?full=1", "/ready?verbose", "/health"} {
		if rec := s.exchange(t, f, http.MethodGet, target, nil, nil, true); rec.Code != http.StatusServiceUnavailable {
			t.Errorf("GET %s with a failing check = %d, want 503", target, rec.Code)
		}
	}
}

// TestOpenAPIErrorAnswers sends requests that must fail, and checks each
// answer's status is the expected one, documented for the operation, with
// a body as documented.
func TestOpenAPIErrorAnswers(t *testing.T) {
	s := loadSpec(t)
	f := newFixtureAt(t, api.Config{MaxBodyBytes: 4096}, zapcore.InfoLevel)
	agentType, taskType := s.taskExample(t)
	agentID := newFakeAgent(t).register(t, f, "resource", "unused")
	for _, tc := range []struct {
		method, target, body string
		code                 int
	}{
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"10.0.0.1","port":0}`, 400},
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"10.0.0.1"}`, 400},
		{"POST", "/agents/register", `{"name":"a","type":"robot","host":"10.0.0.1","port":80}`, 400},
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"10.0.0.1","port":"80"}`, 400},
		{"POST", "/agents/register", `not json`, 400},
		{"POST", "/agents/register", ``, 400},
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"8.8.8.8","port":80}`, 403},
		{"POST", "/agents/register", `{"name":"` + strings.Repeat("a", 5000) + `"}`, 413},
		{"POST", "/agents/nobody/heartbeat", `{"status":"healthy"}`, 404},
		{"POST", "/agents/" + agentID + "/heartbeat", `{"status":"sleepy"}`, 400},
		{"POST", "/agents/" + agentID + "/heartbeat", `[]`, 400},
		{"POST", "/agents/nobody/unregister", ``, 404},
		{"GET", "/agents/nobody", ``, 404},
		{"GET", "/agents/type/robot", ``, 400},
		{"POST", "/tasks", `{"agent_type":"cost"}`, 400},
		{"POST", "/tasks", `{"task_type":"x","agent_type":"robot"}`, 400},
		{"POST", "/tasks", `{"task_type":"x","agent_type":"cost","timeout_seconds":301}`, 400},
		{"POST", "/tasks", `{"task_type":"x","agent_type":"cost","max_retries":-1}`, 400},
		{"POST", "/tasks", `{"task_type":"x","agent_type":"cost","parameters":[1]}`, 400},
		{"POST", "/tasks", `{"task_type":"` + taskType + `","agent_type":"` + agentType + `"}`, 503},
		{"POST", "/tasks", `{"task_type":"unused","agent_type":"cost","agent_id":"` + agentID + `"}`, 400},
		{"POST", "/tasks", `{"task_type":"unused","agent_type":"resource","agent_id":"nobody"}`, 400},
		{"GET", "/tasks?status=lost", ``, 400},
		{"GET", "/tasks?limit=0", ``, 400},
		{"GET", "/tasks?limit=1001", ``, 400},
		{"POST", "/coordination/coordinate", `{"customer_id":"acme","recommendations":[{"id":"a","agent_type":"cost","action":"x","risk_level":"extreme"}]}`, 400},
		{"GET", "/coordination/approvals/nobody", ``, 404},
		{"POST", "/coordination/approvals/nobody/approve", `{"user_id":"alice"}`, 404},
		{"POST", "/coordination/approvals/nobody/reject", `{}`, 400},
		{"GET", "/coordination/plans?limit=0", ``, 400},
		{"GET", "/coordination/recommendations?status=lost", ``, 400},
		{"GET", "/coordination/events?since=yesterday", ``, 400},
		{"POST", "/coordination/plans/nobody/execute", ``, 404},
		{"POST", "/coordination/plans/nobody/cancel", ``, 404},
		{"POST", "/api/v1/recommendations/nobody/approve", ``, 400},
		{"POST", "/api/v1/recommendations/nobody/reject?user_id=alice", ``, 404},
		{"GET", "/tasks?cursor=x", ``, 400},
		{"GET", "/tasks/nothing", ``, 404},
		{"DELETE", "/tasks/nothing", ``, 404},
	} {
		name := tc.method + " " + tc.target + " " + tc.body
		if len(name) > 80 {
			name = name[:80] + "..."
		}
		t.Run(name, func(t *testing.T) {
			var body []byte
			if tc.body != "" || tc.method == http.MethodPost && tc.target == "/agents/register" {
				body = []byte(tc.body)
			}
			if rec := s.exchange(t, f, tc.method, tc.target, body, nil, false); rec.Code != tc.code {
				t.Errorf("%s %s %s = %d, want %d: %s", tc.method, tc.target, tc.body, rec.Code, tc.code, rec.Body)
			}
		})
	}
}

// TestOpenAPIQueueAnswers covers the answers of a saturated agent: a task
// accepted as pending, then 429 with Retry-After when the queue is full.
func TestOpenAPIQueueAnswers(t *testing.T) {
	s := loadSpec(t)
	dc := testDispatchConfig
	dc.AgentConcurrency, dc.MaxPending = 1, 1
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: testAgentsConfig, dispatch: dc})
	agentType, taskType := s.taskExample(t)
	newFakeAgent(t).register(t, f, agentType, taskType)
	task := []byte(`{"task_type":"` + taskType + `","agent_type":"` + agentType + `"}`)

	var statuses []string
	for range 2 {
		rec := s.exchange(t, f, http.MethodPost, "/tasks", task, nil, true)
		var accepted struct {
			TaskID string `json:"task_id"`
			Status string `json:"status"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &accepted)
		statuses = append(statuses, accepted.Status)
		s.exchange(t, f, http.MethodGet, "/tasks/"+accepted.TaskID, nil, nil, true)
	}
	if !slices.Equal(statuses, []string{"dispatched", "pending"}) {
		t.Errorf("two tasks for one slot were %v, want [dispatched pending]", statuses)
	}
	if rec := s.exchange(t, f, http.MethodPost, "/tasks", task, nil, true); rec.Code != http.StatusTooManyRequests {
		t.Errorf("a task beyond TASK_MAX_PENDING = %d, want 429", rec.Code)
	}
	s.exchange(t, f, http.MethodGet, "/tasks?status=pending", nil, nil, true)
}

// TestOpenAPISecurity turns both token roles on and checks each operation
// against its x-token-role: 401 as documented without a token or with the
// other role's, through with its own; open operations stay open.
func TestOpenAPISecurity(t *testing.T) {
	s := loadSpec(t)
	const agentToken, operatorToken = "agent-token-0123456789", "operator-token-0123456789"
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{
		agents: testAgentsConfig, dispatch: testDispatchConfig,
		auth: auth.Config{AgentTokens: agentToken, OperatorTokens: operatorToken},
	})
	bearer := func(token string) http.Header {
		return http.Header{"Authorization": {"Bearer " + token}}
	}
	tokens := map[string]string{"agent": agentToken, "operator": operatorToken}
	for _, o := range s.operations() {
		t.Run(o.String(), func(t *testing.T) {
			target := concretePath(t, o, nil)
			var body []byte
			for _, b := range requestExamples(t, o) {
				body = b
				break
			}
			roles := o.tokenRoles()
			if len(roles) == 0 {
				if rec := s.exchange(t, f, o.method, target, body, nil, true); rec.Code == http.StatusUnauthorized {
					t.Errorf("open operation %s answered 401", o)
				}
				return
			}
			refused := []http.Header{nil, bearer("wrong-token-0123456789")}
			for role, token := range tokens {
				if !slices.Contains(roles, role) {
					refused = append(refused, bearer(token))
				}
			}
			for _, h := range refused {
				rec := s.exchange(t, f, o.method, target, body, h, false)
				if rec.Code != http.StatusUnauthorized {
					t.Errorf("%s with %v = %d, want 401", o, h, rec.Code)
				}
			}
			for _, role := range roles {
				if rec := s.exchange(t, f, o.method, target, body, bearer(tokens[role]), true); rec.Code == http.StatusUnauthorized {
					t.Errorf("%s with a %s token = 401: %s", o, role, rec.Body)
				}
			}
		})
	}
}

// TestOpenAPIAgentLimits covers the registry's refusals: 403 for an agent
// bound to another token, 413 and 400 for metadata past its limits, 507
// past AGENT_MAX_AGENTS and AGENT_MAX_METADATA_TOTAL_BYTES; each answered
// as documented.
func TestOpenAPIAgentLimits(t *testing.T) {
	s := loadSpec(t)
	const owner, other = "agent-token-0123456789", "agent-token-other-0123"
	cfg := testAgentsConfig
	cfg.MaxAgents, cfg.MaxMetadataBytes, cfg.MaxMetadataDepth, cfg.MaxMetadataTotalBytes = 1, 256, 3, 300
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{
		agents: cfg, dispatch: testDispatchConfig, auth: auth.Config{AgentTokens: owner + "," + other},
	})
	as := func(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }
	reg := `{"name":"a","type":"cost","host":"10.0.0.1","port":8001}`
	rec := s.exchange(t, f, http.MethodPost, "/agents/register", []byte(reg), as(owner), true)
	var created struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &created); err != nil || rec.Code != http.StatusCreated {
		t.Fatalf("register = %d %s", rec.Code, rec.Body)
	}
	id := created.AgentID
	big := `{"pad":"` + strings.Repeat("x", 300) + `"}`
	pad := func(n int) string { return `{"pad":"` + strings.Repeat("x", n-10) + `"}` } // n bytes
	for _, tc := range []struct {
		method, target, body, token string
		code                        int
	}{
		{"POST", "/agents/register", reg, other, 403},
		{"POST", "/agents/" + id + "/heartbeat", `{"status":"unhealthy"}`, other, 403},
		{"POST", "/agents/" + id + "/unregister", ``, other, 403},
		{"POST", "/agents/register", `{"name":"b","type":"cost","host":"10.0.0.1","port":8002}`, other, 507},
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"10.0.0.1","port":8001,"metadata":` + big + `}`, owner, 413},
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"10.0.0.1","port":8001,"metadata":{"a":[[[1]]]}}`, owner, 400},
		{"POST", "/agents/" + id + "/heartbeat", `{"metadata":` + big + `}`, owner, 413},
		{"POST", "/agents/" + id + "/heartbeat", `{"metadata":{"a":{"b":{"c":{}}}}}`, owner, 400},
		// 250 + 50 bytes fill AGENT_MAX_METADATA_TOTAL_BYTES=300.
		{"POST", "/agents/register", `{"name":"a","type":"cost","host":"10.0.0.1","port":8001,"metadata":` + pad(250) + `}`, owner, 201},
		{"POST", "/agents/" + id + "/heartbeat", `{"metadata":` + pad(50) + `}`, owner, 200},
		{"POST", "/agents/" + id + "/heartbeat", `{"metadata":` + pad(51) + `}`, owner, 507},
		{"POST", "/agents/register", reg, owner, 201},
	} {
		t.Run(tc.method+" "+tc.target+" "+strconv.Itoa(tc.code), func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			if rec := s.exchange(t, f, tc.method, tc.target, body, as(tc.token), false); rec.Code != tc.code {
				t.Errorf("%s %s %s = %d, want %d: %s", tc.method, tc.target, tc.body, rec.Code, tc.code, rec.Body)
			}
		})
	}
}

// TestOpenAPIServed checks GET /openapi.yaml serves the embedded document.
func TestOpenAPIServed(t *testing.T) {
	s := loadSpec(t)
	f := newFixture(t, defaultConfig)
	rec := s.exchange(t, f, http.MethodGet, "/openapi.yaml", nil, nil, true)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/yaml" {
		t.Fatalf("GET /openapi.yaml = %d, Content-Type %q; want 200 application/yaml", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !bytes.Equal(rec.Body.Bytes(), api.OpenAPIDocument) {
		t.Error("GET /openapi.yaml does not serve the embedded document")
	}
	if _, err := openapi3.NewLoader().LoadFromData(rec.Body.Bytes()); err != nil {
		t.Errorf("the served document does not load: %v", err)
	}
}
