// Package health answers the /live, /ready and /health endpoints on top of
// github.com/heptiolabs/healthcheck, and holds the drain switch.
//
// The three endpoints mean different things to Kubernetes:
//
//   - /live says the process can serve. It never depends on anything outside
//     the process: a dependency outage must not make the kubelet restart us.
//   - /ready says the service should get traffic: it has started, it is not
//     draining, and every readiness dependency answered its last check.
//   - /health is the summary for people and dashboards.
//
// Dependency checks do I/O, so they run in the background on a fixed
// interval with a timeout, and the probes read the cached outcome: a probe
// never waits on I/O.
package health

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heptiolabs/healthcheck"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/config/bound"
)

// Config sets how often dependency checks run and how long each may take.
type Config struct {
	// CheckInterval is the time between two runs of a dependency check.
	CheckInterval time.Duration `env:"HEALTH_CHECK_INTERVAL, default=10s"`
	// CheckTimeout bounds one run of a dependency check.
	CheckTimeout time.Duration `env:"HEALTH_CHECK_TIMEOUT, default=2s"`
}

// Limits of the durations. The interval drives a ticker, so it must be
// positive, and under 100ms a dependency is hammered rather than checked;
// a timeout under 10ms fails any check that does I/O. An hour between
// checks would leave /ready stale for that long.
const (
	minCheckInterval = 100 * time.Millisecond
	maxCheckInterval = time.Hour
	minCheckTimeout  = 10 * time.Millisecond
)

// Validate reports the first setting that cannot be used, naming its variable.
func (c Config) Validate() error {
	if err := bound.Duration("HEALTH_CHECK_INTERVAL", c.CheckInterval, minCheckInterval, maxCheckInterval); err != nil {
		return err
	}
	if c.CheckTimeout < minCheckTimeout || c.CheckTimeout > c.CheckInterval {
		return fmt.Errorf("HEALTH_CHECK_TIMEOUT=%q: must be from %s to HEALTH_CHECK_INTERVAL (%s)",
			c.CheckTimeout, bound.Short(minCheckTimeout), c.CheckInterval)
	}
	return nil
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddDuration("check_interval", c.CheckInterval)
	enc.AddDuration("check_timeout", c.CheckTimeout)
	return nil
}

// Kind says which probe a check belongs to.
type Kind string

// The kinds of check. Every liveness check is also a readiness check.
const (
	Liveness  Kind = "liveness"
	Readiness Kind = "readiness"
)

// Names of the built-in checks.
const (
	CheckPing     = "ping"
	CheckStarted  = "started"
	CheckDraining = "draining"
)

// Errors the built-in checks report.
var (
	ErrNotStarted = errors.New("not started")
	ErrDraining   = errors.New("draining: shutting down")
	// ErrCheckTimeout is reported by a dependency check that overran
	// HEALTH_CHECK_TIMEOUT.
	ErrCheckTimeout = errors.New("check timed out")
)

// Health owns the checks, the started and draining switches, and the
// handlers that report them. Create it with New, register dependencies, then
// call Run.
type Health struct {
	cfg       Config
	log       *zap.Logger
	lib       healthcheck.Handler
	version   string
	startedAt time.Time
	now       func() time.Time

	mu      sync.Mutex // serialises registration and Run
	running bool
	// checks is copied on write, so probes read it without locking.
	checks atomic.Pointer[[]*check]

	started  atomic.Bool
	draining atomic.Bool
}

// check is one named check. Dependency checks carry their cached outcome.
type check struct {
	name string
	kind Kind
	fn   healthcheck.Check
	dep  *dependency
}

// outcome is the result of one run of a dependency check.
type outcome struct {
	err  error
	at   time.Time
	took time.Duration
}

// dependency is a check that does I/O; it runs in the background.
type dependency struct {
	probe func(context.Context) error
	// every is the time between two runs; zero means HEALTH_CHECK_INTERVAL.
	every time.Duration
	last  atomic.Pointer[outcome]
}

func (d *dependency) cached() error {
	o := d.last.Load()
	if o == nil {
		return healthcheck.ErrNoData
	}
	return o.err
}

