package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// Task key sets: those always present, and those that may be.
var (
	submitKeys       = []string{"task_id", "status", "agent_id", "created_at", "status_url"}
	taskRequiredKeys = []string{"task_id", "task_type", "agent_type", "status", "agent_id", "parameters", "priority",
		"timeout_seconds", "max_retries", "created_at", "retry_count"}
	taskOptionalKeys = []string{"metadata", "result", "error", "started_at", "completed_at"}
	taskStatuses     = []string{"pending", "dispatched", "retrying", "completed", "failed", "timeout", "cancelled"}
	terminalStatuses = []string{"completed", "failed", "timeout", "cancelled"}
)

// stubDelivery is one POST /task a stub agent received.
type stubDelivery struct {
	ContentType string
	Raw         []byte
	Body        map[string]json.RawMessage
	TaskID      string
}

// stubAgent is a fake OptiInfra agent on 127.0.0.1 serving POST /task.
type stubAgent struct {
	srv  *httptest.Server
	port int
	// stop releases handlers that hold their request; closed before the
	// server, when the test ends.
	stop chan struct{}
	// arrived gets the task id of each delivery as it comes in; aborted
	// the id of each held delivery whose request the orchestrator gave up.
	arrived chan string
	aborted chan string

	mu  sync.Mutex
	got []stubDelivery
}

// stubReply answers a delivery; it may block.
type stubReply func(a *stubAgent, w http.ResponseWriter, r *http.Request, d stubDelivery)

// newStubAgent starts a stub agent answering with reply.
func newStubAgent(t testing.TB, reply stubReply) *stubAgent {
	t.Helper()
	a := &stubAgent{stop: make(chan struct{}), arrived: make(chan string, 10000), aborted: make(chan string, 10000)}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/task" {
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		raw, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		d := stubDelivery{ContentType: r.Header.Get("Content-Type"), Raw: raw}
		if json.Unmarshal(raw, &d.Body) == nil {
			_ = json.Unmarshal(d.Body["task_id"], &d.TaskID)
		}
		a.mu.Lock()
		a.got = append(a.got, d)
		a.mu.Unlock()
		select {
		case a.arrived <- d.TaskID:
		default:
		}
		reply(a, w, r, d)
	}))
	a.port = a.srv.Listener.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		close(a.stop)
		a.srv.Close()
	})
	return a
}

// deliveries returns what the agent received so far.
func (a *stubAgent) deliveries() []stubDelivery {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

// delivery returns the delivery of task id, failing when there is none.
func (a *stubAgent) delivery(t testing.TB, id string) stubDelivery {
	t.Helper()
	for _, d := range a.deliveries() {
		if d.TaskID == id {
			return d
		}
	}
	t.Fatalf("the agent never received task %s", id)
	return stubDelivery{}
}

// replyJSON writes an agent's answer.
func replyJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// stubComplete answers 200 completed, as real agents do. The result is
// the task's parameters.result, verbatim; without one, the reply has no
// result key.
func stubComplete(_ *stubAgent, w http.ResponseWriter, _ *http.Request, d stubDelivery) {
	var params map[string]json.RawMessage
	_ = json.Unmarshal(d.Body["parameters"], &params)
	reply := map[string]any{"task_id": d.TaskID, "status": "completed", "execution_time_ms": 3}
	if res, ok := params["result"]; ok {
		reply["result"] = res
	}
	replyJSON(w, http.StatusOK, reply)
}

// stubHold holds the delivery until the orchestrator gives up on it
// (recorded in aborted) or the test ends.
func stubHold(a *stubAgent, _ http.ResponseWriter, r *http.Request, d stubDelivery) {
	select {
	case <-r.Context().Done():
		a.aborted <- d.TaskID
	case <-a.stop:
	}
}

// registerStub registers a as an agent of type typ with the capabilities.
func (f *fixture) registerStub(t testing.TB, a *stubAgent, name, typ string, caps ...string) string {
	t.Helper()
	body := agentBody(name, a.port, caps...)
	body["type"] = typ
	return f.register(t, body)
}

// submit posts a task and expects 201, returning the response.
func (f *fixture) submit(t testing.TB, body any) map[string]any {
	t.Helper()
	raw, ok := body.(string)
	if !ok {
		raw = mustJSON(t, body)
	}
	rec := f.call(http.MethodPost, "/tasks", raw)
	m := expect(t, "POST /tasks "+raw, rec, http.StatusCreated)
	wantKeys(t, "POST /tasks response", m, submitKeys...)
	id := wantString(t, "task_id", m["task_id"])
	if id == "" {
		t.Fatal("task_id is empty")
	}
	if m["status_url"] != "/tasks/"+id {
		t.Errorf("status_url = %v, want /tasks/%s", m["status_url"], id)
	}
	if loc := rec.Header().Get("Location"); loc != "/tasks/"+id {
		t.Errorf("Location = %q, want /tasks/%s", loc, id)
	}
	wantTime(t, "created_at", m["created_at"])
	wantString(t, "agent_id", m["agent_id"])
	if st := m["status"]; st != "dispatched" && st != "pending" {
		t.Errorf("submitted task status = %v, want dispatched or pending", st)
	}
	return m
}

// checkTask checks a Task object's shape and returns it.
func checkTask(t testing.TB, what string, m map[string]any) map[string]any {
	t.Helper()
	for _, k := range taskRequiredKeys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s lacks %s: %v", what, k, m)
		}
	}
	for k := range m {
		if !slices.Contains(taskRequiredKeys, k) && !slices.Contains(taskOptionalKeys, k) {
			t.Errorf("%s has an unexpected key %s", what, k)
		}
	}
	st := wantString(t, what+" status", m["status"])
	if !slices.Contains(taskStatuses, st) {
		t.Errorf("%s status = %q", what, st)
	}
	if _, ok := m["parameters"].(map[string]any); !ok {
		t.Errorf("%s parameters = %v (%T), want an object", what, m["parameters"], m["parameters"])
	}
	if meta, ok := m["metadata"]; ok {
		if _, ok := meta.(map[string]any); !ok {
			t.Errorf("%s metadata = %v (%T), want an object", what, meta, meta)
		}
	}
	for _, k := range []string{"priority", "timeout_seconds", "max_retries", "retry_count"} {
		wantInt(t, what+" "+k, m[k])
	}
	for _, k := range []string{"created_at", "started_at", "completed_at"} {
		if v, ok := m[k]; ok {
			wantTime(t, what+" "+k, v)
		}
	}
	_, done := m["completed_at"]
	if terminal := slices.Contains(terminalStatuses, st); terminal != done {
		t.Errorf("%s is %s with completed_at %v", what, st, m["completed_at"])
	}
	return m
}

