package dispatch_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is a real registry and dispatcher on in-memory stores, with
// fake agents on loopback.
type harness struct {
	t      *testing.T
	agents *registry.Registry
	d      *dispatch.Dispatcher
	logs   *observer.ObservedLogs
	stop   func()
}

var testConfig = dispatch.Config{
	AgentConcurrency: 4,
	MaxPending:       100,
	Retention:        time.Hour,
	RetryBackoff:     time.Millisecond,
	RetryBackoffMax:  5 * time.Millisecond,
	MaxResultBytes:   1 << 20,
}

func newHarness(t *testing.T, cfg dispatch.Config) *harness {
	t.Helper()
	return newHarnessWith(t, cfg, dispatch.NewMemoryStore())
}

// newHarnessWith is newHarness on the given task store.
func newHarnessWith(t *testing.T, cfg dispatch.Config, store dispatch.Store) *harness {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	agents, err := registry.New(registry.Options{
		Config: registry.Config{
			HeartbeatInterval: time.Minute, MissedHeartbeats: 3, EvictAfter: time.Hour,
			AllowedNetworks: []string{"127.0.0.0/8"},
		},
		Store:  registry.NewMemoryStore(),
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := dispatch.New(dispatch.Options{Config: cfg, Store: store, Agents: agents, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	agents.OnChange(d.Pump)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx)
	}()
	var once sync.Once
	h := &harness{t: t, agents: agents, d: d, logs: logs, stop: func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}}
	t.Cleanup(h.stop)
	return h
}

// fakeAgent is an agent's /task endpoint that records what it received.
type fakeAgent struct {
	id     string
	srv    *httptest.Server
	mu     sync.Mutex
	got    []received
	answer func(w http.ResponseWriter, r *http.Request, body received)
}

type received struct {
	ContentType string
	TaskID      string          `json:"task_id"`
	TaskType    string          `json:"task_type"`
	Parameters  json.RawMessage `json:"parameters"`
	Timeout     int             `json:"timeout_seconds"`
	Priority    int             `json:"priority"`
	Metadata    json.RawMessage `json:"metadata"`
	Raw         map[string]json.RawMessage
}

// completed answers like an OptiInfra agent that ran the task.
func completed(result string) func(http.ResponseWriter, *http.Request, received) {
	return func(w http.ResponseWriter, _ *http.Request, b received) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"task_id":%q,"status":"completed","result":%s,"execution_time_ms":1.5}`, b.TaskID, result)
	}
}

// failing answers with code and an agent error body.
func failing(code int) func(http.ResponseWriter, *http.Request, received) {
	return func(w http.ResponseWriter, _ *http.Request, b received) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"task_id":%q,"status":"failed","error":"handler says no (%d)"}`, b.TaskID, code)
	}
}

