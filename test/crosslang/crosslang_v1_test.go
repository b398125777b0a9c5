//go:build crosslang

package crosslang

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

// The ids check.py's protocol scenario registers (OptiInfra's defaults).
const (
	performanceAgentID = "performance-agent-001"
	resourceAgentID    = "resource-agent-001"
	applicationAgentID = "application-agent-001"
)

// TestPythonV1AgentsAgainstOrchestrator drives the orchestrator's /api/v1
// agent dialect with async Python clients written the way OptiInfra's
// performance, resource and application agents are (v1/clients.py, on
// httpx): v1/check.py checks every answer and exits non-zero at the first
// mismatch; between its checks and its deregistrations it stops at a
// checkpoint, where this test reads the registry through the Go client.
// Then v1/task_agent.py, an application agent announcing "host":"0.0.0.0",
// is registered at the loopback address it came from and completes a task
// routed to it.
func TestPythonV1AgentsAgainstOrchestrator(t *testing.T) {
	baseline := runtime.NumGoroutine()
	transport := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	t.Cleanup(func() { checkGoroutines(t, baseline, transport) })

	python := pythonWith(t, "httpx", "flask", "requests")
	root := repoRoot(t)
	bin := buildOrchestrator(t, root)

	base, orch := startOrchestrator(t, client, bin, "AGENT_HEARTBEAT_INTERVAL=1s")
	api, err := orchestrator.NewClient(base, orchestrator.WithHTTPClient(client))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pyEnv := []string{"PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"}
	v1 := filepath.Join(root, "test", "crosslang", "v1")

	// check.py's protocol scenario, up to its checkpoint.
	check := start(t, "check.py protocol", t.TempDir(), pyEnv,
		python, filepath.Join(v1, "check.py"), "protocol", "--orchestrator-url", base, "--heartbeat-seconds", "1")
	checkpoint := regexp.MustCompile(`^checkpoint (\S+) (\S+) (\S+)$`)
	eventually.True(t, 60*time.Second, "check.py to reach its checkpoint", func() bool {
		if !check.running() && check.out.find(checkpoint) == nil {
			t.Fatalf("check.py protocol exited (%s) before its checkpoint: %s", check.state(), failureOf(check))
		}
		return check.out.find(checkpoint) != nil
	})
	m := check.out.find(checkpoint)
	if got, want := m[1:], []string{performanceAgentID, resourceAgentID, applicationAgentID}; !slices.Equal(got, want) {
		t.Fatalf("check.py stopped at its checkpoint with agents %v, want %v", got, want)
	}

	// The registry, read through the Go client (dialect A's view): the
	// three as they registered (the performance agent as it registered
	// again after its restart), healthy.
	want := map[string]orchestrator.Agent{
		performanceAgentID: {ID: performanceAgentID, Name: performanceAgentID, Type: "performance", Host: "localhost", Port: 8002,
			Capabilities: []string{"metrics_collection", "performance_analysis", "optimization", "load_testing"},
			Status:       orchestrator.AgentHealthy, Version: "0.2.0", AnnouncedHost: "localhost", AddressSource: orchestrator.AddressAnnounced},
		resourceAgentID: {ID: resourceAgentID, Name: resourceAgentID, Type: "resource", Host: "127.0.0.1", Port: 8003,
			Capabilities: []string{"gpu_monitoring", "cpu_monitoring", "memory_monitoring"},
			Status:       orchestrator.AgentHealthy, Version: "0.1.0", AnnouncedHost: "127.0.0.1", AddressSource: orchestrator.AddressAnnounced},
		applicationAgentID: {ID: applicationAgentID, Name: "Application Agent", Type: "application", Host: "127.0.0.1", Port: 8004,
			Capabilities: []string{"quality_monitoring", "regression_detection"},
			Status:       orchestrator.AgentHealthy, Version: "0.1.0", AnnouncedHost: "0.0.0.0", AddressSource: orchestrator.AddressFromRequest},
	}
	lastSeen := map[string]time.Time{}
	for id, w := range want {
		a, err := api.GetAgent(ctx, id)
		if err != nil {
			t.Fatalf("GET /agents/%s at the checkpoint: %v", id, err)
		}
		lastSeen[id] = a.LastSeen
		a.RegisteredAt, a.LastSeen, a.Metadata = time.Time{}, time.Time{}, nil
		if !reflect.DeepEqual(a, w) {
			t.Errorf("GET /agents/%s = %+v, want %+v", id, a, w)
		}
	}
	list, err := api.ListAgents(ctx, "")
	if ids := agentIDs(list); err != nil || !slices.Equal(ids, []string{applicationAgentID, performanceAgentID, resourceAgentID}) {
		t.Errorf("GET /agents lists %v, %v; want the three dialect-B agents", ids, err)
	}
	list, err = api.ListAgents(ctx, "application")
	if ids := agentIDs(list); err != nil || !slices.Equal(ids, []string{applicationAgentID}) {
		t.Errorf("GET /agents/type/application lists %v, %v; want %s", ids, err, applicationAgentID)
	}
	// The application agent announced 0.0.0.0: the registry kept where the
	// registration came from, and says so in the /api/v1 view too.
	if a := getAgentV1(t, client, base, "", applicationAgentID); a.Host != "127.0.0.1" || a.AnnouncedHost != "0.0.0.0" ||
		a.AddressSource != orchestrator.AddressFromRequest || a.Endpoint != "http://127.0.0.1:8004" {
		t.Errorf("GET /api/v1/agents/%s = %+v, want host 127.0.0.1 announced_host 0.0.0.0 address_source request", applicationAgentID, a)
	}
	// The heartbeat loops (the id in the body for two, in the path for the
	// application agent) move last_seen forward.
	for id, before := range lastSeen {
		eventually.True(t, 10*time.Second, fmt.Sprintf("a heartbeat to move %s's last_seen past %s", id, before.Format(time.RFC3339Nano)), func() bool {
			a, err := api.GetAgent(ctx, id)
			return err == nil && a.LastSeen.After(before) && a.Status == orchestrator.AgentHealthy
		})
	}

	// Past the checkpoint: check.py deregisters the three and exits 0.
	if _, err := io.WriteString(check.stdin, "continue\n"); err != nil {
		t.Fatalf("writing to check.py's stdin: %v", err)
	}
	expectPassed(t, check, "protocol", 30*time.Second, []string{
		`^ok register performance performance-agent-001 -> 200 host localhost address_source announced$`,
		`^ok register resource resource-agent-001 -> 200 host 127\.0\.0\.1 address_source announced$`,
		`^ok register application application-agent-001 -> 200 host 127\.0\.0\.1 address_source request$`,
		`^ok heartbeat POST /api/v1/agents/heartbeat \(id and metrics in the body\) -> 200$`,
		`^ok heartbeat POST /api/v1/agents/application-agent-001/heartbeat \{"status":"active"\} -> 200$`,
		`^ok the heartbeat's metrics are in GET /api/v1/agents/performance-agent-001 metadata$`,
		`^ok status words: `,
		`^ok re-register after a restart -> 200, one agent, the same id, updated$`,
		`^ok both listings: `,
		`^ok register with an unsafe or missing agent_id -> 400 naming agent_id$`,
		`^ok unknown id: heartbeat \(both forms\), GET, DELETE -> 404`,
		`^ok X-Forwarded-For without HTTP_TRUSTED_PROXIES is ignored`,
		`^ok dialect B register with a dialect-A agent's generated id -> 409 naming agent_id`,
		`^ok deregister -> 200; then heartbeat, GET and DELETE -> 404; the listing is empty$`,
		`^deregistered performance-agent-001$`,
		`^deregistered resource-agent-001$`,
		`^deregistered application-agent-001$`,
	})
	for id := range want {
		if _, err := api.GetAgent(ctx, id); !orchestrator.IsNotFound(err) {
			t.Errorf("GET /agents/%s after check.py deregistered it: %v, want 404", id, err)
		}
	}
	if list, err := api.ListAgents(ctx, ""); err != nil || len(list) != 0 {
		t.Errorf("GET /agents after check.py = %v, %v; want none", agentIDs(list), err)
	}

	// A dialect-B agent that serves POST /task: announced 0.0.0.0,
	// registered at 127.0.0.1, a task routed to it completes.
	const taskAgentID = "application-agent-tasks"
	agentPort := freePort(t)
	agent := start(t, "task_agent.py", t.TempDir(), pyEnv,
		python, filepath.Join(v1, "task_agent.py"), "--orchestrator-url", base,
		"--agent-id", taskAgentID, "--port", strconv.Itoa(agentPort), "--capabilities", "analyze,fail")
	agent.waitLine(t, regexp.MustCompile(`^registered `+regexp.QuoteMeta(taskAgentID)+`$`), 20*time.Second)
	a, err := api.GetAgent(ctx, taskAgentID)
	if err != nil || a.Host != "127.0.0.1" || a.Port != agentPort || a.Type != "application" || a.Status != orchestrator.AgentHealthy {
		t.Fatalf("GET /agents/%s = %+v, %v; want application agent at 127.0.0.1:%d, healthy", taskAgentID, a, err, agentPort)
	}
	if v := getAgentV1(t, client, base, "", taskAgentID); v.AnnouncedHost != "0.0.0.0" || v.AddressSource != orchestrator.AddressFromRequest {
		t.Errorf("GET /api/v1/agents/%s = %+v, want announced_host 0.0.0.0 address_source request", taskAgentID, v)
	}
	params := map[string]any{"values": []any{2.0, 4.0}, "service": "checkout"}
	created := createTask(t, api, orchestrator.TaskRequest{
		TaskType: "analyze", AgentType: "application", Parameters: mustJSON(t, params), TimeoutSeconds: new(10),
		Metadata: json.RawMessage(`{"source":"crosslang-v1"}`),
	})
	done := waitTask(t, api, created.TaskID)
	if done.Status != orchestrator.TaskCompleted || done.AgentID != taskAgentID || done.RetryCount != 0 {
		t.Fatalf("analyze task ended %+v, want completed by %s on the first attempt", done, taskAgentID)
	}
	var res analyzeResult
	if err := json.Unmarshal(done.Result, &res); err != nil {
		t.Fatalf("task result %s: %v", done.Result, err)
	}
	if res.AgentID != taskAgentID || res.Agent != "Application Agent" || res.TaskID != created.TaskID || res.Sum != 6 ||
		!reflect.DeepEqual(res.Parameters, params) || res.Metadata["source"] != "crosslang-v1" {
		t.Errorf("task result = %s, want task_agent.py's analysis of %v (sum 6) for task %s", done.Result, params, created.TaskID)
	}
	if n := agent.count(taskLine(created.TaskID, "analyze", 200)); n != 1 {
		t.Errorf("task_agent.py answered the analyze task %d times, want 1", n)
	}

	// SIGTERM: it deletes itself and exits 0.
	if err := agent.terminate(); err != nil {
		t.Fatalf("SIGTERM to task_agent.py: %v", err)
	}
	if code := agent.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("task_agent.py exited %d after SIGTERM, want 0", code)
	}
	if agent.count(regexp.MustCompile(`^deregistered `+regexp.QuoteMeta(taskAgentID)+`$`)) != 1 {
		t.Errorf("task_agent.py did not report a successful DELETE")
	}
	if _, err := api.GetAgent(ctx, taskAgentID); !orchestrator.IsNotFound(err) {
		t.Errorf("GET /agents/%s after task_agent.py deleted itself: %v, want 404", taskAgentID, err)
	}

	stopOrchestrator(t, orch)
}