// getTask reads GET /tasks/{id}, expecting 200.
func (f *fixture) getTask(t testing.TB, id string, header ...string) map[string]any {
	t.Helper()
	rec := f.call(http.MethodGet, "/tasks/"+id, "", header...)
	return checkTask(t, "GET /tasks/"+id, expect(t, "GET /tasks/"+id, rec, http.StatusOK))
}

// waitTask polls task id until it is terminal, and returns it.
func (f *fixture) waitTask(t testing.TB, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		task := f.getTask(t, id)
		if slices.Contains(terminalStatuses, task["status"].(string)) {
			return task
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s still %v after 10s", id, task["status"])
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// receive waits for the next task id on ch.
func receive(t testing.TB, what string, ch <-chan string) string {
	t.Helper()
	select {
	case id := <-ch:
		return id
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing after 10s", what)
		return ""
	}
}

func TestSubmitTask(t *testing.T) {
	f := newFixture(t, defaultConfig)
	agent := newStubAgent(t, stubComplete)
	agentID := f.registerStub(t, agent, "cost-agent", "cost", "analyze")

	m := f.submit(t, map[string]any{"task_type": "analyze", "agent_type": "cost"})
	id := m["task_id"].(string)
	if m["status"] != "dispatched" || m["agent_id"] != agentID {
		t.Errorf("submit = %v, want dispatched to %s", m, agentID)
	}
	task := f.waitTask(t, id)
	if task["status"] != "completed" {
		t.Fatalf("task = %v, want completed", task)
	}
	for key, want := range map[string]any{
		"task_id": id, "task_type": "analyze", "agent_type": "cost", "agent_id": agentID,
		"priority": float64(0), "timeout_seconds": float64(30), "max_retries": float64(3), "retry_count": float64(0),
	} {
		if task[key] != want {
			t.Errorf("task %s = %v, want %v", key, task[key], want)
		}
	}
	for _, k := range []string{"started_at", "completed_at"} {
		if _, ok := task[k]; !ok {
			t.Errorf("completed task lacks %s", k)
		}
	}
	for _, k := range []string{"error", "metadata", "result"} {
		if v, ok := task[k]; ok {
			t.Errorf("task has %s = %v; want none (none given, none returned)", k, v)
		}
	}
	created, completed := wantTime(t, "created_at", task["created_at"]), wantTime(t, "completed_at", task["completed_at"])
	if completed.Before(created) {
		t.Errorf("completed_at %s is before created_at %s", completed, created)
	}

	d := agent.delivery(t, id)
	if d.ContentType != "application/json" {
		t.Errorf("delivery Content-Type = %q, want application/json", d.ContentType)
	}
	wantRawKeys(t, "delivery", d.Body, "task_id", "task_type", "parameters", "timeout_seconds", "priority")
	for key, want := range map[string]string{"task_type": `"analyze"`, "parameters": `{}`, "timeout_seconds": `30`, "priority": `0`} {
		if got := string(d.Body[key]); got != want {
			t.Errorf("delivery %s = %s, want %s", key, got, want)
		}
	}
}

// wantRawKeys checks the exact key set of a decoded object.
func wantRawKeys(t testing.TB, what string, m map[string]json.RawMessage, keys ...string) {
	t.Helper()
	got := make([]string, 0, len(m))
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	want := slices.Clone(keys)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s keys = %v, want exactly %v", what, got, want)
	}
}

func TestSubmitTaskDelivery(t *testing.T) {
	f := newFixture(t, defaultConfig)
	agent := newStubAgent(t, stubComplete)
	f.registerStub(t, agent, "cost-agent", "cost", "analyze")
	for _, tc := range []struct {
		name, body string
		want       map[string]string // delivered fields, as compact JSON
		keys       []string
	}{
		{
			"parameters omitted", `{"task_type":"analyze","agent_type":"cost"}`,
			map[string]string{"parameters": `{}`, "timeout_seconds": `30`, "priority": `0`},
			[]string{"task_id", "task_type", "parameters", "timeout_seconds", "priority"},
		},
		{
			"parameters null", `{"task_type":"analyze","agent_type":"cost","parameters":null,"metadata":null}`,
			map[string]string{"parameters": `{}`},
			[]string{"task_id", "task_type", "parameters", "timeout_seconds", "priority"},
		},
		{
			"everything given", `{"task_type":"analyze","agent_type":"cost","parameters":{"n":12345678901234567890,"s":"x","nested":{"a":[1,2]}},` +
				`"priority":7,"timeout_seconds":12,"max_retries":0,"metadata":{"trace":"abc"}}`,
			map[string]string{
				"parameters": `{"n":12345678901234567890,"s":"x","nested":{"a":[1,2]}}`, "timeout_seconds": `12`,
				"priority": `7`, "metadata": `{"trace":"abc"}`,
			},
			[]string{"task_id", "task_type", "parameters", "timeout_seconds", "priority", "metadata"},
		},
		{
			"empty metadata", `{"task_type":"analyze","agent_type":"cost","parameters":{},"metadata":{}}`,
			map[string]string{"parameters": `{}`, "metadata": `{}`},
			[]string{"task_id", "task_type", "parameters", "timeout_seconds", "priority", "metadata"},
		},
		{
			"negative priority", `{"task_type":"analyze","agent_type":"cost","priority":-3}`,
			map[string]string{"priority": `-3`},
			[]string{"task_id", "task_type", "parameters", "timeout_seconds", "priority"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := f.submit(t, tc.body)["task_id"].(string)
			if task := f.waitTask(t, id); task["status"] != "completed" {
				t.Fatalf("task = %v", task)
			}
			d := agent.delivery(t, id)
			if d.ContentType != "application/json" {
				t.Errorf("Content-Type = %q", d.ContentType)
			}
			wantRawKeys(t, "delivery", d.Body, tc.keys...)
			if got := string(d.Body["task_id"]); got != strconv.Quote(id) {
				t.Errorf("delivered task_id = %s, want %q", got, id)
			}
			for key, want := range tc.want {
				var compact bytes.Buffer
				if err := json.Compact(&compact, d.Body[key]); err != nil || compact.String() != want {
					t.Errorf("delivered %s = %s, want %s", key, d.Body[key], want)
				}
			}
			// The task as read back keeps what was submitted.
			task := f.getTask(t, id)
			params, _ := json.Marshal(task["parameters"])
			if !strings.HasPrefix(string(params), "{") {
				t.Errorf("task parameters = %s", params)
			}
			if _, want := tc.want["metadata"]; want != (task["metadata"] != nil) {
				t.Errorf("task metadata = %v; delivered with metadata: %v", task["metadata"], want)
			}
		})
	}
}

func TestTaskResultKinds(t *testing.T) {
	f := newFixture(t, defaultConfig)
	agent := newStubAgent(t, stubComplete)
	f.registerStub(t, agent, "cost-agent", "cost", "analyze")
	for _, result := range []string{`{"savings":12.5,"items":[{"id":1}]}`, `[1,"two",{"three":3},null]`, `"done"`, `42`, `-0.5`, `12345678901234567890`, `1.5e300`, `true`, `null`, `{}`, `[]`, `""`} {
		t.Run(result, func(t *testing.T) {
			body := `{"task_type":"analyze","agent_type":"cost","parameters":{"result":` + result + `}}`
			id := f.submit(t, body)["task_id"].(string)
			task := f.waitTask(t, id)
			if task["status"] != "completed" {
				t.Fatalf("task = %v, want completed", task)
			}
			rec := f.get("/tasks/" + id)
			var raw map[string]json.RawMessage
			if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
				t.Fatal(err)
			}
			got, ok := raw["result"]
			if !ok {
				t.Fatalf("completed task has no result key: %s", rec.Body)
			}
			var want, have bytes.Buffer
			_ = json.Compact(&want, []byte(result))
			_ = json.Compact(&have, got)
			if want.String() != have.String() {
				t.Errorf("result = %s, want %s", got, result)
			}
		})
	}
}

