//go:build crosslang

// Package crosslang runs the real orchestrator binary against Python agents
// written the way OptiInfra's existing agents are, and checks both agent
// protocols end to end: dialect A (agent/agent.py, Flask + requests:
// register, heartbeat, task delivery, retries and unregister on SIGTERM)
// and the /api/v1 dialect B (v1/, async httpx clients shaped like the
// performance, resource and application agents: register, both heartbeat
// forms, restarts, listings, bad input, tokens, a routed task, delete),
// and execution plans whose steps agent.py carries out, with rollback
// (crosslang_plans_test.go).
//
//	go test -race -tags crosslang -count=1 ./test/crosslang/
//
// It needs Debian's python3-flask, python3-requests and python3-httpx for
// /usr/bin/python3 (or the interpreter named by CROSSLANG_PYTHON), and fails
// when they are missing rather than skip.
package crosslang

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

const (
	agentName    = "crosslang-cost-agent"
	agentType    = "cost"
	agentVersion = "0.9.1"
)

// agentCapabilities are what the agent advertises. It answers "unsupported"
// with 400, the orchestrator's cue not to retry.
var agentCapabilities = []string{"analyze", "fail", "soft_fail", "sleep", "unsupported"}

// analyzeResult is what agent.py puts in the result of an "analyze" task.
type analyzeResult struct {
	Agent          string         `json:"agent"`
	AgentID        string         `json:"agent_id"`
	TaskID         string         `json:"task_id"`
	Parameters     map[string]any `json:"parameters"`
	TimeoutSeconds int            `json:"timeout_seconds"`
	Priority       int            `json:"priority"`
	Metadata       map[string]any `json:"metadata"`
	Count          int            `json:"count"`
	Sum            float64        `json:"sum"`
	Mean           float64        `json:"mean"`
}

