//go:build crosslang

package crosslang

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// stepCapabilities are the step types of the default migrate_to_spot plan
// and of its rollback.
var stepCapabilities = []string{
	"take_snapshot", "migrate_workload", "validate_quality",
	"rollback_take_snapshot", "rollback_migrate_workload",
}

// planCustomer is the customer of every recommendation here.
const planCustomer = "acme-crosslang"

// stepResult is what agent.py puts in the result of a plan step.
type stepResult struct {
	Step              string          `json:"step"`
	Agent             string          `json:"agent"`
	AgentID           string          `json:"agent_id"`
	TaskID            string          `json:"task_id"`
	PlanID            string          `json:"plan_id"`
	StepID            string          `json:"step_id"`
	RecommendationID  string          `json:"recommendation_id"`
	CustomerID        string          `json:"customer_id"`
	Action            string          `json:"action"`
	Resources         []string        `json:"resources"`
	SnapshotID        string          `json:"snapshot_id"`
	RollbackOf        string          `json:"rollback_of"`
	Undid             string          `json:"undid"`
	StepResult        json.RawMessage `json:"step_result"`
	DeletedSnapshotID string          `json:"deleted_snapshot_id"`
}

// TestPythonAgentRunsPlans runs the orchestrator's execution plans against
// agent.py advertising the migrate_to_spot steps: a plan started by
// execute_now completes, each step run by the Python agent in order; a
// failed validation rolls the plan back in reverse order, each rollback
// step given the result of the step it undoes; a failed rollback step
// ends the plan rollback_failed; a pending plan is started by POST
// /coordination/plans/{id}/execute once, and a second execute is 409.
func TestPythonAgentRunsPlans(t *testing.T) {
	baseline := runtime.NumGoroutine()
	transport := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	t.Cleanup(func() { checkGoroutines(t, baseline, transport) })

	python := pythonWith(t, "flask", "requests")
	root := repoRoot(t)
	bin := buildOrchestrator(t, root)
	base, orch := startOrchestrator(t, client, bin,
		"AGENT_HEARTBEAT_INTERVAL=1s", "TASK_RETRY_BACKOFF=50ms", "TASK_RETRY_BACKOFF_MAX=200ms",
		"COORDINATION_POLL_INTERVAL=50ms")

	agentPort := freePort(t)
	agent := start(t, "agent", t.TempDir(), []string{"PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"},
		python, filepath.Join(root, "test", "crosslang", "agent", "agent.py"),
		"--orchestrator-url", base,
		"--name", agentName,
		"--type", agentType,
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(agentPort),
		"--capabilities", strings.Join(append([]string{"analyze"}, stepCapabilities...), ","),
		"--version", agentVersion,
	)
	agentID := agent.waitLine(t, regexp.MustCompile(`^registered (\S+)$`), 20*time.Second)[1]
	t.Logf("agent registered as %s", agentID)

	// checkStep checks what the agent answered for step st of plan p.
	checkStep := func(t *testing.T, p orchestrator.Plan, st orchestrator.PlanStep, resources []string) stepResult {
		t.Helper()
		if st.AgentID != agentID || st.TaskID != st.ID || st.StartedAt == nil || st.CompletedAt == nil {
			t.Errorf("step %s (%s): agent_id %q, task_id %q, started_at %v, completed_at %v; want run by %s as task %s, both times set",
				st.ID, st.Action, st.AgentID, st.TaskID, st.StartedAt, st.CompletedAt, agentID, st.ID)
		}
		var res stepResult
		if err := json.Unmarshal(st.Result, &res); err != nil {
			t.Fatalf("step %s (%s) result %s: %v", st.ID, st.Action, st.Result, err)
		}
		if res.Step != st.Action || res.Agent != agentName || res.AgentID != agentID || res.TaskID != st.ID ||
			res.PlanID != p.ID || res.StepID != st.ID || res.RecommendationID != p.RecommendationID ||
			res.CustomerID != planCustomer || res.Action != "migrate_to_spot" || !reflect.DeepEqual(res.Resources, resources) {
			t.Errorf("step %s (%s) result %s: want the Python agent's (%s) answer to task %s of plan %s, recommendation %s, customer %s, action migrate_to_spot, resources %v",
				st.ID, st.Action, st.Result, agentID, st.ID, p.ID, p.RecommendationID, planCustomer, resources)
		}
		return res
	}

	t.Run("execute_now runs the plan on the Python agent", func(t *testing.T) {
		resources := []string{"i-0a1", "i-0a2"}
		resp := coordinate(t, client, base, true, migrateToSpot(t, "rec-ok", resources, nil))
		if resp.AutoApproved != 1 || len(resp.ExecutionPlans) != 1 || resp.ExecutionPlans[0].Status != orchestrator.PlanRunning {
			t.Fatalf("coordinate with auto_approve and execute_now: %+v, want one auto-approved plan, running", resp)
		}
		p := waitPlan(t, client, base, resp.ExecutionPlans[0].ID)
		if p.Status != orchestrator.PlanCompleted || p.CompletedAt == nil || p.RolledBackAt != nil {
			t.Fatalf("plan ended %s: %s; want completed", p.Status, mustJSON(t, p))
		}
		checkActions(t, p, []string{"take_snapshot", "migrate_workload", "validate_quality"},
			[]orchestrator.StepStatus{orchestrator.StepCompleted, orchestrator.StepCompleted, orchestrator.StepCompleted})
		for i, st := range p.Steps {
			res := checkStep(t, p, st, resources)
			if st.Action == "take_snapshot" && res.SnapshotID != "snap-"+st.TaskID {
				t.Errorf("take_snapshot result %s: want snapshot_id snap-%s", st.Result, st.TaskID)
			}
			if i > 0 && p.Steps[i-1].CompletedAt != nil && st.StartedAt != nil && st.StartedAt.Before(*p.Steps[i-1].CompletedAt) {
				t.Errorf("step %s started at %s, before step %s completed at %s", st.Action, st.StartedAt, p.Steps[i-1].Action, p.Steps[i-1].CompletedAt)
			}
		}
		checkAgentOrder(t, agent, p, nil)
		if rec := getRecommendation(t, client, base, p.RecommendationID); rec.Status != orchestrator.RecommendationCompleted {
			t.Errorf("recommendation %s is %s after its plan completed, want completed", rec.RecordID, rec.Status)
		}
	})

	t.Run("a failed validation rolls the plan back on the Python agent", func(t *testing.T) {
		resources := []string{"i-0b1"}
		resp := coordinate(t, client, base, true,
			migrateToSpot(t, "rec-rollback", resources, map[string]any{"fail_steps": []string{"validate_quality"}}))
		if len(resp.ExecutionPlans) != 1 {
			t.Fatalf("coordinate: %+v, want one plan", resp)
		}
		p := waitPlan(t, client, base, resp.ExecutionPlans[0].ID)
		if p.Status != orchestrator.PlanRolledBack || p.RolledBackAt == nil {
			t.Fatalf("plan ended %s: %s; want rolled_back", p.Status, mustJSON(t, p))
		}
		checkActions(t, p,
			[]string{"take_snapshot", "migrate_workload", "validate_quality", "rollback_migrate_workload", "rollback_take_snapshot"},
			[]orchestrator.StepStatus{orchestrator.StepRolledBack, orchestrator.StepRolledBack, orchestrator.StepFailed,
				orchestrator.StepCompleted, orchestrator.StepCompleted})
		snapshot, migrate, validate := p.Steps[0], p.Steps[1], p.Steps[2]
		if validate.AgentID != agentID || !strings.Contains(validate.Error, "fail_steps") {
			t.Errorf("validate_quality: agent_id %q, error %q; want failed by %s with the agent's error (fail_steps)",
				validate.AgentID, validate.Error, agentID)
		}
		for _, rb := range []struct {
			step   orchestrator.PlanStep
			undone orchestrator.PlanStep
		}{{p.Steps[3], migrate}, {p.Steps[4], snapshot}} {
			res := checkStep(t, p, rb.step, resources)
			if rb.step.RollbackOf != rb.undone.ID || res.RollbackOf != rb.undone.ID || res.Undid != rb.undone.Action {
				t.Errorf("%s: rollback_of %q, result %s; want it to undo step %s (%s)",
					rb.step.Action, rb.step.RollbackOf, rb.step.Result, rb.undone.ID, rb.undone.Action)
			}
			// The agent echoes the step_result it was sent: the undone
			// step's result, as the orchestrator recorded it.
			if !jsonEqual(t, res.StepResult, rb.undone.Result) {
				t.Errorf("%s was sent step_result %s, want the result of %s: %s",
					rb.step.Action, res.StepResult, rb.undone.Action, rb.undone.Result)
			}
		}
		var rbSnapshot stepResult
		if err := json.Unmarshal(p.Steps[4].Result, &rbSnapshot); err != nil || rbSnapshot.DeletedSnapshotID != "snap-"+snapshot.TaskID {
			t.Errorf("rollback_take_snapshot result %s (%v): want deleted_snapshot_id snap-%s, read from the step_result",
				p.Steps[4].Result, err, snapshot.TaskID)
		}
		checkAgentOrder(t, agent, p, map[string]int{"validate_quality": 400})
		if rec := getRecommendation(t, client, base, p.RecommendationID); rec.Status != orchestrator.RecommendationRolledBack {
			t.Errorf("recommendation %s is %s after its plan rolled back, want rolled_back", rec.RecordID, rec.Status)
		}
	})

	t.Run("a failed rollback step ends the plan rollback_failed", func(t *testing.T) {
		resp := coordinate(t, client, base, true, migrateToSpot(t, "rec-rollback-fails", []string{"i-0c1"},
			map[string]any{"fail_steps": []string{"validate_quality", "rollback_migrate_workload"}}))
		if len(resp.ExecutionPlans) != 1 {
			t.Fatalf("coordinate: %+v, want one plan", resp)
		}
		p := waitPlan(t, client, base, resp.ExecutionPlans[0].ID)
		if p.Status != orchestrator.PlanRollbackFailed {
			t.Fatalf("plan ended %s: %s; want rollback_failed", p.Status, mustJSON(t, p))
		}
		// The snapshot is not deleted under a workload still migrated.
		checkActions(t, p,
			[]string{"take_snapshot", "migrate_workload", "validate_quality", "rollback_migrate_workload", "rollback_take_snapshot"},
			[]orchestrator.StepStatus{orchestrator.StepCompleted, orchestrator.StepCompleted, orchestrator.StepFailed,
				orchestrator.StepFailed, orchestrator.StepSkipped})
		if n := agent.count(regexp.MustCompile(`^task ` + regexp.QuoteMeta(p.Steps[4].ID) + ` `)); n != 0 {
			t.Errorf("the agent was sent the skipped rollback_take_snapshot %d times", n)
		}
		checkAgentOrder(t, agent, p, map[string]int{"validate_quality": 400, "rollback_migrate_workload": 400})
	})

	t.Run("execute starts a pending plan once", func(t *testing.T) {
		resp := coordinate(t, client, base, false, migrateToSpot(t, "rec-later", []string{"i-0d1"}, nil))
		if resp.AutoApproved != 1 || len(resp.ExecutionPlans) != 1 || resp.ExecutionPlans[0].Status != orchestrator.PlanPending {
			t.Fatalf("coordinate with auto_approve, without execute_now: %+v, want one auto-approved plan, pending", resp)
		}
		id := resp.ExecutionPlans[0].ID
		var pending orchestrator.Plan
		if code, body := call(t, client, http.MethodGet, base+"/coordination/plans/"+id, nil, &pending); code != http.StatusOK ||
			pending.Status != orchestrator.PlanPending {
			t.Fatalf("GET /coordination/plans/%s = %d %s, want 200 and pending", id, code, body)
		}
		var started struct {
			Message string            `json:"message"`
			PlanID  string            `json:"plan_id"`
			Plan    orchestrator.Plan `json:"plan"`
		}
		code, body := call(t, client, http.MethodPost, base+"/coordination/plans/"+id+"/execute", nil, &started)
		if code != http.StatusAccepted || started.Message != "Execution started" || started.PlanID != id ||
			started.Plan.Status != orchestrator.PlanRunning {
			t.Fatalf("POST /coordination/plans/%s/execute = %d %s, want 202 {\"message\":\"Execution started\",\"plan_id\":%q}, the plan running",
				id, code, body, id)
		}
		var refused struct {
			Error string `json:"error"`
		}
		if code, body := call(t, client, http.MethodPost, base+"/coordination/plans/"+id+"/execute", nil, &refused); code != http.StatusConflict || refused.Error == "" {
			t.Errorf("a second POST /coordination/plans/%s/execute = %d %s, want 409 with an error", id, code, body)
		}
		if code, body := call(t, client, http.MethodPost, base+"/coordination/plans/no-such-plan/execute", nil, nil); code != http.StatusNotFound {
			t.Errorf("POST /coordination/plans/no-such-plan/execute = %d %s, want 404", code, body)
		}
		p := waitPlan(t, client, base, id)
		if p.Status != orchestrator.PlanCompleted {
			t.Fatalf("plan ended %s: %s; want completed", p.Status, mustJSON(t, p))
		}
		for _, st := range p.Steps {
			checkStep(t, p, st, []string{"i-0d1"})
		}
		checkAgentOrder(t, agent, p, nil)
	})

	// Both exit cleanly: the executor stops with the orchestrator.
	if err := agent.terminate(); err != nil {
		t.Fatalf("SIGTERM to the agent: %v", err)
	}
	if code := agent.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("the agent exited %d after SIGTERM, want 0", code)
	}
	if err := orch.terminate(); err != nil {
		t.Fatalf("SIGTERM to the orchestrator: %v", err)
	}
	if code := orch.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("the orchestrator exited %d after SIGTERM, want 0", code)
	}
}

