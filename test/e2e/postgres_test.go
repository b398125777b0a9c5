//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// TestPlainManifestsPostgres applies k8s/postgres/ the way its users do:
// the Secret it leaves out of git made by the command its kustomization.yaml
// gives, then `kubectl apply -k`, with the images under test swapped in and,
// since a test cluster may have no volume provisioner, the database's data
// in an emptyDir instead of its claim. It waits for the database and the
// orchestrator's pods to be ready, checks that the URL in the Secret opens
// the database with its password, and that the Service answers.
func TestPlainManifestsPostgres(t *testing.T) {
	source, err := filepath.Abs("../../k8s/postgres")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	base := filepath.Join(work, "k8s", "postgres")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(source, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", source, err)
	}
	var kustomization string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "kustomization.yaml" {
			kustomization = string(b)
		}
		if err := os.WriteFile(filepath.Join(base, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeDatabaseEnv(t, work, kustomization)

	overlay := filepath.Join(work, "overlay")
	if err := os.Mkdir(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	images := "images:\n  - name: ghcr.io/optiinfra/orchestrator\n    newName: " + image.repository + "\n    newTag: " + image.tag + "\n"
	if ref := os.Getenv("E2E_POSTGRES_IMAGE"); ref != "" {
		colon := strings.LastIndex(ref, ":")
		images += "  - name: docker.io/library/postgres\n    newName: " + ref[:colon] + "\n    newTag: \"" + ref[colon+1:] + "\"\n"
	}
	overlayYAML := "resources:\n  - ../k8s/postgres\n" + images + `patches:
  - target: {kind: StatefulSet, name: orchestrator-postgresql}
    patch: |
      - op: remove
        path: /spec/volumeClaimTemplates
      - op: add
        path: /spec/template/spec/volumes/-
        value: {name: data, emptyDir: {}}
`
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(overlayYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "", "apply", "-k", overlay)
	t.Cleanup(func() {
		if _, err := tryCmd(4*time.Minute, "kubectl", "delete", "-k", overlay, "--wait=true", "--timeout=3m"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	const ns = "orchestrator" // k8s/postgres/namespace.yaml
	kubectl(t, ns, "rollout", "status", "statefulset/orchestrator-postgresql", "--timeout=4m")
	kubectl(t, ns, "rollout", "status", "deployment/orchestrator", "--timeout=4m")
	var namespace corev1.Namespace
	getJSON(t, "", &namespace, "namespace", ns)
	if namespace.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %s labels %v: k8s/postgres should enforce the restricted standard", ns, namespace.Labels)
	}
	var pods corev1.PodList
	getJSON(t, ns, &pods, "pods", "--selector", "app.kubernetes.io/name=orchestrator", "--field-selector", "status.phase=Running")
	if len(pods.Items) < 2 {
		t.Errorf("%d orchestrator pods running, want 2 or more on the database", len(pods.Items))
	}
	checkDatabaseURL(t, ns, "app.kubernetes.io/name=postgresql", "orchestrator-postgresql-0")
	url := portForward(t, ns, "service/orchestrator")
	if code, body := get(t, newHTTPClient(), "GET", url+"/health"); code != 200 {
		t.Fatalf("GET /health through k8s/postgres = %d %s", code, body)
	}
}

// writeDatabaseEnv runs, in dir, the command the kustomization's comment
// gives for k8s/postgres/postgresql.env: the indented comment lines after
// "Write it before", up to a bare "#".
func writeDatabaseEnv(t *testing.T, dir, kustomization string) {
	t.Helper()
	var command []string
	in := false
	for line := range strings.Lines(kustomization) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.Contains(line, "Write it before"):
			in = true
		case in && strings.HasPrefix(line, "#   "):
			command = append(command, strings.TrimPrefix(line, "#"))
		case in && len(command) > 0 && line == "#":
			in = false
		}
	}
	if len(command) == 0 {
		t.Fatal("k8s/postgres/kustomization.yaml gives no command for postgresql.env")
	}
	sh := exec.Command("bash", "-euo", "pipefail", "-c", strings.Join(command, "\n"))
	sh.Dir = dir
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the command of k8s/postgres/kustomization.yaml failed: %v\n%s", err, out)
	}
}

// checkDatabaseURL reads the database URL from the Secret the selector picks
// (the one the orchestrator mounts) and opens it with psql in the database
// pod, over TCP to the pod's own address: the password rule of pg_hba.conf
// applies, and no NetworkPolicy stands in between.
func checkDatabaseURL(t *testing.T, ns, secretSelector, pod string) {
	t.Helper()
	var secrets corev1.SecretList
	getJSON(t, ns, &secrets, "secrets", "--selector", secretSelector)
	if len(secrets.Items) != 1 {
		t.Fatalf("%d Secrets match %s, want 1", len(secrets.Items), secretSelector)
	}
	raw := strings.TrimSpace(string(secrets.Items[0].Data["url"]))
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		t.Fatalf("Secret %s key url does not parse as a postgres:// URL", secrets.Items[0].Name)
	}
	var p corev1.Pod
	getJSON(t, ns, &p, "pod", pod)
	u.Host = p.Status.PodIP + ":" + u.Port()
	// The URL goes to psql through standard input, not the command line:
	// the password stays out of the test's log when the command fails.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, "kubectl", "--namespace", ns, "exec", "-i", pod, "--", "sh", "-c",
		`psql "$(cat)" --no-psqlrc --tuples-only --no-align -c "SELECT current_user || '/' || current_database()"`)
	c.Stdin = strings.NewReader(u.String())
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("psql with the Secret's URL in pod %s: %v\n%s", pod, err, stderr.String())
	}
	out := stdout.String()
	if got, want := strings.TrimSpace(out), u.User.Username()+"/"+strings.TrimPrefix(u.Path, "/"); got != want {
		t.Errorf("the database URL opens %q, want %q", got, want)
	}
}

