// Package registry keeps the agents that registered with the orchestrator:
// their records, their liveness (heartbeats, unreachable, eviction), and
// which of them may receive a task. Storage is behind Store.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/config/bound"
)

// Config sets agent liveness and which hosts agents may register.
type Config struct {
	// HeartbeatInterval is the interval agents are told to heartbeat at.
	HeartbeatInterval time.Duration `env:"AGENT_HEARTBEAT_INTERVAL, default=30s"`
	// MissedHeartbeats is how many intervals of silence make an agent
	// unreachable (not routable until its next heartbeat).
	MissedHeartbeats int `env:"AGENT_MISSED_HEARTBEATS, default=3"`
	// EvictAfter is how long an agent may stay silent before it is removed.
	EvictAfter time.Duration `env:"AGENT_EVICT_AFTER, default=24h"`
	// AllowedNetworks are the CIDRs an agent's host must be in (a DNS name
	// must resolve only into them): the orchestrator sends tasks there,
	// so this keeps a registration from aiming requests anywhere else.
	AllowedNetworks []string `env:"AGENT_ALLOWED_NETWORKS, default=127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"`
	// MaxMetadataBytes bounds the metadata object of one registration or
	// heartbeat, as JSON text; larger is refused (413) before it is
	// decoded. An agent keeps at most two (its registration's and its last
	// heartbeat's). Zero means the default.
	MaxMetadataBytes int `env:"AGENT_MAX_METADATA_BYTES, default=65536"`
	// MaxMetadataDepth bounds how deep objects and arrays nest in that
	// metadata, the metadata object itself being level 1. Zero means the
	// default.
	MaxMetadataDepth int `env:"AGENT_MAX_METADATA_DEPTH, default=8"`
	// MaxAgents bounds how many agents may be registered at once. Past it
	// a new agent is refused (507) until others unregister or are evicted;
	// a known agent may always register again. Zero means the default.
	MaxAgents int `env:"AGENT_MAX_AGENTS, default=50000"`
	// MaxMetadataTotalBytes bounds all the metadata the registry holds:
	// every agent's registration and last heartbeat metadata, as JSON
	// text, summed. A registration or heartbeat that would take the sum
	// past it is refused (507) and changes nothing; one that does not grow
	// its agent's metadata never is. Unregistering or evicting an agent
	// frees its share. Without it, the per-request limit and the agent cap
	// allow MaxAgents x 2 x MaxMetadataBytes (6.5 GB at their defaults):
	// fewer than 1,000 agents with full metadata would pass the chart's
	// default 128 MiB memory limit (GOMEMLIMIT follows it) and get the pod
	// OOM-killed. The default, 32 MiB, is a quarter of that limit: a
	// registry filled to it holds 1.0x (64 KiB blocks) to 1.5x (256-byte
	// blocks, 50,000 agents) of it in heap, measured, leaving the rest to
	// requests, tasks and the runtime. A typical agent sends hundreds of
	// bytes, so a 10,000-agent fleet uses a few MB of it. Zero means the
	// default.
	MaxMetadataTotalBytes int `env:"AGENT_MAX_METADATA_TOTAL_BYTES, default=33554432"`
}

