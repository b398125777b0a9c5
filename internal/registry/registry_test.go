package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sethvargo/go-envconfig"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/registry/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// defaultConfig is the Config the environment gives when nothing is set.
func defaultConfig(t *testing.T) registry.Config {
	t.Helper()
	var cfg registry.Config
	if err := envconfig.ProcessWith(context.Background(), &envconfig.Config{
		Target:   &cfg,
		Lookuper: envconfig.MapLookuper(nil),
	}); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestDefaultConfig(t *testing.T) {
	cfg := defaultConfig(t)
	if cfg.HeartbeatInterval != 30*time.Second || cfg.MissedHeartbeats != 3 || cfg.EvictAfter != 24*time.Hour {
		t.Errorf("defaults = %v x %d, evict after %v; want 30s x 3, 24h", cfg.HeartbeatInterval, cfg.MissedHeartbeats, cfg.EvictAfter)
	}
	want := "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
	if got := strings.Join(cfg.AllowedNetworks, ","); got != want {
		t.Errorf("default AGENT_ALLOWED_NETWORKS = %s, want %s", got, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("default config invalid: %v", err)
	}
}

// clock is a fake time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// resolver is a fake DNS: names map to addresses; unknown names fail.
type resolver map[string][]netip.Addr

func (r resolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("test resolver: lookup without a deadline")
	}
	addrs, ok := r[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// host253 is a DNS name of the longest length allowed.
var host253 = strings.Repeat("a", 63) + "." + strings.Repeat("a", 63) + "." + strings.Repeat("a", 63) + "." + strings.Repeat("b", 61)

var testResolver = resolver{
	host253:            addrs("10.9.9.9"),
	"agent.local":      addrs("10.0.0.5"),
	"inside.test":      addrs("10.1.2.3", "fd00::5"),
	"outside.test":     addrs("8.8.8.8"),
	"mixed.test":       addrs("10.0.0.1", "8.8.8.8"),
	"metadata.test":    addrs("::ffff:169.254.169.254"),
	"mapped-ok.test":   addrs("::ffff:192.168.1.10"),
	"empty.test":       {},
	"unspecified.test": addrs("0.0.0.0"),
}

// env is a Registry on a memory store with a fake clock, captured logs and
// its own metrics registry.
type env struct {
	reg     *registry.Registry
	store   *registry.MemoryStore
	clock   *clock
	logs    *observer.ObservedLogs
	metrics *prometheus.Registry
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func newEnv(t *testing.T, cfg registry.Config) *env {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	e := &env{
		store:   registry.NewMemoryStore(),
		clock:   &clock{now: t0},
		logs:    logs,
		metrics: prometheus.NewRegistry(),
	}
	n := 0
	var mu sync.Mutex
	r, err := registry.New(registry.Options{
		Config:  cfg,
		Store:   e.store,
		Logger:  zap.New(core),
		Metrics: e.metrics,
		Now:     e.clock.Now,
		NewID: func() string {
			mu.Lock()
			defer mu.Unlock()
			n++
			return fmt.Sprintf("agent-%d", n)
		},
		Resolver: testResolver,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.reg = r
	return e
}

func validRegistration() registry.Registration {
	return registry.Registration{
		Name:         "cost-agent-1",
		Type:         "cost",
		Host:         "10.0.0.5",
		Port:         8001,
		Capabilities: []string{"analyze_costs"},
		Version:      "1.0.0",
		Metadata:     json.RawMessage(`{"region":"eu"}`),
	}
}

func (e *env) register(t *testing.T, reg registry.Registration) registry.Agent {
	t.Helper()
	a, _, err := e.reg.Register(context.Background(), reg)
	if err != nil {
		t.Fatalf("Register(%s): %v", reg.Name, err)
	}
	return a
}

func TestRegistrationValidation(t *testing.T) {
	cfg := defaultConfig(t)
	host254 := host253 + "c"
	many := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("cap-%d", i)
		}
		return out
	}
	tests := []struct {
		name   string
		change func(*registry.Registration)
		field  string // "" when valid
		msg    string // part of the message
	}{
		{"valid", func(*registry.Registration) {}, "", ""},
		{"name missing", func(r *registry.Registration) { r.Name = "" }, "name", "is required"},
		{"name blank", func(r *registry.Registration) { r.Name = "  \t " }, "name", "is required"},
		{"name 128", func(r *registry.Registration) { r.Name = strings.Repeat("n", 128) }, "", ""},
		{"name 129", func(r *registry.Registration) { r.Name = strings.Repeat("n", 129) }, "name", "at most 128"},
		{"name control", func(r *registry.Registration) { r.Name = "a\nb" }, "name", "printable"},
		{"name DEL", func(r *registry.Registration) { r.Name = "a\x7fb" }, "name", "printable"},
		{"name unicode", func(r *registry.Registration) { r.Name = "agent-é" }, "", ""},
		{"type missing", func(r *registry.Registration) { r.Type = "" }, "type", "is required"},
		{"type wrong", func(r *registry.Registration) { r.Type = "billing" }, "type", "cost, performance, resource or application"},
		{"type wrong case", func(r *registry.Registration) { r.Type = "Cost" }, "type", `"Cost" is not an agent type`},
		{"type performance", func(r *registry.Registration) { r.Type = "performance" }, "", ""},
		{"type resource", func(r *registry.Registration) { r.Type = "resource" }, "", ""},
		{"type application", func(r *registry.Registration) { r.Type = "application" }, "", ""},
		{"type unreachable is a status", func(r *registry.Registration) { r.Type = "unreachable" }, "type", "not an agent type"},
		{"host missing", func(r *registry.Registration) { r.Host = "" }, "host", "is required"},
		{"host blank", func(r *registry.Registration) { r.Host = "  " }, "host", "is required"},
		{"host URL", func(r *registry.Registration) { r.Host = "http://10.0.0.5" }, "host", "IP address or a DNS name"},
		{"host with port", func(r *registry.Registration) { r.Host = "10.0.0.5:8001" }, "host", "IP address or a DNS name"},
		{"host with user", func(r *registry.Registration) { r.Host = "u@10.0.0.5" }, "host", "IP address or a DNS name"},
		{"host with path", func(r *registry.Registration) { r.Host = "agent.local/x" }, "host", "IP address or a DNS name"},
		{"host bracketed IPv6", func(r *registry.Registration) { r.Host = "[::1]" }, "host", "IP address or a DNS name"},
		{"host IPv6 zone", func(r *registry.Registration) { r.Host = "fe80::1%eth0" }, "host", "IP address or a DNS name"},
		{"host leading hyphen", func(r *registry.Registration) { r.Host = "-agent.local" }, "host", "DNS name"},
		{"host label 64", func(r *registry.Registration) { r.Host = strings.Repeat("a", 64) + ".local" }, "host", "DNS name"},
		{"host 253", func(r *registry.Registration) { r.Host = host253 }, "", ""},
		{"host 254", func(r *registry.Registration) { r.Host = host254 }, "host", "DNS name"},
		{"host name", func(r *registry.Registration) { r.Host = "agent.local" }, "", ""},
		{"host fully qualified", func(r *registry.Registration) { r.Host = "agent.local." }, "", ""},
		{"host 253 fully qualified", func(r *registry.Registration) { r.Host = host253 + "." }, "", ""},
		{"host two trailing dots", func(r *registry.Registration) { r.Host = "agent.local.." }, "host", "DNS name"},
		{"host only a dot", func(r *registry.Registration) { r.Host = "." }, "host", "is required"},
		{"host empty label", func(r *registry.Registration) { r.Host = "agent..local" }, "host", "DNS name"},
		{"host IPv6", func(r *registry.Registration) { r.Host = "::1" }, "", ""},
		{"host does not resolve", func(r *registry.Registration) { r.Host = "nowhere.local" }, "host", "does not resolve"},
		{"port missing", func(r *registry.Registration) { r.Port = 0 }, "port", "must be an integer from 1 to 65535"},
		{"port negative", func(r *registry.Registration) { r.Port = -1 }, "port", "must be an integer from 1 to 65535"},
		{"port 1", func(r *registry.Registration) { r.Port = 1 }, "", ""},
		{"port 65535", func(r *registry.Registration) { r.Port = 65535 }, "", ""},
		{"port 65536", func(r *registry.Registration) { r.Port = 65536 }, "port", "must be an integer from 1 to 65535"},
		{"capabilities none", func(r *registry.Registration) { r.Capabilities = nil }, "", ""},
		{"capabilities 64", func(r *registry.Registration) { r.Capabilities = many(64) }, "", ""},
		{"capabilities 65", func(r *registry.Registration) { r.Capabilities = many(65) }, "capabilities", "at most 64"},
		{"capability empty", func(r *registry.Registration) { r.Capabilities = []string{"ok", ""} }, "capabilities[1]", "must not be empty"},
		{"capability space", func(r *registry.Registration) { r.Capabilities = []string{"bad cap"} }, "capabilities[0]", "letters, digits"},
		{"capability leading underscore", func(r *registry.Registration) { r.Capabilities = []string{"_x"} }, "capabilities[0]", "starting with a letter or digit"},
		{"capability 64 chars", func(r *registry.Registration) { r.Capabilities = []string{strings.Repeat("c", 64)} }, "", ""},
		{"capability 65 chars", func(r *registry.Registration) { r.Capabilities = []string{strings.Repeat("c", 65)} }, "capabilities[0]", "at most 64"},
		{"capability punctuation", func(r *registry.Registration) { r.Capabilities = []string{"a.b:c/d-e_f9"} }, "", ""},
		{"version 64", func(r *registry.Registration) { r.Version = strings.Repeat("v", 64) }, "", ""},
		{"version 65", func(r *registry.Registration) { r.Version = strings.Repeat("v", 65) }, "version", "at most 64"},
		{"version control", func(r *registry.Registration) { r.Version = "1.0\x00" }, "version", "printable"},
		{"version empty", func(r *registry.Registration) { r.Version = "" }, "", ""},
		{"metadata nil", func(r *registry.Registration) { r.Metadata = nil }, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, cfg)
			reg := validRegistration()
			tc.change(&reg)
			a, created, err := e.reg.Register(context.Background(), reg)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Register: %v, want success", err)
				}
				if !created || a.ID == "" || a.Status != registry.StatusHealthy || !a.RegisteredAt.Equal(t0) || !a.LastSeen.Equal(t0) {
					t.Errorf("Register = %+v created %v; want a new healthy agent registered and seen now", a, created)
				}
				return
			}
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Register error = %v (%T), want a FieldError on %s", err, err, tc.field)
			}
			if !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q, want it to start with %q and contain %q", err, tc.field+": ", tc.msg)
			}
			if agents, _ := e.reg.List(context.Background(), ""); len(agents) != 0 {
				t.Errorf("an invalid registration was stored: %+v", agents)
			}
		})
	}
}