func TestPythonAgentAgainstOrchestrator(t *testing.T) {
	baseline := runtime.NumGoroutine()
	transport := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	// Registered first, so it runs last: every process is gone by then.
	t.Cleanup(func() { checkGoroutines(t, baseline, transport) })

	python := pythonWith(t, "flask", "requests")
	root := repoRoot(t)
	bin := buildOrchestrator(t, root)

	// The orchestrator.
	base, orch := startOrchestrator(t, client, bin,
		"AGENT_HEARTBEAT_INTERVAL=1s", "TASK_RETRY_BACKOFF=50ms", "TASK_RETRY_BACKOFF_MAX=200ms")
	api, err := orchestrator.NewClient(base, orchestrator.WithHTTPClient(client))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// The Python agent.
	agentPort := freePort(t)
	agent := start(t, "agent", t.TempDir(), []string{"PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"},
		python, filepath.Join(root, "test", "crosslang", "agent", "agent.py"),
		"--orchestrator-url", base,
		"--name", agentName,
		"--type", agentType,
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(agentPort),
		"--capabilities", strings.Join(agentCapabilities, ","),
		"--version", agentVersion,
	)
	m := agent.waitLine(t, regexp.MustCompile(`^registered (\S+)$`), 20*time.Second)
	agentID := m[1]
	t.Logf("agent registered as %s", agentID)

	// The registry shows it as it registered, healthy, and heartbeats move
	// last_seen forward.
	first, err := api.GetAgent(ctx, agentID)
	if err != nil {
		t.Fatal(err)
	}
	want := orchestrator.Agent{ID: agentID, Name: agentName, Type: agentType, Host: "127.0.0.1", Port: agentPort,
		Capabilities: agentCapabilities, Status: orchestrator.AgentHealthy, Version: agentVersion,
		AnnouncedHost: "127.0.0.1", AddressSource: orchestrator.AddressAnnounced}
	got := first
	got.RegisteredAt, got.LastSeen, got.Metadata = time.Time{}, time.Time{}, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("GET /agents/%s = %+v, want %+v", agentID, got, want)
	}
	if first.RegisteredAt.IsZero() || first.LastSeen.Before(first.RegisteredAt) {
		t.Errorf("registered_at %v, last_seen %v: want both set, last_seen not before registered_at",
			first.RegisteredAt, first.LastSeen)
	}
	if first.Metadata["language"] != "python" {
		t.Errorf("metadata = %v, want the agent's registration metadata (language: python)", first.Metadata)
	}
	lastSeen := first.LastSeen
	for advanced := 0; advanced < 2; {
		deadline := time.Now().Add(5 * time.Second)
		for {
			a, err := api.GetAgent(ctx, agentID)
			if err != nil {
				t.Fatal(err)
			}
			if a.Status != orchestrator.AgentHealthy {
				t.Fatalf("agent status %q while heartbeating, want healthy", a.Status)
			}
			if a.LastSeen.After(lastSeen) {
				lastSeen = a.LastSeen
				advanced++
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("last_seen stuck at %v for 5s with a 1s heartbeat interval", lastSeen)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("heartbeats moved last_seen to %s", lastSeen.Format(time.RFC3339Nano))
	for _, typ := range []orchestrator.AgentType{"", agentType} {
		list, err := api.ListAgents(ctx, typ)
		if err != nil || len(list) != 1 || list[0].ID != agentID {
			t.Errorf("ListAgents(%q) = %+v, %v; want just %s", typ, list, err, agentID)
		}
	}

	// A task the agent completes: the result is the Python agent's.
	params := map[string]any{"values": []any{1.0, 2.0, 3.5}, "account": "acme-prod"}
	created := createTask(t, api, orchestrator.TaskRequest{
		TaskType: "analyze", AgentType: agentType, Parameters: mustJSON(t, params),
		TimeoutSeconds: new(10), Priority: 3, Metadata: json.RawMessage(`{"source":"crosslang"}`),
	})
	done := waitTask(t, api, created.TaskID)
	if done.Status != orchestrator.TaskCompleted || done.AgentID != agentID || done.RetryCount != 0 || done.Error != "" {
		t.Fatalf("analyze task ended %+v, want completed by %s with retry_count 0 and no error", done, agentID)
	}
	if done.StartedAt == nil || done.CompletedAt == nil || done.CompletedAt.Before(*done.StartedAt) {
		t.Errorf("started_at %v, completed_at %v: want both set, in order", done.StartedAt, done.CompletedAt)
	}
	t.Logf("analyze task %s completed in %s", done.TaskID, done.CompletedAt.Sub(done.CreatedAt).Round(time.Microsecond))
	var res analyzeResult
	if err := json.Unmarshal(done.Result, &res); err != nil {
		t.Fatalf("task result %s: %v", done.Result, err)
	}
	if res.Agent != agentName || res.AgentID != agentID || res.TaskID != created.TaskID ||
		res.Count != 3 || res.Sum != 6.5 || res.TimeoutSeconds != 10 || res.Priority != 3 ||
		!reflect.DeepEqual(res.Parameters, params) || res.Metadata["source"] != "crosslang" {
		t.Errorf("task result = %s, want the agent's analysis of %v (sum 6.5) for task %s with timeout 10, priority 3 and the metadata",
			done.Result, params, created.TaskID)
	}
	if n := agent.count(taskLine(created.TaskID, "analyze", 200)); n != 1 {
		t.Errorf("the agent answered the analyze task %d times, want 1", n)
	}

	// A task type the agent does not advertise cannot be routed.
	_, err = api.SubmitTask(ctx, orchestrator.TaskRequest{TaskType: "forecast", AgentType: agentType})
	var apiErr *orchestrator.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || apiErr.Message == "" {
		t.Errorf(`POST /tasks for an unadvertised task type: %v, want 503 with an "error" message`, err)
	}

	// The agent refuses a task with 400: failed at once, no retry.
	created = createTask(t, api, orchestrator.TaskRequest{TaskType: "unsupported", AgentType: agentType, MaxRetries: new(3)})
	done = waitTask(t, api, created.TaskID)
	if done.Status != orchestrator.TaskFailed || done.RetryCount != 0 || done.Error == "" {
		t.Errorf("task the agent answered 400 ended %+v, want failed with retry_count 0 and an error", done)
	}
	if n := agent.count(taskLine(created.TaskID, "unsupported", 400)); n != 1 {
		t.Errorf("the agent was sent the 400 task %d times, want 1", n)
	}

	// The agent fails a task with 500: retried max_retries times, then failed.
	created = createTask(t, api, orchestrator.TaskRequest{TaskType: "fail", AgentType: agentType, MaxRetries: new(1)})
	done = waitTask(t, api, created.TaskID)
	if done.Status != orchestrator.TaskFailed || done.RetryCount != 1 || done.Error == "" {
		t.Errorf("task the agent answered 500 ended %+v, want failed with retry_count 1 and an error", done)
	}
	if n := agent.count(taskLine(created.TaskID, "fail", 500)); n != 2 {
		t.Errorf("the agent was sent the 500 task %d times, want 2 (one try, one retry)", n)
	}

	// The agent reports a failure in a 200 answer: retried like a 500.
	created = createTask(t, api, orchestrator.TaskRequest{TaskType: "soft_fail", AgentType: agentType, MaxRetries: new(1)})
	done = waitTask(t, api, created.TaskID)
	if done.Status != orchestrator.TaskFailed || done.RetryCount != 1 || done.Error == "" {
		t.Errorf(`task the agent answered 200 {"status":"failed"} ended %+v, want failed with retry_count 1 and an error`, done)
	}
	if n := agent.count(taskLine(created.TaskID, "soft_fail", 200)); n != 2 {
		t.Errorf(`the agent was sent the 200 {"status":"failed"} task %d times, want 2 (one try, one retry)`, n)
	}

	// The agent answers after the task's timeout: the task ends timeout.
	started := time.Now()
	created = createTask(t, api, orchestrator.TaskRequest{TaskType: "sleep", AgentType: agentType,
		Parameters: json.RawMessage(`{"seconds":10}`), TimeoutSeconds: new(1), MaxRetries: new(0)})
	done = waitTask(t, api, created.TaskID)
	if done.Status != orchestrator.TaskTimeout || done.RetryCount != 0 {
		t.Errorf("task the agent answered after its 1s timeout ended %+v, want timeout with retry_count 0", done)
	}
	if took := time.Since(started); took > 5*time.Second {
		t.Errorf("task with timeout_seconds 1 took %s to end", took.Round(time.Millisecond))
	} else {
		t.Logf("task with timeout_seconds 1 ended %s after %s", done.Status, took.Round(time.Millisecond))
	}

	// SIGTERM: the agent unregisters and exits 0; the orchestrator forgets it.
	if err := agent.terminate(); err != nil {
		t.Fatalf("SIGTERM to the agent: %v", err)
	}
	sigterm := time.Now()
	if code := agent.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("the agent exited %d after SIGTERM, want 0", code)
	}
	t.Logf("the agent unregistered and exited 0 %s after SIGTERM", time.Since(sigterm).Round(time.Millisecond))
	if agent.count(regexp.MustCompile(`^unregistered `+regexp.QuoteMeta(agentID)+`$`)) != 1 {
		t.Errorf("the agent did not report a successful unregister")
	}
	if _, err := api.GetAgent(ctx, agentID); !orchestrator.IsNotFound(err) {
		t.Errorf("GET /agents/%s after the agent unregistered: %v, want 404", agentID, err)
	}
	if list, err := api.ListAgents(ctx, ""); err != nil || len(list) != 0 {
		t.Errorf("GET /agents after the agent unregistered = %+v, %v; want none", list, err)
	}

	// The orchestrator drains and exits 0 on SIGTERM.
	if err := orch.terminate(); err != nil {
		t.Fatalf("SIGTERM to the orchestrator: %v", err)
	}
	sigterm = time.Now()
	if code := orch.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("the orchestrator exited %d after SIGTERM, want 0", code)
	}
	t.Logf("the orchestrator exited %s after SIGTERM", time.Since(sigterm).Round(time.Millisecond))
}