func TestSubmitTaskRejects(t *testing.T) {
	f := newFixture(t, defaultConfig)
	agent := newStubAgent(t, stubComplete)
	f.registerStub(t, agent, "cost-agent", "cost", "analyze")
	valid := `"task_type":"analyze","agent_type":"cost"`
	for _, tc := range []struct{ name, body, field string }{
		{"no task_type", `{"agent_type":"cost"}`, "task_type"},
		{"empty task_type", `{"task_type":"","agent_type":"cost"}`, "task_type"},
		{"task_type with a space", `{"task_type":"a b","agent_type":"cost"}`, "task_type"},
		{"task_type a number", `{"task_type":5,"agent_type":"cost"}`, "task_type"},
		{"long task_type", `{"task_type":"` + strings.Repeat("t", 65) + `","agent_type":"cost"}`, "task_type"},
		{"no agent_type", `{"task_type":"analyze"}`, "agent_type"},
		{"bad agent_type", `{"task_type":"analyze","agent_type":"bogus"}`, "agent_type"},
		{"agent_type an array", `{"task_type":"analyze","agent_type":["cost"]}`, "agent_type"},
		{"parameters an array", `{` + valid + `,"parameters":[1]}`, "parameters"},
		{"parameters a string", `{` + valid + `,"parameters":"x"}`, "parameters"},
		{"parameters a number", `{` + valid + `,"parameters":5}`, "parameters"},
		{"parameters true", `{` + valid + `,"parameters":true}`, "parameters"},
		{"metadata an array", `{` + valid + `,"metadata":[]}`, "metadata"},
		{"metadata a string", `{` + valid + `,"metadata":"x"}`, "metadata"},
		{"timeout 0", `{` + valid + `,"timeout_seconds":0}`, "timeout_seconds"},
		{"timeout 301", `{` + valid + `,"timeout_seconds":301}`, "timeout_seconds"},
		{"timeout negative", `{` + valid + `,"timeout_seconds":-5}`, "timeout_seconds"},
		{"timeout a string", `{` + valid + `,"timeout_seconds":"5"}`, "timeout_seconds"},
		{"timeout a fraction", `{` + valid + `,"timeout_seconds":1.5}`, "timeout_seconds"},
		{"timeout huge", `{` + valid + `,"timeout_seconds":1e100}`, "timeout_seconds"},
		{"max_retries -1", `{` + valid + `,"max_retries":-1}`, "max_retries"},
		{"max_retries a string", `{` + valid + `,"max_retries":"3"}`, "max_retries"},
		{"priority a string", `{` + valid + `,"priority":"high"}`, "priority"},
		{"priority a fraction", `{` + valid + `,"priority":0.5}`, "priority"},
		{"agent_id a number", `{` + valid + `,"agent_id":7}`, "agent_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := expectError(t, tc.body, f.call(http.MethodPost, "/tasks", tc.body), http.StatusBadRequest)
			if !strings.HasPrefix(msg, tc.field+":") {
				t.Errorf("message %q does not name the field %s", msg, tc.field)
			}
		})
	}
	for _, body := range []string{"", "nope", "[]", "null", `{"task_type":"analyze"`, `{` + valid + `} {}`} {
		expectError(t, fmt.Sprintf("POST /tasks %q", body), f.call(http.MethodPost, "/tasks", body), http.StatusBadRequest)
	}
	if tasks := f.listTasks(t, "/tasks"); len(tasks) != 0 {
		t.Errorf("rejected submissions stored %d tasks", len(tasks))
	}
	// The limits themselves are accepted.
	for _, extra := range []string{`"timeout_seconds":1`, `"timeout_seconds":300`, `"max_retries":0`, `"priority":-100`} {
		f.submit(t, `{`+valid+`,`+extra+`}`)
	}
}

