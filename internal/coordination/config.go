package coordination

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/config/bound"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Config sets how recommendations are coordinated. Each setting is read
// from the environment variable in its tag.
type Config struct {
	// MaxBatch is the most recommendations one coordinate request may
	// carry. Conflict detection compares every pair, so it bounds the work
	// of a request at MaxBatch^2.
	MaxBatch int `env:"COORDINATION_MAX_BATCH, default=100"`
	// AutoApproveMaxRisk is the highest risk a request with auto_approve
	// lets pass without a person.
	AutoApproveMaxRisk orchestrator.RiskLevel `env:"COORDINATION_AUTO_APPROVE_MAX_RISK, default=low"`
	// ApprovalTTL* is how long an approval of each risk waits for a
	// decision before it expires.
	ApprovalTTLLow      time.Duration `env:"COORDINATION_APPROVAL_TTL_LOW, default=168h"`
	ApprovalTTLMedium   time.Duration `env:"COORDINATION_APPROVAL_TTL_MEDIUM, default=48h"`
	ApprovalTTLHigh     time.Duration `env:"COORDINATION_APPROVAL_TTL_HIGH, default=24h"`
	ApprovalTTLCritical time.Duration `env:"COORDINATION_APPROVAL_TTL_CRITICAL, default=4h"`
	// ContradictoryActions are the pairs of actions that undo each other:
	// "a:b,c:d". Either order contradicts.
	ContradictoryActions ActionTable `env:"COORDINATION_CONTRADICTORY_ACTIONS, default=scale_up:scale_down,enable:disable,increase:decrease,start:stop,migrate_to_spot:migrate_to_on_demand"`
	// PlanTemplates are the steps of the plan of each action (see
	// ParseTemplates for the format); any other action is one step.
	PlanTemplates Templates `env:"COORDINATION_PLAN_TEMPLATES, default=migrate_to_spot=take_snapshot,migrate_workload,validate_quality;scale_down=validate_capacity,scale,validate_performance"`
	// MaxRecords bounds what the store holds: recommendations, conflicts,
	// approvals and plans together. A coordination that would pass it is
	// refused with ErrFull (503) until the sweep prunes.
	MaxRecords int `env:"COORDINATION_MAX_RECORDS, default=100000"`
	// Retention is how long a settled coordination (no approval pending,
	// every plan finished) and an audit event are kept after their last
	// change.
	Retention time.Duration `env:"COORDINATION_RETENTION, default=168h"`
	// SweepInterval is how often pending approvals past their expiry are
	// expired, and settled coordinations pruned.
	SweepInterval time.Duration `env:"COORDINATION_SWEEP_INTERVAL, default=30s"`

	// The executor. MaxRunning is how many plans one replica runs at
	// once; the rest wait, running, until one ends.
	MaxRunning int `env:"COORDINATION_MAX_RUNNING, default=16"`
	// RunLease is how long a replica holds a plan it runs without renewing
	// (every third of it): a replica that dies leaves its plans to another
	// after at most this long.
	RunLease time.Duration `env:"COORDINATION_RUN_LEASE, default=15s"`
	// StepTimeout is the timeout_seconds of each step's task: how long an
	// agent may take over one attempt.
	StepTimeout time.Duration `env:"COORDINATION_STEP_TIMEOUT, default=300s"`
	// StepMaxRetries is the max_retries of each step's task: attempts
	// after the first, on another agent when one is free, before the step
	// fails. Agents deduplicate by task_id, as for any task.
	StepMaxRetries int `env:"COORDINATION_STEP_MAX_RETRIES, default=2"`
	// AgentWait is how long a step waits for an agent of its type to be
	// registered and healthy before it fails (an agent restarting is not
	// a failed step).
	AgentWait time.Duration `env:"COORDINATION_AGENT_WAIT, default=2m"`
	// PollInterval is how often the executor looks at the task of each
	// step running, at the plans waiting for a dependency or a resource,
	// and for plans to take over.
	PollInterval time.Duration `env:"COORDINATION_POLL_INTERVAL, default=250ms"`
}

