package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Type is the kind of work an agent does.
type Type string

// The agent types OptiInfra has.
const (
	TypeCost        Type = "cost"
	TypePerformance Type = "performance"
	TypeResource    Type = "resource"
	TypeApplication Type = "application"
)

// Types lists every agent type, in the order metrics and docs show them.
var Types = []Type{TypeCost, TypePerformance, TypeResource, TypeApplication}

// ParseType returns the Type named s, or an error listing the valid ones.
func ParseType(s string) (Type, error) {
	if slices.Contains(Types, Type(s)) {
		return Type(s), nil
	}
	return "", fmt.Errorf("%q is not an agent type; use cost, performance, resource or application", s)
}

// Status is an agent's health as the orchestrator sees it.
type Status string

// The agent statuses. Agents report the first three in heartbeats; the
// orchestrator sets Unreachable when heartbeats stop.
const (
	StatusHealthy     Status = "healthy"
	StatusDegraded    Status = "degraded"
	StatusUnhealthy   Status = "unhealthy"
	StatusUnreachable Status = "unreachable"
)

// Statuses lists every status, in the order metrics show them.
var Statuses = []Status{StatusHealthy, StatusDegraded, StatusUnhealthy, StatusUnreachable}

// ReportedStatuses are the statuses an agent may report in a heartbeat.
var ReportedStatuses = []Status{StatusHealthy, StatusDegraded, StatusUnhealthy}

// ParseReportedStatus returns the status an agent reported in a heartbeat.
// Empty means healthy (agents that send no status); unreachable is the
// orchestrator's to set, not the agent's.
func ParseReportedStatus(s string) (Status, error) {
	if s == "" {
		return StatusHealthy, nil
	}
	if st := Status(s); slices.Contains(ReportedStatuses, st) {
		return st, nil
	}
	return "", fmt.Errorf("%q is not a heartbeat status; use healthy, degraded or unhealthy", s)
}

// Agent is a registered agent.
type Agent struct {
	ID           string
	Name         string
	Type         Type
	Host         string
	Port         int
	Capabilities []string
	Status       Status
	Version      string
	RegisteredAt time.Time
	LastSeen     time.Time
	// Owner is the fingerprint of the agent token the agent registered
	// with (see Actor); empty when it registered without one. Only that
	// token may register the agent again, heartbeat or unregister it.
	Owner string
	// Metadata is the JSON object the agent sent when it registered;
	// HeartbeatMetadata the one it sent in its last heartbeat. Both are
	// kept as JSON text, compact, within AGENT_MAX_METADATA_BYTES: never
	// decoded into maps, which cost many times their size, and copied as
	// one block. Keeping them apart bounds memory: a heartbeat replaces
	// the latter rather than growing one object forever.
	Metadata          json.RawMessage
	HeartbeatMetadata json.RawMessage
	// ChosenID is true for an agent that chose its own ID (the /api/v1
	// dialect), false for one whose ID the registry generated. Only the
	// latter are found again by name, host and port; the former by their
	// ID.
	ChosenID bool
	// AnnouncedHost is the host the agent sent; Host differs from it when
	// AddressSource is AddressRequest.
	AnnouncedHost string
	// AddressSource says where Host comes from.
	AddressSource AddressSource
	// HealthCheckEndpoint is the health path or URL the agent announced
	// (the /api/v1 dialect); the orchestrator shows it and never calls it.
	HealthCheckEndpoint string
}

// AddressSource says where an agent's registered host comes from.
type AddressSource string

// The address sources.
const (
	// AddressAnnounced: the host the agent sent.
	AddressAnnounced AddressSource = "announced"
	// AddressRequest: the address its registration came from, because
	// the host it sent was unspecified (0.0.0.0, ::), or loopback while
	// the request was not.
	AddressRequest AddressSource = "request"
)

