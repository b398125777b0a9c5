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

// Tracker records requests from Begin to End. The zero value is ready to use.
type Tracker struct {
	mu   sync.Mutex
	next uint64
	reqs map[uint64]Request
}

// Begin records r and returns the token to pass to End.
func (t *Tracker) Begin(r Request) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.reqs == nil {
		t.reqs = make(map[uint64]Request)
	}
	t.next++
	t.reqs[t.next] = r
	return t.next
}

// End forgets the request Begin returned token for.
func (t *Tracker) End(token uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.reqs, token)
}

// Snapshot returns the requests being served now, oldest first.
func (t *Tracker) Snapshot() []Request {
	t.mu.Lock()
	out := make([]Request, 0, len(t.reqs))
	for _, r := range t.reqs {
		out = append(out, r)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b Request) int { return a.Started.Compare(b.Started) })
	return out
}
