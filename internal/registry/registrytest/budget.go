package registrytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// The metadata budget's part of the contract: Limits.MetadataBytes bounds
// the sum of every agent's MetadataBytes; a change that grows it past the
// budget is refused with ErrMetadataBudget and changes nothing; one that
// does not grow it always succeeds; Delete and Evict free an agent's
// share; MetadataBytes reports the sum.

// metadataOf is a compact JSON object of exactly n bytes (at least 8), its
// text made of fill: two of the same size with another fill differ.
func metadataOf(n int, fill byte) json.RawMessage {
	if n < 8 {
		panic(fmt.Sprintf("metadataOf(%d): the smallest is 8 bytes", n))
	}
	return raw(`{"p":"` + strings.Repeat(string(fill), n-8) + `"}`)
}

// letters fill metadata: two objects of one size differ by their letter.
const letters = "abcdefghijklmnopqrstuvwxyz"

// budget are limits of maxBytes of metadata and unlimited agents.
func budget(maxBytes int) registry.Limits {
	return registry.Limits{Agents: math.MaxInt, MetadataBytes: maxBytes}
}

// held is what the store says it holds.
func held(t *testing.T, s registry.Store) int {
	t.Helper()
	n, err := s.MetadataBytes(context.Background())
	if err != nil {
		t.Fatalf("MetadataBytes: %v", err)
	}
	return n
}

// compactLen is the length of js as compact JSON: a store may give back
// metadata with spaces or its keys reordered, which changes neither.
func compactLen(js json.RawMessage) int {
	var b bytes.Buffer
	if err := json.Compact(&b, js); err != nil {
		return len(js)
	}
	return b.Len()
}

// metadataSize is an agent's MetadataBytes, counted on the metadata a
// store gave back.
func metadataSize(a registry.Agent) int {
	return compactLen(a.Metadata) + compactLen(a.HeartbeatMetadata)
}

// recount sums the metadata of every agent List returns.
func recount(t *testing.T, s registry.Store) int {
	t.Helper()
	total := 0
	for _, a := range list(t, s, "") {
		total += metadataSize(a)
	}
	return total
}

// checkHeld fails t unless the store says it holds want bytes, and a
// recount of its agents agrees.
func checkHeld(t *testing.T, s registry.Store, what string, want int) {
	t.Helper()
	if got, counted := held(t, s), recount(t, s); got != want || counted != want {
		t.Errorf("%s: MetadataBytes = %d, recounted %d; want %d", what, got, counted, want)
	}
}

