package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
		Metadata:     map[string]any{"region": "eu"},
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
	// The same agent, spelled differently, is the same agent.
	reg.Name, reg.Host = "cost-agent-1", "agent.local"
	again, created, err := e.reg.Register(context.Background(), reg)
	if err != nil || created || again.ID != a.ID {
		t.Errorf("re-register = %s created %v, %v; want %s, not created", again.ID, created, err, a.ID)
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
	_, err := e.reg.Heartbeat(context.Background(), a.ID, "unreachable", nil)
	var fe *registry.FieldError
	if !errors.As(err, &fe) || fe.Field != "status" || !strings.HasPrefix(err.Error(), "status: ") {
		t.Fatalf("Heartbeat(unreachable) = %v, want a FieldError on status", err)
	}
	got, _ := e.reg.Get(context.Background(), a.ID)
	if got.Status != registry.StatusHealthy {
		t.Errorf("status after a refused heartbeat = %s", got.Status)
	}
	if _, err := e.reg.Heartbeat(context.Background(), "nope", "", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Heartbeat(unknown) = %v, want ErrNotFound", err)
	}
}

func TestHeartbeatMetadataOverlay(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	a := e.register(t, validRegistration())
	got, err := e.reg.Heartbeat(context.Background(), a.ID, "", map[string]any{"load": 0.5, "region": "us"})
	if err != nil {
		t.Fatal(err)
	}
	all := got.AllMetadata()
	if all["region"] != "us" || all["load"] != 0.5 || got.Metadata["region"] != "eu" {
		t.Errorf("AllMetadata = %v, registration metadata %v; want the heartbeat's overlaid, the registration's kept", all, got.Metadata)
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
	got, err := e.reg.Heartbeat(ctx, a.ID, "", nil)
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
	if _, err := e.reg.Heartbeat(ctx, a.ID, "", nil); !errors.Is(err, registry.ErrNotFound) {
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
		if _, err := e.reg.Heartbeat(ctx, id, st, nil); err != nil {
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
	if _, err := e.reg.Heartbeat(ctx, degraded.ID, "healthy", nil); err != nil {
		t.Fatal(err)
	}
	if got := routableIDs(t, e.reg, "x"); len(got) != 2 {
		t.Errorf("routable after recovery = %v, want 2", got)
	}
	// After unregistering, not routable and 404.
	if _, err := e.reg.Unregister(ctx, healthy.ID); err != nil {
		t.Fatal(err)
	}
	if got := routableIDs(t, e.reg, "x"); len(got) != 1 || got[0] != degraded.ID {
		t.Errorf("routable after unregister = %v, want [%s]", got, degraded.ID)
	}
	if _, err := e.reg.Unregister(ctx, healthy.ID); !errors.Is(err, registry.ErrNotFound) {
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
	if _, err := e.reg.Heartbeat(ctx, p.ID, "degraded", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Heartbeat(ctx, u.ID, "unhealthy", nil); err != nil {
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
	if enc.Fields["missed_heartbeats"] != 3 || enc.Fields["heartbeat_interval"] != 30*time.Second || !strings.Contains(enc.Fields["allowed_networks"].(string), "fc00::/7") {
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
	if _, err := e.reg.Heartbeat(ctx, a.ID, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Heartbeat(ctx, "nope", "", nil); err == nil {
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
					_, _ = e.reg.Unregister(ctx, a.ID)
				case 1:
					_, _ = e.reg.Heartbeat(ctx, a.ID, "degraded", map[string]any{"i": i})
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