// addAgent starts a fake agent and registers it as a cost agent.
func (h *harness) addAgent(name string, answer func(http.ResponseWriter, *http.Request, received), caps ...string) *fakeAgent {
	h.t.Helper()
	fa := &fakeAgent{answer: answer}
	fa.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/task" {
			http.Error(w, "wrong endpoint", http.StatusTeapot)
			return
		}
		data, _ := io.ReadAll(r.Body)
		var b received
		_ = json.Unmarshal(data, &b)
		_ = json.Unmarshal(data, &b.Raw)
		b.ContentType = r.Header.Get("Content-Type")
		fa.mu.Lock()
		fa.got = append(fa.got, b)
		answer := fa.answer
		fa.mu.Unlock()
		answer(w, r, b)
	}))
	h.t.Cleanup(fa.srv.Close)
	_, portStr, _ := net.SplitHostPort(fa.srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	if len(caps) == 0 {
		caps = []string{"analyze"}
	}
	a, _, err := h.agents.Register(context.Background(), registry.Registration{
		Name: name, Type: "cost", Host: "127.0.0.1", Port: port, Capabilities: caps,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	fa.id = a.ID
	return fa
}

// addBusyAgent adds an agent that answers nothing until the test ends or
// the orchestrator gives up the call: its slots stay taken.
func (h *harness) addBusyAgent() *fakeAgent {
	release := make(chan struct{})
	fa := h.addAgent("busy", func(_ http.ResponseWriter, r *http.Request, _ received) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	// Registered after the agent's server: cleanups run last first, so the
	// held calls end before the server waits for them to close.
	h.t.Cleanup(func() { close(release) })
	return fa
}

func (fa *fakeAgent) received() []received {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return append([]received(nil), fa.got...)
}

func (fa *fakeAgent) setAnswer(answer func(http.ResponseWriter, *http.Request, received)) {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	fa.answer = answer
}

func intp(n int) *int { return &n }

func (h *harness) submit(req dispatch.Request) dispatch.Task {
	h.t.Helper()
	if req.AgentType == "" {
		req.AgentType = "cost"
	}
	if req.TaskType == "" {
		req.TaskType = "analyze"
	}
	t, err := h.d.Submit(context.Background(), req)
	if err != nil {
		h.t.Fatalf("Submit: %v", err)
	}
	return t
}

// wait polls task id until it is terminal.
func (h *harness) wait(id string) dispatch.Task {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		t, err := h.d.Get(context.Background(), id)
		if err != nil {
			h.t.Fatal(err)
		}
		if t.Status.Terminal() {
			return t
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("task %s still %s", id, t.Status)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestCompletedTaskKeepsAnyResult(t *testing.T) {
	for _, result := range []string{`{"saving_usd":12.5}`, `[1,"two",{"three":3}]`, `"done"`, `42`, `true`, `null`} {
		t.Run(result, func(t *testing.T) {
			h := newHarness(t, testConfig)
			agent := h.addAgent("a", completed(result))
			task := h.submit(dispatch.Request{Priority: 7, TimeoutSeconds: intp(12), Metadata: json.RawMessage(`{"who":"test"}`)})
			if task.Status != dispatch.StatusDispatched || task.AgentID != agent.id {
				t.Fatalf("submitted as %s to %q, want dispatched to %s", task.Status, task.AgentID, agent.id)
			}
			done := h.wait(task.ID)
			if done.Status != dispatch.StatusCompleted || string(done.Result) != result {
				t.Fatalf("task = %s with result %s, want completed with %s (error %q)", done.Status, done.Result, result, done.Error)
			}
			if done.StartedAt.IsZero() || done.CompletedAt.Before(done.StartedAt) || done.RetryCount != 0 {
				t.Errorf("times/retries wrong: started %v completed %v retries %d", done.StartedAt, done.CompletedAt, done.RetryCount)
			}
			got := agent.received()
			if len(got) != 1 {
				t.Fatalf("agent got %d deliveries, want 1", len(got))
			}
			b := got[0]
			if b.ContentType != "application/json" || b.TaskID != task.ID || b.TaskType != "analyze" ||
				string(b.Parameters) != "{}" || b.Timeout != 12 || b.Priority != 7 || string(b.Metadata) != `{"who":"test"}` {
				t.Errorf("delivery = %+v", b)
			}
		})
	}
}

func TestParametersAreAlwaysAnObject(t *testing.T) {
	h := newHarness(t, testConfig)
	agent := h.addAgent("a", completed("{}"))
	for _, params := range []string{"", "null", " null ", `{"model":"llama-70b","gpus":[0,1]}`} {
		h.wait(h.submit(dispatch.Request{Parameters: json.RawMessage(params)}).ID)
	}
	want := []string{"{}", "{}", "{}", `{"model":"llama-70b","gpus":[0,1]}`}
	for i, b := range agent.received() {
		if string(b.Parameters) != want[i] {
			t.Errorf("delivery %d parameters = %s, want %s", i, b.Parameters, want[i])
		}
		if _, ok := b.Raw["metadata"]; ok {
			t.Errorf("delivery %d has metadata though none was given: %s", i, b.Raw["metadata"])
		}
	}
}

func TestRequestValidation(t *testing.T) {
	h := newHarness(t, testConfig)
	h.addAgent("a", completed("{}"))
	for _, tc := range []struct {
		name  string
		req   dispatch.Request
		field string
	}{
		{"no task type", dispatch.Request{AgentType: "cost"}, "task_type"},
		{"bad task type", dispatch.Request{AgentType: "cost", TaskType: "rm -rf"}, "task_type"},
		{"no agent type", dispatch.Request{TaskType: "analyze"}, "agent_type"},
		{"bad agent type", dispatch.Request{AgentType: "gpu", TaskType: "analyze"}, "agent_type"},
		{"parameters not an object", dispatch.Request{AgentType: "cost", TaskType: "analyze", Parameters: json.RawMessage(`[1]`)}, "parameters"},
		{"metadata not an object", dispatch.Request{AgentType: "cost", TaskType: "analyze", Metadata: json.RawMessage(`"x"`)}, "metadata"},
		{"timeout 0", dispatch.Request{AgentType: "cost", TaskType: "analyze", TimeoutSeconds: intp(0)}, "timeout_seconds"},
		{"timeout 301", dispatch.Request{AgentType: "cost", TaskType: "analyze", TimeoutSeconds: intp(301)}, "timeout_seconds"},
		{"negative retries", dispatch.Request{AgentType: "cost", TaskType: "analyze", MaxRetries: intp(-1)}, "max_retries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.d.Submit(context.Background(), tc.req)
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Submit error = %v, want a FieldError on %s", err, tc.field)
			}
		})
	}
}

func TestAgentRefusalIsNotRetried(t *testing.T) {
	h := newHarness(t, testConfig)
	agent := h.addAgent("a", failing(http.StatusBadRequest))
	done := h.wait(h.submit(dispatch.Request{MaxRetries: intp(3)}).ID)
	if done.Status != dispatch.StatusFailed || done.RetryCount != 0 || !strings.Contains(done.Error, "handler says no (400)") {
		t.Fatalf("task = %s, retries %d, error %q; want failed, 0, the agent's message", done.Status, done.RetryCount, done.Error)
	}
	if n := len(agent.received()); n != 1 {
		t.Errorf("agent got %d attempts, want 1", n)
	}
}

func TestServerErrorsAreRetriedUpToMaxRetries(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request, received)
	}{
		{"500", failing(http.StatusInternalServerError)},
		{"503", failing(http.StatusServiceUnavailable)},
		{"200 saying failed", failing(http.StatusOK)},
		{"200 without JSON", func(w http.ResponseWriter, _ *http.Request, _ received) { _, _ = io.WriteString(w, "ok") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testConfig)
			agent := h.addAgent("a", tc.answer)
			done := h.wait(h.submit(dispatch.Request{MaxRetries: intp(2)}).ID)
			if done.Status != dispatch.StatusFailed || done.RetryCount != 2 || done.Error == "" {
				t.Fatalf("task = %s, retries %d, error %q; want failed after 2 retries", done.Status, done.RetryCount, done.Error)
			}
			if n := len(agent.received()); n != 3 {
				t.Errorf("agent got %d attempts, want 3", n)
			}
		})
	}
}

