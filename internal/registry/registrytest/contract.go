// Package registrytest is the contract every registry.Store must meet.
// Run it from a test of each implementation:
//
//	func TestMemoryStore(t *testing.T) {
//		registrytest.TestStore(t, func(*testing.T) registry.Store { return registry.NewMemoryStore() })
//	}
//
// newStore is called once per subtest and must return an empty store.
// Times the suite stores are whole seconds in UTC and metadata values are
// strings and float64s, so a store that serializes agents (as JSON, say)
// can pass it unchanged; empty and nil slices and maps count as equal.
// Metadata is counted against the budget as the JSON text the store is
// given (always compact here); the suite recounts it from what List gives
// back, compacted, so a store may reorder keys or add spaces, but must
// give back no metadata as none.
package registrytest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// unlimited are limits that never refuse a change.
var unlimited = registry.Limits{Agents: math.MaxInt, MetadataBytes: math.MaxInt}

// agentCap are limits of n agents and unlimited metadata.
func agentCap(n int) registry.Limits { return registry.Limits{Agents: n, MetadataBytes: math.MaxInt} }

// t0 is the time the suite's agents register at.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(seconds int) time.Time { return t0.Add(time.Duration(seconds) * time.Second) }

// TestStore runs the Store contract against stores made by newStore.
func TestStore(t *testing.T, newStore func(t *testing.T) registry.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s registry.Store)
	}{
		{"RegisterNew", testRegisterNew},
		{"RegisterSameIdentityKeepsIDAndRegisteredAt", testReRegister},
		{"RegisterDifferentIdentityIsAnotherAgent", testDifferentIdentity},
		{"RegisterTakenIDRefused", testTakenID},
		{"NotFound", testNotFound},
		{"Heartbeat", testHeartbeat},
		{"ListByTypeInRegistrationOrder", testList},
		{"Candidates", testCandidates},
		{"MarkUnreachable", testMarkUnreachable},
		{"Evict", testEvict},
		{"ReturnedAgentsDoNotAlias", testNoAliasing},
		{"OwnerBindsChanges", testOwner},
		{"MaxAgents", testMaxAgents},
		{"MaxAgentsConcurrent", testMaxAgentsConcurrent},
		{"MetadataBudget", testMetadataBudget},
		{"MetadataBudgetRandom", testMetadataBudgetRandom},
		{"MetadataBudgetConcurrent", testMetadataBudgetConcurrent},
		{"ChosenIDRegisterAndUpdate", testChosenID},
		{"ChosenIDOfGeneratedAgentRefused", testChosenIDTaken},
		{"ChosenIDNotMatchedByIdentity", testChosenIDIdentity},
		{"ChosenIDOwnerAndLimits", testChosenIDOwnerAndLimits},
		{"Count", testCount},
		{"CancelledContext", testCancelledContext},
		{"Concurrent", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newStore(t))
		})
	}
}

// newAgent is a healthy agent registered and last seen at the given
// second after t0.
func newAgent(id, name string, typ registry.Type, port, second int, caps ...string) registry.Agent {
	return registry.Agent{
		ID:           id,
		Name:         name,
		Type:         typ,
		Host:         "10.0.0.1",
		Port:         port,
		Capabilities: caps,
		Status:       registry.StatusHealthy,
		Version:      "1.0.0",
		RegisteredAt: at(second),
		LastSeen:     at(second),
		Metadata:     raw(`{"zone":"a","gpus":2}`),
		// What the registry records of an agent that announced its own
		// address.
		AnnouncedHost: "10.0.0.1",
		AddressSource: registry.AddressAnnounced,
	}
}

func mustRegister(t *testing.T, s registry.Store, a registry.Agent) registry.Agent {
	t.Helper()
	stored, created, err := s.Register(context.Background(), a, unlimited)
	if err != nil {
		t.Fatalf("Register(%s): %v", a.ID, err)
	}
	if !created {
		t.Fatalf("Register(%s): created = false for a new agent", a.ID)
	}
	return stored
}

func mustGet(t *testing.T, s registry.Store, id string) registry.Agent {
	t.Helper()
	a, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return a
}

// diffAgent describes how got differs from want, or returns "".
func diffAgent(got, want registry.Agent) string {
	var d []string
	field := func(name string, g, w any) {
		d = append(d, fmt.Sprintf("%s = %v, want %v", name, g, w))
	}
	if got.ID != want.ID {
		field("ID", got.ID, want.ID)
	}
	if got.Name != want.Name {
		field("Name", got.Name, want.Name)
	}
	if got.Type != want.Type {
		field("Type", got.Type, want.Type)
	}
	if got.Host != want.Host {
		field("Host", got.Host, want.Host)
	}
	if got.Port != want.Port {
		field("Port", got.Port, want.Port)
	}
	if !slices.Equal(got.Capabilities, want.Capabilities) {
		field("Capabilities", got.Capabilities, want.Capabilities)
	}
	if got.Status != want.Status {
		field("Status", got.Status, want.Status)
	}
	if got.Version != want.Version {
		field("Version", got.Version, want.Version)
	}
	if !got.RegisteredAt.Equal(want.RegisteredAt) {
		field("RegisteredAt", got.RegisteredAt, want.RegisteredAt)
	}
	if !got.LastSeen.Equal(want.LastSeen) {
		field("LastSeen", got.LastSeen, want.LastSeen)
	}
	if got.Owner != want.Owner {
		field("Owner", got.Owner, want.Owner)
	}
	if got.ChosenID != want.ChosenID {
		field("ChosenID", got.ChosenID, want.ChosenID)
	}
	if got.AnnouncedHost != want.AnnouncedHost {
		field("AnnouncedHost", got.AnnouncedHost, want.AnnouncedHost)
	}
	if got.AddressSource != want.AddressSource {
		field("AddressSource", got.AddressSource, want.AddressSource)
	}
	if got.HealthCheckEndpoint != want.HealthCheckEndpoint {
		field("HealthCheckEndpoint", got.HealthCheckEndpoint, want.HealthCheckEndpoint)
	}
	if !equalJSON(got.Metadata, want.Metadata) {
		field("Metadata", string(got.Metadata), string(want.Metadata))
	}
	if !equalJSON(got.HeartbeatMetadata, want.HeartbeatMetadata) {
		field("HeartbeatMetadata", string(got.HeartbeatMetadata), string(want.HeartbeatMetadata))
	}
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprint(d)
}

// raw is JSON text as metadata.
func raw(js string) json.RawMessage { return json.RawMessage(js) }

// equalJSON reports whether two metadata objects hold the same JSON: a
// store may reorder keys or drop spaces. Nil and {} count as equal.
func equalJSON(a, b json.RawMessage) bool {
	decode := func(js json.RawMessage) (any, bool) {
		if len(js) == 0 {
			return map[string]any{}, true
		}
		var v any
		return v, json.Unmarshal(js, &v) == nil
	}
	va, okA := decode(a)
	vb, okB := decode(b)
	return okA && okB && reflect.DeepEqual(va, vb)
}

