// Package cluster runs two (or more) real orchestrator binaries over one
// real PostgreSQL and checks what issue 10 promises of the PostgreSQL mode
// from the outside, the way a load balancer, an agent and an operator see
// it: an agent and its tasks are shared by every replica; a replica killed
// mid-delivery leaves no task stuck; a database restart under load costs
// 503s with Retry-After, never a 500 or a dropped connection; every agent
// and every unfinished task survives restarting every replica; a cancel
// through one replica aborts another's delivery.
//
// It needs Debian's postgresql package (make deps installs it) and fails,
// never skips, without it. The binary is built once, with the race
// detector, into a temporary directory; every process a test starts is
// killed when the test ends, and with the test binary if it dies.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// binary is the orchestrator, built once by TestMain.
var binary string

// leaseDuration is the replicas' TASK_LEASE_DURATION: how long a claim of
// a task outlives the replica that holds it. Short, so that a takeover
// costs the tests seconds; long enough that a busy machine does not miss
// a renewal.
const leaseDuration = 3 * time.Second

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "finding the module root: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "cluster-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-race", "-o", binary, "./cmd/orchestrator")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the orchestrator: %v\n%s", err, out)
		return 1
	}
	// goleak runs after the shared PostgreSQL is gone: every goroutine a
	// test started (load, fake agents, process waiters) must have ended.
	code := pgtest.Wrap(m).Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines outlived the tests: %v\n", err)
			return 1
		}
	}
	return code
}

// replica is one running orchestrator process.
type replica struct {
	name   string
	base   string // http://127.0.0.1:port
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// replicaEnv is every replica's environment; a test's extra variables
// come after it and win.
func replicaEnv(databaseURL string) []string {
	return []string{
		"PORT=0", "HTTP_HOST=127.0.0.1", "LOG_LEVEL=info",
		"DATABASE_URL=" + databaseURL,
		"TASK_LEASE_DURATION=" + leaseDuration.String(),
		"SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=10s",
		// /ready follows the database within a fraction of a second.
		"HEALTH_CHECK_INTERVAL=250ms", "HEALTH_CHECK_TIMEOUT=200ms",
		"TASK_RETRY_BACKOFF=50ms", "TASK_RETRY_BACKOFF_MAX=500ms",
	}
}

// startReplica starts the binary over databaseURL and waits until it
// answers /ready with 200. The test's cleanup kills it if it still runs,
// fails the test if it reported a data race or printed the database
// password, and shows its output when the test failed.
func startReplica(t *testing.T, name, databaseURL string, env ...string) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, binary) //nolint:gosec // G204: the binary this package built
	cmd.Dir = t.TempDir()                   // no ./.env from the repository
	cmd.Env = append(replicaEnv(databaseURL), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	r := &replica{name: name, cmd: cmd, out: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = r.out, r.out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		cancel() // kills it if it still runs
		<-r.exited
		out := r.out.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", name)
		}
		if u, err := url.Parse(databaseURL); err == nil {
			if pw, ok := u.User.Password(); ok && strings.Contains(out, pw) {
				t.Errorf("%s wrote the database password in its output", name)
			}
		}
		if t.Failed() {
			t.Logf("%s output (%s):\n%s", name, cmd.ProcessState, out)
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for r.base == "" {
		if addr := r.out.listening(); addr != "" {
			r.base = "http://" + addr
			break
		}
		select {
		case <-r.exited:
			t.Fatalf("%s exited before listening (%s):\n%s", name, cmd.ProcessState, r.out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen within a minute:\n%s", name, r.out)
		}
	}
	eventually.True(t, 60*time.Second, name+" to answer /ready with 200", func() bool {
		return get(probeClient, r.base+"/ready").status == http.StatusOK
	})
	t.Logf("%s listening at %s", name, r.base)
	return r
}

// terminate sends SIGTERM and waits for a clean exit (code 0).
func (r *replica) terminate(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to %s: %v", r.name, err)
	}
	select {
	case <-r.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s still running a minute after SIGTERM", r.name)
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("%s exited %d after SIGTERM, want 0 (a clean drain)", r.name, code)
	}
}

// kill sends SIGKILL, as an OOM kill or a node failure would, and waits
// until the process is gone.
func (r *replica) kill(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL to %s: %v", r.name, err)
	}
	<-r.exited
}

