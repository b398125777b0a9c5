package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testToken = "s3cret-token-0123456789abcdef"

// recorded is a request a fake server saw.
type recorded struct {
	method, uri, contentType, auth string
	body                           string
}

// fakeServer answers every request with status and body, and records it.
func fakeServer(t *testing.T, status int, body string) (*httptest.Server, *[]recorded) {
	t.Helper()
	var seen []recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		seen = append(seen, recorded{r.Method, r.RequestURI, r.Header.Get("Content-Type"), r.Header.Get("Authorization"), string(data)})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &seen
}

func newTestClient(t *testing.T, base string, opts ...Option) *Client {
	t.Helper()
	c, err := NewClient(base, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestNewClientRefusesUnusableBaseURLs(t *testing.T) {
	for _, base := range []string{"", "orchestrator:8080", "ftp://orchestrator", "http://", "http://h/?x=1", "http://h/#f", "http://h:bad"} {
		if c, err := NewClient(base); err == nil {
			t.Errorf("NewClient(%q) = %v, want an error", base, c)
		}
	}
	if _, err := NewClient("https://user:hunter2-password@h/"); err != nil {
		t.Errorf("NewClient with user info: %v", err)
	}
	if _, err := NewClient("http://user:hunter2-password@h/?q"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("NewClient error %v: want one without the URL's password", err)
	}
}

// TestClientRequests checks what each method sends: method, path, query,
// body, headers.
func TestClientRequests(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name        string
		status      int
		call        func(c *Client) error
		method, uri string
		contentType string
		body        string
	}{
		{"register", 201, func(c *Client) error {
			_, err := c.Register(ctx, Registration{Name: "a", Type: AgentTypeCost, Host: "127.0.0.1", Port: 9000})
			return err
		}, "POST", "/orch/agents/register", "application/json", `{"name":"a","type":"cost","host":"127.0.0.1","port":9000}`},
		{"heartbeat, empty", 200, func(c *Client) error {
			_, err := c.Heartbeat(ctx, "id-1", HeartbeatRequest{})
			return err
		}, "POST", "/orch/agents/id-1/heartbeat", "application/json", `{}`},
		{"heartbeat, escaped ID", 200, func(c *Client) error {
			_, err := c.Heartbeat(ctx, "a b?c", HeartbeatRequest{Status: AgentDegraded})
			return err
		}, "POST", "/orch/agents/a%20b%3Fc/heartbeat", "application/json", `{"status":"degraded"}`},
		{"unregister: no body, no Content-Type", 200, func(c *Client) error {
			return c.Unregister(ctx, "id-1")
		}, "POST", "/orch/agents/id-1/unregister", "", ``},
		{"list agents", 200, func(c *Client) error {
			_, err := c.ListAgents(ctx, "")
			return err
		}, "GET", "/orch/agents", "", ``},
		{"list agents of a type", 200, func(c *Client) error {
			_, err := c.ListAgents(ctx, AgentTypeResource)
			return err
		}, "GET", "/orch/agents/type/resource", "", ``},
		{"get agent", 200, func(c *Client) error {
			_, err := c.GetAgent(ctx, "id-1")
			return err
		}, "GET", "/orch/agents/id-1", "", ``},
		{"submit: zero retries are sent", 201, func(c *Client) error {
			_, err := c.SubmitTask(ctx, TaskRequest{TaskType: "t", AgentType: AgentTypeCost, MaxRetries: new(0)})
			return err
		}, "POST", "/orch/tasks", "application/json", `{"task_type":"t","agent_type":"cost","max_retries":0}`},
		{"get task", 200, func(c *Client) error {
			_, err := c.GetTask(ctx, "t-1")
			return err
		}, "GET", "/orch/tasks/t-1", "", ``},
		{"list tasks", 200, func(c *Client) error {
			_, err := c.ListTasks(ctx, ListTasksOptions{})
			return err
		}, "GET", "/orch/tasks", "", ``},
		{"list tasks with every parameter", 200, func(c *Client) error {
			_, err := c.ListTasks(ctx, ListTasksOptions{Status: TaskFailed, Limit: 5, Cursor: "41"})
			return err
		}, "GET", "/orch/tasks?cursor=41&limit=5&status=failed", "", ``},
		{"cancel task", 200, func(c *Client) error {
			_, err := c.CancelTask(ctx, "t-1")
			return err
		}, "DELETE", "/orch/tasks/t-1", "", ``},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, seen := fakeServer(t, tc.status, "{}")
			c := newTestClient(t, srv.URL+"/orch/", WithToken(testToken))
			if err := tc.call(c); err != nil {
				t.Fatal(err)
			}
			want := recorded{tc.method, tc.uri, tc.contentType, "Bearer " + testToken, tc.body}
			if len(*seen) != 1 || (*seen)[0] != want {
				t.Errorf("sent %+v, want %+v", *seen, want)
			}
		})
	}
}