func TestZeroRetriesMeansOneAttempt(t *testing.T) {
	h := newHarness(t, testConfig)
	agent := h.addAgent("a", failing(http.StatusInternalServerError))
	done := h.wait(h.submit(dispatch.Request{MaxRetries: intp(0)}).ID)
	if done.Status != dispatch.StatusFailed || len(agent.received()) != 1 {
		t.Fatalf("task %s after %d attempts, want failed after 1", done.Status, len(agent.received()))
	}
}

func TestSlowAgentTimesOut(t *testing.T) {
	h := newHarness(t, testConfig)
	sawCancel := make(chan struct{}, 4)
	h.addAgent("slow", func(w http.ResponseWriter, r *http.Request, b received) {
		select {
		case <-r.Context().Done():
			sawCancel <- struct{}{}
		case <-time.After(10 * time.Second):
			completed("{}")(w, r, b)
		}
	})
	done := h.wait(h.submit(dispatch.Request{TimeoutSeconds: intp(1), MaxRetries: intp(0)}).ID)
	if done.Status != dispatch.StatusTimeout || !strings.Contains(done.Error, "within 1s") {
		t.Fatalf("task = %s (%q), want timeout", done.Status, done.Error)
	}
	select {
	case <-sawCancel:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's request was not aborted at the timeout")
	}
}

func TestFailoverToAnotherCapableAgent(t *testing.T) {
	h := newHarness(t, testConfig)
	broken := h.addAgent("broken", failing(http.StatusInternalServerError))
	good := h.addAgent("good", completed(`"ok"`))
	// Whichever agent goes first, a retry must go to the other one.
	for range 6 {
		done := h.wait(h.submit(dispatch.Request{MaxRetries: intp(1)}).ID)
		if done.Status != dispatch.StatusCompleted || done.AgentID != good.id {
			t.Fatalf("task = %s on %s (%q), want completed on %s", done.Status, done.AgentID, done.Error, good.id)
		}
	}
	if len(broken.received()) == 0 {
		t.Error("round robin never tried the broken agent first; the failover was not exercised")
	}
}

func TestAgentDyingMidTaskFailsOver(t *testing.T) {
	h := newHarness(t, testConfig)
	dying := h.addAgent("dying", func(w http.ResponseWriter, _ *http.Request, _ received) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = conn.Close() // the process died with the connection open
		}
	})
	survivor := h.addAgent("survivor", completed(`"survived"`))
	// Round robin sends some first attempts to the dying agent; each of
	// those must fail over to the survivor.
	for range 4 {
		done := h.wait(h.submit(dispatch.Request{MaxRetries: intp(3)}).ID)
		if done.Status != dispatch.StatusCompleted || done.AgentID != survivor.id {
			t.Fatalf("task = %s on %s (%q), want completed on the survivor", done.Status, done.AgentID, done.Error)
		}
	}
	if len(dying.received()) == 0 {
		t.Error("no task went to the dying agent first; the failover was not exercised")
	}
}