func TestSubmitTaskNoCapableAgent(t *testing.T) {
	f := newFixture(t, defaultConfig)
	submit503 := func(body string, wants ...string) {
		t.Helper()
		msg := expectError(t, "POST /tasks "+body, f.call(http.MethodPost, "/tasks", body), http.StatusServiceUnavailable)
		for _, want := range wants {
			if !strings.Contains(msg, want) {
				t.Errorf("503 message %q lacks %q", msg, want)
			}
		}
	}
	submit503(`{"task_type":"analyze","agent_type":"cost"}`, "cost", `"analyze"`)

	agent := newStubAgent(t, stubComplete)
	costID := f.registerStub(t, agent, "cost-agent", "cost", "analyze")
	perf := newStubAgent(t, stubComplete)
	perfID := f.registerStub(t, perf, "perf-agent", "performance", "analyze", "tune")

	submit503(`{"task_type":"report","agent_type":"cost"}`, "cost", `"report"`)         // nobody has the capability
	submit503(`{"task_type":"tune","agent_type":"cost"}`, "cost", `"tune"`)             // another type has it
	submit503(`{"task_type":"analyze","agent_type":"resource"}`, "resource", "analyze") // no agent of the type

	// A pinned agent that can never take the task is a mistake in the
	// request: 400 naming agent_id, since a retry cannot help.
	for _, tc := range []struct{ name, body, want string }{
		{"unknown", `{"task_type":"analyze","agent_type":"cost","agent_id":"no-such-agent"}`, "no-such-agent"},
		{"without the capability", `{"task_type":"report","agent_type":"cost","agent_id":"` + costID + `"}`, `"report"`},
		{"of another type", `{"task_type":"analyze","agent_type":"cost","agent_id":"` + perfID + `"}`, "performance"},
	} {
		msg := expectError(t, "pinned agent "+tc.name, f.call(http.MethodPost, "/tasks", tc.body), http.StatusBadRequest)
		if !strings.HasPrefix(msg, "agent_id:") || !strings.Contains(msg, tc.want) {
			t.Errorf("pinned agent %s: message %q does not name agent_id and %s", tc.name, msg, tc.want)
		}
	}
	m := f.submit(t, `{"task_type":"analyze","agent_type":"cost","agent_id":"`+costID+`"}`)
	if m["agent_id"] != costID {
		t.Errorf("pinned task went to %v, want %s", m["agent_id"], costID)
	}
	m = f.submit(t, `{"task_type":"tune","agent_type":"performance","agent_id":"`+perfID+`"}`)
	if m["agent_id"] != perfID {
		t.Errorf("pinned task went to %v, want %s", m["agent_id"], perfID)
	}

	// Degraded and unhealthy agents are not routable: 503, pinned or not.
	for _, status := range []string{"degraded", "unhealthy"} {
		expect(t, "heartbeat", f.call(http.MethodPost, "/agents/"+costID+"/heartbeat", `{"status":"`+status+`"}`), http.StatusOK)
		submit503(`{"task_type":"analyze","agent_type":"cost"}`, "cost", "analyze")
		submit503(`{"task_type":"analyze","agent_type":"cost","agent_id":"`+costID+`"}`, costID)
	}
	expect(t, "heartbeat", f.call(http.MethodPost, "/agents/"+costID+"/heartbeat", ""), http.StatusOK)
	f.submit(t, `{"task_type":"analyze","agent_type":"cost"}`)

	// An unregistered agent takes nothing; pinned to it, the request is wrong.
	expect(t, "unregister", f.call(http.MethodPost, "/agents/"+costID+"/unregister", ""), http.StatusOK)
	submit503(`{"task_type":"analyze","agent_type":"cost"}`, "cost", "analyze")
	expectError(t, "pinned to an unregistered agent",
		f.call(http.MethodPost, "/tasks", `{"task_type":"analyze","agent_type":"cost","agent_id":"`+costID+`"}`), http.StatusBadRequest)
}

// listTasks reads one page of tasks, checking its shape.
func (f *fixture) listTasks(t testing.TB, path string, header ...string) []map[string]any {
	t.Helper()
	tasks, _ := f.taskPage(t, path, header...)
	return tasks
}

