package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// deliver POSTs body to h as the orchestrator does and returns the status
// and the decoded reply.
func deliver(t *testing.T, h http.Handler, method, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, "/task", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var reply map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &reply); err != nil {
		t.Fatalf("reply %q: %v", rec.Body, err)
	}
	if ms, ok := reply["execution_time_ms"].(float64); ok && ms < 0 {
		t.Errorf("execution_time_ms %v", ms)
	}
	delete(reply, "execution_time_ms") // it varies
	return rec.Code, reply
}

const delivery = `{"task_id":"t-1","task_type":"analyze","parameters":{"n":2},"timeout_seconds":30,"priority":5,"metadata":{"by":"ops"}}`

func TestTaskHandlerReplies(t *testing.T) {
	cases := []struct {
		name       string
		method     string
		body       string
		fn         TaskFunc
		wantStatus int
		wantReply  map[string]any
	}{
		{"a result completes the task", "POST", delivery,
			func(context.Context, Delivery) (any, error) { return map[string]int{"saved": 3}, nil },
			200, map[string]any{"task_id": "t-1", "status": "completed", "result": map[string]any{"saved": 3.0}}},
		{"a raw JSON result is sent as is", "POST", delivery,
			func(context.Context, Delivery) (any, error) { return json.RawMessage(`[1, 2]`), nil },
			200, map[string]any{"task_id": "t-1", "status": "completed", "result": []any{1.0, 2.0}}},
		{"no result: no result key", "POST", delivery,
			func(context.Context, Delivery) (any, error) { return nil, nil },
			200, map[string]any{"task_id": "t-1", "status": "completed"}},
		{"an error is a retryable failure", "POST", delivery,
			func(context.Context, Delivery) (any, error) {
				return map[string]int{"partial": 1}, errors.New("backend down")
			},
			500, map[string]any{"task_id": "t-1", "status": "failed", "error": "backend down"}},
		{"a rejected error fails the task at once", "POST", delivery,
			func(context.Context, Delivery) (any, error) { return nil, Reject(fmt.Errorf("no account %q", "x")) },
			400, map[string]any{"task_id": "t-1", "status": "failed", "error": `no account "x"`}},
		{"a wrapped rejection is still one", "POST", delivery,
			func(context.Context, Delivery) (any, error) {
				return nil, fmt.Errorf("parameters: %w", Reject(errors.New("n < 0")))
			},
			400, map[string]any{"task_id": "t-1", "status": "failed", "error": "parameters: n < 0"}},
		{"a result that cannot be encoded is a failure", "POST", delivery,
			func(context.Context, Delivery) (any, error) { return make(chan int), nil },
			500, map[string]any{"task_id": "t-1", "status": "failed", "error": "encoding the result: json: unsupported type: chan int"}},
		{"a panic is a retryable failure", "POST", delivery,
			func(context.Context, Delivery) (any, error) { panic("boom") },
			500, map[string]any{"task_id": "t-1", "status": "failed", "error": "the agent panicked: boom"}},
		{"not JSON", "POST", `{"task_id":`, nil,
			400, map[string]any{"task_id": "", "status": "failed", "error": "the delivery is not a JSON task: unexpected end of JSON input"}},
		{"a field of the wrong type", "POST", `{"task_id":"t-1","task_type":"a","priority":"high"}`, nil,
			400, map[string]any{"task_id": "", "status": "failed", "error": "the delivery is not a JSON task: json: cannot unmarshal string into Go struct field Delivery.priority of type int"}},
		{"no task_id", "POST", `{"task_type":"analyze","parameters":{}}`, nil,
			400, map[string]any{"task_id": "", "status": "failed", "error": "the delivery has no task_id or no task_type"}},
		{"not a POST", "GET", "", nil,
			405, map[string]any{"task_id": "", "status": "failed", "error": "GET is not allowed: deliveries are POSTed"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			called := false
			fn := tc.fn
			if fn == nil {
				fn = func(context.Context, Delivery) (any, error) { called = true; return nil, nil }
			}
			h := &TaskHandler{Func: fn, ErrorLog: log.New(io.Discard, "", 0)}
			status, reply := deliver(t, h, tc.method, tc.body)
			if status != tc.wantStatus || !reflect.DeepEqual(reply, tc.wantReply) {
				t.Errorf("answered %d %v, want %d %v", status, reply, tc.wantStatus, tc.wantReply)
			}
			if called {
				t.Error("the task function was called for a delivery it should not see")
			}
		})
	}
}

