package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zapcore"
)

// TestProbeAllocations pins what a probe allocates through the whole
// chain: its generated request id and nothing else (the recorder is
// recycled, the metric series cached on the route, the Content-Type value
// shared). The kubelet and load balancers call the probes by the thousand.
func TestProbeAllocations(t *testing.T) {
	f := newFixtureAt(t, defaultConfig, zapcore.InfoLevel) // probes are logged at debug: not written, as in production
	for _, path := range probes {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		w := &discard{h: http.Header{}}
		serve := func() {
			clear(w.h)
			f.handler.ServeHTTP(w, req)
		}
		serve() // the route's metric series are created on first use
		if n := testing.AllocsPerRun(1000, serve); n > 1 {
			t.Errorf("GET %s allocates %v times per request; want 1 (its request id)", path, n)
		}
	}
}

// TestMetricsFollowTheStatus checks the per-route series cache: a route
// whose answers change status counts each under its own code.
func TestMetricsFollowTheStatus(t *testing.T) {
	f := newFixture(t, defaultConfig)
	unready := errors.New("not yet")
	var failing error
	f.health.AddReadinessCheck("switch", func() error { return failing })
	for _, fail := range []bool{false, true, true, false, false, false} {
		failing = nil
		if fail {
			failing = unready
		}
		f.get("/ready")
		f.do(httptest.NewRequest(http.MethodHead, "/ready", nil))
	}
	for _, tc := range []struct {
		method, code string
		want         float64
	}{
		{"GET", "200", 4}, {"GET", "503", 2}, {"HEAD", "200", 4}, {"HEAD", "503", 2},
	} {
		if got := testutil.ToFloat64(f.mustRequests(t).WithLabelValues(tc.method, "/ready", tc.code)); got != tc.want {
			t.Errorf("requests{%s /ready %s} = %v, want %v", tc.method, tc.code, got, tc.want)
		}
	}
}

// TestUnknownMethodOnAStaticRoute: methods outside the standard ones share
// the OTHER metric label, but never a route: they get 405.
func TestUnknownMethodOnAStaticRoute(t *testing.T) {
	f := newFixture(t, defaultConfig)
	for _, method := range []string{"PURGE", "PROPFIND"} {
		rec := f.do(httptest.NewRequest(method, "/live", nil))
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /live = %d, Allow %q; want 405, Allow GET, HEAD", method, rec.Code, rec.Header().Get("Allow"))
		}
	}
	if got := testutil.ToFloat64(f.mustRequests(t).WithLabelValues("OTHER", unmatchedRoute, "405")); got != 2 {
		t.Errorf("requests{OTHER unmatched 405} = %v, want 2", got)
	}
}
