package api_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// Size of the stress test: workers x iterations operations through the
// router, run with the race detector in `make test-go`.
const (
	stressWorkers    = 8
	stressIterations = 150
	stressIdentities = 4 // agents each worker registers, heartbeats and unregisters
)

// stressReply answers as parameters.mode says: ok, slow (a few ms),
// hold (until the orchestrator gives up: the attempt's timeout or a
// cancel), 500, 400, or failed (200 with "status":"failed").
func stressReply(a *stubAgent, w http.ResponseWriter, r *http.Request, d stubDelivery) {
	var p struct {
		Mode  string `json:"mode"`
		Sleep int    `json:"sleep_ms"`
	}
	_ = json.Unmarshal(d.Body["parameters"], &p)
	switch p.Mode {
	case "slow":
		select {
		case <-time.After(time.Duration(p.Sleep) * time.Millisecond):
		case <-r.Context().Done():
			return
		case <-a.stop:
			return
		}
	case "hold":
		stubHold(a, w, r, d)
		return
	case "500":
		replyJSON(w, http.StatusInternalServerError, map[string]any{"task_id": d.TaskID, "status": "failed", "error": "handler failed"})
		return
	case "400":
		replyJSON(w, http.StatusBadRequest, map[string]any{"task_id": d.TaskID, "status": "failed", "error": "bad input"})
		return
	case "failed":
		replyJSON(w, http.StatusOK, map[string]any{"task_id": d.TaskID, "status": "failed", "error": "soft"})
		return
	}
	replyJSON(w, http.StatusOK, map[string]any{"task_id": d.TaskID, "status": "completed", "result": map[string]any{"mode": p.Mode}})
}

// stressLog collects what the workers saw, under a mutex.
type stressLog struct {
	mu        sync.Mutex
	tasks     []string       // 201 task ids, in no particular order
	cancelled map[string]int // task id -> DELETEs answered 200
	agentIDs  map[string]bool
	codes     map[string]map[int]int // operation -> status -> count
}

func (l *stressLog) code(op string, code int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.codes[op] == nil {
		l.codes[op] = map[int]int{}
	}
	l.codes[op][code]++
}

func (l *stressLog) randomTask(rng *rand.Rand) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.tasks) == 0 {
		return ""
	}
	return l.tasks[rng.IntN(len(l.tasks))]
}

// stressIdentity is one agent a worker owns: only that worker touches it,
// so the expected answer of every call is known.
type stressIdentity struct {
	name    string
	port    int
	id      string // the current or last agent id, "" before the first registration
	present bool
}

