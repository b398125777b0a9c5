package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registry's Prometheus series.
type metrics struct {
	registrations *prometheus.CounterVec
	heartbeats    *prometheus.CounterVec
	evictions     *prometheus.CounterVec
	agents        *prometheus.Desc
	metadata      *prometheus.Desc
	budget        *prometheus.Desc
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
		metadata: prometheus.NewDesc("orchestrator_agent_metadata_bytes",
			"Agent metadata the registry holds: every agent's registration and last heartbeat metadata, as JSON text.", nil, nil),
		budget: prometheus.NewDesc("orchestrator_agent_metadata_budget_bytes",
			"AGENT_MAX_METADATA_TOTAL_BYTES: past it, registrations and heartbeats that grow an agent's metadata get 507.", nil, nil),
		r: r,
	}
	for _, t := range Types {
		m.evictions.WithLabelValues(string(t))
		for _, res := range []string{"created", "updated"} {
			m.registrations.WithLabelValues(string(t), res)
		}
	}
	for _, s := range append([]Status{"unknown"}, ReportedStatuses...) {
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

// Describe implements prometheus.Collector for the gauges read from the
// store.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.agents
	ch <- m.metadata
	ch <- m.budget
}

// Collect counts the agents by type and status, and reads the metadata
// they hold, at scrape time, so the gauges can never drift from the store.
// The store counts: no agent is copied, however many there are or however
// much metadata they carry.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch <- prometheus.MustNewConstMetric(m.budget, prometheus.GaugeValue, float64(m.r.cfg.MaxMetadataTotalBytes))
	if held, err := m.r.store.MetadataBytes(ctx); err != nil {
		ch <- prometheus.NewInvalidMetric(m.metadata, err)
	} else {
		ch <- prometheus.MustNewConstMetric(m.metadata, prometheus.GaugeValue, float64(held))
	}
	counts, err := m.r.store.Count(ctx, m.r.unreachableCutoff())
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.agents, err)
		return
	}
	table := make(map[[2]string]float64, len(counts))
	for _, c := range counts {
		table[[2]string{string(c.Type), string(c.Status)}] += float64(c.Agents)
	}
	for _, t := range Types {
		for _, s := range Statuses {
			ch <- prometheus.MustNewConstMetric(m.agents, prometheus.GaugeValue, table[[2]string{string(t), string(s)}], string(t), string(s))
		}
	}
}
