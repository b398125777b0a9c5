package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fillToBudget registers agents with block bytes of registration and of
// heartbeat metadata each, at the default limits, until the metadata
// budget refuses one (refused is then true), the agent cap does, or twice
// the budget was offered (so that a registry without a budget stops too),
// and measures the heap the registry then holds: live heap after a
// collection, minus before it was built.
func fillToBudget(tb testing.TB, block int) (heap uint64, agents int, refused bool) {
	tb.Helper()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r, err := New(Options{
		Config: Config{
			HeartbeatInterval: 30 * time.Second,
			MissedHeartbeats:  3,
			EvictAfter:        24 * time.Hour,
			AllowedNetworks:   []string{"10.0.0.0/8"},
		},
		Store: NewMemoryStore(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	pad := func(label string, i int) json.RawMessage {
		head := fmt.Sprintf(`{"%s":"%d-`, label, i)
		return json.RawMessage(head + strings.Repeat("x", block-len(head)-2) + `"}`)
	}
	ctx := context.Background()
	for offered := 0; offered < 2*r.cfg.MaxMetadataTotalBytes; offered += 2 * block {
		i := agents
		a, _, err := r.Register(ctx, Registration{
			Name: fmt.Sprintf("agent-%d", i), Type: string(TypeCost), Port: 8000,
			Host:         fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff),
			Capabilities: []string{"analyze"}, Version: "1.0.0", Metadata: pad("r", i),
		})
		if err == nil {
			_, err = r.Heartbeat(ctx, Actor{}, a.ID, "healthy", pad("h", i))
		}
		if errors.Is(err, ErrMetadataBudget) {
			refused = true
			break
		}
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		agents++
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(r)
	if after.HeapAlloc > before.HeapAlloc {
		heap = after.HeapAlloc - before.HeapAlloc
	}
	return heap, agents, refused
}

// TestMetadataBudgetBoundsHeap: agents sending the largest metadata
// AGENT_MAX_METADATA_BYTES allows, in registrations and heartbeats, are
// refused once their metadata fills the default 32 MiB budget, and the
// registry then holds about that much heap, not the 6.5 GB the per-request
// limit and the agent cap alone would let in. Before the budget, the loop
// ran on to twice the budget and the heap with it.
func TestMetadataBudgetBoundsHeap(t *testing.T) {
	heap, agents, refused := fillToBudget(t, DefaultMaxMetadataBytes)
	budget := uint64(DefaultMaxMetadataTotalBytes)
	t.Logf("%d agents with 2 x %d bytes of metadata: %.1f MiB of heap held for a budget of %.0f MiB (%.2fx)",
		agents, DefaultMaxMetadataBytes, float64(heap)/(1<<20), float64(budget)/(1<<20), float64(heap)/float64(budget))
	if !refused || agents != DefaultMaxMetadataTotalBytes/(2*DefaultMaxMetadataBytes) {
		t.Errorf("%d agents stored, refused %v; want exactly %d, then a refusal", agents, refused, DefaultMaxMetadataTotalBytes/(2*DefaultMaxMetadataBytes))
	}
	// The metadata text costs its size; the rest (agent records, indexes,
	// map growth) is small beside 64 KiB blocks.
	if heap > budget+budget/4 {
		t.Errorf("the registry holds %d bytes of heap with a metadata budget of %d: more than 1.25x", heap, budget)
	}
}

// BenchmarkMetadataBudgetHeap reports the heap a registry holds once its
// agents' metadata fills the default budget, for metadata blocks from
// the largest allowed down to what agents typically send: with small
// blocks the agents' other fields, not the metadata, dominate, and with
// the smallest the agent cap (50,000) stops the fill first. Run it with
// -benchtime=1x; each iteration fills a registry.
func BenchmarkMetadataBudgetHeap(b *testing.B) {
	for _, block := range []int{64 << 10, 4 << 10, 1 << 10, 256} {
		b.Run(fmt.Sprintf("block=%d", block), func(b *testing.B) {
			var heap uint64
			var agents int
			for b.Loop() {
				heap, agents, _ = fillToBudget(b, block)
			}
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
			b.ReportMetric(float64(heap)/float64(DefaultMaxMetadataTotalBytes), "heap/budget")
			b.ReportMetric(float64(agents), "agents")
		})
	}
}
