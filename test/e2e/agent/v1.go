package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// The agent's dialect-B (/api/v1) side, as OptiInfra's application agent
// speaks it, on the SDK's wire types of the dialect (pkg/orchestrator's
// v1.go): it registers {"agent_id","agent_name","agent_type","version",
// "host","port","capabilities","status":"active"} through POST
// /api/v1/agents/register (200 is success, anything else failure),
// heartbeats {"status":"active"} to POST /api/v1/agents/{agent_id}/heartbeat
// and deletes itself with DELETE /api/v1/agents/{agent_id}.

// v1Error is an answer other than the one expected.
type v1Error struct {
	method, path string
	status       int
	message      string // the {"error"} of the body, or the start of it
}

func (e *v1Error) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.method, e.path, e.status, e.message)
}

func statusOf(err error) int {
	var e *v1Error
	if errors.As(err, &e) {
		return e.status
	}
	return 0
}

// v1Agent keeps a dialect-B registration alive, like the SDK's Heartbeater
// does for dialect A: it registers (retrying with backoff, except on an
// answer that will not change: 400, 401, 403, 409), heartbeats every
// interval the orchestrator named, registers again on a 404, and deletes
// itself when Run's context ends.
type v1Agent struct {
	base  string // the orchestrator's base URL, without a trailing slash
	token string
	reg   orchestrator.RegistrationV1
	http  *http.Client

	mu         sync.Mutex
	registered orchestrator.RegisterResponseV1 // zero until registered
}

func newV1Agent(base, token string, reg orchestrator.RegistrationV1) *v1Agent {
	return &v1Agent{
		base: strings.TrimRight(base, "/"), token: token, reg: reg,
		http: &http.Client{Timeout: callTimeout},
	}
}

// callTimeout bounds each call to the orchestrator.
const callTimeout = 10 * time.Second

// AgentID is the agent's id while it is registered, else "".
func (v *v1Agent) AgentID() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.registered.AgentID
}

// Registered is the orchestrator's answer to the last registration.
func (v *v1Agent) Registered() orchestrator.RegisterResponseV1 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.registered
}

func (v *v1Agent) set(r orchestrator.RegisterResponseV1) {
	v.mu.Lock()
	v.registered = r
	v.mu.Unlock()
}

// Run keeps the agent registered until ctx ends, then deletes it and
// returns the DELETE's error, if any; or a registration's error that
// retrying cannot fix.
func (v *v1Agent) Run(ctx context.Context, logf func(string, ...any)) error {
	const (
		firstBackoff = 200 * time.Millisecond
		maxBackoff   = 5 * time.Second
	)
	backoff, interval := firstBackoff, 30*time.Second
	for ctx.Err() == nil {
		if v.AgentID() == "" {
			var r orchestrator.RegisterResponseV1
			err := v.call(ctx, http.MethodPost, "/api/v1/agents/register", v.reg, &r)
			if err == nil && r.AgentID != v.reg.AgentID {
				err = fmt.Errorf("registered as %q, not as %q", r.AgentID, v.reg.AgentID)
			}
			switch {
			case err == nil:
			case ctx.Err() != nil:
				continue
			case statusOf(err) == http.StatusBadRequest, statusOf(err) == http.StatusUnauthorized,
				statusOf(err) == http.StatusForbidden, statusOf(err) == http.StatusConflict:
				return fmt.Errorf("registering: %w", err)
			default:
				logf("register: %v (retrying in %s)", err, backoff)
				sleep(ctx, backoff)
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			if r.HeartbeatIntervalSeconds > 0 {
				interval = time.Duration(r.HeartbeatIntervalSeconds) * time.Second
			}
			v.set(r)
			// The line the e2e suite and a reader look for.
			logf("registered %s through /api/v1 at %s:%d (address_source %s, announced %s); heartbeat every %s",
				r.AgentID, r.Host, r.Port, r.AddressSource, v.reg.Host, interval)
		}
		id := v.AgentID()
		err := v.call(ctx, http.MethodPost, "/api/v1/agents/"+url.PathEscape(id)+"/heartbeat",
			orchestrator.HeartbeatV1{Status: orchestrator.StatusWordActive}, nil)
		switch {
		case err == nil:
			backoff = firstBackoff
		case ctx.Err() != nil:
		case statusOf(err) == http.StatusNotFound:
			logf("heartbeat: the orchestrator does not know %s: registering again", id)
			v.set(orchestrator.RegisterResponseV1{})
			sleep(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		default:
			logf("heartbeat %s: %v", id, err)
		}
		sleep(ctx, interval)
	}
	id := v.AgentID()
	if id == "" {
		return nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	if err := v.call(dctx, http.MethodDelete, "/api/v1/agents/"+url.PathEscape(id), nil, nil); err != nil {
		return fmt.Errorf("deleting %s: %w", id, err)
	}
	v.set(orchestrator.RegisterResponseV1{})
	logf("deleted %s through /api/v1", id)
	return nil
}

// call sends body (nil: none) as JSON and decodes a 200 answer into out
// (nil: discarded). Anything but 200 is a *v1Error.
func (v *v1Agent) call(ctx context.Context, method, path string, body, out any) error {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, v.base+path, reader)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if v.token != "" {
		req.Header.Set("Authorization", "Bearer "+v.token)
	}
	resp, err := v.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := string(data)
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if len(msg) > 300 {
			msg = msg[:300]
		}
		return &v1Error{method: method, path: path, status: resp.StatusCode, message: msg}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