func checkAgent(t *testing.T, what string, got, want registry.Agent) {
	t.Helper()
	if d := diffAgent(got, want); d != "" {
		t.Errorf("%s: %s", what, d)
	}
}

func ids(agents []registry.Agent) []string {
	out := make([]string, len(agents))
	for i, a := range agents {
		out[i] = a.ID
	}
	return out
}

func candidateIDs(cs []registry.Candidate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// candidates returns the IDs of the candidates of (typ, capability), sorted.
func candidates(t *testing.T, s registry.Store, typ registry.Type, capability string) []string {
	t.Helper()
	cs, err := s.Candidates(context.Background(), typ, capability, nil)
	if err != nil {
		t.Fatalf("Candidates(%s, %s): %v", typ, capability, err)
	}
	return sorted(candidateIDs(cs))
}

func checkCandidates(t *testing.T, s registry.Store, typ registry.Type, capability string, want ...string) {
	t.Helper()
	got := candidates(t, s, typ, capability)
	if want == nil {
		want = []string{}
	}
	if !slices.Equal(got, sorted(want)) {
		t.Errorf("Candidates(%s, %q) = %v, want %v", typ, capability, got, sorted(want))
	}
}

func list(t *testing.T, s registry.Store, typ registry.Type) []registry.Agent {
	t.Helper()
	agents, err := s.List(context.Background(), typ)
	if err != nil {
		t.Fatalf("List(%q): %v", typ, err)
	}
	return agents
}

func testRegisterNew(t *testing.T, s registry.Store) {
	a := newAgent("a1", "cost-1", registry.TypeCost, 8001, 0, "analyze", "report")
	stored, created, err := s.Register(context.Background(), a, unlimited)
	if err != nil || !created {
		t.Fatalf("Register = created %v, err %v; want created, nil", created, err)
	}
	checkAgent(t, "Register's result", stored, a)
	checkAgent(t, "Get after Register", mustGet(t, s, "a1"), a)
	checkCandidates(t, s, registry.TypeCost, "analyze", "a1")
	checkCandidates(t, s, registry.TypeCost, "report", "a1")

	b := newAgent("b1", "cost-2", registry.TypeCost, 8002, 1, "analyze")
	mustRegister(t, s, b)
	checkAgent(t, "first agent after a second registered", mustGet(t, s, "a1"), a)
	checkAgent(t, "second agent", mustGet(t, s, "b1"), b)
	checkCandidates(t, s, registry.TypeCost, "analyze", "a1", "b1")
	if got := ids(list(t, s, "")); !slices.Equal(got, []string{"a1", "b1"}) {
		t.Errorf("List = %v, want [a1 b1]", got)
	}
}

func testReRegister(t *testing.T, s registry.Store) {
	ctx := context.Background()
	first := newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x", "y")
	mustRegister(t, s, first)
	// An unrelated agent, so the index is not just one agent.
	other := newAgent("o1", "other", registry.TypeCost, 9000, 1, "x", "y", "z")
	mustRegister(t, s, other)
	if _, _, err := s.Heartbeat(ctx, "a1", "", registry.StatusDegraded, raw(`{"load":1}`), at(5), unlimited); err != nil {
		t.Fatal(err)
	}

	// The agent restarts: same name, host and port, a new ID proposed by
	// the caller, and everything else new.
	again := registry.Agent{
		ID:           "a2",
		Name:         "agent",
		Type:         registry.TypeCost,
		Host:         "10.0.0.1",
		Port:         8001,
		Capabilities: []string{"y", "z"},
		Status:       registry.StatusHealthy,
		Version:      "2.0.0",
		RegisteredAt: at(10),
		LastSeen:     at(10),
		Metadata:     raw(`{"zone":"b"}`),
	}
	stored, created, err := s.Register(ctx, again, unlimited)
	if err != nil {
		t.Fatalf("Register again: %v", err)
	}
	if created {
		t.Error("Register again: created = true, want false (same name, host and port)")
	}
	want := again
	want.ID, want.RegisteredAt = "a1", at(0)
	checkAgent(t, "Register again's result", stored, want)
	checkAgent(t, "Get after registering again", mustGet(t, s, "a1"), want)
	if _, err := s.Get(ctx, "a2"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get(proposed ID a2) = %v, want ErrNotFound: the agent keeps its first ID", err)
	}
	if got := ids(list(t, s, "")); !slices.Equal(got, []string{"a1", "o1"}) {
		t.Errorf("List = %v, want [a1 o1]: no duplicate, first registration order kept", got)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "o1") // a1 no longer lists x
	checkCandidates(t, s, registry.TypeCost, "y", "a1", "o1")
	checkCandidates(t, s, registry.TypeCost, "z", "a1", "o1")

	// Registering again with another type moves the agent out of every
	// (old type, capability) bucket.
	moved := again
	moved.ID, moved.Type, moved.Capabilities, moved.LastSeen = "a3", registry.TypePerformance, []string{"z", "w"}, at(20)
	stored, created, err = s.Register(ctx, moved, unlimited)
	if err != nil || created {
		t.Fatalf("Register with another type = created %v, err %v; want false, nil", created, err)
	}
	if stored.ID != "a1" || stored.Type != registry.TypePerformance {
		t.Errorf("Register with another type = %s %s, want a1 performance", stored.ID, stored.Type)
	}
	checkCandidates(t, s, registry.TypeCost, "y", "o1")
	checkCandidates(t, s, registry.TypeCost, "z", "o1")
	checkCandidates(t, s, registry.TypePerformance, "z", "a1")
	checkCandidates(t, s, registry.TypePerformance, "w", "a1")
	checkCandidates(t, s, registry.TypePerformance, "y")
	if got := ids(list(t, s, registry.TypeCost)); !slices.Equal(got, []string{"o1"}) {
		t.Errorf("List(cost) = %v, want [o1]", got)
	}
	if got := ids(list(t, s, registry.TypePerformance)); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("List(performance) = %v, want [a1]", got)
	}

	// Deleting it leaves nothing behind: registering once more is new.
	if _, err := s.Delete(ctx, "a1", ""); err != nil {
		t.Fatal(err)
	}
	checkCandidates(t, s, registry.TypePerformance, "z")
	fresh := newAgent("a4", "agent", registry.TypeCost, 8001, 30, "x")
	if _, created, err := s.Register(ctx, fresh, unlimited); err != nil || !created {
		t.Errorf("Register after Delete = created %v, err %v; want a new agent", created, err)
	}
}

