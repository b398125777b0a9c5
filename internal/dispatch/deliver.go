package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/optiinfra/orchestrator/internal/registry"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// NewClient returns the HTTP client that delivers tasks. It connects only
// to addresses the guard allows, checked on the address actually dialled
// (so a DNS answer that changed since registration cannot steer it), never
// follows redirects, and ignores proxy settings.
func NewClient(guard *registry.Guard) *http.Client {
	dialer := &net.Dialer{
		Timeout:   5 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("agent address %q: %w", address, err)
			}
			return guard.CheckAddr(ap.Addr())
		},
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         dialer.DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// reply is an agent's answer. Fields are decoded one by one, so that one
// of an unexpected type does not hide the others.
type reply struct {
	Status json.RawMessage `json:"status"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
}

// attemptKind classifies an attempt's outcome (and labels its metric).
type attemptKind string

const (
	attemptSuccess    attemptKind = "success"
	attemptRejected   attemptKind = "rejected"    // 4xx, or an answer retrying cannot change
	attemptAgentError attemptKind = "agent_error" // 5xx, or 200 with "status":"failed"
	attemptTransport  attemptKind = "transport_error"
	attemptTimeout    attemptKind = "timeout"
	attemptCancelled  attemptKind = "cancelled"
)

type outcome struct {
	kind   attemptKind
	result json.RawMessage
	err    string
}

// retryable reports whether another attempt could succeed.
func (o outcome) retryable() bool {
	switch o.kind {
	case attemptAgentError, attemptTransport, attemptTimeout:
		return true
	}
	return false
}

// deliver POSTs t to agent's /task with client, reading at most
// maxResultBytes of the reply, and classifies the answer.
func deliver(ctx context.Context, client *http.Client, maxResultBytes int64, t Task, agent registry.Candidate) outcome {
	body, err := json.Marshal(orchestrator.Delivery{
		TaskID:         t.ID,
		TaskType:       t.TaskType,
		Parameters:     t.Parameters,
		TimeoutSeconds: t.TimeoutSeconds,
		Priority:       t.Priority,
		Metadata:       t.Metadata,
	})
	if err != nil {
		return outcome{kind: attemptRejected, err: "encoding the task: " + err.Error()}
	}
	url := "http://" + net.JoinHostPort(agent.Host, strconv.Itoa(agent.Port)) + "/task"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return outcome{kind: attemptRejected, err: "building the request: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return transportOutcome(ctx, t, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResultBytes+1))
	if err != nil {
		return transportOutcome(ctx, t, err)
	}
	if int64(len(data)) > maxResultBytes {
		return outcome{kind: attemptRejected, err: fmt.Sprintf("agent reply larger than TASK_MAX_RESULT_BYTES (%d bytes)", maxResultBytes)}
	}
	return classify(resp.StatusCode, data)
}

// transportOutcome names a failed exchange: the attempt's own timeout, a
// cancel, or a network error.
func transportOutcome(ctx context.Context, t Task, err error) outcome {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return outcome{kind: attemptTimeout, err: fmt.Sprintf("the agent did not answer within %ds", t.TimeoutSeconds)}
	case ctx.Err() != nil:
		return outcome{kind: attemptCancelled, err: "cancelled"}
	case errors.Is(err, registry.ErrHostNotAllowed):
		return outcome{kind: attemptRejected, err: "delivery refused: " + err.Error()}
	}
	return outcome{kind: attemptTransport, err: "delivery failed: " + err.Error()}
}

// classify turns an agent's HTTP answer into an outcome: 2xx completes
// unless the body says "status":"failed"; 4xx is the agent refusing the
// task (retrying cannot help); 5xx is retried.
func classify(code int, data []byte) outcome {
	var r reply
	parsed := json.Unmarshal(data, &r) == nil
	var status, msg string
	if parsed {
		_ = json.Unmarshal(r.Status, &status)
		_ = json.Unmarshal(r.Error, &msg)
	}
	if msg == "" {
		msg = fmt.Sprintf("agent answered %d %s", code, http.StatusText(code))
	} else {
		msg = fmt.Sprintf("agent answered %d: %s", code, msg)
	}
	switch {
	case code >= 200 && code < 300:
		switch {
		case !parsed:
			return outcome{kind: attemptAgentError, err: fmt.Sprintf("agent answered %d with a body that is not a JSON object", code)}
		case status == "failed":
			return outcome{kind: attemptAgentError, err: msg}
		}
		result := r.Result
		if len(result) == 0 {
			result = nil // no "result" key: none, rather than null
		}
		return outcome{kind: attemptSuccess, result: result}
	case code >= 400 && code < 500:
		return outcome{kind: attemptRejected, err: msg}
	case code >= 500:
		return outcome{kind: attemptAgentError, err: msg}
	}
	// 1xx and 3xx (redirects are not followed): nothing a retry would fix.
	return outcome{kind: attemptRejected, err: msg}
}
