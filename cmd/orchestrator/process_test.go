package main

// Process-level tests: they build the real binary (with the race detector)
// and talk to it over loopback sockets, the way the kubelet, a load balancer
// and an operator would.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

// binary is the orchestrator built once for the process tests.
var binary string

const testVersion = "9.9.9-test"

// buildBinary builds the binary, runs the tests and returns their exit code.
func buildBinary(m interface{ Run() int }) int {
	dir, err := os.MkdirTemp("", "orchestrator-process-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "orchestrator")
	build := exec.Command("go", "build", "-race",
		"-ldflags", "-X github.com/optiinfra/orchestrator/internal/buildinfo.version="+testVersion,
		"-o", binary, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the orchestrator: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// proc is one running orchestrator process.
type proc struct {
	cmd    *exec.Cmd
	logs   *logLines
	stderr *lockedBuffer
	base   string
	exited chan struct{}
	state  *os.ProcessState
}

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

// launch starts the binary with a minimal environment plus env; the test's
// cleanup kills it if it is still running.
func launch(t *testing.T, dir string, args []string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PORT=0", "HTTP_HOST=127.0.0.1"}, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: newLogLines(), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() { scanLines(stdout, p.logs); close(copied) }()
	go func() {
		<-copied // Wait closes the pipe; read it all first
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// start launches a server and waits until it listens.
func start(t *testing.T, env ...string) *proc {
	t.Helper()
	p := launch(t, t.TempDir(), nil, env...)
	p.base = "http://" + p.logs.await(t, "orchestrator listening")["address"].(string)
	return p
}

// exitCode waits for the process to exit within limit and returns its code
// (or 128+signal).
func (p *proc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("process still running after %s; stderr: %s", limit, p.stderr)
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return p.state.ExitCode()
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// response is what a test client saw.
type response struct {
	status int
	close  bool // the server said Connection: close
	body   string
	err    error
	sent   time.Time
}

func do(client *http.Client, method, url string) response {
	r := response{sent: time.Now()}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		r.err = err
		return r
	}
	resp, err := client.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	r.status, r.close, r.body, r.err = resp.StatusCode, resp.Close, string(body), err
	return r
}

var newConnClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func TestProcessProbesErrorsAndPanics(t *testing.T) {
	p := start(t, "FAULTS_ENABLED=true", "SHUTDOWN_DELAY=0s")
	eventually.True(t, 20*time.Second, "/ready to answer 200", func() bool { return do(newConnClient, "GET", p.base+"/ready").status == 200 })

	for _, path := range []string{"/live", "/ready", "/health", "/", "/version"} {
		if r := do(newConnClient, http.MethodHead, p.base+path); r.status != 200 || r.body != "" {
			t.Errorf("HEAD %s = %d with %d body bytes, want 200 and no body", path, r.status, len(r.body))
		}
	}
	if r := do(newConnClient, "GET", p.base+"/version"); !strings.Contains(r.body, `"version":"`+testVersion+`"`) {
		t.Errorf("/version = %s, want the version stamped by -ldflags", r.body)
	}
	if r := do(newConnClient, "GET", p.base+"/missing"); r.status != 404 || !strings.HasPrefix(r.body, `{"error":`) {
		t.Errorf("GET /missing = %d %s, want 404 JSON", r.status, r.body)
	}
	req, _ := http.NewRequest(http.MethodDelete, p.base+"/health", nil)
	resp, err := newConnClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" || !strings.HasPrefix(string(body), `{"error":`) {
		t.Errorf("DELETE /health = %d Allow=%q %s, want 405 JSON with Allow", resp.StatusCode, resp.Header.Get("Allow"), body)
	}

	if r := do(newConnClient, "GET", p.base+"/faults/panic"); r.status != 500 || r.body != `{"error":"internal server error"}`+"\n" {
		t.Errorf("GET /faults/panic = %d %s, want 500 JSON", r.status, r.body)
	}
	if r := do(newConnClient, "GET", p.base+"/"); r.status != 200 {
		t.Fatalf("after a panic GET / = %d %v: the server must keep serving", r.status, r.err)
	}
	if e := p.logs.await(t, "panic serving request"); e["level"] != "error" || !strings.Contains(fmt.Sprint(e["stacktrace"]), "panicHandler") {
		t.Errorf("panic log line = %v, want error level with the panicking stack", e)
	}

	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; stderr: %s", code, p.stderr)
	}
}

func TestProcessInvalidConfigExitsTwo(t *testing.T) {
	p := launch(t, t.TempDir(), nil, "LOG_LEVEL=chatty")
	if code := p.wait(t, 20*time.Second); code != 2 {
		t.Fatalf("exit code = %d, want 2", code)
	}
	lines := strings.Split(strings.TrimSpace(p.stderr.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `LOG_LEVEL="chatty"`) {
		t.Fatalf("stderr = %q, want one line naming LOG_LEVEL and its value", p.stderr)
	}
	if p.logs.find("orchestrator listening") != nil {
		t.Fatal("the process listened despite an invalid configuration")
	}
}

func TestProcessDotEnv(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte("ENVIRONMENT=from-dotenv\nLOG_LEVEL=warn\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The real environment wins over .env: at warn the startup line (info)
	// would not be written at all.
	p := launch(t, dir, nil, "LOG_LEVEL=info", "SHUTDOWN_DELAY=0s")
	cfg, _ := p.logs.await(t, "orchestrator listening")["config"].(map[string]any)
	if cfg["environment"] != "from-dotenv" {
		t.Errorf("environment = %v, want the value from .env", cfg["environment"])
	}
	if logCfg, _ := cfg["log"].(map[string]any); logCfg["level"] != "info" {
		t.Errorf("log level = %v, want the real environment's info", logCfg["level"])
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code = %d, want 0", code)
	}
}

// loadClient sends requests back to back until stop is closed, recording
// every response.
type loadClient struct {
	client *http.Client
	mu     sync.Mutex
	seen   []response
}

func (l *loadClient) run(url string, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		r := do(l.client, http.MethodGet, url)
		l.mu.Lock()
		l.seen = append(l.seen, r)
		l.mu.Unlock()
		if r.err != nil {
			time.Sleep(5 * time.Millisecond) // the server is gone; do not spin
		}
	}
}

func (l *loadClient) responses() []response {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]response(nil), l.seen...)
}

func TestProcessSIGTERMDrainsWithoutDroppingRequests(t *testing.T) {
	const delay, timeout = 2 * time.Second, 6 * time.Second
	p := start(t, "FAULTS_ENABLED=true", "SHUTDOWN_DELAY="+delay.String(), "SHUTDOWN_TIMEOUT="+timeout.String())
	eventually.True(t, 20*time.Second, "/ready to answer 200", func() bool { return do(newConnClient, "GET", p.base+"/ready").status == 200 })

	fresh := &loadClient{client: newConnClient}
	keepAlive := &loadClient{client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { fresh.run(p.base+"/", stop) })
	wg.Go(func() { keepAlive.run(p.base+"/", stop) })
	defer func() { close(stop); wg.Wait() }()

	// A request that is still in flight when the delay ends: it must finish.
	slow := make(chan response, 1)
	go func() { slow <- do(newConnClient, http.MethodGet, p.base+"/faults/delay?duration=3s") }()

	time.Sleep(300 * time.Millisecond) // steady state before the signal
	signalled := time.Now()
	p.signal(t, syscall.SIGTERM)

	// Within the delay window: /ready fails, /live passes.
	var readyDuring, liveDuring []int
	var probes atomic.Int32
	for time.Since(signalled) < delay-500*time.Millisecond {
		readyDuring = append(readyDuring, do(newConnClient, "GET", p.base+"/ready").status)
		liveDuring = append(liveDuring, do(newConnClient, "GET", p.base+"/live").status)
		probes.Add(1)
		time.Sleep(50 * time.Millisecond)
	}

	code := p.wait(t, delay+timeout+5*time.Second)
	exitedAfter := time.Since(signalled)
	if code != 0 {
		t.Fatalf("exit code = %d, want 0; stderr: %s", code, p.stderr)
	}
	if r := <-slow; r.err != nil || r.status != 200 {
		t.Errorf("in-flight slow request = %d %v, want 200", r.status, r.err)
	}

	// /ready flips to 503 at once (allow the first probe to race the signal).
	for i, s := range readyDuring {
		if i > 0 && s != 503 {
			t.Errorf("/ready during the delay = %d (probe %d), want 503", s, i)
		}
	}
	for i, s := range liveDuring {
		if s != 200 {
			t.Errorf("/live during the delay = %d (probe %d), want 200", s, i)
		}
	}

	// Zero failed requests while the server still accepts connections.
	windowEnd := signalled.Add(delay - 200*time.Millisecond)
	for name, c := range map[string]*loadClient{"new-connection": fresh, "keep-alive": keepAlive} {
		var before, during, failed int
		var firstClose time.Time
		for _, r := range c.responses() {
			switch {
			case r.sent.Before(signalled):
				before++
				if r.err != nil || r.status != 200 {
					failed++
				}
			case r.sent.Before(windowEnd):
				during++
				if r.err != nil || r.status != 200 {
					failed++
					t.Errorf("%s client: request at +%s failed during the delay: %d %v",
						name, r.sent.Sub(signalled).Round(time.Millisecond), r.status, r.err)
				}
				// Once the server has seen the signal, every response
				// tells keep-alive clients to reconnect.
				switch {
				case r.close && firstClose.IsZero():
					firstClose = r.sent
				case !r.close && !firstClose.IsZero() && name == "keep-alive":
					t.Errorf("keep-alive client: response at +%s lacks Connection: close",
						r.sent.Sub(signalled).Round(time.Millisecond))
				}
			}
		}
		t.Logf("%s client: %d requests before SIGTERM, %d during the delay, %d failed",
			name, before, during, failed)
		if during < 10 {
			t.Errorf("%s client sent only %d requests during the delay; the test proves nothing", name, during)
		}
		if name == "keep-alive" && (firstClose.IsZero() || firstClose.Sub(signalled) > 500*time.Millisecond) {
			t.Errorf("keep-alive client: first Connection: close at +%s, want within 500ms of SIGTERM",
				firstClose.Sub(signalled))
		}
	}
	if exitedAfter < delay {
		t.Errorf("exited %s after SIGTERM, before the %s delay ended", exitedAfter, delay)
	}
	t.Logf("exited %s after SIGTERM (delay %s, timeout %s)", exitedAfter.Round(time.Millisecond), delay, timeout)
}

func TestProcessSecondSignalExitsAtOnce(t *testing.T) {
	p := start(t, "SHUTDOWN_DELAY=60s")
	p.signal(t, syscall.SIGTERM)
	p.logs.await(t, "shutdown signal received: readiness failing, still serving")
	p.signal(t, syscall.SIGINT)
	code := p.wait(t, 10*time.Second)
	if code != 128+int(syscall.SIGINT) {
		t.Fatalf("exit code after a second signal = %d, want %d", code, 128+int(syscall.SIGINT))
	}
	if !strings.Contains(p.stderr.String(), "second signal") {
		t.Errorf("stderr %q does not say why it exited", p.stderr)
	}
}

func TestProcessDrainTimeoutIsReported(t *testing.T) {
	p := start(t, "FAULTS_ENABLED=true", "SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=500ms")
	eventually.True(t, 20*time.Second, "/ready to answer 200", func() bool { return do(newConnClient, "GET", p.base+"/ready").status == 200 })
	slow := make(chan response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, p.base+"/faults/delay?duration=60s", nil)
		req.Header.Set("X-Request-ID", "cut-me-off")
		r := response{}
		resp, err := newConnClient.Do(req)
		if err == nil {
			r.status = resp.StatusCode
			resp.Body.Close()
		}
		r.err = err
		slow <- r
	}()
	eventually.True(t, 20*time.Second, "the slow request to be in flight", func() bool {
		return strings.Contains(metricsText(p.base), "orchestrator_http_requests_in_flight 2")
	})
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != exitDrainTimeout {
		t.Fatalf("exit code = %d, want %d (requests cut off); stderr: %s", code, exitDrainTimeout, p.stderr)
	}
	if r := <-slow; r.err == nil && r.status == 200 {
		t.Error("the cut-off request succeeded")
	}
	e := p.logs.await(t, "request cut off by shutdown timeout")
	req, _ := e["request"].(map[string]any)
	if req["request_id"] != "cut-me-off" || req["path"] != "/faults/delay" {
		t.Errorf("cut-off line = %v, want the request's id and path", e)
	}
	if !strings.Contains(p.stderr.String(), "cut off") {
		t.Errorf("stderr %q does not say requests were cut off", p.stderr)
	}
}

func metricsText(base string) string {
	r := do(newConnClient, http.MethodGet, base+"/metrics")
	return r.body
}

func TestProcessStartupLine(t *testing.T) {
	p := start(t, "SHUTDOWN_DELAY=0s")
	e := p.logs.await(t, "orchestrator listening")
	raw, _ := json.Marshal(e)
	for _, key := range []string{"timestamp", "level", "message", "caller", "address", "version", "config"} {
		if _, ok := e[key]; !ok {
			t.Errorf("startup line lacks %q: %s", key, raw)
		}
	}
	if ts, _ := e["timestamp"].(string); !strings.Contains(ts, "T") {
		t.Errorf("timestamp %q is not ISO8601", ts)
	}
}

func post(client *http.Client, url, body string) response {
	r := response{sent: time.Now()}
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	r.status, r.close, r.body, r.err = resp.StatusCode, resp.Close, string(data), err
	return r
}

// drainAgent is an agent on loopback for the shutdown test: it holds
// "analyze" tasks until released, then answers them, noting whether the
// orchestrator was still waiting; it never answers "stall" tasks.
type drainAgent struct {
	srv     *httptest.Server
	release chan struct{}
	mu      sync.Mutex
	alive   map[string]bool // task id -> the orchestrator still waited for the answer
}

func newDrainAgent(t *testing.T) *drainAgent {
	a := &drainAgent{release: make(chan struct{}), alive: map[string]bool{}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var task struct {
			ID   string `json:"task_id"`
			Type string `json:"task_type"`
		}
		if err := json.NewDecoder(r.Body).Decode(&task); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if task.Type == "stall" {
			<-r.Context().Done()
			return
		}
		select {
		case <-a.release:
		case <-r.Context().Done():
		}
		a.mu.Lock()
		a.alive[task.ID] = r.Context().Err() == nil
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"task_id":%q,"status":"completed","result":{"ok":true}}`, task.ID)
	}))
	// Registered before the process is started, so it runs after the
	// process is killed: Close waits for the held calls to end.
	t.Cleanup(a.srv.Close)
	return a
}

func (a *drainAgent) answeredAlive(id string) (alive, answered bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	alive, answered = a.alive[id]
	return alive, answered
}

func TestProcessTasksAcceptedWhileDrainingRunOrAreLogged(t *testing.T) {
	const delay, timeout = 2 * time.Second, 3 * time.Second
	agent := newDrainAgent(t)
	p := start(t, "SHUTDOWN_DELAY="+delay.String(), "SHUTDOWN_TIMEOUT="+timeout.String())
	port := agent.srv.Listener.Addr().(*net.TCPAddr).Port
	if r := post(newConnClient, p.base+"/agents/register", fmt.Sprintf(
		`{"name":"drain-agent","type":"cost","host":"127.0.0.1","port":%d,"capabilities":["analyze","stall"]}`, port)); r.status != 201 {
		t.Fatalf("register = %d %s %v", r.status, r.body, r.err)
	}
	submit := func(what, taskType string) string {
		t.Helper()
		r := post(newConnClient, p.base+"/tasks", `{"task_type":"`+taskType+`","agent_type":"cost","max_retries":0}`)
		var accepted struct {
			ID     string `json:"task_id"`
			Status string `json:"status"`
		}
		if r.status != 201 || json.Unmarshal([]byte(r.body), &accepted) != nil || accepted.Status != "dispatched" {
			t.Fatalf("%s: POST /tasks = %d %s %v, want 201 dispatched", what, r.status, r.body, r.err)
		}
		return accepted.ID
	}
	before := submit("before SIGTERM", "analyze")
	stalled := submit("stalled", "stall")

	p.signal(t, syscall.SIGTERM)
	p.logs.await(t, "shutdown signal received: readiness failing, still serving")
	during := submit("during the delay", "analyze")

	// The agent answers only once the HTTP server has stopped: the tasks
	// must outlive it.
	eventually.True(t, 20*time.Second, "the HTTP server to stop", func() bool { return do(newConnClient, http.MethodGet, p.base+"/live").err != nil })
	close(agent.release)

	code := p.wait(t, delay+timeout+15*time.Second)
	for name, id := range map[string]string{"accepted before SIGTERM": before, "accepted during the delay": during} {
		if alive, answered := agent.answeredAlive(id); !answered || !alive {
			t.Errorf("task %s (%s): the orchestrator gave up before the agent answered (the agent got it: %v)", id, name, answered)
		}
		found := false
		for _, e := range p.logs.all("task finished during shutdown") {
			found = found || e["task_id"] == id && e["status"] == "completed"
		}
		if !found {
			t.Errorf("task %s (%s): no log line says it completed during the drain", id, name)
		}
	}
	// The task that never finishes is failed at the deadline and named.
	unfinished := p.logs.all("task unfinished at shutdown: recorded as failed")
	if len(unfinished) != 1 || unfinished[0]["task_id"] != stalled || unfinished[0]["status"] != "dispatched" || unfinished[0]["level"] != "warn" {
		t.Errorf("unfinished-task lines = %v, want one warning naming %s as dispatched", unfinished, stalled)
	}
	if e := p.logs.find("drain time is up: unfinished tasks will be aborted and recorded as failed"); e == nil || e["tasks"] != 1.0 {
		t.Errorf("drain deadline line = %v, want one task left", e)
	}
	if code != exitDrainTimeout {
		t.Errorf("exit code = %d, want %d (a task cut off); stderr: %s", code, exitDrainTimeout, p.stderr)
	}
}