// migrateToSpot is a low-risk migrate_to_spot recommendation for the
// agent's type; extra goes into its parameters beside a region.
func migrateToSpot(t *testing.T, id string, resources []string, extra map[string]any) orchestrator.Recommendation {
	t.Helper()
	params := map[string]any{"region": "us-east-1"}
	for k, v := range extra {
		params[k] = v
	}
	return orchestrator.Recommendation{
		ID: id, AgentID: agentName, AgentType: agentType, Type: "cost", Title: "move " + id + " to spot",
		Action: "migrate_to_spot", RiskLevel: orchestrator.RiskLow, EstimatedSavings: 120,
		AffectedResources: resources, Parameters: mustJSON(t, params), Priority: 5, Confidence: 0.9,
	}
}

// coordinate POSTs one batch for planCustomer with auto_approve, so the
// low-risk recommendations need no person, and returns the 200 answer.
func coordinate(t *testing.T, client *http.Client, base string, executeNow bool, recs ...orchestrator.Recommendation) orchestrator.CoordinateResponse {
	t.Helper()
	var resp orchestrator.CoordinateResponse
	code, body := call(t, client, http.MethodPost, base+"/coordination/coordinate", orchestrator.CoordinateRequest{
		CustomerID: planCustomer, Recommendations: recs, AutoApprove: true, ExecuteNow: executeNow,
	}, &resp)
	if code != http.StatusOK {
		t.Fatalf("POST /coordination/coordinate = %d %s, want 200", code, body)
	}
	return resp
}

