package registry

import (
	"errors"

	"go.uber.org/zap/zapcore"
)

// Actor is who asks the registry for a change: the fingerprint of the
// bearer token the request carried, whether that token is an operator's,
// and the operator's name. The zero Actor is a caller without a token, as every agent
// is while agent authentication is off.
//
// An agent is bound to the token it registered with (Agent.Owner): only
// an Actor with that token may register it again, heartbeat or unregister
// it; an operator may unregister any agent. Agents that all share one
// token cannot be told apart, so binding protects nothing between them.
type Actor struct {
	// Token is the token's fingerprint ("sha256:" and 12 hex digits);
	// empty without a token.
	Token string
	// Operator is true for an operator's token.
	Operator bool
	// Name is the operator's name (auth.Principal.Name), for the logs:
	// not a secret. Empty for an agent and a caller without a token.
	// Ownership never depends on it.
	Name string
}

// owner is what the store checks a change against: the agent token's
// fingerprint, or "" for an Actor that may change any agent (an operator,
// or a caller without a token when agent authentication is off).
func (a Actor) owner() string {
	if a.Operator {
		return ""
	}
	return a.Token
}

// MarshalLogObject shows the role, the fingerprint and the operator's
// name (never a token).
func (a Actor) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	role := "agent"
	if a.Operator {
		role = "operator"
	}
	enc.AddString("role", role)
	if a.Token != "" {
		enc.AddString("token", a.Token)
	}
	if a.Name != "" {
		enc.AddString("name", a.Name)
	}
	return nil
}

// ErrNotOwner is returned for a change to an agent bound to another
// agent token.
var ErrNotOwner = errors.New("bound to another agent token")

// OwnerError is a change refused because the agent is bound to another
// agent token. It names the agent as the caller named it, and nothing of
// the token.
type OwnerError struct {
	// Agent is how the caller named the agent: its ID, or its name, host
	// and port for a registration.
	Agent string
}

func (e *OwnerError) Error() string {
	return "agent " + e.Agent + " is bound to another agent token: only the token it registered with may register it again, " +
		"send its heartbeats or unregister it (an operator token may unregister it)"
}

// Unwrap makes errors.Is(err, ErrNotOwner) true.
func (e *OwnerError) Unwrap() error { return ErrNotOwner }
