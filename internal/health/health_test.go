package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testConfig = Config{CheckInterval: 20 * time.Millisecond, CheckTimeout: 10 * time.Millisecond}

// serve answers one request to handler and returns the recorder.
func serve(t *testing.T, handler http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// runChecks runs h's background checks until the test ends.
func runChecks(t *testing.T, h *Health) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestReadyFollowsStartedAndDraining(t *testing.T) {
	h := New(Options{Config: testConfig})
	live, ready := h.LiveHandler(), h.ReadyHandler()

	if code := serve(t, ready, http.MethodGet, "/ready").Code; code != http.StatusServiceUnavailable {
		t.Fatalf("/ready before MarkStarted = %d, want 503", code)
	}
	if code := serve(t, live, http.MethodGet, "/live").Code; code != http.StatusOK {
		t.Fatalf("/live before MarkStarted = %d, want 200", code)
	}
	h.MarkStarted()
	if code := serve(t, ready, http.MethodGet, "/ready").Code; code != http.StatusOK {
		t.Fatalf("/ready after MarkStarted = %d, want 200", code)
	}
	h.StartDraining()
	if !h.Draining() {
		t.Fatal("Draining() = false after StartDraining")
	}
	rec := serve(t, ready, http.MethodGet, "/ready?full=1")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/ready while draining = %d, want 503", rec.Code)
	}
	var full map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &full); err != nil {
		t.Fatalf("?full=1 body %q: %v", rec.Body, err)
	}
	if full[CheckDraining] != ErrDraining.Error() || full[CheckPing] != "OK" {
		t.Fatalf("?full=1 = %v, want draining failed and ping OK", full)
	}
	if code := serve(t, live, http.MethodGet, "/live").Code; code != http.StatusOK {
		t.Fatalf("/live while draining = %d, want 200: draining must never restart the pod", code)
	}
}

func TestProbesAnswerHEAD(t *testing.T) {
	h := New(Options{Config: testConfig})
	h.MarkStarted()
	for name, handler := range map[string]http.Handler{
		"/live": h.LiveHandler(), "/ready": h.ReadyHandler(), "/health": h.HealthHandler(),
	} {
		get := serve(t, handler, http.MethodGet, name)
		head := serve(t, handler, http.MethodHead, name)
		if head.Code != http.StatusOK || head.Code != get.Code {
			t.Errorf("HEAD %s = %d, GET = %d; want both 200", name, head.Code, get.Code)
		}
		if head.Header().Get("Content-Type") != get.Header().Get("Content-Type") {
			t.Errorf("HEAD %s Content-Type %q differs from GET's %q", name,
				head.Header().Get("Content-Type"), get.Header().Get("Content-Type"))
		}
	}
}

func TestVerboseListsEveryCheck(t *testing.T) {
	h := New(Options{Config: testConfig})
	h.MarkStarted()
	h.StartDraining()

	rec := serve(t, h.ReadyHandler(), http.MethodGet, "/ready?verbose")
	want := "[+]ping ok\n[+]started ok\n[-]draining failed: draining: shutting down\nready check failed\n"
	if rec.Code != http.StatusServiceUnavailable || rec.Body.String() != want {
		t.Fatalf("/ready?verbose = %d %q, want 503 %q", rec.Code, rec.Body, want)
	}

	rec = serve(t, h.ReadyHandler(), http.MethodGet, "/ready?verbose&exclude=draining")
	want = "[+]ping ok\n[+]started ok\n[+]draining excluded: ok\nready check passed\n"
	if rec.Code != http.StatusOK || rec.Body.String() != want {
		t.Fatalf("/ready?verbose&exclude=draining = %d %q, want 200 %q", rec.Code, rec.Body, want)
	}

	rec = serve(t, h.LiveHandler(), http.MethodGet, "/live?verbose")
	if want := "[+]ping ok\nlive check passed\n"; rec.Code != http.StatusOK || rec.Body.String() != want {
		t.Fatalf("/live?verbose = %d %q, want 200 %q", rec.Code, rec.Body, want)
	}
}

