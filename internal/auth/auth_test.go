package auth_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/auth"
)

// Tokens used below; each at least auth.MinTokenLength long.
const (
	agentTok    = "agent-token-0123456789"
	agentTok2   = "agent-token-second-9876"
	operatorTok = "operator-token-abcdefgh"
	fileTok     = "file-token-from-secret-01"
	fileTok2    = "file-token-from-secret-02"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustNew(t *testing.T, c auth.Config) *auth.Authenticator {
	t.Helper()
	a, err := auth.New(c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return a
}

func bearer(tok string) string { return "Bearer " + tok }

func TestRolesOpenWithoutTokens(t *testing.T) {
	a := mustNew(t, auth.Config{})
	for _, role := range []auth.Role{auth.Agent, auth.Operator} {
		if a.Enabled(role) {
			t.Errorf("%s enabled without tokens", role)
		}
		for _, h := range []string{"", "Bearer nonsense", "Basic dXNlcjpwYXNz", "garbage"} {
			if err := a.Check(role, h); err != nil {
				t.Errorf("Check(%s, %q) on an open role = %v, want nil", role, h, err)
			}
		}
	}
}

func TestRolesAreIndependent(t *testing.T) {
	a := mustNew(t, auth.Config{AgentTokens: agentTok})
	if !a.Enabled(auth.Agent) || a.Enabled(auth.Operator) {
		t.Fatalf("agent tokens only: enabled agent %v operator %v", a.Enabled(auth.Agent), a.Enabled(auth.Operator))
	}
	if err := a.Check(auth.Operator, ""); err != nil {
		t.Errorf("operator role without tokens refused a request: %v", err)
	}
	if err := a.Check(auth.Agent, ""); !errors.Is(err, auth.ErrNoToken) {
		t.Errorf("agent role without a header = %v, want ErrNoToken", err)
	}

	b := mustNew(t, auth.Config{OperatorTokens: operatorTok})
	if b.Enabled(auth.Agent) || !b.Enabled(auth.Operator) {
		t.Fatalf("operator tokens only: enabled agent %v operator %v", b.Enabled(auth.Agent), b.Enabled(auth.Operator))
	}
	if err := b.Check(auth.Agent, ""); err != nil {
		t.Errorf("agent role without tokens refused a request: %v", err)
	}
}

func TestRoleString(t *testing.T) {
	if auth.Agent.String() != "agent" || auth.Operator.String() != "operator" {
		t.Errorf("roles are %q and %q", auth.Agent, auth.Operator)
	}
}

func TestEnvList(t *testing.T) {
	a := mustNew(t, auth.Config{AgentTokens: " ," + agentTok + " , ,\t" + agentTok2 + ",", OperatorTokens: operatorTok})
	for _, tok := range []string{agentTok, agentTok2} {
		if err := a.Check(auth.Agent, bearer(tok)); err != nil {
			t.Errorf("agent token %s refused: %v", tok, err)
		}
	}
	if err := a.Check(auth.Operator, bearer(operatorTok)); err != nil {
		t.Errorf("operator token refused: %v", err)
	}
	// Blank entries are no token at all.
	for _, h := range []string{"Bearer ,", "Bearer  ", "Bearer"} {
		if err := a.Check(auth.Agent, h); err == nil {
			t.Errorf("Check(agent, %q) accepted", h)
		}
	}
}

func TestFile(t *testing.T) {
	path := writeFile(t, strings.Join([]string{
		"# agent tokens, one per line",
		"",
		"   ",
		"  " + fileTok + "  ",
		"#commented-out-token-0123456789",
		"\t# indented comment",
		fileTok2 + "\r", // written on Windows
		"",
	}, "\n"))
	a := mustNew(t, auth.Config{AgentTokensFile: path, AgentTokens: agentTok})
	for _, tok := range []string{fileTok, fileTok2, agentTok} {
		if err := a.Check(auth.Agent, bearer(tok)); err != nil {
			t.Errorf("token %s (file and env together) refused: %v", tok, err)
		}
	}
	for _, tok := range []string{"#commented-out-token-0123456789", "commented-out-token-0123456789", "# agent tokens, one per line"} {
		if err := a.Check(auth.Agent, bearer(tok)); !errors.Is(err, auth.ErrBadToken) {
			t.Errorf("a comment was taken as a token: Check(%q) = %v", tok, err)
		}
	}
	if a.Enabled(auth.Operator) {
		t.Error("the agent file enabled the operator role")
	}
	if err := a.Check(auth.Operator, bearer(fileTok)); err != nil {
		t.Errorf("open operator role refused: %v", err)
	}

	op := mustNew(t, auth.Config{OperatorTokensFile: writeFile(t, operatorTok+"\n")})
	if err := op.Check(auth.Operator, bearer(operatorTok)); err != nil {
		t.Errorf("operator token from file refused: %v", err)
	}
	if err := op.Check(auth.Operator, bearer(fileTok)); !errors.Is(err, auth.ErrBadToken) {
		t.Errorf("an agent file token was accepted for the operator role: %v", err)
	}
}

// checkRefused asserts that c fails Validate and New naming variable and
// wanting each of wants, and that no secret appears in the error or in
// the log object of c.
func checkRefused(t *testing.T, c auth.Config, variable string, wants []string, secrets ...string) {
	t.Helper()
	err := c.Validate()
	if err == nil {
		t.Fatalf("Validate = nil, want an error naming %s", variable)
	}
	if _, newErr := auth.New(c); newErr == nil || newErr.Error() != err.Error() {
		t.Errorf("New = %v, Validate = %v: want the same error", newErr, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, variable) {
		t.Errorf("error %q does not name %s", msg, variable)
	}
	for _, w := range wants {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not say %q", msg, w)
		}
	}
	enc := zapcore.NewMapObjectEncoder()
	if err := c.MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	logged := fmt.Sprint(enc.Fields)
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			t.Errorf("error %q contains the secret %q", msg, s)
		}
		if strings.Contains(logged, s) {
			t.Errorf("log object %s contains the secret %q", logged, s)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	short := "s3cr3tX-short" // 13 characters
	if len(short) >= auth.MinTokenLength {
		t.Fatal("the short token is not short")
	}
	spaced := "s3cr3tY-first s3cr3tZ-second"
	missing := filepath.Join(t.TempDir(), "no-such-file")

	t.Run("short env token", func(t *testing.T) {
		checkRefused(t, auth.Config{AgentTokens: agentTok + "," + short},
			"AUTH_AGENT_TOKENS", []string{"token 2 of the list", "too short", "16"}, short)
	})
	t.Run("15 characters", func(t *testing.T) {
		tok := strings.Repeat("k", auth.MinTokenLength-1)
		checkRefused(t, auth.Config{OperatorTokens: tok}, "AUTH_OPERATOR_TOKENS", []string{"too short"}, tok)
	})
	t.Run("short file token", func(t *testing.T) {
		path := writeFile(t, "# header\n"+fileTok+"\n\n"+short+"\n")
		checkRefused(t, auth.Config{OperatorTokensFile: path},
			"AUTH_OPERATOR_TOKENS_FILE", []string{path, "line 4", "too short"}, short, fileTok)
	})
	t.Run("token with a space", func(t *testing.T) {
		path := writeFile(t, spaced+"\n")
		checkRefused(t, auth.Config{AgentTokensFile: path},
			"AUTH_AGENT_TOKENS_FILE", []string{"line 1", "space"}, "s3cr3tY", "s3cr3tZ")
	})
	t.Run("token with a control character", func(t *testing.T) {
		tok := "s3cr3tW-control\x01chars"
		checkRefused(t, auth.Config{AgentTokens: tok}, "AUTH_AGENT_TOKENS", []string{"control"}, "s3cr3tW")
	})
	t.Run("missing file", func(t *testing.T) {
		checkRefused(t, auth.Config{AgentTokens: agentTok, AgentTokensFile: missing},
			"AUTH_AGENT_TOKENS_FILE", []string{missing, "no such file"}, agentTok)
	})
	t.Run("directory", func(t *testing.T) {
		checkRefused(t, auth.Config{OperatorTokensFile: t.TempDir()}, "AUTH_OPERATOR_TOKENS_FILE", nil)
	})
	t.Run("unreadable file", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files whatever their mode")
		}
		path := writeFile(t, fileTok+"\n")
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		checkRefused(t, auth.Config{AgentTokensFile: path}, "AUTH_AGENT_TOKENS_FILE", []string{"permission denied"}, fileTok)
	})
	t.Run("line too long to scan", func(t *testing.T) {
		long := "s3cr3tL" + strings.Repeat("x", 70_000)
		checkRefused(t, auth.Config{AgentTokensFile: writeFile(t, long+"\n")}, "AUTH_AGENT_TOKENS_FILE", []string{"too long"}, "s3cr3tL")
	})
	t.Run("empty file", func(t *testing.T) {
		checkRefused(t, auth.Config{AgentTokensFile: writeFile(t, "")}, "AUTH_AGENT_TOKENS_FILE", []string{"no token"})
	})
	t.Run("only comments", func(t *testing.T) {
		checkRefused(t, auth.Config{AgentTokensFile: writeFile(t, "# nothing yet\n\n  \n")}, "AUTH_AGENT_TOKENS_FILE", []string{"no token"})
	})
	t.Run("both roles", func(t *testing.T) {
		c := auth.Config{AgentTokens: short, OperatorTokensFile: missing}
		checkRefused(t, c, "AUTH_AGENT_TOKENS", nil, short)
		checkRefused(t, c, "AUTH_OPERATOR_TOKENS_FILE", nil, short)
		if err := c.Validate(); !strings.HasPrefix(err.Error(), "AUTH_AGENT_TOKENS:") {
			t.Errorf("Validate = %q, want the agent role first, every time", err)
		}
	})
}

