package coordination_test

import (
	"strings"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

func TestDefaultConfig(t *testing.T) {
	cfg := defaultConfig(t)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	if cfg.MaxBatch != 100 || cfg.AutoApproveMaxRisk != orchestrator.RiskLow {
		t.Errorf("max batch %d, auto-approve max risk %s; want 100, low", cfg.MaxBatch, cfg.AutoApproveMaxRisk)
	}
	for risk, want := range map[orchestrator.RiskLevel]time.Duration{
		orchestrator.RiskLow: 7 * 24 * time.Hour, orchestrator.RiskMedium: 48 * time.Hour,
		orchestrator.RiskHigh: 24 * time.Hour, orchestrator.RiskCritical: 4 * time.Hour,
	} {
		if got := cfg.ApprovalTTL(risk); got != want {
			t.Errorf("TTL of %s = %v, want %v", risk, got, want)
		}
	}
	for _, pair := range [][2]string{{"scale_up", "scale_down"}, {"enable", "disable"}, {"increase", "decrease"}, {"start", "stop"}, {"migrate_to_spot", "migrate_to_on_demand"}} {
		if !cfg.ContradictoryActions.Contradict(pair[0], pair[1]) || !cfg.ContradictoryActions.Contradict(pair[1], pair[0]) {
			t.Errorf("%s and %s do not contradict both ways", pair[0], pair[1])
		}
	}
	if cfg.ContradictoryActions.Contradict("scale_up", "stop") {
		t.Error("scale_up contradicts stop")
	}
	want := "migrate_to_spot=take_snapshot,migrate_workload,validate_quality;scale_down=validate_capacity,scale,validate_performance"
	if got := cfg.PlanTemplates.String(); got != want {
		t.Errorf("templates = %s, want %s", got, want)
	}
	if cfg.MaxRecords != 100_000 || cfg.Retention != 7*24*time.Hour || cfg.SweepInterval != 30*time.Second {
		t.Errorf("max records %d, retention %v, sweep interval %v; want 100000, 168h, 30s", cfg.MaxRecords, cfg.Retention, cfg.SweepInterval)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	cfg, err := loadConfig(t, map[string]string{
		"COORDINATION_MAX_BATCH":             "7",
		"COORDINATION_AUTO_APPROVE_MAX_RISK": "medium",
		"COORDINATION_APPROVAL_TTL_CRITICAL": "1h",
		"COORDINATION_CONTRADICTORY_ACTIONS": " grow : shrink ",
		"COORDINATION_PLAN_TEMPLATES":        "resize=check:optional, resize_disk ,notify:optional+irreversible",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxBatch != 7 || cfg.AutoApproveMaxRisk != orchestrator.RiskMedium || cfg.ApprovalTTLCritical != time.Hour {
		t.Errorf("config = %+v", cfg)
	}
	if !cfg.ContradictoryActions.Contradict("shrink", "grow") || cfg.ContradictoryActions.Contradict("scale_up", "scale_down") {
		t.Errorf("actions = %v: the setting replaces the default table", cfg.ContradictoryActions)
	}
	want := "resize=check:optional+reversible,resize_disk,notify:optional+irreversible"
	if got := cfg.PlanTemplates.String(); got != want {
		t.Errorf("templates = %s, want %s", got, want)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"COORDINATION_CONTRADICTORY_ACTIONS": "a:b,c"}, `COORDINATION_CONTRADICTORY_ACTIONS: "c": want action:action`},
		{map[string]string{"COORDINATION_CONTRADICTORY_ACTIONS": "a:b:c"}, `COORDINATION_CONTRADICTORY_ACTIONS: "a:b:c"`},
		{map[string]string{"COORDINATION_CONTRADICTORY_ACTIONS": "a:a"}, "cannot contradict itself"},
		{map[string]string{"COORDINATION_CONTRADICTORY_ACTIONS": "a b:c"}, "COORDINATION_CONTRADICTORY_ACTIONS"},
		{map[string]string{"COORDINATION_PLAN_TEMPLATES": "scale"}, `COORDINATION_PLAN_TEMPLATES: "scale": want action=step[,step]`},
		{map[string]string{"COORDINATION_PLAN_TEMPLATES": "a=x;a=y"}, "a second template for a"},
		{map[string]string{"COORDINATION_PLAN_TEMPLATES": "a=x,,y"}, "COORDINATION_PLAN_TEMPLATES"},
		{map[string]string{"COORDINATION_PLAN_TEMPLATES": "a=x:fast"}, `unknown flag "fast"`},
		{map[string]string{"COORDINATION_PLAN_TEMPLATES": "a=" + strings.Repeat("s", 56)}, "at most 55 characters"},
	} {
		_, err := loadConfig(t, tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one saying %q", tc.env, err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*coordination.Config)
		want   string
	}{
		{"batch zero", func(c *coordination.Config) { c.MaxBatch = 0 }, `COORDINATION_MAX_BATCH="0": must be from 1 to 200`},
		{"batch huge", func(c *coordination.Config) { c.MaxBatch = 10_001 }, "COORDINATION_MAX_BATCH="},
		{"unknown risk", func(c *coordination.Config) { c.AutoApproveMaxRisk = "none" }, `COORDINATION_AUTO_APPROVE_MAX_RISK="none": must be one of low, medium, high, critical`},
		{"ttl zero", func(c *coordination.Config) { c.ApprovalTTLHigh = 0 }, `COORDINATION_APPROVAL_TTL_HIGH="0s": must be from 1m to 8760h`},
		{"ttl negative", func(c *coordination.Config) { c.ApprovalTTLLow = -time.Hour }, "COORDINATION_APPROVAL_TTL_LOW="},
		{"ttl past a year", func(c *coordination.Config) { c.ApprovalTTLMedium = 366 * 24 * time.Hour }, "COORDINATION_APPROVAL_TTL_MEDIUM="},
		{"ttl critical", func(c *coordination.Config) { c.ApprovalTTLCritical = time.Second }, "COORDINATION_APPROVAL_TTL_CRITICAL="},
		{"records few", func(c *coordination.Config) { c.MaxRecords = 10 }, `COORDINATION_MAX_RECORDS="10": must be from 1000 to 100000000`},
		{"retention short", func(c *coordination.Config) { c.Retention = time.Minute }, "COORDINATION_RETENTION="},
		{"sweep zero", func(c *coordination.Config) { c.SweepInterval = 0 }, "COORDINATION_SWEEP_INTERVAL="},
		{"sweep slow", func(c *coordination.Config) { c.SweepInterval = time.Hour }, "COORDINATION_SWEEP_INTERVAL="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig(t)
			tc.change(&cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}