func TestLeastLoadedThenRoundRobin(t *testing.T) {
	h := newHarness(t, testConfig)
	release := make(chan struct{})
	hold := func(w http.ResponseWriter, r *http.Request, b received) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		completed("{}")(w, r, b)
	}
	agents := []*fakeAgent{h.addAgent("a", hold), h.addAgent("b", hold), h.addAgent("c", hold)}
	// Load a with two held tasks (pinned), b with one.
	held := []dispatch.Task{
		h.submit(dispatch.Request{AgentID: agents[0].id}),
		h.submit(dispatch.Request{AgentID: agents[0].id}),
		h.submit(dispatch.Request{AgentID: agents[1].id}),
	}
	// The least loaded is c, then c and b tie at one... each next task must
	// go to an agent with the fewest in flight.
	want := []string{agents[2].id} // c: 0 in flight
	first := h.submit(dispatch.Request{})
	if first.AgentID != want[0] {
		t.Fatalf("first unpinned task went to %s, want the idle agent c %s", first.AgentID, want[0])
	}
	// Now a=2, b=1, c=1: the next goes to b or c, the one after to the other.
	second, third := h.submit(dispatch.Request{}), h.submit(dispatch.Request{})
	if second.AgentID == agents[0].id || third.AgentID == agents[0].id || second.AgentID == third.AgentID {
		t.Fatalf("with loads a=2 b=1 c=1, tasks went to %s then %s; want b and c", second.AgentID, third.AgentID)
	}
	close(release)
	for _, task := range append(held, first, second, third) {
		h.wait(task.ID)
	}

	// With every agent idle between tasks, ties rotate: 30 sequential tasks
	// go 10 to each agent.
	counts := map[string]int{}
	for range 30 {
		done := h.wait(h.submit(dispatch.Request{}).ID)
		counts[done.AgentID]++
	}
	for _, a := range agents {
		if counts[a.id] != 10 {
			t.Errorf("round robin gave %v, want 10 each", counts)
			break
		}
	}
}

func TestQueueOrderUnderSaturatedLimit(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	release := make(chan struct{})
	var order []int
	var mu sync.Mutex
	h.addAgent("only", func(w http.ResponseWriter, r *http.Request, b received) {
		mu.Lock()
		order = append(order, b.Priority)
		mu.Unlock()
		if b.Priority == 100 {
			<-release
		}
		completed("{}")(w, r, b)
	})
	blocker := h.submit(dispatch.Request{Priority: 100})
	eventually.True(t, 20*time.Second, "the blocking task reached the agent", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 1
	})
	var queued []dispatch.Task
	for _, p := range []int{1, 5, 3, 5, -2} {
		task := h.submit(dispatch.Request{Priority: p})
		if task.Status != dispatch.StatusPending || task.AgentID != "" {
			t.Fatalf("task with priority %d is %s on %q, want pending with no agent", p, task.Status, task.AgentID)
		}
		queued = append(queued, task)
	}
	close(release)
	h.wait(blocker.ID)
	for _, q := range queued {
		h.wait(q.ID)
	}
	want := []int{100, 5, 5, 3, 1, -2}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("agent ran priorities %v, want %v", order, want)
	}
}

func TestEqualPrioritiesRunOldestFirst(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	release := make(chan struct{})
	var order []string
	var mu sync.Mutex
	var first atomic.Bool
	h.addAgent("only", func(w http.ResponseWriter, r *http.Request, b received) {
		if first.CompareAndSwap(false, true) {
			<-release
		} else {
			mu.Lock()
			order = append(order, b.TaskID)
			mu.Unlock()
		}
		completed("{}")(w, r, b)
	})
	blocker := h.submit(dispatch.Request{})
	eventually.True(t, 20*time.Second, "the first task is held", first.Load)
	var want []string
	for range 5 {
		want = append(want, h.submit(dispatch.Request{}).ID)
	}
	close(release)
	h.wait(blocker.ID)
	for _, id := range want {
		h.wait(id)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("ran %v, want submission order %v", order, want)
	}
}

func TestQueuedTaskTimesOut(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	agent := h.addBusyAgent()
	h.submit(dispatch.Request{TimeoutSeconds: intp(30)})
	queued := h.submit(dispatch.Request{TimeoutSeconds: intp(1)})
	done := h.wait(queued.ID)
	if done.Status != dispatch.StatusTimeout || !strings.Contains(done.Error, "free slot within 1s") {
		t.Fatalf("queued task = %s (%q), want timeout waiting for a free slot", done.Status, done.Error)
	}
	if h.logs.FilterMessage("task timed out waiting for a free agent").FilterField(zap.String("task_id", queued.ID)).Len() != 1 {
		t.Error("no log line names the task that timed out in the queue")
	}
	if n := len(agent.received()); n != 1 {
		t.Errorf("agent got %d deliveries, want only the first task", n)
	}
}

func TestQueueFull(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency, cfg.MaxPending = 1, 2
	h := newHarness(t, cfg)
	h.addBusyAgent()
	for range 3 { // one in flight, two waiting
		h.submit(dispatch.Request{})
	}
	_, err := h.d.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"})
	if !errors.Is(err, dispatch.ErrQueueFull) {
		t.Fatalf("fourth Submit error = %v, want ErrQueueFull", err)
	}
}

