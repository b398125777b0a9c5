package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// Agents is what the HTTP layer needs of the registry.
type Agents interface {
	Register(ctx context.Context, reg registry.Registration) (registry.Agent, bool, error)
	Heartbeat(ctx context.Context, by registry.Actor, id, status string, metadata json.RawMessage) (registry.Agent, error)
	Unregister(ctx context.Context, by registry.Actor, id string) (registry.Agent, error)
	Get(ctx context.Context, id string) (registry.Agent, error)
	List(ctx context.Context, typ registry.Type) ([]registry.Agent, error)
	HeartbeatIntervalSeconds() int
}

// agentJSON is an Agent on the wire, as existing agents and tools read it.
type agentJSON struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Type         registry.Type   `json:"type"`
	Host         string          `json:"host"`
	Port         int             `json:"port"`
	Capabilities []string        `json:"capabilities"`
	Status       registry.Status `json:"status"`
	Version      string          `json:"version"`
	RegisteredAt time.Time       `json:"registered_at"`
	LastSeen     time.Time       `json:"last_seen"`
	Metadata     json.RawMessage `json:"metadata"`
	// Additive: what the agent announced, and whether host is it.
	AnnouncedHost string                 `json:"announced_host"`
	AddressSource registry.AddressSource `json:"address_source"`
}

func toAgentJSON(a registry.Agent) (agentJSON, error) {
	meta, err := a.AllMetadata()
	if err != nil {
		return agentJSON{}, err
	}
	out := agentJSON{
		ID: a.ID, Name: a.Name, Type: a.Type, Host: a.Host, Port: a.Port,
		Capabilities: a.Capabilities, Status: a.Status, Version: a.Version,
		RegisteredAt: a.RegisteredAt, LastSeen: a.LastSeen, Metadata: meta,
	}
	out.AnnouncedHost, out.AddressSource = announcedOf(a)
	if out.Capabilities == nil {
		out.Capabilities = []string{}
	}
	if len(out.Metadata) == 0 {
		out.Metadata = json.RawMessage("{}")
	}
	return out, nil
}

// registerHandler serves POST /agents/register.
func registerHandler(agents Agents) http.HandlerFunc {
	// Metadata stays JSON text: the registry checks its size and depth
	// before anything decodes it.
	type request struct {
		Name         string          `json:"name"`
		Type         string          `json:"type"`
		Host         string          `json:"host"`
		Port         *int            `json:"port"`
		Capabilities []string        `json:"capabilities"`
		Version      string          `json:"version"`
		Metadata     json.RawMessage `json:"metadata"`
	}
	type response struct {
		AgentID                  string    `json:"agent_id"`
		RegisteredAt             time.Time `json:"registered_at"`
		HeartbeatURL             string    `json:"heartbeat_url"`
		HeartbeatIntervalSeconds int       `json:"heartbeat_interval_seconds"`
	}
	return func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := decodeBody(r, &req); err != nil {
			writeDomainError(w, r, err)
			return
		}
		if req.Port == nil {
			writeError(w, http.StatusBadRequest, "port: is required")
			return
		}
		a, _, err := agents.Register(r.Context(), registry.Registration{
			Name: req.Name, Type: req.Type, Host: req.Host, Port: *req.Port,
			Capabilities: req.Capabilities, Version: req.Version, Metadata: req.Metadata,
			Owner: actorOf(r).Token,
		})
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		// 201 also when the agent was known: existing clients accept only 201.
		writeJSON(w, http.StatusCreated, response{
			AgentID:                  a.ID,
			RegisteredAt:             a.RegisteredAt,
			HeartbeatURL:             "/agents/" + a.ID + "/heartbeat",
			HeartbeatIntervalSeconds: agents.HeartbeatIntervalSeconds(),
		})
	}
}

// heartbeatHandler serves POST /agents/{id}/heartbeat. An empty body is a
// healthy heartbeat.
func heartbeatHandler(agents Agents) http.HandlerFunc {
	type request struct {
		Status   string          `json:"status"`
		Metadata json.RawMessage `json:"metadata"`
	}
	type response struct {
		Received            bool      `json:"received"`
		NextIntervalSeconds int       `json:"next_interval_seconds"`
		Timestamp           time.Time `json:"timestamp"`
	}
	return func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := decodeBody(r, &req); err != nil && !errors.Is(err, errEmptyBody) {
			writeDomainError(w, r, err)
			return
		}
		id := mux.Vars(r)["id"]
		a, err := agents.Heartbeat(r.Context(), actorOf(r), id, req.Status, req.Metadata)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "agent", id))
			return
		}
		writeJSON(w, http.StatusOK, response{
			Received:            true,
			NextIntervalSeconds: agents.HeartbeatIntervalSeconds(),
			Timestamp:           a.LastSeen.Truncate(time.Second),
		})
	}
}

// unregisterHandler serves POST /agents/{id}/unregister, for the agent's
// own token or an operator's. Existing agents send no body and no
// Content-Type; neither is looked at.
func unregisterHandler(agents Agents) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		a, err := agents.Unregister(r.Context(), actorOf(r), id)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "agent", id))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"message": fmt.Sprintf("agent %s (%s) unregistered", a.ID, a.Name)})
	}
}

// getAgentHandler serves GET /agents/{id}.
func getAgentHandler(agents Agents) http.HandlerFunc {
	return getAgentAs(agents, "id", toAgentJSON)
}

// listAgentsHandler serves GET /agents and GET /agents/type/{type}.
func listAgentsHandler(agents Agents) http.HandlerFunc {
	return listAgentsAs(agents, "type", func(r *http.Request) string { return mux.Vars(r)["type"] }, toAgentJSON)
}

// getAgentAs serves one agent, named by the path variable idVar, in the
// shape convert gives it: each dialect reads the same registry.
func getAgentAs[T any](agents Agents, idVar string, convert func(registry.Agent) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)[idVar]
		a, err := agents.Get(r.Context(), id)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "agent", id))
			return
		}
		out, err := convert(a)
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// listAgentsAs serves the agents of the type typeOf reads from the request
// (every type when empty; typeField names it in a 400), in the shape
// convert gives each, streamed.
func listAgentsAs[T any](agents Agents, typeField string, typeOf func(*http.Request) string, convert func(registry.Agent) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var typ registry.Type
		if name := typeOf(r); name != "" {
			t, err := registry.ParseType(name)
			if err != nil {
				writeError(w, http.StatusBadRequest, typeField+": "+err.Error())
				return
			}
			typ = t
		}
		list, err := agents.List(r.Context(), typ)
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		writeList(w, r, "agents", len(list), func(i int) (T, error) {
			a, err := convert(list[i])
			list[i] = registry.Agent{} // written: let its metadata go
			return a, err
		})
	}
}