func TestDependencyIsCachedAndNeverRunByProbes(t *testing.T) {
	h := New(Options{Config: testConfig})
	h.MarkStarted()
	var mu sync.Mutex
	calls, failWith := 0, error(nil)
	h.AddReadinessDependency("redis", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return failWith
	})
	// Before the first background run, /ready fails with "no data yet".
	if code := serve(t, h.ReadyHandler(), http.MethodGet, "/ready").Code; code != http.StatusServiceUnavailable {
		t.Fatalf("/ready before the first dependency check = %d, want 503", code)
	}
	mu.Lock()
	if calls != 0 {
		t.Fatalf("a probe ran the dependency check %d times; probes must only read the cache", calls)
	}
	mu.Unlock()

	runChecks(t, h)
	ready := func() bool { return serve(t, h.ReadyHandler(), http.MethodGet, "/ready").Code == http.StatusOK }
	eventually.True(t, 5*time.Second, "ready once the dependency passes", ready)

	mu.Lock()
	failWith = errors.New("connection refused")
	mu.Unlock()
	eventually.True(t, 5*time.Second, "unready once the dependency fails", func() bool { return !ready() })
	if code := serve(t, h.LiveHandler(), http.MethodGet, "/live").Code; code != http.StatusOK {
		t.Fatalf("/live with a failing dependency = %d, want 200", code)
	}
	s := h.Summary()
	if c := s.Checks["redis"]; c.Status != "failed" || c.Error != "connection refused" || c.LastRun == nil {
		t.Fatalf("summary of the failing dependency = %+v", c)
	}
}

// A dependency with its own, shorter interval runs at it, while the
// others keep HEALTH_CHECK_INTERVAL; a longer one is capped at it.
func TestDependencyEvery(t *testing.T) {
	h := New(Options{Config: Config{CheckInterval: time.Hour, CheckTimeout: 10 * time.Millisecond}})
	h.MarkStarted()
	var fast, slow, capped atomic.Int64
	h.AddReadinessDependencyEvery("fast", time.Millisecond, func(context.Context) error { fast.Add(1); return nil })
	h.AddReadinessDependency("slow", func(context.Context) error { slow.Add(1); return nil })
	h.AddReadinessDependencyEvery("capped", 2*time.Hour, func(context.Context) error { capped.Add(1); return nil })
	runChecks(t, h)
	eventually.True(t, 5*time.Second, "the fast dependency checked again and again", func() bool {
		return fast.Load() >= 5 && slow.Load() >= 1 && capped.Load() >= 1
	})
	if n, m := slow.Load(), capped.Load(); n != 1 || m != 1 {
		t.Errorf("the hourly dependencies ran %d and %d times, want once each (at the start)", n, m)
	}
}

func TestDependencyTimeout(t *testing.T) {
	h := New(Options{Config: testConfig})
	h.MarkStarted()
	release := make(chan struct{})
	// This check ignores its context: the runner must report a timeout at
	// the deadline and still wait for the check to return.
	h.AddReadinessDependency("stuck", func(context.Context) error {
		<-release
		return nil
	})
	h.AddReadinessDependency("polite", func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	runChecks(t, h)
	t.Cleanup(func() { close(release) })

	eventually.True(t, 5*time.Second, "both dependencies reported as timed out", func() bool {
		s := h.Summary()
		return strings.HasPrefix(s.Checks["stuck"].Error, ErrCheckTimeout.Error()) &&
			strings.HasPrefix(s.Checks["polite"].Error, ErrCheckTimeout.Error())
	})
	if code := serve(t, h.ReadyHandler(), http.MethodGet, "/ready").Code; code != http.StatusServiceUnavailable {
		t.Fatalf("/ready with timed-out dependencies = %d, want 503", code)
	}
}

func TestRegistrationMistakesPanic(t *testing.T) {
	h := New(Options{Config: testConfig})
	mustPanic(t, "duplicate name", func() { h.AddReadinessDependency(CheckPing, nil) })

	runChecks(t, h)
	eventually.True(t, 5*time.Second, "Run to start", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.running })
	mustPanic(t, "after Run", func() { h.AddReadinessDependency("late", nil) })
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: no panic", what)
		}
	}()
	f()
}

func TestHealthSummary(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := start
	h := New(Options{Config: testConfig, Version: "1.2.3", Now: func() time.Time { return now }})
	now = start.Add(90 * time.Second)

	rec := serve(t, h.HealthHandler(), http.MethodGet, "/health")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/health before start = %d, want 503", rec.Code)
	}
	h.MarkStarted()
	rec = serve(t, h.HealthHandler(), http.MethodGet, "/health")
	if rec.Code != http.StatusOK {
		t.Fatalf("/health when ready = %d, want 200", rec.Code)
	}
	var got Summary
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Status != "ok" || !got.Ready || !got.Live || got.Draining || got.Version != "1.2.3" ||
		got.Uptime != "1m30s" || got.UptimeSeconds != 90 || !got.Timestamp.Equal(now) {
		t.Fatalf("summary = %+v", got)
	}
	for _, name := range []string{CheckPing, CheckStarted, CheckDraining} {
		if c := got.Checks[name]; c.Status != "ok" || c.LastRun == nil || c.Error != "" {
			t.Errorf("check %s = %+v, want ok with a last run", name, c)
		}
	}

	h.StartDraining()
	rec = serve(t, h.HealthHandler(), http.MethodGet, "/health")
	got = Summary{}
	_ = json.Unmarshal(rec.Body.Bytes(), &got)
	if rec.Code != http.StatusServiceUnavailable || got.Status != "unavailable" || !got.Draining || !got.Live ||
		got.Checks[CheckDraining].Error != ErrDraining.Error() {
		t.Fatalf("/health while draining = %d %+v", rec.Code, got)
	}
}