func TestCancel(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	aborted := make(chan string, 4)
	late := make(chan struct{})
	agent := h.addAgent("a", func(w http.ResponseWriter, r *http.Request, b received) {
		<-r.Context().Done()
		aborted <- b.TaskID
		close(late)
	})
	inFlight := h.submit(dispatch.Request{})
	queued := h.submit(dispatch.Request{})
	eventually.True(t, 20*time.Second, "the first task reached the agent", func() bool { return len(agent.received()) == 1 })

	got, err := h.d.Cancel(context.Background(), queued.ID)
	if err != nil || got.Status != dispatch.StatusCancelled {
		t.Fatalf("cancel queued = %s, %v", got.Status, err)
	}
	got, err = h.d.Cancel(context.Background(), inFlight.ID)
	if err != nil || got.Status != dispatch.StatusCancelled || got.CompletedAt.IsZero() {
		t.Fatalf("cancel in flight = %+v, %v", got, err)
	}
	select {
	case id := <-aborted:
		if id != inFlight.ID {
			t.Fatalf("aborted %s, want %s", id, inFlight.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not abort the agent call")
	}
	<-late
	// The slot is free again, the queued task never ran, and nothing
	// overwrote the cancels.
	agent.setAnswer(completed("{}"))
	h.wait(h.submit(dispatch.Request{}).ID)
	if n := len(agent.received()); n != 2 {
		t.Errorf("agent got %d deliveries, want 2 (the cancelled queued task must not run)", n)
	}
	for _, id := range []string{inFlight.ID, queued.ID} {
		if task, _ := h.d.Get(context.Background(), id); task.Status != dispatch.StatusCancelled {
			t.Errorf("task %s became %s after its cancel", id, task.Status)
		}
	}
	if _, err := h.d.Cancel(context.Background(), inFlight.ID); !errors.Is(err, dispatch.ErrFinished) {
		t.Errorf("second cancel error = %v, want ErrFinished", err)
	}
	if _, err := h.d.Cancel(context.Background(), "no-such-task"); !errors.Is(err, dispatch.ErrNotFound) {
		t.Errorf("cancel unknown error = %v, want ErrNotFound", err)
	}
}

func TestLateReplyAfterCancelIsDropped(t *testing.T) {
	h := newHarness(t, testConfig)
	replied := make(chan struct{})
	// This agent ignores cancellation and answers anyway: the reply must
	// not turn the cancelled task into a completed one.
	agent := h.addAgent("stubborn", func(w http.ResponseWriter, r *http.Request, b received) {
		time.Sleep(200 * time.Millisecond)
		completed(`"too late"`)(w, r, b)
		close(replied)
	})
	task := h.submit(dispatch.Request{})
	eventually.True(t, 20*time.Second, "the task reached the agent", func() bool { return len(agent.received()) == 1 })
	if _, err := h.d.Cancel(context.Background(), task.ID); err != nil {
		t.Fatal(err)
	}
	<-replied
	time.Sleep(50 * time.Millisecond)
	got, _ := h.d.Get(context.Background(), task.ID)
	if got.Status != dispatch.StatusCancelled || got.Result != nil {
		t.Fatalf("task = %s with result %s, want cancelled and no result", got.Status, got.Result)
	}
}

func TestRouting(t *testing.T) {
	h := newHarness(t, testConfig)
	a := h.addAgent("a", completed(`"a"`), "analyze")
	b := h.addAgent("b", completed(`"b"`), "analyze", "rightsize")

	t.Run("pinned agent gets the task", func(t *testing.T) {
		for range 4 {
			done := h.wait(h.submit(dispatch.Request{AgentID: b.id}).ID)
			if done.AgentID != b.id {
				t.Fatalf("pinned task ran on %s, want %s", done.AgentID, b.id)
			}
		}
	})
	t.Run("only agents with the capability", func(t *testing.T) {
		for range 4 {
			if done := h.wait(h.submit(dispatch.Request{TaskType: "rightsize"}).ID); done.AgentID != b.id {
				t.Fatalf("rightsize ran on %s, want %s", done.AgentID, b.id)
			}
		}
	})
	for _, tc := range []struct {
		name string
		req  dispatch.Request
		want string
	}{
		{"no agent has the capability", dispatch.Request{AgentType: "cost", TaskType: "forecast"}, `no healthy cost agent has the capability "forecast"`},
		{"no agent of the type", dispatch.Request{AgentType: "performance", TaskType: "analyze"}, "no healthy performance agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.d.Submit(context.Background(), tc.req)
			if !errors.Is(err, dispatch.ErrNoCapableAgent) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Submit error = %v, want ErrNoCapableAgent saying %q", err, tc.want)
			}
		})
	}
	// A pinned agent that cannot ever take the task is a mistake in the
	// request, not an outage: retrying cannot help.
	for _, tc := range []struct {
		name string
		req  dispatch.Request
		want string
	}{
		{"pinned agent unknown", dispatch.Request{AgentType: "cost", TaskType: "analyze", AgentID: "ghost"}, `agent "ghost" is not registered`},
		{"pinned agent lacks the capability", dispatch.Request{AgentType: "cost", TaskType: "rightsize", AgentID: a.id}, "does not have the capability"},
		{"pinned agent of another type", dispatch.Request{AgentType: "resource", TaskType: "analyze", AgentID: a.id}, "is a cost agent, not resource"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.d.Submit(context.Background(), tc.req)
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != "agent_id" || !strings.Contains(err.Error(), tc.want) || errors.Is(err, dispatch.ErrNoCapableAgent) {
				t.Fatalf("Submit error = %v, want a FieldError on agent_id saying %q", err, tc.want)
			}
		})
	}
	t.Run("degraded and unhealthy agents get nothing", func(t *testing.T) {
		for _, st := range []string{"degraded", "unhealthy"} {
			if _, err := h.agents.Heartbeat(context.Background(), registry.Actor{}, b.id, st, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := h.d.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "rightsize"}); !errors.Is(err, dispatch.ErrNoCapableAgent) {
				t.Fatalf("with b %s: Submit error = %v, want ErrNoCapableAgent", st, err)
			}
			if _, err := h.d.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze", AgentID: b.id}); !errors.Is(err, dispatch.ErrNoCapableAgent) {
				t.Fatalf("pinned to %s b: Submit error = %v, want ErrNoCapableAgent", st, err)
			}
		}
		if _, err := h.agents.Heartbeat(context.Background(), registry.Actor{}, b.id, "", nil); err != nil {
			t.Fatal(err)
		}
		if done := h.wait(h.submit(dispatch.Request{TaskType: "rightsize"}).ID); done.Status != dispatch.StatusCompleted {
			t.Fatalf("after b recovered: %s", done.Status)
		}
	})
}

