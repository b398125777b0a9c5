package orchestrator

import (
	"encoding/json"
	"time"
)

// TaskStatus is where a task is in its life.
type TaskStatus string

// Task statuses. The last four are terminal: once there, a task never
// changes again.
const (
	TaskPending    TaskStatus = "pending"    // queued, waiting for a free agent
	TaskDispatched TaskStatus = "dispatched" // an attempt is in flight
	TaskRetrying   TaskStatus = "retrying"   // an attempt failed; the next waits for its backoff
	TaskCompleted  TaskStatus = "completed"
	TaskFailed     TaskStatus = "failed"
	TaskTimeout    TaskStatus = "timeout"
	TaskCancelled  TaskStatus = "cancelled"
)

// Terminal reports whether s is final: completed, failed, timeout or
// cancelled.
func (s TaskStatus) Terminal() bool {
	switch s {
	case TaskCompleted, TaskFailed, TaskTimeout, TaskCancelled:
		return true
	}
	return false
}

// Limits and defaults of a submission.
const (
	DefaultTimeoutSeconds = 30
	MaxTimeoutSeconds     = 300
	DefaultMaxRetries     = 3
	MaxRetriesLimit       = 10
)

// TaskRequest is the body of POST /tasks: a task to run. TaskType and
// AgentType are required. It is routed to a healthy agent of AgentType
// whose capabilities include TaskType.
type TaskRequest struct {
	TaskType  string    `json:"task_type"`
	AgentType AgentType `json:"agent_type"`
	// AgentID pins the task to one agent, which must be of AgentType,
	// capable and healthy.
	AgentID string `json:"agent_id,omitempty"`
	// Parameters is a JSON object passed to the agent as is; absent or
	// null is delivered as {}.
	Parameters json.RawMessage `json:"parameters,omitempty"`
	// Priority orders tasks waiting in the queue: higher first.
	Priority int `json:"priority,omitempty"`
	// TimeoutSeconds bounds each delivery attempt, from 1 to
	// MaxTimeoutSeconds; nil means DefaultTimeoutSeconds.
	TimeoutSeconds *int `json:"timeout_seconds,omitempty"`
	// MaxRetries is how many retries may follow the first attempt, from 0
	// (none) to MaxRetriesLimit; nil means DefaultMaxRetries.
	MaxRetries *int `json:"max_retries,omitempty"`
	// Metadata is a JSON object kept with the task and passed to the agent.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// TaskAccepted is the 201 answer of POST /tasks.
type TaskAccepted struct {
	TaskID string `json:"task_id"`
	// Status is dispatched when an agent had a free slot, else pending.
	Status TaskStatus `json:"status"`
	// AgentID is the chosen agent; empty while the task is pending.
	AgentID   string    `json:"agent_id"`
	CreatedAt time.Time `json:"created_at"`
	// StatusURL is /tasks/<task_id>.
	StatusURL string `json:"status_url"`
}

// Task is a task and its outcome, as GET /tasks/{id} shows it.
type Task struct {
	TaskID    string     `json:"task_id"`
	TaskType  string     `json:"task_type"`
	AgentType AgentType  `json:"agent_type"`
	Status    TaskStatus `json:"status"`
	// AgentID is the agent of the latest attempt; empty before the first.
	AgentID string `json:"agent_id"`
	// Parameters is a JSON object, never null.
	Parameters     json.RawMessage `json:"parameters"`
	Priority       int             `json:"priority"`
	TimeoutSeconds int             `json:"timeout_seconds"`
	MaxRetries     int             `json:"max_retries"`
	// Metadata is a JSON object, absent when the submission had none.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// Result is the agent's result, any JSON value; absent until the task
	// completed, and when the agent's reply had none.
	Result json.RawMessage `json:"result,omitempty"`
	// Error says why the task failed, timed out or was cancelled.
	Error     string    `json:"error,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// StartedAt is when the first delivery attempt began.
	StartedAt *time.Time `json:"started_at,omitempty"`
	// CompletedAt is when the task reached a terminal state.
	CompletedAt *time.Time `json:"completed_at,omitempty"`
	// RetryCount is the number of attempts after the first.
	RetryCount int `json:"retry_count"`
}

// TaskList is a page of GET /tasks, oldest first.
type TaskList struct {
	Tasks []Task `json:"tasks"`
	Count int    `json:"count"`
	// NextCursor is set when the page is full: pass it as the cursor for
	// the next page, which may be empty.
	NextCursor string `json:"next_cursor,omitempty"`
}

// ListTasksOptions are the query parameters of GET /tasks. The zero value
// lists the first page of every task.
type ListTasksOptions struct {
	// Status keeps only the tasks in this state.
	Status TaskStatus
	// Limit is the most tasks on a page, from 1 to 1000; 0 means the
	// server's default (100).
	Limit int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}