func TestTaskHandlerPassesTheDelivery(t *testing.T) {
	var got Delivery
	var deadline bool
	h := TaskFunc(func(ctx context.Context, d Delivery) (any, error) {
		got = d
		_, deadline = ctx.Deadline()
		return nil, nil
	})
	if status, _ := deliver(t, h, "POST", delivery); status != 200 {
		t.Fatalf("status %d", status)
	}
	want := Delivery{TaskID: "t-1", TaskType: "analyze", Parameters: json.RawMessage(`{"n":2}`), TimeoutSeconds: 30, Priority: 5,
		Metadata: json.RawMessage(`{"by":"ops"}`)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the function got %+v, want %+v", got, want)
	}
	if !deadline {
		t.Error("the function's context has no deadline, want one from timeout_seconds")
	}

	// Parameters are always an object for the function.
	for _, params := range []string{``, `,"parameters":null`} {
		deliver(t, h, "POST", `{"task_id":"t-2","task_type":"a"`+params+`}`)
		if string(got.Parameters) != `{}` {
			t.Errorf("delivery with parameters %q: the function got %s, want {}", params, got.Parameters)
		}
	}
}

func TestTaskHandlerLimitsTheBody(t *testing.T) {
	called := false
	h := &TaskHandler{MaxBodyBytes: 64, Func: func(context.Context, Delivery) (any, error) { called = true; return nil, nil }}
	body := `{"task_id":"t-1","task_type":"a","parameters":{"pad":"` + strings.Repeat("x", 64) + `"}}`
	status, reply := deliver(t, h, "POST", body)
	if status != http.StatusRequestEntityTooLarge || reply["error"] != "the delivery is larger than this agent's limit of 64 bytes" || called {
		t.Errorf("a 100-byte delivery with a 64-byte limit: %d %v (called %v), want 413 and no call", status, reply, called)
	}
	h.MaxBodyBytes = 0 // the default takes it
	if status, _ := deliver(t, h, "POST", body); status != 200 || !called {
		t.Errorf("with the default limit: %d, called %v", status, called)
	}
	big := `{"task_id":"t-1","task_type":"a","parameters":{"pad":"` + strings.Repeat("x", DefaultMaxDeliveryBytes) + `"}}`
	if status, _ := deliver(t, h, "POST", big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("a delivery over DefaultMaxDeliveryBytes: %d, want 413", status)
	}
}

func TestTaskHandlerLogsPanics(t *testing.T) {
	var logged bytes.Buffer
	h := &TaskHandler{ErrorLog: log.New(&logged, "", 0), Func: func(context.Context, Delivery) (any, error) { panic("boom") }}
	deliver(t, h, "POST", delivery)
	if !strings.Contains(logged.String(), "task t-1 (analyze): panic: boom") || !strings.Contains(logged.String(), "goroutine") {
		t.Errorf("logged %q, want the panic and its stack", logged.String())
	}
}

func TestReject(t *testing.T) {
	if Reject(nil) != nil {
		t.Error("Reject(nil) is not nil")
	}
	base := errors.New("bad")
	err := Reject(base)
	if !errors.Is(err, base) || !IsRejected(err) || IsRejected(base) || err.Error() != "bad" {
		t.Errorf("Reject(%v) = %v: want it to wrap, be rejected, and keep the message", base, err)
	}
}

// fakeOrchestrator answers registrations and heartbeats from queues of
// status codes (201/200 when empty) and records the calls.
type fakeOrchestrator struct {
	mu         sync.Mutex
	register   []int
	heartbeat  []int
	calls      []string
	heartbeats []string // bodies
	ids        int
}

