//go:build chart

package chart_test

import (
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// externalDatabaseURL stands in for the URL of a database.existingSecret,
// which no rendering holds.
const externalDatabaseURL = "postgres://orchestrator:placeholder-password@db.example.com:5432/orchestrator?sslmode=require"

// checkDatabase: the database URL reaches the binary only as a file from a
// Secret. Without one the agents and tasks live in a pod's memory, so one
// pod runs. With the bundled database, the URL names its Service, which
// picks its pod, with the user, database and password that pod is made
// with, and a NetworkPolicy that limits the orchestrator's egress lets it
// through.
func checkDatabase(t *testing.T, o *objects, d appsv1.Deployment, c corev1.Container) {
	t.Helper()
	file := ""
	for _, e := range c.Env {
		switch e.Name {
		case "DATABASE_URL":
			t.Errorf("DATABASE_URL is in the pod spec: the URL holds a password and must come as a file")
		case "DATABASE_URL_FILE":
			file = e.Value
		}
	}
	for _, cm := range o.configMaps {
		for k := range cm.Data {
			if strings.HasPrefix(k, "DATABASE_URL") {
				t.Errorf("ConfigMap %s sets %s: the database URL belongs to a Secret", cm.Name, k)
			}
		}
	}

	if file == "" {
		if len(o.hpas) > 0 || (d.Spec.Replicas != nil && *d.Spec.Replicas > 1) {
			t.Errorf("no database, yet %d pods or an HPA (%d): each pod would keep its own agents and tasks", ptrValue(d.Spec.Replicas), len(o.hpas))
		}
		if len(o.statefulSets) > 0 {
			t.Errorf("the chart runs StatefulSet %s, but the orchestrator uses no database", o.statefulSets[0].Name)
		}
		return
	}
	content, rendered, ok := mountedSecretFile(t, o, c, d.Spec.Template.Spec, file)
	if !ok {
		t.Fatalf("DATABASE_URL_FILE=%s is not a file mounted from a Secret", file)
	}
	if !rendered { // database.existingSecret: the user's Secret
		if len(o.statefulSets) > 0 {
			t.Errorf("the orchestrator uses an external database, yet the chart runs StatefulSet %s", o.statefulSets[0].Name)
		}
		return
	}

	// The bundled database.
	if len(o.statefulSets) != 1 {
		t.Fatalf("the URL comes from the chart's Secret, but the rendering has %d StatefulSets, want 1", len(o.statefulSets))
	}
	sts := o.statefulSets[0]
	u, err := url.Parse(strings.TrimSpace(string(content)))
	if err != nil || u.Scheme != "postgres" || u.User == nil {
		t.Fatalf("the database URL does not parse as postgres://USER:PASSWORD@HOST:PORT/DATABASE: %v", err)
	}
	serviceName, ok := strings.CutSuffix(u.Hostname(), "."+sts.Namespace+".svc")
	if !ok {
		t.Fatalf("the database URL's host %s is not a Service of namespace %s", u.Hostname(), sts.Namespace)
	}
	svc := named(t, o.services, serviceName)
	if selectedStatefulSet(o, svc.Spec.Selector) == nil || svc.Spec.Selector["app.kubernetes.io/name"] != sts.Spec.Selector.MatchLabels["app.kubernetes.io/name"] {
		t.Errorf("the URL's Service %s selects %v, not StatefulSet %s's pods", svc.Name, svc.Spec.Selector, sts.Name)
	}
	pg := sts.Spec.Template.Spec.Containers[0]
	var podPort int32
	for _, p := range svc.Spec.Ports {
		if u.Port() != strconv.Itoa(int(p.Port)) {
			continue
		}
		if podPort = p.TargetPort.IntVal; p.TargetPort.StrVal != "" {
			podPort = namedPort(t, pg, p.TargetPort.StrVal)
		}
	}
	if podPort == 0 {
		t.Errorf("the URL's port %s is not a port of Service %s", u.Port(), svc.Name)
	}
	env := map[string]string{}
	for _, e := range pg.Env {
		env[e.Name] = e.Value
	}
	if got, want := env["POSTGRES_USER"], u.User.Username(); got != want {
		t.Errorf("the database is made with POSTGRES_USER %q, the URL connects as %q", got, want)
	}
	if got, want := env["POSTGRES_DB"], strings.TrimPrefix(u.Path, "/"); got != want {
		t.Errorf("the database is made with POSTGRES_DB %q, the URL opens %q", got, want)
	}
	password, rendered, ok := mountedSecretFile(t, o, pg, sts.Spec.Template.Spec, env["POSTGRES_PASSWORD_FILE"])
	urlPassword, _ := u.User.Password()
	if !ok || !rendered || urlPassword == "" || strings.TrimSpace(string(password)) != urlPassword {
		t.Errorf("the database's POSTGRES_PASSWORD_FILE is not a file of the rendered Secret holding the URL's password")
	}

	for _, np := range o.networkPolicies {
		if np.Name != d.Name || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			continue
		}
		if !egressAllows(np, sts.Spec.Template.Labels, podPort) {
			t.Errorf("NetworkPolicy %s limits egress but does not let the pods reach the database's (%v) on port %d",
				np.Name, sts.Spec.Template.Labels, podPort)
		}
	}
}

