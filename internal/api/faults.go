package api

import (
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/optiinfra/orchestrator/internal/health"
)

// The fault endpoints let tests make the server slow, panic, or fail its
// readiness on purpose. They are mounted only with FAULTS_ENABLED=true and
// must never be enabled in production.

// maxFaultDelay bounds /faults/delay.
const maxFaultDelay = 5 * time.Minute

// checkFault is the readiness check the /faults/unready switch fails.
const checkFault = "fault-injection"

// errUnreadyOnPurpose is what /ready reports while the switch is on.
var errUnreadyOnPurpose = errors.New("unready on purpose: POST /faults/ready to restore")

// faults holds the readiness switch.
type faults struct{ unready atomic.Bool }

// mountFaults registers the fault routes and the readiness check they drive.
func mountFaults(rt *router, checks *health.Health) {
	f := &faults{}
	checks.AddReadinessCheck(checkFault, func() error {
		if f.unready.Load() {
			return errUnreadyOnPurpose
		}
		return nil
	})
	rt.handle("/faults/delay", loud, http.HandlerFunc(delayHandler), http.MethodGet, http.MethodPost)
	rt.handle("/faults/panic", loud, http.HandlerFunc(panicHandler), http.MethodGet, http.MethodPost)
	rt.handle("/faults/unready", loud, f.setReady(false), http.MethodPost)
	rt.handle("/faults/ready", loud, f.setReady(true), http.MethodPost)
}

// setReady returns a handler that turns the readiness switch: /ready fails
// (and the kubelet takes the pod out of its Service) until /faults/ready.
// /live is not affected.
func (f *faults) setReady(ready bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.unready.Store(!ready)
		writeJSON(w, http.StatusOK, map[string]bool{"ready_switch": ready})
	})
}

// delayHandler answers after ?duration= (Go syntax, e.g. 2s), or earlier if
// the client goes away. Tests use it to hold a request in flight across a
// shutdown.
func delayHandler(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.URL.Query().Get("duration"))
	if err != nil || d < 0 || d > maxFaultDelay {
		writeError(w, http.StatusBadRequest, "duration: want a Go duration between 0s and 5m, such as 2s")
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		writeJSON(w, http.StatusOK, map[string]string{"slept": d.String()})
	case <-r.Context().Done():
		writeError(w, http.StatusServiceUnavailable, "request cancelled before the delay ended")
	}
}

// panicHandler panics, to show that the recovery middleware turns a panic
// into a 500 and the server keeps serving.
func panicHandler(http.ResponseWriter, *http.Request) {
	panic("fault injected: /faults/panic")
}