func TestRegistrationNormalized(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	reg := validRegistration()
	reg.Name, reg.Host = "  cost-agent-1 ", " AGENT.Local "
	reg.Capabilities = []string{"b", "a", "b", "c", "a"}
	a := e.register(t, reg)
	if a.Name != "cost-agent-1" || a.Host != "agent.local" {
		t.Errorf("stored name %q host %q, want trimmed, host lower-cased", a.Name, a.Host)
	}
	if got := strings.Join(a.Capabilities, ","); got != "b,a,c" {
		t.Errorf("capabilities %s, want b,a,c (duplicates dropped, order kept)", got)
	}
	// The same agent, spelled differently, is the same agent: a fully
	// qualified name's trailing dot is dropped (and the fake resolver
	// knows only the name without it).
	for _, host := range []string{"agent.local", "agent.local.", " Agent.Local. "} {
		reg.Name, reg.Host = "cost-agent-1", host
		again, created, err := e.reg.Register(context.Background(), reg)
		if err != nil || created || again.ID != a.ID || again.Host != "agent.local" {
			t.Errorf("re-register as %q = %s host %q created %v, %v; want %s at agent.local, not created", host, again.ID, again.Host, created, err, a.ID)
		}
	}
}

func TestParseReportedStatus(t *testing.T) {
	for in, want := range map[string]registry.Status{
		"":          registry.StatusHealthy,
		"healthy":   registry.StatusHealthy,
		"degraded":  registry.StatusDegraded,
		"unhealthy": registry.StatusUnhealthy,
	} {
		if got, err := registry.ParseReportedStatus(in); err != nil || got != want {
			t.Errorf("ParseReportedStatus(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"unreachable", "Healthy", "HEALTHY", " healthy", "ok", "up", "null"} {
		got, err := registry.ParseReportedStatus(in)
		if err == nil {
			t.Errorf("ParseReportedStatus(%q) = %q, want an error", in, got)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", in)) || !strings.Contains(err.Error(), "healthy, degraded or unhealthy") {
			t.Errorf("ParseReportedStatus(%q) error %q, want the value and the valid ones", in, err)
		}
	}
}

// TestReportedStatuses: the statuses heartbeats may carry, which the
// heartbeat counter pre-creates, are named, not a prefix of Statuses.
func TestReportedStatuses(t *testing.T) {
	want := []registry.Status{registry.StatusHealthy, registry.StatusDegraded, registry.StatusUnhealthy}
	if !slices.Equal(registry.ReportedStatuses, want) {
		t.Errorf("ReportedStatuses = %v, want %v", registry.ReportedStatuses, want)
	}
	for _, st := range registry.Statuses {
		_, err := registry.ParseReportedStatus(string(st))
		if reported := slices.Contains(registry.ReportedStatuses, st); reported != (err == nil) {
			t.Errorf("ParseReportedStatus(%s) = %v, but listed in ReportedStatuses: %v", st, err, reported)
		}
	}
}

func TestParseType(t *testing.T) {
	for _, typ := range registry.Types {
		if got, err := registry.ParseType(string(typ)); err != nil || got != typ {
			t.Errorf("ParseType(%s) = %s, %v", typ, got, err)
		}
	}
	if _, err := registry.ParseType("COST"); err == nil {
		t.Error("ParseType(COST) succeeded")
	}
}

func TestHeartbeatBadStatus(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	a := e.register(t, validRegistration())
	_, err := e.reg.Heartbeat(context.Background(), registry.Actor{}, a.ID, "unreachable", nil)
	var fe *registry.FieldError
	if !errors.As(err, &fe) || fe.Field != "status" || !strings.HasPrefix(err.Error(), "status: ") {
		t.Fatalf("Heartbeat(unreachable) = %v, want a FieldError on status", err)
	}
	got, _ := e.reg.Get(context.Background(), a.ID)
	if got.Status != registry.StatusHealthy {
		t.Errorf("status after a refused heartbeat = %s", got.Status)
	}
	if _, err := e.reg.Heartbeat(context.Background(), registry.Actor{}, "nope", "", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Heartbeat(unknown) = %v, want ErrNotFound", err)
	}
}

func TestHeartbeatMetadataOverlay(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	a := e.register(t, validRegistration())
	got, err := e.reg.Heartbeat(context.Background(), registry.Actor{}, a.ID, "", json.RawMessage(`{"load": 0.5, "region": "us"}`))
	if err != nil {
		t.Fatal(err)
	}
	all, err := got.AllMetadata()
	if err != nil {
		t.Fatal(err)
	}
	if string(all) != `{"load":0.5,"region":"us"}` || string(got.Metadata) != `{"region":"eu"}` {
		t.Errorf("AllMetadata = %s, registration metadata %s; want the heartbeat's overlaid, the registration's kept", all, got.Metadata)
	}
}

// routableIDs lists the cost agents Routable returns for capability.
func routableIDs(t *testing.T, r *registry.Registry, capability string) []string {
	t.Helper()
	cs, err := r.Routable(context.Background(), registry.TypeCost, capability, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func TestLiveness(t *testing.T) {
	ctx := context.Background()
	cfg := defaultConfig(t) // 30s x 3, evicted after 24h
	e := newEnv(t, cfg)
	a := e.register(t, validRegistration())

	status := func() registry.Status {
		t.Helper()
		got, err := e.reg.Get(ctx, a.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		return got.Status
	}
	listStatus := func() registry.Status {
		t.Helper()
		agents, err := e.reg.List(ctx, registry.TypeCost)
		if err != nil || len(agents) != 1 {
			t.Fatalf("List = %v, %v", agents, err)
		}
		return agents[0].Status
	}
	unreachableLogs := func() int {
		return e.logs.FilterMessage("agent unreachable: no heartbeat").FilterField(zap.String("agent_id", a.ID)).Len()
	}

	// Exactly 3 intervals of silence: still healthy.
	e.clock.Advance(90 * time.Second)
	if s := status(); s != registry.StatusHealthy {
		t.Fatalf("after 90s: %s, want healthy", s)
	}
	if got := routableIDs(t, e.reg, "analyze_costs"); len(got) != 1 {
		t.Fatalf("after 90s routable = %v, want the agent", got)
	}
	if err := e.reg.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := unreachableLogs(); n != 0 {
		t.Fatalf("swept at 90s: %d unreachable logs, want 0", n)
	}

	// One second more: unreachable, even before any sweep.
	e.clock.Advance(time.Second)
	if s := status(); s != registry.StatusUnreachable {
		t.Errorf("after 91s, before a sweep: Get = %s, want unreachable", s)
	}
	if s := listStatus(); s != registry.StatusUnreachable {
		t.Errorf("after 91s, before a sweep: List = %s, want unreachable", s)
	}
	if got := routableIDs(t, e.reg, "analyze_costs"); len(got) != 0 {
		t.Errorf("after 91s routable = %v, want none", got)
	}
	if stored, _ := e.store.Get(ctx, a.ID); stored.Status != registry.StatusHealthy {
		t.Errorf("stored status before a sweep = %s, want healthy (the sweep marks it)", stored.Status)
	}
	for range 3 {
		if err := e.reg.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := unreachableLogs(); n != 1 {
		t.Errorf("three sweeps logged unreachable %d times, want once", n)
	}
	if stored, _ := e.store.Get(ctx, a.ID); stored.Status != registry.StatusUnreachable {
		t.Errorf("stored status after a sweep = %s, want unreachable", stored.Status)
	}
	entry := e.logs.FilterMessage("agent unreachable: no heartbeat").All()[0]
	if entry.Level != zapcore.WarnLevel || entry.ContextMap()["name"] != "cost-agent-1" {
		t.Errorf("unreachable log = %v %v, want a warning naming the agent", entry.Level, entry.ContextMap())
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(agentsGauge(map[string]int{"cost/unreachable": 1})), "orchestrator_agents"); err != nil {
		t.Error(err)
	}

	// A late heartbeat revives it.
	e.clock.Advance(time.Hour)
	got, err := e.reg.Heartbeat(ctx, registry.Actor{}, a.ID, "", nil)
	if err != nil {
		t.Fatalf("late heartbeat: %v, want it accepted", err)
	}
	if got.Status != registry.StatusHealthy || status() != registry.StatusHealthy {
		t.Errorf("after a late heartbeat: %s / %s, want healthy", got.Status, status())
	}
	if ids := routableIDs(t, e.reg, "analyze_costs"); len(ids) != 1 || ids[0] != a.ID {
		t.Errorf("after a late heartbeat routable = %v, want [%s]", ids, a.ID)
	}
	changed := e.logs.FilterMessage("agent status changed").FilterField(zap.String("from", "unreachable")).FilterField(zap.String("to", "healthy"))
	if changed.Len() != 1 {
		t.Errorf("revival logged %d times, want once", changed.Len())
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(`
# HELP orchestrator_agent_heartbeats_total Agent heartbeats received, by reported status (unknown: no such agent).
# TYPE orchestrator_agent_heartbeats_total counter
orchestrator_agent_heartbeats_total{status="degraded"} 0
orchestrator_agent_heartbeats_total{status="healthy"} 1
orchestrator_agent_heartbeats_total{status="unhealthy"} 0
orchestrator_agent_heartbeats_total{status="unknown"} 0
`), "orchestrator_agent_heartbeats_total"); err != nil {
		t.Error(err)
	}

	// Silent again, up to the eviction horizon: marked, not yet evicted.
	lastSeen := e.clock.Now()
	e.clock.Advance(cfg.EvictAfter)
	if err := e.reg.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := unreachableLogs(); n != 2 {
		t.Errorf("unreachable logged %d times in all, want 2 (once per silence)", n)
	}
	if _, err := e.reg.Get(ctx, a.ID); err != nil {
		t.Fatalf("evicted at exactly AGENT_EVICT_AFTER: %v", err)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(evictions(0)), "orchestrator_agent_evictions_total"); err != nil {
		t.Error(err)
	}

	// Past it: evicted, logged, counted.
	e.clock.Advance(time.Second)
	if err := e.reg.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Get(ctx, a.ID); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get after eviction = %v, want ErrNotFound", err)
	}
	evicted := e.logs.FilterMessage("agent evicted: silent past AGENT_EVICT_AFTER").All()
	if len(evicted) != 1 || evicted[0].ContextMap()["agent_id"] != a.ID || !evicted[0].ContextMap()["last_seen"].(time.Time).Equal(lastSeen) {
		t.Errorf("eviction logs = %v, want one for %s last seen %v", evicted, a.ID, lastSeen)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(evictions(1)), "orchestrator_agent_evictions_total"); err != nil {
		t.Error(err)
	}
	if err := e.reg.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(evictions(1)), "orchestrator_agent_evictions_total"); err != nil {
		t.Errorf("a second sweep counted the eviction again: %v", err)
	}
	// Only now does a heartbeat get 404.
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, a.ID, "", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("heartbeat after eviction = %v, want ErrNotFound", err)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(agentsGauge(nil)), "orchestrator_agents"); err != nil {
		t.Error(err)
	}
}

func evictions(cost int) string {
	return fmt.Sprintf(`
# HELP orchestrator_agent_evictions_total Agents removed after staying silent past AGENT_EVICT_AFTER, by agent type.
# TYPE orchestrator_agent_evictions_total counter
orchestrator_agent_evictions_total{type="application"} 0
orchestrator_agent_evictions_total{type="cost"} %d
orchestrator_agent_evictions_total{type="performance"} 0
orchestrator_agent_evictions_total{type="resource"} 0
`, cost)
}

// agentsGauge is the exposition of orchestrator_agents with the given
// "type/status" counts and zero elsewhere.
func agentsGauge(counts map[string]int) string {
	var b strings.Builder
	b.WriteString("# HELP orchestrator_agents Registered agents, by type and status.\n# TYPE orchestrator_agents gauge\n")
	for _, typ := range []string{"application", "cost", "performance", "resource"} {
		for _, st := range []string{"degraded", "healthy", "unhealthy", "unreachable"} {
			fmt.Fprintf(&b, "orchestrator_agents{status=%q,type=%q} %d\n", st, typ, counts[typ+"/"+st])
		}
	}
	return b.String()
}

func TestRoutableOnlyHealthy(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, defaultConfig(t))
	reg := func(name string, typ string, caps ...string) registry.Agent {
		r := validRegistration()
		r.Name, r.Type, r.Capabilities = name, typ, caps
		return e.register(t, r)
	}
	healthy := reg("healthy", "cost", "x")
	degraded := reg("degraded", "cost", "x")
	unhealthy := reg("unhealthy", "cost", "x")
	reg("other-capability", "cost", "y")
	reg("other-type", "performance", "x")
	for id, st := range map[string]string{degraded.ID: "degraded", unhealthy.ID: "unhealthy", healthy.ID: "healthy"} {
		if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, id, st, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := routableIDs(t, e.reg, "x"); len(got) != 1 || got[0] != healthy.ID {
		t.Errorf("routable = %v, want only %s", got, healthy.ID)
	}
	// buf is appended to.
	buf := []registry.Candidate{{ID: "keep"}}
	out, err := e.reg.Routable(ctx, registry.TypeCost, "x", buf)
	if err != nil || len(out) != 2 || out[0].ID != "keep" || out[1].ID != healthy.ID {
		t.Errorf("Routable(buf) = %+v, %v; want keep then %s", out, err, healthy.ID)
	}
	// Degraded comes back once healthy again.
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, degraded.ID, "healthy", nil); err != nil {
		t.Fatal(err)
	}
	if got := routableIDs(t, e.reg, "x"); len(got) != 2 {
		t.Errorf("routable after recovery = %v, want 2", got)
	}
	// After unregistering, not routable and 404.
	if _, err := e.reg.Unregister(ctx, registry.Actor{}, healthy.ID); err != nil {
		t.Fatal(err)
	}
	if got := routableIDs(t, e.reg, "x"); len(got) != 1 || got[0] != degraded.ID {
		t.Errorf("routable after unregister = %v, want [%s]", got, degraded.ID)
	}
	if _, err := e.reg.Unregister(ctx, registry.Actor{}, healthy.ID); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("second Unregister = %v, want ErrNotFound", err)
	}
	if n := e.logs.FilterMessage("agent unregistered").Len(); n != 1 {
		t.Errorf("unregister logged %d times, want 1", n)
	}
}

func TestAgentsGauge(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, defaultConfig(t))
	reg := func(name, typ string) registry.Agent {
		r := validRegistration()
		r.Name, r.Type = name, typ
		return e.register(t, r)
	}
	reg("silent", "resource") // registered first, then silent
	e.clock.Advance(2 * time.Minute)
	reg("c1", "cost")
	reg("c2", "cost")
	p := reg("p1", "performance")
	u := reg("a1", "application")
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, p.ID, "degraded", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, u.ID, "unhealthy", nil); err != nil {
		t.Fatal(err)
	}
	want := agentsGauge(map[string]int{
		"cost/healthy": 2, "performance/degraded": 1, "application/unhealthy": 1, "resource/unreachable": 1,
	})
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(want), "orchestrator_agents"); err != nil {
		t.Error(err)
	}
	// Re-registering is counted as updated, not a new agent.
	reg("c1", "cost")
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(`
# HELP orchestrator_agent_registrations_total Agent registrations, by agent type and whether the agent was new or re-registered.
# TYPE orchestrator_agent_registrations_total counter
orchestrator_agent_registrations_total{result="created",type="application"} 1
orchestrator_agent_registrations_total{result="created",type="cost"} 2
orchestrator_agent_registrations_total{result="created",type="performance"} 1
orchestrator_agent_registrations_total{result="created",type="resource"} 1
orchestrator_agent_registrations_total{result="updated",type="application"} 0
orchestrator_agent_registrations_total{result="updated",type="cost"} 1
orchestrator_agent_registrations_total{result="updated",type="performance"} 0
orchestrator_agent_registrations_total{result="updated",type="resource"} 0
`), "orchestrator_agent_registrations_total"); err != nil {
		t.Error(err)
	}
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(want), "orchestrator_agents"); err != nil {
		t.Errorf("re-registering changed the gauge: %v", err)
	}
}

