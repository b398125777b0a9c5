package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrNotFound is returned for an agent ID the store does not hold.
var ErrNotFound = errors.New("agent not found")

// ErrFull is returned for a new agent when the store holds as many agents
// as it may.
var ErrFull = errors.New("the agent registry is full")

// ErrMetadataBudget is returned for a registration or heartbeat whose
// metadata would take the metadata the store holds past its budget.
var ErrMetadataBudget = errors.New("the agent registry's metadata budget is spent")

// ErrIDTaken is returned for a registration with a chosen ID that an
// agent with a generated ID has.
var ErrIDTaken = errors.New("agent id taken")

// Limits bound what a Store holds. The caller passes them with each change
// that could pass them, and the store checks them in the same atomic step
// as the change, so that concurrent requests (or replicas sharing one
// store) can never pass them together.
type Limits struct {
	// Agents is how many agents the store may hold.
	Agents int
	// MetadataBytes is how much metadata it may hold: the sum, over every
	// agent, of Agent.MetadataBytes.
	MetadataBytes int
}

// MetadataBytes is what a's metadata counts against the budget: the length
// of its registration's and its last heartbeat's metadata, as the JSON text
// the store was given (the registry gives it compact).
func (a Agent) MetadataBytes() int { return len(a.Metadata) + len(a.HeartbeatMetadata) }

// Store keeps the registered agents. Every method is safe for concurrent
// use and atomic: a reader never sees half an update. The contract every
// implementation must meet is the suite in package registrytest; the
// in-memory store below passes it, and a shared store (PostgreSQL) must
// too.
//
// Changes take the caller's owner: the fingerprint of its agent token, or
// "" for a caller that may change any agent. A change to an agent whose
// Owner is set, by a caller whose owner is set and differs, is refused
// with ErrNotOwner and changes nothing; the check and the change are one
// atomic step.
type Store interface {
	// Register stores a, unless an agent with the same name, host and port
	// is stored: then that agent takes a's type, capabilities, version,
	// metadata, status and last-seen time, keeps its ID and RegisteredAt,
	// and created is false. An agent that restarts thus keeps its ID.
	// a.Owner is the caller's owner: a known agent with no owner takes
	// it, one with an owner keeps it. A new agent is refused with ErrFull
	// when the store already holds lim.Agents agents (a known one never
	// is). A registration is refused with ErrMetadataBudget when it grows
	// the metadata the store holds past lim.MetadataBytes: a new agent
	// adds its MetadataBytes, a known one the difference between a's and
	// its own (which the heartbeat metadata it loses counts in). One that
	// does not grow it never is, even past the budget (a budget lowered
	// while agents hold more). Both checks are one atomic step with the
	// change, and a refused registration changes nothing.
	//
	// An agent with a.ChosenID is matched by its ID instead, and only an
	// agent with a chosen ID matches it: a stored agent with a.ID and a
	// chosen ID is updated as above (owner, limits, ID and RegisteredAt
	// kept); one with a.ID and a generated ID refuses it with ErrIDTaken.
	// Agents with chosen IDs are never matched by name, host and port,
	// whatever their names, hosts and ports.
	Register(ctx context.Context, a Agent, lim Limits) (stored Agent, created bool, err error)
	// Heartbeat records that agent id reported status at the given time,
	// and replaces its heartbeat metadata when metadata is not empty. It
	// returns the agent as updated, and its liveness just before, so the
	// caller sees a status change without reading the agent first.
	// ErrNotFound when id is unknown; ErrNotOwner as above. A heartbeat
	// whose metadata is longer than the agent's last and would take the
	// metadata the store holds past lim.MetadataBytes is refused with
	// ErrMetadataBudget, atomically, and changes nothing, not even the
	// liveness. Checking it must not read other agents: the store keeps
	// its total as agents change.
	Heartbeat(ctx context.Context, id, owner string, status Status, metadata json.RawMessage, at time.Time, lim Limits) (updated Agent, previous Liveness, err error)
	// Delete removes agent id and returns it. ErrNotFound when unknown;
	// ErrNotOwner as above.
	Delete(ctx context.Context, id, owner string) (Agent, error)
	// Get returns agent id. ErrNotFound when unknown.
	Get(ctx context.Context, id string) (Agent, error)
	// List returns the agents of typ (every type when empty), oldest
	// registration first.
	List(ctx context.Context, typ Type) ([]Agent, error)
	// Count returns how many agents there are of each type and status,
	// an agent last seen before silentSince counting as unreachable
	// whatever its stored status. Pairs without agents may be left out;
	// no pair is listed twice. It copies no agent.
	Count(ctx context.Context, silentSince time.Time) ([]AgentCount, error)
	// Candidates appends to buf the agents of typ that list capability,
	// in an order that is stable while the set does not change.
	Candidates(ctx context.Context, typ Type, capability string, buf []Candidate) ([]Candidate, error)
	// MarkUnreachable sets StatusUnreachable on every agent last seen
	// before cutoff that is not already unreachable, and returns them.
	MarkUnreachable(ctx context.Context, cutoff time.Time) ([]Agent, error)
	// Evict deletes every agent last seen before cutoff and returns them.
	Evict(ctx context.Context, cutoff time.Time) ([]Agent, error)
	// MetadataBytes returns the metadata the store holds, as the budget
	// counts it: the sum of its agents' MetadataBytes. Delete and Evict
	// free an agent's share.
	MetadataBytes(ctx context.Context) (int, error)
}