// egressAllows reports whether a rule of the policy lets its pods reach
// pods with these labels (in the same namespace) on the port.
func egressAllows(np networkingv1.NetworkPolicy, labels map[string]string, port int32) bool {
	for _, rule := range np.Spec.Egress {
		portOK := len(rule.Ports) == 0
		for _, p := range rule.Ports {
			if p.Port == nil || p.Port.IntValue() == int(port) {
				portOK = true
			}
		}
		peerOK := len(rule.To) == 0
		for _, to := range rule.To {
			if to.PodSelector != nil && to.NamespaceSelector == nil && subset(to.PodSelector.MatchLabels, labels) {
				peerOK = true
			}
		}
		if portOK && peerOK {
			return true
		}
	}
	return false
}

func ptrValue(p *int32) int32 {
	if p == nil {
		return 1 // the Deployment's default
	}
	return *p
}

// TestPostgresManifestsInvariants checks k8s/postgres/ as its users get it:
// the Secret it leaves out of git made by the very command its
// kustomization.yaml gives, then `kubectl kustomize`.
func TestPostgresManifestsInvariants(t *testing.T) {
	o := postgresManifests(t)
	checkInvariants(t, o)
	if len(o.pods) != 0 {
		t.Errorf("k8s/postgres holds %d helm test pods; plain manifests should not", len(o.pods))
	}
	if len(o.namespaces) != 1 || o.namespaces[0].Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("k8s/postgres should create its namespace with pod-security.kubernetes.io/enforce=restricted: %+v", o.namespaces)
	}
	if len(o.statefulSets) != 1 || len(o.statefulSets[0].Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("k8s/postgres should run the bundled PostgreSQL on a PersistentVolumeClaim: %v", o.kinds)
	}
	if d := o.deployments[0]; d.Spec.Replicas == nil || *d.Spec.Replicas < 2 || len(o.pdbs) != 1 {
		t.Errorf("k8s/postgres should run several orchestrator pods with a disruption budget: replicas %v, %d PDBs", d.Spec.Replicas, len(o.pdbs))
	}
}

// postgresManifests builds k8s/postgres/ in a copy: runs the command its
// kustomization.yaml gives for postgresql.env, then kubectl kustomize.
func postgresManifests(t *testing.T) *objects {
	t.Helper()
	work := t.TempDir()
	dir := filepath.Join(work, "k8s", "postgres")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(manifestDir, "postgres", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s/postgres: %v", manifestDir, err)
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
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The indented comment lines after "Write it before", up to a bare "#".
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
		t.Fatal("k8s/postgres/kustomization.yaml gives no command for postgresql.env after \"Write it before\"")
	}
	sh := exec.Command("bash", "-euo", "pipefail", "-c", strings.Join(command, "\n"))
	sh.Dir = work
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the command k8s/postgres/kustomization.yaml gives failed: %v\n%s\n%s", err, strings.Join(command, "\n"), out)
	}

	kc := exec.Command(kubectlBinary(t), "kustomize", dir)
	var stdout, stderr bytes.Buffer
	kc.Stdout, kc.Stderr = &stdout, &stderr
	if err := kc.Run(); err != nil {
		t.Fatalf("kubectl kustomize k8s/postgres: %v\n%s", err, stderr.String())
	}
	return decode(t, stdout.String())
}

// kubectlBinary is kubectl from PATH, or the local node's (hack/localkube).
func kubectlBinary(t *testing.T) string {
	t.Helper()
	if k, err := exec.LookPath("kubectl"); err == nil {
		return k
	}
	k, err := filepath.Abs("../../.tools/localkube/bin/kubectl")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k); err != nil {
		t.Fatalf("kubectl not found on PATH or at %s: it builds k8s/postgres (kubectl kustomize)", k)
	}
	return k
}
