package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// TestListingAgentsCostsAboutWhatTheyHold: GET /agents over a registry
// holding M bytes of metadata allocates a small multiple of M. Built whole
// (items, then the encoded array, then the buffer it grew in), the answer
// cost five to nine times M: with the metadata budget full, one GET could
// take a pod past its memory limit. Allocated bytes, not time, so the
// figure does not depend on how busy the machine is.
func TestListingAgentsCostsAboutWhatTheyHold(t *testing.T) {
	const agents, metaBytes = 64, 60 << 10
	cfg := testAgentsConfig
	cfg.MaxMetadataBytes, cfg.MaxMetadataTotalBytes = 64<<10, 64<<20
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{agents: cfg, dispatch: testDispatchConfig})
	meta := json.RawMessage(`{"blob":"` + strings.Repeat("x", metaBytes-len(`{"blob":""}`)) + `"}`)
	for i := range agents {
		if _, _, err := f.agents.Register(context.Background(), registry.Registration{
			Name: fmt.Sprintf("agent-%d", i), Type: "cost", Host: "127.0.0.1", Port: 9000 + i,
			Capabilities: []string{"analyze"}, Metadata: meta,
		}); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(f.handler)
	defer srv.Close()
	list := func() int64 {
		resp, err := http.Get(srv.URL + "/agents")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /agents = %d after %d bytes: %v", resp.StatusCode, n, err)
		}
		return n
	}
	body := list() // warm up: connections, pools, the route's metrics
	if body < agents*metaBytes {
		t.Fatalf("GET /agents answered %d bytes, want at least the %d of metadata", body, agents*metaBytes)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	list()
	runtime.ReadMemStats(&after)
	held := int64(agents * metaBytes)
	allocated := int64(after.TotalAlloc - before.TotalAlloc)
	t.Logf("GET /agents over %d KiB of metadata allocated %d KiB (%.2fx)", held>>10, allocated>>10, float64(allocated)/float64(held))
	if allocated > 3*held {
		t.Fatalf("GET /agents allocated %d bytes for %d bytes of metadata (%.1fx): the answer is being built whole",
			allocated, held, float64(allocated)/float64(held))
	}
}

// TestListingAgentsHEADSendsNoBody: HEAD gets the headers of the listing
// and no body, without encoding the agents.
func TestListingAgentsHEADSendsNoBody(t *testing.T) {
	f := newFixture(t, defaultConfig)
	rec := f.do(httptest.NewRequest(http.MethodHead, "/agents", nil))
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("HEAD /agents = %d, %d body bytes, Content-Type %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Type"))
	}
}