// AgentCount is how many agents have one type and status.
type AgentCount struct {
	Type   Type
	Status Status
	Agents int
}

// conflicts reports whether a change by owner must be refused on an agent
// whose owner is stored: both set, and different.
func conflicts(stored, owner string) bool {
	return stored != "" && owner != "" && stored != owner
}

// Liveness is an agent's stored status and when it was last heard from.
type Liveness struct {
	Status   Status
	LastSeen time.Time
}

// Candidate is what routing needs to know of an agent: small, so that
// choosing among thousands copies little.
type Candidate struct {
	ID       string
	Host     string
	Port     int
	Status   Status
	LastSeen time.Time
}

// MemoryStore is a Store in process memory: fast, and lost on restart.
type MemoryStore struct {
	mu   sync.RWMutex
	byID map[string]*Agent
	// byIdentity holds the agents with generated IDs only.
	byIdentity map[identity]*Agent
	// capable indexes agents by (type, capability), so routing looks only
	// at agents that can run the task.
	capable map[capabilityKey]*bucket
	// metadataBytes is the sum of the stored agents' MetadataBytes, kept
	// by index, unindex and swap so the budget is checked without a scan.
	metadataBytes int
}

type identity struct {
	name, host string
	port       int
}

type capabilityKey struct {
	typ        Type
	capability string
}

// bucket is an indexed set of agents: a slice to iterate fast, and each
// agent's position in it to remove in O(1).
type bucket struct {
	agents []*Agent
	pos    map[string]int
}

func (b *bucket) add(a *Agent) {
	b.pos[a.ID] = len(b.agents)
	b.agents = append(b.agents, a)
}

func (b *bucket) remove(id string) {
	i, ok := b.pos[id]
	if !ok {
		return
	}
	last := len(b.agents) - 1
	b.agents[i] = b.agents[last]
	b.pos[b.agents[i].ID] = i
	b.agents[last] = nil
	b.agents = b.agents[:last]
	delete(b.pos, id)
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		byID:       map[string]*Agent{},
		byIdentity: map[identity]*Agent{},
		capable:    map[capabilityKey]*bucket{},
	}
}

var _ Store = (*MemoryStore)(nil)

func identityOf(a *Agent) identity { return identity{name: a.Name, host: a.Host, port: a.Port} }

