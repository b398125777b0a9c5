//go:build e2e

package e2e_test

import (
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestDefaultsOnANodeWithoutEphemeralStorage installs the chart with its
// default values on a node whose kubelet runs with
// localStorageCapacityIsolation: false, as kind's does on rootless Docker or
// Podman (kubernetes-sigs/kind#3359). Such a node reports no
// ephemeral-storage and never schedules a pod that asks for any: `helm
// install --wait` and `helm test` must still both succeed. It runs only with
// E2E_NODE_WITHOUT_EPHEMERAL_STORAGE=1, on such a node (make e2e-local
// brings one up for it), and first checks that the node is one.
func TestDefaultsOnANodeWithoutEphemeralStorage(t *testing.T) {
	if os.Getenv("E2E_NODE_WITHOUT_EPHEMERAL_STORAGE") != "1" {
		t.Skip("needs a node whose kubelet runs with localStorageCapacityIsolation: false, and E2E_NODE_WITHOUT_EPHEMERAL_STORAGE=1")
	}
	var nodes corev1.NodeList
	getJSON(t, "", &nodes, "nodes")
	for _, n := range nodes.Items {
		for what, list := range map[string]corev1.ResourceList{"capacity": n.Status.Capacity, "allocatable": n.Status.Allocatable} {
			if q, ok := list[corev1.ResourceEphemeralStorage]; ok && !q.IsZero() {
				t.Fatalf("node %s has ephemeral-storage %s in its %s: this case needs a kubelet with localStorageCapacityIsolation: false",
					n.Name, q.String(), what)
			}
		}
	}

	ns := createNamespace(t, "e2e-nostorage")
	// Only the image under test differs from the defaults. The namespace's
	// deletion removes the release with it.
	started := time.Now()
	cmd(t, 4*time.Minute, "helm", "install", release, chartPath, "--namespace", ns, "--wait", "--timeout", "3m",
		"--set", "image.repository="+image.repository, "--set", "image.tag="+image.tag)
	t.Logf("helm install --wait took %s", time.Since(started).Round(100*time.Millisecond))

	out := cmd(t, 3*time.Minute, "helm", "test", release, "--namespace", ns, "--timeout", "2m")
	if !strings.Contains(out, "Phase:          Succeeded") {
		t.Fatalf("helm test did not succeed:\n%s", out)
	}
}
