package api_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/auth"
)

// Tokens of the auth tests: distinctive, so a leak is easy to find.
const (
	agentToken    = "agent-secret-0123456789-ABCDEF"
	operatorToken = "operator-secret-9876543210-ZYXWV"
	otherToken    = "someone-elses-token-0000000000"
)

// authFixture is a fixture with tokens, a capable stub agent (not
// registered), and every response kept to look for the tokens in.
type authFixture struct {
	*fixture
	stub      *stubAgent
	responses []*httptest.ResponseRecorder
}

func newAuthFixture(t *testing.T, cfg auth.Config) *authFixture {
	t.Helper()
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{agents: testAgentsConfig, dispatch: testDispatchConfig, auth: cfg})
	return &authFixture{fixture: f, stub: newStubAgent(t, stubComplete)}
}

func bearer(token string) []string { return []string{"Authorization", "Bearer " + token} }

// send serves a request and keeps the response.
func (af *authFixture) send(method, path, body string, header ...string) *httptest.ResponseRecorder {
	rec := af.call(method, path, body, header...)
	af.responses = append(af.responses, rec)
	return rec
}

// want401 checks a refusal: 401, the Bearer challenge, the error body.
func want401(t *testing.T, what string, rec *httptest.ResponseRecorder) {
	t.Helper()
	msg := expectError(t, what, rec, http.StatusUnauthorized)
	if ch := rec.Header().Get("WWW-Authenticate"); !strings.HasPrefix(ch, `Bearer realm="orchestrator"`) {
		t.Errorf("%s: WWW-Authenticate = %q, want Bearer realm=\"orchestrator\"", what, ch)
	}
	if msg == "" {
		t.Errorf("%s: empty message", what)
	}
}

// wantThrough checks that a request got past authentication.
func wantThrough(t *testing.T, what string, rec *httptest.ResponseRecorder, code int) {
	t.Helper()
	if rec.Code != code {
		t.Fatalf("%s = %d %s, want %d", what, rec.Code, strings.TrimSpace(rec.Body.String()), code)
	}
	if ch := rec.Header().Get("WWW-Authenticate"); ch != "" {
		t.Errorf("%s: WWW-Authenticate %q on a request that got through", what, ch)
	}
}

// checkOpen checks the routes that never need a token.
func (af *authFixture) checkOpen(t *testing.T) {
	t.Helper()
	for _, path := range []string{"/live", "/ready", "/health", "/metrics", "/", "/version", "/openapi.yaml"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			wantThrough(t, method+" "+path+" without a token", af.send(method, path, ""), http.StatusOK)
			// A wrong token does not matter there either.
			wantThrough(t, method+" "+path+" with a wrong token", af.send(method, path, "", bearer(otherToken)...), http.StatusOK)
		}
	}
}

// checkNoLeak looks for the tokens in every log entry and response.
func (af *authFixture) checkNoLeak(t *testing.T) {
	t.Helper()
	if len(af.logs.All()) == 0 || len(af.responses) == 0 {
		t.Fatal("nothing logged or answered to look in")
	}
	for _, e := range af.logs.All() {
		text := fmt.Sprintf("%s %v", e.Message, e.ContextMap())
		for _, tok := range []string{agentToken, operatorToken, otherToken, "secret-", "someone-elses"} {
			if strings.Contains(text, tok) {
				t.Errorf("log entry %q contains a token", text)
			}
		}
	}
	for _, rec := range af.responses {
		text := fmt.Sprintf("%v %s", rec.Header(), rec.Body)
		for _, tok := range []string{agentToken, operatorToken, otherToken, "secret-", "someone-elses"} {
			if strings.Contains(text, tok) {
				t.Errorf("response %q contains a token", text)
			}
		}
	}
}

