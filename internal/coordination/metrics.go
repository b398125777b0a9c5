package coordination

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// metrics are the engine's Prometheus series. Recommendations by status
// is a gauge read from the store at scrape time, not counters of
// transitions kept by this process: with replicas sharing a PostgreSQL
// store each would count only its own transitions, and a restart would
// lose them, while the store's counts are the truth every replica reads
// alike.
type metrics struct {
	conflicts       *prometheus.CounterVec
	decided         *prometheus.CounterVec
	recommendations *prometheus.Desc
	e               *Engine
}

// recommendationStatuses are the statuses the gauge always reports, 0
// included, so a dashboard's series never vanish.
var recommendationStatuses = []orchestrator.RecommendationStatus{
	orchestrator.RecommendationPending, orchestrator.RecommendationAutoApproved, orchestrator.RecommendationApproved,
	orchestrator.RecommendationRejected, orchestrator.RecommendationSuperseded, orchestrator.RecommendationExpired,
	orchestrator.RecommendationExecuting, orchestrator.RecommendationCompleted, orchestrator.RecommendationFailed,
	orchestrator.RecommendationRolledBack, orchestrator.RecommendationCancelled,
}

func newMetrics(reg prometheus.Registerer, e *Engine) (*metrics, error) {
	m := &metrics{
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_coordination_conflicts_total",
			Help: "Conflicts detected among coordinated recommendations, by type (resource, action, dependency).",
		}, []string{"type"}),
		decided: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_coordination_approvals_decided_total",
			Help: "Approvals decided, by outcome: approved, rejected, or expired by the sweep.",
		}, []string{"outcome"}),
		recommendations: prometheus.NewDesc("orchestrator_coordination_recommendations",
			"Stored recommendations, by status.", []string{"status"}, nil),
		e: e,
	}
	for _, t := range []orchestrator.ConflictType{orchestrator.ConflictResource, orchestrator.ConflictAction, orchestrator.ConflictDependency} {
		m.conflicts.WithLabelValues(string(t))
	}
	for _, s := range []orchestrator.ApprovalStatus{orchestrator.ApprovalApproved, orchestrator.ApprovalRejected, orchestrator.ApprovalExpired} {
		m.decided.WithLabelValues(string(s))
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.conflicts, m.decided, m} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering coordination metrics: %w", err)
		}
	}
	return m, nil
}

// Describe implements prometheus.Collector for the gauge read from the
// store.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.recommendations }

// Collect counts the recommendations by status at scrape time.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := m.e.store.CountRecommendations(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.recommendations, err)
		return
	}
	for _, s := range recommendationStatuses {
		ch <- prometheus.MustNewConstMetric(m.recommendations, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
