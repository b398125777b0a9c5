//go:build e2e

package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

const (
	chartPath  = "../../charts/orchestrator"
	release    = "orch"
	deployment = "orch-orchestrator" // the chart's full name for this release
	// The release's orchestrator pods: not its helm test pod, nor the
	// bundled database's.
	selector = "app.kubernetes.io/name=orchestrator,app.kubernetes.io/instance=" + release + ",app.kubernetes.io/component!=test"
)

// bundledDatabase are the chart values for several replicas on the bundled
// PostgreSQL (the chart refuses them without a database), with its data in
// an emptyDir (a test cluster may have no volume provisioner) and the
// image E2E_POSTGRES_IMAGE when set (the chart's default otherwise).
func bundledDatabase() []string {
	return append([]string{"--set", "postgresql.enabled=true", "--set", "postgresql.persistence.enabled=false"}, postgresImage()...)
}

// postgresImage are the chart values for the image E2E_POSTGRES_IMAGE, if
// set.
func postgresImage() []string {
	ref := os.Getenv("E2E_POSTGRES_IMAGE")
	if ref == "" {
		return nil
	}
	colon := strings.LastIndex(ref, ":")
	return []string{"--set", "postgresql.image.repository=" + ref[:colon], "--set-string", "postgresql.image.tag=" + ref[colon+1:]}
}

// install installs the chart with the image under test and waits for it;
// the release is removed when the test ends.
func install(t *testing.T, ns string, extra ...string) {
	t.Helper()
	args := []string{"install", release, chartPath, "--namespace", ns, "--wait", "--timeout", "5m",
		"--set", "image.repository=" + image.repository,
		"--set", "image.tag=" + image.tag,
		"--set", "config.faultsEnabled=true", // the readiness switch below
		"--set", "service.type=NodePort", // load goes through kube-proxy from outside the cluster
	}
	started := time.Now()
	cmd(t, 6*time.Minute, "helm", append(args, extra...)...)
	t.Logf("helm install --wait took %s", time.Since(started).Round(100*time.Millisecond))
	t.Cleanup(func() {
		if _, err := tryCmd(3*time.Minute, "helm", "uninstall", release, "--namespace", ns, "--wait"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
}

// serviceURL is the Service's NodePort on the node: requests to it go
// through kube-proxy's rules to the Service's ready endpoints, as ClusterIP
// traffic does, and it is reachable from outside the cluster (kind's node
// address from the host; the local node from its network namespace).
func serviceURL(t *testing.T, ns string) string {
	t.Helper()
	var svc corev1.Service
	getJSON(t, ns, &svc, "service", deployment)
	var nodes corev1.NodeList
	getJSON(t, "", &nodes, "nodes")
	for _, a := range nodes.Items[0].Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return fmt.Sprintf("http://%s:%d/", a.Address, svc.Spec.Ports[0].NodePort)
		}
	}
	t.Fatal("the node has no InternalIP")
	return ""
}

func runningPods(t *testing.T, ns string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	getJSON(t, ns, &pods, "pods", "--selector", selector, "--field-selector", "status.phase=Running")
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

func isReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// endpointReady reports the ready condition of the pod's endpoint in the
// Service's EndpointSlices; ok is false when the pod is not listed.
func endpointReady(t *testing.T, ns, pod string) (ready, ok bool) {
	t.Helper()
	var slices discoveryv1.EndpointSliceList
	getJSON(t, ns, &slices, "endpointslices", "--selector", "kubernetes.io/service-name="+deployment)
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.TargetRef != nil && e.TargetRef.Name == pod {
				return e.Conditions.Ready != nil && *e.Conditions.Ready, true
			}
		}
	}
	return false, false
}