// The defaults of the limits, which a Config built in code (with zeros)
// gets too.
const (
	// DefaultMaxMetadataBytes, 64 KiB, is far more than the labels,
	// versions and hardware facts agents report (hundreds of bytes), and
	// small enough that a registration costs its size once, not the tens
	// of megabytes a 1 MiB body decoded into maps did.
	DefaultMaxMetadataBytes = 64 << 10
	// DefaultMaxMetadataDepth, 8, leaves room for labels of labels while
	// keeping every reader of the metadata (this service's encoder, the
	// operators' tools) away from deep recursion.
	DefaultMaxMetadataDepth = 8
	// DefaultMaxAgents, 50,000, is five times a 10,000-agent fleet: room
	// for agents that restart under new names and are not yet evicted.
	DefaultMaxAgents = 50_000
	// DefaultMaxMetadataTotalBytes, 32 MiB: see Config.MaxMetadataTotalBytes.
	DefaultMaxMetadataTotalBytes = 32 << 20
	// maxMetadataDepthLimit bounds AGENT_MAX_METADATA_DEPTH.
	maxMetadataDepthLimit = 100
	// maxMetadataBytesLimit and maxAgentsLimit bound the two other
	// limits: past them the registry could not hold what it admits.
	maxMetadataBytesLimit = 16 << 20
	maxAgentsLimit        = 10_000_000
	// maxMetadataTotalLimit, 1 TiB, bounds AGENT_MAX_METADATA_TOTAL_BYTES
	// far above any pod's memory, to catch a unit slip rather than to
	// judge a size.
	maxMetadataTotalLimit = 1 << 40
)

// Limits of the settings. The interval is told to agents in whole
// seconds; more than an hour between heartbeats is no liveness at all.
// maxMissedHeartbeats x maxHeartbeatInterval (1000h) stays far from
// overflowing a time.Duration, and below maxEvictAfter.
const (
	maxHeartbeatInterval = time.Hour
	maxMissedHeartbeats  = 1000
	maxEvictAfter        = 365 * 24 * time.Hour
)