// Options are what Health needs from its owner.
type Options struct {
	Config  Config
	Logger  *zap.Logger
	Version string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// New returns a Health with the built-in checks: ping (liveness), started and
// draining (readiness).
func New(opts Options) *Health {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	h := &Health{
		cfg:       opts.Config,
		log:       log,
		lib:       healthcheck.NewHandler(),
		version:   opts.Version,
		startedAt: now(),
		now:       now,
	}
	h.add(&check{name: CheckPing, kind: Liveness, fn: func() error { return nil }})
	h.add(&check{name: CheckStarted, kind: Readiness, fn: func() error {
		if !h.started.Load() {
			return ErrNotStarted
		}
		return nil
	}})
	h.add(&check{name: CheckDraining, kind: Readiness, fn: func() error {
		if h.draining.Load() {
			return ErrDraining
		}
		return nil
	}})
	return h
}

// AddReadinessCheck registers a readiness check that reads memory only: it
// runs on every probe, so it must never do I/O (use AddReadinessDependency
// for that). It panics when called after Run or with a name already taken.
func (h *Health) AddReadinessCheck(name string, fn healthcheck.Check) {
	h.add(&check{name: name, kind: Readiness, fn: fn})
}

// AddReadinessDependency registers a dependency the service cannot serve
// without. probe runs in the background every HEALTH_CHECK_INTERVAL with a
// HEALTH_CHECK_TIMEOUT deadline; until its first run ends, /ready fails.
// It panics when called after Run or with a name already taken, both
// programming errors.
func (h *Health) AddReadinessDependency(name string, probe func(context.Context) error) {
	h.AddReadinessDependencyEvery(name, 0, probe)
}

// AddReadinessDependencyEvery is AddReadinessDependency for a dependency
// checked more often than HEALTH_CHECK_INTERVAL: every interval, or
// HEALTH_CHECK_INTERVAL when that is shorter (or interval is zero). A
// probe that forgives a few failures (a grace) needs several runs to end
// it soon after the dependency went away.
func (h *Health) AddReadinessDependencyEvery(name string, interval time.Duration, probe func(context.Context) error) {
	d := &dependency{probe: probe, every: interval}
	h.add(&check{name: name, kind: Readiness, fn: d.cached, dep: d})
}

// Freeze ends the registration of checks: a check added from now on
// panics. Run freezes the checks itself; a caller that starts Run in a
// goroutine freezes them first, so that a check added too late fails every
// time rather than only when the goroutine happened to start first.
func (h *Health) Freeze() {
	h.mu.Lock()
	h.running = true
	h.mu.Unlock()
}

func (h *Health) add(c *check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running {
		panic("health: check " + c.name + " added after Run")
	}
	checks := h.list()
	for _, have := range checks {
		if have.name == c.name {
			panic("health: check " + c.name + " registered twice")
		}
	}
	checks = append(slices.Clip(checks), c)
	h.checks.Store(&checks)
	if c.kind == Liveness {
		h.lib.AddLivenessCheck(c.name, c.fn)
	} else {
		h.lib.AddReadinessCheck(c.name, c.fn)
	}
}

// Run runs the dependency checks until ctx ends, then waits for them to stop.
func (h *Health) Run(ctx context.Context) {
	h.Freeze()

	var wg sync.WaitGroup
	for _, c := range h.list() {
		if c.dep == nil {
			continue
		}
		wg.Go(func() { h.loop(ctx, c) })
	}
	wg.Wait()
}

// loop runs one dependency check now and then every interval.
func (h *Health) loop(ctx context.Context, c *check) {
	interval := h.cfg.CheckInterval
	if c.dep.every > 0 && c.dep.every < interval {
		interval = c.dep.every
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		h.runOnce(ctx, c)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// runOnce runs a dependency check with the configured timeout. A check that
// ignores its context counts as failed at the deadline, and the loop still
// waits for it to return, so runs of one check never overlap.
func (h *Health) runOnce(parent context.Context, c *check) {
	ctx, cancel := context.WithTimeout(parent, h.cfg.CheckTimeout)
	defer cancel()
	start := h.now()
	done := make(chan error, 1)
	go func() { done <- c.dep.probe(ctx) }()

	var err error
	timedOut := false
	select {
	case err = <-done:
	case <-ctx.Done():
		timedOut = true
		defer func() {
			late := <-done
			h.log.Debug("dependency check returned after its deadline", zap.String("check", c.name), zap.Error(late))
		}()
	}
	if parent.Err() != nil {
		return // shutting down: keep the last real outcome
	}
	if timedOut || errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w after %s", ErrCheckTimeout, h.cfg.CheckTimeout)
	}
	prev := c.dep.last.Swap(&outcome{err: err, at: start, took: h.now().Sub(start)})
	h.logTransition(c.name, prev, err)
}

func (h *Health) logTransition(name string, prev *outcome, err error) {
	wasOK := prev != nil && prev.err == nil
	switch {
	case err != nil && (prev == nil || wasOK):
		h.log.Warn("readiness dependency failing", zap.String("check", name), zap.Error(err))
	case err == nil && !wasOK:
		h.log.Info("readiness dependency ok", zap.String("check", name))
	}
}

// MarkStarted is called once the server accepts connections.
func (h *Health) MarkStarted() { h.started.Store(true) }

// StartDraining makes /ready fail from now on; /live is unaffected.
func (h *Health) StartDraining() { h.draining.Store(true) }

// Draining reports whether StartDraining has been called.
func (h *Health) Draining() bool { return h.draining.Load() }

// list returns the registered checks in registration order.
func (h *Health) list() []*check {
	if p := h.checks.Load(); p != nil {
		return *p
	}
	return nil
}

// passes reports whether every check of the probe passes. It is the hot
// path of /live and /ready: it reads memory only and allocates nothing.
func (h *Health) passes(kind Kind) bool {
	for _, c := range h.list() {
		if kind == Liveness && c.kind != Liveness {
			continue
		}
		if c.fn() != nil {
			return false
		}
	}
	return true
}

// result is the state of one check at one moment.
type result struct {
	check *check
	err   error
	at    time.Time
	took  time.Duration
}

// evaluate runs the checks of the probe (liveness checks only, or all of
// them for readiness) in registration order. Every check reads memory only.
func (h *Health) evaluate(kind Kind) []result {
	checks := h.list()
	now := h.now()
	out := make([]result, 0, len(checks))
	for _, c := range checks {
		if kind == Liveness && c.kind != Liveness {
			continue
		}
		r := result{check: c, err: c.fn(), at: now}
		if c.dep != nil {
			if o := c.dep.last.Load(); o != nil {
				r.at, r.took = o.at, o.took
			} else {
				r.at = time.Time{}
			}
		}
		out = append(out, r)
	}
	return out
}

func allOK(rs []result) bool {
	for _, r := range rs {
		if r.err != nil {
			return false
		}
	}
	return true
}