// api is a Go client of the replica, through hc.
func (r *replica) api(t *testing.T, hc *http.Client) *orchestrator.Client {
	t.Helper()
	c, err := orchestrator.NewClient(r.base, orchestrator.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// listening returns the address of the "orchestrator listening" log line,
// or "" before it.
func (l *lockedBuffer) listening() string {
	for _, line := range strings.Split(l.String(), "\n") {
		var entry struct {
			Message string `json:"message"`
			Address string `json:"address"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Message == "orchestrator listening" {
			return entry.Address
		}
	}
	return ""
}

// newClient returns an HTTP client whose idle connections are closed when
// the test ends (so no connection goroutine outlives it).
func newClient(t *testing.T) *http.Client {
	t.Helper()
	transport := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: 15 * time.Second}
}

// probeClient asks for probes on a new connection each time, as the
// kubelet does.
var probeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// result is what one raw request got.
type result struct {
	status     int
	retryAfter string
	body       []byte
	err        error
}

func (r result) String() string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("%d %s", r.status, bytes.TrimSpace(r.body))
}

// call sends one request (a JSON body when body is not nil) and reads the
// whole answer.
func call(hc *http.Client, method, target string, body any) result {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return result{err: err}
		}
		reader = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return result{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: data, err: err}
}

func get(hc *http.Client, target string) result { return call(hc, http.MethodGet, target, nil) }

// fakeAgent is an agent's task endpoint: an httptest.Server on 127.0.0.1
// serving POST /task with the Go SDK's TaskFunc. It counts deliveries per
// task_id and can hold deliveries until released or aborted.
type fakeAgent struct {
	server *httptest.Server

	mu         sync.Mutex
	deliveries map[string]int // attempts received, by task_id
	answered   map[string]int // attempts answered 200 completed, by task_id
	holding    bool
	release    chan struct{} // closed by releaseHeld
	held       chan heldDelivery
}

// heldDelivery is a delivery the agent holds.
type heldDelivery struct {
	taskID string
	// aborted is closed when the orchestrator ended the request (its
	// context ended) before the agent answered.
	aborted chan struct{}
}

func newFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	a := &fakeAgent{
		deliveries: map[string]int{},
		answered:   map[string]int{},
		release:    make(chan struct{}),
		held:       make(chan heldDelivery, 1000),
	}
	mux := http.NewServeMux()
	mux.Handle("POST /task", orchestrator.TaskFunc(a.run))
	a.server = httptest.NewServer(mux)
	t.Cleanup(func() {
		a.releaseHeld()
		a.server.Close()
	})
	return a
}

func (a *fakeAgent) run(ctx context.Context, d orchestrator.Delivery) (any, error) {
	a.mu.Lock()
	a.deliveries[d.TaskID]++
	hold, release := a.holding, a.release
	a.mu.Unlock()
	if hold {
		h := heldDelivery{taskID: d.TaskID, aborted: make(chan struct{})}
		a.held <- h
		select {
		case <-release:
		case <-ctx.Done():
			close(h.aborted)
			return nil, ctx.Err()
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	a.mu.Lock()
	a.answered[d.TaskID]++
	a.mu.Unlock()
	return map[string]string{"task_id": d.TaskID}, nil
}

// hold makes the agent hold every delivery from now on, until releaseHeld
// or the orchestrator aborts it; each held delivery is sent on a.held.
func (a *fakeAgent) hold() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.holding = true
}

// answerAtOnce makes the agent answer deliveries from now on at once;
// those it holds stay held.
func (a *fakeAgent) answerAtOnce() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.holding = false
}

// releaseHeld answers every held delivery, and answers at once from now on.
func (a *fakeAgent) releaseHeld() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.holding = false
	select {
	case <-a.release:
	default:
		close(a.release)
	}
}

// nextHeld waits for the next held delivery.
func (a *fakeAgent) nextHeld(t *testing.T) heldDelivery {
	t.Helper()
	select {
	case h := <-a.held:
		return h
	case <-time.After(30 * time.Second):
		t.Fatal("no delivery reached the agent within 30s")
		return heldDelivery{}
	}
}

// counts returns the deliveries and 200 answers of taskID.
func (a *fakeAgent) counts(taskID string) (delivered, answered int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.deliveries[taskID], a.answered[taskID]
}

// totals returns every delivery and 200 answer, and how many tasks got
// more than one delivery.
func (a *fakeAgent) totals() (delivered, answered, redelivered int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, n := range a.deliveries {
		delivered += n
		answered += a.answered[id]
		if n > 1 {
			redelivered++
		}
	}
	return delivered, answered, redelivered
}

// port is where the agent listens on 127.0.0.1.
func (a *fakeAgent) port() int {
	_, port, _ := strings.Cut(strings.TrimPrefix(a.server.URL, "http://"), ":")
	n, _ := strconv.Atoi(port)
	return n
}

// registration is the agent's registration as name, running "work".
func (a *fakeAgent) registration(name string, typ orchestrator.AgentType) orchestrator.Registration {
	return orchestrator.Registration{Name: name, Type: typ, Host: "127.0.0.1", Port: a.port(),
		Capabilities: []string{"work"}, Version: "1.0.0"}
}

// register registers reg through api and returns the agent's ID.
func register(t *testing.T, api *orchestrator.Client, reg orchestrator.Registration) string {
	t.Helper()
	resp, err := api.Register(context.Background(), reg)
	if err != nil {
		t.Fatalf("registering %s: %v", reg.Name, err)
	}
	return resp.AgentID
}

// submit submits a task of type "work" for cost agents through api.
func submit(t *testing.T, api *orchestrator.Client) orchestrator.TaskAccepted {
	t.Helper()
	accepted, err := api.SubmitTask(context.Background(), workRequest(orchestrator.AgentTypeCost))
	if err != nil {
		t.Fatalf("submitting a task: %v", err)
	}
	return accepted
}

// workRequest is a task of type "work" for agentType. Its timeout_seconds
// also bounds how long it may wait in the queue: long enough to wait
// through every restart a test makes.
func workRequest(agentType orchestrator.AgentType) orchestrator.TaskRequest {
	timeout, retries := 120, 3
	return orchestrator.TaskRequest{TaskType: "work", AgentType: agentType,
		Parameters: json.RawMessage(`{"n":1}`), TimeoutSeconds: &timeout, MaxRetries: &retries}
}

// waitStatus waits until the task, read through api, is in status want,
// and fails the test if it reaches another terminal status.
func waitStatus(t *testing.T, api *orchestrator.Client, taskID string, want orchestrator.TaskStatus, limit time.Duration) orchestrator.Task {
	t.Helper()
	var task orchestrator.Task
	eventually.True(t, limit, fmt.Sprintf("task %s to be %s", taskID, want), func() bool {
		var err error
		task, err = api.GetTask(context.Background(), taskID)
		if err != nil {
			t.Fatalf("GET /tasks/%s: %v", taskID, err)
		}
		if task.Status.Terminal() && task.Status != want {
			t.Fatalf("task %s ended %s (%s), want %s", taskID, task.Status, task.Error, want)
		}
		return task.Status == want
	})
	return task
}
