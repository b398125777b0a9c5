//go:build e2e

package e2e_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestPlainManifests applies k8s/ the way its users do, `kubectl apply -k`,
// with the image under test swapped in by a kustomize overlay, and waits for
// it to become ready and answer.
func TestPlainManifests(t *testing.T) {
	manifests, err := filepath.Abs("../../k8s")
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	// kustomize takes a base only by a relative path.
	base, err := filepath.Rel(overlay, manifests)
	if err != nil {
		t.Fatal(err)
	}
	kustomization := "resources:\n  - " + base + "\n" +
		"images:\n  - name: ghcr.io/optiinfra/orchestrator\n    newName: " + image.repository + "\n    newTag: " + image.tag + "\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "", "apply", "-k", overlay)
	t.Cleanup(func() {
		if _, err := tryCmd(4*time.Minute, "kubectl", "delete", "-k", overlay, "--wait=true", "--timeout=3m"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	const ns = "orchestrator" // k8s/namespace.yaml
	kubectl(t, ns, "rollout", "status", "deployment/orchestrator", "--timeout=3m")
	var namespace corev1.Namespace
	getJSON(t, "", &namespace, "namespace", ns)
	if namespace.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %s labels %v: k8s/ should enforce the restricted standard", ns, namespace.Labels)
	}
	url := portForward(t, ns, "service/orchestrator")
	if code, body := get(t, newHTTPClient(), "GET", url+"/health"); code != 200 {
		t.Fatalf("GET /health through k8s/ = %d %s", code, body)
	}
}