// The phases of TestPostgresDisruptions, in order.
const (
	phaseBefore = iota
	phaseRollout
	phaseForceDelete
	phaseDatabase
	phaseAfter
)

// TestPostgresDisruptions is the database mode's promise on a real node:
// the chart with the bundled PostgreSQL on a persistent volume, its two
// orchestrator replicas, and the test agent pod, with a steady stream of
// tasks through the Service while, one after the other, (a) the
// Deployment is restarted (kubectl rollout restart), (b) one orchestrator
// pod is force-deleted (--grace-period=0 --force: no drain), and (c) the
// database pod is deleted and its StatefulSet makes it again, on the same
// volume. Then every task accepted with 201 must reach a terminal state
// that stays put, the agent (which records its deliveries per task_id)
// must never have had one task twice at the same time, the agent must
// still be registered under the same id and heartbeating, and the rollout
// must have answered every request 201. Failed connections during (b) and
// (c), and 503s while the database is away, are allowed and counted; any
// other answer fails the test.
//
// The database's data is on a volume: the node's default StorageClass if
// it has one (kind's), else a PersistentVolume made here on the node's
// disk (the local node has no provisioner), claimed through the chart's
// storageClass "-". Without persistence (postgresql.persistence.enabled=
// false, as TestChart runs) the data is in an emptyDir that goes with the
// pod: the recreated database is empty, every agent and task is gone, and
// (c) would lose every task accepted before it; that is why the opt-out is
// for tests that do not restart the database.
func TestPostgresDisruptions(t *testing.T) {
	agentImage := os.Getenv("E2E_AGENT_IMAGE")
	if env("E2E_AGENT", "run") == "skip" {
		t.Skip("E2E_AGENT=skip")
	}
	if agentImage == "" {
		t.Fatal("set E2E_AGENT_IMAGE to the test agent image the cluster can run (built from test/e2e/agent/Dockerfile), or E2E_AGENT=skip")
	}
	ns := createNamespace(t, "e2e-pgdisrupt")
	values := append([]string{
		"--set", "postgresql.enabled=true",
		"--set", "auth.agentTokens[0]=" + agentToken,
		"--set", "auth.operatorTokens[0]=" + operatorToken,
		// Three missed heartbeats (15 s) make the agent unreachable: a
		// disruption that stopped its heartbeats for long would show.
		"--set", "config.agents.heartbeatInterval=5s",
	}, postgresImage()...)
	install(t, ns, append(values, databaseVolume(t, ns)...)...)
	if n := len(runningPods(t, ns)); n != 2 {
		t.Fatalf("%d orchestrator pods running, want 2 (the database mode's default)", n)
	}
	ctx := context.Background()
	base := serviceURL(t, ns)
	api := newAPIClient(t, base, operatorToken)

	applyAgent(t, ns, agentImage, agentDeployment,
		envFrom("AGENT_HOST", "status.podIP"), envValue("AGENT_TYPE", agentType))
	kubectl(t, ns, "rollout", "status", "deployment/"+agentDeployment, "--timeout=3m")
	var agentPods corev1.PodList
	getJSON(t, ns, &agentPods, "pods", "--selector", "app.kubernetes.io/name="+agentDeployment)
	if len(agentPods.Items) != 1 {
		t.Fatalf("want one agent pod, got %d", len(agentPods.Items))
	}
	agentPod := agentPods.Items[0].Name
	var agent orchestrator.Agent
	eventually.True(t, 2*time.Minute, "the agent to be listed healthy in GET /agents", func() bool {
		list, err := api.ListAgents(ctx, agentType)
		for _, a := range list {
			if err == nil && a.Name == agentPod && a.Status == orchestrator.AgentHealthy {
				agent = a
				return true
			}
		}
		return false
	})

	phases := []string{"steady, before", "(a) rollout restart", "(b) pod force-deleted", "(c) database pod deleted", "steady, after"}
	stream := startTaskStream(t, base, operatorToken, phases)
	stopped := false
	defer func() {
		if !stopped {
			stream.stop()
		}
	}()
	time.Sleep(5 * time.Second)

	// (a) The rollout: until every old pod is gone.
	stream.setPhase(phaseRollout)
	started := time.Now()
	before := runningPods(t, ns)
	pods := watchPods(t, ns, selector)
	kubectl(t, ns, "rollout", "restart", "deployment/"+deployment)
	kubectl(t, ns, "rollout", "status", "deployment/"+deployment, "--timeout=5m")
	eventually.True(t, 3*time.Minute, "the old pods to be gone", func() bool {
		seen := pods.snapshot()
		for _, p := range before {
			if seen[p.Name].gone.IsZero() {
				return false
			}
		}
		return true
	})
	t.Logf("REPORT (a) rollout restart of %d pods took %s", len(before), time.Since(started).Round(100*time.Millisecond))
	time.Sleep(3 * time.Second)

	// (b) One pod killed without a drain, in the middle of a delivery;
	// the ReplicaSet replaces it. Two slow tasks (4 s at the agent) make
	// sure one replica or both hold a delivery; the victim is the pod
	// whose orchestrator_tasks_in_flight is highest just before.
	stream.setPhase(phaseForceDelete)
	metricsURLs := map[string]string{}
	for _, p := range runningPods(t, ns) {
		metricsURLs[p.Name] = portForward(t, ns, "pod/"+p.Name) + "/metrics"
	}
	for range 2 {
		created, err := api.SubmitTask(ctx, orchestrator.TaskRequest{
			TaskType: agentCapability, AgentType: agentType,
			Parameters: json.RawMessage(`{"sleep_ms":4000,"slow":true}`), TimeoutSeconds: new(10),
		})
		if err != nil {
			t.Fatalf("POST /tasks (a slow task): %v", err)
		}
		stream.add(created.TaskID, phaseForceDelete)
	}
	victim, held := "", 0.0
	eventually.True(t, 30*time.Second, "a replica to hold a delivery", func() bool {
		for name, u := range metricsURLs {
			if n := gauge(t, u, "orchestrator_tasks_in_flight"); n > held {
				victim, held = name, n
			}
		}
		return held > 0
	})
	started = time.Now()
	kubectl(t, ns, "delete", "pod", victim, "--grace-period=0", "--force")
	t.Logf("REPORT (b) pod %s force-deleted holding %v deliveries", victim, held)
	eventually.True(t, 3*time.Minute, "two ready pods again, without "+victim, func() bool {
		running := runningPods(t, ns)
		ready := 0
		for _, p := range running {
			if p.Name == victim {
				return false
			}
			if isReady(p) {
				ready++
			}
		}
		return ready == 2
	})
	t.Logf("REPORT (b) pod %s force-deleted; two ready pods again after %s", victim, time.Since(started).Round(100*time.Millisecond))
	// A delivery the killed pod held is taken over when its lease
	// (TASK_LEASE_DURATION, 15 s) runs out: the phase lasts past that.
	time.Sleep(20 * time.Second)

	// (c) The database pod deleted; its StatefulSet makes it again.
	stream.setPhase(phaseDatabase)
	started = time.Now()
	dbPod := deployment + "-postgresql-0"
	var old corev1.Pod
	getJSON(t, ns, &old, "pod", dbPod)
	kubectl(t, ns, "delete", "pod", dbPod, "--wait=true", "--timeout=2m")
	eventually.True(t, 3*time.Minute, "the database pod to be made again and ready", func() bool {
		var p corev1.Pod
		out, err := tryCmd(30*time.Second, "kubectl", "--namespace", ns, "get", "pod", dbPod, "-o", "json")
		return err == nil && json.Unmarshal([]byte(out), &p) == nil && p.UID != old.UID && isReady(p)
	})
	dbReady := time.Since(started)
	eventually.True(t, 3*time.Minute, "both orchestrator pods ready again", func() bool {
		running := runningPods(t, ns)
		for _, p := range running {
			if !isReady(p) {
				return false
			}
		}
		return len(running) == 2
	})
	t.Logf("REPORT (c) database pod deleted: ready again after %s, both orchestrator pods ready after %s",
		dbReady.Round(100*time.Millisecond), time.Since(started).Round(100*time.Millisecond))
	time.Sleep(5 * time.Second)

	stream.setPhase(phaseAfter)
	time.Sleep(5 * time.Second)
	stats, accepted := stream.stop()
	stopped = true
	streamEnded := time.Now()

	for i, st := range stats {
		t.Logf("REPORT submissions %-26s sent %4d, accepted %4d, 503 %3d, connection errors %3d, other %v",
			phases[i], st.sent, st.accepted, st.unavailable, st.connErrors, st.other)
		for _, e := range st.errors {
			t.Logf("    %s", e)
		}
		if len(st.other) > 0 {
			t.Errorf("%s: answers other than 201 and 503: %v", phases[i], st.other)
		}
		if st.accepted < 20 {
			t.Errorf("%s: only %d tasks accepted: the phase proves nothing", phases[i], st.accepted)
		}
	}
	if st := stats[phaseRollout]; st.sent != st.accepted {
		t.Errorf("(a) the rollout lost requests: %d sent, %d accepted (503 %d, connection errors %d)",
			st.sent, st.accepted, st.unavailable, st.connErrors)
	}

	final := waitTerminal(t, api, accepted, 3*time.Minute)
	ledger := agentDeliveries(t, ns, agentPod)
	checkTasks(t, api, phases, accepted, final, ledger)

	t.Run("the agent stays registered", func(t *testing.T) {
		var p corev1.Pod
		getJSON(t, ns, &p, "pod", agentPod)
		if n := p.Status.ContainerStatuses[0].RestartCount; n != 0 {
			t.Errorf("the agent pod restarted %d times: its ledger of deliveries is incomplete", n)
		}
		eventually.True(t, time.Minute, "GET /agents to list the agent healthy, heartbeating since the disruptions", func() bool {
			list, err := api.ListAgents(ctx, agentType)
			for _, a := range list {
				if err == nil && a.ID == agent.ID && a.Status == orchestrator.AgentHealthy && a.LastSeen.After(streamEnded) {
					return true
				}
			}
			return false
		})
	})
}

