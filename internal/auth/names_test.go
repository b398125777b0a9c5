package auth_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/auth"
)

// Tokens of the name tests; each at least auth.MinTokenLength long, and
// distinctive so that a leak is easy to find.
const (
	tokA = "s3cr3tA-0123456789abcdef"
	tokB = "s3cr3tB-fedcba9876543210"
	// A base64 token: '=' only at the end, as padding.
	base64Tok = "c2VjcmV0c2VjcmV0c2VjcmV0=="
)

// unnamed is the name an operator token written without one gets.
func unnamed(tok string) string {
	return "operator-" + strings.TrimPrefix(fingerprintOf(tok), "sha256:")
}

// TestOperatorNames: which entries are named, and what each presented
// token authenticates as. Every entry that was a valid token before names
// existed is still accepted whole.
func TestOperatorNames(t *testing.T) {
	name64 := "n" + strings.Repeat("x", auth.MaxNameLength-1)
	for _, tc := range []struct {
		name  string
		list  string
		names map[string]string // presented token -> the name it speaks for
		bad   []string          // presented tokens refused
	}{
		{"named", "alice=" + tokA,
			map[string]string{tokA: "alice", "alice=" + tokA: "alice"}, []string{"alice"}},
		{"unnamed", tokA,
			map[string]string{tokA: unnamed(tokA)}, nil},
		{"base64 with padding stays one unnamed token", base64Tok,
			map[string]string{base64Tok: unnamed(base64Tok)}, []string{strings.TrimRight(base64Tok, "=")}},
		{"base64 with one '=' of padding", "c2VjcmV0c2VjcmV0c2VjcmV0cw=",
			map[string]string{"c2VjcmV0c2VjcmV0c2VjcmV0cw=": unnamed("c2VjcmV0c2VjcmV0c2VjcmV0cw=")}, nil},
		// Text after the '=' long enough to be a token is not base64
		// padding: the entry is named, and still accepted whole.
		{"16 characters, '=', 20 characters", "aaaaaaaaaaaaaaaa=bbbbbbbbbbbbbbbbbbbb",
			map[string]string{
				"bbbbbbbbbbbbbbbbbbbb":                  "aaaaaaaaaaaaaaaa",
				"aaaaaaaaaaaaaaaa=bbbbbbbbbbbbbbbbbbbb": "aaaaaaaaaaaaaaaa",
			}, []string{"aaaaaaaaaaaaaaaa"}},
		{"empty name: one token starting with '='", "=" + tokA,
			map[string]string{"=" + tokA: unnamed("=" + tokA)}, []string{tokA}},
		{"empty token: the whole entry is a token", "alice-long-enough=",
			map[string]string{"alice-long-enough=": unnamed("alice-long-enough=")}, []string{"alice-long-enough"}},
		{"too short a token after a name: the whole entry is a token", "alice=short-tok-12",
			map[string]string{"alice=short-tok-12": unnamed("alice=short-tok-12")}, []string{"short-tok-12"}},
		{"a '=' in the token after the name", "alice=" + tokA + "==",
			map[string]string{tokA + "==": "alice"}, []string{tokA}},
		{"an e-mail address and punctuation", "alice.ops_1-x@example.com=" + tokA + ",9bob=" + tokB,
			map[string]string{tokA: "alice.ops_1-x@example.com", tokB: "9bob"}, nil},
		{"a name of 64 characters", name64 + "=" + tokA,
			map[string]string{tokA: name64}, nil},
		{"65 characters are no name", name64 + "y=" + tokA,
			map[string]string{name64 + "y=" + tokA: unnamed(name64 + "y=" + tokA)}, []string{tokA}},
		{"a name starting with punctuation is no name", "-alice=" + tokA + ",.bob=" + tokB,
			map[string]string{"-alice=" + tokA: unnamed("-alice=" + tokA), ".bob=" + tokB: unnamed(".bob=" + tokB)}, []string{tokA, tokB}},
		{"a character outside the name's set is no name", "al!ce=" + tokA + ",a/b=" + tokB,
			map[string]string{"al!ce=" + tokA: unnamed("al!ce=" + tokA), "a/b=" + tokB: unnamed("a/b=" + tokB)}, []string{tokA, tokB}},
		{"spaces around the entry", "  alice=" + tokA + "\t, bob=" + tokB + " ",
			map[string]string{tokA: "alice", tokB: "bob"}, nil},
		{"the same entry twice", "alice=" + tokA + ",alice=" + tokA + "," + tokB + "," + tokB,
			map[string]string{tokA: "alice", tokB: unnamed(tokB)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustNew(t, auth.Config{OperatorTokens: tc.list})
			for tok, want := range tc.names {
				p, err := a.Authenticate(bearer(tok), auth.Operator)
				if err != nil {
					t.Errorf("token %q refused: %v", tok, err)
					continue
				}
				if p.Name() != want {
					t.Errorf("token %q speaks for %q, want %q", tok, p.Name(), want)
				}
				if p.Fingerprint() != fingerprintOf(tok) {
					t.Errorf("token %q has the fingerprint %q, want its own", tok, p.Fingerprint())
				}
			}
			for _, tok := range tc.bad {
				if p, err := a.Authenticate(bearer(tok), auth.Operator); !errors.Is(err, auth.ErrBadToken) || p.Name() != "" {
					t.Errorf("token %q = %+v, %v; want ErrBadToken and no name", tok, p, err)
				}
			}
		})
	}
}

