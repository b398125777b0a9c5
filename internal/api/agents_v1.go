package api

// The /api/v1 agent dialect ("dialect B"): the routes and bodies that
// OptiInfra's performance, resource and application agents speak. They
// serve the same registry as the /agents routes; only the wire differs:
// the agent chooses its id, announces an endpoint URL or a host and port,
// says "active" for healthy, and expects 200 where /agents answers 201.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// agentV1JSON is an Agent as the /api/v1 routes show it.
type agentV1JSON struct {
	AgentID             string                 `json:"agent_id"`
	AgentName           string                 `json:"agent_name"`
	AgentType           registry.Type          `json:"agent_type"`
	Endpoint            string                 `json:"endpoint"`
	Host                string                 `json:"host"`
	Port                int                    `json:"port"`
	Capabilities        []string               `json:"capabilities"`
	Status              registry.Status        `json:"status"`
	Version             string                 `json:"version"`
	HealthCheckEndpoint string                 `json:"health_check_endpoint"`
	RegisteredAt        time.Time              `json:"registered_at"`
	LastHeartbeat       time.Time              `json:"last_heartbeat"`
	Metadata            json.RawMessage        `json:"metadata"`
	AnnouncedHost       string                 `json:"announced_host"`
	AddressSource       registry.AddressSource `json:"address_source"`
}

// announcedOf is what the agent announced and where its host comes from;
// an agent stored without them announced its host.
func announcedOf(a registry.Agent) (string, registry.AddressSource) {
	if a.AddressSource == "" {
		return a.Host, registry.AddressAnnounced
	}
	return a.AnnouncedHost, a.AddressSource
}

// endpointOf is the base URL tasks are delivered to.
func endpointOf(a registry.Agent) string {
	return "http://" + net.JoinHostPort(a.Host, strconv.Itoa(a.Port))
}

func toAgentV1JSON(a registry.Agent) (agentV1JSON, error) {
	meta, err := a.AllMetadata()
	if err != nil {
		return agentV1JSON{}, err
	}
	out := agentV1JSON{
		AgentID: a.ID, AgentName: a.Name, AgentType: a.Type, Endpoint: endpointOf(a), Host: a.Host, Port: a.Port,
		Capabilities: a.Capabilities, Status: a.Status, Version: a.Version, HealthCheckEndpoint: a.HealthCheckEndpoint,
		RegisteredAt: a.RegisteredAt, LastHeartbeat: a.LastSeen, Metadata: meta,
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

// v1Status turns a status word of the /api/v1 dialect into the registry's:
// active or healthy, degraded, and inactive, unhealthy or error.
// Empty is healthy.
func v1Status(word string) (string, error) {
	switch word {
	case "", "active", "healthy":
		return string(registry.StatusHealthy), nil
	case "degraded":
		return string(registry.StatusDegraded), nil
	case "inactive", "unhealthy", "error":
		return string(registry.StatusUnhealthy), nil
	}
	return "", &registry.FieldError{Field: "status", Msg: fmt.Sprintf(
		"%.64q is not a status; use active or healthy, degraded, or inactive, unhealthy or error", word)}
}

// renameFields answers for a registry error in the dialect's field names:
// name is agent_name, type is agent_type, metadata of a heartbeat is
// metrics, and host and port are endpoint when the agent sent an
// endpoint. Other errors pass unchanged.
func renameFields(err error, names map[string]string) error {
	var field *registry.FieldError
	if !errors.As(err, &field) {
		if name, ok := names["host"]; ok && errors.Is(err, registry.ErrHostNotAllowed) {
			return &hostFieldError{field: name, err: err}
		}
		return err
	}
	name, ok := names[field.Field]
	if !ok {
		return err
	}
	return &registry.FieldError{Field: name, Msg: field.Msg, Err: field.Err}
}

// hostFieldError is a host refused by AGENT_ALLOWED_NETWORKS that the
// request named in another field than host (endpoint).
type hostFieldError struct {
	field string
	err   error
}

func (e *hostFieldError) Error() string { return e.err.Error() }
func (e *hostFieldError) Unwrap() error { return e.err }

// parseEndpoint reads an agent's announced endpoint: an http:// URL with a
// host and a port, nothing else. Tasks go to POST <endpoint>/task, over
// plain HTTP, so a path, a query, user information or https could only
// mislead.
func parseEndpoint(endpoint string) (host string, port int, err error) {
	bad := func(format string, args ...any) (string, int, error) {
		return "", 0, &registry.FieldError{Field: "endpoint", Msg: fmt.Sprintf(format, args...)}
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return bad("%.200q is not a URL such as http://10.0.0.5:8002", endpoint)
	}
	switch {
	case u.Scheme == "https":
		return bad("%.200q: https is not supported: the orchestrator delivers tasks over plain HTTP; announce an http:// URL", endpoint)
	case u.Scheme != "http":
		return bad("%.200q must be an http:// URL such as http://10.0.0.5:8002", endpoint)
	case u.User != nil:
		return bad("must not carry user information")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return bad("%.200q must have no query or fragment", endpoint)
	case u.Path != "" && u.Path != "/" || u.Opaque != "":
		return bad("%.200q must have no path: tasks are delivered to POST <endpoint>/task", endpoint)
	case u.Hostname() == "":
		return bad("%.200q has no host", endpoint)
	case u.Port() == "":
		return bad("%.200q has no port: write it, as in http://10.0.0.5:8002", endpoint)
	}
	port, err = strconv.Atoi(u.Port())
	if err != nil || port < 1 || port > 65535 {
		return bad("%.200q: the port must be from 1 to 65535", endpoint)
	}
	return u.Hostname(), port, nil
}

// clientAddr is the address a request came from: the direct peer, or,
// when the peer is one of the trusted proxies, the right-most address of
// X-Forwarded-For that is not itself a trusted proxy (each proxy appends
// the address it got the request from; only those added by trusted
// proxies can be believed). The zero Addr when the peer's address is not
// an IP address (a test's, or a Unix socket's).
func clientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	addr := parseHostAddr(r.RemoteAddr)
	if !addr.IsValid() || !inPrefixes(addr, trusted) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop := parseHostAddr(strings.TrimSpace(hops[i]))
		if !hop.IsValid() {
			// Nothing left of a hop that is not an address can be
			// believed: the last trusted proxy is where it came from.
			return addr
		}
		addr = hop
		if !inPrefixes(hop, trusted) {
			return hop
		}
	}
	return addr
}