// gauge reads one unlabelled gauge from a /metrics page (0 when absent or
// unreadable: the caller retries).
func gauge(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := newHTTPClient().Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return 0
}

// databaseVolume makes the chart keep the database on a volume: the
// node's default StorageClass, or else a PersistentVolume on the node's
// disk bound in advance to the claim the StatefulSet will make.
func databaseVolume(t *testing.T, ns string) []string {
	t.Helper()
	var classes storagev1.StorageClassList
	getJSON(t, "", &classes, "storageclasses")
	for _, c := range classes.Items {
		if c.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
			t.Logf("REPORT database volume: a claim on the default StorageClass %s", c.Name)
			return []string{"--set", "postgresql.persistence.enabled=true"}
		}
	}
	var nodes corev1.NodeList
	getJSON(t, "", &nodes, "nodes")
	if len(nodes.Items) != 1 {
		t.Fatalf("no default StorageClass and %d nodes: a volume on one node's disk needs a single node", len(nodes.Items))
	}
	host := nodes.Items[0].Labels["kubernetes.io/hostname"]
	// The directory is on this machine: the suite runs on the node (make
	// e2e-local). Owned by the database's user (999), as fsGroup would
	// make it.
	dir, err := os.MkdirTemp("", "e2e-pgdata-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chown(dir, 999, 999); err != nil {
		t.Fatal(err)
	}
	name := ns + "-pgdata"
	pv := map[string]any{
		"apiVersion": "v1",
		"kind":       "PersistentVolume",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"capacity":                      map[string]any{"storage": "2Gi"},
			"accessModes":                   []string{"ReadWriteOnce"},
			"persistentVolumeReclaimPolicy": "Retain",
			"storageClassName":              "",
			"claimRef":                      map[string]any{"namespace": ns, "name": "data-" + deployment + "-postgresql-0"},
			"local":                         map[string]any{"path": dir},
			"nodeAffinity": map[string]any{"required": map[string]any{"nodeSelectorTerms": []any{map[string]any{
				"matchExpressions": []any{map[string]any{"key": "kubernetes.io/hostname", "operator": "In", "values": []string{host}}},
			}}}},
		},
	}
	data, err := json.Marshal(pv)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "pv.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "", "apply", "-f", file)
	// Runs before the namespace's deletion: the volume goes once its
	// claim has gone with the namespace.
	t.Cleanup(func() {
		if _, err := tryCmd(time.Minute, "kubectl", "delete", "persistentvolume", name, "--wait=false"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	t.Logf("REPORT database volume: no default StorageClass; PersistentVolume %s (local, %s on node %s), storageClass \"-\"", name, dir, host)
	return []string{"--set", "postgresql.persistence.enabled=true", "--set", "postgresql.persistence.storageClass=-"}
}

// waitTerminal reads every accepted task until it is in a terminal state,
// or until timeout; it returns the last state read of each.
func waitTerminal(t *testing.T, api *orchestrator.Client, accepted []acceptedTask, timeout time.Duration) map[string]orchestrator.Task {
	t.Helper()
	final := make(map[string]orchestrator.Task, len(accepted))
	var mu sync.Mutex
	pending := make([]string, 0, len(accepted))
	for _, a := range accepted {
		pending = append(pending, a.id)
	}
	deadline := time.Now().Add(timeout)
	for len(pending) > 0 && time.Now().Before(deadline) {
		ids := make(chan string)
		var next []string
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for id := range ids {
					task, err := api.GetTask(context.Background(), id)
					mu.Lock()
					if err == nil {
						final[id] = task
					}
					if err != nil || !terminal(task.Status) {
						next = append(next, id)
					}
					mu.Unlock()
				}
			})
		}
		for _, id := range pending {
			ids <- id
		}
		close(ids)
		wg.Wait()
		pending = next
		if len(pending) > 0 {
			time.Sleep(time.Second)
		}
	}
	for i, id := range pending {
		if i == 10 {
			t.Errorf("... and %d more", len(pending)-10)
			break
		}
		t.Errorf("task %s not terminal after %s: %+v", id, timeout, final[id])
	}
	return final
}

