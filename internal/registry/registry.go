// Package registry keeps the agents that registered with the orchestrator:
// their records, their liveness (heartbeats, unreachable, eviction), and
// which of them may receive a task. Storage is behind Store.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
}

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
	return errors.Join(errs...)
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
	r := &Registry{
		cfg:   opts.Config,
		store: opts.Store,
		log:   opts.Logger,
		now:   opts.Now,
		newID: opts.NewID,
		guard: &Guard{Networks: networks, Resolver: opts.Resolver},
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
// and stores the agent healthy and seen now. Registering again with the
// same name, host and port returns the same ID (created is false).
func (r *Registry) Register(ctx context.Context, reg Registration) (a Agent, created bool, err error) {
	a, err = reg.validate()
	if err != nil {
		return Agent{}, false, err
	}
	if err := r.guard.CheckHost(ctx, a.Host); err != nil {
		return Agent{}, false, err
	}
	now := r.now().UTC()
	a.ID, a.RegisteredAt, a.LastSeen, a.Status = r.newID(), now, now, StatusHealthy
	a, created, err = r.store.Register(ctx, a)
	if err != nil {
		return Agent{}, false, err
	}
	r.metrics.registered(a.Type, created)
	r.log.Info("agent registered",
		zap.String("agent_id", a.ID), zap.String("name", a.Name), zap.String("type", string(a.Type)),
		zap.String("host", a.Host), zap.Int("port", a.Port), zap.Strings("capabilities", a.Capabilities),
		zap.Bool("new", created))
	r.changed()
	return a, created, nil
}

// Heartbeat records a heartbeat. status is what the agent sent (empty
// means healthy). An unreachable agent is revived: a late heartbeat never
// gets 404 while the agent is still registered.
func (r *Registry) Heartbeat(ctx context.Context, id, status string, metadata map[string]any) (Agent, error) {
	st, err := ParseReportedStatus(status)
	if err != nil {
		return Agent{}, &FieldError{Field: "status", Msg: err.Error()}
	}
	a, before, err := r.store.Heartbeat(ctx, id, st, metadata, r.now().UTC())
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			r.metrics.heartbeats.WithLabelValues("unknown").Inc()
		}
		return Agent{}, err
	}
	r.metrics.heartbeats.WithLabelValues(string(st)).Inc()
	if was := r.effectiveStatus(before); was != st {
		r.log.Info("agent status changed", zap.String("agent_id", id), zap.String("name", a.Name),
			zap.String("from", string(was)), zap.String("to", string(st)))
	}
	r.changed()
	return a, nil
}

// Unregister removes agent id.
func (r *Registry) Unregister(ctx context.Context, id string) (Agent, error) {
	a, err := r.store.Delete(ctx, id)
	if err != nil {
		return Agent{}, err
	}
	r.log.Info("agent unregistered", zap.String("agent_id", a.ID), zap.String("name", a.Name))
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
			zap.String("type", string(a.Type)), zap.Time("last_seen", a.LastSeen), zap.Duration("evict_after", r.cfg.EvictAfter))
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

// Guard admits agent hosts that are, or resolve only to, addresses inside
// the allowed networks.
type Guard struct {
	Networks []netip.Prefix
	Resolver Resolver
}

// Resolver looks up a host name's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ErrHostNotAllowed is returned for a host outside the allowed networks.
var ErrHostNotAllowed = errors.New("host not allowed")

// hostLookupTimeout bounds the DNS lookup of a registering agent's host.
const hostLookupTimeout = 2 * time.Second

// CheckHost returns nil when host is an allowed address or a name that
// resolves only to allowed addresses.
func (g *Guard) CheckHost(ctx context.Context, host string) error {
	if addr, err := netip.ParseAddr(host); err == nil {
		return g.CheckAddr(addr)
	}
	ctx, cancel := context.WithTimeout(ctx, hostLookupTimeout)
	defer cancel()
	resolver := g.Resolver
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	addrs, err := resolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return &FieldError{Field: "host", Msg: fmt.Sprintf("%q does not resolve", host)}
	}
	for _, addr := range addrs {
		if err := g.CheckAddr(addr); err != nil {
			return fmt.Errorf("%q resolves to %s: %w", host, addr, err)
		}
	}
	return nil
}

