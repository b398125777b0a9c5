package api

import (
	"net/http"

	"github.com/optiinfra/orchestrator/internal/inflight"
)

// recorder wraps the ResponseWriter for the middleware: it records the
// status and size for the access log and metrics, carries what routing
// learned (the route), and holds the request's place in the in-flight
// list, all in one object, which the middleware recycles.
type recorder struct {
	http.ResponseWriter
	inFlight    inflight.Entry
	status      int
	bytes       int64
	wroteHeader bool
	route       *route
	// err is why a handler answered 500, for the access log.
	err error
}

func (rec *recorder) WriteHeader(status int) {
	if rec.wroteHeader {
		return // net/http would only log a "superfluous WriteHeader" warning
	}
	if status >= 100 && status < 200 { // informational: the real status follows
		rec.ResponseWriter.WriteHeader(status)
		return
	}
	rec.status, rec.wroteHeader = status, true
	rec.ResponseWriter.WriteHeader(status)
}

func (rec *recorder) Write(b []byte) (int, error) {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	n, err := rec.ResponseWriter.Write(b)
	rec.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// routeOf returns the recorder the middleware put in front of w, if any.
func routeOf(w http.ResponseWriter) *recorder {
	rec, _ := w.(*recorder)
	return rec
}