// TestAgentTokensHaveNoNames: an agent entry is one whole token, '=' or not.
func TestAgentTokensHaveNoNames(t *testing.T) {
	a := mustNew(t, auth.Config{AgentTokens: "alice=" + tokA, OperatorTokens: "bob=" + tokB})
	p, err := a.Authenticate(bearer("alice="+tokA), auth.Agent)
	if err != nil || p.Name() != "" || p.Fingerprint() != fingerprintOf("alice="+tokA) {
		t.Errorf("the whole agent entry = %+v, %v; want an agent without a name", p, err)
	}
	if err := a.Check(auth.Agent, bearer(tokA)); !errors.Is(err, auth.ErrBadToken) {
		t.Errorf("the part after '=' of an agent entry = %v, want ErrBadToken", err)
	}
	// An operator token let in on a route that takes agents or operators
	// keeps its name.
	if p, err := a.Authenticate(bearer(tokB), auth.Agent, auth.Operator); err != nil || p.Role != auth.Operator || p.Name() != "bob" {
		t.Errorf("operator token on an agent-or-operator route = %+v, %v; want operator bob", p, err)
	}
	// Auth off: nobody is authenticated, so nobody is named.
	open := mustNew(t, auth.Config{})
	if p, err := open.Authenticate(bearer(tokA), auth.Operator); err != nil || p.Name() != "" {
		t.Errorf("open operator role = %+v, %v; want no name", p, err)
	}
}

func TestOperatorNamesFromAFile(t *testing.T) {
	path := writeFile(t, strings.Join([]string{
		"\uFEFF# operators, one per line: name=token, or a token alone",
		"alice=" + tokA + "\r",
		"",
		"  # bob=" + tokB + " is commented out",
		"   " + base64Tok + "   ",
		"",
	}, "\n"))
	a := mustNew(t, auth.Config{OperatorTokensFile: path, OperatorTokens: "carol=" + tokB})
	for tok, want := range map[string]string{tokA: "alice", base64Tok: unnamed(base64Tok), tokB: "carol"} {
		if p, err := a.Authenticate(bearer(tok), auth.Operator); err != nil || p.Name() != want {
			t.Errorf("token %q = %q, %v; want %q", tok, p.Name(), err, want)
		}
	}
	if err := a.Check(auth.Operator, bearer("bob="+tokB)); !errors.Is(err, auth.ErrBadToken) {
		t.Errorf("a commented-out entry was taken: %v", err)
	}
}

func TestOperatorNamesRefused(t *testing.T) {
	secrets := []string{tokA, tokB, "s3cr3t"}
	list := "AUTH_OPERATOR_TOKENS"
	for _, tc := range []struct {
		name     string
		c        auth.Config
		variable string
		wants    []string
	}{
		{"one name, two tokens", auth.Config{OperatorTokens: "alice=" + tokA + ",alice=" + tokB},
			list, []string{"token 2 of the list", `the name "alice" is already given to another token`, "token 1 of the list", "unique"}},
		{"one name, two tokens, in the list and the file", auth.Config{OperatorTokens: "alice=" + tokA, OperatorTokensFile: writeFile(t, "# x\nalice="+tokB+"\n")},
			"AUTH_OPERATOR_TOKENS_FILE", []string{"line 2", `"alice"`, "AUTH_OPERATOR_TOKENS: token 1 of the list"}},
		{"one token, two names", auth.Config{OperatorTokens: "alice=" + tokA + ",bob=" + tokA},
			list, []string{"token 2 of the list", `already listed under the name "alice"`, "a token has one name"}},
		{"one token, named and unnamed", auth.Config{OperatorTokens: tokA + ",alice=" + tokA},
			list, []string{"token 2 of the list", `already listed under the name "` + unnamed(tokA) + `"`}},
		{"a name taken by an unnamed token", auth.Config{OperatorTokens: tokA + "," + unnamed(tokA) + "=" + tokB},
			list, []string{"token 2 of the list", `the name "` + unnamed(tokA) + `" is already given`}},
		{"a space after the name", auth.Config{OperatorTokens: "alice =" + tokA},
			list, []string{"token 1 of the list", "space"}},
		{"a space after the '='", auth.Config{OperatorTokensFile: writeFile(t, "alice= "+tokA+"\n")},
			"AUTH_OPERATOR_TOKENS_FILE", []string{"line 1", "space"}},
		{"an accent in the name", auth.Config{OperatorTokens: "alic\u00e9=" + tokA},
			list, []string{"token 1 of the list", "outside printable ASCII"}},
		{"a short entry with an empty token", auth.Config{OperatorTokens: "alice="},
			list, []string{"token 1 of the list", "too short"}},
		{"a short token after a name", auth.Config{OperatorTokens: "al=s3cr3t-9"},
			list, []string{"token 1 of the list", "too short"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRefused(t, tc.c, tc.variable, tc.wants, secrets...)
		})
	}
}

func TestPrincipalName(t *testing.T) {
	a := mustNew(t, auth.Config{OperatorTokens: "alice@example.com=" + tokA})
	p, err := a.Authenticate(bearer(tokA), auth.Operator)
	if err != nil {
		t.Fatal(err)
	}
	enc := zapcore.NewMapObjectEncoder()
	if err := p.MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	if enc.Fields["role"] != "operator" || enc.Fields["token"] != fingerprintOf(tokA) || enc.Fields["name"] != "alice@example.com" || len(enc.Fields) != 3 {
		t.Errorf("logged as %v, want the role, the fingerprint and the name", enc.Fields)
	}

	ctx := auth.WithPrincipal(context.Background(), p)
	if got, ok := auth.PrincipalFrom(ctx); !ok || got != p || got.Name() != "alice@example.com" {
		t.Errorf("PrincipalFrom = %+v, %v; want %+v", got, ok, p)
	}
	if got, ok := auth.PrincipalFrom(context.Background()); ok || got.Name() != "" || got.HasToken() {
		t.Errorf("PrincipalFrom of a bare context = %+v, %v; want none", got, ok)
	}
}
