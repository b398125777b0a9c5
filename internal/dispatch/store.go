package dispatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Errors of the task store.
var (
	ErrNotFound = errors.New("task not found")
	// ErrFinished is returned by an update of a task that is already in a
	// terminal state: terminal states never change.
	ErrFinished = errors.New("task already finished")
	// ErrExists is returned by Create for a task whose id is taken: a
	// caller that names its tasks (Request.ID) submitted it before.
	ErrExists = errors.New("task id already taken")
)

// Store keeps tasks. Every method is safe for concurrent use and atomic.
// The contract every implementation must meet is the suite in package
// dispatchtest; the in-memory store below passes it, and a shared store
// (Redis) must too.
type Store interface {
	// Create stores t, assigning Seq (greater than any Seq before).
	Create(ctx context.Context, t Task) (Task, error)
	// Get returns task id. ErrNotFound when unknown.
	Get(ctx context.Context, id string) (Task, error)
	// Update applies change to task id and stores the result, atomically.
	// It returns ErrFinished, changing nothing, when the task is already
	// terminal, and change's error, changing nothing, when it fails.
	Update(ctx context.Context, id string, change func(*Task) error) (Task, error)
	// List returns up to q.Limit tasks with Seq > q.After, oldest first,
	// of status q.Status (any when empty).
	List(ctx context.Context, q Query) ([]Task, error)
	// Prune deletes the terminal tasks completed before cutoff and returns
	// how many it deleted.
	Prune(ctx context.Context, cutoff time.Time) (int, error)
}

// Query selects a page of tasks.
type Query struct {
	Status Status
	After  uint64
	Limit  int
}

// MemoryStore is a Store in process memory.
type MemoryStore struct {
	mu    sync.RWMutex
	byID  map[string]*Task
	order []*Task // by Seq; pruned entries are removed by compaction
	seq   uint64
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{byID: map[string]*Task{}}
}

var _ Store = (*MemoryStore)(nil)

// Create implements Store.
func (s *MemoryStore) Create(ctx context.Context, t Task) (Task, error) {
	if err := ctx.Err(); err != nil {
		return Task{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, taken := s.byID[t.ID]; taken || t.ID == "" {
		return Task{}, fmt.Errorf("dispatch: task ID %.64q empty or already taken: %w", t.ID, ErrExists)
	}
	s.seq++
	t.Seq = s.seq
	stored := t
	s.byID[t.ID] = &stored
	s.order = append(s.order, &stored)
	return t, nil
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, id string) (Task, error) {
	if err := ctx.Err(); err != nil {
		return Task{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.byID[id]
	if !ok {
		return Task{}, ErrNotFound
	}
	return *t, nil
}

// Update implements Store.
func (s *MemoryStore) Update(ctx context.Context, id string, change func(*Task) error) (Task, error) {
	if err := ctx.Err(); err != nil {
		return Task{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.byID[id]
	if !ok {
		return Task{}, ErrNotFound
	}
	if t.Status.Terminal() {
		return *t, ErrFinished
	}
	updated := *t
	if err := change(&updated); err != nil {
		return *t, err
	}
	updated.ID, updated.Seq = t.ID, t.Seq // identity is not the change's to make
	*t = updated
	return updated, nil
}

// List implements Store.
func (s *MemoryStore) List(ctx context.Context, q Query) ([]Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	// The first task with Seq > q.After (not a search for q.After+1,
	// which wraps to 0 for the largest cursor and lists everything).
	start, _ := slices.BinarySearchFunc(s.order, q.After, func(t *Task, after uint64) int {
		if t.Seq <= after {
			return -1
		}
		return 1
	})
	var out []Task
	for _, t := range s.order[start:] {
		if len(out) >= q.Limit {
			break
		}
		if q.Status == "" || t.Status == q.Status {
			out = append(out, *t)
		}
	}
	return out, nil
}

// Prune implements Store.
func (s *MemoryStore) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	before := len(s.order)
	s.order = slices.DeleteFunc(s.order, func(t *Task) bool {
		if t.Status.Terminal() && t.CompletedAt.Before(cutoff) {
			delete(s.byID, t.ID)
			return true
		}
		return false
	})
	return before - len(s.order), nil
}
