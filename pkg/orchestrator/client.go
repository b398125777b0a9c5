package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls the orchestrator's HTTP API. It is safe for concurrent use.
// Every method takes a context: cancel it, or give it a deadline, to bound
// the call.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends token as "Authorization: Bearer <token>" on every call:
// an agent token for Register, Heartbeat and Unregister, an operator
// token for the rest, when the orchestrator has tokens of that role
// configured. The token never appears in an error or in the Client's
// String.
func WithToken(token string) Option {
	return func(c *Client) { c.token = token }
}

// WithHTTPClient makes the Client send its requests with hc instead of
// its default, which has a 30s timeout and follows no redirects.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = hc }
}

// NewClient returns a Client of the orchestrator at baseURL, such as
// http://orchestrator:8080 (a path, if any, is kept as a prefix).
func NewClient(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("orchestrator: base URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("orchestrator: base URL %q: want http:// or https:// and a host", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("orchestrator: base URL %q: must have no query or fragment", u.Redacted())
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	c := &Client{
		base: u,
		http: &http.Client{
			Timeout: 30 * time.Second,
			// The API never redirects: a redirect is an error to show, not
			// a place to send the token.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// String describes the Client without its token.
func (c *Client) String() string {
	token := "none"
	if c.token != "" {
		token = "set"
	}
	return fmt.Sprintf("orchestrator.Client{base: %s, token: %s}", c.base.Redacted(), token)
}

// GoString is String, so that %#v does not print the token either.
func (c *Client) GoString() string { return c.String() }

// CloseIdleConnections closes the idle keep-alive connections of the
// Client's HTTP client, for a program or test that is done with it.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// APIError is an answer of the orchestrator with an unexpected status
// code: StatusCode is the code, Message the server's {"error": "..."}
// message (or the start of the body when it was not that shape).
type APIError struct {
	Method     string
	Path       string
	StatusCode int
	Message    string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("orchestrator: %s %s: %d: %s", e.Method, e.Path, e.StatusCode, msg)
}

// IsNotFound reports whether err is an APIError with status 404: an agent
// or task the orchestrator does not know.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// errorBody is the shape of every error the orchestrator answers.
type errorBody struct {
	Error string `json:"error"`
}

// maxErrorBody bounds what is read of an error answer.
const maxErrorBody = 64 << 10

// Register registers an agent, or registers it again (then with the same
// agent ID as before). Send the first heartbeat at once.
func (c *Client) Register(ctx context.Context, reg Registration) (RegisterResponse, error) {
	var out RegisterResponse
	err := c.do(ctx, http.MethodPost, "/agents/register", nil, reg, http.StatusCreated, &out)
	return out, err
}

// Heartbeat tells the orchestrator the agent is alive. An APIError with
// status 404 means the orchestrator does not know the agent (it was
// unregistered, evicted, or the orchestrator restarted): register again.
func (c *Client) Heartbeat(ctx context.Context, agentID string, hb HeartbeatRequest) (HeartbeatResponse, error) {
	var out HeartbeatResponse
	path, err := idPath("/agents/", agentID, "/heartbeat")
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodPost, path, nil, hb, http.StatusOK, &out)
	return out, err
}

// Unregister removes the agent: it gets no more tasks. It sends no body,
// as existing agents do.
func (c *Client) Unregister(ctx context.Context, agentID string) error {
	path, err := idPath("/agents/", agentID, "/unregister")
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, path, nil, nil, http.StatusOK, &message{})
}

// ListAgents lists every registered agent, whatever its status; with a
// type, only the agents of that type.
func (c *Client) ListAgents(ctx context.Context, typ AgentType) ([]Agent, error) {
	path := "/agents"
	if typ != "" {
		var err error
		if path, err = idPath("/agents/type/", string(typ), ""); err != nil {
			return nil, err
		}
	}
	var out AgentList
	if err := c.do(ctx, http.MethodGet, path, nil, nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return out.Agents, nil
}

// GetAgent returns one agent.
func (c *Client) GetAgent(ctx context.Context, agentID string) (Agent, error) {
	var out Agent
	path, err := idPath("/agents/", agentID, "")
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodGet, path, nil, nil, http.StatusOK, &out)
	return out, err
}

// SubmitTask submits a task. An APIError with status 503 means no healthy
// agent can run it (no task was created); 429 that the queue is full.
func (c *Client) SubmitTask(ctx context.Context, req TaskRequest) (TaskAccepted, error) {
	var out TaskAccepted
	err := c.do(ctx, http.MethodPost, "/tasks", nil, req, http.StatusCreated, &out)
	return out, err
}

// GetTask returns a task: its state and, once finished, its result or
// error.
func (c *Client) GetTask(ctx context.Context, taskID string) (Task, error) {
	var out Task
	path, err := idPath("/tasks/", taskID, "")
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodGet, path, nil, nil, http.StatusOK, &out)
	return out, err
}

// ListTasks returns a page of tasks, oldest first. When the page's
// NextCursor is set, pass it as opts.Cursor for the next page.
func (c *Client) ListTasks(ctx context.Context, opts ListTasksOptions) (TaskList, error) {
	q := url.Values{}
	if opts.Status != "" {
		q.Set("status", string(opts.Status))
	}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	var out TaskList
	err := c.do(ctx, http.MethodGet, "/tasks", q, nil, http.StatusOK, &out)
	return out, err
}

// CancelTask cancels a task that has not finished and returns it, now
// cancelled. An APIError with status 409 means it had already finished.
func (c *Client) CancelTask(ctx context.Context, taskID string) (Task, error) {
	var out Task
	path, err := idPath("/tasks/", taskID, "")
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodDelete, path, nil, nil, http.StatusOK, &out)
	return out, err
}

