package orchestrator

import "time"

// AgentType is the kind of work an agent does.
type AgentType string

// The agent types the orchestrator knows. Any other type is refused with
// a 400 at registration.
const (
	AgentTypeCost        AgentType = "cost"
	AgentTypePerformance AgentType = "performance"
	AgentTypeResource    AgentType = "resource"
	AgentTypeApplication AgentType = "application"
)

// AgentStatus is an agent's health as the orchestrator sees it.
type AgentStatus string

// Agent statuses. An agent reports the first three in its heartbeats (an
// empty status means healthy); the orchestrator sets Unreachable when
// heartbeats stop. Only healthy agents receive tasks.
const (
	AgentHealthy     AgentStatus = "healthy"
	AgentDegraded    AgentStatus = "degraded"
	AgentUnhealthy   AgentStatus = "unhealthy"
	AgentUnreachable AgentStatus = "unreachable"
)

// Registration is the body of POST /agents/register. Name, Type, Host and
// Port are required; registering again with the same name, host and port
// returns the same agent ID, with the other fields updated.
type Registration struct {
	// Name, with Host and Port, identifies the agent across restarts.
	Name string    `json:"name"`
	Type AgentType `json:"type"`
	// Host is the IP address or DNS name tasks are delivered to: no
	// scheme, port or path. It must be inside the orchestrator's
	// AGENT_ALLOWED_NETWORKS.
	Host string `json:"host"`
	// Port is where the agent serves POST /task, from 1 to 65535.
	Port int `json:"port"`
	// Capabilities are the task types the agent runs: a task goes to an
	// agent whose capabilities include its task_type.
	Capabilities []string       `json:"capabilities,omitempty"`
	Version      string         `json:"version,omitempty"`
	Metadata     map[string]any `json:"metadata,omitempty"`
}

// RegisterResponse is the 201 answer to a registration.
type RegisterResponse struct {
	AgentID      string    `json:"agent_id"`
	RegisteredAt time.Time `json:"registered_at"`
	// HeartbeatURL is /agents/<agent_id>/heartbeat.
	HeartbeatURL string `json:"heartbeat_url"`
	// HeartbeatIntervalSeconds is how often to heartbeat; send the first
	// heartbeat at once.
	HeartbeatIntervalSeconds int `json:"heartbeat_interval_seconds"`
}

// HeartbeatRequest is the body of POST /agents/{id}/heartbeat. Both fields
// are optional: the zero value is a healthy heartbeat.
type HeartbeatRequest struct {
	// Status is healthy, degraded or unhealthy; empty means healthy.
	Status AgentStatus `json:"status,omitempty"`
	// Metadata replaces the previous heartbeat's; reads show it laid over
	// the registration's metadata.
	Metadata map[string]any `json:"metadata,omitempty"`
}

// HeartbeatResponse is the 200 answer to a heartbeat.
type HeartbeatResponse struct {
	Received bool `json:"received"`
	// NextIntervalSeconds is when to send the next heartbeat.
	NextIntervalSeconds int `json:"next_interval_seconds"`
	// Timestamp is when the heartbeat was recorded, to the second.
	Timestamp time.Time `json:"timestamp"`
}

// Agent is a registered agent, as GET /agents and GET /agents/{id} show
// it. Every field is always present: Capabilities and Metadata are empty,
// never null.
type Agent struct {
	ID           string      `json:"id"`
	Name         string      `json:"name"`
	Type         AgentType   `json:"type"`
	Host         string      `json:"host"`
	Port         int         `json:"port"`
	Capabilities []string    `json:"capabilities"`
	Status       AgentStatus `json:"status"`
	Version      string      `json:"version"`
	RegisteredAt time.Time   `json:"registered_at"`
	// LastSeen is the last registration or heartbeat.
	LastSeen time.Time `json:"last_seen"`
	// Metadata is the registration's metadata overlaid with the last
	// heartbeat's.
	Metadata map[string]any `json:"metadata"`
	// AnnouncedHost is the host the agent announced; Host differs from it
	// when AddressSource is AddressFromRequest (an /api/v1 agent that
	// announced 0.0.0.0, or loopback from another machine).
	AnnouncedHost string `json:"announced_host"`
	// AddressSource says where Host comes from.
	AddressSource AddressSource `json:"address_source"`
}

// AgentList is the answer of GET /agents and GET /agents/type/{type}.
type AgentList struct {
	Agents []Agent `json:"agents"`
	Count  int     `json:"count"`
}

// message is the answer of POST /agents/{id}/unregister.
type message struct {
	Message string `json:"message"`
}
