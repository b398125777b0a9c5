package auth_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/auth"
)

// fingerprintOf is what a token's fingerprint must be: "sha256:" and the
// first 12 hex digits of its SHA-256.
func fingerprintOf(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return "sha256:" + hex.EncodeToString(sum[:])[:12]
}

func TestAuthenticate(t *testing.T) {
	both := mustNew(t, auth.Config{AgentTokens: agentTok + "," + agentTok2, OperatorTokens: operatorTok})
	agentsOnly := mustNew(t, auth.Config{AgentTokens: agentTok})
	operatorsOnly := mustNew(t, auth.Config{OperatorTokens: operatorTok})
	none := mustNew(t, auth.Config{})
	tests := []struct {
		name     string
		a        *auth.Authenticator
		header   string
		roles    []auth.Role
		wantRole auth.Role
		wantTok  string // the token whose fingerprint the principal carries; "" for none
		wantErr  error
	}{
		{"agent token", both, bearer(agentTok), []auth.Role{auth.Agent}, auth.Agent, agentTok, nil},
		{"second agent token", both, bearer(agentTok2), []auth.Role{auth.Agent}, auth.Agent, agentTok2, nil},
		{"operator token on operator", both, bearer(operatorTok), []auth.Role{auth.Operator}, auth.Operator, operatorTok, nil},
		{"operator token on agent", both, bearer(operatorTok), []auth.Role{auth.Agent}, 0, "", auth.ErrBadToken},
		{"no token", both, "", []auth.Role{auth.Agent}, 0, "", auth.ErrNoToken},
		{"agent token on agent or operator", both, bearer(agentTok), []auth.Role{auth.Agent, auth.Operator}, auth.Agent, agentTok, nil},
		{"operator token on agent or operator", both, bearer(operatorTok), []auth.Role{auth.Agent, auth.Operator}, auth.Operator, operatorTok, nil},
		{"wrong token on agent or operator", both, bearer("not-a-token-at-all-0000"), []auth.Role{auth.Agent, auth.Operator}, 0, "", auth.ErrBadToken},
		{"no token on agent or operator", both, "Basic x", []auth.Role{auth.Agent, auth.Operator}, 0, "", auth.ErrNoToken},
		// An open role lets a request in without a token...
		{"open role, no token", operatorsOnly, "", []auth.Role{auth.Agent}, auth.Agent, "", nil},
		{"open role, any token", operatorsOnly, bearer("whatever-0123456789"), []auth.Role{auth.Agent}, auth.Agent, "", nil},
		{"nothing configured", none, "", []auth.Role{auth.Operator}, auth.Operator, "", nil},
		{"nothing configured, agent or operator", none, "", []auth.Role{auth.Agent, auth.Operator}, auth.Agent, "", nil},
		// ...but a valid token of another accepted role still names its holder...
		{"open agent role, operator token", operatorsOnly, bearer(operatorTok), []auth.Role{auth.Agent, auth.Operator}, auth.Operator, operatorTok, nil},
		{"open agent role, wrong token", operatorsOnly, bearer(agentTok), []auth.Role{auth.Agent, auth.Operator}, auth.Agent, "", nil},
		{"open operator role, agent token", agentsOnly, bearer(agentTok), []auth.Role{auth.Agent, auth.Operator}, auth.Agent, agentTok, nil},
		// ...and an open role among the others opens nothing.
		{"open operator role, no token", agentsOnly, "", []auth.Role{auth.Agent, auth.Operator}, 0, "", auth.ErrNoToken},
		{"open operator role, wrong token", agentsOnly, bearer("not-a-token-at-all-0000"), []auth.Role{auth.Agent, auth.Operator}, 0, "", auth.ErrBadToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tc.a.Authenticate(tc.header, tc.roles[0], tc.roles[1:]...)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Authenticate = %+v, %v; want %v", p, err, tc.wantErr)
				}
				if p.HasToken() || p.Fingerprint() != "" {
					t.Errorf("a refused request has a principal with a token: %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate = %v, want a principal", err)
			}
			if p.Role != tc.wantRole {
				t.Errorf("role = %s, want %s", p.Role, tc.wantRole)
			}
			want := ""
			if tc.wantTok != "" {
				want = fingerprintOf(tc.wantTok)
			}
			if got := p.Fingerprint(); got != want || p.HasToken() != (want != "") {
				t.Errorf("fingerprint = %q (has token %v), want %q", got, p.HasToken(), want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	a := mustNew(t, auth.Config{AgentTokens: agentTok + "," + agentTok2})
	p1, err1 := a.Authenticate(bearer(agentTok), auth.Agent)
	p2, err2 := a.Authenticate(bearer(agentTok2), auth.Agent)
	again, err3 := a.Authenticate("bearer   "+agentTok+" ", auth.Agent)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{12}$`).MatchString(p1.Fingerprint()) {
		t.Errorf("fingerprint %q, want sha256: and 12 hex digits", p1.Fingerprint())
	}
	if p1.Fingerprint() == p2.Fingerprint() {
		t.Error("two tokens have one fingerprint")
	}
	if p1.Fingerprint() != again.Fingerprint() {
		t.Error("one token, spelled with other spaces and case of the scheme, has two fingerprints")
	}
	for _, p := range []auth.Principal{p1, p2} {
		for _, tok := range []string{agentTok, agentTok2} {
			if strings.Contains(p.Fingerprint(), tok) {
				t.Errorf("fingerprint %q contains the token", p.Fingerprint())
			}
		}
	}

	enc := zapcore.NewMapObjectEncoder()
	if err := p1.MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	if enc.Fields["role"] != "agent" || enc.Fields["token"] != fingerprintOf(agentTok) || len(enc.Fields) != 2 {
		t.Errorf("logged as %v, want the role and the fingerprint only", enc.Fields)
	}
	enc = zapcore.NewMapObjectEncoder()
	if err := (auth.Principal{Role: auth.Operator}).MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	if enc.Fields["role"] != "operator" || len(enc.Fields) != 1 {
		t.Errorf("a principal without a token logged as %v, want the role only", enc.Fields)
	}
}