func TestCollectorReportsCheckStates(t *testing.T) {
	h := New(Options{Config: testConfig})
	reg := prometheus.NewRegistry()
	reg.MustRegister(h.Collector())
	h.MarkStarted()
	h.StartDraining()

	want := `
# HELP orchestrator_draining 1 once shutdown has begun and the server is draining, else 0.
# TYPE orchestrator_draining gauge
orchestrator_draining 1
# HELP orchestrator_health_check_up 1 when the health check passes, 0 when it fails.
# TYPE orchestrator_health_check_up gauge
orchestrator_health_check_up{check="draining",kind="readiness"} 0
orchestrator_health_check_up{check="ping",kind="liveness"} 1
orchestrator_health_check_up{check="started",kind="readiness"} 1
# HELP orchestrator_ready 1 when /ready answers 200, else 0.
# TYPE orchestrator_ready gauge
orchestrator_ready 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; empty for valid
	}{
		{"defaults", Config{CheckInterval: 10 * time.Second, CheckTimeout: 2 * time.Second}, ""},
		{"zero interval", Config{CheckInterval: 0, CheckTimeout: time.Second}, "HEALTH_CHECK_INTERVAL"},
		{"timeout above interval", Config{CheckInterval: time.Second, CheckTimeout: 2 * time.Second}, "HEALTH_CHECK_TIMEOUT"},
		{"zero timeout", Config{CheckInterval: time.Second}, "HEALTH_CHECK_TIMEOUT"},
		{"the smallest", Config{CheckInterval: 100 * time.Millisecond, CheckTimeout: 10 * time.Millisecond}, ""},
		{"interval 1ns", Config{CheckInterval: time.Nanosecond, CheckTimeout: time.Nanosecond}, "HEALTH_CHECK_INTERVAL=\"1ns\": must be from 100ms to 1h"},
		{"interval over an hour", Config{CheckInterval: time.Hour + 1, CheckTimeout: time.Second}, "HEALTH_CHECK_INTERVAL"},
		{"timeout 1ns", Config{CheckInterval: time.Second, CheckTimeout: time.Nanosecond}, "HEALTH_CHECK_TIMEOUT=\"1ns\": must be from 10ms to HEALTH_CHECK_INTERVAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestPlainProbeVerdictDoesNotAllocate(t *testing.T) {
	h := New(Options{Config: testConfig})
	h.MarkStarted()
	h.AddReadinessDependency("db", func(context.Context) error { return nil })
	if n := testing.AllocsPerRun(100, func() { h.passes(Readiness) }); n != 0 {
		t.Fatalf("the /ready verdict allocates %v times per call; it is on every probe", n)
	}
}

// headerOnly is a ResponseWriter that keeps the header and the status only.
type headerOnly struct {
	h      http.Header
	status int
}

func (w *headerOnly) Header() http.Header         { return w.h }
func (w *headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerOnly) WriteHeader(status int)      { w.status = status }

func TestAnswerProbe(t *testing.T) {
	h := New(Options{Config: testConfig})
	w := &headerOnly{h: http.Header{}}
	for _, tc := range []struct {
		kind    Kind
		started bool
		want    int
	}{
		{Liveness, false, http.StatusOK},
		{Readiness, false, http.StatusServiceUnavailable},
		{Readiness, true, http.StatusOK},
	} {
		if tc.started {
			h.MarkStarted()
		}
		status, n := h.AnswerProbe(w, tc.kind)
		if status != tc.want || w.status != tc.want || n != len(probeBody) || w.h.Get("Content-Type") != probeContentType {
			t.Errorf("%s probe, started %v: returned %d, %d bytes; wrote %d, Content-Type %q; want %d, %d bytes, %q",
				tc.kind, tc.started, status, n, w.status, w.h.Get("Content-Type"), tc.want, len(probeBody), probeContentType)
		}
		if allocs := testing.AllocsPerRun(100, func() { h.AnswerProbe(w, tc.kind) }); allocs != 0 {
			t.Errorf("%s probe allocates %v times per answer; want 0", tc.kind, allocs)
		}
	}
}