// TestPythonV1AgentsWithTokens runs check.py's auth scenario against an
// orchestrator with two agent tokens and an operator token: no token is
// 401, another agent's token 403 (in either dialect), the operator reads
// and deletes. No token reaches the orchestrator's output.
func TestPythonV1AgentsWithTokens(t *testing.T) {
	const (
		agentToken    = "crosslang-agent-token-0123456789"
		otherToken    = "crosslang-other-agent-token-0123"
		operatorToken = "crosslang-operator-token-0123456"
	)
	baseline := runtime.NumGoroutine()
	transport := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	t.Cleanup(func() { checkGoroutines(t, baseline, transport) })

	python := pythonWith(t, "httpx")
	root := repoRoot(t)
	bin := buildOrchestrator(t, root)

	base, orch := startOrchestrator(t, client, bin,
		"AUTH_AGENT_TOKENS="+agentToken+","+otherToken, "AUTH_OPERATOR_TOKENS="+operatorToken)
	api, err := orchestrator.NewClient(base, orchestrator.WithHTTPClient(client), orchestrator.WithToken(operatorToken))
	if err != nil {
		t.Fatal(err)
	}

	check := start(t, "check.py auth", t.TempDir(), []string{
		"PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1",
		"CHECK_AGENT_TOKEN=" + agentToken, "CHECK_OTHER_AGENT_TOKEN=" + otherToken, "CHECK_OPERATOR_TOKEN=" + operatorToken,
	}, python, filepath.Join(root, "test", "crosslang", "v1", "check.py"), "auth", "--orchestrator-url", base)
	expectPassed(t, check, "auth", 60*time.Second, []string{
		`^ok no token -> 401 on register, heartbeat and DELETE; an agent token registers -> 200$`,
		`^ok another agent's token -> 403 on heartbeat \(both forms and dialect A's\), DELETE, unregister, re-register$`,
		`^ok reads need the operator token`,
		`^ok the owner heartbeats and re-registers -> 200; the operator's DELETE -> 200, then heartbeat -> 404$`,
		`^ok the owner's DELETE on shutdown -> 200, then GET -> 404$`,
		`^deregistered performance-agent-auth$`,
	})
	if _, err := api.GetAgent(context.Background(), "performance-agent-auth"); !orchestrator.IsNotFound(err) {
		t.Errorf("GET /agents/performance-agent-auth after check.py: %v, want 404", err)
	}
	if list, err := api.ListAgents(context.Background(), ""); err != nil || len(list) != 0 {
		t.Errorf("GET /agents after check.py = %v, %v; want none", agentIDs(list), err)
	}

	stopOrchestrator(t, orch)
	out := orch.out.String()
	for _, token := range []string{agentToken, otherToken, operatorToken} {
		if strings.Contains(out, token) {
			t.Errorf("the orchestrator's output contains a token")
		}
	}
}