func TestClientSendsNoAuthorizationWithoutToken(t *testing.T) {
	srv, seen := fakeServer(t, 200, `{"agents":[],"count":0}`)
	c := newTestClient(t, srv.URL)
	if _, err := c.ListAgents(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if got := (*seen)[0].auth; got != "" {
		t.Errorf("Authorization %q without a token", got)
	}
}

func TestClientRefusesIDsThatAreNotOneSegment(t *testing.T) {
	srv, seen := fakeServer(t, 200, "{}")
	c := newTestClient(t, srv.URL)
	for _, id := range []string{"", ".", "..", "a/b", "../tasks"} {
		if _, err := c.GetAgent(context.Background(), id); err == nil {
			t.Errorf("GetAgent(%q): no error", id)
		}
		if _, err := c.CancelTask(context.Background(), id); err == nil {
			t.Errorf("CancelTask(%q): no error", id)
		}
	}
	if len(*seen) != 0 {
		t.Errorf("requests were sent: %+v", *seen)
	}
}

func TestAPIError(t *testing.T) {
	cases := []struct {
		name        string
		status      int
		body        string
		wantMessage string
	}{
		{"the server's message", 503, `{"error":"no healthy cost agent has the capability \"x\""}` + "\n", `no healthy cost agent has the capability "x"`},
		{"not the error shape", 502, "<html>bad gateway</html>", "<html>bad gateway</html>"},
		{"a long body is cut", 502, strings.Repeat("x", 1000), strings.Repeat("x", 200) + "..."},
		{"an empty body", 500, "", ""},
		{"a redirect is not followed", 301, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, seen := fakeServer(t, tc.status, tc.body)
			c := newTestClient(t, srv.URL, WithToken(testToken))
			_, err := c.SubmitTask(context.Background(), TaskRequest{TaskType: "x", AgentType: AgentTypeCost})
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v (%T), want an *APIError", err, err)
			}
			want := APIError{Method: "POST", Path: "/tasks", StatusCode: tc.status, Message: tc.wantMessage}
			if *apiErr != want {
				t.Errorf("error %+v, want %+v", *apiErr, want)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(tc.status)) || strings.Contains(err.Error(), testToken) {
				t.Errorf("error %q: want the status and not the token", err)
			}
			if len(*seen) != 1 {
				t.Errorf("%d requests, want 1", len(*seen))
			}
		})
	}
}

func TestIsNotFound(t *testing.T) {
	srv, _ := fakeServer(t, 404, `{"error":"agent \"x\" not found"}`)
	c := newTestClient(t, srv.URL)
	_, err := c.GetAgent(context.Background(), "x")
	if !IsNotFound(err) || !strings.HasSuffix(err.Error(), `404: agent "x" not found`) {
		t.Errorf("error %v: want a 404 APIError with the server's message", err)
	}
	if IsNotFound(errors.New("404")) || IsNotFound(&APIError{StatusCode: 400}) {
		t.Error("IsNotFound is true for errors that are not 404 APIErrors")
	}
}

func TestClientDecodingErrorIsReported(t *testing.T) {
	srv, _ := fakeServer(t, 200, `{"agents":"not a list"}`)
	c := newTestClient(t, srv.URL)
	if _, err := c.ListAgents(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Errorf("error %v, want a decoding error", err)
	}
}

// TestNoTokenInErrorsOrStrings covers every way a Client or its errors
// can be shown.
func TestNoTokenInErrorsOrStrings(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close() // refused connections from now on
	c := newTestClient(t, base, WithToken(testToken))
	_, err := c.GetTask(context.Background(), "t-1")
	if err == nil {
		t.Fatal("no error from a closed server")
	}
	shown := []string{err.Error(), fmt.Sprint(c), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), c.String()}
	for _, s := range shown {
		if strings.Contains(s, testToken) {
			t.Errorf("the token is shown: %s", s)
		}
	}
	if !strings.Contains(c.String(), "token: set") {
		t.Errorf("String() = %q: want it to say a token is set", c.String())
	}
}

func TestWaitTask(t *testing.T) {
	answers := []string{`{"task_id":"t","status":"pending"}`, `{"task_id":"t","status":"dispatched"}`, `{"task_id":"t","status":"completed","result":7}`}
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, answers[min(calls, len(answers)-1)])
		calls++
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	task, err := c.WaitTask(context.Background(), "t", 1)
	if err != nil || task.Status != TaskCompleted || string(task.Result) != "7" || calls != 3 {
		t.Errorf("WaitTask = %+v, %v after %d calls; want completed with result 7 after 3", task, err, calls)
	}

	// Never finishing: the wait ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	polls := 0
	pending := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		polls++
		if polls == 2 {
			cancel()
		}
		_, _ = io.WriteString(w, `{"task_id":"t","status":"pending"}`)
	}))
	defer pending.Close()
	if _, err := newTestClient(t, pending.URL).WaitTask(ctx, "t", 1); !errors.Is(err, context.Canceled) || polls != 2 {
		t.Errorf("WaitTask with a context cancelled at the 2nd poll: %v after %d polls, want context.Canceled after 2", err, polls)
	}
	if _, err := c.WaitTask(context.Background(), "t", 0); err == nil {
		t.Error("WaitTask with interval 0: no error")
	}
}