// TestStress runs concurrent registrations, heartbeats, unregistrations,
// submissions, cancels and reads through the router against fake agents,
// then checks that every task finished exactly once and that the counts
// agree everywhere.
func TestStress(t *testing.T) {
	if testing.Short() {
		t.Skip("stress test")
	}
	cfg := testDispatchConfig
	cfg.AgentConcurrency, cfg.MaxPending = 2, 40
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: testAgentsConfig, dispatch: cfg})
	stubs := []*stubAgent{newStubAgent(t, stressReply), newStubAgent(t, stressReply), newStubAgent(t, stressReply)}
	// A registered agent nothing listens on: every delivery to it fails.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	_ = dead.Close()

	log := &stressLog{cancelled: map[string]int{}, agentIDs: map[string]bool{}, codes: map[string]map[int]int{}}
	var base []string
	for i, s := range stubs {
		id := f.registerStub(t, s, fmt.Sprintf("base-%d", i), "cost", "work", "other")
		base = append(base, id)
		log.agentIDs[id] = true
	}

	start := time.Now()
	identities := make([][]*stressIdentity, stressWorkers)
	var wg sync.WaitGroup
	for w := range stressWorkers {
		ids := make([]*stressIdentity, stressIdentities)
		for k := range ids {
			port := deadPort
			if k < len(stubs) {
				port = stubs[k].port
			}
			ids[k] = &stressIdentity{name: fmt.Sprintf("w%d-a%d", w, k), port: port}
		}
		identities[w] = ids
		wg.Go(func() { stressWorker(t, f, log, rand.New(rand.NewPCG(uint64(w), 42)), ids, base) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d operations in %s; answers: %v", stressWorkers*stressIterations, time.Since(start).Round(time.Millisecond), log.codes)

	// Every task reaches a terminal state.
	final := map[string]string{} // id -> raw body
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range log.tasks {
		for {
			rec := f.get("/tasks/" + id)
			task := checkTask(t, "GET /tasks/"+id, expect(t, "GET /tasks/"+id, rec, http.StatusOK))
			if slices.Contains(terminalStatuses, task["status"].(string)) {
				final[id] = rec.Body.String()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %s is still %v: %s", id, task["status"], rec.Body)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// Slots and queues drain: nothing stays in flight or waiting.
	for {
		inFlight, depth := gaugeValue(t, f, "orchestrator_tasks_in_flight"), gaugeValue(t, f, "orchestrator_task_queue_depth")
		if inFlight == 0 && depth == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every task finished: %v in flight, %v queued", inFlight, depth)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// A terminal task never changes: late replies, retries and timers
	// that were still running must not have touched it.
	time.Sleep(300 * time.Millisecond)
	for id, before := range final {
		if after := f.get("/tasks/" + id).Body.String(); after != before {
			t.Errorf("terminal task %s changed:\n before %s\n after  %s", id, before, after)
		}
	}

	// The listing has every task once, and agrees with the status filter.
	listed := f.allTasks(t, "", 37)
	if len(listed) != len(log.tasks) || !sameSet(listed, log.tasks) {
		t.Errorf("GET /tasks pages list %d tasks, %d submitted (same set: %v)", len(listed), len(log.tasks), sameSet(listed, log.tasks))
	}
	byStatus := map[string]int{}
	sum := 0
	for _, st := range taskStatuses {
		ids := f.allTasks(t, "&status="+st, 1000)
		byStatus[st] = len(ids)
		sum += len(ids)
		if !slices.Contains(terminalStatuses, st) && len(ids) > 0 {
			t.Errorf("%d tasks still %s", len(ids), st)
		}
	}
	if sum != len(log.tasks) {
		t.Errorf("tasks by status %v add up to %d, want %d", byStatus, sum, len(log.tasks))
	}
	t.Logf("%d tasks: %v", len(log.tasks), byStatus)

	// Each DELETE answered 200 cancelled a distinct task, and only those
	// are cancelled.
	for id, n := range log.cancelled {
		if n != 1 {
			t.Errorf("task %s: %d DELETEs answered 200", id, n)
		}
		if st := objectOf(t, f.get("/tasks/"+id))["status"]; st != "cancelled" {
			t.Errorf("task %s was cancelled (200) but is %v", id, st)
		}
	}
	if byStatus["cancelled"] != len(log.cancelled) {
		t.Errorf("%d tasks cancelled, %d DELETEs answered 200", byStatus["cancelled"], len(log.cancelled))
	}
	for id, body := range final {
		var task struct {
			AgentID string `json:"agent_id"`
			Status  string `json:"status"`
		}
		_ = json.Unmarshal([]byte(body), &task)
		if task.Status == "completed" && !log.agentIDs[task.AgentID] {
			t.Errorf("task %s completed on %q, which never registered", id, task.AgentID)
		}
	}

	// Metrics: each task counted once when submitted and once when finished.
	if n := counterSum(t, f, "orchestrator_tasks_submitted_total", nil); n != float64(len(log.tasks)) {
		t.Errorf("orchestrator_tasks_submitted_total = %v, want %d", n, len(log.tasks))
	}
	for _, st := range terminalStatuses {
		if n := counterSum(t, f, "orchestrator_tasks_total", map[string]string{"outcome": st}); n != float64(byStatus[st]) {
			t.Errorf("orchestrator_tasks_total{outcome=%q} = %v, but %d tasks are %s: a task finished twice or not at all", st, n, byStatus[st], st)
		}
	}

	// Agents: the base ones and the identities the model says are present.
	want := slices.Clone(base)
	for _, ids := range identities {
		for _, ident := range ids {
			if ident.present {
				want = append(want, ident.id)
			}
		}
	}
	var got []string
	for _, a := range f.listAgents(t, "/agents") {
		got = append(got, a["id"].(string))
	}
	if !sameSet(got, want) || len(got) != len(want) {
		t.Errorf("GET /agents lists %d agents, want %d (same set: %v)", len(got), len(want), sameSet(got, want))
	}
	var gauge float64
	for _, st := range []string{"healthy", "degraded", "unhealthy", "unreachable"} {
		gauge += counterSum(t, f, "orchestrator_agents", map[string]string{"status": st})
	}
	if gauge != float64(len(want)) {
		t.Errorf("orchestrator_agents adds up to %v, want %d", gauge, len(want))
	}
	if n := len(f.logs.FilterMessage("panic serving request").All()); n != 0 {
		t.Errorf("%d panics", n)
	}
}

// stressWorker does stressIterations random operations, checking each
// answer against what it may be.
func stressWorker(t *testing.T, f *fixture, log *stressLog, rng *rand.Rand, ids []*stressIdentity, base []string) {
	// check records the answer and reports an unexpected one.
	check := func(op string, code int, body string, allowed ...int) bool {
		log.code(op, code)
		if !slices.Contains(allowed, code) {
			t.Errorf("%s = %d %s, want one of %v", op, code, strings.TrimSpace(body), allowed)
			return false
		}
		return true
	}
	for range stressIterations {
		ident := ids[rng.IntN(len(ids))]
		switch op := rng.IntN(100); {
		case op < 10: // register
			rec := f.call(http.MethodPost, "/agents/register", mustJSON(t, map[string]any{
				"name": ident.name, "type": "cost", "host": "127.0.0.1", "port": ident.port, "capabilities": []string{"work"},
			}))
			if !check("register", rec.Code, rec.Body.String(), 201) {
				continue
			}
			var m struct {
				AgentID string `json:"agent_id"`
			}
			_ = json.Unmarshal(rec.Body.Bytes(), &m)
			switch {
			case ident.present && m.AgentID != ident.id:
				t.Errorf("re-registering %s: agent_id %s, want the same %s", ident.name, m.AgentID, ident.id)
			case !ident.present && m.AgentID == ident.id:
				t.Errorf("registering %s after unregistering it: the old agent_id %s again", ident.name, m.AgentID)
			}
			ident.id, ident.present = m.AgentID, true
			log.mu.Lock()
			log.agentIDs[m.AgentID] = true
			log.mu.Unlock()
		case op < 18: // heartbeat
			if ident.id == "" {
				continue
			}
			status := []string{"healthy", "healthy", "healthy", "", "degraded", "unhealthy"}[rng.IntN(6)]
			rec := f.call(http.MethodPost, "/agents/"+ident.id+"/heartbeat", `{"status":"`+status+`"}`)
			want := http.StatusNotFound
			if ident.present {
				want = http.StatusOK
			}
			check("heartbeat", rec.Code, rec.Body.String(), want)
		case op < 22: // unregister
			if ident.id == "" {
				continue
			}
			rec := f.call(http.MethodPost, "/agents/"+ident.id+"/unregister", "")
			want := http.StatusNotFound
			if ident.present {
				want = http.StatusOK
			}
			check("unregister", rec.Code, rec.Body.String(), want)
			ident.present = false
		case op < 62: // submit
			mode := []string{"ok", "ok", "ok", "ok", "slow", "slow", "hold", "500", "400", "failed"}[rng.IntN(10)]
			req := map[string]any{
				"task_type": "work", "agent_type": "cost", "timeout_seconds": 1, "max_retries": rng.IntN(2),
				"priority": rng.IntN(5), "parameters": map[string]any{"mode": mode, "sleep_ms": rng.IntN(20)},
			}
			allowed := []int{201, 429, 503}
			switch rng.IntN(10) {
			case 0:
				req["agent_id"] = base[rng.IntN(len(base))]
			case 1:
				if ident.id != "" {
					// Maybe degraded (503) or unregistered (400: a mistake a retry cannot mend).
					req["agent_id"] = ident.id
					allowed = append(allowed, 400)
				}
			case 2:
				req["task_type"] = "other" // only the base agents have it
			}
			rec := f.call(http.MethodPost, "/tasks", mustJSON(t, req))
			if !check("submit", rec.Code, rec.Body.String(), allowed...) {
				continue
			}
			if rec.Code != http.StatusCreated {
				if _, err := errorMessage(rec); err != nil {
					t.Error(err)
				}
				continue
			}
			var m struct {
				TaskID string `json:"task_id"`
			}
			_ = json.Unmarshal(rec.Body.Bytes(), &m)
			log.mu.Lock()
			log.tasks = append(log.tasks, m.TaskID)
			log.mu.Unlock()
		case op < 72: // cancel
			id := log.randomTask(rng)
			if id == "" {
				continue
			}
			rec := f.call(http.MethodDelete, "/tasks/"+id, "")
			if check("cancel", rec.Code, rec.Body.String(), 200, 409) && rec.Code == http.StatusOK {
				log.mu.Lock()
				log.cancelled[id]++
				log.mu.Unlock()
				var task struct {
					Status string `json:"status"`
				}
				if _ = json.Unmarshal(rec.Body.Bytes(), &task); task.Status != "cancelled" {
					t.Errorf("DELETE %s answered 200 with status %q", id, task.Status)
				}
			}
		case op < 82: // list tasks
			path := fmt.Sprintf("/tasks?limit=%d", 1+rng.IntN(50))
			if rng.IntN(2) == 0 {
				path += "&status=" + taskStatuses[rng.IntN(len(taskStatuses))]
			}
			rec := f.get(path)
			if check("list tasks", rec.Code, rec.Body.String(), 200) {
				var m struct {
					Tasks []json.RawMessage `json:"tasks"`
					Count int               `json:"count"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || m.Tasks == nil || m.Count != len(m.Tasks) {
					t.Errorf("GET %s = %s", path, rec.Body)
				}
			}
		case op < 90: // list agents
			path := "/agents"
			if rng.IntN(2) == 0 {
				path = "/agents/type/cost"
			}
			rec := f.get(path)
			if check("list agents", rec.Code, rec.Body.String(), 200) {
				var m struct {
					Agents []json.RawMessage `json:"agents"`
					Count  int               `json:"count"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || m.Agents == nil || m.Count != len(m.Agents) {
					t.Errorf("GET %s = %s", path, rec.Body)
				}
			}
		default: // read a task
			id := log.randomTask(rng)
			if id == "" {
				continue
			}
			rec := f.get("/tasks/" + id)
			check("get task", rec.Code, rec.Body.String(), 200)
		}
	}
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// counterSum adds up the samples of a metric family whose labels include
// the given ones.
func counterSum(t *testing.T, f *fixture, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := f.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
	next:
		for _, m := range fam.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == v)
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// gaugeValue reads a gauge without labels.
func gaugeValue(t *testing.T, f *fixture, name string) float64 { return counterSum(t, f, name, nil) }