// taskPage reads one page of tasks and its next_cursor.
func (f *fixture) taskPage(t testing.TB, path string, header ...string) ([]map[string]any, string) {
	t.Helper()
	m := expect(t, "GET "+path, f.call(http.MethodGet, path, "", header...), http.StatusOK)
	cursor, hasCursor := m["next_cursor"]
	if hasCursor {
		wantKeys(t, "GET "+path, m, "tasks", "count", "next_cursor")
	} else {
		wantKeys(t, "GET "+path, m, "tasks", "count")
	}
	raw, ok := m["tasks"].([]any)
	if !ok {
		t.Fatalf("GET %s tasks = %v (%T), want an array (never null)", path, m["tasks"], m["tasks"])
	}
	if n := wantInt(t, "count", m["count"]); n != len(raw) {
		t.Errorf("GET %s count = %d, but %d tasks listed", path, n, len(raw))
	}
	out := make([]map[string]any, len(raw))
	for i, v := range raw {
		obj, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("GET %s tasks[%d] = %v", path, i, v)
		}
		out[i] = checkTask(t, fmt.Sprintf("GET %s tasks[%d]", path, i), obj)
	}
	if hasCursor {
		c := wantString(t, "next_cursor", cursor)
		if c == "" {
			t.Errorf("GET %s next_cursor is empty", path)
		}
		return out, c
	}
	return out, ""
}

// allTasks pages through GET /tasks (query: extra parameters) with the
// given limit, returning the task ids in order.
func (f *fixture) allTasks(t testing.TB, query string, limit int) []string {
	t.Helper()
	var ids []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 100000 {
			t.Fatal("paging never ends")
		}
		path := fmt.Sprintf("/tasks?limit=%d%s", limit, query)
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		page, next := f.taskPage(t, path)
		if len(page) > limit {
			t.Fatalf("GET %s returned %d tasks", path, len(page))
		}
		for _, task := range page {
			ids = append(ids, task["task_id"].(string))
		}
		if next == "" {
			return ids
		}
		cursor = next
	}
}

func TestListTasks(t *testing.T) {
	f := newFixture(t, defaultConfig)
	if tasks := f.listTasks(t, "/tasks"); len(tasks) != 0 {
		t.Fatalf("GET /tasks = %v, want none", tasks)
	}
	if rec := f.get("/tasks"); !strings.Contains(rec.Body.String(), `"tasks":[]`) {
		t.Errorf("empty GET /tasks = %s, want \"tasks\":[]", rec.Body)
	}
	agent := newStubAgent(t, stubComplete)
	f.registerStub(t, agent, "cost-agent", "cost", "analyze")
	rejecting := newStubAgent(t, func(_ *stubAgent, w http.ResponseWriter, _ *http.Request, d stubDelivery) {
		replyJSON(w, http.StatusBadRequest, map[string]any{"task_id": d.TaskID, "status": "failed", "error": "cannot"})
	})
	f.registerStub(t, rejecting, "rejecting-agent", "resource", "scale")

	var submitted []string
	for i := range 5 {
		submitted = append(submitted, f.submit(t, fmt.Sprintf(`{"task_type":"analyze","agent_type":"cost","priority":%d}`, i))["task_id"].(string))
	}
	failedID := f.submit(t, `{"task_type":"scale","agent_type":"resource"}`)["task_id"].(string)
	submitted = append(submitted, failedID)
	for _, id := range submitted {
		f.waitTask(t, id)
	}
	failed := f.getTask(t, failedID)
	if failed["status"] != "failed" || !strings.Contains(fmt.Sprint(failed["error"]), "cannot") || failed["retry_count"] != float64(0) {
		t.Errorf("task refused with 400 = %v, want failed, not retried, with the agent's error", failed)
	}

	completed := f.listTasks(t, "/tasks?status=completed")
	if len(completed) != 5 {
		t.Fatalf("GET /tasks?status=completed lists %d, want 5", len(completed))
	}
	for i, task := range completed {
		if task["status"] != "completed" || task["task_id"] != submitted[i] {
			t.Errorf("completed[%d] = %v %v, want %s completed (oldest first)", i, task["task_id"], task["status"], submitted[i])
		}
	}
	if got := f.listTasks(t, "/tasks?status=failed"); len(got) != 1 || got[0]["task_id"] != failedID {
		t.Errorf("GET /tasks?status=failed = %v, want %s", got, failedID)
	}
	for _, st := range []string{"pending", "dispatched", "retrying", "timeout", "cancelled"} {
		if got := f.listTasks(t, "/tasks?status="+st); len(got) != 0 {
			t.Errorf("GET /tasks?status=%s = %d tasks, want none", st, len(got))
		}
	}
	if all := f.allTasks(t, "", 1000); !slices.Equal(all, submitted) {
		t.Errorf("GET /tasks = %v, want %v", all, submitted)
	}

	// Pagination: limit 2 visits all six, oldest first, in three pages.
	page, next := f.taskPage(t, "/tasks?limit=2")
	if len(page) != 2 || next == "" {
		t.Fatalf("first page of 2: %d tasks, next_cursor %q", len(page), next)
	}
	for _, limit := range []int{1, 2, 4, 5, 6, 7} {
		if got := f.allTasks(t, "", limit); !slices.Equal(got, submitted) {
			t.Errorf("paging by %d = %v, want %v", limit, got, submitted)
		}
	}
	if got := f.allTasks(t, "&status=completed", 2); !slices.Equal(got, submitted[:5]) {
		t.Errorf("paging completed by 2 = %v, want %v", got, submitted[:5])
	}

	for _, q := range []struct{ query, field string }{
		{"status=bogus", "status"},
		{"status=COMPLETED", "status"},
		{"limit=0", "limit"},
		{"limit=1001", "limit"},
		{"limit=abc", "limit"},
		{"limit=-1", "limit"},
		{"limit=1.5", "limit"},
		{"limit=99999999999999999999", "limit"},
		{"cursor=abc", "cursor"},
		{"cursor=-1", "cursor"},
	} {
		msg := expectError(t, "GET /tasks?"+q.query, f.get("/tasks?"+q.query), http.StatusBadRequest)
		if !strings.HasPrefix(msg, q.field+":") {
			t.Errorf("GET /tasks?%s: message %q does not name %s", q.query, msg, q.field)
		}
	}
	if got := f.listTasks(t, "/tasks?limit=1000"); len(got) != 6 {
		t.Errorf("limit=1000 lists %d", len(got))
	}
	// Cursors at the edges: 0 is the start, past the end is an empty page.
	if got := f.listTasks(t, "/tasks?cursor=0"); len(got) != 6 {
		t.Errorf("cursor=0 lists %d, want all 6", len(got))
	}
	for _, cursor := range []string{"999999", "18446744073709551615"} {
		if page, next := f.taskPage(t, "/tasks?cursor="+cursor); len(page) != 0 || next != "" {
			t.Errorf("cursor=%s lists %d tasks (next_cursor %q), want none", cursor, len(page), next)
		}
	}
	expectError(t, "cursor past uint64", f.get("/tasks?cursor=18446744073709551616"), http.StatusBadRequest)
	// Empty parameters are the defaults.
	if got := f.listTasks(t, "/tasks?status=&limit=&cursor="); len(got) != 6 {
		t.Errorf("empty query parameters list %d, want all 6", len(got))
	}

	msg := expectError(t, "GET unknown task", f.get("/tasks/no-such-task"), http.StatusNotFound)
	if !strings.Contains(msg, "no-such-task") {
		t.Errorf("404 message %q does not name the task", msg)
	}
}