func TestAuthAgentTokensOnly(t *testing.T) {
	af := newAuthFixture(t, auth.Config{AgentTokens: agentToken + ", " + otherToken + "x"})
	reg := mustJSON(t, agentBody("authed", af.stub.port, "analyze"))

	for _, h := range [][]string{
		nil,
		bearer(operatorToken),
		bearer(otherToken),
		bearer(""),
		{"Authorization", "Basic " + agentToken},
		{"Authorization", agentToken},
		{"Authorization", "Bearer " + agentToken + "x"},
		{"Authorization", "Bearer " + agentToken[:len(agentToken)-1]},
	} {
		want401(t, fmt.Sprintf("register with %q", h), af.send(http.MethodPost, "/agents/register", reg, h...))
	}
	if n := len(af.listAgents(t, "/agents")); n != 0 {
		t.Fatalf("refused registrations stored %d agents", n)
	}
	rec := af.send(http.MethodPost, "/agents/register", reg, "Authorization", "bearer  "+agentToken+" ")
	wantThrough(t, "register with the agent token (lower-case scheme, spaces)", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	// The agent is bound to the token it registered with (see TestAuthAgentBinding).
	rec = af.send(http.MethodPost, "/agents/register", reg, bearer(otherToken+"x")...)
	wantThrough(t, "register again with the second agent token", rec, http.StatusForbidden)
	rec = af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("authed-2", af.stub.port, "analyze")), bearer(otherToken+"x")...)
	wantThrough(t, "register another agent with the second agent token", rec, http.StatusCreated)

	hb := "/agents/" + id + "/heartbeat"
	want401(t, "heartbeat without a token", af.send(http.MethodPost, hb, `{"status":"healthy"}`))
	want401(t, "heartbeat with a wrong token", af.send(http.MethodPost, hb, `{"status":"healthy"}`, bearer(otherToken)...))
	want401(t, "heartbeat of an unknown agent without a token", af.send(http.MethodPost, "/agents/nope/heartbeat", ""))
	wantThrough(t, "heartbeat with the token", af.send(http.MethodPost, hb, `{"status":"healthy"}`, bearer(agentToken)...), http.StatusOK)

	// Reads and tasks stay open: operator auth is off.
	wantThrough(t, "GET /agents", af.send(http.MethodGet, "/agents", ""), http.StatusOK)
	wantThrough(t, "GET /agents/type/cost", af.send(http.MethodGet, "/agents/type/cost", ""), http.StatusOK)
	wantThrough(t, "GET /agents/{id}", af.send(http.MethodGet, "/agents/"+id, ""), http.StatusOK)
	rec = af.send(http.MethodPost, "/tasks", `{"task_type":"analyze","agent_type":"cost"}`)
	wantThrough(t, "POST /tasks", rec, http.StatusCreated)
	task := objectOf(t, rec)["task_id"].(string)
	wantThrough(t, "GET /tasks", af.send(http.MethodGet, "/tasks", ""), http.StatusOK)
	wantThrough(t, "GET /tasks/{id}", af.send(http.MethodGet, "/tasks/"+task, ""), http.StatusOK)
	af.waitTask(t, task)
	wantThrough(t, "DELETE /tasks/{id}", af.send(http.MethodDelete, "/tasks/"+task, ""), http.StatusConflict)

	un := "/agents/" + id + "/unregister"
	want401(t, "unregister without a token", af.send(http.MethodPost, un, ""))
	// Operator tokens are not configured, so the operator "token" is just a
	// wrong one: an open operator role does not open unregistration.
	want401(t, "unregister with a wrong token", af.send(http.MethodPost, un, "", bearer(operatorToken)...))
	af.getAgent(t, id)
	wantThrough(t, "unregister with the token", af.send(http.MethodPost, un, "", bearer(agentToken)...), http.StatusOK)
	expectError(t, "GET after unregister", af.get("/agents/"+id), http.StatusNotFound)

	af.checkOpen(t)
	af.checkNoLeak(t)
}