func TestMetricsRegisteredOnce(t *testing.T) {
	cfg := defaultConfig(t)
	reg := prometheus.NewRegistry()
	opts := registry.Options{Config: cfg, Store: registry.NewMemoryStore(), Metrics: reg}
	if _, err := registry.New(opts); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.New(opts); err == nil {
		t.Error("a second Registry on the same metrics registry succeeded")
	}
}

func TestGuardNeverAdmitsMetadataOrLinkLocal(t *testing.T) {
	nets, err := registry.ParseNetworks([]string{"0.0.0.0/0", "::/0"})
	if err != nil {
		t.Fatal(err)
	}
	g := &registry.Guard{Networks: nets}
	for _, h := range []string{"169.254.169.254", "fd00:ec2::254", "fe80::1", "0.0.0.0", "::", "224.0.0.1"} {
		if err := g.CheckHost(context.Background(), h); !errors.Is(err, registry.ErrHostNotAllowed) {
			t.Errorf("with every network allowed, CheckHost(%s) = %v, want ErrHostNotAllowed", h, err)
		}
	}
	if err := g.CheckHost(context.Background(), "203.0.113.7"); err != nil {
		t.Errorf("with every network allowed, CheckHost(203.0.113.7) = %v, want allowed", err)
	}
}

func TestGuard(t *testing.T) {
	cfg := defaultConfig(t)
	nets, err := registry.ParseNetworks(cfg.AllowedNetworks)
	if err != nil {
		t.Fatal(err)
	}
	g := &registry.Guard{Networks: nets, Resolver: testResolver}
	allowed := []string{
		"127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
		"192.168.0.1", "192.168.255.255", "::1", "fc00::1", "fd00::1", "fdff:ffff::1",
		"::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:192.168.1.1",
		"inside.test", "agent.local", "mapped-ok.test",
	}
	refused := []string{
		"8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.1", "192.169.0.1", "11.0.0.1", "100.64.0.1",
		"169.254.169.254", "169.254.0.1", "::ffff:169.254.169.254", "0.0.0.0", "::ffff:0.0.0.0", "::",
		"255.255.255.255", "224.0.0.1", "fe80::1", "2001:db8::1", "2001:4860:4860::8888", "::2", "64:ff9b::a00:1",
		"outside.test", "mixed.test", "metadata.test", "unspecified.test",
		"fd00:ec2::254", // EC2's IPv6 metadata address, inside the default fc00::/7
	}
	ctx := context.Background()
	for _, h := range allowed {
		if err := g.CheckHost(ctx, h); err != nil {
			t.Errorf("CheckHost(%s) = %v, want allowed", h, err)
		}
	}
	for _, h := range refused {
		err := g.CheckHost(ctx, h)
		if !errors.Is(err, registry.ErrHostNotAllowed) {
			t.Errorf("CheckHost(%s) = %v, want ErrHostNotAllowed", h, err)
			continue
		}
		if !strings.Contains(err.Error(), "AGENT_ALLOWED_NETWORKS") {
			t.Errorf("CheckHost(%s) error %q does not name AGENT_ALLOWED_NETWORKS", h, err)
		}
	}
	for _, h := range []string{"empty.test", "nowhere.test"} {
		err := g.CheckHost(ctx, h)
		var fe *registry.FieldError
		if !errors.As(err, &fe) || fe.Field != "host" || !strings.Contains(err.Error(), "does not resolve") {
			t.Errorf("CheckHost(%s) = %v, want a host FieldError: does not resolve", h, err)
		}
		if errors.Is(err, registry.ErrHostNotAllowed) {
			t.Errorf("CheckHost(%s) = %v: a name that does not resolve is a bad field, not a refused host", h, err)
		}
	}
	if err := g.CheckHost(ctx, "mixed.test"); err == nil || !strings.Contains(err.Error(), "8.8.8.8") {
		t.Errorf("CheckHost(mixed.test) = %v, want the refused address named", err)
	}

	// No networks: nothing is allowed.
	none := &registry.Guard{Resolver: testResolver}
	if err := none.CheckHost(ctx, "127.0.0.1"); !errors.Is(err, registry.ErrHostNotAllowed) {
		t.Errorf("guard without networks allowed 127.0.0.1: %v", err)
	}
}

