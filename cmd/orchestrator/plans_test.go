package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// stepAgent is an agent's /task endpoint for plan steps: it records each
// delivery (task type and id), and holds migrate_workload until released
// or until the orchestrator hangs up.
type stepAgent struct {
	srv     *httptest.Server
	release chan struct{}
	mu      sync.Mutex
	got     []string // "task_type task_id"
}

func newStepAgent(t *testing.T) *stepAgent {
	a := &stepAgent{release: make(chan struct{})}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var task struct {
			TaskID   string `json:"task_id"`
			TaskType string `json:"task_type"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &task); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		a.got = append(a.got, task.TaskType+" "+task.TaskID)
		a.mu.Unlock()
		if task.TaskType == "migrate_workload" {
			select {
			case <-a.release:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"task_id":%q,"status":"completed","result":{"did":%q}}`, task.TaskID, task.TaskType)
	}))
	t.Cleanup(a.srv.Close)
	t.Cleanup(func() {
		select {
		case <-a.release:
		default:
			close(a.release)
		}
	})
	return a
}

func (a *stepAgent) port() int {
	_, p, _ := net.SplitHostPort(a.srv.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}

// deliveries counts the deliveries of each task type, and the distinct
// task ids of each.
func (a *stepAgent) deliveries() (count map[string]int, ids map[string]map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	count, ids = map[string]int{}, map[string]map[string]bool{}
	for _, g := range a.got {
		typ, id, _ := strings.Cut(g, " ")
		count[typ]++
		if ids[typ] == nil {
			ids[typ] = map[string]bool{}
		}
		ids[typ][id] = true
	}
	return count, ids
}

// With PostgreSQL, a replica killed in the middle of a plan's step (no
// drain, no lease released) leaves the plan to another replica: once the
// plan's run lease lapses the survivor resumes it at its current step,
// waits for the step's task (which the dispatcher delivers again under
// the same task id once the task's lease lapses too), and runs the rest.
// No step is submitted twice: every step task type has one task id.
func TestPlanSurvivesItsReplicaBeingKilled(t *testing.T) {
	env := []string{"DATABASE_URL=" + pgtest.NewDatabase(t), "COORDINATION_RUN_LEASE=3s", "COORDINATION_POLL_INTERVAL=50ms",
		"TASK_LEASE_DURATION=3s", "TASK_POLL_INTERVAL=500ms", "COORDINATION_STEP_MAX_RETRIES=3"}
	agent := newStepAgent(t)
	doomed := start(t, env...)
	code, body := call(t, http.MethodPost, doomed.base+"/agents/register", fmt.Sprintf(
		`{"name":"cost-1","type":"cost","host":"127.0.0.1","port":%d,"capabilities":["take_snapshot","migrate_workload","validate_quality","rollback_migrate_workload","rollback_take_snapshot"]}`,
		agent.port()))
	if code != http.StatusCreated {
		t.Fatalf("register = %d %v", code, body)
	}
	code, body = call(t, http.MethodPost, doomed.base+"/coordination/coordinate",
		`{"customer_id":"acme","auto_approve":true,"execute_now":true,"recommendations":[{"id":"r1","agent_id":"cost-1","agent_type":"cost",`+
			`"action":"migrate_to_spot","risk_level":"low","priority":1,"confidence":0.9,"affected_resources":["i-1"]}]}`)
	if code != http.StatusOK {
		t.Fatalf("coordinate = %d %v", code, body)
	}
	plans, _ := body["execution_plans"].([]any)
	if len(plans) != 1 {
		t.Fatalf("coordinate answered %v, want one plan", body)
	}
	id, _ := plans[0].(map[string]any)["id"].(string)
	waitUntil(t, "migrate_workload to reach the agent", func() bool { n, _ := agent.deliveries(); return n["migrate_workload"] == 1 })

	doomed.signal(t, syscall.SIGKILL)
	doomed.wait(t, 10*time.Second)
	survivor := runInProcess(t, env...)
	close(agent.release)

	var plan map[string]any
	waitUntil(t, "the plan to end on the survivor", func() bool {
		_, plan = call(t, http.MethodGet, survivor.base+"/coordination/plans/"+id, "")
		s, _ := plan["status"].(string)
		return s == "completed" || s == "failed" || s == "rolled_back" || s == "rollback_failed" || s == "cancelled"
	})
	if plan["status"] != "completed" {
		t.Fatalf("the plan ended %v after its replica was killed: %v", plan["status"], plan)
	}
	count, ids := agent.deliveries()
	for _, step := range []string{"take_snapshot", "migrate_workload", "validate_quality"} {
		if len(ids[step]) != 1 {
			t.Errorf("%s was sent as %d tasks (%v), want one", step, len(ids[step]), ids[step])
		}
	}
	if count["take_snapshot"] != 1 || count["validate_quality"] != 1 {
		t.Errorf("deliveries %v: the steps before and after the kill went more than once", count)
	}
	if survivor.logs.find("resuming plan") == nil {
		t.Error("the survivor did not log that it resumed the plan")
	}
	t.Logf("deliveries: %v", count)
}

// waitUntil polls cond for up to 30 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
