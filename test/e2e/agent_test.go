//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

const (
	// The test agent's Deployment (test/e2e/agent) and what it registers.
	agentDeployment = "e2e-agent"
	agentPort       = 8000
	agentType       = "cost"
	agentCapability = "e2e-echo"
	// The same agent speaking the /api/v1 dialect (AGENT_DIALECT=v1), as
	// OptiInfra's application agent: a type of its own, so tasks for it
	// can only be routed to it.
	agentV1Deployment = "e2e-agent-v1"
	agentV1Type       = "application"
	// Tokens for this test only: the chart keeps them in its Secret and
	// mounts them; the agent reads its token from the same Secret.
	agentToken    = "e2e-agent-token-0123456789abcdef"
	operatorToken = "e2e-operator-token-0123456789abcdef"
	// The heartbeat interval the orchestrator tells agents here: short, so
	// that heartbeats are seen within the test.
	heartbeatSeconds = 2
)

// planSteps are the steps of the orchestrator's default migrate_to_spot
// plan and of its rollback, which the agent pod serves beside
// agentCapability.
var planSteps = []string{"take_snapshot", "migrate_workload", "validate_quality", "rollback_migrate_workload", "rollback_take_snapshot"}

// TestAgentTask is the orchestrator's purpose on a real cluster: a test
// agent pod (test/e2e/agent, its own image) registers through the
// orchestrator's Service with its pod IP, heartbeats, receives a task
// routed to it and answers it; the result is read back through the API;
// deleting the agent unregisters it. Then the same image in the /api/v1
// dialect announces "host":"0.0.0.0" and is registered at its pod IP, the
// address its registration came from, and gets its task the same way.
// Both token roles are on, with the tokens in the chart's Secret, so the
// mounted token files are exercised too. Before the agent pod goes, a
// migrate_to_spot recommendation is coordinated with execute_now and its
// plan runs end to end: each step a task the orchestrator sends the pod.
func TestAgentTask(t *testing.T) {
	agentImage := os.Getenv("E2E_AGENT_IMAGE")
	if env("E2E_AGENT", "run") == "skip" {
		t.Skip("E2E_AGENT=skip")
	}
	if agentImage == "" {
		t.Fatal("set E2E_AGENT_IMAGE to the test agent image the cluster can run (built from test/e2e/agent/Dockerfile), or E2E_AGENT=skip")
	}
	ns := createNamespace(t, "e2e-agent")
	install(t, ns,
		"--set", "auth.agentTokens[0]="+agentToken,
		"--set", "auth.operatorTokens[0]="+operatorToken,
		"--set", fmt.Sprintf("config.agents.heartbeatInterval=%ds", heartbeatSeconds),
		"--set", "config.logLevel=debug",
	)
	base := portForward(t, ns, "service/"+deployment)
	ctx := context.Background()
	api := newAPIClient(t, base, operatorToken)

	t.Run("the API needs the operator token", func(t *testing.T) {
		_, err := newAPIClient(t, base, "").ListAgents(ctx, "")
		expectStatus(t, "GET /agents without a token", err, http.StatusUnauthorized)
		_, err = newAPIClient(t, base, agentToken).SubmitTask(ctx, orchestrator.TaskRequest{TaskType: agentCapability, AgentType: agentType})
		expectStatus(t, "POST /tasks with the agent token", err, http.StatusUnauthorized)
		if code, _ := get(t, newHTTPClient(), http.MethodGet, base+"/ready"); code != http.StatusOK {
			t.Errorf("GET /ready without a token = %d, want 200 (probes stay open)", code)
		}
	})

	deployed := time.Now()
	capabilities := append([]string{agentCapability}, planSteps...)
	applyAgent(t, ns, agentImage, agentDeployment,
		envFrom("AGENT_HOST", "status.podIP"), envValue("AGENT_TYPE", agentType),
		envValue("AGENT_CAPABILITIES", strings.Join(capabilities, ",")))
	kubectl(t, ns, "rollout", "status", "deployment/"+agentDeployment, "--timeout=3m")
	var pods corev1.PodList
	getJSON(t, ns, &pods, "pods", "--selector", "app.kubernetes.io/name="+agentDeployment)
	if len(pods.Items) != 1 || pods.Items[0].Status.PodIP == "" {
		t.Fatalf("want one agent pod with an IP, got %d", len(pods.Items))
	}
	agentPod := pods.Items[0]

	var agent orchestrator.Agent
	t.Run("the agent pod registers and heartbeats", func(t *testing.T) {
		eventually.True(t, 2*time.Minute, "the agent to be listed healthy in GET /agents", func() bool {
			list, err := api.ListAgents(ctx, "")
			if err != nil {
				return false
			}
			for _, a := range list {
				if a.Name == agentPod.Name && a.Status == orchestrator.AgentHealthy {
					agent = a
					return true
				}
			}
			return false
		})
		t.Logf("REPORT agent: Deployment applied to registered and healthy in %s", time.Since(deployed).Round(100*time.Millisecond))
		if agent.Host != agentPod.Status.PodIP || agent.Port != agentPort || agent.Type != agentType ||
			!slices.Equal(agent.Capabilities, capabilities) {
			t.Errorf("registered %+v, want host %s (the pod IP) port %d type %s capabilities %v",
				agent, agentPod.Status.PodIP, agentPort, agentType, capabilities)
		}
		// A heartbeat after the registration moves last_seen on.
		registered := agent.RegisteredAt
		eventually.True(t, time.Duration(3*heartbeatSeconds)*time.Second+10*time.Second, "a heartbeat to move last_seen past registered_at", func() bool {
			a, err := api.GetAgent(ctx, agent.ID)
			return err == nil && a.LastSeen.After(registered.Add(time.Second)) && a.Status == orchestrator.AgentHealthy
		})
		if byType, err := api.ListAgents(ctx, agentType); err != nil || len(byType) != 1 {
			t.Errorf("GET /agents/type/%s = %+v, %v; want the one agent", agentType, byType, err)
		}
	})
	if agent.ID == "" {
		t.FailNow()
	}

	t.Run("a task is routed to the agent pod and its result read back", func(t *testing.T) {
		submitted := time.Now()
		created, err := api.SubmitTask(ctx, orchestrator.TaskRequest{
			TaskType:       agentCapability,
			AgentType:      agentType,
			Parameters:     json.RawMessage(`{"question":"where did this run?","n":42}`),
			TimeoutSeconds: new(20),
		})
		if err != nil {
			t.Fatalf("POST /tasks: %v", err)
		}
		if created.StatusURL != "/tasks/"+created.TaskID {
			t.Errorf("status_url %q, want /tasks/%s", created.StatusURL, created.TaskID)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		done, err := api.WaitTask(wctx, created.TaskID, 250*time.Millisecond)
		if err != nil {
			t.Fatalf("waiting for the task to finish: %v", err)
		}
		t.Logf("REPORT task: POST /tasks to completed (read through the API) in %s", time.Since(submitted).Round(time.Millisecond))
		if done.Status != orchestrator.TaskCompleted || done.AgentID != agent.ID || done.RetryCount != 0 {
			t.Fatalf("task = %+v, want completed by agent %s on the first attempt", done, agent.ID)
		}
		var result struct {
			Hostname   string         `json:"hostname"`
			Host       string         `json:"host"`
			TaskType   string         `json:"task_type"`
			Parameters map[string]any `json:"parameters"`
		}
		if err := json.Unmarshal(done.Result, &result); err != nil {
			t.Fatalf("result %s: %v", done.Result, err)
		}
		if result.Hostname != agentPod.Name || result.Host != agentPod.Status.PodIP || result.TaskType != agentCapability ||
			result.Parameters["n"] != float64(42) {
			t.Errorf("result %s: want it from pod %s (%s) with the parameters echoed", done.Result, agentPod.Name, agentPod.Status.PodIP)
		}
		// The agent's own log shows the delivery.
		logs := kubectl(t, ns, "logs", "pod/"+agentPod.Name)
		if !strings.Contains(logs, "task "+created.TaskID) {
			t.Errorf("the agent's log does not mention task %s:\n%s", created.TaskID, logs)
		}
	})

	t.Run("a task nobody can run gets 503", func(t *testing.T) {
		_, err := api.SubmitTask(ctx, orchestrator.TaskRequest{TaskType: "no-such-capability", AgentType: agentType})
		expectStatus(t, "POST /tasks for an unknown capability", err, http.StatusServiceUnavailable)
	})

	t.Run("a migrate_to_spot plan runs end to end on the agent pod", func(t *testing.T) {
		testPlan(t, base, agent.ID, agentPod.Name)
	})

	t.Run("deleting the agent pod unregisters it", func(t *testing.T) {
		deleted := time.Now()
		kubectl(t, ns, "delete", "deployment", agentDeployment, "--wait=true", "--timeout=2m")
		eventually.True(t, time.Minute, "GET /agents/{id} to answer 404", func() bool {
			_, err := api.GetAgent(ctx, agent.ID)
			return orchestrator.IsNotFound(err)
		})
		t.Logf("REPORT agent: Deployment deleted to unregistered in %s", time.Since(deleted).Round(100*time.Millisecond))
		// The agent's SIGTERM path unregistered it: the orchestrator logged
		// the call (an eviction would take AGENT_EVICT_AFTER, 24h).
		unregistered := false
		for line := range strings.Lines(kubectl(t, ns, "logs", "deployment/"+deployment)) {
			unregistered = unregistered || (strings.Contains(line, agent.ID) && strings.Contains(line, "unregister"))
		}
		if !unregistered {
			t.Errorf("the orchestrator's log has no unregister line for %s", agent.ID)
		}
	})

	testAgentV1(t, ns, agentImage, base, api)

	t.Run("no token reaches the orchestrator's log", func(t *testing.T) {
		logs := kubectl(t, ns, "logs", "deployment/"+deployment)
		for _, token := range []string{agentToken, operatorToken} {
			if strings.Contains(logs, token) {
				t.Errorf("the orchestrator's log contains a token")
			}
		}
	})
}

// testAgentV1 is TestAgentTask's dialect-B part: the test agent with
// AGENT_DIALECT=v1 registers through POST /api/v1/agents/register
// announcing "host":"0.0.0.0", its pod name as its agent_id; the
// orchestrator registers the pod IP the request came from
// (address_source "request"), routes a task to it there, and forgets it
// when the pod's SIGTERM path deletes it.
func testAgentV1(t *testing.T, ns, agentImage, base string, api *orchestrator.Client) {
	ctx := context.Background()
	deployed := time.Now()
	applyAgent(t, ns, agentImage, agentV1Deployment,
		envValue("AGENT_DIALECT", "v1"), envValue("AGENT_HOST", "0.0.0.0"), envValue("AGENT_TYPE", agentV1Type))
	kubectl(t, ns, "rollout", "status", "deployment/"+agentV1Deployment, "--timeout=3m")
	var pods corev1.PodList
	getJSON(t, ns, &pods, "pods", "--selector", "app.kubernetes.io/name="+agentV1Deployment)
	if len(pods.Items) != 1 {
		t.Fatalf("want one dialect-B agent pod, got %d", len(pods.Items))
	}
	pod := pods.Items[0].Name // its agent_id: AGENT_ID defaults to the hostname
	podIP := strings.TrimSpace(kubectl(t, ns, "get", "pod", pod, "-o", "jsonpath={.status.podIP}"))
	if podIP == "" {
		t.Fatalf("pod %s has no IP", pod)
	}

	ok := t.Run("a dialect-B agent pod announcing 0.0.0.0 is registered at its pod IP", func(t *testing.T) {
		var a orchestrator.AgentV1
		eventually.True(t, 2*time.Minute, "GET /api/v1/agents/"+pod+" to answer the agent, healthy", func() bool {
			var code int
			a, code = getAgentV1(t, base, operatorToken, pod)
			return code == http.StatusOK && a.Status == orchestrator.AgentHealthy
		})
		t.Logf("REPORT agent v1: Deployment applied to registered and healthy in %s", time.Since(deployed).Round(100*time.Millisecond))
		if a.AgentID != pod || a.Host != podIP || a.Port != agentPort || a.AddressSource != orchestrator.AddressFromRequest ||
			a.AnnouncedHost != "0.0.0.0" || a.AgentType != agentV1Type || a.Endpoint != fmt.Sprintf("http://%s:%d", podIP, agentPort) {
			t.Errorf("GET /api/v1/agents/%s = %+v, want host %s (the pod IP, the request's address) port %d, "+
				"announced_host 0.0.0.0, address_source request, type %s", pod, a, podIP, agentPort, agentV1Type)
		}
		// The same agent in dialect A's view, by its chosen id.
		if got, err := api.GetAgent(ctx, pod); err != nil || got.Host != podIP || got.Port != agentPort ||
			got.AddressSource != orchestrator.AddressFromRequest {
			t.Errorf("GET /agents/%s = %+v, %v; want host %s port %d address_source request", pod, got, err, podIP, agentPort)
		}
		// A heartbeat after the registration moves last_heartbeat on.
		registered := a.RegisteredAt
		eventually.True(t, time.Duration(3*heartbeatSeconds)*time.Second+10*time.Second, "a heartbeat to move last_heartbeat past registered_at", func() bool {
			a, code := getAgentV1(t, base, operatorToken, pod)
			return code == http.StatusOK && a.LastHeartbeat.After(registered.Add(time.Second))
		})
	})
	if !ok {
		t.FailNow()
	}

	t.Run("a task is routed to the dialect-B agent pod", func(t *testing.T) {
		created, err := api.SubmitTask(ctx, orchestrator.TaskRequest{
			TaskType: agentCapability, AgentType: agentV1Type,
			Parameters: json.RawMessage(`{"dialect":"v1","n":7}`), TimeoutSeconds: new(20),
		})
		if err != nil {
			t.Fatalf("POST /tasks: %v", err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		done, err := api.WaitTask(wctx, created.TaskID, 250*time.Millisecond)
		if err != nil {
			t.Fatalf("waiting for the task to finish: %v", err)
		}
		if done.Status != orchestrator.TaskCompleted || done.AgentID != pod || done.RetryCount != 0 {
			t.Fatalf("task = %+v, want completed by agent %s on the first attempt", done, pod)
		}
		var result struct {
			Hostname   string         `json:"hostname"`
			Host       string         `json:"host"`
			AgentID    string         `json:"agent_id"`
			Dialect    string         `json:"dialect"`
			Parameters map[string]any `json:"parameters"`
		}
		if err := json.Unmarshal(done.Result, &result); err != nil {
			t.Fatalf("result %s: %v", done.Result, err)
		}
		if result.Hostname != pod || result.Host != podIP || result.AgentID != pod || result.Dialect != "v1" ||
			result.Parameters["n"] != float64(7) {
			t.Errorf("result %s: want it from pod %s, registered at %s, dialect v1, the parameters echoed", done.Result, pod, podIP)
		}
	})

	t.Run("deleting the dialect-B agent pod deletes it from the registry", func(t *testing.T) {
		deleted := time.Now()
		kubectl(t, ns, "delete", "deployment", agentV1Deployment, "--wait=true", "--timeout=2m")
		eventually.True(t, time.Minute, "GET /api/v1/agents/"+pod+" to answer 404", func() bool {
			_, code := getAgentV1(t, base, operatorToken, pod)
			return code == http.StatusNotFound
		})
		t.Logf("REPORT agent v1: Deployment deleted to unregistered in %s", time.Since(deleted).Round(100*time.Millisecond))
		// Its SIGTERM path deleted it (an eviction would take
		// AGENT_EVICT_AFTER, 24h): the orchestrator logged the unregister.
		unregistered := false
		for line := range strings.Lines(kubectl(t, ns, "logs", "deployment/"+deployment)) {
			unregistered = unregistered || (strings.Contains(line, pod) && strings.Contains(line, "unregister"))
		}
		if !unregistered {
			t.Errorf("the orchestrator's log has no unregister line for %s", pod)
		}
	})
}

// testPlan coordinates one low-risk migrate_to_spot recommendation for
// agentType with auto_approve and execute_now, and waits for its plan to
// complete: take_snapshot, migrate_workload and validate_quality, in that
// order, each a task the orchestrator sent agent agentID on pod pod.
func testPlan(t *testing.T, base, agentID, pod string) {
	started := time.Now()
	var resp orchestrator.CoordinateResponse
	code, body := callJSON(t, base, operatorToken, http.MethodPost, "/coordination/coordinate", orchestrator.CoordinateRequest{
		CustomerID: "e2e-customer", AutoApprove: true, ExecuteNow: true,
		Recommendations: []orchestrator.Recommendation{{
			ID: "e2e-spot", AgentType: agentType, Title: "move the e2e instance to spot", Action: "migrate_to_spot",
			RiskLevel: orchestrator.RiskLow, EstimatedSavings: 42, AffectedResources: []string{"i-e2e-0001"},
			Parameters: json.RawMessage(`{"region":"e2e"}`), Priority: 1, Confidence: 0.9,
		}},
	}, &resp)
	if code != http.StatusOK || len(resp.ExecutionPlans) != 1 || resp.ExecutionPlans[0].Status != orchestrator.PlanRunning {
		t.Fatalf("POST /coordination/coordinate = %d %s, want 200 with one plan, running", code, body)
	}
	id := resp.ExecutionPlans[0].ID
	var plan orchestrator.Plan
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
		plan = orchestrator.Plan{}
		code, body = callJSON(t, base, operatorToken, http.MethodGet, "/coordination/plans/"+id, nil, &plan)
		if code == http.StatusOK && plan.Status.Terminal() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan %s has not ended 2m after it started; GET /coordination/plans/%s = %d %s", id, id, code, body)
		}
	}
	t.Logf("REPORT plan: POST /coordination/coordinate to a completed 3-step plan (read through the API) in %s",
		time.Since(started).Round(time.Millisecond))
	if plan.Status != orchestrator.PlanCompleted || len(plan.Steps) != 3 {
		t.Fatalf("plan %s ended %s, want completed with 3 steps: %s", id, plan.Status, body)
	}
	for i, action := range []string{"take_snapshot", "migrate_workload", "validate_quality"} {
		st := plan.Steps[i]
		var res struct {
			Step     string `json:"step"`
			PlanID   string `json:"plan_id"`
			Hostname string `json:"hostname"`
		}
		if st.Action != action || st.Status != orchestrator.StepCompleted || st.AgentID != agentID ||
			json.Unmarshal(st.Result, &res) != nil || res.Step != action || res.PlanID != id || res.Hostname != pod {
			t.Errorf("step %d: %s %s by agent %q, result %s; want %s completed by agent %s on pod %s, its result naming the step and plan %s",
				i, st.Action, st.Status, st.AgentID, st.Result, action, agentID, pod, id)
		}
	}
	if t.Failed() {
		t.Logf("the plan: %s", body)
	}
}

// callJSON sends body as JSON (none when nil) to base+path with token, and
// decodes a 2xx answer into out; it returns the status code (0 when the
// request failed) and the answer's body.
func callJSON(t *testing.T, base, token, method, path string, body, out any) (int, string) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, base+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := newHTTPClient().Do(req)
	if err != nil {
		t.Logf("%s %s: %v", method, path, err)
		return 0, ""
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Logf("%s %s: reading the answer: %v", method, path, err)
		return 0, ""
	}
	if resp.StatusCode/100 == 2 && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s = %d %s: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode, string(data)
}

