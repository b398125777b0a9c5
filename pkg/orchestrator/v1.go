package orchestrator

import (
	"encoding/json"
	"time"
)

// The /api/v1 dialect: the routes and bodies OptiInfra's performance,
// resource and application agents speak, served over the same registry as
// /agents. An agent registered in either dialect shows in both listings,
// receives tasks the same way (POST <endpoint>/task with a Delivery, see
// delivery.go) and follows the same liveness, limits and token binding.
//
//	POST   /api/v1/agents/register              RegistrationV1 -> 200 RegisterResponseV1
//	POST   /api/v1/agents/heartbeat             HeartbeatV1 (AgentID set) -> 200 HeartbeatResponseV1
//	POST   /api/v1/agents/{agent_id}/heartbeat  HeartbeatV1, optional -> 200 HeartbeatResponseV1
//	DELETE /api/v1/agents/{agent_id}            -> 200 UnregisterResponseV1
//	GET    /api/v1/agents[?agent_type=]         -> 200 AgentListV1
//	GET    /api/v1/agents/{agent_id}            -> 200 AgentV1

// AddressSource says where an agent's registered host comes from.
type AddressSource string

// The address sources.
const (
	// AddressAnnounced: the host the agent sent.
	AddressAnnounced AddressSource = "announced"
	// AddressFromRequest: the address the registration came from, because
	// the agent announced an unspecified address (0.0.0.0, ::), or a
	// loopback one from another machine.
	AddressFromRequest AddressSource = "request"
)

// The status words of the /api/v1 dialect, as an agent reports them in
// RegistrationV1.Status and HeartbeatV1.Status. Active (and empty) is
// healthy; Inactive and Error are unhealthy; listings show the registry's
// AgentStatus.
const (
	StatusWordActive    = "active"
	StatusWordHealthy   = "healthy"
	StatusWordDegraded  = "degraded"
	StatusWordInactive  = "inactive"
	StatusWordUnhealthy = "unhealthy"
	StatusWordError     = "error"
)

// RegistrationV1 is the body of POST /api/v1/agents/register. AgentID and
// AgentType are required, and an address: Endpoint, or Host and Port.
// Registering again with the same AgentID updates the agent (200 again);
// an AgentID that an agent registered through /agents has is a 409.
type RegistrationV1 struct {
	// AgentID is the id the agent chooses: 1 to 128 letters, digits and
	// ._- starting with a letter or digit.
	AgentID string `json:"agent_id"`
	// AgentName defaults to AgentID.
	AgentName string    `json:"agent_name,omitempty"`
	AgentType AgentType `json:"agent_type"`
	// Endpoint is http://<host>:<port>, no path; tasks go to
	// POST <endpoint>/task, over plain HTTP.
	Endpoint string `json:"endpoint,omitempty"`
	// Host and Port, without Endpoint. An unspecified host (0.0.0.0, ::),
	// or a loopback one from another machine, registers the address the
	// request came from.
	Host         string   `json:"host,omitempty"`
	Port         int      `json:"port,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
	Version      string   `json:"version,omitempty"`
	// HealthCheckEndpoint is shown in listings, never called.
	HealthCheckEndpoint string `json:"health_check_endpoint,omitempty"`
	// Status is one of the StatusWord constants; empty is healthy.
	Status   string         `json:"status,omitempty"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

// RegisterResponseV1 is the 200 answer to a registration of the dialect.
type RegisterResponseV1 struct {
	AgentID string `json:"agent_id"`
	// Status is "registered".
	Status  string `json:"status"`
	Message string `json:"message"`
	// HeartbeatIntervalSeconds is how often to heartbeat.
	HeartbeatIntervalSeconds int `json:"heartbeat_interval_seconds"`
	// HeartbeatURL is /api/v1/agents/<agent_id>/heartbeat.
	HeartbeatURL string `json:"heartbeat_url"`
	// RegisteredAt is the first registration's time, kept across
	// registrations of the same AgentID.
	RegisteredAt time.Time `json:"registered_at"`
	// Host and Port are where tasks are delivered.
	Host          string        `json:"host"`
	Port          int           `json:"port"`
	AddressSource AddressSource `json:"address_source"`
}

// HeartbeatV1 is the body of a heartbeat of the dialect. AgentID is
// required by POST /api/v1/agents/heartbeat, and optional (then equal to
// the path's) in POST /api/v1/agents/{agent_id}/heartbeat, whose body may
// be empty.
type HeartbeatV1 struct {
	AgentID string `json:"agent_id,omitempty"`
	// Timestamp, a JSON string or number, is accepted and ignored: the
	// orchestrator judges liveness by its own clock.
	Timestamp json.RawMessage `json:"timestamp,omitempty"`
	// Status is one of the StatusWord constants; empty is healthy.
	Status string `json:"status,omitempty"`
	// Metrics replace the previous heartbeat's, and show in the agent's
	// Metadata; they have the limits of metadata.
	Metrics map[string]any `json:"metrics,omitempty"`
}

// HeartbeatResponseV1 is the 200 answer to a heartbeat of the dialect.
type HeartbeatResponseV1 struct {
	// Status is "ok".
	Status  string `json:"status"`
	AgentID string `json:"agent_id"`
	// Timestamp is when the heartbeat was recorded, to the second.
	Timestamp                time.Time `json:"timestamp"`
	HeartbeatIntervalSeconds int       `json:"heartbeat_interval_seconds"`
}

// UnregisterResponseV1 is the 200 answer to DELETE /api/v1/agents/{agent_id}.
type UnregisterResponseV1 struct {
	Message string `json:"message"`
	AgentID string `json:"agent_id"`
}

// AgentV1 is a registered agent, of either dialect, as GET /api/v1/agents
// and GET /api/v1/agents/{agent_id} show it. Every field is always
// present: Capabilities and Metadata are empty, never null.
type AgentV1 struct {
	AgentID   string    `json:"agent_id"`
	AgentName string    `json:"agent_name"`
	AgentType AgentType `json:"agent_type"`
	// Endpoint is http://<host>:<port>.
	Endpoint     string      `json:"endpoint"`
	Host         string      `json:"host"`
	Port         int         `json:"port"`
	Capabilities []string    `json:"capabilities"`
	Status       AgentStatus `json:"status"`
	Version      string      `json:"version"`
	// HealthCheckEndpoint is what the agent announced, empty when nothing.
	HealthCheckEndpoint string    `json:"health_check_endpoint"`
	RegisteredAt        time.Time `json:"registered_at"`
	// LastHeartbeat is the last registration or heartbeat.
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// Metadata is the registration's metadata overlaid with the last
	// heartbeat's metrics.
	Metadata      map[string]any `json:"metadata"`
	AnnouncedHost string         `json:"announced_host"`
	AddressSource AddressSource  `json:"address_source"`
}

// AgentListV1 is the answer of GET /api/v1/agents.
type AgentListV1 struct {
	Agents []AgentV1 `json:"agents"`
	Count  int       `json:"count"`
}