func TestAuthOperatorTokensOnly(t *testing.T) {
	af := newAuthFixture(t, auth.Config{OperatorTokens: operatorToken})

	// Agent writes stay open: existing agents send no token.
	rec := af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("open", af.stub.port, "analyze")))
	wantThrough(t, "register without a token", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	wantThrough(t, "heartbeat without a token", af.send(http.MethodPost, "/agents/"+id+"/heartbeat", ""), http.StatusOK)

	op := bearer(operatorToken)
	submit := `{"task_type":"analyze","agent_type":"cost"}`
	for _, h := range [][]string{nil, bearer(agentToken), bearer(otherToken), {"Authorization", "Basic " + operatorToken}, {"Authorization", "Bearer"}} {
		what := fmt.Sprintf(" with %q", h)
		want401(t, "GET /agents"+what, af.send(http.MethodGet, "/agents", "", h...))
		want401(t, "GET /agents/type/cost"+what, af.send(http.MethodGet, "/agents/type/cost", "", h...))
		want401(t, "GET /agents/type/bogus"+what, af.send(http.MethodGet, "/agents/type/bogus", "", h...))
		want401(t, "GET /agents/{id}"+what, af.send(http.MethodGet, "/agents/"+id, "", h...))
		want401(t, "GET /agents/unknown"+what, af.send(http.MethodGet, "/agents/unknown", "", h...))
		want401(t, "POST /tasks"+what, af.send(http.MethodPost, "/tasks", submit, h...))
		want401(t, "POST /tasks bad body"+what, af.send(http.MethodPost, "/tasks", "nope", h...))
		want401(t, "GET /tasks"+what, af.send(http.MethodGet, "/tasks", "", h...))
		want401(t, "GET /tasks/{id}"+what, af.send(http.MethodGet, "/tasks/x", "", h...))
		want401(t, "DELETE /tasks/{id}"+what, af.send(http.MethodDelete, "/tasks/x", "", h...))
	}
	if n := len(af.listTasks(t, "/tasks", op...)); n != 0 {
		t.Fatalf("refused submissions stored %d tasks", n)
	}

	if list := af.listAgents(t, "/agents", op...); len(list) != 1 {
		t.Errorf("GET /agents with the operator token = %d agents", len(list))
	}
	af.listAgents(t, "/agents/type/cost", op...)
	wantThrough(t, "GET /agents/{id}", af.send(http.MethodGet, "/agents/"+id, "", op...), http.StatusOK)
	wantThrough(t, "GET /agents/unknown", af.send(http.MethodGet, "/agents/unknown", "", op...), http.StatusNotFound)
	rec = af.send(http.MethodPost, "/tasks", submit, op...)
	wantThrough(t, "POST /tasks", rec, http.StatusCreated)
	task := objectOf(t, rec)["task_id"].(string)
	af.getTask(t, task, op...)
	wantThrough(t, "GET /tasks/unknown", af.send(http.MethodGet, "/tasks/unknown", "", op...), http.StatusNotFound)
	wantThrough(t, "DELETE /tasks/unknown", af.send(http.MethodDelete, "/tasks/unknown", "", op...), http.StatusNotFound)
	wantThrough(t, "GET /tasks", af.send(http.MethodGet, "/tasks?status=bogus", "", op...), http.StatusBadRequest)

	wantThrough(t, "unregister without a token", af.send(http.MethodPost, "/agents/"+id+"/unregister", ""), http.StatusOK)

	af.checkOpen(t)
	af.checkNoLeak(t)
}

