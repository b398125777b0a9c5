package main

import (
	"strings"
	"testing"
	"time"
)

// PostgreSQL's backends and autovacuum workers come and go during a run:
// a process's time must count once, whether it lived through the run,
// was born during it or exited during it.
func TestCPUSnapshotSince(t *testing.T) {
	before := cpuSnapshot{live: map[int]time.Duration{1: 100, 2: 50, 3: 70}, reaped: 1000}
	// 1 ran 20 more; 2 exited after 10 more (reaped grows by its whole 60);
	// 3 did nothing; 4 was born and ran 5.
	after := cpuSnapshot{live: map[int]time.Duration{1: 120, 3: 70, 4: 5}, reaped: 1060}
	if got, want := after.since(before), time.Duration(20+10+5); got != want {
		t.Errorf("since = %v, want %v", got, want)
	}
}

func TestAddOutcomes(t *testing.T) {
	metrics := `# HELP orchestrator_tasks_total Tasks finished.
# TYPE orchestrator_tasks_total counter
orchestrator_tasks_total{agent_type="cost",outcome="completed",task_type="analyze"} 1234
orchestrator_tasks_total{agent_type="cost",outcome="failed",task_type="analyze"} 2
orchestrator_tasks_total{agent_type="resource",outcome="completed",task_type="scale"} 6
orchestrator_tasks_totally_different 99
orchestrator_tasks_submitted_total{agent_type="cost"} 1242
`
	sums := map[string]float64{"completed": 10}
	if err := addOutcomes(strings.NewReader(metrics), sums); err != nil {
		t.Fatal(err)
	}
	if sums["completed"] != 1250 || sums["failed"] != 2 || len(sums) != 2 {
		t.Errorf("sums = %v, want completed 1250 (10 + 1234 + 6), failed 2", sums)
	}
	if err := addOutcomes(strings.NewReader(`orchestrator_tasks_total{outcome="completed"} many`), sums); err == nil {
		t.Error("a value that is not a number: no error")
	}
}
