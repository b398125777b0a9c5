package api

import (
	_ "embed"
	"net/http"
)

// openAPIDocument describes the whole HTTP API; openapi_test.go checks it
// against the router.
//
//go:embed openapi.yaml
var openAPIDocument []byte

// openAPIHandler serves GET /openapi.yaml.
func openAPIHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/yaml")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(openAPIDocument)
	})
}