// testMetadataBudget walks one store to its budget and back: refusals at
// the budget, at registration and in heartbeats, change nothing; equal or
// smaller metadata always fits, even past a budget lowered below what is
// held; Delete and Evict free their share.
func testMetadataBudget(t *testing.T, s registry.Store) {
	ctx := context.Background()
	const maxBytes = 100
	lim := budget(maxBytes)
	checkHeld(t, s, "empty store", 0)

	a := newAgent("a", "a", registry.TypeCost, 8001, 0, "x")
	a.Metadata = metadataOf(40, 'a')
	if _, _, err := s.Register(ctx, a, lim); err != nil {
		t.Fatalf("Register of 40 bytes within a budget of 100: %v", err)
	}
	if _, _, err := s.Heartbeat(ctx, "a", "", registry.StatusHealthy, metadataOf(30, 'h'), at(1), lim); err != nil {
		t.Fatalf("Heartbeat of 30 bytes with 60 left: %v", err)
	}
	checkHeld(t, s, "after 40 + 30", 70)

	// A new agent one byte past the budget is refused, and not stored.
	b := newAgent("b", "b", registry.TypeCost, 8002, 2, "x")
	b.Metadata = metadataOf(31, 'b')
	if _, _, err := s.Register(ctx, b, lim); !errors.Is(err, registry.ErrMetadataBudget) {
		t.Fatalf("Register of 31 bytes with 30 left = %v, want ErrMetadataBudget", err)
	}
	if _, err := s.Get(ctx, "b"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get of the refused agent = %v, want ErrNotFound", err)
	}
	checkCandidates(t, s, registry.TypeCost, "x", "a")
	checkHeld(t, s, "after a refused registration", 70)

	// Exactly at the budget fits; so does an agent without metadata.
	b.Metadata = metadataOf(30, 'b')
	mustRegisterWithin(t, s, b, lim)
	checkHeld(t, s, "at the budget", maxBytes)
	c := newAgent("c", "c", registry.TypeCost, 8003, 3, "x")
	c.Metadata = nil
	mustRegisterWithin(t, s, c, lim)

	// At the budget, a heartbeat growing its metadata by one byte is
	// refused and records nothing, not even the liveness.
	before := mustGet(t, s, "a")
	if _, _, err := s.Heartbeat(ctx, "a", "", registry.StatusDegraded, metadataOf(31, 'h'), at(4), lim); !errors.Is(err, registry.ErrMetadataBudget) {
		t.Fatalf("Heartbeat growing 30 to 31 bytes at the budget = %v, want ErrMetadataBudget", err)
	}
	checkAgent(t, "after a refused heartbeat", mustGet(t, s, "a"), before)
	// One on an agent without heartbeat metadata yet grows it too.
	if _, _, err := s.Heartbeat(ctx, "c", "", registry.StatusHealthy, metadataOf(8, 'c'), at(4), lim); !errors.Is(err, registry.ErrMetadataBudget) {
		t.Errorf("Heartbeat of 8 bytes on an agent without any at the budget = %v, want ErrMetadataBudget", err)
	}

	// Equal, none, and smaller always fit.
	want := before
	want.Status, want.LastSeen, want.HeartbeatMetadata = registry.StatusDegraded, at(5), metadataOf(30, 'H')
	got, _, err := s.Heartbeat(ctx, "a", "", registry.StatusDegraded, metadataOf(30, 'H'), at(5), lim)
	if err != nil {
		t.Fatalf("Heartbeat replacing 30 bytes by 30 at the budget: %v", err)
	}
	checkAgent(t, "Heartbeat of equal size", got, want)
	want.Status, want.LastSeen = registry.StatusHealthy, at(6)
	if got, _, err = s.Heartbeat(ctx, "a", "", registry.StatusHealthy, nil, at(6), lim); err != nil {
		t.Fatalf("Heartbeat without metadata at the budget: %v", err)
	}
	checkAgent(t, "Heartbeat without metadata", got, want)
	want.LastSeen, want.HeartbeatMetadata = at(7), metadataOf(10, 'h')
	if got, _, err = s.Heartbeat(ctx, "a", "", registry.StatusHealthy, metadataOf(10, 'h'), at(7), lim); err != nil {
		t.Fatalf("Heartbeat shrinking 30 to 10 bytes: %v", err)
	}
	checkAgent(t, "Heartbeat shrinking", got, want)
	checkHeld(t, s, "after shrinking by 20", 80)

	// Registering a known agent again replaces both its metadata by the
	// registration's: a grows from 40 + 10 to 60, within the 20 left.
	again := a
	again.ID, again.LastSeen, again.Metadata = "a-again", at(8), metadataOf(60, 'A')
	stored, created, err := s.Register(ctx, again, lim)
	if err != nil || created {
		t.Fatalf("Register again growing a by 10 with 20 left = created %v, %v", created, err)
	}
	if stored.ID != "a" || len(stored.HeartbeatMetadata) != 0 {
		t.Errorf("Register again = %s with heartbeat metadata %s, want a with none", stored.ID, stored.HeartbeatMetadata)
	}
	checkHeld(t, s, "after registering a again", 90)
	// b growing from 30 to 41 bytes would pass the budget by one.
	bBefore := mustGet(t, s, "b")
	bigger := b
	bigger.ID, bigger.LastSeen, bigger.Metadata = "b-again", at(9), metadataOf(41, 'B')
	if _, _, err := s.Register(ctx, bigger, lim); !errors.Is(err, registry.ErrMetadataBudget) {
		t.Fatalf("Register again growing b by 11 with 10 left = %v, want ErrMetadataBudget", err)
	}
	checkAgent(t, "b after a refused registration", mustGet(t, s, "b"), bBefore)

	// A budget lowered below what is held: nothing may grow, anything
	// may stay or shrink.
	lowered := budget(50)
	again.Metadata = metadataOf(60, 'Z')
	if _, _, err := s.Register(ctx, again, lowered); err != nil {
		t.Errorf("Register again with metadata of the same size past a lowered budget: %v", err)
	}
	if _, _, err := s.Heartbeat(ctx, "a", "", registry.StatusHealthy, metadataOf(8, 'h'), at(10), lowered); !errors.Is(err, registry.ErrMetadataBudget) {
		t.Errorf("Heartbeat growing past a lowered budget = %v, want ErrMetadataBudget", err)
	}
	again.Metadata = metadataOf(20, 'z')
	if _, _, err := s.Register(ctx, again, lowered); err != nil {
		t.Errorf("Register again shrinking past a lowered budget: %v", err)
	}
	checkHeld(t, s, "after shrinking a to 20", 50)

	// Delete and Evict free their share: then b's growth fits.
	if _, err := s.Delete(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	checkHeld(t, s, "after deleting a", 30)
	if _, _, err := s.Register(ctx, bigger, lim); err != nil {
		t.Errorf("Register again growing b once a was deleted: %v", err)
	}
	checkHeld(t, s, "after b grew", 41)
	if evicted, err := s.Evict(ctx, at(100)); err != nil || len(evicted) != 2 {
		t.Fatalf("Evict = %v, %v; want b and c", ids(evicted), err)
	}
	checkHeld(t, s, "after evicting everyone", 0)
	full := newAgent("full", "full", registry.TypeCost, 8004, 11)
	full.Metadata = metadataOf(maxBytes, 'f')
	mustRegisterWithin(t, s, full, lim)
	checkHeld(t, s, "one agent holding the whole budget", maxBytes)
}

// mustRegisterWithin registers a new agent within lim.
func mustRegisterWithin(t *testing.T, s registry.Store, a registry.Agent, lim registry.Limits) {
	t.Helper()
	if _, created, err := s.Register(context.Background(), a, lim); err != nil || !created {
		t.Fatalf("Register(%s) with %d bytes of metadata = created %v, %v; want a new agent", a.ID, a.MetadataBytes(), created, err)
	}
}

// testMetadataBudgetRandom is a property check: a seeded random sequence
// of every change, with a small budget (sometimes lowered), where before
// each change the outcome is predicted from what List shows: a change is
// refused with ErrMetadataBudget exactly when it grows the metadata past
// the budget, and then changes nothing. After each, MetadataBytes equals
// a recount.
func testMetadataBudgetRandom(t *testing.T, s registry.Store) {
	const (
		ops        = 1500
		identities = 12
		maxBytes   = 600
	)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 11)) //nolint:gosec // G404: a reproducible test workload, not a secret
	size := func() json.RawMessage {
		if rng.IntN(5) == 0 {
			return nil
		}
		return metadataOf(8+rng.IntN(113), letters[rng.IntN(len(letters))])
	}
	var refused, accepted int
	for i := range ops {
		lim := budget(maxBytes)
		if rng.IntN(8) == 0 {
			lim = budget(maxBytes / 2)
		}
		agents := list(t, s, "")
		total := 0
		for _, a := range agents {
			total += metadataSize(a)
		}
		fits := func(grow int) bool { return grow <= 0 || total+grow <= lim.MetadataBytes }
		expect := func(what string, grow int, err error, unchanged func()) {
			t.Helper()
			switch {
			case fits(grow) && err != nil:
				t.Fatalf("op %d: %s growing %d bytes with %d of %d held: %v, want it accepted", i, what, grow, total, lim.MetadataBytes, err)
			case !fits(grow) && !errors.Is(err, registry.ErrMetadataBudget):
				t.Fatalf("op %d: %s growing %d bytes with %d of %d held: %v, want ErrMetadataBudget", i, what, grow, total, lim.MetadataBytes, err)
			case err != nil:
				refused++
				unchanged()
			default:
				accepted++
			}
		}
		switch op := rng.IntN(10); {
		case op < 4: // register, new or known
			n := rng.IntN(identities)
			a := newAgent(fmt.Sprintf("id-%d", i), fmt.Sprintf("agent-%d", n), registry.TypeCost, 8000+n, i, "x")
			a.Metadata = size()
			grow := a.MetadataBytes()
			var old *registry.Agent
			for j := range agents {
				if agents[j].Name == a.Name {
					old = &agents[j]
					grow -= metadataSize(*old)
				}
			}
			_, _, err := s.Register(ctx, a, lim)
			expect("Register of "+a.Name, grow, err, func() {
				if old == nil {
					if _, err := s.Get(ctx, a.ID); !errors.Is(err, registry.ErrNotFound) {
						t.Fatalf("op %d: a refused new agent was stored (%v)", i, err)
					}
				} else {
					checkAgent(t, fmt.Sprintf("op %d: agent after a refused registration", i), mustGet(t, s, old.ID), *old)
				}
			})
		case op < 8 && len(agents) > 0: // heartbeat, with or without metadata
			old := agents[rng.IntN(len(agents))]
			meta := size()
			grow := 0
			if len(meta) > 0 {
				grow = len(meta) - compactLen(old.HeartbeatMetadata)
			}
			_, _, err := s.Heartbeat(ctx, old.ID, "", registry.StatusDegraded, meta, at(i), lim)
			expect("Heartbeat of "+old.ID, grow, err, func() {
				checkAgent(t, fmt.Sprintf("op %d: agent after a refused heartbeat", i), mustGet(t, s, old.ID), old)
			})
		case op == 8 && len(agents) > 0:
			if _, err := s.Delete(ctx, agents[rng.IntN(len(agents))].ID, ""); err != nil {
				t.Fatalf("op %d: Delete: %v", i, err)
			}
		default:
			if _, err := s.Evict(ctx, at(i-rng.IntN(200))); err != nil {
				t.Fatalf("op %d: Evict: %v", i, err)
			}
		}
		got, counted := held(t, s), recount(t, s)
		if got != counted || got > maxBytes {
			t.Fatalf("op %d: MetadataBytes = %d, recounted %d; want them equal and at most %d", i, got, counted, maxBytes)
		}
	}
	if refused == 0 || accepted == 0 {
		t.Errorf("%d changes accepted and %d refused: the sequence does not reach the budget", accepted, refused)
	}
	t.Logf("%d changes that could grow the metadata accepted, %d refused; %d bytes held at the end", accepted, refused, held(t, s))
}

