package health

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the state of every check to Prometheus. It reads the
// same cached results the probes read; unlike the library's metrics
// handler, a scrape never runs a check.
func (h *Health) Collector() prometheus.Collector { return collector{h} }

type collector struct{ h *Health }

var (
	checkUpDesc = prometheus.NewDesc("orchestrator_health_check_up",
		"1 when the health check passes, 0 when it fails.", []string{"check", "kind"}, nil)
	checkLastRunDesc = prometheus.NewDesc("orchestrator_health_check_last_run_timestamp_seconds",
		"Unix time of the last completed run of a background dependency check.", []string{"check"}, nil)
	readyDesc = prometheus.NewDesc("orchestrator_ready",
		"1 when /ready answers 200, else 0.", nil, nil)
	drainingDesc = prometheus.NewDesc("orchestrator_draining",
		"1 once shutdown has begun and the server is draining, else 0.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- checkUpDesc
	ch <- checkLastRunDesc
	ch <- readyDesc
	ch <- drainingDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	results := c.h.evaluate(Readiness)
	for _, r := range results {
		ch <- prometheus.MustNewConstMetric(checkUpDesc, prometheus.GaugeValue, boolValue(r.err == nil),
			r.check.name, string(r.check.kind))
		if r.check.dep != nil && !r.at.IsZero() {
			ch <- prometheus.MustNewConstMetric(checkLastRunDesc, prometheus.GaugeValue,
				float64(r.at.UnixNano())/1e9, r.check.name)
		}
	}
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, boolValue(allOK(results)))
	ch <- prometheus.MustNewConstMetric(drainingDesc, prometheus.GaugeValue, boolValue(c.h.Draining()))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