// taskLine matches agent.py's line for one answered task.
func taskLine(taskID, taskType string, status int) *regexp.Regexp {
	return regexp.MustCompile(fmt.Sprintf(`^task %s %s -> %d$`, regexp.QuoteMeta(taskID), regexp.QuoteMeta(taskType), status))
}

// pythonWith returns the interpreter the agents run on, failing the test
// when it cannot import every one of modules (Debian's python3-<module>).
func pythonWith(t *testing.T, modules ...string) string {
	t.Helper()
	python := os.Getenv("CROSSLANG_PYTHON")
	if python == "" {
		python = "/usr/bin/python3"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", "import "+strings.Join(modules, ", ")).CombinedOutput()
	if err != nil {
		packages := make([]string, len(modules))
		for i, m := range modules {
			packages[i] = "python3-" + m
		}
		t.Fatalf("%s cannot import %s (%v): %s\ninstall them: apt-get install %s",
			python, strings.Join(modules, ", "), err, bytes.TrimSpace(out), strings.Join(packages, " "))
	}
	return python
}

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Clean(filepath.Join(wd, "..", ".."))
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/optiinfra/orchestrator\n")) {
		t.Fatalf("%s is not the orchestrator's module root (go.mod: %v)", root, err)
	}
	return root
}

// built is the orchestrator binary the tests share: built once, by the
// first test that needs it, into a directory TestMain removes.
var built struct {
	once sync.Once
	dir  string
	bin  string
	log  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildOrchestrator builds ./cmd/orchestrator once for the package's tests,
// with the race detector when it is available, so that data races under
// real traffic fail the test.
//
// CROSSLANG_ORCHESTRATOR names a binary already built to use instead.
func buildOrchestrator(t *testing.T, root string) string {
	t.Helper()
	if bin := os.Getenv("CROSSLANG_ORCHESTRATOR"); bin != "" {
		t.Logf("using CROSSLANG_ORCHESTRATOR=%s", bin)
		return bin
	}
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "crosslang-orchestrator-")
		if built.err != nil {
			return
		}
		bin := filepath.Join(built.dir, "orchestrator")
		build := func(extra ...string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			args := append(append([]string{"build"}, extra...), "-o", bin, "./cmd/orchestrator")
			c := exec.CommandContext(ctx, "go", args...)
			c.Dir = root
			return c.CombinedOutput()
		}
		started := time.Now()
		if out, err := build("-race"); err != nil {
			built.log = fmt.Sprintf("go build -race failed, built without the race detector: %v\n%s\n", err, out)
			if out, err := build(); err != nil {
				built.err = fmt.Errorf("go build ./cmd/orchestrator: %w\n%s", err, out)
				return
			}
		}
		built.bin = bin
		built.log += fmt.Sprintf("built the orchestrator in %s", time.Since(started).Round(time.Millisecond))
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	t.Log(built.log)
	return built.bin
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a child process in its own process group, with its output
// collected line by line.
type process struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser // the process's stdin, a pipe closed when it ends
	out    *lines
	exited chan struct{} // closed once Wait returned
	err    error         // Wait's error, set before exited is closed
	// watchdog is set when the process was killed because go test's
	// -timeout was about to end the test.
	watchdog atomic.Bool
}