func testDifferentIdentity(t *testing.T, s registry.Store) {
	base := newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x")
	mustRegister(t, s, base)
	otherPort := newAgent("a2", "agent", registry.TypeCost, 8002, 1, "x")
	otherHost := newAgent("a3", "agent", registry.TypeCost, 8001, 2, "x")
	otherHost.Host = "10.0.0.2"
	otherName := newAgent("a4", "agent-b", registry.TypeCost, 8001, 3, "x")
	for _, a := range []registry.Agent{otherPort, otherHost, otherName} {
		stored := mustRegister(t, s, a)
		if stored.ID != a.ID {
			t.Errorf("Register(%s) stored ID %s", a.ID, stored.ID)
		}
	}
	checkCandidates(t, s, registry.TypeCost, "x", "a1", "a2", "a3", "a4")
}

// testTakenID: a new identity proposing an ID already in use must be
// refused, not overwrite the other agent.
func testTakenID(t *testing.T, s registry.Store) {
	a := newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x")
	mustRegister(t, s, a)
	clash := newAgent("a1", "another", registry.TypePerformance, 9001, 1, "y")
	if _, _, err := s.Register(context.Background(), clash, unlimited); err == nil {
		t.Error("Register of another agent with a taken ID succeeded")
	}
	checkAgent(t, "agent whose ID was proposed again", mustGet(t, s, "a1"), a)
	checkCandidates(t, s, registry.TypePerformance, "y")
	checkCandidates(t, s, registry.TypeCost, "x", "a1")
	if n := len(list(t, s, "")); n != 1 {
		t.Errorf("List has %d agents, want 1", n)
	}
}

func testNotFound(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustRegister(t, s, newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x"))
	for _, id := range []string{"unknown", "", "A1"} {
		if _, err := s.Get(ctx, id); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
		}
		if _, _, err := s.Heartbeat(ctx, id, "", registry.StatusHealthy, nil, at(1), unlimited); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("Heartbeat(%q) = %v, want ErrNotFound", id, err)
		}
		if _, err := s.Delete(ctx, id, ""); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("Delete(%q) = %v, want ErrNotFound", id, err)
		}
	}
	deleted, err := s.Delete(ctx, "a1", "")
	if err != nil || deleted.ID != "a1" || deleted.Name != "agent" {
		t.Fatalf("Delete(a1) = %s %q, %v; want the agent", deleted.ID, deleted.Name, err)
	}
	if _, err := s.Get(ctx, "a1"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want ErrNotFound", err)
	}
	if _, _, err := s.Heartbeat(ctx, "a1", "", registry.StatusHealthy, nil, at(2), unlimited); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Heartbeat after Delete = %v, want ErrNotFound", err)
	}
	if _, err := s.Delete(ctx, "a1", ""); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if agents := list(t, s, ""); len(agents) != 0 {
		t.Errorf("List after Delete = %v, want none", ids(agents))
	}
	checkCandidates(t, s, registry.TypeCost, "x")
}

func testHeartbeat(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x")
	mustRegister(t, s, a)
	mustRegister(t, s, newAgent("b1", "bystander", registry.TypeCost, 8002, 0, "x"))

	want := a
	want.Status, want.LastSeen, want.HeartbeatMetadata = registry.StatusDegraded, at(30), raw(`{"load":0.5}`)
	got, previous, err := s.Heartbeat(ctx, "a1", "", registry.StatusDegraded, raw(`{"load":0.5}`), at(30), unlimited)
	if err != nil {
		t.Fatal(err)
	}
	if wantPrev := (registry.Liveness{Status: a.Status, LastSeen: a.LastSeen}); previous != wantPrev {
		t.Errorf("Heartbeat's previous liveness = %+v, want %+v (as registered)", previous, wantPrev)
	}
	checkAgent(t, "Heartbeat's result", got, want)
	checkAgent(t, "Get after Heartbeat", mustGet(t, s, "a1"), want)

	// Empty (nil) metadata keeps the last heartbeat's.
	want.Status, want.LastSeen = registry.StatusHealthy, at(60)
	got, previous, err = s.Heartbeat(ctx, "a1", "", registry.StatusHealthy, nil, at(60), unlimited)
	if err != nil {
		t.Fatal(err)
	}
	if wantPrev := (registry.Liveness{Status: registry.StatusDegraded, LastSeen: at(30)}); previous != wantPrev {
		t.Errorf("second Heartbeat's previous liveness = %+v, want %+v", previous, wantPrev)
	}
	checkAgent(t, "Heartbeat with nil metadata", got, want)
	checkAgent(t, "Get after Heartbeat with nil metadata", mustGet(t, s, "a1"), want)

	// Metadata replaces it, even the empty object.
	want.Status, want.LastSeen, want.HeartbeatMetadata = registry.StatusUnhealthy, at(90), raw(`{"queue":3}`)
	if _, _, err := s.Heartbeat(ctx, "a1", "", registry.StatusUnhealthy, raw(`{"queue":3}`), at(90), unlimited); err != nil {
		t.Fatal(err)
	}
	checkAgent(t, "Heartbeat with new metadata", mustGet(t, s, "a1"), want)
	want.Status, want.LastSeen, want.HeartbeatMetadata = registry.StatusHealthy, at(120), nil
	if _, _, err := s.Heartbeat(ctx, "a1", "", registry.StatusHealthy, raw(`{}`), at(120), unlimited); err != nil {
		t.Fatal(err)
	}
	checkAgent(t, "Heartbeat with empty metadata", mustGet(t, s, "a1"), want)

	// Candidates see the new status and time; the set is the same.
	cs, err := s.Candidates(ctx, registry.TypeCost, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := sorted(candidateIDs(cs)); !slices.Equal(got, []string{"a1", "b1"}) {
		t.Fatalf("Candidates after heartbeats = %v, want [a1 b1]", got)
	}
	for _, c := range cs {
		if c.ID == "a1" && (c.Status != registry.StatusHealthy || !c.LastSeen.Equal(at(120))) {
			t.Errorf("candidate a1 = %s seen %v, want healthy seen %v", c.Status, c.LastSeen, at(120))
		}
		if c.ID == "b1" && (c.Status != registry.StatusHealthy || !c.LastSeen.Equal(at(0))) {
			t.Errorf("bystander b1 = %s seen %v, want healthy seen %v (untouched)", c.Status, c.LastSeen, at(0))
		}
	}
	checkAgent(t, "bystander", mustGet(t, s, "b1"), newAgent("b1", "bystander", registry.TypeCost, 8002, 0, "x"))
}

func testList(t *testing.T, s registry.Store) {
	ctx := context.Background()
	// IDs in the reverse of registration order, so ordering by ID fails.
	regs := []registry.Agent{
		newAgent("z", "n1", registry.TypeCost, 8001, 0, "x"),
		newAgent("y", "n2", registry.TypePerformance, 8002, 1, "x"),
		newAgent("x", "n3", registry.TypeCost, 8003, 2, "x"),
		newAgent("w", "n4", registry.TypeResource, 8004, 3),
		newAgent("v", "n5", registry.TypeCost, 8005, 4, "y"),
	}
	for _, a := range regs {
		mustRegister(t, s, a)
	}
	for _, tc := range []struct {
		typ  registry.Type
		want []string
	}{
		{"", []string{"z", "y", "x", "w", "v"}},
		{registry.TypeCost, []string{"z", "x", "v"}},
		{registry.TypePerformance, []string{"y"}},
		{registry.TypeResource, []string{"w"}},
		{registry.TypeApplication, []string{}},
	} {
		got := list(t, s, tc.typ)
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("List(%q) = %v, want %v", tc.typ, ids(got), tc.want)
		}
		for _, a := range got {
			if tc.typ != "" && a.Type != tc.typ {
				t.Errorf("List(%q) returned %s of type %s", tc.typ, a.ID, a.Type)
			}
		}
	}
	for _, a := range list(t, s, "") {
		checkAgent(t, "List's "+a.ID, a, mustGet(t, s, a.ID))
	}

	// Re-registering the first and heartbeating others keeps the order.
	again := regs[0]
	again.ID, again.LastSeen, again.Version = "new-id", at(100), "2.0.0"
	if _, created, err := s.Register(ctx, again, unlimited); err != nil || created {
		t.Fatalf("Register again = %v, %v", created, err)
	}
	if _, _, err := s.Heartbeat(ctx, "x", "", registry.StatusHealthy, nil, at(101), unlimited); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "y", ""); err != nil {
		t.Fatal(err)
	}
	if got := ids(list(t, s, "")); !slices.Equal(got, []string{"z", "x", "w", "v"}) {
		t.Errorf("List after re-register, heartbeat and delete = %v, want [z x w v]", got)
	}
}