func TestGuardThroughRegister(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	for _, host := range []string{"169.254.169.254", "outside.test", "mixed.test", "0.0.0.0"} {
		reg := validRegistration()
		reg.Host = host
		if _, _, err := e.reg.Register(context.Background(), reg); !errors.Is(err, registry.ErrHostNotAllowed) {
			t.Errorf("Register(host %s) = %v, want ErrHostNotAllowed", host, err)
		}
	}
	if agents, _ := e.reg.List(context.Background(), ""); len(agents) != 0 {
		t.Errorf("refused hosts were stored: %v", agents)
	}
	// The registry's guard is the one deliveries use.
	if err := e.reg.Guard().CheckAddr(netip.MustParseAddr("169.254.169.254")); !errors.Is(err, registry.ErrHostNotAllowed) {
		t.Errorf("Guard().CheckAddr(metadata) = %v", err)
	}
}

func TestParseNetworks(t *testing.T) {
	got, err := registry.ParseNetworks([]string{" 10.1.2.3/8 ", "", "192.168.1.7", "fd00::1", "::ffff:10.0.0.0/104"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.168.1.7/32", "fd00::1/128", "::ffff:10.0.0.0/104"}
	if len(got) != len(want) {
		t.Fatalf("ParseNetworks = %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("ParseNetworks[%d] = %s, want %s", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "nope", "10.0.0.0/8/8", "10.0.0"} {
		if _, err := registry.ParseNetworks([]string{"127.0.0.0/8", bad}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("ParseNetworks(%s) = %v, want an error quoting it", bad, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*registry.Config)
		want   []string // variables named; none when valid
	}{
		{"defaults", func(*registry.Config) {}, nil},
		{"interval 1s", func(c *registry.Config) { c.HeartbeatInterval = time.Second }, nil},
		{"interval zero", func(c *registry.Config) { c.HeartbeatInterval = 0 }, []string{"AGENT_HEARTBEAT_INTERVAL"}},
		{"interval fraction", func(c *registry.Config) { c.HeartbeatInterval = 1500 * time.Millisecond }, []string{"AGENT_HEARTBEAT_INTERVAL=\"1.5s\""}},
		{"interval negative", func(c *registry.Config) { c.HeartbeatInterval = -time.Second }, []string{"AGENT_HEARTBEAT_INTERVAL"}},
		{"missed zero", func(c *registry.Config) { c.MissedHeartbeats = 0 }, []string{"AGENT_MISSED_HEARTBEATS=\"0\""}},
		{"missed 1", func(c *registry.Config) { c.MissedHeartbeats = 1 }, nil},
		{"evict equal", func(c *registry.Config) { c.EvictAfter = 90 * time.Second }, []string{"AGENT_EVICT_AFTER=\"1m30s\""}},
		{"evict just over", func(c *registry.Config) { c.EvictAfter = 91 * time.Second }, nil},
		{"networks bad", func(c *registry.Config) { c.AllowedNetworks = []string{"10.0.0.0/8", "ten"} }, []string{"AGENT_ALLOWED_NETWORKS=\"10.0.0.0/8,ten\"", `"ten"`}},
		{"networks empty", func(c *registry.Config) { c.AllowedNetworks = []string{" "} }, []string{`AGENT_ALLOWED_NETWORKS="": no network`}},
		{"missed too many", func(c *registry.Config) { c.MissedHeartbeats = 1 << 40 }, []string{"AGENT_MISSED_HEARTBEATS=\"1099511627776\": must be from 1 to 1000"}},
		{"several", func(c *registry.Config) { c.HeartbeatInterval, c.MissedHeartbeats = 0, 0 }, []string{"AGENT_HEARTBEAT_INTERVAL", "AGENT_MISSED_HEARTBEATS"}},
		{"metadata bytes 2", func(c *registry.Config) { c.MaxMetadataBytes = 2 }, nil},
		{"metadata bytes 1", func(c *registry.Config) { c.MaxMetadataBytes = 1 }, []string{`AGENT_MAX_METADATA_BYTES="1": must be from 2`}},
		{"metadata bytes negative", func(c *registry.Config) { c.MaxMetadataBytes = -1 }, []string{`AGENT_MAX_METADATA_BYTES="-1"`}},
		{"metadata depth 1", func(c *registry.Config) { c.MaxMetadataDepth = 1 }, nil},
		{"metadata depth 0", func(c *registry.Config) { c.MaxMetadataDepth = 0 }, []string{`AGENT_MAX_METADATA_DEPTH="0": must be from 1`}},
		{"metadata depth 101", func(c *registry.Config) { c.MaxMetadataDepth = 101 }, []string{`AGENT_MAX_METADATA_DEPTH="101": must be from 1 (a flat object) to 100`}},
		{"max agents 1", func(c *registry.Config) { c.MaxAgents = 1 }, nil},
		{"max agents 0", func(c *registry.Config) { c.MaxAgents = 0 }, []string{`AGENT_MAX_AGENTS="0": must be from 1 to 10000000`}},
		{"metadata total at the per-request limit", func(c *registry.Config) { c.MaxMetadataTotalBytes = c.MaxMetadataBytes }, nil},
		{"metadata total 2", func(c *registry.Config) { c.MaxMetadataBytes, c.MaxMetadataTotalBytes = 2, 2 }, nil},
		{"metadata total 1 TiB", func(c *registry.Config) { c.MaxMetadataTotalBytes = 1 << 40 }, nil},
		{"metadata total 0", func(c *registry.Config) { c.MaxMetadataTotalBytes = 0 }, []string{`AGENT_MAX_METADATA_TOTAL_BYTES="0": must be from 2 (the empty object {}) to 1099511627776`}},
		{"metadata total over 1 TiB", func(c *registry.Config) { c.MaxMetadataTotalBytes = 1<<40 + 1 }, []string{`AGENT_MAX_METADATA_TOTAL_BYTES="1099511627777": must be from 2`}},
		{"metadata total below the per-request limit", func(c *registry.Config) { c.MaxMetadataTotalBytes = c.MaxMetadataBytes - 1 }, []string{`AGENT_MAX_METADATA_TOTAL_BYTES="65535": must be at least AGENT_MAX_METADATA_BYTES (65536)`}},
		{"interval an hour", func(c *registry.Config) { c.HeartbeatInterval = time.Hour }, nil},
		{"interval over an hour", func(c *registry.Config) { c.HeartbeatInterval = time.Hour + time.Second }, []string{"AGENT_HEARTBEAT_INTERVAL=\"1h0m1s\": must be a whole number of seconds from 1s to 1h"}},
		// Whole seconds, but 3 of them overflow a Duration: the product went
		// negative, so any AGENT_EVICT_AFTER passed and every agent was
		// unreachable at once.
		{"interval that overflows", func(c *registry.Config) { c.HeartbeatInterval = 2562047 * time.Hour }, []string{"AGENT_HEARTBEAT_INTERVAL"}},
		{"evict a year", func(c *registry.Config) { c.EvictAfter = 365 * 24 * time.Hour }, nil},
		{"evict over a year", func(c *registry.Config) { c.EvictAfter = 365*24*time.Hour + 1 }, []string{"AGENT_EVICT_AFTER", "must be at most 8760h"}},
		{"evict negative with a bad interval", func(c *registry.Config) { c.HeartbeatInterval, c.EvictAfter = 0, -1 }, []string{"AGENT_HEARTBEAT_INTERVAL", "AGENT_EVICT_AFTER=\"-1ns\": must be greater than 0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig(t)
			tc.change(&cfg)
			err := cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want errors naming %v", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to contain %s", err, w)
				}
			}
		})
	}
	// New refuses bad networks too.
	cfg := defaultConfig(t)
	cfg.AllowedNetworks = []string{"bad"}
	if _, err := registry.New(registry.Options{Config: cfg, Store: registry.NewMemoryStore()}); err == nil {
		t.Error("New with bad networks succeeded")
	}
	// The log object shows the settings.
	enc := zapcore.NewMapObjectEncoder()
	if err := defaultConfig(t).MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	if enc.Fields["missed_heartbeats"] != 3 || enc.Fields["heartbeat_interval"] != 30*time.Second || !strings.Contains(enc.Fields["allowed_networks"].(string), "fc00::/7") ||
		enc.Fields["max_metadata_bytes"] != 65536 || enc.Fields["max_metadata_depth"] != 8 || enc.Fields["max_agents"] != 50000 {
		t.Errorf("MarshalLogObject = %v", enc.Fields)
	}
}

func TestHeartbeatIntervalSeconds(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	if got := e.reg.HeartbeatIntervalSeconds(); got != 30 {
		t.Errorf("HeartbeatIntervalSeconds = %d, want 30", got)
	}
}

func TestOnChange(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, defaultConfig(t))
	calls := 0
	e.reg.OnChange(func() { calls++ })
	a := e.register(t, validRegistration())
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, a.ID, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, "nope", "", nil); err == nil {
		t.Fatal("heartbeat of unknown agent succeeded")
	}
	if calls != 2 {
		t.Errorf("OnChange called %d times, want 2 (register, heartbeat)", calls)
	}
}

