package dispatch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// Status is where a task is in its life.
type Status string

// Task statuses. The last four are terminal: once there, a task never
// changes again.
const (
	StatusPending    Status = "pending"    // waiting for a free agent
	StatusDispatched Status = "dispatched" // an attempt is in flight
	StatusRetrying   Status = "retrying"   // an attempt failed; the next waits for its backoff
	StatusCompleted  Status = "completed"
	StatusFailed     Status = "failed"
	StatusTimeout    Status = "timeout"
	StatusCancelled  Status = "cancelled"
)

// Statuses lists every status, in order of a task's life.
var Statuses = []Status{StatusPending, StatusDispatched, StatusRetrying, StatusCompleted, StatusFailed, StatusTimeout, StatusCancelled}

// Terminal reports whether s is final.
func (s Status) Terminal() bool {
	switch s {
	case StatusCompleted, StatusFailed, StatusTimeout, StatusCancelled:
		return true
	}
	return false
}

// ParseStatus returns the Status named s.
func ParseStatus(s string) (Status, error) {
	for _, st := range Statuses {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("%.40q is not a task status; use pending, dispatched, retrying, completed, failed, timeout or cancelled", s)
}

// Task is a unit of work for an agent, and its outcome.
type Task struct {
	ID string
	// Seq orders tasks by submission; the store assigns it.
	Seq       uint64
	TaskType  string
	AgentType registry.Type
	// PinnedAgentID is the agent the operator asked for, if any.
	PinnedAgentID string
	// AgentID is the agent of the current or last attempt.
	AgentID string
	// Parameters is a JSON object, never null.
	Parameters     json.RawMessage
	Priority       int
	TimeoutSeconds int
	MaxRetries     int
	// Metadata is a JSON object, or nil.
	Metadata json.RawMessage
	Status   Status
	// Result is the agent's result, any JSON value; nil when none.
	Result      json.RawMessage
	Error       string
	CreatedAt   time.Time
	StartedAt   time.Time // zero until the first attempt
	CompletedAt time.Time // zero until terminal
	RetryCount  int
}

// Limits and defaults of a submission, as the wire protocol defines them.
const (
	DefaultTimeoutSeconds = 30
	MaxTimeoutSeconds     = 300
	DefaultMaxRetries     = 3
	// MaxRetriesLimit keeps a task from being retried for hours.
	MaxRetriesLimit = 10
)

// Request is an operator's submission. Nil pointers mean "not given".
type Request struct {
	// ID, when set, names the task instead of a new random id: a caller
	// that may submit the same work again (the coordination executor,
	// resuming a plan another replica was running) gets ErrExists the
	// second time instead of a second task. Not on the wire: operators'
	// tasks always get new ids.
	ID             string
	TaskType       string
	AgentType      string
	AgentID        string
	Parameters     json.RawMessage
	Priority       int
	TimeoutSeconds *int
	MaxRetries     *int
	Metadata       json.RawMessage
}

// validate checks r and returns the pending task it describes.
func (r Request) validate() (Task, error) {
	fieldErr := func(field, format string, args ...any) (Task, error) {
		return Task{}, &registry.FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if r.TaskType == "" {
		return fieldErr("task_type", "is required")
	}
	if err := registry.ValidTaskType(r.TaskType); err != nil {
		return fieldErr("task_type", "%s", err)
	}
	if r.AgentType == "" {
		return fieldErr("agent_type", "is required")
	}
	typ, err := registry.ParseType(r.AgentType)
	if err != nil {
		return fieldErr("agent_type", "%s", err)
	}
	params, err := objectOrEmpty(r.Parameters)
	if err != nil {
		return fieldErr("parameters", "%s", err)
	}
	var meta json.RawMessage
	if !isNull(r.Metadata) {
		if meta, err = objectOrEmpty(r.Metadata); err != nil {
			return fieldErr("metadata", "%s", err)
		}
	}
	timeout := DefaultTimeoutSeconds
	if r.TimeoutSeconds != nil {
		timeout = *r.TimeoutSeconds
		if timeout < 1 || timeout > MaxTimeoutSeconds {
			return fieldErr("timeout_seconds", "must be from 1 to %d", MaxTimeoutSeconds)
		}
	}
	retries := DefaultMaxRetries
	if r.MaxRetries != nil {
		retries = *r.MaxRetries
		if retries < 0 || retries > MaxRetriesLimit {
			return fieldErr("max_retries", "must be from 0 to %d (0: no retries)", MaxRetriesLimit)
		}
	}
	return Task{
		TaskType:       r.TaskType,
		AgentType:      typ,
		PinnedAgentID:  r.AgentID,
		Parameters:     params,
		Priority:       r.Priority,
		TimeoutSeconds: timeout,
		MaxRetries:     retries,
		Metadata:       meta,
		Status:         StatusPending,
	}, nil
}

var emptyObject = json.RawMessage(`{}`)

func isNull(raw json.RawMessage) bool {
	trimmed := bytes.TrimSpace(raw)
	return len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null"))
}

// objectOrEmpty returns raw when it is a JSON object, {} when it is absent
// or null: agents always get an object, never null.
func objectOrEmpty(raw json.RawMessage) (json.RawMessage, error) {
	if isNull(raw) {
		return emptyObject, nil
	}
	trimmed := bytes.TrimSpace(raw)
	if trimmed[0] != '{' || !json.Valid(trimmed) {
		return nil, errors.New("must be a JSON object")
	}
	return trimmed, nil
}
