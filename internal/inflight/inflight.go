// Package inflight keeps the list of requests being served, so that a drain
// that runs out of time can say exactly which requests it cut off.
package inflight

import (
	"slices"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// Request is one request being served.
type Request struct {
	Method    string
	Path      string
	RequestID string
	Remote    string
	Started   time.Time
}

// MarshalLogObject writes the request as log fields.
func (r Request) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("method", r.Method)
	enc.AddString("path", r.Path)
	enc.AddString("request_id", r.RequestID)
	enc.AddString("remote_addr", r.Remote)
	enc.AddDuration("age", time.Since(r.Started))
	return nil
}

// Entry is a request's place in the Tracker. The caller owns its memory
// (typically inside a per-request struct it allocates anyway), so tracking a
// request allocates nothing and costs two short critical sections.
type Entry struct {
	Request
	prev, next *Entry
}

// Tracker records requests from Begin to End. The zero value is ready to use.
type Tracker struct {
	mu   sync.Mutex
	head Entry // sentinel of a circular doubly linked list
	n    int
}

// Begin records e until End(e).
func (t *Tracker) Begin(e *Entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.head.next == nil {
		t.head.next, t.head.prev = &t.head, &t.head
	}
	e.prev, e.next = t.head.prev, &t.head
	t.head.prev.next = e
	t.head.prev = e
	t.n++
}

// End forgets e. Ending an entry twice, or one never begun, does nothing.
func (t *Tracker) End(e *Entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.next == nil {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	t.n--
}

// Len returns the number of requests being served.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// Snapshot returns the requests being served now, oldest first.
func (t *Tracker) Snapshot() []Request {
	t.mu.Lock()
	out := make([]Request, 0, t.n)
	for e := t.head.next; e != nil && e != &t.head; e = e.next {
		out = append(out, e.Request)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b Request) int { return a.Started.Compare(b.Started) })
	return out
}