func (f *fakeOrchestrator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	next := func(q *[]int, def int) int {
		if len(*q) == 0 {
			return def
		}
		code := (*q)[0]
		*q = (*q)[1:]
		return code
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/agents/register":
		if code := next(&f.register, 201); code != 201 {
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"error":"refused with %d"}`, code)
			return
		}
		f.ids++
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"agent_id":"a%d","heartbeat_interval_seconds":7}`, f.ids)
	case strings.HasSuffix(r.URL.Path, "/heartbeat"):
		f.heartbeats = append(f.heartbeats, string(body))
		if code := next(&f.heartbeat, 200); code != 200 {
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"error":"refused with %d"}`, code)
			return
		}
		_, _ = io.WriteString(w, `{"received":true,"next_interval_seconds":9}`)
	case strings.HasSuffix(r.URL.Path, "/unregister"):
		_, _ = io.WriteString(w, `{"message":"bye"}`)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeOrchestrator) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// runHeartbeater runs h, its waits recorded instead of slept; the run is
// stopped at the stopAt-th wait. It returns the waits and Run's error.
func runHeartbeater(t *testing.T, h *Heartbeater, stopAt int) ([]time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []time.Duration
	h.wait = func(ctx context.Context, d time.Duration) bool {
		waits = append(waits, d)
		if len(waits) >= stopAt {
			cancel()
			return false
		}
		return ctx.Err() == nil
	}
	err := h.Run(ctx)
	return waits, err
}

func TestHeartbeaterRegistersHeartbeatsAndUnregisters(t *testing.T) {
	f := &fakeOrchestrator{register: []int{503, 500, 429, 503, 503, 503, 503}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	var logs []string
	h := &Heartbeater{
		Client:       newTestClient(t, srv.URL),
		Registration: Registration{Name: "a", Type: AgentTypeCost, Host: "127.0.0.1", Port: 9000},
		Report:       func() HeartbeatRequest { return HeartbeatRequest{Status: AgentDegraded} },
		Logf:         func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) },
	}
	waits, err := runHeartbeater(t, h, 10)
	if err != nil {
		t.Fatal(err)
	}
	// Seven refused registrations: backoff doubling to its cap. Then the
	// first heartbeat at once, and the next ones at the interval the
	// orchestrator names: the registration's, then the heartbeats'.
	ms := time.Millisecond
	want := []time.Duration{200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5000 * ms, 5000 * ms, 9 * time.Second, 9 * time.Second, 9 * time.Second}
	if !reflect.DeepEqual(waits, want) {
		t.Errorf("waited %v, want %v", waits, want)
	}
	calls := f.seen()
	wantTail := []string{"POST /agents/register", "POST /agents/a1/heartbeat", "POST /agents/a1/heartbeat", "POST /agents/a1/heartbeat", "POST /agents/a1/unregister"}
	if len(calls) != 7+len(wantTail) || !reflect.DeepEqual(calls[7:], wantTail) {
		t.Errorf("calls %v, want 7 refused registrations then %v", calls, wantTail)
	}
	for _, hb := range f.heartbeats {
		if hb != `{"status":"degraded"}` {
			t.Errorf("heartbeat body %s, want the Report's", hb)
		}
	}
	if h.AgentID() != "" {
		t.Errorf("AgentID() = %q after Run, want empty", h.AgentID())
	}
	joined := strings.Join(logs, "\n")
	for _, line := range []string{"register: orchestrator: POST /agents/register: 503: refused with 503 (retrying in 200ms)", "registered as a1; heartbeat every 7s", "unregistered a1"} {
		if !strings.Contains(joined, line) {
			t.Errorf("logs %q: missing %q", logs, line)
		}
	}
}

func TestHeartbeaterRegistersAgainOn404(t *testing.T) {
	f := &fakeOrchestrator{heartbeat: []int{200, 500, 404, 404, 404}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	h := &Heartbeater{Client: newTestClient(t, srv.URL), Registration: Registration{Name: "a", Type: AgentTypeCost, Host: "h", Port: 1}}
	waits, err := runHeartbeater(t, h, 6)
	if err != nil {
		t.Fatal(err)
	}
	// A 500 is only logged. A 404 after heartbeats that worked registers
	// again at once; a 404 right after a registration waits a backoff
	// first, so that an orchestrator that keeps forgetting is not hammered.
	want := []string{
		"POST /agents/register", "POST /agents/a1/heartbeat", // 200, wait 9s
		"POST /agents/a1/heartbeat",                          // 500, wait 9s
		"POST /agents/a1/heartbeat",                          // 404: again at once
		"POST /agents/register", "POST /agents/a2/heartbeat", // 404: wait 200ms
		"POST /agents/register", "POST /agents/a3/heartbeat", // 404: wait 400ms
		"POST /agents/register", "POST /agents/a4/heartbeat", // 200, wait 9s: reset
		"POST /agents/a4/heartbeat", // 200, wait 9s: stop
		"POST /agents/a4/unregister",
	}
	ms := time.Millisecond
	wantWaits := []time.Duration{9 * time.Second, 9 * time.Second, 200 * ms, 400 * ms, 9 * time.Second, 9 * time.Second}
	if got := f.seen(); !reflect.DeepEqual(got, want) || !reflect.DeepEqual(waits, wantWaits) {
		t.Errorf("calls %v\nwant  %v\nwaits %v, want %v", got, want, waits, wantWaits)
	}
}

func TestHeartbeaterStopsOnAPermanentRefusal(t *testing.T) {
	for _, code := range []int{400, 401, 403} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := &fakeOrchestrator{register: []int{503, code}}
			srv := httptest.NewServer(f)
			defer srv.Close()
			h := &Heartbeater{Client: newTestClient(t, srv.URL, WithToken(testToken)), Registration: Registration{Name: "a"}}
			waits, err := runHeartbeater(t, h, 100)
			var apiErr *APIError
			if !errors.As(err, &apiErr) || apiErr.StatusCode != code || strings.Contains(err.Error(), testToken) {
				t.Errorf("Run = %v, want the %d APIError, without the token", err, code)
			}
			if len(waits) != 1 || len(f.seen()) != 2 {
				t.Errorf("waits %v, calls %v: want one retry, then the stop", waits, f.seen())
			}
		})
	}
}

func TestHeartbeaterNeedsAClient(t *testing.T) {
	if err := (&Heartbeater{}).Run(context.Background()); err == nil {
		t.Error("Run without a Client: no error")
	}
}

// TestTaskHandlerLetsAnAbortThrough keeps net/http's own abort
// (http.ErrAbortHandler) a panic: it closes the connection quietly.
func TestTaskHandlerLetsAnAbortThrough(t *testing.T) {
	h := TaskFunc(func(context.Context, Delivery) (any, error) { panic(http.ErrAbortHandler) })
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Errorf("panicked with %v, want http.ErrAbortHandler", p)
		}
	}()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/task", strings.NewReader(delivery)))
	t.Error("ServeHTTP returned: the abort was swallowed")
}
