//go:build chart

package chart_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSchemaAndTemplatesRejectBadValues feeds the chart values it must
// refuse, each with the message a user would need.
func TestSchemaAndTemplatesRejectBadValues(t *testing.T) {
	for _, tc := range []struct {
		name, kube, values, want string
	}{
		{"unknown top-level key", "1.34.2", "replicas: 3", "additional properties 'replicas' not allowed"},
		{"unknown nested key", "1.34.2", "image: {repo: x}", "additional properties 'repo' not allowed"},
		{"tag as a fraction", "1.34.2", "image: {tag: 1.2}", "/image/tag': got number, want integer or string"},
		{"negative tag", "1.34.2", "image: {tag: -1}", "/image/tag': minimum"},
		{"bad log level", "1.34.2", "config: {logLevel: verbose}", "/config/logLevel': value must be one of"},
		{"duration without a unit", "1.34.2", "config: {http: {readTimeout: 30}}", "/config/http/readTimeout': got number, want string"},
		{"liveness successThreshold", "1.34.2", "probes: {liveness: {successThreshold: 2}}", "/probes/liveness/successThreshold'"},
		{"duration in words", "1.34.2", `config: {health: {checkInterval: "10 seconds"}}`, "/config/health/checkInterval': '10 seconds' does not match pattern"},
		{"port out of range", "1.34.2", "service: {port: 70000}", "/service/port': maximum"},
		{"negative replicas", "1.34.2", "replicaCount: -1", "/replicaCount': minimum"},
		{"pull policy", "1.34.2", "image: {pullPolicy: Sometimes}", "/image/pullPolicy': value must be one of"},
		{"grace period too short", "1.34.2", "termination: {gracePeriodSeconds: 10}",
			"termination.gracePeriodSeconds=10 is too short: the pod needs preStop sleep 5s + SHUTDOWN_DELAY 2s + SHUTDOWN_TIMEOUT 20s + slack 3s = 30s"},
		{"native sleep on 1.28", "1.28.15", "{}", "termination.nativeSleep needs Kubernetes 1.30 or later"},
		{"cluster older than supported", "1.27.16", "termination: {nativeSleep: false}", "kubeVersion"},
		{"heartbeat interval below a second", "1.34.2", "config: {agents: {heartbeatInterval: 500ms}}", "/config/agents/heartbeatInterval': '500ms' does not match pattern"},
		{"missed heartbeats zero", "1.34.2", "config: {agents: {missedHeartbeats: 0}}", "/config/agents/missedHeartbeats': minimum"},
		{"eviction within the unreachable window", "1.34.2", "config: {agents: {heartbeatInterval: 1m, missedHeartbeats: 3, evictAfter: 2m}}",
			"config.agents.evictAfter=2m (AGENT_EVICT_AFTER) must be longer than config.agents.missedHeartbeats x config.agents.heartbeatInterval (3 x 1m)"},
		{"allowed networks as a string", "1.34.2", `config: {agents: {allowedNetworks: "10.0.0.0/8"}}`, "/config/agents/allowedNetworks': got string, want array"},
		{"allowed network without a prefix", "1.34.2", "config: {agents: {allowedNetworks: [10.0.0.1]}}", "/config/agents/allowedNetworks/0': '10.0.0.1' does not match pattern"},
		{"no allowed network", "1.34.2", "config: {agents: {allowedNetworks: []}}", "/config/agents/allowedNetworks': minItems"},
		{"metadata limit below the empty object", "1.34.2", "config: {agents: {maxMetadataBytes: 1}}", "/config/agents/maxMetadataBytes': minimum"},
		{"metadata limit as a size string", "1.34.2", "config: {agents: {maxMetadataBytes: 64Ki}}", "/config/agents/maxMetadataBytes': got string, want integer"},
		{"metadata depth zero", "1.34.2", "config: {agents: {maxMetadataDepth: 0}}", "/config/agents/maxMetadataDepth': minimum"},
		{"metadata depth too deep", "1.34.2", "config: {agents: {maxMetadataDepth: 101}}", "/config/agents/maxMetadataDepth': maximum"},
		{"no agent allowed", "1.34.2", "config: {agents: {maxAgents: 0}}", "/config/agents/maxAgents': minimum"},
		{"metadata budget zero", "1.34.2", "config: {agents: {maxMetadataTotalBytes: 0}}", "/config/agents/maxMetadataTotalBytes': minimum"},
		{"metadata budget past 1 TiB", "1.34.2", "config: {agents: {maxMetadataTotalBytes: 1099511627777}}", "/config/agents/maxMetadataTotalBytes': maximum"},
		{"metadata budget below the per-request limit", "1.34.2", "config: {agents: {maxMetadataBytes: 4096, maxMetadataTotalBytes: 4095}}",
			"config.agents.maxMetadataTotalBytes=4095 (AGENT_MAX_METADATA_TOTAL_BYTES) must be at least config.agents.maxMetadataBytes=4096"},
		{"agent concurrency zero", "1.34.2", "config: {tasks: {agentConcurrency: 0}}", "/config/tasks/agentConcurrency': minimum"},
		{"result limit too small", "1.34.2", "config: {tasks: {maxResultBytes: 512}}", "/config/tasks/maxResultBytes': minimum"},
		{"retry cap below the first delay", "1.34.2", "config: {tasks: {retryBackoff: 1s, retryBackoffMax: 900ms}}",
			"config.tasks.retryBackoffMax=900ms (TASK_RETRY_BACKOFF_MAX) must be at least config.tasks.retryBackoff=1s"},
		{"unknown task setting", "1.34.2", "config: {tasks: {retries: 3}}", "additional properties 'retries' not allowed"},
		{"short token", "1.34.2", "auth: {agentTokens: [short]}", "/auth/agentTokens/0': minLength"},
		{"token with a space", "1.34.2", `auth: {operatorTokens: ["operator token 0123456789"]}`, "/auth/operatorTokens/0': 'operator token 0123456789' does not match pattern"},
		{"tokens as a string", "1.34.2", "auth: {agentTokens: agent-token-0123456789}", "/auth/agentTokens': got string, want array"},
		{"existing Secret protecting nothing", "1.34.2", "auth: {existingSecret: tokens}", "auth.existingSecret=tokens protects nothing"},
		{"existing Secret and token lists", "1.34.2", "auth: {existingSecret: tokens, existingSecretKeys: {agent: a}, operatorTokens: [operator-token-0123456789]}",
			"auth.existingSecret is set: leave auth.agentTokens and auth.operatorTokens empty"},
		{"a literal token in extraEnv", "1.34.2", "extraEnv: [{name: AUTH_AGENT_TOKENS, value: agent-token-0123456789}]", "extraEnv sets AUTH_AGENT_TOKENS to a literal token"},
		{"HPA without a target", "1.34.2",
			"autoscaling: {enabled: true, targetCPUUtilizationPercentage: null, targetMemoryUtilizationPercentage: null}",
			"autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(file, []byte(tc.values+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := helmTemplate(t, tc.kube, "--values", file)
			if err == nil {
				t.Fatalf("rendered values %q:\n%s", tc.values, out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}

// TestGraceBudgetFollowsTheValues: without the native sleep, SHUTDOWN_DELAY
// takes over the preStop seconds and the computed grace period stays the
// same; an explicit, large enough grace period is kept.
func TestGraceBudgetFollowsTheValues(t *testing.T) {
	for _, tc := range []struct {
		kube, set          string
		wantDelay          string
		wantGrace          int64
		wantPreStopSeconds int32
	}{
		{"1.34.2", "termination.nativeSleep=true", "2s", 30, 5},
		{"1.34.2", "termination.nativeSleep=false", "7s", 30, 0},
		{"1.28.15", "termination.nativeSleep=false", "7s", 30, 0},
		{"1.34.2", "termination.gracePeriodSeconds=90", "2s", 90, 5},
		{"1.34.2", "termination.preStopSleepSeconds=0", "2s", 25, 0},
		{"1.34.2", "config.shutdownTimeoutSeconds=50", "2s", 60, 5},
	} {
		t.Run(tc.kube+" "+tc.set, func(t *testing.T) {
			out, err := helmTemplate(t, tc.kube, "--set", tc.set)
			if err != nil {
				t.Fatal(err)
			}
			o := decode(t, out)
			c := container(t, o.deployments[0].Spec.Template.Spec, "orchestrator")
			if got := o.configMaps[0].Data["SHUTDOWN_DELAY"]; got != tc.wantDelay {
				t.Errorf("SHUTDOWN_DELAY = %s, want %s", got, tc.wantDelay)
			}
			if got := *o.deployments[0].Spec.Template.Spec.TerminationGracePeriodSeconds; got != tc.wantGrace {
				t.Errorf("terminationGracePeriodSeconds = %d, want %d", got, tc.wantGrace)
			}
			var preStop int32
			if c.Lifecycle != nil {
				preStop = int32(c.Lifecycle.PreStop.Sleep.Seconds)
			}
			if preStop != tc.wantPreStopSeconds {
				t.Errorf("preStop sleep = %ds, want %ds", preStop, tc.wantPreStopSeconds)
			}
		})
	}
}
