package api

import (
	"net/http"

	"github.com/optiinfra/orchestrator/internal/inflight"
)

// outcome is what the metrics and the access log say of a request.
type outcome struct {
	route       *route
	status      int
	bytes       int64
	wroteHeader bool
	// err is why a handler answered 500, for the access log.
	err error
}

// recorder wraps the ResponseWriter for the middleware: it records the
// outcome (the status and size, and what routing learned: the route) and
// holds the request's place in the in-flight list, all in one object,
// which the middleware recycles.
type recorder struct {
	http.ResponseWriter
	outcome
	inFlight inflight.Entry
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
