package api

import (
	"errors"
	"net/http"

	"github.com/optiinfra/orchestrator/internal/auth"
)

// readMethods are the methods of every read: HEAD wherever GET is served
// (RFC 9110: a HEAD answers as the GET would, without the body, which the
// server drops).
var readMethods = []string{http.MethodGet, http.MethodHead}

// mountAgents registers the agent routes. Registration, heartbeats and
// unregistration are the agent role's; reads are the operator role's.
// Heartbeats are quiet in the access log: every agent sends one per
// interval.
func mountAgents(rt *router, agents Agents, a *auth.Authenticator) {
	rt.handle("/agents/register", loud, guard(a, auth.Agent, registerHandler(agents)), http.MethodPost)
	rt.handle("/agents/{id}/heartbeat", quiet, guard(a, auth.Agent, heartbeatHandler(agents)), http.MethodPost)
	rt.handle("/agents/{id}/unregister", loud, guard(a, auth.Agent, unregisterHandler(agents)), http.MethodPost)
	rt.handle("/agents", loud, guard(a, auth.Operator, listAgentsHandler(agents)), readMethods...)
	rt.handle("/agents/type/{type}", loud, guard(a, auth.Operator, listAgentsHandler(agents)), readMethods...)
	rt.handle("/agents/{id}", loud, guard(a, auth.Operator, getAgentHandler(agents)), readMethods...)
}

// mountTasks registers the task routes, all of them the operator role's.
func mountTasks(rt *router, tasks Tasks, a *auth.Authenticator) {
	rt.handle("/tasks", loud, guard(a, auth.Operator, submitTaskHandler(tasks)), http.MethodPost)
	rt.handle("/tasks", loud, guard(a, auth.Operator, listTasksHandler(tasks)), readMethods...)
	rt.handle("/tasks/{id}", loud, guard(a, auth.Operator, getTaskHandler(tasks)), readMethods...)
	rt.handle("/tasks/{id}", loud, guard(a, auth.Operator, cancelTaskHandler(tasks)), http.MethodDelete)
}

// guard lets a request through when it carries a token of role, or when
// that role has no tokens configured. Otherwise: 401 with a
// WWW-Authenticate challenge (RFC 6750).
func guard(a *auth.Authenticator, role auth.Role, next http.Handler) http.Handler {
	if a == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := a.Check(role, r.Header.Get("Authorization"))
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		challenge := `Bearer realm="orchestrator"`
		if errors.Is(err, auth.ErrBadToken) {
			challenge += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, http.StatusUnauthorized, err.Error()+" ("+role.String()+" role)")
	})
}