func terminal(s orchestrator.TaskStatus) bool {
	switch s {
	case orchestrator.TaskCompleted, orchestrator.TaskFailed, orchestrator.TaskTimeout, orchestrator.TaskCancelled:
		return true
	}
	return false
}

// agentLedger is the test agent's GET /deliveries.
type agentLedger map[string]struct {
	Deliveries    int `json:"deliveries"`
	InFlight      int `json:"in_flight"`
	MaxConcurrent int `json:"max_concurrent"`
}

// agentDeliveries reads the test agent's record of its deliveries.
func agentDeliveries(t *testing.T, ns, pod string) agentLedger {
	t.Helper()
	base := portForwardTo(t, ns, "pod/"+pod, agentPort)
	code, body := get(t, newHTTPClient(), http.MethodGet, base+"/deliveries")
	if code != http.StatusOK {
		t.Fatalf("GET /deliveries of the agent = %d %s", code, body)
	}
	var out struct {
		Tasks agentLedger `json:"tasks"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("GET /deliveries of the agent: %v", err)
	}
	return out.Tasks
}

// checkTasks holds the accepted tasks' final states against the agent's
// ledger and reports them by phase: each task in one terminal state that
// a second read finds unchanged, delivered at most once at a time, a
// completed one delivered at least once.
func checkTasks(t *testing.T, api *orchestrator.Client, phases []string, accepted []acceptedTask, final map[string]orchestrator.Task, ledger agentLedger) {
	t.Helper()
	type counts struct{ completed, failed, redelivered, retried, overlapped int }
	byPhase := make([]counts, len(phases))
	mine := map[string]bool{}
	for _, a := range accepted {
		mine[a.id] = true
		c := &byPhase[a.phase]
		task, ok := final[a.id]
		if !ok {
			t.Errorf("task %s (accepted in %s) was never read back", a.id, phases[a.phase])
			continue
		}
		d := ledger[a.id]
		switch {
		case task.Status == orchestrator.TaskCompleted:
			c.completed++
			if d.Deliveries == 0 {
				t.Errorf("task %s completed, but the agent never received it", a.id)
			}
		case terminal(task.Status):
			c.failed++
			if c.failed <= 5 {
				t.Logf("task %s (accepted in %s) ended %s: %s", a.id, phases[a.phase], task.Status, task.Error)
			}
		}
		if d.Deliveries > 1 {
			c.redelivered++
		}
		if task.RetryCount > 0 {
			c.retried++
		}
		if d.MaxConcurrent > 1 {
			c.overlapped++
			t.Errorf("task %s was delivered %d times at once (accepted in %s)", a.id, d.MaxConcurrent, phases[a.phase])
		}
		if d.InFlight != 0 {
			t.Errorf("task %s is still being delivered (%d) after it ended %s", a.id, d.InFlight, task.Status)
		}
		if terminal(task.Status) {
			again, err := api.GetTask(context.Background(), a.id)
			if err != nil || again.Status != task.Status || again.CompletedAt == nil || task.CompletedAt == nil ||
				!again.CompletedAt.Equal(*task.CompletedAt) {
				t.Errorf("task %s: ended %s at %v, read again: %s at %v (%v)", a.id, task.Status, task.CompletedAt,
					again.Status, again.CompletedAt, err)
			}
		}
	}
	for i, c := range byPhase {
		t.Logf("REPORT tasks accepted in %-26s completed %4d, failed/timeout/cancelled %3d, redelivered %3d, retried %3d, delivered twice at once %d",
			phases[i], c.completed, c.failed, c.redelivered, c.retried, c.overlapped)
	}
	// Tasks the agent ran whose 201 never reached the stream (its
	// connection broke after the database had the task).
	unseen := 0
	for id := range ledger {
		if !mine[id] {
			unseen++
		}
	}
	t.Logf("REPORT tasks delivered to the agent whose 201 the stream never read: %d", unseen)
}