// testMetadataBudgetConcurrent: registrations and heartbeats at once never
// take the metadata past the budget, as MetadataBytes shows it while they
// run and a recount after (run it with the race detector).
func testMetadataBudgetConcurrent(t *testing.T, s registry.Store) {
	const (
		workers  = 16
		perEach  = 20
		each     = 40
		fitting  = 50
		maxBytes = fitting * each
	)
	ctx := context.Background()
	lim := budget(maxBytes)

	// watch reads MetadataBytes until stopped, and reports the most seen.
	watch := func() (stop func() int) {
		var most atomic.Int64
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				n, err := s.MetadataBytes(ctx)
				if err != nil {
					t.Errorf("MetadataBytes: %v", err)
					return
				}
				if int64(n) > most.Load() {
					most.Store(int64(n))
				}
				runtime.Gosched()
			}
		})
		return func() int {
			close(done)
			wg.Wait()
			return int(most.Load())
		}
	}

	// New agents of 40 bytes each: exactly 50 fit, and a known one may
	// register again with the same metadata at the budget.
	stop := watch()
	var created, refused atomic.Int64
	var mu sync.Mutex
	var stored []string
	var wg sync.WaitGroup
	errs := make(chan error, workers*perEach)
	for w := range workers {
		wg.Go(func() {
			for i := range perEach {
				n := w*perEach + i
				a := newAgent(fmt.Sprintf("id-%d", n), fmt.Sprintf("agent-%d", n), registry.TypeCost, 8000, 0, "x")
				a.Metadata = metadataOf(each, 'r')
				_, isNew, err := s.Register(ctx, a, lim)
				switch {
				case errors.Is(err, registry.ErrMetadataBudget):
					refused.Add(1)
				case err != nil:
					errs <- err
				case isNew:
					created.Add(1)
					mu.Lock()
					stored = append(stored, a.ID)
					mu.Unlock()
					a.ID += "-again"
					if _, again, err := s.Register(ctx, a, lim); err != nil || again {
						errs <- fmt.Errorf("registering %s again with the same metadata = created %v, %w", a.Name, again, err)
					}
				}
			}
		})
	}
	wg.Wait()
	if most := stop(); most > maxBytes {
		t.Errorf("MetadataBytes reached %d during the registrations, past the budget of %d", most, maxBytes)
	}
	if created.Load() != fitting || refused.Load() != workers*perEach-fitting {
		t.Errorf("%d created and %d refused, want %d and %d", created.Load(), refused.Load(), fitting, workers*perEach-fitting)
	}
	checkHeld(t, s, "after the concurrent registrations", maxBytes)

	// Free 10 agents' share (400 bytes), then send every remaining agent
	// heartbeats of 20 to 80 bytes from every worker at once: they cannot
	// all fit (40 x 20 > 400), and the total must never pass the budget.
	for _, id := range stored[:10] {
		if _, err := s.Delete(ctx, id, ""); err != nil {
			t.Fatal(err)
		}
	}
	alive := stored[10:]
	stop = watch()
	var fit, spent atomic.Int64
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 3)) //nolint:gosec // G404: a reproducible test workload, not a secret
			for round := range 3 {
				for k := range alive {
					id := alive[(k+w)%len(alive)]
					meta := metadataOf(20+rng.IntN(61), letters[w%len(letters)])
					_, _, err := s.Heartbeat(ctx, id, "", registry.StatusHealthy, meta, at(round+1), lim)
					switch {
					case errors.Is(err, registry.ErrMetadataBudget):
						spent.Add(1)
					case err != nil:
						errs <- err
					default:
						fit.Add(1)
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
	if most := stop(); most > maxBytes {
		t.Errorf("MetadataBytes reached %d during the heartbeats, past the budget of %d", most, maxBytes)
	}
	if got, counted := held(t, s), recount(t, s); got != counted || got > maxBytes {
		t.Errorf("after the concurrent heartbeats MetadataBytes = %d, recounted %d; want them equal and at most %d", got, counted, maxBytes)
	}
	if fit.Load() == 0 || spent.Load() == 0 {
		t.Errorf("%d heartbeats fit and %d were refused; want some of each", fit.Load(), spent.Load())
	}
}
