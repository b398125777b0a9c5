package health

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
)

// LiveHandler serves /live: 200 while every liveness check passes.
func (h *Health) LiveHandler() http.Handler {
	return h.probeHandler(Liveness, h.lib.LiveEndpoint)
}

// ReadyHandler serves /ready: 200 while every check passes.
func (h *Health) ReadyHandler() http.Handler {
	return h.probeHandler(Readiness, h.lib.ReadyEndpoint)
}

// probeBody is what the library answers without ?full=1, and so do we.
var probeBody = []byte("{}\n")

// probeContentType is the library's Content-Type.
const probeContentType = "application/json; charset=utf-8"

// probeContentTypeValue is the Content-Type header value of every plain
// probe answer, shared rather than allocated per answer. Header values are
// replaced, appended to (which copies a full slice) or copied, never written
// in place: net/http copies them when the handler writes its status.
var probeContentTypeValue = []string{probeContentType}

// probeHandler answers GET and HEAD:
//
//   - plain: 200 or 503 with the library's body, {}. The kubelet calls this
//     every few seconds and load balancers far more often, so it is answered
//     here from the same checks without allocating; the library's handler
//     builds a map and parses the query on every call.
//   - ?full=1: the library's own JSON map of check -> "OK" or error.
//   - ?verbose and ?exclude=NAME: kube-apiserver's /readyz format, one line
//     per check.
func (h *Health) probeHandler(kind Kind, lib http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery == "" {
			h.AnswerProbe(w, kind)
			return
		}
		q := r.URL.Query()
		if q.Has("verbose") || q.Has("exclude") {
			h.writeVerbose(w, kind, q.Has("verbose"), q["exclude"])
			return
		}
		if r.Method == http.MethodHead {
			// The library answers GET only; net/http drops the body of a
			// HEAD response, so a GET answer is the right HEAD answer.
			get := *r
			get.Method = http.MethodGet
			r = &get
		}
		lib(w, r)
	})
}

// AnswerProbe writes the plain answer of the liveness or readiness probe
// to w: 200 while every check of the probe passes, 503 otherwise, with the
// library's Content-Type and body, {}. It returns the status and the body
// bytes written. The checks run before anything is written, so a check
// that panics leaves w untouched. It allocates nothing: the kubelet and
// load balancers call it by the thousand.
func (h *Health) AnswerProbe(w http.ResponseWriter, kind Kind) (status, n int) {
	status = http.StatusServiceUnavailable
	if h.passes(kind) {
		status = http.StatusOK
	}
	w.Header()["Content-Type"] = probeContentTypeValue // canonical key: skip Set's conversion
	w.WriteHeader(status)
	n, _ = w.Write(probeBody)
	return status, n
}

// writeVerbose writes "[+]name ok" or "[-]name failed: reason" per check, the
// way kube-apiserver does, skipping the excluded checks.
func (h *Health) writeVerbose(w http.ResponseWriter, kind Kind, verbose bool, exclude []string) {
	var b strings.Builder
	ok := true
	for _, r := range h.evaluate(kind) {
		name := r.check.name
		switch {
		case slices.Contains(exclude, name):
			b.WriteString("[+]" + name + " excluded: ok\n")
		case r.err != nil:
			ok = false
			b.WriteString("[-]" + name + " failed: " + r.err.Error() + "\n")
		default:
			b.WriteString("[+]" + name + " ok\n")
		}
	}
	probe := "live"
	if kind == Readiness {
		probe = "ready"
	}
	status := http.StatusOK
	if ok {
		b.WriteString(probe + " check passed\n")
	} else {
		status = http.StatusServiceUnavailable
		b.WriteString(probe + " check failed\n")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if verbose || !ok {
		_, _ = w.Write([]byte(b.String()))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Summary is the body of /health.
type Summary struct {
	// Status is "ok" when the service is ready, else "unavailable".
	Status        string                  `json:"status"`
	Live          bool                    `json:"live"`
	Ready         bool                    `json:"ready"`
	Draining      bool                    `json:"draining"`
	Timestamp     time.Time               `json:"timestamp"`
	Version       string                  `json:"version"`
	Uptime        string                  `json:"uptime"`
	UptimeSeconds float64                 `json:"uptime_seconds"`
	Checks        map[string]CheckSummary `json:"checks"`
}

// CheckSummary is the state of one check in /health.
type CheckSummary struct {
	Kind   Kind   `json:"kind"`
	Status string `json:"status"` // "ok" or "failed"
	Error  string `json:"error,omitempty"`
	// LastRun is when the check last ran: now for the in-memory checks,
	// the start of the last background run for dependencies (absent before
	// the first one ends).
	LastRun  *time.Time `json:"last_run,omitempty"`
	Duration string     `json:"duration,omitempty"`
}

// Summary returns the state /health reports.
func (h *Health) Summary() Summary {
	now := h.now()
	uptime := now.Sub(h.startedAt)
	s := Summary{
		Live:          true,
		Ready:         true,
		Draining:      h.Draining(),
		Timestamp:     now.UTC(),
		Version:       h.version,
		Uptime:        uptime.Round(time.Second).String(),
		UptimeSeconds: uptime.Seconds(),
		Checks:        make(map[string]CheckSummary),
	}
	for _, r := range h.evaluate(Readiness) {
		cs := CheckSummary{Kind: r.check.kind, Status: "ok"}
		if r.err != nil {
			cs.Status, cs.Error = "failed", r.err.Error()
			s.Ready = false
			if r.check.kind == Liveness {
				s.Live = false
			}
		}
		if !r.at.IsZero() {
			at := r.at.UTC()
			cs.LastRun = &at
		}
		if r.check.dep != nil && r.took > 0 {
			cs.Duration = r.took.String()
		}
		s.Checks[r.check.name] = cs
	}
	s.Status = "unavailable"
	if s.Ready {
		s.Status = "ok"
	}
	return s
}

// HealthHandler serves /health: the Summary as JSON, 200 when ready and 503
// otherwise, so a dashboard or a load balancer can use the code alone.
func (h *Health) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := h.Summary()
		body, _ := json.Marshal(s) // strings, bools, numbers and times always encode
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if s.Ready {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write(append(body, '\n'))
	})
}