// TestPythonV1AgentsBehindAProxy runs check.py's proxy scenario against an
// orchestrator that trusts 127.0.0.1 as a proxy: X-Forwarded-For then
// stands for the request's address, as a pod's would in a cluster, so an
// agent announcing 0.0.0.0 or loopback is registered at the forwarded
// address, and one outside AGENT_ALLOWED_NETWORKS is refused.
func TestPythonV1AgentsBehindAProxy(t *testing.T) {
	baseline := runtime.NumGoroutine()
	transport := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	t.Cleanup(func() { checkGoroutines(t, baseline, transport) })

	python := pythonWith(t, "httpx")
	root := repoRoot(t)
	bin := buildOrchestrator(t, root)
	base, orch := startOrchestrator(t, client, bin, "HTTP_TRUSTED_PROXIES=127.0.0.1/32")
	check := start(t, "check.py proxy", t.TempDir(), []string{"PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"},
		python, filepath.Join(root, "test", "crosslang", "v1", "check.py"), "proxy", "--orchestrator-url", base)
	expectPassed(t, check, "proxy", 60*time.Second, []string{
		`^ok behind a trusted proxy: 0\.0\.0\.0 and loopback announcements register the forwarded address; others are kept$`,
		`^ok a forwarded address outside AGENT_ALLOWED_NETWORKS -> 403, nothing registered$`,
	})
	api, err := orchestrator.NewClient(base, orchestrator.WithHTTPClient(client))
	if err != nil {
		t.Fatal(err)
	}
	if list, err := api.ListAgents(context.Background(), ""); err != nil || len(list) != 0 {
		t.Errorf("GET /agents after check.py proxy = %v, %v; want none", agentIDs(list), err)
	}
	stopOrchestrator(t, orch)
}