func TestWaitingTaskStartsWhenAnAgentRegisters(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	h.addBusyAgent()
	h.submit(dispatch.Request{})
	waiting := h.submit(dispatch.Request{})
	fresh := h.addAgent("fresh", completed(`"fresh"`))
	done := h.wait(waiting.ID)
	if done.Status != dispatch.StatusCompleted || done.AgentID != fresh.id {
		t.Fatalf("waiting task = %s on %s, want completed on the new agent", done.Status, done.AgentID)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	h := newHarness(t, testConfig)
	var followed atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { followed.Store(true) }))
	defer target.Close()
	h.addAgent("redirecting", func(w http.ResponseWriter, r *http.Request, _ received) {
		http.Redirect(w, r, target.URL+"/task", http.StatusTemporaryRedirect)
	})
	done := h.wait(h.submit(dispatch.Request{}).ID)
	if done.Status != dispatch.StatusFailed || followed.Load() {
		t.Fatalf("task = %s, redirect followed: %v; want failed and not followed", done.Status, followed.Load())
	}
}

func TestOversizedReplyFails(t *testing.T) {
	cfg := testConfig
	cfg.MaxResultBytes = 2048
	h := newHarness(t, cfg)
	agent := h.addAgent("chatty", completed(`"`+strings.Repeat("x", 4096)+`"`))
	done := h.wait(h.submit(dispatch.Request{}).ID)
	if done.Status != dispatch.StatusFailed || !strings.Contains(done.Error, "TASK_MAX_RESULT_BYTES") || len(agent.received()) != 1 {
		t.Fatalf("task = %s (%q) after %d attempts, want failed once for size", done.Status, done.Error, len(agent.received()))
	}
}

func TestFinishedTasksArePruned(t *testing.T) {
	cfg := testConfig
	cfg.Retention = 40 * time.Millisecond
	h := newHarness(t, cfg)
	h.addAgent("a", completed("{}"))
	task := h.wait(h.submit(dispatch.Request{}).ID)
	eventually.True(t, 20*time.Second, "the finished task was pruned", func() bool {
		_, err := h.d.Get(context.Background(), task.ID)
		return errors.Is(err, dispatch.ErrNotFound)
	})
}

// drain runs Drain until ctx ends, and returns what it returned; it waits
// until Drain has said it is waiting, so the test acts on a draining
// dispatcher.
func (h *harness) drain(ctx context.Context) <-chan error {
	h.t.Helper()
	drained := make(chan error, 1)
	go func() { drained <- h.d.Drain(ctx) }()
	eventually.True(h.t, 20*time.Second, "Drain waits for the tasks", func() bool {
		return h.logs.FilterMessageSnippet("draining tasks").Len() > 0
	})
	return drained
}