func TestLogObjectShowsNoToken(t *testing.T) {
	path := writeFile(t, fileTok+"\n"+fileTok2+"\n")
	c := auth.Config{AgentTokens: agentTok + "," + agentTok2, AgentTokensFile: path, OperatorTokens: operatorTok}
	enc := zapcore.NewMapObjectEncoder()
	if err := c.MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	logged := fmt.Sprint(enc.Fields)
	for _, s := range []string{agentTok, agentTok2, operatorTok, fileTok, fileTok2, "agent-token", "operator-token", "file-token"} {
		if strings.Contains(logged, s) {
			t.Errorf("log object %s contains %q", logged, s)
		}
	}
	if got := enc.Fields["agent_tokens"]; got != "on (2 tokens from the environment, and the file "+path+")" {
		t.Errorf("agent_tokens = %v", got)
	}
	if got := enc.Fields["operator_tokens"]; got != "on (1 tokens from the environment)" {
		t.Errorf("operator_tokens = %v", got)
	}
	if got := enc.Fields["agent_tokens_file"]; got != path {
		t.Errorf("agent_tokens_file = %v, want the path", got)
	}
	if got, ok := enc.Fields["operator_tokens_file"]; !ok || got != "" {
		t.Errorf("operator_tokens_file = %v, want empty", got)
	}
	off := zapcore.NewMapObjectEncoder()
	if err := (auth.Config{}).MarshalLogObject(off); err != nil {
		t.Fatal(err)
	}
	if off.Fields["agent_tokens"] != "off" || off.Fields["operator_tokens"] != "off" {
		t.Errorf("no tokens logged as %v", off.Fields)
	}
}

