package registrytest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// chosenAgent is a healthy agent that chose its own ID (the /api/v1
// dialect), registered and last seen at the given second after t0, with a
// host taken from its registration's request.
func chosenAgent(id string, typ registry.Type, port, second int, caps ...string) registry.Agent {
	a := newAgent(id, id, typ, port, second, caps...)
	a.ChosenID = true
	a.AnnouncedHost, a.AddressSource = "0.0.0.0", registry.AddressRequest
	a.HealthCheckEndpoint = "/api/v1/health"
	return a
}

// testChosenID: an agent with a chosen ID is created, then registering
// the same ID again updates it (whatever its name, host and port), keeping
// the ID and RegisteredAt, never duplicating it.
func testChosenID(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := chosenAgent("performance-agent-001", registry.TypePerformance, 8002, 0, "x", "y")
	stored, created, err := s.Register(ctx, a, unlimited)
	if err != nil || !created {
		t.Fatalf("Register = created %v, %v; want a new agent", created, err)
	}
	checkAgent(t, "Register's result", stored, a)
	checkAgent(t, "Get after Register", mustGet(t, s, a.ID), a)
	mustRegister(t, s, newAgent("g1", "generated", registry.TypePerformance, 9000, 1, "x"))
	if _, _, err := s.Heartbeat(ctx, a.ID, "", registry.StatusDegraded, raw(`{"load":1}`), at(2), unlimited); err != nil {
		t.Fatal(err)
	}

	// The agent restarts elsewhere: another host, port, name, type and
	// capabilities, the same ID.
	again := a
	again.Name, again.Host, again.Port, again.Type = "renamed", "10.0.0.9", 8102, registry.TypeResource
	again.Capabilities, again.Version, again.Metadata = []string{"y", "z"}, "2.0.0", raw(`{"zone":"b"}`)
	again.AnnouncedHost, again.AddressSource, again.HealthCheckEndpoint = "10.0.0.9", registry.AddressAnnounced, ""
	again.RegisteredAt, again.LastSeen = at(10), at(10)
	stored, created, err = s.Register(ctx, again, unlimited)
	if err != nil || created {
		t.Fatalf("Register again = created %v, %v; want the same agent updated", created, err)
	}
	want := again
	want.RegisteredAt = at(0)
	checkAgent(t, "Register again's result", stored, want)
	checkAgent(t, "Get after registering again", mustGet(t, s, a.ID), want)
	if got := ids(list(t, s, "")); !slices.Equal(got, []string{a.ID, "g1"}) {
		t.Errorf("List = %v, want [%s g1]: no duplicate, first registration order kept", got, a.ID)
	}
	checkCandidates(t, s, registry.TypePerformance, "x", "g1")
	checkCandidates(t, s, registry.TypePerformance, "y")
	checkCandidates(t, s, registry.TypeResource, "y", a.ID)
	checkCandidates(t, s, registry.TypeResource, "z", a.ID)

	// A heartbeat and a delete find it by its ID; once deleted, the ID is
	// new again.
	if _, _, err := s.Heartbeat(ctx, a.ID, "", registry.StatusHealthy, nil, at(11), unlimited); err != nil {
		t.Errorf("Heartbeat: %v", err)
	}
	if _, err := s.Delete(ctx, a.ID, ""); err != nil {
		t.Fatal(err)
	}
	checkCandidates(t, s, registry.TypeResource, "z")
	if _, created, err := s.Register(ctx, a, unlimited); err != nil || !created {
		t.Errorf("Register after Delete = created %v, %v; want a new agent", created, err)
	}
}

// testChosenIDTaken: a chosen ID that an agent with a generated ID has is
// refused with ErrIDTaken and changes nothing; it never takes the agent
// over.
func testChosenIDTaken(t *testing.T, s registry.Store) {
	ctx := context.Background()
	generated := newAgent("g1", "agent", registry.TypeCost, 8001, 0, "x")
	mustRegister(t, s, generated)
	clash := chosenAgent("g1", registry.TypePerformance, 9001, 1, "y")
	for _, c := range []registry.Agent{clash, func() registry.Agent {
		same := generated // even with the generated agent's name, host and port
		same.ChosenID, same.Version = true, "9.9.9"
		return same
	}()} {
		if _, _, err := s.Register(ctx, c, unlimited); !errors.Is(err, registry.ErrIDTaken) {
			t.Errorf("Register with a generated agent's ID as a chosen ID = %v, want ErrIDTaken", err)
		}
	}
	checkAgent(t, "the generated agent", mustGet(t, s, "g1"), generated)
	checkCandidates(t, s, registry.TypePerformance, "y")
	checkCandidates(t, s, registry.TypeCost, "x", "g1")
	if n := len(list(t, s, "")); n != 1 {
		t.Errorf("List has %d agents, want 1", n)
	}
	if n, err := s.MetadataBytes(ctx); err != nil || n != generated.MetadataBytes() {
		t.Errorf("MetadataBytes = %d, %v; want %d", n, err, generated.MetadataBytes())
	}

	// The other way round: a new agent whose generated ID is a chosen
	// one's is refused too (Register's "taken ID" error).
	chosen := chosenAgent("c1", registry.TypeCost, 8002, 2, "x")
	mustRegister(t, s, chosen)
	if _, _, err := s.Register(ctx, newAgent("c1", "another", registry.TypeCost, 8003, 3, "x"), unlimited); err == nil {
		t.Error("Register of a generated ID that a chosen-ID agent has succeeded")
	}
	checkAgent(t, "the chosen-ID agent", mustGet(t, s, "c1"), chosen)
}

