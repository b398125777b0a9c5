package api

import (
	"encoding/json"
	"net/http"

	"github.com/optiinfra/orchestrator/internal/buildinfo"
)

// versionHandler serves GET /version: version, commit, build date and Go
// version of the running binary.
func versionHandler(info buildinfo.Info) http.Handler {
	body, _ := json.Marshal(info) // four strings always encode
	body = append(body, '\n')
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeBody(w, http.StatusOK, body)
	})
}