func TestChart(t *testing.T) {
	ns := createNamespace(t, "e2e-chart")
	pods := watchPods(t, ns, selector)
	// Two pods, for the Service and rollout cases below: the chart's
	// default with a database (without one it runs a single pod).
	install(t, ns, bundledDatabase()...)
	client := newHTTPClient()

	t.Run("the namespace enforces the restricted standard", func(t *testing.T) {
		// A pod without the restricted settings is refused at admission
		// (a server-side dry run: nothing runs). The chart's pods were
		// admitted, so they meet the standard.
		out, err := tryCmd(time.Minute, "kubectl", "--namespace", ns, "run", "privileged-check",
			"--image="+image.ref, "--restart=Never", "--dry-run=server",
			`--overrides={"spec":{"containers":[{"name":"privileged-check","image":"`+image.ref+`","securityContext":{"privileged":true}}]}}`)
		if err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) {
			t.Fatalf("a privileged pod was not refused: %v %s", err, out)
		}
	})

	t.Run("pods become ready through the kubelet's probes", func(t *testing.T) {
		running := runningPods(t, ns)
		if len(running) != 2 {
			t.Fatalf("%d running pods, want 2", len(running))
		}
		for _, p := range running {
			c := p.Spec.Containers[0]
			if c.StartupProbe == nil || c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("pod %s lacks its probes", p.Name)
			}
			if !isReady(p) || len(p.Status.ContainerStatuses) != 1 || !p.Status.ContainerStatuses[0].Ready ||
				p.Status.ContainerStatuses[0].Started == nil || !*p.Status.ContainerStatuses[0].Started {
				t.Errorf("pod %s: not started and ready: %+v", p.Name, p.Status.ContainerStatuses)
			}
			if restarts := p.Status.ContainerStatuses[0].RestartCount; restarts != 0 {
				t.Errorf("pod %s restarted %d times", p.Name, restarts)
			}
		}
	})

	t.Run("an unready pod leaves the Service's endpoints", func(t *testing.T) {
		pod := runningPods(t, ns)[0].Name
		base := portForward(t, ns, "pod/"+pod)
		if ready, ok := endpointReady(t, ns, pod); !ready || !ok {
			t.Fatalf("pod %s is not a ready endpoint to begin with", pod)
		}
		if code, body := get(t, client, http.MethodPost, base+"/faults/unready"); code != http.StatusOK {
			t.Fatalf("POST /faults/unready = %d %s", code, body)
		}
		started := time.Now()
		eventually.True(t, time.Minute, "the kubelet to mark the pod unready and its endpoint to turn not ready", func() bool {
			ready, ok := endpointReady(t, ns, pod)
			return ok && !ready
		})
		t.Logf("endpoint not ready %s after /ready began to fail", time.Since(started).Round(100*time.Millisecond))
		// Live stays 200: an unready pod is not restarted.
		if code, _ := get(t, client, http.MethodGet, base+"/live"); code != http.StatusOK {
			t.Errorf("/live of the unready pod = %d", code)
		}
		// Every request through the Service now goes to the other pod.
		url := serviceURL(t, ns)
		for range 20 {
			fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
			if code, _ := get(t, fresh, http.MethodGet, url); code != http.StatusOK {
				t.Fatalf("GET through the Service with one pod unready = %d", code)
			}
		}
		if code, body := get(t, client, http.MethodPost, base+"/faults/ready"); code != http.StatusOK {
			t.Fatalf("POST /faults/ready = %d %s", code, body)
		}
		eventually.True(t, time.Minute, "the endpoint to turn ready again", func() bool {
			ready, ok := endpointReady(t, ns, pod)
			return ok && ready
		})
		var p corev1.Pod
		getJSON(t, ns, &p, "pod", pod)
		if p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("the pod was restarted while unready")
		}
	})

	t.Run("the bundled database opens with the URL its Secret gives the pods", func(t *testing.T) {
		checkDatabaseURL(t, ns, "app.kubernetes.io/name=postgresql,app.kubernetes.io/instance="+release, deployment+"-postgresql-0")
	})

	t.Run("helm test", func(t *testing.T) {
		out := cmd(t, 4*time.Minute, "helm", "test", release, "--namespace", ns, "--timeout", "3m")
		if !strings.Contains(out, "Phase:          Succeeded") {
			t.Fatalf("helm test did not succeed:\n%s", out)
		}
	})

	t.Run("port-forward to the Service and curl", func(t *testing.T) {
		base := portForward(t, ns, "service/"+deployment)
		for _, path := range []string{"/health", "/live", "/ready", "/"} {
			code, body := get(t, client, http.MethodGet, base+path)
			if code != http.StatusOK {
				t.Errorf("GET %s = %d %s", path, code, body)
			}
			if path == "/health" {
				var h struct{ Status, Version string }
				if err := json.Unmarshal([]byte(body), &h); err != nil || h.Status != "ok" {
					t.Errorf("/health = %s", body)
				}
			}
		}
	})

	t.Run("rolling restart and scale-down under load lose no request", func(t *testing.T) {
		rollUnderLoad(t, ns, pods, true)
	})
}