// expectPassed waits for check.py to exit and fails the test unless it
// exited 0 having printed "<scenario> checks passed" and a line matching
// each of lines.
func expectPassed(t *testing.T, check *process, scenario string, d time.Duration, lines []string) {
	t.Helper()
	if code := check.waitExit(t, d); code != 0 {
		t.Fatalf("check.py %s exited %d: %s", scenario, code, failureOf(check))
	}
	for _, line := range append(lines, `^`+scenario+` checks passed$`) {
		if check.count(regexp.MustCompile(line)) != 1 {
			t.Errorf("check.py %s printed no line (or more than one) matching %q", scenario, line)
		}
	}
}

// failureOf is check.py's "FAIL: <what>" line, without the prefix.
func failureOf(check *process) string {
	if m := check.out.find(regexp.MustCompile(`^FAIL: (.*)$`)); m != nil {
		return m[1]
	}
	return "no FAIL line (see its output below)"
}

// getAgentV1 reads GET /api/v1/agents/{id}, failing the test unless it
// answers 200 with JSON.
func getAgentV1(t *testing.T, client *http.Client, base, token, id string) orchestrator.AgentV1 {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/api/v1/agents/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /api/v1/agents/%s: %v", id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET /api/v1/agents/%s: %v", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/v1/agents/%s = %d %s, want 200", id, resp.StatusCode, body)
	}
	var a orchestrator.AgentV1
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("GET /api/v1/agents/%s: %v in %s", id, err, body)
	}
	return a
}

// agentIDs are the agents' ids, sorted.
func agentIDs(list []orchestrator.Agent) []string {
	ids := make([]string, len(list))
	for i, a := range list {
		ids[i] = a.ID
	}
	slices.Sort(ids)
	return ids
}

// stopOrchestrator sends SIGTERM and expects the orchestrator to drain and
// exit 0.
func stopOrchestrator(t *testing.T, orch *process) {
	t.Helper()
	if err := orch.terminate(); err != nil {
		t.Fatalf("SIGTERM to the orchestrator: %v", err)
	}
	if code := orch.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("the orchestrator exited %d after SIGTERM, want 0", code)
	}
}