func TestCancelTask(t *testing.T) {
	f := newFixture(t, defaultConfig)
	slow := newStubAgent(t, stubHold)
	f.registerStub(t, slow, "slow-agent", "cost", "analyze")

	id := f.submit(t, `{"task_type":"analyze","agent_type":"cost","timeout_seconds":300}`)["task_id"].(string)
	if got := receive(t, "delivery", slow.arrived); got != id {
		t.Fatalf("agent received %s, want %s", got, id)
	}
	if st := f.getTask(t, id)["status"]; st != "dispatched" {
		t.Fatalf("held task is %v, want dispatched", st)
	}
	task := checkTask(t, "DELETE", expect(t, "DELETE /tasks/"+id, f.call(http.MethodDelete, "/tasks/"+id, ""), http.StatusOK))
	if task["status"] != "cancelled" || task["task_id"] != id {
		t.Fatalf("DELETE = %v, want task %s cancelled", task, id)
	}
	if got := receive(t, "the agent's request cancelled", slow.aborted); got != id {
		t.Errorf("aborted %s, want %s", got, id)
	}
	time.Sleep(20 * time.Millisecond) // let the aborted attempt settle
	if got := f.getTask(t, id); got["status"] != "cancelled" || got["completed_at"] != task["completed_at"] {
		t.Errorf("after the attempt was aborted, the task = %v, want it as cancelled", got)
	}
	msg := expectError(t, "DELETE again", f.call(http.MethodDelete, "/tasks/"+id, ""), http.StatusConflict)
	if !strings.Contains(msg, "cancelled") {
		t.Errorf("409 message %q does not say the task is cancelled", msg)
	}
	msg = expectError(t, "DELETE unknown", f.call(http.MethodDelete, "/tasks/no-such-task", ""), http.StatusNotFound)
	if !strings.Contains(msg, "no-such-task") {
		t.Errorf("404 message %q does not name the task", msg)
	}

	// A finished task cannot be cancelled either.
	quick := newStubAgent(t, stubComplete)
	f.registerStub(t, quick, "quick-agent", "cost", "report")
	done := f.submit(t, `{"task_type":"report","agent_type":"cost"}`)["task_id"].(string)
	f.waitTask(t, done)
	expectError(t, "DELETE completed", f.call(http.MethodDelete, "/tasks/"+done, ""), http.StatusConflict)
	if st := f.getTask(t, done)["status"]; st != "completed" {
		t.Errorf("completed task after DELETE = %v", st)
	}
}

func TestCancelQueuedTaskAndQueueFull(t *testing.T) {
	cfg := testDispatchConfig
	cfg.MaxPending, cfg.AgentConcurrency = 1, 1
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: testAgentsConfig, dispatch: cfg})
	slow := newStubAgent(t, stubHold)
	agentID := f.registerStub(t, slow, "slow-agent", "cost", "analyze")
	body := `{"task_type":"analyze","agent_type":"cost","timeout_seconds":300}`

	first := f.submit(t, body)
	if first["status"] != "dispatched" || first["agent_id"] != agentID {
		t.Fatalf("first task = %v, want dispatched to %s", first, agentID)
	}
	receive(t, "first delivery", slow.arrived)
	second := f.submit(t, body)
	if second["status"] != "pending" || second["agent_id"] != "" {
		t.Fatalf("second task = %v, want pending with agent_id \"\"", second)
	}
	rec := f.call(http.MethodPost, "/tasks", body)
	msg := expectError(t, "third task", rec, http.StatusTooManyRequests)
	if rec.Header().Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if !strings.Contains(msg, "queue") {
		t.Errorf("429 message %q does not say the queue is full", msg)
	}
	if n := len(f.listTasks(t, "/tasks")); n != 2 {
		t.Errorf("%d tasks stored, want 2: the refused one must not be", n)
	}

	// Cancelling the queued task frees the queue.
	secondID := second["task_id"].(string)
	if got := checkTask(t, "DELETE", expect(t, "DELETE queued", f.call(http.MethodDelete, "/tasks/"+secondID, ""), http.StatusOK)); got["status"] != "cancelled" {
		t.Errorf("DELETE queued = %v", got)
	}
	third := f.submit(t, body)
	if third["status"] != "pending" {
		t.Fatalf("third task = %v, want pending", third)
	}
	expectError(t, "fourth task", f.call(http.MethodPost, "/tasks", body), http.StatusTooManyRequests)

	// Cancelling the running task lets the queued one start on the agent.
	firstID := first["task_id"].(string)
	expect(t, "DELETE running", f.call(http.MethodDelete, "/tasks/"+firstID, ""), http.StatusOK)
	if got := receive(t, "abort of the first", slow.aborted); got != firstID {
		t.Errorf("aborted %s, want %s", got, firstID)
	}
	thirdID := third["task_id"].(string)
	if got := receive(t, "delivery of the third", slow.arrived); got != thirdID {
		t.Errorf("agent received %s, want the queued %s", got, thirdID)
	}
	if task := f.getTask(t, thirdID); task["status"] != "dispatched" || task["agent_id"] != agentID {
		t.Errorf("queued task after the slot freed = %v", task)
	}
	if task := f.getTask(t, secondID); task["status"] != "cancelled" {
		t.Errorf("cancelled queued task = %v", task)
	}
	for _, d := range slow.deliveries() {
		if d.TaskID == secondID {
			t.Error("the cancelled queued task was delivered")
		}
	}
	expect(t, "DELETE third", f.call(http.MethodDelete, "/tasks/"+thirdID, ""), http.StatusOK)
	receive(t, "abort of the third", slow.aborted)
}