// AllMetadata is the registration metadata with the last heartbeat's laid
// over it, key by key: what GET /agents shows. Nil when neither has any.
func (a Agent) AllMetadata() (json.RawMessage, error) {
	if isEmptyObject(a.HeartbeatMetadata) {
		return a.Metadata, nil
	}
	if isEmptyObject(a.Metadata) {
		return a.HeartbeatMetadata, nil
	}
	// Only the top level is decoded: the values stay JSON text.
	var all, overlay map[string]json.RawMessage
	if err := json.Unmarshal(a.Metadata, &all); err != nil {
		return nil, fmt.Errorf("agent %s: stored metadata: %w", a.ID, err)
	}
	if err := json.Unmarshal(a.HeartbeatMetadata, &overlay); err != nil {
		return nil, fmt.Errorf("agent %s: stored heartbeat metadata: %w", a.ID, err)
	}
	maps.Copy(all, overlay)
	return json.Marshal(all)
}

// isEmptyObject is true for no metadata and for {}.
func isEmptyObject(m json.RawMessage) bool {
	return len(m) == 0 || string(m) == "{}" || string(m) == "null"
}

// HasCapability reports whether the agent can run tasks of taskType.
func (a Agent) HasCapability(taskType string) bool {
	return slices.Contains(a.Capabilities, taskType)
}

// Registration is what an agent sends to register.
type Registration struct {
	// ID is the ID the agent chose (the /api/v1 dialect), a safe path
	// segment; empty to have the registry generate one. An agent with a
	// chosen ID is found again by that ID, never by name, host and port.
	ID           string
	Name         string
	Type         string
	Host         string
	Port         int
	Capabilities []string
	Version      string
	// Metadata is a JSON object as the agent sent it; nil (or null) for none.
	Metadata json.RawMessage
	// Owner is the fingerprint of the agent token the request carried,
	// empty without one (agent authentication off): see Agent.Owner.
	Owner string
	// From is the address the registration came from; when it is set, an
	// unspecified Host, or a loopback one while From is not loopback,
	// registers From instead (AddressRequest). The zero value keeps Host
	// as sent.
	From netip.Addr
	// Status is the status the agent reports as it registers; empty
	// means healthy.
	Status string
	// HealthCheckEndpoint: see Agent.HealthCheckEndpoint.
	HealthCheckEndpoint string
}

// Limits on registration fields. They keep one agent's record small;
// Config bounds the metadata.
const (
	maxNameLen       = 128
	maxHostLen       = 253 // a DNS name
	maxCapabilities  = 64
	maxCapabilityLen = 64
	maxVersionLen    = 64
	maxHealthLen     = 512
)

// chosenIDPattern is what an agent-chosen ID may look like: one safe URL
// path segment (never "." or ".."), as it appears in the routes.
var chosenIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidChosenID reports why id cannot be an agent-chosen ID, or nil.
func ValidChosenID(id string) error {
	if id == "" {
		return errors.New("is required")
	}
	if !chosenIDPattern.MatchString(id) {
		return fmt.Errorf("%.80q must be 1 to 128 letters, digits or . _ - (starting with a letter or digit)", id)
	}
	return nil
}

