package dispatch

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the dispatcher's Prometheus series. Task types label only
// tasks that were accepted, and a task is accepted only when a registered
// agent lists its type as a capability, so the label's values are bounded
// by what agents registered.
type metrics struct {
	submitted *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	tasks     *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	attempts  *prometheus.CounterVec
}

// newMetrics registers the series on reg (none when nil); depth and
// inFlight give the gauges' values.
func newMetrics(reg prometheus.Registerer, depth, inFlight func() float64) (*metrics, error) {
	m := &metrics{
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_tasks_submitted_total",
			Help: "Tasks accepted, by agent type.",
		}, []string{"agent_type"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_tasks_rejected_total",
			Help: "Task submissions refused although valid: no_capable_agent (503) or queue_full (429).",
		}, []string{"reason"}),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_tasks_total",
			Help: "Tasks finished, by agent type, task type and outcome (completed, failed, timeout, cancelled).",
		}, []string{"agent_type", "task_type", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "orchestrator_task_duration_seconds",
			Help:    "Time from submission to outcome, by agent type and outcome.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900},
		}, []string{"agent_type", "outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchestrator_task_delivery_attempts_total",
			Help: "Deliveries to agents, by agent type and result (success, rejected, agent_error, transport_error, timeout, cancelled).",
		}, []string{"agent_type", "result"}),
	}
	for _, reason := range []string{"no_capable_agent", "queue_full"} {
		m.rejected.WithLabelValues(reason)
	}
	if reg == nil {
		return m, nil
	}
	queueDepth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orchestrator_task_queue_depth",
		Help: "Tasks waiting for an agent with a free slot (including retries past their backoff); with a database, across the cluster, refreshed every TASK_POLL_INTERVAL.",
	}, depth)
	inFlightGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orchestrator_tasks_in_flight",
		Help: "Deliveries to agents in progress (by this replica).",
	}, inFlight)
	for _, c := range []prometheus.Collector{m.submitted, m.rejected, m.tasks, m.duration, m.attempts, queueDepth, inFlightGauge} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering task metrics: %w", err)
		}
	}
	return m, nil
}

// finished counts a task that reached its terminal state.
func (m *metrics) finished(t Task) {
	m.tasks.WithLabelValues(string(t.AgentType), t.TaskType, string(t.Status)).Inc()
	m.duration.WithLabelValues(string(t.AgentType), string(t.Status)).Observe(t.CompletedAt.Sub(t.CreatedAt).Seconds())
}