func TestTaskRetriesAndFailures(t *testing.T) {
	f := newFixture(t, defaultConfig)
	var mu sync.Mutex
	calls := map[string]int{}
	flaky := newStubAgent(t, func(_ *stubAgent, w http.ResponseWriter, _ *http.Request, d stubDelivery) {
		mu.Lock()
		calls[d.TaskID]++
		n := calls[d.TaskID]
		mu.Unlock()
		var params map[string]string
		_ = json.Unmarshal(d.Body["parameters"], &params)
		switch {
		case params["mode"] == "500" && n < 3:
			replyJSON(w, http.StatusInternalServerError, map[string]any{"task_id": d.TaskID, "status": "failed", "error": "boom"})
		case params["mode"] == "200failed":
			replyJSON(w, http.StatusOK, map[string]any{"task_id": d.TaskID, "status": "failed", "error": "soft failure"})
		case params["mode"] == "garbage":
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "not json")
		default:
			replyJSON(w, http.StatusOK, map[string]any{"task_id": d.TaskID, "status": "completed", "result": n})
		}
	})
	f.registerStub(t, flaky, "flaky", "cost", "analyze")

	id := f.submit(t, `{"task_type":"analyze","agent_type":"cost","parameters":{"mode":"500"}}`)["task_id"].(string)
	task := f.waitTask(t, id)
	if task["status"] != "completed" || task["retry_count"] != float64(2) || task["result"] != float64(3) {
		t.Errorf("task failing twice with 500 = %v, want completed on the third attempt, retry_count 2", task)
	}
	if e, ok := task["error"]; ok {
		t.Errorf("completed task keeps the error %v of a failed attempt", e)
	}
	id = f.submit(t, `{"task_type":"analyze","agent_type":"cost","parameters":{"mode":"200failed"},"max_retries":1}`)["task_id"].(string)
	task = f.waitTask(t, id)
	if task["status"] != "failed" || task["retry_count"] != float64(1) || !strings.Contains(fmt.Sprint(task["error"]), "soft failure") {
		t.Errorf("task answered 200 failed = %v, want failed after 1 retry with the agent's error", task)
	}
	id = f.submit(t, `{"task_type":"analyze","agent_type":"cost","parameters":{"mode":"500"},"max_retries":0}`)["task_id"].(string)
	task = f.waitTask(t, id)
	if task["status"] != "failed" || task["retry_count"] != float64(0) {
		t.Errorf("task with max_retries 0 = %v, want failed without retries", task)
	}
	if _, ok := task["result"]; ok {
		t.Errorf("failed task has a result: %v", task)
	}
	id = f.submit(t, `{"task_type":"analyze","agent_type":"cost","parameters":{"mode":"garbage"},"max_retries":0}`)["task_id"].(string)
	if task = f.waitTask(t, id); task["status"] != "failed" {
		t.Errorf("task answered 200 with a non-JSON body = %v, want failed", task)
	}
}

func TestTaskTimeout(t *testing.T) {
	f := newFixture(t, defaultConfig)
	slow := newStubAgent(t, stubHold)
	f.registerStub(t, slow, "slow-agent", "cost", "analyze")
	id := f.submit(t, `{"task_type":"analyze","agent_type":"cost","timeout_seconds":1,"max_retries":0}`)["task_id"].(string)
	task := f.waitTask(t, id)
	if task["status"] != "timeout" {
		t.Errorf("task held past its timeout = %v, want timeout", task)
	}
	if got := receive(t, "abort after the timeout", slow.aborted); got != id {
		t.Errorf("aborted %s, want %s", got, id)
	}
	expectError(t, "DELETE timed out task", f.call(http.MethodDelete, "/tasks/"+id, ""), http.StatusConflict)
}

