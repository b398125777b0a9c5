package orchestrator

import (
	"encoding/json"
)

// Delivery is the body the orchestrator POSTs to an agent's /task, with
// Content-Type: application/json, for each attempt at a task. A retry
// delivers the same TaskID again, possibly to another agent.
type Delivery struct {
	TaskID   string `json:"task_id"`
	TaskType string `json:"task_type"`
	// Parameters is a JSON object, never null: {} when the submission had
	// none.
	Parameters json.RawMessage `json:"parameters"`
	// TimeoutSeconds bounds this attempt: the orchestrator gives up on the
	// answer after that long (and retries, if retries are left).
	TimeoutSeconds int `json:"timeout_seconds"`
	Priority       int `json:"priority"`
	// Metadata is the submission's metadata object, absent when it had none.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// DeliveryReply is an agent's answer to a Delivery. The orchestrator reads
// status, result and error, and the HTTP status code:
//
//   - 2xx completes the task with Result, unless Status is "failed": that
//     is a failure, retried like a 5xx;
//   - 4xx fails the task at once, without retries (the agent refused it);
//   - 5xx, a dropped connection or an attempt longer than the task's
//     timeout is retried with backoff, on another capable agent when there
//     is one, up to the task's max_retries.
//
// TaskID and ExecutionTimeMS are what existing agents send; the
// orchestrator does not read them.
type DeliveryReply struct {
	TaskID string `json:"task_id"`
	// Status is completed or failed.
	Status TaskStatus `json:"status"`
	// Result is any JSON value; absent, the completed task has no result.
	Result json.RawMessage `json:"result,omitempty"`
	// Error is recorded as the task's error (prefixed with the HTTP status)
	// when the attempt failed.
	Error           string  `json:"error,omitempty"`
	ExecutionTimeMS float64 `json:"execution_time_ms,omitempty"`
}