func TestRunSweepsUntilCancelled(t *testing.T) {
	cfg := defaultConfig(t)
	cfg.HeartbeatInterval = 20 * time.Millisecond // Run ticks every 10ms
	e := newEnv(t, cfg)
	a := e.register(t, validRegistration())
	e.clock.Advance(time.Minute) // silent far past 3 intervals

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.reg.Run(ctx)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for e.logs.FilterMessage("agent unreachable: no heartbeat").Len() == 0 {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("Run did not sweep within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if stored, _ := e.store.Get(context.Background(), a.ID); stored.Status != registry.StatusUnreachable {
		t.Errorf("after Run swept: %s, want unreachable", stored.Status)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return within 2s of its context ending")
	}
	if n := e.logs.FilterMessage("sweeping agents").Len(); n != 0 {
		t.Errorf("Run logged %d sweep errors after a clean stop", n)
	}

	// Already cancelled: returns at once.
	done2 := make(chan struct{})
	go func() {
		defer close(done2)
		e.reg.Run(ctx)
	}()
	select {
	case <-done2:
	case <-time.After(2 * time.Second):
		t.Fatal("Run with an ended context did not return")
	}
}

// TestRegistryConcurrent drives the Registry from many goroutines while
// the sweeper runs and metrics are scraped, for the race detector.
func TestRegistryConcurrent(t *testing.T) {
	cfg := defaultConfig(t)
	e := newEnv(t, cfg)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				reg := validRegistration()
				reg.Name = fmt.Sprintf("agent-%d", (w*7+i)%20)
				a, _, err := e.reg.Register(ctx, reg)
				if err != nil {
					t.Errorf("Register: %v", err)
					return
				}
				switch i % 5 {
				case 0:
					_, _ = e.reg.Unregister(ctx, registry.Actor{}, a.ID)
				case 1:
					_, _ = e.reg.Heartbeat(ctx, registry.Actor{}, a.ID, "degraded", json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)))
				case 2:
					e.clock.Advance(time.Second)
					if err := e.reg.Sweep(ctx); err != nil {
						t.Errorf("Sweep: %v", err)
					}
				case 3:
					if _, err := e.metrics.Gather(); err != nil {
						t.Errorf("Gather: %v", err)
					}
				case 4:
					if _, err := e.reg.Routable(ctx, registry.TypeCost, "analyze_costs", nil); err != nil {
						t.Errorf("Routable: %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	registrytest.CheckConsistent(t, e.store, registry.Types, []string{"analyze_costs"})
}

// objectOf returns a JSON object of exactly size bytes.
func objectOf(size int) json.RawMessage {
	const head, tail = `{"pad":"`, `"}`
	return json.RawMessage(head + strings.Repeat("x", size-len(head)-len(tail)) + tail)
}

// nested returns an object whose arrays and objects nest depth levels.
func nested(depth int) json.RawMessage {
	js := "1"
	for i := 1; i < depth; i++ {
		if i%2 == 0 {
			js = `{"a":` + js + `}`
		} else {
			js = `[` + js + `]`
		}
	}
	return json.RawMessage(`{"n":` + js + `}`)
}

func TestMetadataLimits(t *testing.T) {
	cfg := defaultConfig(t)
	cfg.MaxMetadataBytes, cfg.MaxMetadataDepth = 256, 4
	if got := len(objectOf(256)); got != 256 {
		t.Fatalf("objectOf(256) is %d bytes", got)
	}
	tests := []struct {
		name     string
		metadata string
		want     string // the stored metadata; "" for none
		errMsg   string // part of the FieldError's message; "" when accepted
		tooLarge bool
	}{
		{"absent", "", "", "", false},
		{"null", "null", "", "", false},
		{"empty object", "{}", "{}", "", false},
		{"spaces are dropped", ` { "a" : [ 1, 2 ] , "b" : "x y" } `, `{"a":[1,2],"b":"x y"}`, "", false},
		{"numbers stay exact", `{"big":12345678901234567890,"f":1.50}`, `{"big":12345678901234567890,"f":1.50}`, "", false},
		{"at the size limit", string(objectOf(256)), string(objectOf(256)), "", false},
		{"a byte over", string(objectOf(257)), "", "is 257 bytes of JSON; the limit is 256 bytes (AGENT_MAX_METADATA_BYTES)", true},
		{"far over", string(objectOf(1 << 20)), "", "the limit is 256 bytes", true},
		{"at the depth limit", string(nested(4)), string(nested(4)), "", false},
		{"a level too deep", string(nested(5)), "", "more than 4 levels deep", false},
		{"brackets in strings do not nest", `{"s":"[[[[[[{{{{{{\"]]]"}`, `{"s":"[[[[[[{{{{{{\"]]]"}`, "", false},
		{"an array", `[1]`, "", "must be an object, not an array", false},
		{"a string", `"x"`, "", "must be an object, not a string", false},
		{"a number", `-1`, "", "must be an object, not a number", false},
		{"a boolean", `true`, "", "must be an object, not true or false", false},
		{"not UTF-8", "{\"a\":\"\xff\"}", "", "not valid UTF-8", false},
		{"the largest float64s", `{"a":1.7976931348623157e308,"b":-1.7976931348623157E+308}`, `{"a":1.7976931348623157e308,"b":-1.7976931348623157E+308}`, "", false},
		{"an underflow reads as zero", `{"a":1e-400}`, `{"a":1e-400}`, "", false},
		{"a huge exponent", `{"a":[1230e78945678901234567894565]}`, "", `holds the number "1230e78945678901234567894565", beyond the range of a 64-bit float`, false},
		{"just past float64", `{"a":-1.8e308}`, "", `"-1.8e308", beyond the range`, false},
		{"200 digits and an exponent", `{"a":1` + strings.Repeat("0", 199) + `e110}`, "", "beyond the range of a 64-bit float", false},
		{"numbers in strings are text", `{"1e999":"1e999"}`, `{"1e999":"1e999"}`, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := func(what string, stored json.RawMessage, err error) {
				t.Helper()
				if tc.errMsg == "" {
					if err != nil {
						t.Fatalf("%s: %v, want accepted", what, err)
					}
					if string(stored) != tc.want {
						t.Errorf("%s stored metadata %q, want %q", what, stored, tc.want)
					}
					return
				}
				var fe *registry.FieldError
				if !errors.As(err, &fe) || fe.Field != "metadata" || !strings.Contains(err.Error(), tc.errMsg) {
					t.Fatalf("%s = %v, want a metadata FieldError saying %q", what, err, tc.errMsg)
				}
				if errors.Is(err, registry.ErrTooLarge) != tc.tooLarge {
					t.Errorf("%s: errors.Is(ErrTooLarge) = %v, want %v", what, !tc.tooLarge, tc.tooLarge)
				}
			}
			e := newEnv(t, cfg)
			reg := validRegistration()
			reg.Metadata = json.RawMessage(tc.metadata)
			a, _, err := e.reg.Register(context.Background(), reg)
			check("Register", a.Metadata, err)
			if err != nil {
				if agents, _ := e.reg.List(context.Background(), ""); len(agents) != 0 {
					t.Errorf("a refused registration was stored")
				}
				reg.Metadata = nil
				a = e.register(t, reg)
			}
			e.clock.Advance(time.Second)
			hb, err := e.reg.Heartbeat(context.Background(), registry.Actor{}, a.ID, "degraded", json.RawMessage(tc.metadata))
			check("Heartbeat", hb.HeartbeatMetadata, err)
			if err != nil {
				if got, _ := e.reg.Get(context.Background(), a.ID); got.Status != registry.StatusHealthy || !got.LastSeen.Equal(t0) {
					t.Errorf("a refused heartbeat changed the agent: %s seen %v", got.Status, got.LastSeen)
				}
			}
		})
	}
}

func TestMaxAgents(t *testing.T) {
	cfg := defaultConfig(t)
	cfg.MaxAgents = 2
	e := newEnv(t, cfg)
	reg := func(name string) (registry.Agent, bool, error) {
		r := validRegistration()
		r.Name = name
		return e.reg.Register(context.Background(), r)
	}
	for _, name := range []string{"a", "b"} {
		if _, _, err := reg(name); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := reg("c")
	if !errors.Is(err, registry.ErrFull) || !strings.Contains(err.Error(), "AGENT_MAX_AGENTS=2") {
		t.Fatalf("a third agent with AGENT_MAX_AGENTS=2: %v, want ErrFull naming the setting", err)
	}
	if n := e.logs.FilterMessage("agent registration refused: AGENT_MAX_AGENTS reached").Len(); n != 1 {
		t.Errorf("the refusal was logged %d times, want once", n)
	}
	if _, created, err := reg("a"); err != nil || created {
		t.Errorf("registering a known agent again at the limit = created %v, %v; want it updated", created, err)
	}
}

// TestMetadataBudget: at AGENT_MAX_METADATA_TOTAL_BYTES a registration or
// heartbeat that grows the metadata is refused with ErrMetadataBudget,
// naming the setting and the request's own size but nothing of the other
// agents; it is logged, changes nothing, and the gauge shows what is held.
func TestMetadataBudget(t *testing.T) {
	cfg := defaultConfig(t)
	cfg.MaxMetadataBytes, cfg.MaxMetadataTotalBytes = 512, 1024
	e := newEnv(t, cfg)
	ctx := context.Background()
	first := validRegistration()
	first.Name, first.Metadata = "first", json.RawMessage(`{"secret":"`+strings.Repeat("s", 487)+`"}`) // 500 bytes
	a := e.register(t, first)
	second := validRegistration()
	second.Name, second.Metadata = "second", objectOf(500)
	b := e.register(t, second)
	checkHeldGauge(t, e, 1000)

	// 25 bytes of heartbeat metadata do not fit in the 24 left.
	e.clock.Advance(time.Second)
	_, err := e.reg.Heartbeat(ctx, registry.Actor{}, b.ID, "degraded", objectOf(25))
	if !errors.Is(err, registry.ErrMetadataBudget) {
		t.Fatalf("Heartbeat of 25 bytes with 24 left = %v, want ErrMetadataBudget", err)
	}
	msg := err.Error()
	for _, want := range []string{"metadata budget is spent", "AGENT_MAX_METADATA_TOTAL_BYTES=1024", "this heartbeat's 25 bytes", "nothing was recorded"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the refusal %q does not say %q", msg, want)
		}
	}
	for _, secret := range []string{"secret", "1000", " 24 ", a.ID, "first"} {
		if strings.Contains(msg, secret) {
			t.Errorf("the refusal %q reveals %q of what other agents hold", msg, secret)
		}
	}
	if got, _ := e.reg.Get(ctx, b.ID); got.Status != registry.StatusHealthy || !got.LastSeen.Equal(t0) || got.HeartbeatMetadata != nil {
		t.Errorf("a refused heartbeat changed the agent: %s seen %v, metadata %s", got.Status, got.LastSeen, got.HeartbeatMetadata)
	}
	if n := e.logs.FilterMessage("agent heartbeat refused: AGENT_MAX_METADATA_TOTAL_BYTES reached").Len(); n != 1 {
		t.Errorf("the refused heartbeat was logged %d times, want once", n)
	}
	if _, err := e.reg.Heartbeat(ctx, registry.Actor{}, b.ID, "degraded", objectOf(24)); err != nil {
		t.Errorf("Heartbeat of the 24 bytes left: %v", err)
	}
	checkHeldGauge(t, e, 1024)

	// A new agent with metadata is refused; without, it registers.
	third := validRegistration()
	third.Name, third.Metadata = "third", objectOf(10)
	_, _, err = e.reg.Register(ctx, third)
	if !errors.Is(err, registry.ErrMetadataBudget) || !strings.Contains(err.Error(), "this registration's 10 bytes") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("Register of 10 bytes at the budget = %v, want ErrMetadataBudget naming its own size only", err)
	}
	if n := e.logs.FilterMessage("agent registration refused: AGENT_MAX_METADATA_TOTAL_BYTES reached").Len(); n != 1 {
		t.Errorf("the refused registration was logged %d times, want once", n)
	}
	third.Metadata = nil
	e.register(t, third)

	// Unregistering frees the agent's share.
	if _, err := e.reg.Unregister(ctx, registry.Actor{}, a.ID); err != nil {
		t.Fatal(err)
	}
	checkHeldGauge(t, e, 524)
	third.Metadata = objectOf(500)
	e.register(t, third)
	checkHeldGauge(t, e, 1024)
}

