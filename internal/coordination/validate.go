package coordination

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Validate checks a coordinate request against cfg and returns the first
// field that cannot be accepted, as a *FieldError naming it with its
// index (recommendations[2].risk_level), or nil. A batch over
// cfg.MaxBatch wraps ErrTooLarge. Validate reads req and never changes it.
func Validate(req orchestrator.CoordinateRequest, cfg Config) error {
	fieldErr := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	customer := strings.TrimSpace(req.CustomerID)
	switch {
	case customer == "":
		return fieldErr("customer_id", "is required")
	case strings.ContainsRune(req.CustomerID, 0):
		return fieldErr("customer_id", "must not contain NUL")
	case len(req.Recommendations) == 0:
		return fieldErr("recommendations", "must not be empty")
	case len(req.Recommendations) > cfg.MaxBatch:
		return &FieldError{Field: "recommendations", Err: ErrTooLarge,
			Msg: fmt.Sprintf("%d recommendations; at most %d in one request (COORDINATION_MAX_BATCH)", len(req.Recommendations), cfg.MaxBatch)}
	}
	// First the ids, so that a dependency may name a recommendation later
	// in the batch.
	index := make(map[string]int, len(req.Recommendations))
	for i, r := range req.Recommendations {
		field := fmt.Sprintf("recommendations[%d].id", i)
		switch j, dup := index[r.ID]; {
		case strings.TrimSpace(r.ID) == "":
			return fieldErr(field, "is required")
		case dup:
			return fieldErr(field, "%.64q is also recommendations[%d].id; ids must be unique in a request", r.ID, j)
		}
		index[r.ID] = i
	}
	for i, r := range req.Recommendations {
		field := func(name string) string { return fmt.Sprintf("recommendations[%d].%s", i, name) }
		// PostgreSQL text cannot hold NUL: refused here, the same with
		// either store.
		for _, f := range [...]struct{ name, v string }{{"id", r.ID}, {"agent_id", r.AgentID}, {"type", r.Type}, {"title", r.Title}, {"description", r.Description}} {
			if strings.ContainsRune(f.v, 0) {
				return fieldErr(field(f.name), "must not contain NUL")
			}
		}
		if r.CustomerID != "" && r.CustomerID != req.CustomerID {
			return fieldErr(field("customer_id"), "%.64q is not the request's customer_id %.64q", r.CustomerID, req.CustomerID)
		}
		if r.AgentType == "" {
			return fieldErr(field("agent_type"), "is required")
		}
		if _, err := registry.ParseType(string(r.AgentType)); err != nil {
			return fieldErr(field("agent_type"), "%s", err)
		}
		if err := registry.ValidTaskType(r.Action); err != nil {
			return fieldErr(field("action"), "%s", err)
		}
		if len(r.Action) > maxStepAction {
			return fieldErr(field("action"), "at most %d characters, so that %s<action> is a task type", maxStepAction, rollbackPrefix)
		}
		if r.RiskLevel.Rank() < 0 {
			return fieldErr(field("risk_level"), "%.32q: must be one of %s", r.RiskLevel, riskNames())
		}
		// JSON cannot spell NaN or infinities, but a Go caller can: NaN
		// compares false with everything and would break the ranking.
		if math.IsNaN(r.Confidence) || r.Confidence < 0 || r.Confidence > 1 {
			return fieldErr(field("confidence"), "%v: must be from 0 to 1", r.Confidence)
		}
		if math.IsNaN(r.EstimatedSavings) || math.IsInf(r.EstimatedSavings, 0) {
			return fieldErr(field("estimated_savings"), "%v: must be a finite number", r.EstimatedSavings)
		}
		for k, res := range r.AffectedResources {
			if strings.TrimSpace(res) == "" || strings.ContainsRune(res, 0) {
				return fieldErr(field(fmt.Sprintf("affected_resources[%d]", k)), "must not be empty or contain NUL")
			}
		}
		for k, dep := range r.Dependencies {
			if _, ok := index[dep]; !ok {
				return fieldErr(field(fmt.Sprintf("dependencies[%d]", k)), "%.64q is not the id of a recommendation in this request", dep)
			}
		}
		if !isObjectOrAbsent(r.Parameters) {
			return fieldErr(field("parameters"), "must be a JSON object")
		}
		if hasKey(r.Parameters, stepParametersKey) {
			return fieldErr(field("parameters."+stepParametersKey), "is reserved: the orchestrator adds it to each step's task")
		}
		if !isObjectOrAbsent(r.Metadata) {
			return fieldErr(field("metadata"), "must be a JSON object")
		}
	}
	return nil
}

// isObjectOrAbsent reports whether raw is absent, null or a JSON object:
// parameters are passed to agents as the object of a task.
func isObjectOrAbsent(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null")) || (raw[0] == '{' && json.Valid(raw))
}

// hasKey reports whether the JSON object raw (or absent) has key.
func hasKey(raw json.RawMessage, key string) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	_, ok := m[key]
	return ok
}