func TestCheck(t *testing.T) {
	a := mustNew(t, auth.Config{AgentTokens: agentTok + "," + agentTok2, OperatorTokens: operatorTok})
	tests := []struct {
		name   string
		role   auth.Role
		header string
		want   error
	}{
		{"missing header", auth.Agent, "", auth.ErrNoToken},
		{"scheme only", auth.Agent, "Bearer", auth.ErrNoToken},
		{"scheme and space", auth.Agent, "Bearer ", auth.ErrNoToken},
		{"scheme and spaces", auth.Agent, "Bearer    ", auth.ErrNoToken},
		{"token without scheme", auth.Agent, agentTok, auth.ErrNoToken},
		{"basic scheme", auth.Agent, "Basic " + agentTok, auth.ErrNoToken},
		{"token scheme", auth.Agent, "Token " + agentTok, auth.ErrNoToken},
		{"bearer glued", auth.Agent, "Bearer" + agentTok, auth.ErrNoToken},
		{"tab separator", auth.Agent, "Bearer\t" + agentTok, auth.ErrNoToken},
		{"right token", auth.Agent, bearer(agentTok), nil},
		{"second token", auth.Agent, bearer(agentTok2), nil},
		{"lowercase bearer", auth.Agent, "bearer " + agentTok, nil},
		{"uppercase bearer", auth.Agent, "BEARER " + agentTok, nil},
		{"trailing spaces", auth.Agent, bearer(agentTok) + "   ", nil},
		{"two spaces after scheme", auth.Agent, "Bearer  " + agentTok, nil},
		{"operator token", auth.Operator, bearer(operatorTok), nil},
		{"other role's token (agent on operator)", auth.Operator, bearer(agentTok), auth.ErrBadToken},
		{"other role's token (operator on agent)", auth.Agent, bearer(operatorTok), auth.ErrBadToken},
		{"wrong token", auth.Agent, bearer("not-a-token-at-all-0000"), auth.ErrBadToken},
		{"prefix of token", auth.Agent, bearer(agentTok[:len(agentTok)-1]), auth.ErrBadToken},
		{"token plus a character", auth.Agent, bearer(agentTok + "x"), auth.ErrBadToken},
		{"case of token matters", auth.Agent, bearer(strings.ToUpper(agentTok)), auth.ErrBadToken},
		{"two tokens", auth.Agent, bearer(agentTok + " " + agentTok2), auth.ErrBadToken},
		{"both tokens comma", auth.Agent, bearer(agentTok + "," + agentTok2), auth.ErrBadToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := a.Check(tc.role, tc.header)
			if tc.want == nil {
				if err != nil {
					t.Errorf("Check(%s, %q) = %v, want nil", tc.role, tc.header, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Check(%s, %q) = %v, want %v", tc.role, tc.header, err, tc.want)
			}
			for _, s := range []string{agentTok, agentTok2, operatorTok} {
				if err != nil && strings.Contains(err.Error(), s) {
					t.Errorf("Check error %q contains a token", err)
				}
			}
		})
	}
}

// setVars returns a present function for MarkSet: the named variables are
// in the environment.
func setVars(names ...string) func(string) bool {
	return func(name string) bool {
		for _, n := range names {
			if n == name {
				return true
			}
		}
		return false
	}
}

func TestByteOrderMarkAtTheStartOfAFileIsDropped(t *testing.T) {
	// What Notepad writes: a BOM, then the token, with Windows line ends.
	path := writeFile(t, "\uFEFF"+fileTok+"\r\n"+fileTok2+"\r\n")
	a := mustNew(t, auth.Config{AgentTokensFile: path})
	for _, tok := range []string{fileTok, fileTok2} {
		if err := a.Check(auth.Agent, bearer(tok)); err != nil {
			t.Errorf("token %s of a file with a byte-order mark refused: %v", tok, err)
		}
	}
	// Also when the first line is a comment.
	b := mustNew(t, auth.Config{OperatorTokensFile: writeFile(t, "\uFEFF# operators\n"+operatorTok+"\n")})
	if err := b.Check(auth.Operator, bearer(operatorTok)); err != nil {
		t.Errorf("operator token after a byte-order mark and a comment refused: %v", err)
	}
}

func TestTokensMustBePrintableASCII(t *testing.T) {
	const secret = "s3cr3tU-unicode"
	for _, tc := range []struct {
		name     string
		c        auth.Config
		variable string
		where    string
	}{
		{"a byte-order mark on a later line", auth.Config{AgentTokensFile: writeFile(t, fileTok+"\n\uFEFF"+secret+"-0123\n")},
			"AUTH_AGENT_TOKENS_FILE", "line 2"},
		{"a byte-order mark in the list", auth.Config{OperatorTokens: "\uFEFF" + secret + "-0123"},
			"AUTH_OPERATOR_TOKENS", "token 1 of the list"},
		{"a non-breaking space", auth.Config{AgentTokens: agentTok + "," + secret + "\u00a0tail"},
			"AUTH_AGENT_TOKENS", "token 2 of the list"},
		{"a zero-width space", auth.Config{AgentTokensFile: writeFile(t, "# x\n"+secret+"\u200b-0123\n")},
			"AUTH_AGENT_TOKENS_FILE", "line 2"},
		{"an accented letter", auth.Config{OperatorTokens: secret + "-caf\u00e9"},
			"AUTH_OPERATOR_TOKENS", "token 1 of the list"},
		{"a byte that is not UTF-8", auth.Config{OperatorTokensFile: writeFile(t, secret+"-\xff\xfe-0123\n")},
			"AUTH_OPERATOR_TOKENS_FILE", "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRefused(t, tc.c, tc.variable, []string{tc.where, "outside printable ASCII"}, secret)
		})
	}
}