// CheckAddr returns nil when addr is inside an allowed network.
func (g *Guard) CheckAddr(addr netip.Addr) error {
	addr = addr.Unmap()
	if neverAgent(addr) {
		return fmt.Errorf("%w: %s is unspecified, multicast, link-local or a cloud metadata address, which AGENT_ALLOWED_NETWORKS can never admit", ErrHostNotAllowed, addr)
	}
	for _, p := range g.Networks {
		if p.Contains(addr) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is outside AGENT_ALLOWED_NETWORKS", ErrHostNotAllowed, addr)
}

// awsIPv6Metadata is EC2's instance metadata service over IPv6, which sits
// inside fc00::/7, one of the default private ranges.
var awsIPv6Metadata = netip.MustParseAddr("fd00:ec2::254")

// neverAgent is true for addresses no configuration may admit: unspecified,
// multicast, and link-local, where cloud metadata services live
// (169.254.169.254), and EC2's IPv6 metadata address.
func neverAgent(addr netip.Addr) bool {
	return addr.IsUnspecified() || addr.IsMulticast() || addr.IsLinkLocalUnicast() ||
		addr.IsLinkLocalMulticast() || addr == awsIPv6Metadata
}

// ParseNetworks parses CIDRs such as 10.0.0.0/8 (a bare address means
// just that address).
func ParseNetworks(cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range cidrs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", s)
		}
		out = append(out, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return out, nil
}

// metrics are the registry's Prometheus series.
type metrics struct {
	registrations *prometheus.CounterVec
	heartbeats    *prometheus.CounterVec
	evictions     *prometheus.CounterVec
	agents        *prometheus.Desc
	r             *Registry
}

func newMetrics(reg prometheus.Registerer, r *Registry) (*metrics, error) {
	m := &metrics{
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_agent_registrations_total",
			Help: "Agent registrations, by agent type and whether the agent was new or re-registered.",
		}, []string{"type", "result"}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_agent_heartbeats_total",
			Help: "Agent heartbeats received, by reported status (unknown: no such agent).",
		}, []string{"status"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_agent_evictions_total",
			Help: "Agents removed after staying silent past AGENT_EVICT_AFTER, by agent type.",
		}, []string{"type"}),
		agents: prometheus.NewDesc("orchestrator_agents",
			"Registered agents, by type and status.", []string{"type", "status"}, nil),
		r: r,
	}
	for _, t := range Types {
		m.evictions.WithLabelValues(string(t))
		for _, res := range []string{"created", "updated"} {
			m.registrations.WithLabelValues(string(t), res)
		}
	}
	for _, s := range append([]Status{"unknown"}, Statuses[:3]...) {
		m.heartbeats.WithLabelValues(string(s))
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.registrations, m.heartbeats, m.evictions, m} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering agent metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) registered(t Type, created bool) {
	result := "updated"
	if created {
		result = "created"
	}
	m.registrations.WithLabelValues(string(t), result).Inc()
}

// Describe implements prometheus.Collector for the agents gauge.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.agents }

// Collect counts the agents by type and status at scrape time, so the
// gauge can never drift from the store.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	agents, err := m.r.List(ctx, "")
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.agents, err)
		return
	}
	counts := map[[2]string]float64{}
	for _, a := range agents {
		counts[[2]string{string(a.Type), string(a.Status)}]++
	}
	for _, t := range Types {
		for _, s := range Statuses {
			ch <- prometheus.MustNewConstMetric(m.agents, prometheus.GaugeValue,
				counts[[2]string{string(t), string(s)}], string(t), string(s))
		}
	}
}