// Limits of the settings. A batch's conflicts are pairs: n recommendations
// on one shared resource are n(n-1)/2 conflicts, all built before the
// store can refuse them. Measured on the binary, one such batch peaked at
// 25 MB of RSS with 100 recommendations, 52 MB with 200, 108 MB with 500
// and 426 MB with 1,000 (4.4 s of CPU): a limit an attacker could fill
// beyond 200 would take a pod past the chart's 128 MiB memory limit. An approval waiting
// more than a year is forgotten, not pending; under a minute it expires
// before anyone can read it.
const (
	maxMaxBatch    = 200
	minApprovalTTL = time.Minute
	maxApprovalTTL = 365 * 24 * time.Hour
	// A store of fewer records than a full batch's could refuse every
	// batch; more than 10^8 is past what one process should hold.
	minMaxRecords = 1000
	maxMaxRecords = 100_000_000
	// Retention under an hour forgets what an operator just decided;
	// sweeping more often than every second is busy work, less often than
	// every 10 minutes leaves expired approvals pending too long.
	minRetention     = time.Hour
	maxRetention     = 10 * 365 * 24 * time.Hour
	minSweepInterval = time.Second
	maxSweepInterval = 10 * time.Minute
	// Each running plan is a goroutine polling its step's task; 1,000 of
	// them is 4,000 reads a second at the fastest poll.
	maxMaxRunning = 1000
	// A lease renewed every third must outlast a slow store round trip;
	// past 10 minutes a dead replica's plans stall too long.
	minRunLease = 3 * time.Second
	maxRunLease = 10 * time.Minute
	// A step's task obeys the dispatcher's own bounds.
	minStepTimeout  = time.Second
	maxStepTimeout  = 300 * time.Second
	minPollInterval = 10 * time.Millisecond
	maxPollInterval = 30 * time.Second
	maxAgentWait    = 24 * time.Hour
)

// Validate reports every setting that cannot be used, naming its variable.
func (c Config) Validate() error {
	errs := []error{
		bound.Int("COORDINATION_MAX_BATCH", int64(c.MaxBatch), 1, maxMaxBatch),
		bound.Duration("COORDINATION_APPROVAL_TTL_LOW", c.ApprovalTTLLow, minApprovalTTL, maxApprovalTTL),
		bound.Duration("COORDINATION_APPROVAL_TTL_MEDIUM", c.ApprovalTTLMedium, minApprovalTTL, maxApprovalTTL),
		bound.Duration("COORDINATION_APPROVAL_TTL_HIGH", c.ApprovalTTLHigh, minApprovalTTL, maxApprovalTTL),
		bound.Duration("COORDINATION_APPROVAL_TTL_CRITICAL", c.ApprovalTTLCritical, minApprovalTTL, maxApprovalTTL),
		bound.Int("COORDINATION_MAX_RECORDS", int64(c.MaxRecords), minMaxRecords, maxMaxRecords),
		bound.Duration("COORDINATION_RETENTION", c.Retention, minRetention, maxRetention),
		bound.Duration("COORDINATION_SWEEP_INTERVAL", c.SweepInterval, minSweepInterval, maxSweepInterval),
		bound.Int("COORDINATION_MAX_RUNNING", int64(c.MaxRunning), 1, maxMaxRunning),
		bound.Duration("COORDINATION_RUN_LEASE", c.RunLease, minRunLease, maxRunLease),
		bound.Duration("COORDINATION_STEP_TIMEOUT", c.StepTimeout, minStepTimeout, maxStepTimeout),
		bound.Int("COORDINATION_STEP_MAX_RETRIES", int64(c.StepMaxRetries), 0, 10),
		bound.Duration("COORDINATION_AGENT_WAIT", c.AgentWait, 0, maxAgentWait),
		bound.Duration("COORDINATION_POLL_INTERVAL", c.PollInterval, minPollInterval, maxPollInterval),
	}
	if c.StepTimeout%time.Second != 0 {
		errs = append(errs, fmt.Errorf("COORDINATION_STEP_TIMEOUT=%s: must be whole seconds (it is a task's timeout_seconds)", c.StepTimeout))
	}
	if c.AutoApproveMaxRisk.Rank() < 0 {
		errs = append(errs, fmt.Errorf("COORDINATION_AUTO_APPROVE_MAX_RISK=%q: must be one of %s", c.AutoApproveMaxRisk, riskNames()))
	}
	return errors.Join(errs...)
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddInt("max_batch", c.MaxBatch)
	enc.AddString("auto_approve_max_risk", string(c.AutoApproveMaxRisk))
	enc.AddDuration("approval_ttl_low", c.ApprovalTTLLow)
	enc.AddDuration("approval_ttl_medium", c.ApprovalTTLMedium)
	enc.AddDuration("approval_ttl_high", c.ApprovalTTLHigh)
	enc.AddDuration("approval_ttl_critical", c.ApprovalTTLCritical)
	enc.AddString("contradictory_actions", c.ContradictoryActions.String())
	enc.AddString("plan_templates", c.PlanTemplates.String())
	enc.AddInt("max_records", c.MaxRecords)
	enc.AddDuration("retention", c.Retention)
	enc.AddDuration("sweep_interval", c.SweepInterval)
	enc.AddInt("max_running", c.MaxRunning)
	enc.AddDuration("run_lease", c.RunLease)
	enc.AddDuration("step_timeout", c.StepTimeout)
	enc.AddInt("step_max_retries", c.StepMaxRetries)
	enc.AddDuration("agent_wait", c.AgentWait)
	enc.AddDuration("poll_interval", c.PollInterval)
	return nil
}