// capabilityPattern is what a capability (and so a task type) may look
// like. Task types label metrics, so they must stay short and plain.
var capabilityPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]*$`)

// ValidTaskType reports why s cannot be a capability or task type, or nil.
func ValidTaskType(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > maxCapabilityLen || !capabilityPattern.MatchString(s) {
		return fmt.Errorf("%.80q must be at most %d letters, digits or _ . : / - (starting with a letter or digit)", s, maxCapabilityLen)
	}
	return nil
}

// FieldError is a registration or heartbeat field that cannot be accepted.
type FieldError struct {
	Field string
	Msg   string
	// Err, when set, says more about why: ErrTooLarge.
	Err error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// ErrInvalid is wrapped by every FieldError check failure.
var ErrInvalid = errors.New("invalid")

// ErrTooLarge is wrapped by a FieldError for a field over its size limit.
var ErrTooLarge = errors.New("too large")

// Is makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// validate checks r and returns the agent it describes (without ID, times
// and status), with capabilities de-duplicated in their given order and
// the metadata checked against lim and compacted.
func (r Registration) validate(lim metadataLimits) (Agent, error) {
	fieldErr := func(field, format string, args ...any) (Agent, error) {
		return Agent{}, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if r.ID != "" {
		if err := ValidChosenID(r.ID); err != nil {
			return fieldErr("agent_id", "%s", err)
		}
	}
	name := strings.TrimSpace(r.Name)
	switch {
	case name == "":
		return fieldErr("name", "is required")
	case len(name) > maxNameLen || strings.ContainsFunc(name, isControl):
		return fieldErr("name", "must be at most %d printable characters", maxNameLen)
	}
	if r.Type == "" {
		return fieldErr("type", "is required")
	}
	typ, err := ParseType(r.Type)
	if err != nil {
		return fieldErr("type", "%s", err)
	}
	// A fully qualified name's trailing dot is dropped: "localhost." and
	// "localhost" are one host, stored (and so dialled) without the dot.
	host := strings.TrimSuffix(strings.TrimSpace(r.Host), ".")
	if host == "" {
		return fieldErr("host", "is required")
	}
	if err := validHost(host); err != nil {
		return fieldErr("host", "%s", err)
	}
	if r.Port < 1 || r.Port > 65535 {
		return fieldErr("port", "must be an integer from 1 to 65535")
	}
	if len(r.Capabilities) > maxCapabilities {
		return fieldErr("capabilities", "at most %d are allowed", maxCapabilities)
	}
	caps := make([]string, 0, len(r.Capabilities))
	for i, c := range r.Capabilities {
		if err := ValidTaskType(c); err != nil {
			return fieldErr(fmt.Sprintf("capabilities[%d]", i), "%s", err)
		}
		if !slices.Contains(caps, c) {
			caps = append(caps, c)
		}
	}
	if len(r.Version) > maxVersionLen || strings.ContainsFunc(r.Version, isControl) {
		return fieldErr("version", "must be at most %d printable characters", maxVersionLen)
	}
	status, err := ParseReportedStatus(r.Status)
	if err != nil {
		return fieldErr("status", "%s", err)
	}
	if len(r.HealthCheckEndpoint) > maxHealthLen || strings.ContainsFunc(r.HealthCheckEndpoint, isControl) {
		return fieldErr("health_check_endpoint", "must be at most %d printable characters", maxHealthLen)
	}
	meta, err := lim.check(r.Metadata)
	if err != nil {
		return Agent{}, err
	}
	announced := strings.ToLower(host)
	registered, source := announced, AddressAnnounced
	if from := r.From.Unmap().WithZone(""); from.IsValid() && (isUnspecified(announced) || isLoopback(announced) && !from.IsLoopback()) {
		registered, source = from.String(), AddressRequest
	}
	return Agent{
		ID:                  r.ID,
		ChosenID:            r.ID != "",
		Name:                name,
		Type:                typ,
		Host:                registered,
		Port:                r.Port,
		Capabilities:        caps,
		Version:             r.Version,
		Metadata:            meta,
		Owner:               r.Owner,
		Status:              status,
		AnnouncedHost:       announced,
		AddressSource:       source,
		HealthCheckEndpoint: r.HealthCheckEndpoint,
	}, nil
}

// isUnspecified is true for the addresses that mean "every interface"
// (0.0.0.0, ::): an agent that announces one says where it listens, not
// where it can be reached.
func isUnspecified(host string) bool {
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsUnspecified()
}

// isLoopback is true for localhost and the loopback addresses: reachable
// from the orchestrator only when it runs on the agent's machine.
func isLoopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsLoopback()
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// dnsName is a host name as RFC 1123 allows it, without the trailing dot
// of a fully qualified name (validate drops it).
var dnsName = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// validHost accepts an IP address or a DNS name; never a URL, a port or
// user information, which would let a registration steer deliveries.
func validHost(host string) error {
	if net.ParseIP(host) != nil {
		return nil
	}
	if len(host) > maxHostLen || !dnsName.MatchString(host) {
		return fmt.Errorf("%.80q must be an IP address or a DNS name (no scheme, port or path)", host)
	}
	return nil
}

func (a Agent) liveness() Liveness { return Liveness{Status: a.Status, LastSeen: a.LastSeen} }
