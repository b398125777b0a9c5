package api

import (
	"errors"
	"net/http"
	"net/netip"

	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// readMethods are the methods of every read: HEAD wherever GET is served
// (RFC 9110: a HEAD answers as the GET would, without the body, which the
// server drops).
var readMethods = []string{http.MethodGet, http.MethodHead}

// mountAgents registers the agent routes. Registration and heartbeats are
// the agent role's, unregistration the agent role's or an operator's;
// reads are the operator role's. Heartbeats are quiet in the access log:
// every agent sends one per interval.
func mountAgents(rt *router, agents Agents, a *auth.Authenticator) {
	rt.handle("/agents/register", loud, requireRole(a, registerHandler(agents), auth.Agent), http.MethodPost)
	rt.handle("/agents/{id}/heartbeat", quiet, requireRole(a, heartbeatHandler(agents), auth.Agent), http.MethodPost)
	rt.handle("/agents/{id}/unregister", loud, requireRole(a, unregisterHandler(agents), auth.Agent, auth.Operator), http.MethodPost)
	rt.handle("/agents", loud, requireRole(a, listAgentsHandler(agents), auth.Operator), readMethods...)
	rt.handle("/agents/type/{type}", loud, requireRole(a, listAgentsHandler(agents), auth.Operator), readMethods...)
	rt.handle("/agents/{id}", loud, requireRole(a, getAgentHandler(agents), auth.Operator), readMethods...)
}

// mountAgentsV1 registers the /api/v1 agent routes (agents_v1.go), over
// the same registry and with the same roles as mountAgents: registration
// and heartbeats the agent role's, DELETE the agent role's or an
// operator's, reads the operator role's. trusted are the proxies whose
// X-Forwarded-For tells where a registration came from. The routes
// without variables come first: mux tries routes in order.
func mountAgentsV1(rt *router, agents Agents, a *auth.Authenticator, trusted []netip.Prefix) {
	rt.handle("/api/v1/agents/register", loud, requireRole(a, registerV1Handler(agents, trusted), auth.Agent), http.MethodPost)
	rt.handle("/api/v1/agents/heartbeat", quiet, requireRole(a, heartbeatBodyV1Handler(agents), auth.Agent), http.MethodPost)
	rt.handle("/api/v1/agents", loud, requireRole(a, listAgentsV1Handler(agents), auth.Operator), readMethods...)
	rt.handle("/api/v1/agents/{agent_id}/heartbeat", quiet, requireRole(a, heartbeatPathV1Handler(agents), auth.Agent), http.MethodPost)
	rt.handle("/api/v1/agents/{agent_id}", loud, requireRole(a, deleteV1Handler(agents), auth.Agent, auth.Operator), http.MethodDelete)
	rt.handle("/api/v1/agents/{agent_id}", loud, requireRole(a, getAgentV1Handler(agents), auth.Operator), readMethods...)
}

// mountTasks registers the task routes, all of them the operator role's.
func mountTasks(rt *router, tasks Tasks, a *auth.Authenticator) {
	rt.handle("/tasks", loud, requireRole(a, submitTaskHandler(tasks), auth.Operator), http.MethodPost)
	rt.handle("/tasks", loud, requireRole(a, listTasksHandler(tasks), auth.Operator), readMethods...)
	rt.handle("/tasks/{id}", loud, requireRole(a, getTaskHandler(tasks), auth.Operator), readMethods...)
	rt.handle("/tasks/{id}", loud, requireRole(a, cancelTaskHandler(tasks), auth.Operator), http.MethodDelete)
}

// requireRole lets a request through when it carries a token of role (or
// of one of also), or when role has no tokens configured; the handler
// finds who it speaks for with actorOf. Otherwise: 401 with a
// WWW-Authenticate challenge (RFC 6750).
//
// (Not to be confused with registry.Guard, which decides which network
// addresses agents may register.)
func requireRole(a *auth.Authenticator, next http.Handler, role auth.Role, also ...auth.Role) http.Handler {
	if a == nil {
		return next
	}
	roles := role.String()
	for _, r := range also {
		roles += " or " + r.String()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.Authenticate(r.Header.Get("Authorization"), role, also...)
		if err == nil {
			next.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
			return
		}
		challenge := `Bearer realm="orchestrator"`
		if errors.Is(err, auth.ErrBadToken) {
			challenge += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, http.StatusUnauthorized, err.Error()+" ("+roles+" role)")
	})
}

// actorOf is who the request speaks for, as the registry knows callers:
// the token's fingerprint, whether it is an operator's, and the
// operator's name. Without authentication (no Authenticator, or a role
// without tokens) it is the zero Actor: a caller without a token. Handlers
// that need the operator's name itself read auth.PrincipalFrom.
func actorOf(r *http.Request) registry.Actor {
	p, _ := auth.PrincipalFrom(r.Context())
	return registry.Actor{Token: p.Fingerprint(), Operator: p.HasToken() && p.Role == auth.Operator, Name: p.Name()}
}