func riskNames() string {
	names := make([]string, len(orchestrator.RiskLevels))
	for i, r := range orchestrator.RiskLevels {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

// ApprovalTTL is how long an approval of risk r waits; an unknown risk
// gets the critical (shortest by default) one.
func (c Config) ApprovalTTL(r orchestrator.RiskLevel) time.Duration {
	switch r {
	case orchestrator.RiskLow:
		return c.ApprovalTTLLow
	case orchestrator.RiskMedium:
		return c.ApprovalTTLMedium
	case orchestrator.RiskHigh:
		return c.ApprovalTTLHigh
	}
	return c.ApprovalTTLCritical
}

// ActionTable holds the pairs of contradictory actions, both ways round:
// table[a] holds b when a and b contradict.
type ActionTable map[string]map[string]bool

// Contradict reports whether actions a and b undo each other.
func (t ActionTable) Contradict(a, b string) bool { return t[a][b] }

// ParseActionTable reads "a:b,c:d": comma-separated pairs of actions
// that contradict each other, in either order. Spaces around names are
// ignored; an empty string is an empty table.
func ParseActionTable(s string) (ActionTable, error) {
	t := ActionTable{}
	if strings.TrimSpace(s) == "" {
		return t, nil
	}
	for pair := range strings.SplitSeq(s, ",") {
		a, b, ok := strings.Cut(pair, ":")
		a, b = strings.TrimSpace(a), strings.TrimSpace(b)
		switch {
		case !ok || a == "" || b == "" || strings.Contains(b, ":"):
			return nil, fmt.Errorf("%q: want action:action", strings.TrimSpace(pair))
		case a == b:
			return nil, fmt.Errorf("%q: an action cannot contradict itself", strings.TrimSpace(pair))
		}
		for _, x := range []string{a, b} {
			if err := registry.ValidTaskType(x); err != nil {
				return nil, fmt.Errorf("%q: %w", strings.TrimSpace(pair), err)
			}
		}
		add := func(x, y string) {
			if t[x] == nil {
				t[x] = map[string]bool{}
			}
			t[x][y] = true
		}
		add(a, b)
		add(b, a)
	}
	return t, nil
}

// String writes t back in the format ParseActionTable reads, each pair
// once (the first of its actions in sort order on the left), sorted.
func (t ActionTable) String() string {
	var pairs []string
	for a, others := range t {
		for b := range others {
			if a < b {
				pairs = append(pairs, a+":"+b)
			}
		}
	}
	slices.Sort(pairs)
	return strings.Join(pairs, ",")
}

// EnvDecode reads COORDINATION_CONTRADICTORY_ACTIONS.
func (t *ActionTable) EnvDecode(s string) error {
	parsed, err := ParseActionTable(s)
	if err != nil {
		return fmt.Errorf("COORDINATION_CONTRADICTORY_ACTIONS: %w", err)
	}
	*t = parsed
	return nil
}

// StepTemplate is one step of a plan template.
type StepTemplate struct {
	Action     string
	Critical   bool
	Reversible bool
}

// Templates maps an action to the steps of its plan.
type Templates map[string][]StepTemplate

// maxStepAction bounds a step's action so that rollback_<action> is still
// a valid task type (registry's 64 characters).
const maxStepAction = 64 - len(rollbackPrefix)

// ParseTemplates reads plan templates: "action=step,step;action=step".
// Templates are separated by semicolons; a template is an action, "=",
// and its steps in order, separated by commas. A step is its action,
// optionally followed by ":" and flags joined by "+": critical, optional
// (not critical), reversible, irreversible. Without flags a step takes
// the defaults of DefaultStep: validate_* steps are critical and
// irreversible (a failed check means the change is bad; there is nothing
// to undo), every other step critical and reversible. For example
// "scale_down=validate_capacity,scale,notify:optional+irreversible".
func ParseTemplates(s string) (Templates, error) {
	t := Templates{}
	if strings.TrimSpace(s) == "" {
		return t, nil
	}
	for tmpl := range strings.SplitSeq(s, ";") {
		tmpl = strings.TrimSpace(tmpl)
		action, steps, ok := strings.Cut(tmpl, "=")
		action = strings.TrimSpace(action)
		if !ok || action == "" || strings.TrimSpace(steps) == "" {
			return nil, fmt.Errorf("%q: want action=step[,step]", tmpl)
		}
		if err := registry.ValidTaskType(action); err != nil {
			return nil, fmt.Errorf("%q: action %w", tmpl, err)
		}
		if _, dup := t[action]; dup {
			return nil, fmt.Errorf("%q: a second template for %s", tmpl, action)
		}
		for step := range strings.SplitSeq(steps, ",") {
			st, err := parseStep(strings.TrimSpace(step))
			if err != nil {
				return nil, fmt.Errorf("%q: %w", tmpl, err)
			}
			t[action] = append(t[action], st)
		}
	}
	return t, nil
}

func parseStep(s string) (StepTemplate, error) {
	name, flags, hasFlags := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if err := registry.ValidTaskType(name); err != nil {
		return StepTemplate{}, fmt.Errorf("step %w", err)
	}
	if len(name) > maxStepAction {
		return StepTemplate{}, fmt.Errorf("step %q: at most %d characters, so that %s%s is a task type", name, maxStepAction, rollbackPrefix, name)
	}
	st := DefaultStep(name)
	if !hasFlags {
		return st, nil
	}
	for flag := range strings.SplitSeq(flags, "+") {
		switch strings.TrimSpace(flag) {
		case "critical":
			st.Critical = true
		case "optional":
			st.Critical = false
		case "reversible":
			st.Reversible = true
		case "irreversible":
			st.Reversible = false
		default:
			return StepTemplate{}, fmt.Errorf("step %s: unknown flag %q (want critical, optional, reversible or irreversible)", name, strings.TrimSpace(flag))
		}
	}
	return st, nil
}

// DefaultStep is the step of action without flags: critical, and
// reversible unless it is a validate_* check.
func DefaultStep(action string) StepTemplate {
	return StepTemplate{Action: action, Critical: true, Reversible: !strings.HasPrefix(action, "validate_")}
}

// String writes t back in the format ParseTemplates reads, actions sorted.
func (t Templates) String() string {
	var b strings.Builder
	for i, action := range slices.Sorted(maps.Keys(t)) {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(action + "=")
		for j, st := range t[action] {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(st.Action)
			if st != DefaultStep(st.Action) {
				crit, rev := "optional", "irreversible"
				if st.Critical {
					crit = "critical"
				}
				if st.Reversible {
					rev = "reversible"
				}
				b.WriteString(":" + crit + "+" + rev)
			}
		}
	}
	return b.String()
}

// EnvDecode reads COORDINATION_PLAN_TEMPLATES.
func (t *Templates) EnvDecode(s string) error {
	parsed, err := ParseTemplates(s)
	if err != nil {
		return fmt.Errorf("COORDINATION_PLAN_TEMPLATES: %w", err)
	}
	*t = parsed
	return nil
}
