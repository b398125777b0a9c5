package api

import (
	"encoding/json"
	"net/http"
)

// rootHandler serves GET /: what this service is and whether it runs.
// Both possible bodies are encoded once, up front.
func rootHandler(version string, drain drainer) http.Handler {
	type body struct {
		Service string `json:"service"`
		Version string `json:"version"`
		Status  string `json:"status"`
	}
	encode := func(status string) []byte {
		b, _ := json.Marshal(body{Service: "OptiInfra Orchestrator", Version: version, Status: status})
		return append(b, '\n')
	}
	running, draining := encode("running"), encode("draining")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if drain.Draining() {
			writeBody(w, http.StatusOK, draining)
			return
		}
		writeBody(w, http.StatusOK, running)
	})
}
