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

	// set holds the variables above that are present in the environment,
	// even empty (see MarkSet).
	set map[string]bool
}

// variables are each role's two variables: the list, then the file.
var variables = [...][2]string{
	Agent:    {"AUTH_AGENT_TOKENS", "AUTH_AGENT_TOKENS_FILE"},
	Operator: {"AUTH_OPERATOR_TOKENS", "AUTH_OPERATOR_TOKENS_FILE"},
}

// MarkSet records which of the variables are present in the environment,
// as present reports them, even with an empty value. envconfig reads an
// empty variable as an unset one, but only a role whose variables are all
// unset may stay open: a role with a variable set and no token refuses to
// start (fail closed), so an empty value from a template, a Secret or a
// typo never switches auth off. config.Load calls it.
func (c *Config) MarkSet(present func(name string) bool) {
	c.set = map[string]bool{}
	for _, role := range variables {
		for _, name := range role {
			if present(name) {
				c.set[name] = true
			}
		}
	}
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
	enc.AddString("agent_tokens_file", c.AgentTokensFile)
	enc.AddString("operator_tokens", describe(c.OperatorTokens, c.OperatorTokensFile))
	enc.AddString("operator_tokens_file", c.OperatorTokensFile)
	return nil
}

// Authenticator holds the token digests of each role, with the operator
// tokens' names.
type Authenticator struct {
	tokens [2][]credential
}

// credential is one accepted token: its digest and, for an operator
// token, the name it speaks for.
type credential struct {
	digest [sha256.Size]byte
	name   string
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
		entries, err := c.load(Role(role), src[0], src[1])
		if err == nil {
			a.tokens[role], err = credentials(entries)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return a, errors.Join(errs...)
}

// entry is one configured token: where it was written (for errors), the
// token, and for an operator token its name and, when the entry was
// named, the entry whole (see the package doc: it is accepted too).
type entry struct {
	where string
	token string
	name  string
	whole string
}

// byteOrderMark is what Windows editors put at the start of a UTF-8 file.
const byteOrderMark = "\uFEFF"

// load reads role's tokens from list and file. A role with a variable set
// must end up with a token; only a role with both unset stays open.
func (c Config) load(role Role, list, file string) ([]entry, error) {
	listVar, fileVar := variables[role][0], variables[role][1]
	var entries []entry
	for i, t := range splitTokens(list) {
		e, err := parseEntry(role, t)
		if err != nil {
			return nil, fmt.Errorf("%s: token %d of the list %w", listVar, i+1, err)
		}
		e.where = fmt.Sprintf("%s: token %d of the list", listVar, i+1)
		entries = append(entries, e)
	}
	if file != "" {
		fromFile, err := readFile(role, fileVar, file)
		if err != nil {
			return nil, err
		}
		entries = append(entries, fromFile...)
	}
	if len(entries) == 0 {
		var set []string
		if list != "" || c.set[listVar] {
			set = append(set, listVar)
		}
		if c.set[fileVar] {
			set = append(set, fileVar)
		}
		switch len(set) {
		case 1:
			return nil, fmt.Errorf("%s is set but holds no token: give the %s role a token, or unset the variable to leave the role open",
				set[0], role)
		case 2:
			return nil, fmt.Errorf("%s and %s are set but hold no token: give the %s role a token, or unset both to leave the role open",
				set[0], set[1], role)
		}
	}
	return entries, nil
}

// readFile reads the tokens of a file, one per line, with # comments.
func readFile(role Role, variable, file string) ([]entry, error) {
	data, err := os.ReadFile(file) //nolint:gosec // G304: reading the file the operator configured is the point
	if err != nil {
		return nil, fmt.Errorf("%s=%q: %w", variable, file, unwrapPathError(err))
	}
	// A byte-order mark would otherwise glue itself to the first token,
	// and the agent holding the real token would be locked out.
	data = bytes.TrimPrefix(data, []byte(byteOrderMark))
	var entries []entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		e, err := parseEntry(role, t)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: line %d: the token %w", variable, file, line, err)
		}
		e.where = fmt.Sprintf("%s=%q: line %d", variable, file, line)
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s=%q: %w", variable, file, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%s=%q: no token in the file (one per line)", variable, file)
	}
	return entries, nil
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

// checkToken says what is wrong with a token without quoting it. Bearer
// tokens are printable ASCII (RFC 6750's b64token is a subset); anything
// else, such as a byte-order mark or a non-breaking space, means a broken
// file or list, not a token.
func checkToken(t string) error {
	if len(t) < MinTokenLength {
		return fmt.Errorf("is too short: tokens need at least %d characters", MinTokenLength)
	}
	for _, r := range t {
		switch {
		case r <= ' ' || r == 0x7f:
			return errors.New("has a space or control character")
		case r > '~':
			return errors.New("has a character outside printable ASCII (a byte-order mark, a non-breaking space, a letter with an accent?): tokens are ASCII")
		}
	}
	return nil
}

// Enabled reports whether role needs a token.
func (a *Authenticator) Enabled(role Role) bool { return len(a.tokens[role]) > 0 }

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