// Validate reports every setting that cannot be used, naming its variable.
func (c Config) Validate() error {
	var errs []error
	intervalOK := c.HeartbeatInterval >= time.Second && c.HeartbeatInterval <= maxHeartbeatInterval &&
		c.HeartbeatInterval%time.Second == 0
	if !intervalOK {
		errs = append(errs, fmt.Errorf("AGENT_HEARTBEAT_INTERVAL=%q: must be a whole number of seconds from 1s to %s (agents are told it in seconds)",
			c.HeartbeatInterval, bound.Short(maxHeartbeatInterval)))
	}
	missedOK := c.MissedHeartbeats >= 1 && c.MissedHeartbeats <= maxMissedHeartbeats
	if !missedOK {
		errs = append(errs, fmt.Errorf("AGENT_MISSED_HEARTBEATS=\"%d\": must be from 1 to %d", c.MissedHeartbeats, maxMissedHeartbeats))
	}
	switch {
	case c.EvictAfter > maxEvictAfter:
		errs = append(errs, fmt.Errorf("AGENT_EVICT_AFTER=%q: must be at most %s", c.EvictAfter, bound.Short(maxEvictAfter)))
	case intervalOK && missedOK && c.EvictAfter <= c.unreachableAfter():
		errs = append(errs, fmt.Errorf("AGENT_EVICT_AFTER=%q: must be longer than AGENT_MISSED_HEARTBEATS x AGENT_HEARTBEAT_INTERVAL (%s)", c.EvictAfter, c.unreachableAfter()))
	case c.EvictAfter <= 0:
		errs = append(errs, fmt.Errorf("AGENT_EVICT_AFTER=%q: must be greater than 0", c.EvictAfter))
	}
	if networks, err := ParseNetworks(c.AllowedNetworks); err != nil {
		errs = append(errs, fmt.Errorf("AGENT_ALLOWED_NETWORKS=%q: %w", strings.Join(c.AllowedNetworks, ","), err))
	} else if len(networks) == 0 {
		errs = append(errs, errors.New(`AGENT_ALLOWED_NETWORKS="": no network: no agent could register`))
	}
	if c.MaxMetadataBytes < 2 || c.MaxMetadataBytes > maxMetadataBytesLimit {
		errs = append(errs, fmt.Errorf("AGENT_MAX_METADATA_BYTES=\"%d\": must be from 2 (the empty object {}) to %d", c.MaxMetadataBytes, maxMetadataBytesLimit))
	}
	if c.MaxMetadataDepth < 1 || c.MaxMetadataDepth > maxMetadataDepthLimit {
		errs = append(errs, fmt.Errorf("AGENT_MAX_METADATA_DEPTH=\"%d\": must be from 1 (a flat object) to %d", c.MaxMetadataDepth, maxMetadataDepthLimit))
	}
	if c.MaxAgents < 1 || c.MaxAgents > maxAgentsLimit {
		errs = append(errs, fmt.Errorf("AGENT_MAX_AGENTS=\"%d\": must be from 1 to %d", c.MaxAgents, maxAgentsLimit))
	}
	switch {
	case c.MaxMetadataTotalBytes < 2 || c.MaxMetadataTotalBytes > maxMetadataTotalLimit:
		errs = append(errs, fmt.Errorf("AGENT_MAX_METADATA_TOTAL_BYTES=\"%d\": must be from 2 (the empty object {}) to %d", c.MaxMetadataTotalBytes, int64(maxMetadataTotalLimit)))
	case c.MaxMetadataTotalBytes < c.MaxMetadataBytes:
		errs = append(errs, fmt.Errorf("AGENT_MAX_METADATA_TOTAL_BYTES=\"%d\": must be at least AGENT_MAX_METADATA_BYTES (%d), or metadata that limit admits could never be stored",
			c.MaxMetadataTotalBytes, c.MaxMetadataBytes))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with the zero limits set to their defaults.
func (c Config) withDefaults() Config {
	if c.MaxMetadataBytes == 0 {
		c.MaxMetadataBytes = DefaultMaxMetadataBytes
	}
	if c.MaxMetadataDepth == 0 {
		c.MaxMetadataDepth = DefaultMaxMetadataDepth
	}
	if c.MaxAgents == 0 {
		c.MaxAgents = DefaultMaxAgents
	}
	if c.MaxMetadataTotalBytes == 0 {
		c.MaxMetadataTotalBytes = DefaultMaxMetadataTotalBytes
	}
	return c
}

func (c Config) unreachableAfter() time.Duration {
	return time.Duration(c.MissedHeartbeats) * c.HeartbeatInterval
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddDuration("heartbeat_interval", c.HeartbeatInterval)
	enc.AddInt("missed_heartbeats", c.MissedHeartbeats)
	enc.AddDuration("evict_after", c.EvictAfter)
	enc.AddString("allowed_networks", strings.Join(c.AllowedNetworks, ","))
	enc.AddInt("max_metadata_bytes", c.MaxMetadataBytes)
	enc.AddInt("max_metadata_depth", c.MaxMetadataDepth)
	enc.AddInt("max_agents", c.MaxAgents)
	enc.AddInt("max_metadata_total_bytes", c.MaxMetadataTotalBytes)
	return nil
}

// Options are the Registry's collaborators. Now, NewID and Resolver are
// for tests; they default to the real clock, UUIDs and DNS.
type Options struct {
	Config   Config
	Store    Store
	Logger   *zap.Logger
	Metrics  prometheus.Registerer
	Now      func() time.Time
	NewID    func() string
	Resolver Resolver
}

// Registry is the service agents register with.
type Registry struct {
	cfg      Config
	limits   metadataLimits
	store    Store
	log      *zap.Logger
	now      func() time.Time
	newID    func() string
	guard    *Guard
	metrics  *metrics
	onChange func()
}

// New returns a Registry. It fails only on a bad Config or when its
// metrics cannot be registered.
func New(opts Options) (*Registry, error) {
	networks, err := ParseNetworks(opts.Config.AllowedNetworks)
	if err != nil {
		return nil, err
	}
	cfg := opts.Config.withDefaults()
	r := &Registry{
		cfg:    cfg,
		limits: metadataLimits{maxBytes: cfg.MaxMetadataBytes, maxDepth: cfg.MaxMetadataDepth},
		store:  opts.Store,
		log:    opts.Logger,
		now:    opts.Now,
		newID:  opts.NewID,
		guard:  &Guard{Networks: networks, Resolver: opts.Resolver},
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.newID == nil {
		r.newID = uuid.NewString
	}
	if r.metrics, err = newMetrics(opts.Metrics, r); err != nil {
		return nil, err
	}
	return r, nil
}

// Guard is the check every agent host passes, at registration and again
// when a delivery connects.
func (r *Registry) Guard() *Guard { return r.guard }

// HeartbeatIntervalSeconds is the interval agents are told, in seconds.
func (r *Registry) HeartbeatIntervalSeconds() int {
	return int(r.cfg.HeartbeatInterval / time.Second)
}

// OnChange sets a function called after an agent may have become routable
// (registered, or a heartbeat), so the dispatcher can retry waiting tasks.
// Set it before serving.
func (r *Registry) OnChange(f func()) { r.onChange = f }

func (r *Registry) changed() {
	if r.onChange != nil {
		r.onChange()
	}
}

// Register validates reg, checks its host against the allowed networks,
// and stores the agent seen now, with the status it reports (healthy by
// default). Registering again with the same name, host and port returns
// the same ID (created is false); with a chosen reg.ID, registering again
// with that ID does, and an ID that a generated-ID agent has is refused
// with ErrIDTaken. Either way, not when the agent is bound to another
// token than reg.Owner (an *OwnerError). A
// new agent beyond MaxAgents is refused with ErrFull; metadata that would
// take the registry's past MaxMetadataTotalBytes with ErrMetadataBudget.
func (r *Registry) Register(ctx context.Context, reg Registration) (a Agent, created bool, err error) {
	a, err = reg.validate(r.limits)
	if err != nil {
		return Agent{}, false, err
	}
	if err := r.guard.CheckHost(ctx, a.Host); err != nil {
		return Agent{}, false, err
	}
	by := Actor{Token: reg.Owner}
	now := r.now().UTC()
	if !a.ChosenID {
		a.ID = r.newID()
	}
	a.RegisteredAt, a.LastSeen = now, now
	stored, created, err := r.store.Register(ctx, a, r.storeLimits())
	switch {
	case errors.Is(err, ErrNotOwner):
		r.log.Warn("agent registration refused: the agent is bound to another token", zap.String("agent_id", reg.ID),
			zap.String("name", a.Name), zap.String("host", a.Host), zap.Int("port", a.Port), zap.Object("by", by))
		if a.ChosenID {
			return Agent{}, false, &OwnerError{Agent: a.ID}
		}
		return Agent{}, false, &OwnerError{Agent: fmt.Sprintf("%q at %s", a.Name, net.JoinHostPort(a.Host, strconv.Itoa(a.Port)))}
	case errors.Is(err, ErrIDTaken):
		r.log.Warn("agent registration refused: its agent_id is a generated agent's", zap.String("agent_id", a.ID),
			zap.String("name", a.Name), zap.Object("by", by))
		return Agent{}, false, fmt.Errorf("agent_id: %w: %q is the id of an agent registered through POST /agents/register; choose another agent_id",
			ErrIDTaken, a.ID)
	case errors.Is(err, ErrFull):
		r.log.Warn("agent registration refused: AGENT_MAX_AGENTS reached",
			zap.String("name", a.Name), zap.String("host", a.Host), zap.Int("port", a.Port), zap.Int("max_agents", r.cfg.MaxAgents), zap.Object("by", by))
		return Agent{}, false, fmt.Errorf("%w: it holds AGENT_MAX_AGENTS=%d agents; a new agent can register once others unregister or are evicted (a registered agent can still register again)",
			ErrFull, r.cfg.MaxAgents)
	case errors.Is(err, ErrMetadataBudget):
		r.log.Warn("agent registration refused: AGENT_MAX_METADATA_TOTAL_BYTES reached",
			zap.String("name", a.Name), zap.String("host", a.Host), zap.Int("port", a.Port),
			zap.Int("metadata_bytes", len(a.Metadata)), zap.Int("max_metadata_total_bytes", r.cfg.MaxMetadataTotalBytes), zap.Object("by", by))
		return Agent{}, false, r.budgetError("this registration's", len(a.Metadata), "the agent holds now")
	case err != nil:
		return Agent{}, false, err
	}
	r.metrics.registered(stored.Type, created)
	r.log.Info("agent registered",
		zap.String("agent_id", stored.ID), zap.String("name", stored.Name), zap.String("type", string(stored.Type)),
		zap.String("host", stored.Host), zap.Int("port", stored.Port), zap.Strings("capabilities", stored.Capabilities),
		zap.String("announced_host", stored.AnnouncedHost), zap.String("address_source", string(stored.AddressSource)),
		zap.Bool("chosen_id", stored.ChosenID), zap.Bool("new", created), zap.String("owner", stored.Owner), zap.Object("by", by))
	r.changed()
	return stored, created, nil
}

// storeLimits are the limits the store checks on each change.
func (r *Registry) storeLimits() Limits {
	return Limits{Agents: r.cfg.MaxAgents, MetadataBytes: r.cfg.MaxMetadataTotalBytes}
}

// budgetError tells a client refused by the metadata budget what it can
// do: what sent the metadata, its size, and what it was compared with. It
// names the setting, never what other agents hold.
func (r *Registry) budgetError(what string, size int, than string) error {
	return fmt.Errorf("%w: the agents' metadata leaves too little of AGENT_MAX_METADATA_TOTAL_BYTES=%d for %s %d bytes of metadata, more than %s; nothing was recorded. Metadata no larger than that, or none, is always accepted; more fits once agents unregister, are evicted or send less",
		ErrMetadataBudget, r.cfg.MaxMetadataTotalBytes, what, size, than)
}

// Heartbeat records a heartbeat from by. status is what the agent sent
// (empty means healthy); metadata, a JSON object as sent, replaces the
// last heartbeat's unless it is empty or null. An unreachable agent is
// revived: a late heartbeat never gets 404 while the agent is still
// registered. Metadata growing the agent's past what MaxMetadataTotalBytes
// leaves is refused with ErrMetadataBudget, and the heartbeat is not
// recorded.
func (r *Registry) Heartbeat(ctx context.Context, by Actor, id, status string, metadata json.RawMessage) (Agent, error) {
	st, err := ParseReportedStatus(status)
	if err != nil {
		return Agent{}, &FieldError{Field: "status", Msg: err.Error()}
	}
	meta, err := r.limits.check(metadata)
	if err != nil {
		return Agent{}, err
	}
	a, before, err := r.store.Heartbeat(ctx, id, by.owner(), st, meta, r.now().UTC(), r.storeLimits())
	switch {
	case errors.Is(err, ErrNotFound):
		r.metrics.heartbeats.WithLabelValues("unknown").Inc()
		return Agent{}, err
	case errors.Is(err, ErrNotOwner):
		r.log.Warn("agent heartbeat refused: the agent is bound to another token", zap.String("agent_id", id), zap.Object("by", by))
		return Agent{}, &OwnerError{Agent: id}
	case errors.Is(err, ErrMetadataBudget):
		r.log.Warn("agent heartbeat refused: AGENT_MAX_METADATA_TOTAL_BYTES reached", zap.String("agent_id", id),
			zap.Int("metadata_bytes", len(meta)), zap.Int("max_metadata_total_bytes", r.cfg.MaxMetadataTotalBytes), zap.Object("by", by))
		return Agent{}, r.budgetError("this heartbeat's", len(meta), "its last heartbeat's")
	case err != nil:
		return Agent{}, err
	}
	r.metrics.heartbeats.WithLabelValues(string(st)).Inc()
	if was := r.effectiveStatus(before); was != st {
		r.log.Info("agent status changed", zap.String("agent_id", id), zap.String("name", a.Name),
			zap.String("from", string(was)), zap.String("to", string(st)), zap.Object("by", by))
	}
	r.changed()
	return a, nil
}

// Unregister removes agent id on behalf of by.
func (r *Registry) Unregister(ctx context.Context, by Actor, id string) (Agent, error) {
	a, err := r.store.Delete(ctx, id, by.owner())
	switch {
	case errors.Is(err, ErrNotOwner):
		r.log.Warn("agent unregistration refused: the agent is bound to another token", zap.String("agent_id", id), zap.Object("by", by))
		return Agent{}, &OwnerError{Agent: id}
	case err != nil:
		return Agent{}, err
	}
	r.log.Info("agent unregistered", zap.String("agent_id", a.ID), zap.String("name", a.Name),
		zap.String("owner", a.Owner), zap.Object("by", by))
	return a, nil
}

// Get returns agent id with its effective status.
func (r *Registry) Get(ctx context.Context, id string) (Agent, error) {
	a, err := r.store.Get(ctx, id)
	a.Status = r.effectiveStatus(a.liveness())
	return a, err
}

// List returns the agents of typ (all when empty) with their effective status.
func (r *Registry) List(ctx context.Context, typ Type) ([]Agent, error) {
	agents, err := r.store.List(ctx, typ)
	for i := range agents {
		agents[i].Status = r.effectiveStatus(agents[i].liveness())
	}
	return agents, err
}

// effectiveStatus is the stored status, or unreachable once the agent has
// been silent too long, even if the sweeper has not marked it yet.
func (r *Registry) effectiveStatus(a Liveness) Status {
	if a.Status != "" && a.LastSeen.Before(r.unreachableCutoff()) {
		return StatusUnreachable
	}
	return a.Status
}

func (r *Registry) unreachableCutoff() time.Time {
	return r.now().Add(-r.cfg.unreachableAfter())
}

// Routable appends to buf the agents of typ with capability that may get a
// task now: healthy and heard from recently.
func (r *Registry) Routable(ctx context.Context, typ Type, capability string, buf []Candidate) ([]Candidate, error) {
	start := len(buf)
	buf, err := r.store.Candidates(ctx, typ, capability, buf)
	if err != nil {
		return buf[:start], err
	}
	cutoff := r.unreachableCutoff()
	kept := buf[:start]
	for _, c := range buf[start:] {
		if c.Status == StatusHealthy && !c.LastSeen.Before(cutoff) {
			kept = append(kept, c)
		}
	}
	return kept, nil
}

// Sweep marks silent agents unreachable and evicts those silent past the
// eviction horizon, logging each.
func (r *Registry) Sweep(ctx context.Context) error {
	now := r.now()
	marked, err := r.store.MarkUnreachable(ctx, now.Add(-r.cfg.unreachableAfter()))
	for _, a := range marked {
		r.log.Warn("agent unreachable: no heartbeat", zap.String("agent_id", a.ID), zap.String("name", a.Name),
			zap.String("type", string(a.Type)), zap.Time("last_seen", a.LastSeen))
	}
	if err != nil {
		return err
	}
	evicted, err := r.store.Evict(ctx, now.Add(-r.cfg.EvictAfter))
	for _, a := range evicted {
		r.metrics.evictions.WithLabelValues(string(a.Type)).Inc()
		r.log.Warn("agent evicted: silent past AGENT_EVICT_AFTER", zap.String("agent_id", a.ID), zap.String("name", a.Name),
			zap.String("type", string(a.Type)), zap.Time("last_seen", a.LastSeen), zap.Duration("evict_after", r.cfg.EvictAfter),
			zap.String("owner", a.Owner))
	}
	return err
}

// Run sweeps every half heartbeat interval until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	tick := time.NewTicker(max(r.cfg.HeartbeatInterval/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("sweeping agents", zap.Error(err))
			}
		}
	}
}