// WaitTask polls the task every interval until it is in a terminal state
// (completed, failed, timeout or cancelled) and returns it. Give ctx a
// deadline to bound the wait.
func (c *Client) WaitTask(ctx context.Context, taskID string, interval time.Duration) (Task, error) {
	if interval <= 0 {
		return Task{}, errors.New("orchestrator: WaitTask: the interval must be positive")
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		t, err := c.GetTask(ctx, taskID)
		if err != nil || t.Status.Terminal() {
			return t, err
		}
		select {
		case <-ctx.Done():
			return t, fmt.Errorf("orchestrator: waiting for task %s (still %s): %w", taskID, t.Status, ctx.Err())
		case <-tick.C:
		}
	}
}

// idPath builds prefix + id + suffix. An ID is one path segment: one the
// server would clean into another path (".", "..", or with a "/") is
// refused rather than sent somewhere else.
func idPath(prefix, id, suffix string) (string, error) {
	if id == "" || id == "." || id == ".." || strings.Contains(id, "/") {
		return "", fmt.Errorf("orchestrator: %q is not an ID", id)
	}
	return prefix + url.PathEscape(id) + suffix, nil
}

// do sends one request and decodes a want answer into out. body, when not
// nil, is sent as JSON.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body any, want int, out any) error {
	target := c.base.String() + path // path is escaped already
	if q := query.Encode(); q != "" {
		target += "?" + q
	}
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("orchestrator: %s %s: encoding the request: %w", method, path, err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return fmt.Errorf("orchestrator: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// net/http's error names the URL without its password; the token is
		// in a header, which it never shows.
		return fmt.Errorf("orchestrator: %s %s: %w", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != want {
		return apiError(method, path, resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("orchestrator: %s %s: decoding the %d answer: %w", method, path, resp.StatusCode, err)
	}
	// Drain what follows the JSON value (a newline), so the connection can
	// be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return nil
}

// apiError reads an unexpected answer into an APIError.
func apiError(method, path string, resp *http.Response) *APIError {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
	var body errorBody
	if json.Unmarshal(data, &body) == nil && body.Error != "" {
		e.Message = body.Error
	} else {
		// Not the orchestrator's error shape (a proxy's page, say): the
		// start of it, to tell what answered.
		e.Message = strings.TrimSpace(string(data))
		if len(e.Message) > 200 {
			e.Message = strings.ToValidUTF8(e.Message[:200], "") + "..."
		}
	}
	return e
}