// parseHostAddr parses an IP address, with or without a port, without a
// zone, IPv4-mapped addresses as IPv4; the zero Addr for anything else.
func parseHostAddr(s string) netip.Addr {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}
		}
		addr = ap.Addr()
	}
	return addr.Unmap().WithZone("")
}

func inPrefixes(addr netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// registerV1Handler serves POST /api/v1/agents/register.
func registerV1Handler(agents Agents, trusted []netip.Prefix) http.HandlerFunc {
	type request struct {
		AgentID             string          `json:"agent_id"`
		AgentName           string          `json:"agent_name"`
		AgentType           string          `json:"agent_type"`
		Endpoint            string          `json:"endpoint"`
		Host                string          `json:"host"`
		Port                *int            `json:"port"`
		Capabilities        []string        `json:"capabilities"`
		Version             string          `json:"version"`
		HealthCheckEndpoint string          `json:"health_check_endpoint"`
		Status              string          `json:"status"`
		Metadata            json.RawMessage `json:"metadata"`
	}
	type response struct {
		AgentID                  string                 `json:"agent_id"`
		Status                   string                 `json:"status"`
		Message                  string                 `json:"message"`
		HeartbeatIntervalSeconds int                    `json:"heartbeat_interval_seconds"`
		HeartbeatURL             string                 `json:"heartbeat_url"`
		RegisteredAt             time.Time              `json:"registered_at"`
		Host                     string                 `json:"host"`
		Port                     int                    `json:"port"`
		AddressSource            registry.AddressSource `json:"address_source"`
	}
	return func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := decodeBody(r, &req); err != nil {
			writeDomainError(w, r, err)
			return
		}
		if req.AgentID == "" {
			writeError(w, http.StatusBadRequest, "agent_id: is required")
			return
		}
		status, err := v1Status(req.Status)
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		names := map[string]string{"name": "agent_name", "type": "agent_type"}
		host, port := req.Host, 0
		switch {
		case req.Endpoint != "":
			if host, port, err = parseEndpoint(req.Endpoint); err != nil {
				writeDomainError(w, r, err)
				return
			}
			names["host"], names["port"] = "endpoint", "endpoint"
		case req.Host == "" && req.Port == nil:
			writeError(w, http.StatusBadRequest, "endpoint: is required (or host and port)")
			return
		case req.Port == nil:
			writeError(w, http.StatusBadRequest, "port: is required")
			return
		default:
			port = *req.Port
		}
		name := req.AgentName
		if strings.TrimSpace(name) == "" {
			name = req.AgentID
		}
		a, created, err := agents.Register(r.Context(), registry.Registration{
			ID: req.AgentID, Name: name, Type: req.AgentType, Host: host, Port: port,
			Capabilities: req.Capabilities, Version: req.Version, Metadata: req.Metadata,
			Owner: actorOf(r).Token, From: clientAddr(r, trusted), Status: status,
			HealthCheckEndpoint: req.HealthCheckEndpoint,
		})
		if err != nil {
			writeDomainError(w, r, renameFields(err, names))
			return
		}
		msg := "agent " + a.ID + " registered"
		if !created {
			msg = "agent " + a.ID + " registered again: its record is updated"
		}
		// 200, also for a new agent: these agents take any other code,
		// 201 included, for a failure.
		writeJSON(w, http.StatusOK, response{
			AgentID: a.ID, Status: "registered", Message: msg,
			HeartbeatIntervalSeconds: agents.HeartbeatIntervalSeconds(),
			HeartbeatURL:             "/api/v1/agents/" + a.ID + "/heartbeat",
			RegisteredAt:             a.RegisteredAt, Host: a.Host, Port: a.Port, AddressSource: a.AddressSource,
		})
	}
}

