package api_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
)

// metadataOf returns a JSON object of about size bytes made of many short
// string entries: the shape that costs the most once decoded into maps.
func metadataOf(size int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; b.Len() < size-16; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"k%d":"v"`, i)
	}
	b.WriteString("}")
	return b.String()
}

// registrationWith is a registration body on 127.0.0.1:8000 with the
// given metadata JSON.
func registrationWith(name, metadata string) string {
	return fmt.Sprintf(`{"name":%q,"type":"cost","host":"127.0.0.1","port":8000,"capabilities":["analyze"],"version":"1.0.0","metadata":%s}`,
		name, metadata)
}

// BenchmarkRegisterLargeMetadata is POST /agents/register of one agent,
// registering again each time, with metadata of 64 KiB (the default
// AGENT_MAX_METADATA_BYTES): what one request costs in memory.
func BenchmarkRegisterLargeMetadata(b *testing.B) {
	f := newFixtureAt(b, defaultConfig, zapcore.InfoLevel)
	body := registrationWith("big", metadataOf(64<<10))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/agents/register", strings.NewReader(body))
		w := &discard{h: http.Header{}}
		f.handler.ServeHTTP(w, req)
	}
	if rec := f.call(http.MethodPost, "/agents/register", body); rec.Code != http.StatusCreated {
		b.Fatalf("register = %d %s", rec.Code, rec.Body)
	}
}

// BenchmarkMetricsScrape is GET /metrics with 10,000 agents registered,
// each with 1 KiB of metadata: the orchestrator_agents gauge is counted
// at every scrape.
func BenchmarkMetricsScrape(b *testing.B) {
	f := newFixtureAt(b, defaultConfig, zapcore.InfoLevel)
	meta := metadataOf(1 << 10)
	for i := range 10_000 {
		if rec := f.call(http.MethodPost, "/agents/register", registrationWith(fmt.Sprintf("agent-%d", i), meta)); rec.Code != http.StatusCreated {
			b.Fatalf("register = %d %s", rec.Code, rec.Body)
		}
	}
	benchmarkServe(b, f.handler, "/metrics")
}