// checkHeldGauge checks orchestrator_agent_metadata_bytes.
func checkHeldGauge(t *testing.T, e *env, want int) {
	t.Helper()
	exposition := fmt.Sprintf(`# HELP orchestrator_agent_metadata_bytes Agent metadata the registry holds: every agent's registration and last heartbeat metadata, as JSON text.
# TYPE orchestrator_agent_metadata_bytes gauge
orchestrator_agent_metadata_bytes %d
`, want)
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(exposition), "orchestrator_agent_metadata_bytes"); err != nil {
		t.Error(err)
	}
}

// TestLimitDefaults: a Config built in code without the limits gets their
// defaults, as the environment gives them.
func TestLimitDefaults(t *testing.T) {
	cfg := defaultConfig(t)
	if cfg.MaxMetadataBytes != registry.DefaultMaxMetadataBytes || cfg.MaxMetadataDepth != registry.DefaultMaxMetadataDepth || cfg.MaxAgents != registry.DefaultMaxAgents {
		t.Errorf("environment defaults %d bytes, depth %d, %d agents; want the Default constants", cfg.MaxMetadataBytes, cfg.MaxMetadataDepth, cfg.MaxAgents)
	}
	if registry.DefaultMaxMetadataBytes != 64<<10 || registry.DefaultMaxMetadataDepth != 8 || registry.DefaultMaxAgents != 50_000 {
		t.Errorf("defaults changed: %d bytes, depth %d, %d agents", registry.DefaultMaxMetadataBytes, registry.DefaultMaxMetadataDepth, registry.DefaultMaxAgents)
	}
	if cfg.MaxMetadataTotalBytes != registry.DefaultMaxMetadataTotalBytes || registry.DefaultMaxMetadataTotalBytes != 32<<20 {
		t.Errorf("metadata budget: environment default %d, constant %d; want both 32 MiB", cfg.MaxMetadataTotalBytes, registry.DefaultMaxMetadataTotalBytes)
	}
	cfg.MaxMetadataBytes, cfg.MaxMetadataDepth, cfg.MaxAgents, cfg.MaxMetadataTotalBytes = 0, 0, 0, 0
	e := newEnv(t, cfg)
	if err := testutil.GatherAndCompare(e.metrics, strings.NewReader(`# HELP orchestrator_agent_metadata_budget_bytes AGENT_MAX_METADATA_TOTAL_BYTES: past it, registrations and heartbeats that grow an agent's metadata get 507.
# TYPE orchestrator_agent_metadata_budget_bytes gauge
orchestrator_agent_metadata_budget_bytes 3.3554432e+07
`), "orchestrator_agent_metadata_budget_bytes"); err != nil {
		t.Errorf("with a zero budget: %v", err)
	}
	r := validRegistration()
	r.Metadata = objectOf(registry.DefaultMaxMetadataBytes + 1)
	if _, _, err := e.reg.Register(context.Background(), r); !errors.Is(err, registry.ErrTooLarge) {
		t.Errorf("with a zero limit, metadata over the default = %v, want ErrTooLarge", err)
	}
	r.Metadata = nested(registry.DefaultMaxMetadataDepth + 1)
	if _, _, err := e.reg.Register(context.Background(), r); err == nil {
		t.Error("with a zero limit, metadata deeper than the default was accepted")
	}
	r.Metadata = nested(registry.DefaultMaxMetadataDepth)
	e.register(t, r)
}