// getAgentV1 reads GET /api/v1/agents/{id} with token: the agent when the
// answer is 200, and the status code (0 when the request failed).
func getAgentV1(t *testing.T, base, token, id string) (orchestrator.AgentV1, int) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/api/v1/agents/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := newHTTPClient().Do(req)
	if err != nil {
		t.Logf("GET /api/v1/agents/%s: %v", id, err)
		return orchestrator.AgentV1{}, 0
	}
	defer resp.Body.Close()
	var a orchestrator.AgentV1
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
			t.Fatalf("GET /api/v1/agents/%s: %v", id, err)
		}
	}
	return a, resp.StatusCode
}

// envValue and envFrom are container environment entries: a value, and a
// field of the pod (the downward API).
func envValue(name, value string) map[string]any {
	return map[string]any{"name": name, "value": value}
}

func envFrom(name, fieldPath string) map[string]any {
	return map[string]any{"name": name, "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": fieldPath}}}
}

// applyAgent runs the test agent as the Deployment name that meets the
// "restricted" Pod Security Standard as the chart's pods do: non-root,
// read-only root, no capabilities, no service account token. It reads its
// token from the chart's Secret; env adds to the settings every agent
// gets (the orchestrator, its port and token file, and capabilities
// agentCapability unless env sets AGENT_CAPABILITIES: a name twice in a
// container's env is one the API server warns about and apply cannot
// merge).
func applyAgent(t *testing.T, ns, image, name string, env ...map[string]any) {
	t.Helper()
	labels := map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/component": "e2e-agent"}
	containerEnv := []any{
		envValue("ORCHESTRATOR_URL", fmt.Sprintf("http://%s:%d", deployment, orchestratorPort)),
		envValue("AGENT_PORT", fmt.Sprint(agentPort)),
		envValue("AGENT_TOKEN_FILE", "/etc/agent/token"),
	}
	if !slices.ContainsFunc(env, func(e map[string]any) bool { return e["name"] == "AGENT_CAPABILITIES" }) {
		containerEnv = append(containerEnv, envValue("AGENT_CAPABILITIES", agentCapability))
	}
	for _, e := range env {
		containerEnv = append(containerEnv, e)
	}
	httpGet := func(path string) map[string]any {
		return map[string]any{"httpGet": map[string]any{"path": path, "port": "http"}, "periodSeconds": 1, "failureThreshold": 3}
	}
	manifest := map[string]any{
		"apiVersion": "apps/v1",
		"kind":       "Deployment",
		"metadata":   map[string]any{"name": name, "labels": labels},
		"spec": map[string]any{
			"replicas": 1,
			"selector": map[string]any{"matchLabels": labels},
			"template": map[string]any{
				"metadata": map[string]any{"labels": labels},
				"spec": map[string]any{
					"automountServiceAccountToken":  false,
					"enableServiceLinks":            false,
					"terminationGracePeriodSeconds": 15,
					"securityContext": map[string]any{
						"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
						"seccompProfile": map[string]any{"type": "RuntimeDefault"},
					},
					"containers": []any{map[string]any{
						"name":            "agent",
						"image":           image,
						"imagePullPolicy": "IfNotPresent",
						"ports":           []any{map[string]any{"name": "http", "containerPort": agentPort, "protocol": "TCP"}},
						"env":             containerEnv,
						"volumeMounts":    []any{map[string]any{"name": "token", "mountPath": "/etc/agent", "readOnly": true}},
						// Ready once registered: rollout status waits for that.
						"startupProbe":   httpGet("/live"),
						"livenessProbe":  httpGet("/live"),
						"readinessProbe": httpGet("/ready"),
						"securityContext": map[string]any{
							"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
							"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
							"capabilities":   map[string]any{"drop": []string{"ALL"}},
							"seccompProfile": map[string]any{"type": "RuntimeDefault"},
						},
						"resources": map[string]any{
							"requests": map[string]any{"cpu": "10m", "memory": "16Mi", "ephemeral-storage": "1Mi"},
							"limits":   map[string]any{"cpu": "200m", "memory": "64Mi", "ephemeral-storage": "16Mi"},
						},
					}},
					"volumes": []any{map[string]any{
						"name": "token",
						"secret": map[string]any{
							"secretName":  deployment + "-auth", // the chart's Secret
							"defaultMode": 0o440,
							"items":       []any{map[string]any{"key": "agent-tokens", "path": "token"}},
						},
					}},
				},
			},
		},
	}
	data, err := json.Marshal(manifest)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), name+".json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, ns, "apply", "-f", file)
	t.Cleanup(func() {
		if _, err := tryCmd(2*time.Minute, "kubectl", "--namespace", ns, "delete", "deployment", name,
			"--ignore-not-found", "--wait=true", "--timeout=90s"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
}

// newAPIClient is a Client of the orchestrator at base with token (empty:
// none), through this suite's HTTP client.
func newAPIClient(t *testing.T, base, token string) *orchestrator.Client {
	t.Helper()
	opts := []orchestrator.Option{orchestrator.WithHTTPClient(newHTTPClient())}
	if token != "" {
		opts = append(opts, orchestrator.WithToken(token))
	}
	c, err := orchestrator.NewClient(base, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// expectStatus fails the test unless err is the orchestrator's answer with
// status code.
func expectStatus(t *testing.T, what string, err error, code int) {
	t.Helper()
	var apiErr *orchestrator.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != code {
		t.Errorf("%s: %v, want a %d answer", what, err, code)
	}
}
