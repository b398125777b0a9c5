// Package auth checks the optional bearer tokens of the two roles: agents
// (registration and heartbeats) and operators (tasks and reads). A role
// with no tokens configured is open, so existing agents, which send no
// token, keep working until agent tokens are set.
//
// Tokens are kept only as SHA-256 digests and compared in constant time;
// no token, and no part of one, is ever logged or put in an error.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap/zapcore"
)

// Config names where each role's tokens come from: a comma-separated list
// in the environment, a file with one token per line (a mounted Kubernetes
// Secret), or both.
type Config struct {
	AgentTokens        string `env:"AUTH_AGENT_TOKENS"`
	AgentTokensFile    string `env:"AUTH_AGENT_TOKENS_FILE"`
	OperatorTokens     string `env:"AUTH_OPERATOR_TOKENS"`
	OperatorTokensFile string `env:"AUTH_OPERATOR_TOKENS_FILE"`
}

// MinTokenLength refuses tokens short enough to guess.
const MinTokenLength = 16

// Role is who a token speaks for.
type Role int

// The roles.
const (
	Agent Role = iota
	Operator
)

func (r Role) String() string {
	if r == Agent {
		return "agent"
	}
	return "operator"
}

// Validate loads the tokens once to report unreadable files and bad
// tokens at startup, naming the variable (never the token).
func (c Config) Validate() error {
	_, err := New(c)
	return err
}

// MarshalLogObject shows whether each role is protected and where its
// tokens come from, never the tokens.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	describe := func(list, file string) string {
		n := len(splitTokens(list))
		switch {
		case n == 0 && file == "":
			return "off"
		case file == "":
			return fmt.Sprintf("on (%d tokens from the environment)", n)
		}
		return fmt.Sprintf("on (%d tokens from the environment, and the file %s)", n, file)
	}
	enc.AddString("agent_tokens", describe(c.AgentTokens, c.AgentTokensFile))
	enc.AddString("operator_tokens", describe(c.OperatorTokens, c.OperatorTokensFile))
	return nil
}

// Authenticator holds the token digests of each role.
type Authenticator struct {
	digests [2][][sha256.Size]byte
}

// New loads the tokens c names.
func New(c Config) (*Authenticator, error) {
	a := &Authenticator{}
	var errs []error
	// An array indexed by role, not a map: errors come in the same order every run.
	for role, src := range [...][2]string{
		Agent:    {c.AgentTokens, c.AgentTokensFile},
		Operator: {c.OperatorTokens, c.OperatorTokensFile},
	} {
		role := Role(role)
		prefix := "AUTH_" + strings.ToUpper(role.String()) + "_TOKENS"
		tokens, err := load(prefix, src[0], src[1])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, t := range tokens {
			a.digests[role] = append(a.digests[role], sha256.Sum256([]byte(t)))
		}
	}
	return a, errors.Join(errs...)
}

func load(prefix, list, file string) ([]string, error) {
	tokens := splitTokens(list)
	for i, t := range tokens {
		if err := checkToken(t); err != nil {
			return nil, fmt.Errorf("%s: token %d of the list %w", prefix, i+1, err)
		}
	}
	if file == "" {
		return tokens, nil
	}
	data, err := os.ReadFile(file) //nolint:gosec // G304: reading the file the operator configured is the point
	if err != nil {
		return nil, fmt.Errorf("%s_FILE=%q: %w", prefix, file, unwrapPathError(err))
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	line, found := 0, 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if err := checkToken(t); err != nil {
			return nil, fmt.Errorf("%s_FILE=%q: line %d: the token %w", prefix, file, line, err)
		}
		tokens = append(tokens, t)
		found++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s_FILE=%q: %w", prefix, file, err)
	}
	if found == 0 {
		return nil, fmt.Errorf("%s_FILE=%q: no token in the file (one per line)", prefix, file)
	}
	return tokens, nil
}

// unwrapPathError drops the path from an *os.PathError: the caller names it.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func splitTokens(list string) []string {
	var out []string
	for t := range strings.SplitSeq(list, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// checkToken says what is wrong with a token without quoting it.
func checkToken(t string) error {
	if len(t) < MinTokenLength {
		return fmt.Errorf("is too short: tokens need at least %d characters", MinTokenLength)
	}
	for _, r := range t {
		if r <= ' ' || r == 0x7f {
			return errors.New("has a space or control character")
		}
	}
	return nil
}

// Enabled reports whether role needs a token.
func (a *Authenticator) Enabled(role Role) bool { return len(a.digests[role]) > 0 }

// Errors of Check.
var (
	ErrNoToken  = errors.New("a bearer token is required")
	ErrBadToken = errors.New("the bearer token is not valid for this endpoint")
)

// Check verifies an Authorization header value for role: nil when the
// request may go on. It is Authenticate for one role, for a caller that
// needs only the verdict.
func (a *Authenticator) Check(role Role, authorization string) error {
	_, err := a.Authenticate(authorization, role)
	return err
}