// TestQueueFullConcurrently submits to a full queue from several
// goroutines while others free and refill it: each answer is 201 or 429,
// and the queue ends empty. Run with the race detector, it also checks
// that a refusal does not read the queue's state unlocked.
func TestQueueFullConcurrently(t *testing.T) {
	cfg := testDispatchConfig
	cfg.MaxPending, cfg.AgentConcurrency = 1, 1
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: testAgentsConfig, dispatch: cfg})
	slow := newStubAgent(t, stubHold)
	f.registerStub(t, slow, "slow-agent", "cost", "analyze")
	body := `{"task_type":"analyze","agent_type":"cost","timeout_seconds":300}`
	running := f.submit(t, body)["task_id"].(string)
	receive(t, "first delivery", slow.arrived)

	var mu sync.Mutex
	accepted, refused := 0, 0
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				rec := f.call(http.MethodPost, "/tasks", body)
				switch rec.Code {
				case http.StatusCreated:
					var m struct {
						TaskID string `json:"task_id"`
						Status string `json:"status"`
					}
					_ = json.Unmarshal(rec.Body.Bytes(), &m)
					if m.Status != "pending" {
						t.Errorf("task %s submitted %s, want pending: the only slot is taken", m.TaskID, m.Status)
					}
					if del := f.call(http.MethodDelete, "/tasks/"+m.TaskID, ""); del.Code != http.StatusOK {
						t.Errorf("DELETE pending %s = %d %s", m.TaskID, del.Code, del.Body)
					}
					mu.Lock()
					accepted++
					mu.Unlock()
				case http.StatusTooManyRequests:
					if _, err := errorMessage(rec); err != nil {
						t.Error(err)
					}
					mu.Lock()
					refused++
					mu.Unlock()
				default:
					t.Errorf("POST /tasks = %d %s, want 201 or 429", rec.Code, rec.Body)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d accepted and cancelled, %d refused", accepted, refused)
	if accepted == 0 {
		t.Error("no submission was accepted: the queue never had room")
	}
	if n := len(f.allTasks(t, "&status=cancelled", 1000)); n != accepted {
		t.Errorf("%d tasks cancelled, want %d", n, accepted)
	}
	if depth := gaugeValue(t, f, "orchestrator_task_queue_depth"); depth != 0 {
		t.Errorf("queue depth %v after every queued task was cancelled", depth)
	}
	expect(t, "DELETE running", f.call(http.MethodDelete, "/tasks/"+running, ""), http.StatusOK)
	receive(t, "abort", slow.aborted)
}

func TestQueuedTaskTimesOut(t *testing.T) {
	cfg := testDispatchConfig
	cfg.AgentConcurrency = 1
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: testAgentsConfig, dispatch: cfg})
	slow := newStubAgent(t, stubHold)
	f.registerStub(t, slow, "slow-agent", "cost", "analyze")
	running := f.submit(t, `{"task_type":"analyze","agent_type":"cost","timeout_seconds":300}`)["task_id"].(string)
	receive(t, "delivery", slow.arrived)
	queued := f.submit(t, `{"task_type":"analyze","agent_type":"cost","timeout_seconds":1}`)
	if queued["status"] != "pending" {
		t.Fatalf("second task = %v, want pending", queued)
	}
	task := f.waitTask(t, queued["task_id"].(string))
	if task["status"] != "timeout" || !strings.Contains(fmt.Sprint(task["error"]), "free slot") {
		t.Errorf("task that waited past its timeout = %v, want timeout, saying no slot was free", task)
	}
	if _, ok := task["started_at"]; ok {
		t.Errorf("a task that never started has started_at %v", task["started_at"])
	}
	for _, d := range slow.deliveries() {
		if d.TaskID == queued["task_id"] {
			t.Error("the timed-out task was delivered")
		}
	}
	expect(t, "DELETE running", f.call(http.MethodDelete, "/tasks/"+running, ""), http.StatusOK)
	receive(t, "abort", slow.aborted)
}

func TestTaskResultTooLarge(t *testing.T) {
	cfg := testDispatchConfig
	cfg.MaxResultBytes = 1024
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: testAgentsConfig, dispatch: cfg})
	agent := newStubAgent(t, func(_ *stubAgent, w http.ResponseWriter, _ *http.Request, d stubDelivery) {
		replyJSON(w, http.StatusOK, map[string]any{"task_id": d.TaskID, "status": "completed", "result": strings.Repeat("x", 2000)})
	})
	f.registerStub(t, agent, "big", "cost", "analyze")
	id := f.submit(t, `{"task_type":"analyze","agent_type":"cost"}`)["task_id"].(string)
	task := f.waitTask(t, id)
	if task["status"] != "failed" || !strings.Contains(fmt.Sprint(task["error"]), "TASK_MAX_RESULT_BYTES") || task["retry_count"] != float64(0) {
		t.Errorf("task with a 2 kB result over a 1 kB limit = %v, want failed without retries, naming TASK_MAX_RESULT_BYTES", task)
	}
	if n := len(agent.deliveries()); n != 1 {
		t.Errorf("agent got %d deliveries, want 1", n)
	}
}

// TestAgentRegistrationStartsAWaitingTask: a task waiting for a free slot
// starts as soon as another capable agent registers, not when the busy
// agent frees its slot (300 s away here). The registry wakes the
// dispatcher on every registration and heartbeat: app.New wires that, and
// this is what catches the wiring going missing.
func TestAgentRegistrationStartsAWaitingTask(t *testing.T) {
	cfg := testDispatchConfig
	cfg.AgentConcurrency = 1
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: testAgentsConfig, dispatch: cfg})
	busy := newStubAgent(t, stubHold)
	f.registerStub(t, busy, "busy-agent", "cost", "analyze")
	running := f.submit(t, `{"task_type":"analyze","agent_type":"cost","timeout_seconds":300}`)["task_id"].(string)
	receive(t, "delivery to the busy agent", busy.arrived)
	queued := f.submit(t, `{"task_type":"analyze","agent_type":"cost","timeout_seconds":300}`)
	if queued["status"] != "pending" {
		t.Fatalf("second task = %v, want pending: the only agent's one slot is taken", queued)
	}
	free := newStubAgent(t, stubComplete)
	f.registerStub(t, free, "free-agent", "cost", "analyze")
	if id := receive(t, "delivery to the agent that registered", free.arrived); id != queued["task_id"] {
		t.Fatalf("the new agent got task %s, want the waiting task %v", id, queued["task_id"])
	}
	if task := f.waitTask(t, queued["task_id"].(string)); task["status"] != "completed" {
		t.Errorf("waiting task = %v, want completed by the agent that registered", task)
	}
	expect(t, "DELETE running", f.call(http.MethodDelete, "/tasks/"+running, ""), http.StatusOK)
	receive(t, "abort", busy.aborted)
}