func TestDrainLetsDeliveriesInFlightFinish(t *testing.T) {
	h := newHarness(t, testConfig)
	release := make(chan struct{})
	agent := h.addAgent("slow", func(w http.ResponseWriter, r *http.Request, b received) {
		select {
		case <-release:
			completed(`"finished while draining"`)(w, r, b)
		case <-r.Context().Done():
		}
	})
	task := h.submit(dispatch.Request{})
	eventually.True(t, 20*time.Second, "the task reached the agent", func() bool { return len(agent.received()) == 1 })

	drained := h.drain(context.Background())
	if _, err := h.d.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"}); !errors.Is(err, dispatch.ErrShuttingDown) {
		t.Errorf("Submit while draining = %v, want ErrShuttingDown", err)
	}
	close(release) // the agent answers only now, while Drain waits
	if err := <-drained; err != nil {
		t.Fatalf("Drain = %v, want nil once the task finished", err)
	}
	h.stop()
	got, _ := h.d.Get(context.Background(), task.ID)
	if got.Status != dispatch.StatusCompleted || string(got.Result) != `"finished while draining"` {
		t.Fatalf("task = %s (%q), want completed with the agent's result", got.Status, got.Error)
	}
	if h.logs.FilterMessage("task finished during shutdown").FilterField(zap.String("task_id", task.ID)).FilterField(zap.String("status", "completed")).Len() != 1 {
		t.Errorf("no log line names task %s completed during the drain, though its outcome cannot be read any more", task.ID)
	}
	if n := h.logs.FilterMessageSnippet("unfinished").Len(); n != 0 {
		t.Errorf("%d log line(s) about unfinished tasks after a complete drain", n)
	}
}

func TestDrainDeadlineAbortsRecordsAndLogsEachTask(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	agent := h.addBusyAgent() // never answers
	inFlight := h.submit(dispatch.Request{})
	queued := h.submit(dispatch.Request{})
	eventually.True(t, 20*time.Second, "the first task reached the agent", func() bool { return len(agent.received()) == 1 })

	ctx, deadline := context.WithCancel(context.Background())
	drained := h.drain(ctx)
	deadline() // the shutdown budget runs out
	if err := <-drained; !errors.Is(err, dispatch.ErrDrainTimeout) || !strings.Contains(err.Error(), "2 task(s)") {
		t.Fatalf("Drain at its deadline = %v, want ErrDrainTimeout for 2 tasks", err)
	}
	h.stop()

	for _, tc := range []struct {
		id, state, msg string
	}{
		{inFlight.ID, "dispatched", "before the agent answered"},
		{queued.ID, "pending", "before the task could run"},
	} {
		got, _ := h.d.Get(context.Background(), tc.id)
		if got.Status != dispatch.StatusFailed || !strings.Contains(got.Error, tc.msg) {
			t.Errorf("task %s = %s (%q), want failed, shut down %s", tc.id, got.Status, got.Error, tc.msg)
		}
		lines := h.logs.FilterMessage("task unfinished at shutdown: recorded as failed").FilterField(zap.String("task_id", tc.id)).All()
		if len(lines) != 1 {
			t.Errorf("task %s: %d log lines naming it unfinished, want 1", tc.id, len(lines))
			continue
		}
		if fields := lines[0].ContextMap(); lines[0].Level != zap.WarnLevel || fields["status"] != tc.state {
			t.Errorf("task %s: log line %s %v, want warn with status %s", tc.id, lines[0].Level, fields, tc.state)
		}
	}
}

func TestShutdownAbortsAndRecords(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	h := newHarness(t, cfg)
	h.addAgent("a", func(w http.ResponseWriter, r *http.Request, b received) { <-r.Context().Done() })
	inFlight := h.submit(dispatch.Request{})
	queued := h.submit(dispatch.Request{})
	h.stop()
	for _, id := range []string{inFlight.ID, queued.ID} {
		got, err := h.d.Get(context.Background(), id)
		if err != nil || got.Status != dispatch.StatusFailed || !strings.Contains(got.Error, "shut down") {
			t.Errorf("task %s after shutdown = %s (%q), %v; want failed, shut down", id, got.Status, got.Error, err)
		}
		if h.logs.FilterMessage("task unfinished at shutdown: recorded as failed").FilterField(zap.String("task_id", id)).Len() != 1 {
			t.Errorf("task %s: no log line names it unfinished at shutdown", id)
		}
	}
	if _, err := h.d.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"}); !errors.Is(err, dispatch.ErrShuttingDown) {
		t.Errorf("Submit after shutdown error = %v, want ErrShuttingDown", err)
	}
}

// hookStore is a task store that calls its hooks (when set) before
// creating or updating a task: tests hold the dispatcher there.
type hookStore struct {
	dispatch.Store
	beforeCreate func()
	beforeUpdate func(id string)
}