// Register implements Store.
func (s *MemoryStore) Register(ctx context.Context, a Agent, lim Limits) (Agent, bool, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, false, err
	}
	a = a.clone() // the store's own copy: the caller may change its slices
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byIdentity[identityOf(&a)]
	if a.ChosenID {
		old, ok = s.byID[a.ID]
		if ok && !old.ChosenID {
			return Agent{}, false, ErrIDTaken
		}
	}
	if ok {
		if conflicts(old.Owner, a.Owner) {
			return Agent{}, false, ErrNotOwner
		}
		if old.Owner != "" {
			a.Owner = old.Owner
		}
		if s.overBudget(a.MetadataBytes()-old.MetadataBytes(), lim) {
			return Agent{}, false, ErrMetadataBudget
		}
		s.unindex(old)
		a.ID, a.RegisteredAt = old.ID, old.RegisteredAt
		stored := a
		s.index(&stored)
		return stored.clone(), false, nil
	}
	if len(s.byID) >= lim.Agents {
		return Agent{}, false, ErrFull
	}
	if _, taken := s.byID[a.ID]; taken || a.ID == "" {
		return Agent{}, false, errors.New("registry: agent ID empty or already taken")
	}
	if s.overBudget(a.MetadataBytes(), lim) {
		return Agent{}, false, ErrMetadataBudget
	}
	stored := a
	s.index(&stored)
	return stored.clone(), true, nil
}

// overBudget reports whether growing the stored metadata by grow bytes
// would take it past lim.MetadataBytes. Shrinking, or keeping the size,
// never is, even past the budget. Call it with s.mu held.
func (s *MemoryStore) overBudget(grow int, lim Limits) bool {
	return grow > 0 && grow > lim.MetadataBytes-s.metadataBytes
}

// clone returns a copy of a that shares no slice with it, so that neither
// what a caller passed nor what it got back aliases a stored agent: a
// caller changing a capability in place would otherwise corrupt the
// capability index. Metadata is one block of JSON text each, so this
// copies three slices, however the metadata nests.
func (a Agent) clone() Agent {
	a.Capabilities = slices.Clone(a.Capabilities)
	a.Metadata = bytes.Clone(a.Metadata)
	a.HeartbeatMetadata = bytes.Clone(a.HeartbeatMetadata)
	return a
}

// index adds a to every map; unindex removes it. Stored agents are never
// modified in place: an update replaces the pointer, so an Agent a reader
// copied out stays consistent.
func (s *MemoryStore) index(a *Agent) {
	s.metadataBytes += a.MetadataBytes()
	s.byID[a.ID] = a
	if !a.ChosenID {
		s.byIdentity[identityOf(a)] = a
	}
	for _, c := range a.Capabilities {
		key := capabilityKey{a.Type, c}
		b := s.capable[key]
		if b == nil {
			b = &bucket{pos: map[string]int{}}
			s.capable[key] = b
		}
		b.add(a)
	}
}

func (s *MemoryStore) unindex(a *Agent) {
	s.metadataBytes -= a.MetadataBytes()
	delete(s.byID, a.ID)
	if !a.ChosenID {
		delete(s.byIdentity, identityOf(a))
	}
	for _, c := range a.Capabilities {
		key := capabilityKey{a.Type, c}
		if b := s.capable[key]; b != nil {
			b.remove(a.ID)
			if len(b.agents) == 0 {
				delete(s.capable, key)
			}
		}
	}
}

// Heartbeat implements Store.
func (s *MemoryStore) Heartbeat(ctx context.Context, id, owner string, status Status, metadata json.RawMessage, at time.Time, lim Limits) (Agent, Liveness, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, Liveness{}, err
	}
	if len(metadata) > 0 {
		metadata = bytes.Clone(metadata) // copied before the lock is taken
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return Agent{}, Liveness{}, ErrNotFound
	}
	if conflicts(old.Owner, owner) {
		return Agent{}, Liveness{}, ErrNotOwner
	}
	updated := *old
	updated.Status, updated.LastSeen = status, at
	if len(metadata) > 0 {
		if s.overBudget(len(metadata)-len(old.HeartbeatMetadata), lim) {
			return Agent{}, Liveness{}, ErrMetadataBudget
		}
		updated.HeartbeatMetadata = metadata
	}
	// Only the status and times change: the capability index holds the
	// same pointer position, so swap in place rather than re-indexing.
	return s.swap(updated).clone(), Liveness{Status: old.Status, LastSeen: old.LastSeen}, nil
}

