package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// rollbackPrefix names the step that undoes another: rollback_<action>.
const rollbackPrefix = "rollback_"

// stepCoordination is the "coordination" object the orchestrator adds to
// the parameters of a plan step's task: which plan, step and
// recommendation it belongs to, and for a rollback step, the step it
// undoes and that step's result.
type stepCoordination struct {
	PlanID            string          `json:"plan_id"`
	StepID            string          `json:"step_id"`
	RecommendationID  string          `json:"recommendation_id"`
	CustomerID        string          `json:"customer_id"`
	Action            string          `json:"action"`
	AffectedResources []string        `json:"affected_resources"`
	RollbackOf        string          `json:"rollback_of"`
	StepResult        json.RawMessage `json:"step_result"`
}

// planStep reads a delivery's parameters: the step's coordination object
// and its fail_steps, or ok false when the task is not a plan step (no
// "coordination"). A step whose coordination or fail_steps cannot be
// read is refused: no attempt could do better.
func planStep(d orchestrator.Delivery) (c stepCoordination, failSteps []string, ok bool, err error) {
	var params map[string]json.RawMessage
	if json.Unmarshal(d.Parameters, &params) != nil {
		return c, nil, false, nil // not an object: not a step
	}
	raw, ok := params["coordination"]
	if !ok {
		return c, nil, false, nil
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, nil, true, orchestrator.Reject(fmt.Errorf("parameters.coordination: %w", err))
	}
	if raw, has := params["fail_steps"]; has {
		if err := json.Unmarshal(raw, &failSteps); err != nil {
			return c, nil, true, orchestrator.Reject(fmt.Errorf("parameters.fail_steps: want a list of step types: %w", err))
		}
	}
	return c, failSteps, true, nil
}

// stepResult is the result of a plan step: result, the task's echo, made to
// name what the step did (the step, its plan, step, recommendation and
// customer, the affected resources) instead of echoing the parameters;
// take_snapshot adds a snapshot_id, the same for every delivery of the
// task, as an idempotent agent's; a rollback_<action> step echoes the
// step_result it was sent, and rollback_take_snapshot names the snapshot
// it deletes from it. (A step named in fail_steps never gets here:
// runTask refuses it with 400, so a test can fail any step of a plan, a
// rollback step too.)
func stepResult(d orchestrator.Delivery, c stepCoordination, result map[string]any) map[string]any {
	result["step"] = d.TaskType
	result["task_id"] = d.TaskID
	result["plan_id"] = c.PlanID
	result["step_id"] = c.StepID
	result["recommendation_id"] = c.RecommendationID
	result["customer_id"] = c.CustomerID
	result["action"] = c.Action
	result["resources"] = c.AffectedResources
	delete(result, "parameters") // the step's are the recommendation's: not echoed
	if d.TaskType == "take_snapshot" {
		result["snapshot_id"] = "snap-" + d.TaskID
	}
	if undid, ok := strings.CutPrefix(d.TaskType, rollbackPrefix); ok {
		result["rollback_of"] = c.RollbackOf
		result["undid"] = undid
		result["step_result"] = c.StepResult // null when the orchestrator sent none
		if undid == "take_snapshot" {
			var snapshot struct {
				SnapshotID string `json:"snapshot_id"`
			}
			if len(c.StepResult) > 0 && json.Unmarshal(c.StepResult, &snapshot) == nil {
				result["deleted_snapshot_id"] = snapshot.SnapshotID
			}
		}
	}
	return result
}