func (s *hookStore) Create(ctx context.Context, t dispatch.Task) (dispatch.Task, error) {
	if s.beforeCreate != nil {
		s.beforeCreate()
	}
	return s.Store.Create(ctx, t)
}

func (s *hookStore) Update(ctx context.Context, id string, change func(*dispatch.Task) error) (dispatch.Task, error) {
	if s.beforeUpdate != nil {
		s.beforeUpdate(id)
	}
	return s.Store.Update(ctx, id, change)
}

func TestShutdownWhileStoringGivesTheSlotBack(t *testing.T) {
	storing, proceed := make(chan struct{}), make(chan struct{})
	store := &hookStore{Store: dispatch.NewMemoryStore(), beforeCreate: func() {
		close(storing)
		<-proceed
	}}
	h := newHarnessWith(t, testConfig, store)
	h.addAgent("a", completed("{}"))
	submitted := make(chan error, 1)
	go func() {
		_, err := h.d.Submit(context.Background(), dispatch.Request{AgentType: "cost", TaskType: "analyze"})
		submitted <- err
	}()
	<-storing // the agent's slot is reserved; the task is being stored
	h.stop()
	close(proceed)
	if err := <-submitted; !errors.Is(err, dispatch.ErrShuttingDown) {
		t.Fatalf("Submit during shutdown = %v, want ErrShuttingDown", err)
	}
	if n := h.d.InFlightAgents(); n != 0 {
		t.Errorf("after the slot was given back the dispatcher still counts %d agent(s) in flight, want none", n)
	}
}

func TestRoundRobinPositionsArePruned(t *testing.T) {
	cfg := testConfig
	cfg.Retention = 40 * time.Millisecond // Run ticks every 10ms
	h := newHarness(t, cfg)
	var capabilities []string
	for i := range 20 {
		capabilities = append(capabilities, fmt.Sprintf("job-%02d", i))
	}
	a := h.addAgent("a", completed("{}"), capabilities...)
	h.addAgent("b", completed("{}"), capabilities...)
	// Two capable agents: each task type is a route with a choice to make,
	// and each pinned task another route.
	for _, c := range capabilities {
		h.submit(dispatch.Request{TaskType: c})
		h.submit(dispatch.Request{TaskType: c, AgentID: a.id})
	}
	eventually.True(t, 20*time.Second, "round-robin positions of routes no longer in use were dropped", func() bool {
		return h.d.RoundRobinRoutes() == 0
	})
}

func TestShutdownWaitsForTimers(t *testing.T) {
	cfg := testConfig
	cfg.AgentConcurrency = 1
	var queuedID atomic.Value
	var held atomic.Bool
	expiring, proceed := make(chan struct{}), make(chan struct{})
	store := &hookStore{Store: dispatch.NewMemoryStore(), beforeUpdate: func(id string) {
		// Hold the queue deadline's timer while it records the timeout.
		if id == queuedID.Load() && held.CompareAndSwap(false, true) {
			close(expiring)
			<-proceed
		}
	}}
	h := newHarnessWith(t, cfg, store)
	h.addBusyAgent()
	h.submit(dispatch.Request{})
	queued := h.submit(dispatch.Request{TimeoutSeconds: intp(1)})
	queuedID.Store(queued.ID)
	<-expiring

	stopped := make(chan struct{})
	go func() {
		h.stop()
		close(stopped)
	}()
	// Run must not return while the timer's function still runs. Give it
	// the chance to, as it did when timers had no owner.
	select {
	case <-stopped:
		t.Error("Run returned while the queue deadline's timer was still recording its task")
	case <-time.After(200 * time.Millisecond):
	}
	close(proceed)
	<-stopped
	if got, _ := h.d.Get(context.Background(), queued.ID); got.Status != dispatch.StatusTimeout {
		t.Errorf("queued task = %s (%q), want the timeout its deadline recorded", got.Status, got.Error)
	}
}

// A caller that names its task (the coordination executor, resuming a
// plan step) gets ErrExists the second time, never a second delivery.
func TestNamedTaskIsSubmittedOnce(t *testing.T) {
	h := newHarness(t, testConfig)
	agent := h.addAgent("a", completed(`{"ok":true}`))
	first := h.submit(dispatch.Request{ID: "step-1"})
	if first.ID != "step-1" {
		t.Fatalf("task id %q, want step-1", first.ID)
	}
	if _, err := h.d.Submit(context.Background(), dispatch.Request{ID: "step-1", AgentType: "cost", TaskType: "analyze"}); !errors.Is(err, dispatch.ErrExists) {
		t.Fatalf("second Submit of step-1: %v, want ErrExists", err)
	}
	if got := h.wait("step-1"); got.Status != dispatch.StatusCompleted {
		t.Fatalf("step-1 %s", got.Status)
	}
	if n := len(agent.received()); n != 1 {
		t.Errorf("delivered %d times, want once", n)
	}
}