func testCandidates(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := newAgent("a", "a", registry.TypeCost, 8001, 0, "x", "y")
	b := newAgent("b", "b", registry.TypeCost, 8002, 1, "x")
	b.Host = "agent-b.internal"
	c := newAgent("c", "c", registry.TypePerformance, 8003, 2, "x")
	d := newAgent("d", "d", registry.TypeCost, 8004, 3, "z")
	e := newAgent("e", "e", registry.TypeCost, 8005, 4) // no capability
	for _, ag := range []registry.Agent{a, b, c, d, e} {
		mustRegister(t, s, ag)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "a", "b")
	checkCandidates(t, s, registry.TypeCost, "y", "a")
	checkCandidates(t, s, registry.TypeCost, "z", "d")
	checkCandidates(t, s, registry.TypePerformance, "x", "c")
	checkCandidates(t, s, registry.TypePerformance, "y")
	checkCandidates(t, s, registry.TypeResource, "x")
	checkCandidates(t, s, registry.TypeCost, "X") // capabilities are exact
	checkCandidates(t, s, registry.TypeCost, "")
	checkCandidates(t, s, "", "x") // the type is required, not a wildcard

	// buf is appended to, its contents kept.
	sentinel := registry.Candidate{ID: "sentinel", Port: 1}
	buf := make([]registry.Candidate, 1, 8)
	buf[0] = sentinel
	out, err := s.Candidates(ctx, registry.TypeCost, "x", buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 3 || out[0] != sentinel {
		t.Fatalf("Candidates with buf = %+v, want the sentinel then two agents", out)
	}
	for _, cand := range out[1:] {
		want := map[string]registry.Agent{"a": a, "b": b}[cand.ID]
		if want.ID == "" {
			t.Errorf("unexpected candidate %+v", cand)
			continue
		}
		if cand.Host != want.Host || cand.Port != want.Port || cand.Status != want.Status || !cand.LastSeen.Equal(want.LastSeen) {
			t.Errorf("candidate %+v, want host %s port %d %s seen %v", cand, want.Host, want.Port, want.Status, want.LastSeen)
		}
	}
	out2, err := s.Candidates(ctx, registry.TypeCost, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(candidateIDs(out[1:]), candidateIDs(out2)) {
		t.Errorf("Candidates order changed without a change to the set: %v then %v", candidateIDs(out[1:]), candidateIDs(out2))
	}
	if none, err := s.Candidates(ctx, registry.TypeApplication, "x", buf); err != nil || len(none) != 1 || none[0] != sentinel {
		t.Errorf("Candidates with none = %+v, %v; want buf unchanged", none, err)
	}

	if _, err := s.Delete(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "b")
	checkCandidates(t, s, registry.TypeCost, "y")
	if _, err := s.Evict(ctx, at(4)); err != nil { // b, c, d last seen before 4s
		t.Fatal(err)
	}
	checkCandidates(t, s, registry.TypeCost, "x")
	checkCandidates(t, s, registry.TypePerformance, "x")
	checkCandidates(t, s, registry.TypeCost, "z")
}

func testMarkUnreachable(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := newAgent("a", "a", registry.TypeCost, 8001, 0, "x")
	b := newAgent("b", "b", registry.TypeCost, 8002, 10, "x")
	c := newAgent("c", "c", registry.TypeCost, 8003, 20, "x")
	for _, ag := range []registry.Agent{a, b, c} {
		mustRegister(t, s, ag)
	}
	if _, _, err := s.Heartbeat(ctx, "b", "", registry.StatusDegraded, nil, at(10), unlimited); err != nil {
		t.Fatal(err)
	}

	marked, err := s.MarkUnreachable(ctx, at(20)) // c, seen exactly at the cutoff, stays
	if err != nil {
		t.Fatal(err)
	}
	if got := sorted(ids(marked)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("MarkUnreachable(20s) = %v, want [a b]", got)
	}
	for _, m := range marked {
		want := map[string]registry.Agent{"a": a, "b": b}[m.ID]
		want.Status = registry.StatusUnreachable
		checkAgent(t, "MarkUnreachable's "+m.ID, m, want)
		checkAgent(t, "Get of marked "+m.ID, mustGet(t, s, m.ID), want)
	}
	if got := mustGet(t, s, "c").Status; got != registry.StatusHealthy {
		t.Errorf("c = %s, want healthy", got)
	}
	cs, err := s.Candidates(ctx, registry.TypeCost, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, cand := range cs {
		want := registry.StatusUnreachable
		if cand.ID == "c" {
			want = registry.StatusHealthy
		}
		if cand.Status != want {
			t.Errorf("candidate %s = %s, want %s", cand.ID, cand.Status, want)
		}
	}

	// Idempotent: already unreachable agents are not returned again.
	again, err := s.MarkUnreachable(ctx, at(20))
	if err != nil || len(again) != 0 {
		t.Errorf("second MarkUnreachable = %v, %v; want none", ids(again), err)
	}
	// A heartbeat revives; later marking sees the new last-seen time.
	if _, _, err := s.Heartbeat(ctx, "a", "", registry.StatusHealthy, nil, at(25), unlimited); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "a").Status; got != registry.StatusHealthy {
		t.Errorf("a after heartbeat = %s, want healthy", got)
	}
	if again, err := s.MarkUnreachable(ctx, at(25)); err != nil || !slices.Equal(ids(again), []string{"c"}) {
		t.Errorf("MarkUnreachable(25s) = %v, %v; want [c] (a, seen at 25s, stays)", ids(again), err)
	}
	later, err := s.MarkUnreachable(ctx, at(26))
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(later); !slices.Equal(got, []string{"a"}) {
		t.Errorf("MarkUnreachable(26s) = %v, want [a]", got)
	}
	if n := len(list(t, s, "")); n != 3 {
		t.Errorf("MarkUnreachable removed agents: %d left, want 3", n)
	}
}

func testEvict(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := newAgent("a", "a", registry.TypeCost, 8001, 0, "x")
	b := newAgent("b", "b", registry.TypePerformance, 8002, 10, "x")
	c := newAgent("c", "c", registry.TypeCost, 8003, 20, "x")
	for _, ag := range []registry.Agent{a, b, c} {
		mustRegister(t, s, ag)
	}
	if _, err := s.MarkUnreachable(ctx, at(5)); err != nil { // a unreachable, b healthy
		t.Fatal(err)
	}
	evicted, err := s.Evict(ctx, at(20)) // c, seen exactly at the cutoff, stays
	if err != nil {
		t.Fatal(err)
	}
	if got := sorted(ids(evicted)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Evict(20s) = %v, want [a b] whatever their status", got)
	}
	for _, e := range evicted {
		want := map[string]registry.Agent{"a": a, "b": b}[e.ID]
		if e.ID == "a" {
			want.Status = registry.StatusUnreachable
		}
		checkAgent(t, "Evict's "+e.ID, e, want)
		if _, err := s.Get(ctx, e.ID); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("Get(evicted %s) = %v, want ErrNotFound", e.ID, err)
		}
	}
	if got := ids(list(t, s, "")); !slices.Equal(got, []string{"c"}) {
		t.Errorf("List after Evict = %v, want [c]", got)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "c")
	checkCandidates(t, s, registry.TypePerformance, "x")
	if again, err := s.Evict(ctx, at(20)); err != nil || len(again) != 0 {
		t.Errorf("second Evict = %v, %v; want none", ids(again), err)
	}
	// An evicted agent that comes back is a new agent.
	back := newAgent("a-new", "a", registry.TypeCost, 8001, 30, "x")
	stored, created, err := s.Register(ctx, back, unlimited)
	if err != nil || !created || stored.ID != "a-new" {
		t.Errorf("Register after eviction = %s created %v, %v; want a new agent a-new", stored.ID, created, err)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "a-new", "c")
}

// testNoAliasing: what a caller holds, passed in or returned, is its own.
// Changing it, down to a capability or a byte of metadata, changes nothing
// in the store.
func testNoAliasing(t *testing.T, s registry.Store) {
	ctx := context.Background()
	caps := []string{"x", "y"}
	meta := raw(`{"zone":"a","labels":{"team":"infra"},"tags":["a","b"]}`)
	a := newAgent("a1", "agent", registry.TypeCost, 8001, 0)
	a.Capabilities, a.Metadata = caps, meta
	want := a
	want.Capabilities = []string{"x", "y"}
	want.Metadata = raw(`{"zone":"a","labels":{"team":"infra"},"tags":["a","b"]}`)

	// overwrite changes every letter of js in place, keeping it JSON.
	overwrite := func(js json.RawMessage) {
		for i, c := range js {
			if c >= 'a' && c <= 'z' {
				js[i] = 'q'
			}
		}
	}
	stored := mustRegister(t, s, a)
	caps[0] = "changed"
	overwrite(meta)
	checkAgent(t, "after changing the registered slices", mustGet(t, s, "a1"), want)

	scribble := func(a *registry.Agent) {
		a.Name, a.Status, a.Port, a.Owner = "scribbled", registry.StatusUnhealthy, 1, "scribbled"
		if len(a.Capabilities) > 0 {
			a.Capabilities[0] = "scribbled"
		}
		overwrite(a.Metadata)
		overwrite(a.HeartbeatMetadata)
	}
	scribble(&stored)
	checkAgent(t, "after changing Register's result", mustGet(t, s, "a1"), want)
	checkCandidates(t, s, registry.TypeCost, "x", "a1")

	got := mustGet(t, s, "a1")
	scribble(&got)
	checkAgent(t, "after changing Get's result", mustGet(t, s, "a1"), want)

	for _, l := range list(t, s, "") {
		scribble(&l)
	}
	checkAgent(t, "after changing List's result", mustGet(t, s, "a1"), want)

	hbMeta := raw(`{"load":"high"}`)
	hb, _, err := s.Heartbeat(ctx, "a1", "", registry.StatusHealthy, hbMeta, at(1), unlimited)
	if err != nil {
		t.Fatal(err)
	}
	want.LastSeen, want.HeartbeatMetadata = at(1), raw(`{"load":"high"}`)
	overwrite(hbMeta)
	scribble(&hb)
	checkAgent(t, "after changing the heartbeat's metadata and result", mustGet(t, s, "a1"), want)

	marked, err := s.MarkUnreachable(ctx, at(2))
	if err != nil || len(marked) != 1 {
		t.Fatalf("MarkUnreachable = %v, %v", ids(marked), err)
	}
	want.Status = registry.StatusUnreachable
	scribble(&marked[0])
	checkAgent(t, "after changing MarkUnreachable's result", mustGet(t, s, "a1"), want)

	cs, err := s.Candidates(ctx, registry.TypeCost, "x", nil)
	if err != nil || len(cs) != 1 {
		t.Fatalf("Candidates = %v, %v", cs, err)
	}
	cs[0].Status, cs[0].Port = registry.StatusHealthy, 1
	checkAgent(t, "after changing a Candidate", mustGet(t, s, "a1"), want)
	checkCandidates(t, s, registry.TypeCost, "x", "a1")
	checkCandidates(t, s, registry.TypeCost, "scribbled")
}

// Owners of the ownership test: two agent tokens' fingerprints.
const (
	ownerA = "sha256:aaaaaaaaaaaa"
	ownerB = "sha256:bbbbbbbbbbbb"
)

// testOwner: an agent with an owner is changed only by that owner or by a
// caller without one (an operator, or no authentication); a refused change
// changes nothing. An agent without an owner takes the first registration's.
func testOwner(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x")
	a.Owner = ownerA
	checkAgent(t, "Register's result", mustRegister(t, s, a), a)
	checkAgent(t, "Get of a bound agent", mustGet(t, s, "a1"), a)

	// Another token can neither take it over nor touch it.
	thief := newAgent("t1", "agent", registry.TypePerformance, 8001, 1, "steal")
	thief.Owner, thief.Metadata = ownerB, raw(`{"owned":true}`)
	if _, _, err := s.Register(ctx, thief, unlimited); !errors.Is(err, registry.ErrNotOwner) {
		t.Errorf("Register by another owner = %v, want ErrNotOwner", err)
	}
	if _, _, err := s.Heartbeat(ctx, "a1", ownerB, registry.StatusUnhealthy, raw(`{"owned":true}`), at(2), unlimited); !errors.Is(err, registry.ErrNotOwner) {
		t.Errorf("Heartbeat by another owner = %v, want ErrNotOwner", err)
	}
	if _, err := s.Delete(ctx, "a1", ownerB); !errors.Is(err, registry.ErrNotOwner) {
		t.Errorf("Delete by another owner = %v, want ErrNotOwner", err)
	}
	checkAgent(t, "after refused changes", mustGet(t, s, "a1"), a)
	if _, err := s.Get(ctx, "t1"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get(t1) = %v: a refused registration was stored", err)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "a1")
	checkCandidates(t, s, registry.TypePerformance, "steal")

	// Its owner may.
	want := a
	want.Status, want.LastSeen, want.HeartbeatMetadata = registry.StatusDegraded, at(3), raw(`{"load":1}`)
	if _, _, err := s.Heartbeat(ctx, "a1", ownerA, registry.StatusDegraded, raw(`{"load":1}`), at(3), unlimited); err != nil {
		t.Fatalf("Heartbeat by the owner: %v", err)
	}
	checkAgent(t, "after the owner's heartbeat", mustGet(t, s, "a1"), want)
	again := a
	again.ID, again.Version, again.LastSeen = "a2", "2.0.0", at(4)
	stored, created, err := s.Register(ctx, again, unlimited)
	if err != nil || created {
		t.Fatalf("Register again by the owner = created %v, %v; want the same agent", created, err)
	}
	want = again
	want.ID, want.RegisteredAt = "a1", at(0)
	checkAgent(t, "Register again by the owner", stored, want)

	// A caller without an owner may too, and the owner stays.
	anonymous := again
	anonymous.ID, anonymous.Owner, anonymous.Version = "a3", "", "3.0.0"
	if stored, _, err = s.Register(ctx, anonymous, unlimited); err != nil || stored.Owner != ownerA {
		t.Fatalf("Register again without an owner = owner %q, %v; want allowed, owner %s kept", stored.Owner, err, ownerA)
	}
	if _, _, err := s.Heartbeat(ctx, "a1", "", registry.StatusHealthy, nil, at(5), unlimited); err != nil {
		t.Errorf("Heartbeat without an owner: %v", err)
	}
	if got := mustGet(t, s, "a1"); got.Owner != ownerA || got.Version != "3.0.0" {
		t.Errorf("agent = owner %q version %s, want owner %s version 3.0.0", got.Owner, got.Version, ownerA)
	}

	// An agent without an owner: anyone may change it, a heartbeat binds
	// nothing, and the first registration with an owner binds it.
	free := newAgent("f1", "free", registry.TypeCost, 8002, 0, "x")
	mustRegister(t, s, free)
	if _, _, err := s.Heartbeat(ctx, "f1", ownerB, registry.StatusHealthy, nil, at(1), unlimited); err != nil {
		t.Errorf("Heartbeat of an agent without an owner: %v", err)
	}
	if got := mustGet(t, s, "f1"); got.Owner != "" {
		t.Errorf("a heartbeat bound the agent to %q", got.Owner)
	}
	claim := free
	claim.ID, claim.Owner = "f2", ownerB
	if stored, created, err := s.Register(ctx, claim, unlimited); err != nil || created || stored.ID != "f1" || stored.Owner != ownerB {
		t.Fatalf("Register of an agent without an owner = %s owner %q created %v, %v; want f1 bound to %s", stored.ID, stored.Owner, created, err, ownerB)
	}
	claim.ID, claim.Owner = "f3", ownerA
	if _, _, err := s.Register(ctx, claim, unlimited); !errors.Is(err, registry.ErrNotOwner) {
		t.Errorf("Register by another owner once bound = %v, want ErrNotOwner", err)
	}

	// Deleting: by a caller without an owner, or by the owner.
	if _, err := s.Delete(ctx, "a1", ""); err != nil {
		t.Errorf("Delete without an owner: %v", err)
	}
	if deleted, err := s.Delete(ctx, "f1", ownerB); err != nil || deleted.Owner != ownerB {
		t.Errorf("Delete by the owner = owner %q, %v", deleted.Owner, err)
	}
	if n := len(list(t, s, "")); n != 0 {
		t.Errorf("%d agents left, want none", n)
	}
}

// testMaxAgents: past maxAgents a new agent is refused and nothing is
// stored; a known agent may always register again.
func testMaxAgents(t *testing.T, s registry.Store) {
	ctx := context.Background()
	for i := range 3 {
		a := newAgent(fmt.Sprintf("a%d", i), fmt.Sprintf("agent-%d", i), registry.TypeCost, 8000+i, i, "x")
		if _, created, err := s.Register(ctx, a, agentCap(3)); err != nil || !created {
			t.Fatalf("Register %d of 3 = created %v, %v", i+1, created, err)
		}
	}
	extra := newAgent("a3", "agent-3", registry.TypePerformance, 8003, 3, "y")
	if _, _, err := s.Register(ctx, extra, agentCap(3)); !errors.Is(err, registry.ErrFull) {
		t.Fatalf("Register of a 4th agent with maxAgents 3 = %v, want ErrFull", err)
	}
	if _, err := s.Get(ctx, "a3"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get of the refused agent = %v, want ErrNotFound", err)
	}
	checkCandidates(t, s, registry.TypePerformance, "y")
	if n := len(list(t, s, "")); n != 3 {
		t.Errorf("%d agents after a refused registration, want 3", n)
	}

	// A known agent registers again at the limit, and even below it.
	again := newAgent("again", "agent-0", registry.TypeCost, 8000, 10, "x", "z")
	for _, max := range []int{3, 1} {
		stored, created, err := s.Register(ctx, again, agentCap(max))
		if err != nil || created || stored.ID != "a0" {
			t.Errorf("Register again of a0 with maxAgents %d = %s created %v, %v; want a0 updated", max, stored.ID, created, err)
		}
	}
	if _, _, err := s.Register(ctx, extra, agentCap(1)); !errors.Is(err, registry.ErrFull) {
		t.Errorf("Register of a new agent with maxAgents below the count = %v, want ErrFull", err)
	}

	// Room again once an agent leaves.
	if _, err := s.Delete(ctx, "a1", ""); err != nil {
		t.Fatal(err)
	}
	if _, created, err := s.Register(ctx, extra, agentCap(3)); err != nil || !created {
		t.Errorf("Register after a Delete = created %v, %v; want a new agent", created, err)
	}
	if _, _, err := s.Register(ctx, newAgent("a4", "agent-4", registry.TypeCost, 8004, 4), agentCap(3)); !errors.Is(err, registry.ErrFull) {
		t.Errorf("Register past the limit again = %v, want ErrFull", err)
	}
}

// testMaxAgentsConcurrent: many new agents at once never pass the limit
// (run it with the race detector); known agents keep registering again.
func testMaxAgentsConcurrent(t *testing.T, s registry.Store) {
	const (
		workers  = 16
		perEach  = 20
		maxAgent = 50
	)
	ctx := context.Background()
	var created, full atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers*perEach)
	for w := range workers {
		wg.Go(func() {
			for i := range perEach {
				n := w*perEach + i
				a := newAgent(fmt.Sprintf("id-%d", n), fmt.Sprintf("agent-%d", n), registry.TypeCost, 8000, 0, "x")
				_, isNew, err := s.Register(ctx, a, agentCap(maxAgent))
				switch {
				case errors.Is(err, registry.ErrFull):
					full.Add(1)
				case err != nil:
					errs <- err
				case isNew:
					created.Add(1)
					// Registering again at the limit always works.
					a.ID = a.ID + "-again"
					if _, again, err := s.Register(ctx, a, agentCap(maxAgent)); err != nil || again {
						errs <- fmt.Errorf("registering %s again = created %v, %w", a.Name, again, err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if created.Load() != maxAgent || full.Load() != workers*perEach-maxAgent {
		t.Errorf("%d created and %d refused as full, want %d and %d", created.Load(), full.Load(), maxAgent, workers*perEach-maxAgent)
	}
	if n := len(list(t, s, "")); n != maxAgent {
		t.Errorf("%d agents stored, want %d", n, maxAgent)
	}
}

// counts returns Count's answer as "type/status" -> agents, failing on a
// pair listed twice.
func counts(t *testing.T, s registry.Store, silentSince time.Time) map[string]int {
	t.Helper()
	cs, err := s.Count(context.Background(), silentSince)
	if err != nil {
		t.Fatalf("Count: %v", err)
	}
	out := map[string]int{}
	for _, c := range cs {
		key := string(c.Type) + "/" + string(c.Status)
		if _, dup := out[key]; dup {
			t.Errorf("Count lists %s twice", key)
		}
		if c.Agents != 0 {
			out[key] = c.Agents
		}
	}
	return out
}

func testCount(t *testing.T, s registry.Store) {
	ctx := context.Background()
	if got := counts(t, s, at(0)); len(got) != 0 {
		t.Errorf("Count of an empty store = %v, want nothing", got)
	}
	for _, a := range []registry.Agent{
		newAgent("c1", "c1", registry.TypeCost, 8001, 100, "x"),
		newAgent("c2", "c2", registry.TypeCost, 8002, 100),
		newAgent("c3", "c3", registry.TypeCost, 8003, 100),
		newAgent("p1", "p1", registry.TypePerformance, 8004, 10), // silent since 10s
		newAgent("r1", "r1", registry.TypeResource, 8005, 100),
		newAgent("r2", "r2", registry.TypeResource, 8006, 20), // marked unreachable below
	} {
		mustRegister(t, s, a)
	}
	if _, _, err := s.Heartbeat(ctx, "c3", "", registry.StatusDegraded, nil, at(100), unlimited); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Heartbeat(ctx, "r1", "", registry.StatusUnhealthy, nil, at(100), unlimited); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkUnreachable(ctx, at(30)); err != nil { // p1 and r2
		t.Fatal(err)
	}
	if _, _, err := s.Heartbeat(ctx, "p1", "", registry.StatusHealthy, nil, at(40), unlimited); err != nil { // p1 back
		t.Fatal(err)
	}
	for _, tc := range []struct {
		silentSince int
		want        map[string]int
	}{
		// Nobody silent: the stored statuses.
		{0, map[string]int{"cost/healthy": 2, "cost/degraded": 1, "performance/healthy": 1, "resource/unhealthy": 1, "resource/unreachable": 1}},
		// Seen at exactly the cutoff: not silent.
		{40, map[string]int{"cost/healthy": 2, "cost/degraded": 1, "performance/healthy": 1, "resource/unhealthy": 1, "resource/unreachable": 1}},
		// p1 silent since 40s counts as unreachable, whatever is stored.
		{41, map[string]int{"cost/healthy": 2, "cost/degraded": 1, "performance/unreachable": 1, "resource/unhealthy": 1, "resource/unreachable": 1}},
		// Everyone silent.
		{101, map[string]int{"cost/unreachable": 3, "performance/unreachable": 1, "resource/unreachable": 2}},
	} {
		if got := counts(t, s, at(tc.silentSince)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Count(silent since %ds) = %v, want %v", tc.silentSince, got, tc.want)
		}
	}
	if _, err := s.Delete(ctx, "c1", ""); err != nil {
		t.Fatal(err)
	}
	if got := counts(t, s, at(0))["cost/healthy"]; got != 1 {
		t.Errorf("Count after a Delete: cost/healthy = %d, want 1", got)
	}
}

func testCancelledContext(t *testing.T, s registry.Store) {
	mustRegister(t, s, newAgent("a1", "agent", registry.TypeCost, 8001, 0, "x"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	checks := map[string]error{}
	_, _, checks["Register"] = s.Register(ctx, newAgent("b1", "b", registry.TypeCost, 8002, 1, "x"), unlimited)
	_, checks["Count"] = s.Count(ctx, at(0))
	_, _, checks["Heartbeat"] = s.Heartbeat(ctx, "a1", "", registry.StatusDegraded, nil, at(1), unlimited)
	_, checks["Delete"] = s.Delete(ctx, "a1", "")
	_, checks["Get"] = s.Get(ctx, "a1")
	_, checks["List"] = s.List(ctx, "")
	_, checks["Candidates"] = s.Candidates(ctx, registry.TypeCost, "x", nil)
	_, checks["MarkUnreachable"] = s.MarkUnreachable(ctx, at(100))
	_, checks["Evict"] = s.Evict(ctx, at(100))
	_, checks["MetadataBytes"] = s.MetadataBytes(ctx)
	for name, err := range checks {
		if err == nil {
			t.Errorf("%s with a cancelled context succeeded", name)
		}
	}
	// Whatever a store did before noticing, the agent must be whole.
	if a, err := s.Get(context.Background(), "a1"); err == nil && a.ID != "a1" {
		t.Errorf("Get after cancelled calls = %+v", a)
	}
}

// testConcurrent hammers one store from many goroutines (run it with the
// race detector), then checks that its indexes agree.
func testConcurrent(t *testing.T, s registry.Store) {
	const (
		workers    = 16
		opsEach    = 400
		identities = 24
	)
	types := registry.Types[:3]
	capabilities := []string{"c0", "c1", "c2", "c3"}
	ctx := context.Background()
	// Less than the 24 agents' metadata could take (about 22 bytes each),
	// so some changes are refused while others delete and evict.
	const maxBytes = 300
	lim := budget(maxBytes)
	var nextID atomic.Int64
	var mu sync.Mutex
	var known []string // every ID Register returned

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42)) //nolint:gosec // G404: a reproducible test workload, not a secret
			pickKnown := func() string {
				mu.Lock()
				defer mu.Unlock()
				if len(known) == 0 {
					return "none"
				}
				return known[rng.IntN(len(known))]
			}
			fail := func(format string, args ...any) {
				select {
				case errs <- fmt.Errorf(format, args...):
				default:
				}
			}
			for i := range opsEach {
				now := at(i)
				switch op := rng.IntN(10); op {
				case 0, 1, 2:
					n := rng.IntN(identities)
					caps := []string{}
					for _, c := range capabilities {
						if rng.IntN(2) == 0 {
							caps = append(caps, c)
						}
					}
					a := registry.Agent{
						ID:           fmt.Sprintf("id-%d", nextID.Add(1)),
						Name:         fmt.Sprintf("agent-%d", n),
						Type:         types[rng.IntN(len(types))],
						Host:         "10.0.0.1",
						Port:         8000 + n,
						Capabilities: caps,
						Status:       registry.StatusHealthy,
						RegisteredAt: now,
						LastSeen:     now,
						Metadata:     raw(fmt.Sprintf(`{"worker":%d}`, w)),
					}
					stored, _, err := s.Register(ctx, a, lim)
					if errors.Is(err, registry.ErrMetadataBudget) {
						continue
					}
					if err != nil {
						fail("Register: %v", err)
						continue
					}
					if stored.Name != a.Name || stored.Port != a.Port || stored.Type != a.Type || !slices.Equal(stored.Capabilities, caps) {
						fail("Register(%s) returned %+v", a.Name, stored)
					}
					mu.Lock()
					known = append(known, stored.ID)
					mu.Unlock()
				case 3, 4:
					status := registry.ReportedStatuses[rng.IntN(len(registry.ReportedStatuses))]
					a, _, err := s.Heartbeat(ctx, pickKnown(), "", status, raw(fmt.Sprintf(`{"i":%d}`, i)), now, lim)
					if err == nil && (a.Status != status || !a.LastSeen.Equal(now)) {
						fail("Heartbeat returned %s seen %v, want %s seen %v", a.Status, a.LastSeen, status, now)
					} else if err != nil && !errors.Is(err, registry.ErrNotFound) && !errors.Is(err, registry.ErrMetadataBudget) {
						fail("Heartbeat: %v", err)
					}
				case 5:
					if _, err := s.Delete(ctx, pickKnown(), ""); err != nil && !errors.Is(err, registry.ErrNotFound) {
						fail("Delete: %v", err)
					}
				case 6:
					agents, err := s.List(ctx, types[rng.IntN(len(types))])
					if err != nil {
						fail("List: %v", err)
					}
					for j := 1; j < len(agents); j++ {
						if agents[j].RegisteredAt.Before(agents[j-1].RegisteredAt) {
							fail("List out of registration order")
						}
					}
				case 7:
					cs, err := s.Candidates(ctx, types[rng.IntN(len(types))], capabilities[rng.IntN(len(capabilities))], nil)
					if err != nil {
						fail("Candidates: %v", err)
					}
					seen := map[string]bool{}
					for _, c := range cs {
						if seen[c.ID] {
							fail("Candidates lists %s twice", c.ID)
						}
						seen[c.ID] = true
					}
				case 8:
					if _, err := s.Get(ctx, pickKnown()); err != nil && !errors.Is(err, registry.ErrNotFound) {
						fail("Get: %v", err)
					}
				case 9:
					if rng.IntN(2) == 0 {
						_, err := s.MarkUnreachable(ctx, at(i-50))
						if err != nil {
							fail("MarkUnreachable: %v", err)
						}
					} else if _, err := s.Evict(ctx, at(i-200)); err != nil {
						fail("Evict: %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	CheckConsistent(t, s, types, capabilities)
	if n := held(t, s); n > maxBytes {
		t.Errorf("MetadataBytes = %d after the concurrent run, past the budget of %d", n, maxBytes)
	}
	if len(list(t, s, "")) == 0 {
		t.Log("no agent left after the concurrent run; consistency checked on an empty store")
	}
}

// CheckConsistent fails t unless the store's views of its agents agree:
// List, Get and Candidates show the same agents with the same fields, each
// once, no two agents share a name, host and port, and MetadataBytes is
// the sum of the listed agents' metadata.
func CheckConsistent(t *testing.T, s registry.Store, types []registry.Type, capabilities []string) {
	t.Helper()
	ctx := context.Background()
	all := list(t, s, "")
	byID := map[string]registry.Agent{}
	identities := map[string]string{}
	for _, a := range all {
		if _, dup := byID[a.ID]; dup {
			t.Errorf("List has %s twice", a.ID)
		}
		byID[a.ID] = a
		key := fmt.Sprintf("%s|%s|%d", a.Name, a.Host, a.Port)
		if other, dup := identities[key]; dup {
			t.Errorf("agents %s and %s share name, host and port %s", other, a.ID, key)
		}
		identities[key] = a.ID
		checkAgent(t, "Get vs List of "+a.ID, mustGet(t, s, a.ID), a)
	}
	perType := 0
	for _, typ := range registry.Types {
		for _, a := range list(t, s, typ) {
			perType++
			if a.Type != typ {
				t.Errorf("List(%s) has %s of type %s", typ, a.ID, a.Type)
			}
		}
	}
	if perType != len(all) {
		t.Errorf("List by type finds %d agents, List finds %d", perType, len(all))
	}
	listed := map[string]int{}
	for _, a := range all {
		listed[string(a.Type)+"/"+string(a.Status)]++
	}
	if got := counts(t, s, time.Time{}); !reflect.DeepEqual(got, listed) {
		t.Errorf("Count = %v, but List shows %v", got, listed)
	}
	metadata := 0
	for _, a := range all {
		metadata += metadataSize(a)
	}
	if got := held(t, s); got != metadata {
		t.Errorf("MetadataBytes = %d, but the listed agents hold %d", got, metadata)
	}
	for _, typ := range types {
		for _, c := range capabilities {
			var want []string
			for _, a := range all {
				if a.Type == typ && slices.Contains(a.Capabilities, c) {
					want = append(want, a.ID)
				}
			}
			cs, err := s.Candidates(ctx, typ, c, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := candidateIDs(cs); !slices.Equal(sorted(got), sorted(want)) {
				t.Errorf("Candidates(%s, %s) = %v, but the agents listing it are %v", typ, c, sorted(got), sorted(want))
			}
			for _, cand := range cs {
				a := byID[cand.ID]
				if cand.Host != a.Host || cand.Port != a.Port || cand.Status != a.Status || !cand.LastSeen.Equal(a.LastSeen) {
					t.Errorf("candidate %+v disagrees with the agent (%s:%d %s seen %v)", cand, a.Host, a.Port, a.Status, a.LastSeen)
				}
			}
		}
	}
}
