package api_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap/zapcore"
)

// discard is a ResponseWriter that keeps nothing, so the benchmarks measure
// the handlers and not a recorder.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// benchmarkServe serves path with h, clearing the headers between requests
// as net/http does for each response.
func benchmarkServe(b *testing.B, h http.Handler, path string) {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

// bare writes what /live and /ready write, with no middleware: the
// reference the full chain is compared with.
var bare = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("{}\n"))
})

func BenchmarkBare(b *testing.B) { benchmarkServe(b, bare, "/live") }

func BenchmarkChain(b *testing.B) {
	for _, path := range []string{"/live", "/ready", "/health", "/"} {
		b.Run(path, func(b *testing.B) {
			f := newFixtureAt(b, defaultConfig, zapcore.InfoLevel) // as in production
			benchmarkServe(b, f.handler, path)
		})
	}
}