func TestAuthBothRoles(t *testing.T) {
	af := newAuthFixture(t, auth.Config{AgentTokens: agentToken, OperatorTokens: operatorToken})
	reg := mustJSON(t, agentBody("both", af.stub.port, "analyze"))

	// Each token opens its own role's routes only.
	want401(t, "register with the operator token", af.send(http.MethodPost, "/agents/register", reg, bearer(operatorToken)...))
	rec := af.send(http.MethodPost, "/agents/register", reg, bearer(agentToken)...)
	wantThrough(t, "register with the agent token", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	want401(t, "heartbeat with the operator token", af.send(http.MethodPost, "/agents/"+id+"/heartbeat", "", bearer(operatorToken)...))

	for _, route := range []struct{ method, path, body string }{
		{http.MethodGet, "/agents", ""},
		{http.MethodGet, "/agents/type/cost", ""},
		{http.MethodGet, "/agents/" + id, ""},
		{http.MethodPost, "/tasks", `{"task_type":"analyze","agent_type":"cost"}`},
		{http.MethodGet, "/tasks", ""},
		{http.MethodGet, "/tasks/x", ""},
		{http.MethodDelete, "/tasks/x", ""},
	} {
		rec := af.send(route.method, route.path, route.body, bearer(agentToken)...)
		want401(t, route.method+" "+route.path+" with the agent token", rec)
		if ch := rec.Header().Get("WWW-Authenticate"); !strings.Contains(ch, `error="invalid_token"`) {
			t.Errorf("%s %s with a token of the other role: WWW-Authenticate = %q, want error=\"invalid_token\"", route.method, route.path, ch)
		}
	}
	rec = af.send(http.MethodPost, "/tasks", `{"task_type":"analyze","agent_type":"cost"}`, bearer(operatorToken)...)
	wantThrough(t, "POST /tasks with the operator token", rec, http.StatusCreated)

	// Unregistration takes the agent's token or an operator's.
	want401(t, "unregister without a token", af.send(http.MethodPost, "/agents/"+id+"/unregister", ""))
	want401(t, "unregister with a wrong token", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", bearer(otherToken)...))
	wantThrough(t, "unregister with the agent token", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", bearer(agentToken)...), http.StatusOK)
	rec = af.send(http.MethodPost, "/agents/register", reg, bearer(agentToken)...)
	wantThrough(t, "register again", rec, http.StatusCreated)
	id = objectOf(t, rec)["agent_id"].(string)
	wantThrough(t, "unregister with the operator token", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", bearer(operatorToken)...), http.StatusOK)
	expectError(t, "GET after the operator unregistered it", af.send(http.MethodGet, "/agents/"+id, "", bearer(operatorToken)...), http.StatusNotFound)

	// Unknown paths and wrong methods answer as without auth.
	expectError(t, "GET /nope", af.send(http.MethodGet, "/nope", ""), http.StatusNotFound)
	expectError(t, "PUT /tasks", af.send(http.MethodPut, "/tasks", ""), http.StatusMethodNotAllowed)

	af.checkOpen(t)
	af.checkNoLeak(t)
}

// fingerprint is what the logs show of a token.
func fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])[:12]
}

// TestAuthAgentBinding: an agent is bound to the agent token that
// registered it. Another agent token cannot register it again (taking it
// over), heartbeat or unregister it: 403, naming the agent and nothing of
// the token. An operator may unregister it. The logs say who did what by
// fingerprint.
func TestAuthAgentBinding(t *testing.T) {
	const victimToken, attackerToken = agentToken, otherToken
	af := newAuthFixture(t, auth.Config{AgentTokens: victimToken + "," + attackerToken, OperatorTokens: operatorToken})
	op := bearer(operatorToken)
	reg := agentBody("victim", af.stub.port, "analyze")
	rec := af.send(http.MethodPost, "/agents/register", mustJSON(t, reg), bearer(victimToken)...)
	wantThrough(t, "register", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	before := af.send(http.MethodGet, "/agents/"+id, "", op...).Body.String()

	// The takeover the review found: same name, host and port, new fields.
	takeover := agentBody("victim", af.stub.port, "exfiltrate")
	takeover["type"], takeover["metadata"] = "performance", map[string]any{"owned": true}
	for _, tc := range []struct {
		what, path, body, wantIn string
	}{
		{"register again", "/agents/register", mustJSON(t, takeover), fmt.Sprintf(`agent "victim" at 127.0.0.1:%d is bound to another agent token`, af.stub.port)},
		{"heartbeat", "/agents/" + id + "/heartbeat", `{"status":"unhealthy"}`, "agent " + id + " is bound to another agent token"},
		{"unregister", "/agents/" + id + "/unregister", "", "agent " + id + " is bound to another agent token"},
	} {
		msg := expectError(t, tc.what+" with another agent token", af.send(http.MethodPost, tc.path, tc.body, bearer(attackerToken)...), http.StatusForbidden)
		if !strings.Contains(msg, tc.wantIn) {
			t.Errorf("%s: 403 message %q, want it to contain %q", tc.what, msg, tc.wantIn)
		}
		for _, secret := range []string{fingerprint(victimToken), fingerprint(attackerToken)} {
			if strings.Contains(msg, secret) {
				t.Errorf("%s: 403 message %q shows a token's fingerprint", tc.what, msg)
			}
		}
	}
	if after := af.send(http.MethodGet, "/agents/"+id, "", op...).Body.String(); after != before {
		t.Errorf("refused changes changed the agent:\n before %s\n after  %s", before, after)
	}

	// Its own token still does everything.
	wantThrough(t, "heartbeat with its token", af.send(http.MethodPost, "/agents/"+id+"/heartbeat", `{"status":"degraded"}`, bearer(victimToken)...), http.StatusOK)
	rec = af.send(http.MethodPost, "/agents/register", mustJSON(t, reg), bearer(victimToken)...)
	wantThrough(t, "register again with its token", rec, http.StatusCreated)
	if got := objectOf(t, rec)["agent_id"]; got != id {
		t.Errorf("register again with its token = %v, want the same id %s", got, id)
	}
	// The attacker's own agents are its own.
	rec = af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("attacker", af.stub.port, "analyze")), bearer(attackerToken)...)
	wantThrough(t, "register its own agent", rec, http.StatusCreated)
	attackerID := objectOf(t, rec)["agent_id"].(string)
	expectError(t, "the victim's token on the attacker's agent", af.send(http.MethodPost, "/agents/"+attackerID+"/unregister", "", bearer(victimToken)...), http.StatusForbidden)

	// An operator removes any agent.
	wantThrough(t, "unregister by an operator", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", op...), http.StatusOK)
	wantThrough(t, "unregister by its own token", af.send(http.MethodPost, "/agents/"+attackerID+"/unregister", "", bearer(attackerToken)...), http.StatusOK)

	// Who did what, by fingerprint.
	logged := func(msg string) []map[string]any {
		var out []map[string]any
		for _, e := range af.logs.FilterMessage(msg).All() {
			out = append(out, e.ContextMap())
		}
		return out
	}
	by := func(token, role string) string {
		if role == "operator" { // an unnamed operator token is named after its fingerprint
			return fmt.Sprintf("map[name:operator-%s role:operator token:%s]", strings.TrimPrefix(fingerprint(token), "sha256:"), fingerprint(token))
		}
		return fmt.Sprintf("map[role:%s token:%s]", role, fingerprint(token))
	}
	if regs := logged("agent registered"); len(regs) != 3 || regs[0]["owner"] != fingerprint(victimToken) || fmt.Sprint(regs[0]["by"]) != by(victimToken, "agent") {
		t.Errorf("registrations logged as %v, want the victim's fingerprint as owner and author", regs)
	}
	for _, msg := range []string{
		"agent registration refused: the agent is bound to another token",
		"agent heartbeat refused: the agent is bound to another token",
	} {
		if refused := logged(msg); len(refused) != 1 || fmt.Sprint(refused[0]["by"]) != by(attackerToken, "agent") {
			t.Errorf("%q logged as %v, want once, by the attacker's fingerprint", msg, refused)
		}
	}
	if changed := logged("agent status changed"); len(changed) != 1 || fmt.Sprint(changed[0]["by"]) != by(victimToken, "agent") {
		t.Errorf("status change logged as %v, want by the victim's fingerprint", changed)
	}
	if un := logged("agent unregistered"); len(un) != 2 || fmt.Sprint(un[0]["by"]) != by(operatorToken, "operator") || un[0]["owner"] != fingerprint(victimToken) {
		t.Errorf("unregistrations logged as %v, want the operator removing the victim's agent", un)
	}
	af.checkNoLeak(t)
}

// TestAuthSharedAgentToken: with one token for every agent, binding cannot
// tell agents apart. What the README says a shared token can do, it does:
// any holder may register any agent again, heartbeat it and unregister it.
func TestAuthSharedAgentToken(t *testing.T) {
	af := newAuthFixture(t, auth.Config{AgentTokens: agentToken})
	reg := mustJSON(t, agentBody("shared", af.stub.port, "analyze"))
	rec := af.send(http.MethodPost, "/agents/register", reg, bearer(agentToken)...)
	wantThrough(t, "register", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	rec = af.send(http.MethodPost, "/agents/register", reg, bearer(agentToken)...)
	wantThrough(t, "register again by another holder of the token", rec, http.StatusCreated)
	if objectOf(t, rec)["agent_id"] != id {
		t.Error("re-registration with the shared token made another agent")
	}
	wantThrough(t, "heartbeat", af.send(http.MethodPost, "/agents/"+id+"/heartbeat", "", bearer(agentToken)...), http.StatusOK)
	wantThrough(t, "unregister", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", bearer(agentToken)...), http.StatusOK)
	af.checkNoLeak(t)
}

// TestAuthOffNoBinding: without agent tokens nothing is bound, as before.
func TestAuthOffNoBinding(t *testing.T) {
	af := newAuthFixture(t, auth.Config{OperatorTokens: operatorToken})
	rec := af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("open", af.stub.port, "analyze")))
	wantThrough(t, "register", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	// A token, any token, is ignored on an open role.
	rec = af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("open", af.stub.port, "x")), bearer(otherToken)...)
	wantThrough(t, "register again with some token", rec, http.StatusCreated)
	wantThrough(t, "heartbeat without a token", af.send(http.MethodPost, "/agents/"+id+"/heartbeat", ""), http.StatusOK)
	// An operator token unregisters too.
	wantThrough(t, "unregister with the operator token", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", bearer(operatorToken)...), http.StatusOK)
	for _, e := range af.logs.FilterMessage("agent registered").All() {
		if owner := e.ContextMap()["owner"]; owner != "" {
			t.Errorf("registration without agent auth bound to %v", owner)
		}
	}
	af.checkNoLeak(t)
}

// TestAuthOperatorName: a named operator token ("alice=TOKEN") lets a
// request in as alice: the handler behind the middleware reads the name
// with auth.PrincipalFrom, and the logs of what she did show it beside
// the fingerprint, never the token.
func TestAuthOperatorName(t *testing.T) {
	cfg := auth.Config{AgentTokens: agentToken, OperatorTokens: "alice@example.com=" + operatorToken + "," + otherToken}
	a, err := auth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var seen auth.Principal
	h := api.RequireRole(a, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, _ = auth.PrincipalFrom(r.Context())
	}), auth.Agent, auth.Operator)
	unnamed := "operator-" + strings.TrimPrefix(fingerprint(otherToken), "sha256:")
	for _, tc := range []struct{ header, name string }{
		{"Bearer " + operatorToken, "alice@example.com"},
		{"Bearer alice@example.com=" + operatorToken, "alice@example.com"}, // the entry whole, as before names
		{"Bearer " + otherToken, unnamed},
		{"Bearer " + agentToken, ""},
	} {
		seen = auth.Principal{}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/x", nil)
		req.Header.Set("Authorization", tc.header)
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || !seen.HasToken() || seen.Name() != tc.name {
			t.Errorf("%q: %d, the handler saw %+v; want the name %q", tc.header, rec.Code, seen, tc.name)
		}
	}

	af := newAuthFixture(t, cfg)
	rec := af.send(http.MethodPost, "/agents/register", mustJSON(t, agentBody("named", af.stub.port, "analyze")), bearer(agentToken)...)
	wantThrough(t, "register", rec, http.StatusCreated)
	id := objectOf(t, rec)["agent_id"].(string)
	wantThrough(t, "unregister by alice", af.send(http.MethodPost, "/agents/"+id+"/unregister", "", bearer(operatorToken)...), http.StatusOK)
	un := af.logs.FilterMessage("agent unregistered").All()
	want := fmt.Sprintf("map[name:alice@example.com role:operator token:%s]", fingerprint(operatorToken))
	if len(un) != 1 || fmt.Sprint(un[0].ContextMap()["by"]) != want {
		t.Errorf("unregistration logged as %v, want by %s", un, want)
	}
	af.checkNoLeak(t)
}