// getRecommendation reads GET /coordination/recommendations/{id}.
func getRecommendation(t *testing.T, client *http.Client, base, id string) orchestrator.Recommendation {
	t.Helper()
	var rec orchestrator.Recommendation
	if code, body := call(t, client, http.MethodGet, base+"/coordination/recommendations/"+id, nil, &rec); code != http.StatusOK {
		t.Fatalf("GET /coordination/recommendations/%s = %d %s, want 200", id, code, body)
	}
	return rec
}

// waitPlan polls GET /coordination/plans/{id} until the plan has ended,
// failing the test with the plan as last seen after a minute.
func waitPlan(t *testing.T, client *http.Client, base, id string) orchestrator.Plan {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var p orchestrator.Plan
		code, body := call(t, client, http.MethodGet, base+"/coordination/plans/"+id, nil, &p)
		if code != http.StatusOK {
			t.Fatalf("GET /coordination/plans/%s = %d %s, want 200", id, code, body)
		}
		if p.Status.Terminal() {
			if p.ID != id {
				t.Errorf("GET /coordination/plans/%s answered plan %q", id, p.ID)
			}
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan %s still %s after a minute: %s", id, p.Status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkActions checks the plan's steps, in order: their actions and
// statuses.
func checkActions(t *testing.T, p orchestrator.Plan, actions []string, statuses []orchestrator.StepStatus) {
	t.Helper()
	var gotActions []string
	var gotStatuses []orchestrator.StepStatus
	for _, st := range p.Steps {
		gotActions = append(gotActions, st.Action)
		gotStatuses = append(gotStatuses, st.Status)
	}
	if !slices.Equal(gotActions, actions) || !slices.Equal(gotStatuses, statuses) {
		t.Fatalf("plan %s steps %v %v, want %v %v: %s", p.ID, gotActions, gotStatuses, actions, statuses, mustJSON(t, p))
	}
}

// checkAgentOrder checks that the agent answered each step of p that ran
// exactly once, in the plan's order, with 200 or the status codes[action].
func checkAgentOrder(t *testing.T, agent *process, p orchestrator.Plan, codes map[string]int) {
	t.Helper()
	last := -1
	for _, st := range p.Steps {
		if st.Status == orchestrator.StepSkipped || st.Status == orchestrator.StepPending {
			continue
		}
		code := 200
		if c, ok := codes[st.Action]; ok {
			code = c
		}
		re := taskLine(st.TaskID, st.Action, code)
		if n := agent.count(re); n != 1 {
			t.Errorf("the agent answered step %s (%s) with %d %d times, want once", st.ID, st.Action, code, n)
			continue
		}
		i := agent.out.index(re)
		if i < last {
			t.Errorf("the agent answered step %s (%s) before the step ahead of it", st.ID, st.Action)
		}
		last = i
	}
}

// index is the position of the first line matching re, or -1.
func (l *lines) index(re *regexp.Regexp) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.IndexFunc(l.done, re.MatchString)
}

// call sends body (JSON, when not nil) and decodes a JSON answer into out
// (when not nil); it returns the status code and the answer's body.
func call(t *testing.T, client *http.Client, method, url string, body, out any) (int, []byte) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(mustJSON(t, body))
	}
	req, err := http.NewRequest(method, url, reader)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s = %d %s: %v", method, url, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode, data
}

// jsonEqual reports whether two JSON texts hold the same value.
func jsonEqual(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Errorf("%s: %v", a, err)
		return false
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Errorf("%s: %v", b, err)
		return false
	}
	return va != nil && reflect.DeepEqual(va, vb)
}
