package coordination

import "errors"

// The errors of the coordination domain. Each doc comment names the HTTP
// status the API will answer with (internal/api/errors.go maps them once).
var (
	// ErrInvalid is wrapped by every FieldError (400).
	ErrInvalid = errors.New("invalid")

	// ErrTooLarge is wrapped by the FieldError of a batch over
	// COORDINATION_MAX_BATCH (413, as registry.ErrTooLarge is).
	ErrTooLarge = errors.New("too large")

	// ErrNotFound: no recommendation, approval or plan has that id (404).
	// The pure core never returns it; the stores do.
	ErrNotFound = errors.New("not found")

	// ErrAlreadyDecided: the approval was approved or rejected already
	// (409).
	ErrAlreadyDecided = errors.New("already decided")

	// ErrAlreadyApproved: this person has approved this critical change
	// already; a second, different person must (409: the approval's state
	// refuses it, another person's request would succeed).
	ErrAlreadyApproved = errors.New("already approved by this user; a second, different approver is required")

	// ErrExpired: the approval expired before the decision (410).
	ErrExpired = errors.New("approval expired")

	// ErrSelfApproval: the requester tried to decide their own request
	// (403). Forbidden rather than 409: the approval is in a state that
	// accepts a decision, from anyone but this caller; no change of state
	// would make the request succeed, only another person.
	ErrSelfApproval = errors.New("the requester cannot decide their own request")

	// ErrInvalidTransition: a plan cannot move from its status to the one
	// asked, for example executing a plan twice or a finished plan (409).
	ErrInvalidTransition = errors.New("invalid plan transition")

	// ErrExecutionUnavailable: the request asked for plans to run
	// (execute_now, execute) of an engine built without a dispatcher (501
	// Not Implemented; the service always has one). The request is refused
	// whole, before anything is stored: storing the batch and silently not
	// running it would tell the caller a change was applied that was not.
	ErrExecutionUnavailable = errors.New("plan execution is not available: this engine has no dispatcher")
)

// FieldError is a field of a request that cannot be accepted: Field names
// it with its index, recommendations[2].risk_level. It is the coordination
// twin of registry.FieldError (whose Is reports registry.ErrInvalid, so it
// cannot be reused here without coordination depending on the registry's
// error identity); the API step maps it to 400 beside that one, or to 413
// when it wraps ErrTooLarge.
type FieldError struct {
	Field string
	Msg   string
	// Err, when set, says more about why: ErrTooLarge.
	Err error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Is makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }
