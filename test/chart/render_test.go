//go:build chart

// Package chart_test checks what must hold across the Helm chart's objects
// on every rendering of the values matrix (charts/orchestrator/ci), for the
// oldest supported Kubernetes version and the newest (hack/kube-versions.env),
// and on the plain manifests in k8s/; it validates renderings with the
// binary's own configuration loader and Kubernetes' own types and quantity
// parser, and feeds the schema values it must refuse. Facts of one template
// with given values are helm-unittest's (charts/orchestrator/tests). It runs
// helm, so it sits behind the "chart" build tag: `make test-chart` installs
// the pinned tools first.
package chart_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir     = "../../charts/orchestrator"
	manifestDir  = "../../k8s"
	versionsFile = "../../hack/kube-versions.env"
	release      = "orch"
	namespace    = "optiinfra"
)

// kubeVersion is a Kubernetes version the chart is rendered for.
type kubeVersion struct {
	version string // without the v, as helm --kube-version takes it
	minor   int
	// nativeSleep: whether the kubelet has the preStop sleep action (1.30+).
	nativeSleep bool
}

// pinnedVersion reads one version from hack/kube-versions.env, the one
// place the project pins its Kubernetes versions: KUBE_VERSION (the
// newest) or KUBE_VERSION_OLDEST (the oldest the chart supports).
func pinnedVersion(t *testing.T, name string) kubeVersion {
	t.Helper()
	f, err := os.Open(versionsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		key, value, ok := strings.Cut(strings.TrimSpace(lines.Text()), "=")
		if !ok || key != name {
			continue
		}
		v := strings.TrimPrefix(value, "v")
		var major, minor, patch int
		if n, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); n != 3 || err != nil || major != 1 ||
			v != fmt.Sprintf("%d.%d.%d", major, minor, patch) {
			t.Fatalf("%s: %s=%s is not v1.<minor>.<patch>", versionsFile, name, value)
		}
		return kubeVersion{version: v, minor: minor, nativeSleep: minor >= 30}
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("%s does not set %s", versionsFile, name)
	return kubeVersion{}
}

// newest is the newest Kubernetes version the chart is tested with.
func newest(t *testing.T) kubeVersion { return pinnedVersion(t, "KUBE_VERSION") }

// oldest is the oldest version the chart supports (Chart.yaml kubeVersion).
func oldest(t *testing.T) kubeVersion { return pinnedVersion(t, "KUBE_VERSION_OLDEST") }

func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	h, err := filepath.Abs("../../.tools/bin/helm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h); err != nil {
		t.Fatalf("helm not found at %s: run `make tools` (or set HELM)", h)
	}
	return h
}

// helmTemplate renders the chart and returns helm's output, or its error
// output as the error.
func helmTemplate(t *testing.T, kubeVersion string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), append([]string{"template", release, chartDir,
		"--namespace", namespace, "--kube-version", kubeVersion}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm template %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// objects is a rendering decoded into typed objects. Decoding is strict: a
// field the Kubernetes types do not know fails the test.
type objects struct {
	docs            []document // every object as rendered
	kinds           map[string]int
	deployments     []appsv1.Deployment
	statefulSets    []appsv1.StatefulSet // the bundled PostgreSQL
	services        []corev1.Service
	configMaps      []corev1.ConfigMap
	secrets         []corev1.Secret
	serviceAccounts []corev1.ServiceAccount
	pods            []corev1.Pod // helm test hooks
	pdbs            []policyv1.PodDisruptionBudget
	hpas            []autoscalingv2.HorizontalPodAutoscaler
	ingresses       []networkingv1.Ingress
	networkPolicies []networkingv1.NetworkPolicy
	serviceMonitors []serviceMonitor
	namespaces      []corev1.Namespace
}

// serviceMonitor is the part of a Prometheus Operator ServiceMonitor the
// checks read; the schema validation checks the rest.
type serviceMonitor struct {
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// document is one rendered object's kind and text.
type document struct{ kind, text string }

func decode(t *testing.T, manifest string) *objects {
	t.Helper()
	o := &objects{kinds: map[string]int{}}
	for _, doc := range strings.Split(manifest, "\n---") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		o.kinds[head.Kind]++
		o.docs = append(o.docs, document{head.Kind, doc})
		var err error
		switch head.Kind {
		case "Deployment":
			o.deployments, err = appendStrict(o.deployments, doc)
		case "StatefulSet":
			o.statefulSets, err = appendStrict(o.statefulSets, doc)
		case "Service":
			o.services, err = appendStrict(o.services, doc)
		case "ConfigMap":
			o.configMaps, err = appendStrict(o.configMaps, doc)
		case "Secret":
			o.secrets, err = appendStrict(o.secrets, doc)
		case "ServiceAccount":
			o.serviceAccounts, err = appendStrict(o.serviceAccounts, doc)
		case "Pod":
			o.pods, err = appendStrict(o.pods, doc)
		case "PodDisruptionBudget":
			o.pdbs, err = appendStrict(o.pdbs, doc)
		case "HorizontalPodAutoscaler":
			o.hpas, err = appendStrict(o.hpas, doc)
		case "Ingress":
			o.ingresses, err = appendStrict(o.ingresses, doc)
		case "NetworkPolicy":
			o.networkPolicies, err = appendStrict(o.networkPolicies, doc)
		case "Namespace":
			o.namespaces, err = appendStrict(o.namespaces, doc)
		case "ServiceMonitor":
			var sm serviceMonitor
			err = yaml.Unmarshal([]byte(doc), &sm)
			o.serviceMonitors = append(o.serviceMonitors, sm)
		default:
			t.Fatalf("unexpected kind %q: teach this test about it", head.Kind)
		}
		if err != nil {
			t.Fatalf("decoding %s: %v\n%s", head.Kind, err, doc)
		}
	}
	return o
}

func appendStrict[T any](list []T, doc string) ([]T, error) {
	var v T
	if err := yaml.UnmarshalStrict([]byte(doc), &v); err != nil {
		return list, err
	}
	return append(list, v), nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// valuesMatrix is the defaults plus every file in the chart's ci folder.
func valuesMatrix(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no values files in %s/ci: %v", chartDir, err)
	}
	sort.Strings(files)
	return append([]string{""}, files...)
}

// renderMatrix calls check with every rendering of the matrix, for the
// oldest and the newest version. Below 1.30 the native preStop sleep is
// switched off, as the chart requires there.
func renderMatrix(t *testing.T, check func(t *testing.T, o *objects)) {
	for _, v := range []kubeVersion{oldest(t), newest(t)} {
		for _, file := range valuesMatrix(t) {
			name := "defaults"
			var args []string
			if file != "" {
				name = strings.TrimSuffix(filepath.Base(file), "-values.yaml")
				args = append(args, "--values", file)
			}
			if !v.nativeSleep {
				args = append(args, "--set", "termination.nativeSleep=false")
			}
			t.Run(v.version+"/"+name, func(t *testing.T) {
				out, err := helmTemplate(t, v.version, args...)
				if err != nil {
					t.Fatal(err)
				}
				check(t, decode(t, out))
			})
		}
	}
}

// manifests reads k8s/ as one rendering.
func manifests(t *testing.T) *objects {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", manifestDir, err)
	}
	var all []string
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, string(b))
	}
	return decode(t, strings.Join(all, "\n---\n"))
}