// start runs argv in dir with a minimal environment plus env. The process
// group is killed when the test ends, and its output is logged if the test
// failed.
func start(t *testing.T, name, dir string, env []string, argv ...string) *process {
	t.Helper()
	c := exec.Command(argv[0], argv[1:]...)
	c.Dir = dir
	c.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LANG=C.UTF-8"}, env...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &process{name: name, cmd: c, out: &lines{}, exited: make(chan struct{})}
	c.Stdout, c.Stderr = p.out, p.out
	stdin, err := c.StdinPipe()
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p.stdin = stdin
	c.WaitDelay = 5 * time.Second // a grandchild holding the pipes open cannot hang Wait
	if err := c.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = c.Wait()
		close(p.exited)
	}()
	// Cleanups do not run when go test's -timeout panics: kill the group
	// shortly before that instead, so nothing outlives the test binary.
	watchdog := time.AfterFunc(time.Hour, func() {
		if p.running() {
			p.watchdog.Store(true)
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
	})
	if deadline, ok := t.Deadline(); ok {
		watchdog.Reset(time.Until(deadline) - 5*time.Second)
	} else {
		watchdog.Stop()
	}
	t.Cleanup(func() {
		watchdog.Stop()
		select {
		case <-p.exited:
		default:
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s output (%s):\n%s", name, p.state(), p.out.String())
		}
	})
	return p
}

// terminate sends SIGTERM to the process.
func (p *process) terminate() error { return p.cmd.Process.Signal(syscall.SIGTERM) }

func (p *process) state() string {
	select {
	case <-p.exited:
		if p.watchdog.Load() {
			return "killed 5s before the go test -timeout"
		}
		if p.err != nil {
			return p.err.Error()
		}
		return "exit status 0"
	default:
		return "running"
	}
}

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitExit returns the exit code, failing the test if the process is still
// running after d (it is then killed by the cleanup).
func (p *process) waitExit(t *testing.T, d time.Duration) int {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		t.Fatalf("%s still running %s after the signal", p.name, d)
	}
	var exit *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &exit):
		return exit.ExitCode() // -1 when killed by a signal
	default:
		t.Fatalf("%s: %v", p.name, p.err)
		return -1
	}
}

