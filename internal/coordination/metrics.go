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
	// The executor's: plans it finished by final status and how long
	// they ran, rollbacks by outcome, and steps by outcome. Each replica
	// counts the plans it finished; sum them across replicas.
	plansFinished *prometheus.CounterVec
	planDuration  *prometheus.HistogramVec
	rollbacks     *prometheus.CounterVec
	steps         *prometheus.CounterVec
	running       prometheus.GaugeFunc
	e             *Engine
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
		plansFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_coordination_plans_finished_total",
			Help: "Plans this replica finished, by final status (completed, failed, rolled_back, rollback_failed, cancelled).",
		}, []string{"status"}),
		planDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "orchestrator_coordination_plan_duration_seconds",
			Help:    "Time from a plan's start to its final status, rollback included, by final status.",
			Buckets: []float64{0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"status"}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_coordination_rollbacks_total",
			Help: "Plan rollbacks, by outcome: started, rolled_back, rollback_failed.",
		}, []string{"outcome"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_coordination_steps_total",
			Help: "Plan steps finished by this replica, by outcome (completed, failed), rollback steps included.",
		}, []string{"outcome"}),
		running: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "orchestrator_coordination_plans_running",
			Help: "Plans this replica is running now (holding their run lease).",
		}, func() float64 { return float64(e.runningPlans()) }),
		e: e,
	}
	for _, s := range []orchestrator.PlanStatus{orchestrator.PlanCompleted, orchestrator.PlanFailed, orchestrator.PlanRolledBack,
		orchestrator.PlanRollbackFailed, orchestrator.PlanCancelled} {
		m.plansFinished.WithLabelValues(string(s))
	}
	for _, o := range []string{"started", string(orchestrator.PlanRolledBack), string(orchestrator.PlanRollbackFailed)} {
		m.rollbacks.WithLabelValues(o)
	}
	for _, o := range []orchestrator.StepStatus{orchestrator.StepCompleted, orchestrator.StepFailed} {
		m.steps.WithLabelValues(string(o))
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
	for _, c := range []prometheus.Collector{m.conflicts, m.decided, m, m.plansFinished, m.planDuration, m.rollbacks, m.steps, m.running} {
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
