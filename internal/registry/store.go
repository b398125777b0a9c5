package registry

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrNotFound is returned for an agent ID the store does not hold.
var ErrNotFound = errors.New("agent not found")

// Store keeps the registered agents. Every method is safe for concurrent
// use and atomic: a reader never sees half an update. The contract every
// implementation must meet is the suite in package registrytest; the
// in-memory store below passes it, and a shared store (Redis) must too.
type Store interface {
	// Register stores a, unless an agent with the same name, host and port
	// is stored: then that agent takes a's type, capabilities, version,
	// metadata, status and last-seen time, keeps its ID and RegisteredAt,
	// and created is false. An agent that restarts thus keeps its ID.
	Register(ctx context.Context, a Agent) (stored Agent, created bool, err error)
	// Heartbeat records that agent id reported status at the given time,
	// and replaces its heartbeat metadata when metadata is not nil. It
	// returns the agent as updated, and its liveness just before, so the
	// caller sees a status change without reading the agent first.
	// ErrNotFound when id is unknown.
	Heartbeat(ctx context.Context, id string, status Status, metadata map[string]any, at time.Time) (updated Agent, previous Liveness, err error)
	// Delete removes agent id and returns it. ErrNotFound when unknown.
	Delete(ctx context.Context, id string) (Agent, error)
	// Get returns agent id. ErrNotFound when unknown.
	Get(ctx context.Context, id string) (Agent, error)
	// List returns the agents of typ (every type when empty), oldest
	// registration first.
	List(ctx context.Context, typ Type) ([]Agent, error)
	// Candidates appends to buf the agents of typ that list capability,
	// in an order that is stable while the set does not change.
	Candidates(ctx context.Context, typ Type, capability string, buf []Candidate) ([]Candidate, error)
	// MarkUnreachable sets StatusUnreachable on every agent last seen
	// before cutoff that is not already unreachable, and returns them.
	MarkUnreachable(ctx context.Context, cutoff time.Time) ([]Agent, error)
	// Evict deletes every agent last seen before cutoff and returns them.
	Evict(ctx context.Context, cutoff time.Time) ([]Agent, error)
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
	mu         sync.RWMutex
	byID       map[string]*Agent
	byIdentity map[identity]*Agent
	// capable indexes agents by (type, capability), so routing looks only
	// at agents that can run the task.
	capable map[capabilityKey]*bucket
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
func (s *MemoryStore) Register(ctx context.Context, a Agent) (Agent, bool, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, false, err
	}
	a = a.clone() // the store's own copy: the caller may change its slices and maps
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byIdentity[identityOf(&a)]; ok {
		s.unindex(old)
		a.ID, a.RegisteredAt = old.ID, old.RegisteredAt
		stored := a
		s.index(&stored)
		return stored.clone(), false, nil
	}
	if _, taken := s.byID[a.ID]; taken || a.ID == "" {
		return Agent{}, false, errors.New("registry: agent ID empty or already taken")
	}
	stored := a
	s.index(&stored)
	return stored.clone(), true, nil
}

// clone returns a copy of a that shares no slice or map with it, so that
// neither what a caller passed nor what it got back aliases a stored
// agent: a caller changing a capability in place would otherwise corrupt
// the capability index.
func (a Agent) clone() Agent {
	a.Capabilities = slices.Clone(a.Capabilities)
	a.Metadata = cloneJSONObject(a.Metadata)
	a.HeartbeatMetadata = cloneJSONObject(a.HeartbeatMetadata)
	return a
}

// cloneJSONObject deep-copies a decoded JSON object: nested objects and
// arrays are copied too; the other values (strings, numbers, booleans,
// nil) are immutable.
func cloneJSONObject(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = cloneJSONValue(v)
	}
	return out
}

func cloneJSONValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		return cloneJSONObject(v)
	case []any:
		if v == nil {
			return v
		}
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = cloneJSONValue(e)
		}
		return out
	}
	return v
}

// index adds a to every map; unindex removes it. Stored agents are never
// modified in place: an update replaces the pointer, so an Agent a reader
// copied out stays consistent.
func (s *MemoryStore) index(a *Agent) {
	s.byID[a.ID] = a
	s.byIdentity[identityOf(a)] = a
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
	delete(s.byID, a.ID)
	delete(s.byIdentity, identityOf(a))
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
func (s *MemoryStore) Heartbeat(ctx context.Context, id string, status Status, metadata map[string]any, at time.Time) (Agent, Liveness, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, Liveness{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return Agent{}, Liveness{}, ErrNotFound
	}
	updated := *old
	updated.Status, updated.LastSeen = status, at
	if metadata != nil {
		updated.HeartbeatMetadata = cloneJSONObject(metadata)
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
	s.byID[p.ID] = p
	s.byIdentity[identityOf(p)] = p
	for _, c := range p.Capabilities {
		b := s.capable[capabilityKey{p.Type, c}]
		b.agents[b.pos[p.ID]] = p
	}
	return updated
}

// Delete implements Store.
func (s *MemoryStore) Delete(ctx context.Context, id string) (Agent, error) {
	if err := ctx.Err(); err != nil {
		return Agent{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byID[id]
	if !ok {
		return Agent{}, ErrNotFound
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