func TestASetRoleWithoutATokenFailsClosed(t *testing.T) {
	file := writeFile(t, fileTok+"\n")
	for _, tc := range []struct {
		name  string
		c     auth.Config
		set   []string
		wants []string // empty: the configuration is valid
		open  bool     // for a valid one: whether the agent role stays open
	}{
		{"unset: open", auth.Config{}, nil, nil, true},
		{"set but empty", auth.Config{}, []string{"AUTH_AGENT_TOKENS"},
			[]string{"AUTH_AGENT_TOKENS is set but holds no token", "agent role", "unset the variable"}, false},
		{"only commas", auth.Config{AgentTokens: ","}, []string{"AUTH_AGENT_TOKENS"},
			[]string{"AUTH_AGENT_TOKENS is set but holds no token"}, false},
		// Without MarkSet (a Config built in code): a non-empty value is set anyway.
		{"only blanks, not marked", auth.Config{AgentTokens: " ,\t, "}, nil,
			[]string{"AUTH_AGENT_TOKENS is set but holds no token"}, false},
		{"file variable set but empty", auth.Config{}, []string{"AUTH_AGENT_TOKENS_FILE"},
			[]string{"AUTH_AGENT_TOKENS_FILE is set but holds no token"}, false},
		{"both set, both empty", auth.Config{AgentTokens: ","}, []string{"AUTH_AGENT_TOKENS", "AUTH_AGENT_TOKENS_FILE"},
			[]string{"AUTH_AGENT_TOKENS and AUTH_AGENT_TOKENS_FILE are set but hold no token", "unset both"}, false},
		{"empty list beside a file with tokens", auth.Config{AgentTokensFile: file},
			[]string{"AUTH_AGENT_TOKENS", "AUTH_AGENT_TOKENS_FILE"}, nil, false},
		{"the other role set empty", auth.Config{}, []string{"AUTH_OPERATOR_TOKENS"},
			[]string{"AUTH_OPERATOR_TOKENS is set but holds no token", "operator role"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.MarkSet(setVars(tc.set...))
			if len(tc.wants) > 0 {
				checkRefused(t, c, tc.wants[0][:strings.Index(tc.wants[0], " ")], tc.wants)
				return
			}
			a := mustNew(t, c)
			if a.Enabled(auth.Agent) == tc.open {
				t.Errorf("agent role enabled = %v, want %v", a.Enabled(auth.Agent), !tc.open)
			}
		})
	}
}
