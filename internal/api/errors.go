package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/storeerr"
)

// errorBody is the one shape of every error this service returns.
type errorBody struct {
	Error string `json:"error"`
}

// writeError writes {"error": msg} with the given status.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

// writeJSON writes v as a JSON body with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"error":"internal error: response could not be encoded"}`)
	}
	writeBody(w, status, append(body, '\n'))
}

// writeBody writes a body that is already JSON.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// retryAfterUnavailable is the Retry-After, in seconds, of a 503 for
// storage that cannot be reached: about the time a database takes to
// restart or fail over, and the readiness grace after which this replica
// leaves its Service.
const retryAfterUnavailable = "5"

// retryAfterCoordinationFull is the Retry-After, in seconds, of a 503 for a
// full coordination store: the default COORDINATION_SWEEP_INTERVAL, after
// which the sweep has pruned what has settled.
const retryAfterCoordinationFull = "30"

// writeDomainError answers for an error of the domain or of decoding: each
// error's HTTP meaning is decided here and nowhere else. Anything not
// known is a 500 whose cause goes to the access log, not to the client.
func writeDomainError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		body  *bodyError
		field *registry.FieldError
		coord *coordination.FieldError
		noAgt *dispatch.NoAgentError
	)
	switch {
	case errors.As(err, &body):
		writeError(w, body.status, body.msg)
	case errors.Is(err, storeerr.ErrUnavailable):
		// The database cannot be reached now (down, restarting, failing
		// over): the client may retry, on this replica or another. The
		// cause goes to the access log; the client learns nothing of the
		// database behind.
		if rec := routeOf(w); rec != nil {
			rec.err = err
		}
		w.Header().Set("Retry-After", retryAfterUnavailable)
		writeError(w, http.StatusServiceUnavailable, "storage unavailable: the orchestrator cannot reach its database now; retry in a few seconds")
	case errors.Is(err, registry.ErrTooLarge), errors.Is(err, coordination.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.As(err, &field):
		writeError(w, http.StatusBadRequest, field.Error())
	case errors.As(err, &coord):
		writeError(w, http.StatusBadRequest, coord.Error())
	case errors.Is(err, coordination.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, coordination.ErrAlreadyDecided), errors.Is(err, coordination.ErrAlreadyApproved),
		errors.Is(err, coordination.ErrInvalidTransition):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, coordination.ErrExpired):
		// Gone, not 409: no state of the approval will accept a decision
		// again; the recommendation must be submitted anew.
		writeError(w, http.StatusGone, err.Error())
	case errors.Is(err, coordination.ErrSelfApproval):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, coordination.ErrFull):
		// Like storage that cannot be reached: the capacity frees as the
		// sweep prunes settled coordinations, so the client may retry.
		w.Header().Set("Retry-After", retryAfterCoordinationFull)
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, coordination.ErrExecutionUnavailable):
		writeError(w, http.StatusNotImplemented, err.Error())
	case errors.Is(err, registry.ErrIDTaken):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, registry.ErrNotOwner):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, registry.ErrFull), errors.Is(err, registry.ErrMetadataBudget):
		// 507, not 429: the registry's capacity (agents, or the metadata
		// they hold) is spent, not the client's rate. Retrying helps only
		// once agents unregister or are evicted, and 429's Retry-After
		// would invite clients to hammer.
		writeError(w, http.StatusInsufficientStorage, err.Error())
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, dispatch.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, registry.ErrHostNotAllowed):
		field := "host"
		var named *hostFieldError
		if errors.As(err, &named) {
			field = named.field
		}
		writeError(w, http.StatusForbidden, field+": "+err.Error())
	case errors.Is(err, dispatch.ErrFinished):
		writeError(w, http.StatusConflict, err.Error())
	case errors.As(err, &noAgt):
		writeError(w, http.StatusServiceUnavailable, noAgt.Error())
	case errors.Is(err, dispatch.ErrQueueFull):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, dispatch.ErrShuttingDown):
		writeError(w, http.StatusServiceUnavailable, err.Error()+": retry, another replica will answer")
	case r.Context().Err() != nil:
		writeError(w, http.StatusServiceUnavailable, "the request was cancelled")
	default:
		if rec := routeOf(w); rec != nil {
			rec.err = err
		}
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

// notFoundAs names what was not found: agent "1234" not found.
func notFoundAs(err error, what, id string) error {
	if errors.Is(err, registry.ErrNotFound) || errors.Is(err, dispatch.ErrNotFound) || errors.Is(err, coordination.ErrNotFound) {
		return &notFoundError{what: what, id: id, err: err}
	}
	return err
}

type notFoundError struct {
	what, id string
	err      error
}

func (e *notFoundError) Error() string { return fmt.Sprintf("%s %.64q not found", e.what, e.id) }
func (e *notFoundError) Unwrap() error { return e.err }

// finishedAs says what a finished task ended as.
func finishedAs(err error, t dispatch.Task) error {
	if errors.Is(err, dispatch.ErrFinished) {
		return fmt.Errorf("%w: task %s is %s; only pending, dispatched or retrying tasks can be cancelled", err, t.ID, t.Status)
	}
	return err
}
