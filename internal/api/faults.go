package api

import (
	"net/http"
	"time"
)

// maxFaultDelay bounds /faults/delay.
const maxFaultDelay = 5 * time.Minute

// delayHandler answers after ?duration= (Go syntax, e.g. 2s), or earlier if
// the client goes away. Tests use it to hold a request in flight across a
// shutdown. Mounted only with FAULTS_ENABLED=true.
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
// into a 500 and the server keeps serving. Mounted only with
// FAULTS_ENABLED=true.
func panicHandler(http.ResponseWriter, *http.Request) {
	panic("fault injected: /faults/panic")
}