// TestOwnership: an agent is bound to the token it registered with; the
// registry refuses the others, names the agent and logs who asked.
func TestOwnership(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, defaultConfig(t))
	alice := registry.Actor{Token: "sha256:aaaaaaaaaaaa"}
	mallory := registry.Actor{Token: "sha256:bbbbbbbbbbbb"}
	operator := registry.Actor{Token: "sha256:cccccccccccc", Operator: true, Name: "alice@example.com"}

	r := validRegistration()
	r.Owner = alice.Token
	a := e.register(t, r)
	if a.Owner != alice.Token {
		t.Fatalf("owner = %q, want %s", a.Owner, alice.Token)
	}

	takeover := validRegistration()
	takeover.Owner, takeover.Type, takeover.Capabilities = mallory.Token, "performance", []string{"steal"}
	_, _, err := e.reg.Register(ctx, takeover)
	var oe *registry.OwnerError
	if !errors.As(err, &oe) || !errors.Is(err, registry.ErrNotOwner) {
		t.Fatalf("takeover Register = %v, want an OwnerError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `"cost-agent-1" at 10.0.0.5:8001`) || !strings.Contains(msg, "bound to another agent token") ||
		strings.Contains(msg, alice.Token) || strings.Contains(msg, "agent "+a.ID) {
		t.Errorf("takeover message %q: want the agent as named (not its id) and nothing of the owner's token", msg)
	}
	for _, err := range []error{
		func() error { _, err := e.reg.Heartbeat(ctx, mallory, a.ID, "unhealthy", nil); return err }(),
		func() error { _, err := e.reg.Unregister(ctx, mallory, a.ID); return err }(),
	} {
		if !errors.As(err, &oe) || oe.Agent != a.ID || strings.Contains(err.Error(), alice.Token) {
			t.Errorf("change by another token = %v, want an OwnerError naming %s", err, a.ID)
		}
	}
	if got, _ := e.reg.Get(ctx, a.ID); got.Status != registry.StatusHealthy || got.Type != registry.TypeCost || got.Owner != alice.Token {
		t.Errorf("after refused changes: %s %s owner %q", got.Type, got.Status, got.Owner)
	}
	for _, msg := range []string{
		"agent registration refused: the agent is bound to another token",
		"agent heartbeat refused: the agent is bound to another token",
		"agent unregistration refused: the agent is bound to another token",
	} {
		entries := e.logs.FilterMessage(msg).All()
		if len(entries) != 1 {
			t.Errorf("%q logged %d times, want once", msg, len(entries))
			continue
		}
		if by := entries[0].ContextMap()["by"]; fmt.Sprint(by) != "map[role:agent token:sha256:bbbbbbbbbbbb]" {
			t.Errorf("%q by = %v, want the refused token's fingerprint", msg, by)
		}
	}

	// Its own token changes it, and the log says who.
	if _, err := e.reg.Heartbeat(ctx, alice, a.ID, "degraded", nil); err != nil {
		t.Fatal(err)
	}
	changed := e.logs.FilterMessage("agent status changed").All()
	if len(changed) != 1 || fmt.Sprint(changed[0].ContextMap()["by"]) != "map[role:agent token:sha256:aaaaaaaaaaaa]" {
		t.Errorf("status change logged as %v, want by alice's fingerprint", changed)
	}
	registered := e.logs.FilterMessage("agent registered").All()
	if len(registered) != 1 || registered[0].ContextMap()["owner"] != alice.Token {
		t.Errorf("registration logged as %v, want the owner", registered)
	}

	// An operator may remove it.
	if _, err := e.reg.Unregister(ctx, operator, a.ID); err != nil {
		t.Fatalf("operator Unregister: %v", err)
	}
	un := e.logs.FilterMessage("agent unregistered").All()
	if len(un) != 1 || fmt.Sprint(un[0].ContextMap()["by"]) != "map[name:alice@example.com role:operator token:sha256:cccccccccccc]" || un[0].ContextMap()["owner"] != alice.Token {
		t.Errorf("unregistration logged as %v, want by the operator (with its name), owner alice", un)
	}
}

// TestAgentsGaugeCopiesNoAgent: a scrape counts the agents in the store;
// what it allocates does not grow with the agents or their metadata.
func TestAgentsGaugeCopiesNoAgent(t *testing.T) {
	allocs := func(n int) float64 {
		e := newEnv(t, defaultConfig(t))
		for i := range n {
			r := validRegistration()
			r.Name, r.Metadata = fmt.Sprintf("agent-%d", i), objectOf(4<<10)
			e.register(t, r)
		}
		return testing.AllocsPerRun(20, func() {
			if _, err := e.metrics.Gather(); err != nil {
				t.Fatal(err)
			}
		})
	}
	few, many := allocs(10), allocs(1000)
	if many > few+20 {
		t.Errorf("a scrape allocates %.0f times with 10 agents and %.0f with 1,000: it copies agents", few, many)
	}
	t.Logf("allocations per scrape: %.0f with 10 agents, %.0f with 1,000", few, many)
}