// testChosenIDIdentity: agents with chosen IDs are not in the name, host
// and port index, so a registration with a generated ID never matches
// one, and registering, updating or deleting one never disturbs a
// generated-ID agent with the same name, host and port.
func testChosenIDIdentity(t *testing.T, s registry.Store) {
	ctx := context.Background()
	// A chosen-ID agent first, then a generated one with its name, host
	// and port: a new agent.
	chosen := chosenAgent("shared", registry.TypeCost, 8001, 0, "x")
	chosen.Name = "agent"
	mustRegister(t, s, chosen)
	generated := newAgent("g1", "agent", registry.TypeCost, 8001, 1, "x")
	stored, created, err := s.Register(ctx, generated, unlimited)
	if err != nil || !created || stored.ID != "g1" {
		t.Fatalf("Register of a generated-ID agent with a chosen-ID agent's name, host and port = %s created %v, %v; want a new agent g1",
			stored.ID, created, err)
	}

	// Updating the chosen-ID agent leaves the generated one alone, and the
	// generated one still registers again by name, host and port.
	update := chosen
	update.Version, update.LastSeen = "2.0.0", at(2)
	if _, created, err := s.Register(ctx, update, unlimited); err != nil || created {
		t.Fatalf("Register again of the chosen-ID agent = created %v, %v", created, err)
	}
	checkAgent(t, "the generated agent", mustGet(t, s, "g1"), generated)
	restart := generated
	restart.ID, restart.Version, restart.LastSeen = "g2", "3.0.0", at(3)
	stored, created, err = s.Register(ctx, restart, unlimited)
	if err != nil || created || stored.ID != "g1" {
		t.Fatalf("Register again of the generated-ID agent = %s created %v, %v; want g1 updated", stored.ID, created, err)
	}
	if got := mustGet(t, s, "shared"); got.Version != "2.0.0" {
		t.Errorf("the chosen-ID agent has version %s after the generated one registered again, want 2.0.0", got.Version)
	}

	// Deleting the chosen-ID agent does not unindex the generated one.
	if _, err := s.Delete(ctx, "shared", ""); err != nil {
		t.Fatal(err)
	}
	restart.ID, restart.Version = "g3", "4.0.0"
	if stored, created, err = s.Register(ctx, restart, unlimited); err != nil || created || stored.ID != "g1" {
		t.Errorf("Register again of the generated-ID agent after the chosen-ID one left = %s created %v, %v; want g1 updated",
			stored.ID, created, err)
	}
	// Nor does marking it unreachable or evicting it.
	mustRegister(t, s, chosen)
	if _, err := s.MarkUnreachable(ctx, at(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Evict(ctx, at(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "shared"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get of the evicted chosen-ID agent = %v, want ErrNotFound", err)
	}
	restart.ID, restart.Version = "g4", "5.0.0"
	if stored, created, err = s.Register(ctx, restart, unlimited); err != nil || created || stored.ID != "g1" {
		t.Errorf("Register again of the generated-ID agent after the chosen-ID one was evicted = %s created %v, %v; want g1 updated",
			stored.ID, created, err)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "g1")
}

// testChosenIDOwnerAndLimits: a chosen-ID agent is bound to its owner and
// counted against the limits like any other.
func testChosenIDOwnerAndLimits(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := chosenAgent("c1", registry.TypeCost, 8001, 0, "x")
	a.Owner = ownerA
	mustRegister(t, s, a)
	thief := a
	thief.Owner, thief.Port, thief.Version = ownerB, 9999, "evil"
	if _, _, err := s.Register(ctx, thief, unlimited); !errors.Is(err, registry.ErrNotOwner) {
		t.Errorf("Register of a bound chosen-ID agent by another owner = %v, want ErrNotOwner", err)
	}
	checkAgent(t, "after a refused registration", mustGet(t, s, "c1"), a)
	anonymous := a
	anonymous.Owner, anonymous.Version = "", "2.0.0"
	if stored, _, err := s.Register(ctx, anonymous, unlimited); err != nil || stored.Owner != ownerA {
		t.Errorf("Register again without an owner = owner %q, %v; want allowed, owner kept", stored.Owner, err)
	}

	// The agent cap refuses a new chosen-ID agent, never a known one.
	again := a
	again.Version = "3.0.0"
	if _, created, err := s.Register(ctx, again, agentCap(1)); err != nil || created {
		t.Errorf("Register again at the agent cap = created %v, %v; want updated", created, err)
	}
	if _, _, err := s.Register(ctx, chosenAgent("c2", registry.TypeCost, 8002, 1, "x"), agentCap(1)); !errors.Is(err, registry.ErrFull) {
		t.Errorf("Register of a new chosen-ID agent at the cap = %v, want ErrFull", err)
	}

	// The metadata budget counts it: growing past it is refused, keeping
	// the size is not.
	held, err := s.MetadataBytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	grown := again
	grown.Metadata = raw(`{"zone":"a","gpus":2,"more":"xxxxxxxx"}`)
	if _, _, err := s.Register(ctx, grown, registry.Limits{Agents: 10, MetadataBytes: held}); !errors.Is(err, registry.ErrMetadataBudget) {
		t.Errorf("Register growing the metadata past the budget = %v, want ErrMetadataBudget", err)
	}
	if _, _, err := s.Register(ctx, again, registry.Limits{Agents: 10, MetadataBytes: held}); err != nil {
		t.Errorf("Register keeping the metadata's size at the budget = %v", err)
	}
	if _, err := s.Get(ctx, "c2"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get of the refused agent = %v, want ErrNotFound", err)
	}
}
