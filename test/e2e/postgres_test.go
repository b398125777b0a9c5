//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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
