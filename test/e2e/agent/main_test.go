package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// registered is a keeper that registered as id.
type registered string

func (r registered) AgentID() string { return string(r) }

// newTestAgent is an agent serving the migrate_to_spot steps, registered
// as agent-1, behind a test server.
func newTestAgent(t *testing.T) (*agent, *httptest.Server) {
	t.Helper()
	a := &agent{
		dialect: "a", name: "e2e-agent-0", typ: "cost", host: "10.1.2.3", port: 8000, hostname: "e2e-agent-0",
		capabilities: []string{"e2e-echo", "take_snapshot", "migrate_workload", "validate_quality",
			"rollback_migrate_workload", "rollback_take_snapshot"},
		keeper:     registered("agent-1"),
		deliveries: newLedger(),
	}
	srv := httptest.NewServer(a.handler())
	t.Cleanup(srv.Close)
	return a, srv
}

// deliver POSTs a delivery of taskType with params to the agent's /task.
func deliver(t *testing.T, srv *httptest.Server, taskID, taskType, params string) (int, orchestrator.DeliveryReply) {
	t.Helper()
	body, err := json.Marshal(orchestrator.Delivery{TaskID: taskID, TaskType: taskType, Parameters: json.RawMessage(params), TimeoutSeconds: 5})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Post(srv.URL+"/task", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var reply orchestrator.DeliveryReply
	if err := json.Unmarshal(data, &reply); err != nil {
		t.Fatalf("POST /task %s: %d %s: %v", taskType, resp.StatusCode, data, err)
	}
	return resp.StatusCode, reply
}

// coordination is a step's "coordination" object, for plan-1's step id;
// extra adds fields (rollback_of, step_result).
func coordination(t *testing.T, stepID string, extra map[string]any) string {
	t.Helper()
	c := map[string]any{
		"plan_id": "plan-1", "step_id": stepID, "recommendation_id": "rec-1", "customer_id": "acme",
		"action": "migrate_to_spot", "affected_resources": []string{"i-1", "i-2"},
	}
	for k, v := range extra {
		c[k] = v
	}
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestPlanSteps(t *testing.T) {
	_, srv := newTestAgent(t)

	// A step: the result names it, its plan and its resources.
	code, snap := deliver(t, srv, "step-1", "take_snapshot", `{"region":"eu","coordination":`+coordination(t, "step-1", nil)+`}`)
	if code != http.StatusOK || snap.Status != orchestrator.TaskCompleted {
		t.Fatalf("take_snapshot: %d %+v, want 200 completed", code, snap)
	}
	var got map[string]any
	if err := json.Unmarshal(snap.Result, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"step": "take_snapshot", "task_id": "step-1", "plan_id": "plan-1", "step_id": "step-1",
		"recommendation_id": "rec-1", "customer_id": "acme", "action": "migrate_to_spot",
		"resources": []any{"i-1", "i-2"}, "snapshot_id": "snap-step-1",
		"hostname": "e2e-agent-0", "host": "10.1.2.3", "agent_name": "e2e-agent-0", "agent_id": "agent-1",
		"dialect": "a", "task_type": "take_snapshot",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("take_snapshot result\n got %v\nwant %v", got, want)
	}

	// A rollback step echoes the result of the step it undoes.
	rb := coordination(t, "step-9", map[string]any{"rollback_of": "step-1", "step_result": snap.Result})
	code, undo := deliver(t, srv, "step-9", "rollback_take_snapshot", `{"coordination":`+rb+`}`)
	if code != http.StatusOK || undo.Status != orchestrator.TaskCompleted {
		t.Fatalf("rollback_take_snapshot: %d %+v, want 200 completed", code, undo)
	}
	var res struct {
		Step              string          `json:"step"`
		RollbackOf        string          `json:"rollback_of"`
		Undid             string          `json:"undid"`
		StepResult        json.RawMessage `json:"step_result"`
		DeletedSnapshotID string          `json:"deleted_snapshot_id"`
	}
	if err := json.Unmarshal(undo.Result, &res); err != nil {
		t.Fatal(err)
	}
	if res.Step != "rollback_take_snapshot" || res.RollbackOf != "step-1" || res.Undid != "take_snapshot" ||
		!bytes.Equal(res.StepResult, snap.Result) || res.DeletedSnapshotID != "snap-step-1" {
		t.Errorf("rollback_take_snapshot result %s: want it to undo step-1, echo its result %s and delete snap-step-1", undo.Result, snap.Result)
	}

	// A rollback sent no step_result says so (null), rather than invent one.
	code, bare := deliver(t, srv, "step-8", "rollback_migrate_workload",
		`{"coordination":`+coordination(t, "step-8", map[string]any{"rollback_of": "step-2"})+`}`)
	if code != http.StatusOK || !strings.Contains(string(bare.Result), `"step_result":null`) {
		t.Errorf("rollback_migrate_workload without a step_result: %d %s, want 200 with step_result null", code, bare.Result)
	}
}

func TestPlanStepsRefused(t *testing.T) {
	_, srv := newTestAgent(t)
	for _, tc := range []struct {
		name, taskType, params, errorHas string
	}{
		{"a step in fail_steps", "validate_quality",
			`{"fail_steps":["validate_quality"],"coordination":{"plan_id":"plan-1"}}`, "validate_quality of plan plan-1 failed"},
		{"a rollback step in fail_steps", "rollback_migrate_workload",
			`{"fail_steps":["validate_quality","rollback_migrate_workload"],"coordination":{"plan_id":"plan-1"}}`, "requested by fail_steps"},
		{"a step it does not advertise", "scale", `{"coordination":{"plan_id":"plan-1"}}`, `"scale" not supported`},
		{"a coordination that is not an object", "migrate_workload", `{"coordination":"plan-1"}`, "parameters.coordination"},
		{"fail_steps that is not a list", "migrate_workload", `{"fail_steps":"all","coordination":{}}`, "parameters.fail_steps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, reply := deliver(t, srv, "task-"+tc.taskType, tc.taskType, tc.params)
			if code != http.StatusBadRequest || reply.Status != orchestrator.TaskFailed || !strings.Contains(reply.Error, tc.errorHas) {
				t.Errorf("%s: %d %+v, want 400 failed with an error saying %q", tc.taskType, code, reply, tc.errorHas)
			}
		})
	}
}

func TestTaskThatIsNotAStep(t *testing.T) {
	a, srv := newTestAgent(t)
	// fail_steps means nothing outside a plan: the task is echoed.
	code, reply := deliver(t, srv, "task-1", "e2e-echo", `{"n":42,"fail_steps":["e2e-echo"]}`)
	var got struct {
		Step       string         `json:"step"`
		AgentID    string         `json:"agent_id"`
		TaskType   string         `json:"task_type"`
		Parameters map[string]any `json:"parameters"`
	}
	if code != http.StatusOK || json.Unmarshal(reply.Result, &got) != nil || got.Step != "" || got.AgentID != "agent-1" ||
		got.TaskType != "e2e-echo" || got.Parameters["n"] != float64(42) {
		t.Errorf("e2e-echo: %d %+v, want 200 with the parameters echoed, no step", code, reply)
	}
	if d := a.deliveries.tasks["task-1"]; d == nil || d.Deliveries != 1 {
		t.Errorf("the ledger has %+v for task-1, want one delivery", d)
	}
}