// rollUnderLoad restarts the Deployment, then scales it down, while both
// kinds of client send requests through the Service, and reports what
// happened. With strict, any failed request or unclean exit fails the test.
func rollUnderLoad(t *testing.T, ns string, pods *podWatcher, strict bool) {
	t.Helper()
	url := serviceURL(t, ns)
	before := runningPods(t, ns)
	l := startLoad(url)
	stopped := false
	defer func() {
		if !stopped {
			l.stop()
		}
	}()
	time.Sleep(2 * time.Second) // steady state first

	started := time.Now()
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
	restartTook := time.Since(started)

	replicas := len(runningPods(t, ns))
	kubectl(t, ns, "scale", "deployment/"+deployment, fmt.Sprintf("--replicas=%d", replicas-1))
	eventually.True(t, 3*time.Minute, "the scale-down to finish", func() bool {
		return len(runningPods(t, ns)) == replicas-1 && countGone(pods) == len(before)+1
	})
	time.Sleep(2 * time.Second) // requests after the last pod left
	l.stop()
	stopped = true

	for _, c := range l.clients {
		sent, failures := c.result()
		t.Logf("REPORT %s client: %d requests sent, %d failed", c.name, sent, len(failures))
		for i, f := range failures {
			if i == 10 {
				t.Logf("  ... %d more", len(failures)-10)
				break
			}
			t.Logf("  at +%s: %s", f.at.Sub(started).Round(time.Millisecond), f.err)
		}
		if sent < 500 {
			t.Errorf("%s client sent only %d requests: the test proves nothing", c.name, sent)
		}
		if strict && len(failures) > 0 {
			t.Errorf("%s client: %d of %d requests failed during the rollout", c.name, len(failures), sent)
		}
	}

	var toReady, toExit []time.Duration
	replaced := 0
	for _, p := range pods.snapshot() {
		if !p.created.IsZero() && !p.ready.IsZero() {
			toReady = append(toReady, p.ready.Sub(p.created))
		}
		if p.deleting.IsZero() {
			continue
		}
		replaced++
		switch {
		case p.exitCode == nil:
			t.Errorf("pod %s: no termination state seen before it was removed", p.name)
		case *p.exitCode != 0:
			t.Errorf("pod %s exited with code %d (%s), want 0", p.name, *p.exitCode, p.exitReason)
		}
		if !p.terminationFinished.IsZero() {
			took := p.terminationFinished.Sub(p.deleting)
			toExit = append(toExit, took)
			if grace := time.Duration(p.gracePeriodSeconds) * time.Second; took > grace {
				t.Errorf("pod %s took %s to exit, over its %s grace period", p.name, took, grace)
			}
		}
	}
	t.Logf("REPORT rollout: restart of %d pods took %s; %d pods replaced or removed", len(before),
		restartTook.Round(100*time.Millisecond), replaced)
	t.Logf("REPORT pod creation to Ready: %s", spread(toReady))
	t.Logf("REPORT pod deletion to exit: %s", spread(toExit))
}

func countGone(pods *podWatcher) int {
	n := 0
	for _, p := range pods.snapshot() {
		if !p.gone.IsZero() {
			n++
		}
	}
	return n
}

// spread describes durations as min / median / max.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none measured"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	r := func(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
	return fmt.Sprintf("min %s, median %s, max %s (%d pods)", r(ds[0]), r(ds[len(ds)/2]), r(ds[len(ds)-1]), len(ds))
}

// TestRolloutWithoutDrain measures, for comparison, the same rollout with
// the preStop sleep off and SHUTDOWN_DELAY=0: what the drain design buys.
// It reports the failed requests rather than failing on them.
func TestRolloutWithoutDrain(t *testing.T) {
	ns := createNamespace(t, "e2e-nodrain")
	pods := watchPods(t, ns, selector)
	install(t, ns, append(bundledDatabase(), "--set", "termination.preStopSleepSeconds=0", "--set", "config.shutdownDelaySeconds=0")...)
	rollUnderLoad(t, ns, pods, false)
}
