package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"runtime/debug"
	"sync"
	"time"
)

// TaskFunc runs one delivered task and returns its result, which is sent
// to the orchestrator as JSON (nil: no result). An error fails the
// attempt, and the orchestrator retries it; wrap the error with Reject when
// retrying cannot help. ctx ends when the orchestrator gives up on the
// attempt (its timeout, a cancel) or the attempt's TimeoutSeconds pass.
//
// TaskFunc is an http.Handler for POST /task with the default body limit;
// use a TaskHandler to set another.
type TaskFunc func(ctx context.Context, d Delivery) (result any, err error)

// ServeHTTP serves POST /task with fn.
func (fn TaskFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(&TaskHandler{Func: fn}).ServeHTTP(w, r)
}

// DefaultMaxDeliveryBytes is a TaskHandler's default body limit: twice the
// orchestrator's default HTTP_MAX_BODY_BYTES, so that a delivery of any
// task it accepted fits.
const DefaultMaxDeliveryBytes = 2 << 20

// TaskHandler serves an agent's POST /task: it decodes the Delivery, calls
// Func and writes the DeliveryReply the orchestrator expects:
//
//   - a result: 200 {"status":"completed","result":...};
//   - an error wrapped with Reject, or a delivery that cannot be decoded:
//     400 {"status":"failed","error":...}, which fails the task at once;
//   - any other error, or a panic in Func: 500
//     {"status":"failed","error":...}, which the orchestrator retries.
type TaskHandler struct {
	Func TaskFunc
	// MaxBodyBytes bounds the delivery read; a larger one is refused with
	// 413. Zero means DefaultMaxDeliveryBytes.
	MaxBodyBytes int64
	// ErrorLog receives a panic's stack; nil means the log package's
	// standard logger.
	ErrorLog *log.Logger
}

// rejection is an error that retrying cannot fix.
type rejection struct{ err error }

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

// Reject marks err as the agent refusing the task: returned from a
// TaskFunc, it is answered with 400, and the orchestrator fails the task at
// once instead of retrying it. Use it for tasks no attempt can complete,
// such as invalid parameters.
func Reject(err error) error {
	if err == nil {
		return nil
	}
	return &rejection{err}
}

// IsRejected reports whether err was wrapped with Reject.
func IsRejected(err error) bool {
	var r *rejection
	return errors.As(err, &r)
}

// ServeHTTP implements http.Handler.
func (h *TaskHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeReply(w, http.StatusMethodNotAllowed, DeliveryReply{Status: TaskFailed, Error: r.Method + " is not allowed: deliveries are POSTed"})
		return
	}
	limit := h.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxDeliveryBytes
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeReply(w, http.StatusRequestEntityTooLarge, DeliveryReply{Status: TaskFailed,
				Error: fmt.Sprintf("the delivery is larger than this agent's limit of %d bytes", tooBig.Limit)})
			return
		}
		writeReply(w, http.StatusBadRequest, DeliveryReply{Status: TaskFailed, Error: "reading the delivery: " + err.Error()})
		return
	}
	var d Delivery
	if err := json.Unmarshal(data, &d); err != nil {
		writeReply(w, http.StatusBadRequest, DeliveryReply{Status: TaskFailed, Error: "the delivery is not a JSON task: " + err.Error()})
		return
	}
	if d.TaskID == "" || d.TaskType == "" {
		writeReply(w, http.StatusBadRequest, DeliveryReply{TaskID: d.TaskID, Status: TaskFailed, Error: "the delivery has no task_id or no task_type"})
		return
	}
	if t := bytes.TrimSpace(d.Parameters); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		d.Parameters = json.RawMessage(`{}`)
	}

	ctx := r.Context()
	if d.TimeoutSeconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(d.TimeoutSeconds)*time.Second)
		defer cancel()
	}
	result, err := h.run(ctx, d)
	reply := DeliveryReply{TaskID: d.TaskID, Status: TaskCompleted}
	status := http.StatusOK
	if err == nil && result != nil {
		if reply.Result, err = json.Marshal(result); err != nil {
			err = fmt.Errorf("encoding the result: %w", err)
		}
	}
	if err != nil {
		reply.Status, reply.Result, reply.Error = TaskFailed, nil, err.Error()
		status = http.StatusInternalServerError
		if IsRejected(err) {
			status = http.StatusBadRequest
		}
	}
	reply.ExecutionTimeMS = float64(time.Since(started).Microseconds()) / 1000
	writeReply(w, status, reply)
}

// run calls Func, turning a panic into an error (and its stack into a log
// line) so the orchestrator records why the attempt failed.
func (h *TaskHandler) run(ctx context.Context, d Delivery) (result any, err error) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if p == http.ErrAbortHandler { //nolint:errorlint // a panic value, compared as net/http compares it: let its abort through
			panic(p)
		}
		logger := h.ErrorLog
		if logger == nil {
			logger = log.Default()
		}
		logger.Printf("orchestrator: task %s (%s): panic: %v\n%s", d.TaskID, d.TaskType, p, debug.Stack())
		result, err = nil, fmt.Errorf("the agent panicked: %v", p)
	}()
	if h.Func == nil {
		return nil, errors.New("the agent has no task function")
	}
	return h.Func(ctx, d)
}