// swap replaces the stored agent with updated's ID by updated, where only
// fields the indexes do not use differ (status, last seen, heartbeat
// metadata).
func (s *MemoryStore) swap(updated Agent) Agent {
	p := &updated
	s.metadataBytes += p.MetadataBytes() - s.byID[p.ID].MetadataBytes()
	s.byID[p.ID] = p
	if !p.ChosenID {
		s.byIdentity[identityOf(p)] = p
	}
	for _, c := range p.Capabilities {
		b := s.capable[capabilityKey{p.Type, c}]
		b.agents[b.pos[p.ID]] = p
	}
	return updated
}

// Delete implements Store.
func (s *MemoryStore) Delete(ctx context.Context, id, owner string) (Agent, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byID[id]
	if !ok {
		return Agent{}, ErrNotFound
	}
	if conflicts(a.Owner, owner) {
		return Agent{}, ErrNotOwner
	}
	s.unindex(a)
	return *a, nil
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, id string) (Agent, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.byID[id]
	if !ok {
		return Agent{}, ErrNotFound
	}
	return a.clone(), nil
}

// List implements Store.
func (s *MemoryStore) List(ctx context.Context, typ Type) ([]Agent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	out := make([]Agent, 0, len(s.byID))
	for _, a := range s.byID {
		if typ == "" || a.Type == typ {
			out = append(out, a.clone())
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b Agent) int {
		if c := a.RegisteredAt.Compare(b.RegisteredAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Count implements Store. It reads each agent's type, status and last-seen
// time under the read lock, and allocates only the result.
func (s *MemoryStore) Count(ctx context.Context, silentSince time.Time) ([]AgentCount, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type key struct {
		typ    Type
		status Status
	}
	counts := make(map[key]int, len(Types)*len(Statuses))
	s.mu.RLock()
	for _, a := range s.byID {
		st := a.Status
		if a.LastSeen.Before(silentSince) {
			st = StatusUnreachable
		}
		counts[key{a.Type, st}]++
	}
	s.mu.RUnlock()
	out := make([]AgentCount, 0, len(counts))
	for k, n := range counts {
		out = append(out, AgentCount{Type: k.typ, Status: k.status, Agents: n})
	}
	return out, nil
}

// Candidates implements Store.
func (s *MemoryStore) Candidates(ctx context.Context, typ Type, capability string, buf []Candidate) ([]Candidate, error) {
	if err := ctx.Err(); err != nil {
		return buf, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	b := s.capable[capabilityKey{typ, capability}]
	if b == nil {
		return buf, nil
	}
	for _, a := range b.agents {
		buf = append(buf, Candidate{ID: a.ID, Host: a.Host, Port: a.Port, Status: a.Status, LastSeen: a.LastSeen})
	}
	return buf, nil
}

// MarkUnreachable implements Store.
func (s *MemoryStore) MarkUnreachable(ctx context.Context, cutoff time.Time) ([]Agent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var marked []Agent
	for _, a := range s.byID {
		if a.Status != StatusUnreachable && a.LastSeen.Before(cutoff) {
			updated := *a
			updated.Status = StatusUnreachable
			marked = append(marked, s.swap(updated).clone())
		}
	}
	return marked, nil
}

// Evict implements Store.
func (s *MemoryStore) Evict(ctx context.Context, cutoff time.Time) ([]Agent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var evicted []Agent
	for _, a := range s.byID {
		if a.LastSeen.Before(cutoff) {
			s.unindex(a)
			evicted = append(evicted, *a)
		}
	}
	return evicted, nil
}

// MetadataBytes implements Store. It reads the running total: no agent is
// visited.
func (s *MemoryStore) MetadataBytes(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.metadataBytes, nil
}
