package api_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/app"
)

// TestProbeAllocations pins what a plain probe allocates through the whole
// chain: nothing (no request id is generated for one, the metric series
// are cached on the route, the Content-Type value is shared). The kubelet
// and load balancers call the probes by the thousand.
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
		if n := testing.AllocsPerRun(1000, serve); n > 0 {
			t.Errorf("GET %s allocates %v times per request; want none", path, n)
		}
		if id := w.h.Get(api.RequestIDHeader); id != "" {
			t.Errorf("GET %s without an X-Request-Id answered one (%q): plain probes generate none", path, id)
		}
	}
}

// TestMetricsFollowTheStatus checks the per-route series cache: a route
// whose answers change status counts each under its own code.
func TestMetricsFollowTheStatus(t *testing.T) {
	unready := errors.New("not yet")
	var failing error
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{
		agents: testAgentsConfig, dispatch: testDispatchConfig,
		beforeStart: func(svc *app.Service) {
			svc.Health.AddReadinessCheck("switch", func() error { return failing })
		},
	})
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
	if got := testutil.ToFloat64(f.mustRequests(t).WithLabelValues("OTHER", api.UnmatchedRoute, "405")); got != 2 {
		t.Errorf("requests{OTHER unmatched 405} = %v, want 2", got)
	}
}

// TestPlainProbesAnswerAsTheRouterDoes: plain probes skip the router, and
// must answer and be recorded exactly as they would be through it: the
// same status, headers and body, X-Request-Id, Connection: close while
// draining, a count in the request metrics and a debug access log line.
func TestPlainProbesAnswerAsTheRouterDoes(t *testing.T) {
	f := newFixture(t, defaultConfig)
	fast := f.handler.(*api.Middleware)
	if !fast.HasPlainProbes() {
		t.Fatal("the service's middleware has no plain probe path")
	}
	routed := fast.WithoutPlainProbes() // the same chain without the plain probe path
	type answer struct {
		code                         int
		contentType, connection, rid string
		body                         string
	}
	serve := func(h http.Handler, method, path string) answer {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set(api.RequestIDHeader, "probe-42")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return answer{rec.Code, rec.Header().Get("Content-Type"), rec.Header().Get("Connection"),
			rec.Header().Get(api.RequestIDHeader), rec.Body.String()}
	}
	for _, draining := range []bool{false, true} {
		if draining {
			f.health.StartDraining()
		}
		for _, path := range probes {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				f.logs.TakeAll()
				want, got := serve(routed, method, path), serve(fast, method, path)
				if got != want {
					t.Errorf("draining %v, %s %s: plain path answered %+v, the router %+v", draining, method, path, got, want)
				}
				if got.rid != "probe-42" || (got.connection == "close") != draining {
					t.Errorf("draining %v, %s %s: X-Request-Id %q, Connection %q", draining, method, path, got.rid, got.connection)
				}
				lines := f.logs.FilterMessage("request").All()
				if len(lines) != 2 {
					t.Fatalf("%s %s: %d access log lines, want 2", method, path, len(lines))
				}
				for _, l := range lines {
					fields := l.ContextMap()
					delete(fields, "duration_ms")
					if l.Level != zapcore.DebugLevel || fields["route"] != path || fields["request_id"] != "probe-42" ||
						fields["status"] != int64(got.code) || fields["bytes"] != int64(3) {
						t.Errorf("%s %s: access log line at %s with %v", method, path, l.Level, fields)
					}
				}
			}
		}
	}
	for _, tc := range []struct {
		method, path, code string
		want               float64
	}{
		{"GET", "/live", "200", 4}, {"HEAD", "/live", "200", 4},
		{"GET", "/ready", "200", 2}, {"GET", "/ready", "503", 2}, {"HEAD", "/ready", "503", 2},
	} {
		if got := testutil.ToFloat64(f.mustRequests(t).WithLabelValues(tc.method, tc.path, tc.code)); got != tc.want {
			t.Errorf("requests{%s %s %s} = %v, want %v", tc.method, tc.path, tc.code, got, tc.want)
		}
	}
}

// TestProbeVariantsTakeTheRouter: a query, a body or another method is not
// a plain probe; the router and the health library answer as before.
func TestProbeVariantsTakeTheRouter(t *testing.T) {
	f := newFixture(t, defaultConfig)
	if body := f.get("/live?verbose").Body.String(); !strings.Contains(body, "[+]ping ok") {
		t.Errorf("GET /live?verbose = %q, want the kube-apiserver format", body)
	}
	if body := f.get("/ready?full=1").Body.String(); !strings.Contains(body, `"started": "OK"`) {
		t.Errorf("GET /ready?full=1 = %q, want the library's check map", body)
	}
	if rec := f.do(httptest.NewRequest(http.MethodPost, "/live", nil)); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /live = %d, want 405", rec.Code)
	}
	if rec := f.do(httptest.NewRequest(http.MethodGet, "/ready", strings.NewReader("x"))); rec.Code != http.StatusOK {
		t.Errorf("GET /ready with a body = %d, want 200", rec.Code)
	}
}

// TestPanickingReadinessCheck: a readiness check that panics answers 500
// and is logged and counted, as a panicking handler is.
func TestPanickingReadinessCheck(t *testing.T) {
	f := newFixtureWith(t, defaultConfig, zapcore.DebugLevel, fixtureOptions{
		agents: testAgentsConfig, dispatch: testDispatchConfig,
		beforeStart: func(svc *app.Service) {
			svc.Health.AddReadinessCheck("explodes", func() error { panic("boom") })
		},
	})
	rec := f.get("/ready")
	if rec.Code != http.StatusInternalServerError || decodeError(t, rec) != "internal server error" {
		t.Fatalf("GET /ready with a panicking check = %d %s, want 500", rec.Code, rec.Body)
	}
	if n := f.logs.FilterMessage("panic serving request").FilterField(zap.String("route", "/ready")).Len(); n != 1 {
		t.Errorf("%d panic log lines for /ready, want 1", n)
	}
	if got := testutil.ToFloat64(f.mustRequests(t).WithLabelValues("GET", "/ready", "500")); got != 1 {
		t.Errorf("requests{GET /ready 500} = %v, want 1", got)
	}
	if code := f.get("/live").Code; code != http.StatusOK {
		t.Errorf("GET /live = %d: a readiness check must not touch liveness", code)
	}
}