func writeReply(w http.ResponseWriter, status int, reply DeliveryReply) {
	body, _ := json.Marshal(reply) // Result is valid JSON by then: it cannot fail
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// Heartbeater keeps an agent registered: Run registers it, sends a
// heartbeat at once and then every interval the orchestrator asks for,
// registers again when the orchestrator no longer knows it (a 404: it was
// evicted, or the orchestrator restarted), and unregisters it when Run's
// context ends.
type Heartbeater struct {
	Client       *Client
	Registration Registration
	// Report returns what each heartbeat sends; nil sends an empty
	// heartbeat, which means healthy.
	Report func() HeartbeatRequest
	// Logf, when set, is told of registrations and of failed calls.
	Logf func(format string, args ...any)

	mu sync.Mutex
	id string

	// wait sleeps for d or until ctx ends, reporting whether the full d
	// passed. Tests replace it.
	wait func(ctx context.Context, d time.Duration) bool
}

// Timings of a Heartbeater.
const (
	// callTimeout bounds each call to the orchestrator.
	callTimeout = 10 * time.Second
	// Registration is retried after registerBackoff, doubling up to
	// maxRegisterBackoff.
	registerBackoff    = 200 * time.Millisecond
	maxRegisterBackoff = 5 * time.Second
	// defaultInterval is used if the orchestrator names no interval.
	defaultInterval = 30 * time.Second
)

// AgentID returns the agent's ID while it is registered, else "".
func (h *Heartbeater) AgentID() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.id
}

func (h *Heartbeater) setID(id string) {
	h.mu.Lock()
	h.id = id
	h.mu.Unlock()
}

func (h *Heartbeater) logf(format string, args ...any) {
	if h.Logf != nil {
		h.Logf(format, args...)
	}
}

// Run keeps the agent registered until ctx ends, then unregisters it (with
// a timeout of its own) and returns the unregistration's error, if any.
//
// Registration is retried with backoff, except when the orchestrator
// answers 400, 401 or 403 (the registration or the token is wrong, and
// will stay so): Run then returns that error. A failed heartbeat is logged
// and the next one sent at the next interval.
func (h *Heartbeater) Run(ctx context.Context) error {
	if h.Client == nil {
		return errors.New("orchestrator: Heartbeater has no Client")
	}
	wait := h.wait
	if wait == nil {
		wait = sleep
	}
	backoff := registerBackoff
	interval := defaultInterval
	// fresh is set from a registration to its first successful heartbeat:
	// a 404 then (replicas that do not share their registry, say) waits a
	// backoff before registering again, instead of spinning.
	fresh := false
loop:
	for ctx.Err() == nil {
		id := h.AgentID()
		if id == "" {
			resp, err := h.register(ctx)
			if err != nil {
				if ctx.Err() != nil {
					break loop
				}
				if permanent(err) {
					return fmt.Errorf("registering: %w", err)
				}
				h.logf("register: %v (retrying in %s)", err, backoff)
				if !wait(ctx, backoff) {
					break loop
				}
				backoff = min(2*backoff, maxRegisterBackoff)
				continue
			}
			id, fresh = resp.AgentID, true
			interval = seconds(resp.HeartbeatIntervalSeconds, interval)
			h.setID(id)
			h.logf("registered as %s; heartbeat every %s", id, interval)
		}
		resp, err := h.heartbeat(ctx, id)
		switch {
		case err == nil:
			interval = seconds(resp.NextIntervalSeconds, interval)
			backoff, fresh = registerBackoff, false
		case ctx.Err() != nil:
		case IsNotFound(err):
			h.logf("heartbeat: the orchestrator does not know %s: registering again", id)
			h.setID("")
			if fresh {
				if !wait(ctx, backoff) {
					break loop
				}
				backoff = min(2*backoff, maxRegisterBackoff)
			}
			continue
		default:
			h.logf("heartbeat %s: %v", id, err)
		}
		if !wait(ctx, interval) {
			break loop
		}
	}
	return h.unregister(ctx)
}

func (h *Heartbeater) register(ctx context.Context) (RegisterResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return h.Client.Register(ctx, h.Registration)
}

func (h *Heartbeater) heartbeat(ctx context.Context, id string) (HeartbeatResponse, error) {
	var hb HeartbeatRequest
	if h.Report != nil {
		hb = h.Report()
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return h.Client.Heartbeat(ctx, id, hb)
}

// unregister leaves the registry once ctx has ended, on a context of its
// own.
func (h *Heartbeater) unregister(ctx context.Context) error {
	id := h.AgentID()
	if id == "" {
		return nil
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	err := h.Client.Unregister(uctx, id)
	h.setID("")
	if err != nil {
		return fmt.Errorf("unregistering %s: %w", id, err)
	}
	h.logf("unregistered %s", id)
	return nil
}

// permanent reports whether a registration error will not go away by
// retrying the same registration.
func permanent(err error) bool {
	var e *APIError
	if !errors.As(err, &e) {
		return false
	}
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
		return true
	}
	return false
}

// seconds converts an interval the orchestrator named; fallback when it
// named none.
func seconds(n int, fallback time.Duration) time.Duration {
	if n <= 0 {
		return fallback
	}
	return time.Duration(n) * time.Second
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