// waitLine waits for a line of output matching re and returns its submatches.
func (p *process) waitLine(t *testing.T, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if m := p.out.find(re); m != nil {
			return m
		}
		if !p.running() {
			t.Fatalf("%s exited (%s) before printing a line matching %q", p.name, p.state(), re)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed no line matching %q within %s", p.name, re, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// count is how many lines of output match re.
func (p *process) count(re *regexp.Regexp) int { return p.out.count(re) }

// lines is an io.Writer that keeps what a process writes, split into lines.
type lines struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	done    []string
}

func (l *lines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(b)
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.done = append(l.done, strings.TrimRight(string(l.partial[:i]), "\r"))
		l.partial = l.partial[i+1:]
	}
	return len(b), nil
}

func (l *lines) find(re *regexp.Regexp) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.done {
		if m := re.FindStringSubmatch(s); m != nil {
			return m
		}
	}
	return nil
}

func (l *lines) count(re *regexp.Regexp) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.done {
		if re.MatchString(s) {
			n++
		}
	}
	return n
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// waitReady waits for the orchestrator's /ready to answer 200.
// startOrchestrator runs the binary on a free loopback port with debug
// logs, no shutdown delay and env on top, and returns its base URL once
// /ready answers 200.
func startOrchestrator(t *testing.T, client *http.Client, bin string, env ...string) (string, *process) {
	t.Helper()
	port := strconv.Itoa(freePort(t))
	orch := start(t, "orchestrator", t.TempDir(), append([]string{
		"PORT=" + port, "HTTP_HOST=127.0.0.1", "LOG_LEVEL=debug", "SHUTDOWN_DELAY=0s",
	}, env...), bin)
	base := "http://" + net.JoinHostPort("127.0.0.1", port)
	waitReady(t, client, base, orch)
	return base, orch
}

func waitReady(t *testing.T, client *http.Client, base string, orch *process) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, err := probe(client, base+"/ready")
		if err == nil && status == http.StatusOK {
			return
		}
		if !orch.running() {
			t.Fatalf("the orchestrator exited (%s) before it was ready", orch.state())
		}
		if time.Now().After(deadline) {
			t.Fatalf("the orchestrator was not ready within 30s: last answer %d, %v", status, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probe GETs url and returns the status code.
func probe(client *http.Client, url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// createTask submits a task, expecting 201 and the design's answer.
func createTask(t *testing.T, api *orchestrator.Client, req orchestrator.TaskRequest) orchestrator.TaskAccepted {
	t.Helper()
	c, err := api.SubmitTask(context.Background(), req)
	if err != nil {
		t.Fatalf("POST /tasks %+v: %v", req, err)
	}
	if c.TaskID == "" || c.StatusURL != "/tasks/"+c.TaskID || c.CreatedAt.IsZero() ||
		(c.Status != orchestrator.TaskDispatched && c.Status != orchestrator.TaskPending) {
		t.Errorf("POST /tasks answer %+v: want a task_id, status_url /tasks/<task_id>, created_at and status dispatched or pending", c)
	}
	if c.TaskID == "" {
		t.FailNow()
	}
	return c
}

// waitTask polls GET /tasks/<id> until the task is in a terminal state.
func waitTask(t *testing.T, api *orchestrator.Client, id string) orchestrator.Task {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		task, err := api.GetTask(context.Background(), id)
		if err != nil {
			t.Fatalf("GET /tasks/%s: %v", id, err)
		}
		switch task.Status {
		case orchestrator.TaskCompleted, orchestrator.TaskFailed, orchestrator.TaskTimeout, orchestrator.TaskCancelled:
			if task.TaskID != id {
				t.Errorf("GET /tasks/%s answered task_id %q", id, task.TaskID)
			}
			return task
		case orchestrator.TaskPending, orchestrator.TaskDispatched, orchestrator.TaskRetrying:
		default:
			t.Fatalf("GET /tasks/%s: unknown status %q", id, task.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s still %s after 20s: %+v", id, task.Status, task)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkGoroutines fails the test if goroutines it started outlive it.
func checkGoroutines(t *testing.T, baseline int, transport *http.Transport) {
	transport.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines left, %d when the test started:\n%s",
				runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
