//go:build chart

package chart_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSchemaRejectsBadValues feeds the chart values its schema (or
// Chart.yaml's kubeVersion) must refuse, each with the message a user would
// need. The checks the templates make between settings are helm-unittest's
// (failedTemplate in charts/orchestrator/tests).
func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name, values, want string
	}{
		{"unknown top-level key", "replicas: 3", "additional properties 'replicas' not allowed"},
		{"unknown nested key", "image: {repo: x}", "additional properties 'repo' not allowed"},
		{"tag as a fraction", "image: {tag: 1.2}", "/image/tag': got number, want integer or string"},
		{"negative tag", "image: {tag: -1}", "/image/tag': minimum"},
		{"bad log level", "config: {logLevel: verbose}", "/config/logLevel': value must be one of"},
		{"duration without a unit", "config: {http: {readTimeout: 30}}", "/config/http/readTimeout': got number, want string"},
		{"liveness successThreshold", "probes: {liveness: {successThreshold: 2}}", "/probes/liveness/successThreshold'"},
		{"duration in words", `config: {health: {checkInterval: "10 seconds"}}`, "/config/health/checkInterval': '10 seconds' does not match pattern"},
		{"port out of range", "service: {port: 70000}", "/service/port': maximum"},
		{"negative replicas", "replicaCount: -1", "/replicaCount': minimum"},
		{"pull policy", "image: {pullPolicy: Sometimes}", "/image/pullPolicy': value must be one of"},
		{"heartbeat interval below a second", "config: {agents: {heartbeatInterval: 500ms}}", "/config/agents/heartbeatInterval': '500ms' does not match pattern"},
		{"missed heartbeats zero", "config: {agents: {missedHeartbeats: 0}}", "/config/agents/missedHeartbeats': minimum"},
		{"allowed networks as a string", `config: {agents: {allowedNetworks: "10.0.0.0/8"}}`, "/config/agents/allowedNetworks': got string, want array"},
		{"allowed network without a prefix", "config: {agents: {allowedNetworks: [10.0.0.1]}}", "/config/agents/allowedNetworks/0': '10.0.0.1' does not match pattern"},
		{"no allowed network", "config: {agents: {allowedNetworks: []}}", "/config/agents/allowedNetworks': minItems"},
		{"metadata limit below the empty object", "config: {agents: {maxMetadataBytes: 1}}", "/config/agents/maxMetadataBytes': minimum"},
		{"metadata limit over 16 MiB", "config: {agents: {maxMetadataBytes: 16777217}}", "/config/agents/maxMetadataBytes': maximum"},
		{"metadata limit as a size string", "config: {agents: {maxMetadataBytes: 64Ki}}", "/config/agents/maxMetadataBytes': got string, want integer"},
		{"metadata depth zero", "config: {agents: {maxMetadataDepth: 0}}", "/config/agents/maxMetadataDepth': minimum"},
		{"metadata depth too deep", "config: {agents: {maxMetadataDepth: 101}}", "/config/agents/maxMetadataDepth': maximum"},
		{"metadata budget zero", "config: {agents: {maxMetadataTotalBytes: 0}}", "/config/agents/maxMetadataTotalBytes': minimum"},
		{"metadata budget past 1 TiB", "config: {agents: {maxMetadataTotalBytes: 1099511627777}}", "/config/agents/maxMetadataTotalBytes': maximum"},
		{"no agent allowed", "config: {agents: {maxAgents: 0}}", "/config/agents/maxAgents': minimum"},
		{"agent concurrency zero", "config: {tasks: {agentConcurrency: 0}}", "/config/tasks/agentConcurrency': minimum"},
		{"result limit too small", "config: {tasks: {maxResultBytes: 512}}", "/config/tasks/maxResultBytes': minimum"},
		{"unknown task setting", "config: {tasks: {retries: 3}}", "additional properties 'retries' not allowed"},
		{"short token", "auth: {agentTokens: [short]}", "/auth/agentTokens/0': minLength"},
		{"token with a space", `auth: {operatorTokens: ["operator token 0123456789"]}`, "/auth/operatorTokens/0': 'operator token 0123456789' does not match pattern"},
		{"tokens as a string", "auth: {agentTokens: agent-token-0123456789}", "/auth/agentTokens': got string, want array"},
		{"unknown resources key", "resources: {limit: {memory: 1Gi}}", "additional properties 'limit' not allowed"},
		{"unknown test pod resources key", "tests: {resources: {request: {cpu: 1}}}", "additional properties 'request' not allowed"},
		{"replicas as a string", `replicaCount: "2"`, "/replicaCount': got string, want null or integer"},
		{"unknown database key", "database: {url: postgres://x}", "additional properties 'url' not allowed"},
		{"database Secret name with capitals", "database: {existingSecret: PG-App}", "/database/existingSecret': 'PG-App' does not match pattern"},
		{"empty database Secret key", `database: {existingSecretKey: ""}`, "/database/existingSecretKey': minLength"},
		{"database egress CIDR without a prefix", "database: {egress: {cidrs: [10.20.0.15]}}", "/database/egress/cidrs/0': '10.20.0.15' does not match pattern"},
		{"database egress port out of range", "database: {egress: {port: 0}}", "/database/egress/port': minimum"},
		{"unknown postgresql key", "postgresql: {password: hunter2}", "additional properties 'password' not allowed"},
		{"postgresql tag as a fraction", "postgresql: {image: {tag: 15.4}}", "/postgresql/image/tag': got number, want integer or string"},
		{"postgresql user that needs quoting", "postgresql: {auth: {username: Orchestrator-User}}", "/postgresql/auth/username': 'Orchestrator-User' does not match pattern"},
		{"postgresql database that needs quoting", `postgresql: {auth: {database: "my db"}}`, "/postgresql/auth/database': 'my db' does not match pattern"},
		{"postgresql volume size in words", "postgresql: {persistence: {size: 2 gigabytes}}", "/postgresql/persistence/size': '2 gigabytes' does not match pattern"},
		{"postgresql resources typo", "postgresql: {resources: {limit: {memory: 1Gi}}}", "additional properties 'limit' not allowed"},
		{"disruption budget below zero", "podDisruptionBudget: {minAvailable: -1}", "/podDisruptionBudget/minAvailable': minimum"},
		{"disruption budget percentage in words", "podDisruptionBudget: {maxUnavailable: half}", "/podDisruptionBudget/maxUnavailable': 'half' does not match pattern"},
		{"spread constraints as an object", "topologySpreadConstraints: {maxSkew: 1}", "/topologySpreadConstraints': got object, want null or array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectRefused(t, newest(t).version, tc.values, tc.want)
		})
	}

	// The oldest supported version renders (the matrix does it); the minor
	// before it is refused: Chart.yaml's kubeVersion and
	// hack/kube-versions.env agree.
	t.Run("cluster older than supported", func(t *testing.T) {
		below := fmt.Sprintf("1.%d.0", oldest(t).minor-1)
		expectRefused(t, below, "termination: {nativeSleep: false}", "chart requires kubeVersion")
	})
}

// expectRefused renders values for the Kubernetes version and requires
// helm to fail saying want.
func expectRefused(t *testing.T, kube, values, want string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(file, []byte(values+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := helmTemplate(t, kube, "--values", file)
	if err == nil {
		t.Fatalf("rendered values %q for Kubernetes %s:\n%s", values, kube, out)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error does not say %q:\n%v", want, err)
	}
}
