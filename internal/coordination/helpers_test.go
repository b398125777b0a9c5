package coordination_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

var now = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// counter returns a newID that names things id-1, id-2, ...
func counter(prefix string) func() string {
	n := 0
	return func() string { n++; return fmt.Sprintf("%s-%d", prefix, n) }
}

// rec is a valid low-risk recommendation with the given id, changes
// applied.
func rec(id string, change ...func(*orchestrator.Recommendation)) orchestrator.Recommendation {
	r := orchestrator.Recommendation{ID: id, AgentType: orchestrator.AgentTypeCost, Action: "tune", RiskLevel: orchestrator.RiskLow, Confidence: 0.5}
	for _, c := range change {
		c(&r)
	}
	return r
}

func on(resources ...string) func(*orchestrator.Recommendation) {
	return func(r *orchestrator.Recommendation) { r.AffectedResources = resources }
}

func action(a string) func(*orchestrator.Recommendation) {
	return func(r *orchestrator.Recommendation) { r.Action = a }
}

func prio(p int) func(*orchestrator.Recommendation) {
	return func(r *orchestrator.Recommendation) { r.Priority = p }
}

func dependsOn(ids ...string) func(*orchestrator.Recommendation) {
	return func(r *orchestrator.Recommendation) { r.Dependencies = ids }
}

// loadConfig is the Config the environment env gives.
func loadConfig(t testing.TB, env map[string]string) (coordination.Config, error) {
	t.Helper()
	var cfg coordination.Config
	err := envconfig.ProcessWith(context.Background(), &envconfig.Config{Target: &cfg, Lookuper: envconfig.MapLookuper(env)})
	return cfg, err
}

func defaultConfig(t testing.TB) coordination.Config {
	t.Helper()
	cfg, err := loadConfig(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