// heartbeatV1Request is a heartbeat of the /api/v1 dialect. The timestamp
// is the agent's clock, accepted and ignored: liveness is judged by the
// orchestrator's.
type heartbeatV1Request struct {
	AgentID   *string         `json:"agent_id"`
	Timestamp json.RawMessage `json:"timestamp"`
	Status    string          `json:"status"`
	Metrics   json.RawMessage `json:"metrics"`
}

// heartbeatV1Response is the 200 answer to a heartbeat of the dialect.
type heartbeatV1Response struct {
	Status                   string    `json:"status"`
	AgentID                  string    `json:"agent_id"`
	Timestamp                time.Time `json:"timestamp"`
	HeartbeatIntervalSeconds int       `json:"heartbeat_interval_seconds"`
}

// heartbeatV1 records the heartbeat of agent id and answers it.
func heartbeatV1(w http.ResponseWriter, r *http.Request, agents Agents, id string, req heartbeatV1Request) {
	if ts := bytes.TrimSpace(req.Timestamp); len(ts) > 0 && ts[0] != '"' && ts[0] != '-' && (ts[0] < '0' || ts[0] > '9') && string(ts) != "null" {
		writeError(w, http.StatusBadRequest, "timestamp: must be a string or a number (it is ignored: the orchestrator's clock counts)")
		return
	}
	status, err := v1Status(req.Status)
	if err != nil {
		writeDomainError(w, r, err)
		return
	}
	a, err := agents.Heartbeat(r.Context(), actorOf(r), id, status, req.Metrics)
	if err != nil {
		writeDomainError(w, r, renameFields(notFoundAs(err, "agent", id), map[string]string{"metadata": "metrics"}))
		return
	}
	writeJSON(w, http.StatusOK, heartbeatV1Response{
		Status: "ok", AgentID: a.ID, Timestamp: a.LastSeen.Truncate(time.Second),
		HeartbeatIntervalSeconds: agents.HeartbeatIntervalSeconds(),
	})
}

// heartbeatBodyV1Handler serves POST /api/v1/agents/heartbeat, whose body
// names the agent.
func heartbeatBodyV1Handler(agents Agents) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req heartbeatV1Request
		if err := decodeBody(r, &req); err != nil {
			writeDomainError(w, r, err)
			return
		}
		if req.AgentID == nil || *req.AgentID == "" {
			writeError(w, http.StatusBadRequest, "agent_id: is required")
			return
		}
		heartbeatV1(w, r, agents, *req.AgentID, req)
	}
}

// heartbeatPathV1Handler serves POST /api/v1/agents/{agent_id}/heartbeat.
// An empty body is a healthy heartbeat.
func heartbeatPathV1Handler(agents Agents) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req heartbeatV1Request
		if err := decodeBody(r, &req); err != nil && !errors.Is(err, errEmptyBody) {
			writeDomainError(w, r, err)
			return
		}
		id := mux.Vars(r)["agent_id"]
		if req.AgentID != nil && *req.AgentID != "" && *req.AgentID != id {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent_id: the body names %.64q, the path %.64q", *req.AgentID, id))
			return
		}
		heartbeatV1(w, r, agents, id, req)
	}
}

// deleteV1Handler serves DELETE /api/v1/agents/{agent_id}, for the
// agent's own token or an operator's.
func deleteV1Handler(agents Agents) http.HandlerFunc {
	type response struct {
		Message string `json:"message"`
		AgentID string `json:"agent_id"`
	}
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["agent_id"]
		a, err := agents.Unregister(r.Context(), actorOf(r), id)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "agent", id))
			return
		}
		writeJSON(w, http.StatusOK, response{Message: fmt.Sprintf("agent %s (%s) unregistered", a.ID, a.Name), AgentID: a.ID})
	}
}

// getAgentV1Handler serves GET /api/v1/agents/{agent_id}.
func getAgentV1Handler(agents Agents) http.HandlerFunc {
	return getAgentAs(agents, "agent_id", toAgentV1JSON)
}

// listAgentsV1Handler serves GET /api/v1/agents, of one type with
// ?agent_type=.
func listAgentsV1Handler(agents Agents) http.HandlerFunc {
	return listAgentsAs(agents, "agent_type", func(r *http.Request) string { return r.URL.Query().Get("agent_type") }, toAgentV1JSON)
}
