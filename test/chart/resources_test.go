//go:build chart

package chart_test

import (
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestDefaultsAskOnlyForCPUAndMemory: a node whose kubelet runs with
// localStorageCapacityIsolation: false (kind on rootless Docker or Podman,
// kubernetes-sigs/kind#3359) reports no ephemeral-storage, and a pod that
// requests or limits it stays Pending there for good. Every pod the defaults
// render, the helm test pod included, the bundled database's, and every pod
// in k8s/ and k8s/postgres/, asks only for what every node reports: CPU and
// memory.
func TestDefaultsAskOnlyForCPUAndMemory(t *testing.T) {
	t.Run("chart defaults", func(t *testing.T) {
		out, err := helmTemplate(t, newest(t).version)
		if err != nil {
			t.Fatal(err)
		}
		o := decode(t, out)
		if len(o.pods) == 0 {
			t.Fatal("no helm test pod in the rendering: it must be checked too")
		}
		checkOnlyCPUAndMemory(t, o)
	})
	t.Run("k8s/", func(t *testing.T) {
		checkOnlyCPUAndMemory(t, manifests(t))
	})
	// The bundled database's pod too.
	t.Run("chart with the bundled database", func(t *testing.T) {
		out, err := helmTemplate(t, newest(t).version, "--set", "postgresql.enabled=true")
		if err != nil {
			t.Fatal(err)
		}
		o := decode(t, out)
		if len(o.statefulSets) == 0 {
			t.Fatal("no StatefulSet in the rendering with postgresql.enabled=true: it must be checked too")
		}
		checkOnlyCPUAndMemory(t, o)
	})
	t.Run("k8s/postgres/", func(t *testing.T) {
		checkOnlyCPUAndMemory(t, postgresManifests(t))
	})
}

func checkOnlyCPUAndMemory(t *testing.T, o *objects) {
	t.Helper()
	specs := map[string]corev1.PodSpec{}
	for _, d := range o.deployments {
		specs["Deployment "+d.Name] = d.Spec.Template.Spec
	}
	for _, p := range o.pods {
		specs["Pod "+p.Name] = p.Spec
	}
	for _, sts := range o.statefulSets {
		specs["StatefulSet "+sts.Name] = sts.Spec.Template.Spec
	}
	for what, spec := range specs {
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			for kind, list := range map[string]corev1.ResourceList{"requests": c.Resources.Requests, "limits": c.Resources.Limits} {
				for name := range list {
					if name != corev1.ResourceCPU && name != corev1.ResourceMemory {
						t.Errorf("%s container %s %s %s: nodes without local storage capacity isolation never schedule it",
							what, c.Name, kind, name)
					}
				}
			}
		}
	}
}

// TestGoMemLimitIsNinetyPercentOfTheMemoryLimit renders the chart's
// GOMEMLIMIT for memory limits in every form Kubernetes reads, and checks
// it against Kubernetes' own reading of them (checkGoMemLimit).
func TestGoMemLimitIsNinetyPercentOfTheMemoryLimit(t *testing.T) {
	for _, limit := range []string{
		"128Mi", "1Gi", "1.5Gi", "0.5Gi", "3.3Mi", "1.25Ti", "1Ki", // binary suffixes, fractions rounded up to a byte
		"500M", "1G", "100k", "2.5G", // decimal suffixes
		"2e9", "1E3", "5E", "1Ei", // exponents, and E (exa) that is not one
		"134217728", // bytes
	} {
		t.Run(limit, func(t *testing.T) {
			out, err := helmTemplate(t, newest(t).version, "--set-string", "resources.limits.memory="+limit)
			if err != nil {
				t.Fatal(err)
			}
			checkGoMemLimit(t, orchestrator(t, pod(decode(t, out))))
		})
	}
	// A number in a values file reaches the template as a float64.
	t.Run("a YAML number", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(file, []byte("resources: {limits: {memory: 268435456}}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := helmTemplate(t, newest(t).version, "--values", file)
		if err != nil {
			t.Fatal(err)
		}
		checkGoMemLimit(t, orchestrator(t, pod(decode(t, out))))
	})
	t.Run("no limit", func(t *testing.T) {
		out, err := helmTemplate(t, newest(t).version, "--set", "resources.limits.memory=null")
		if err != nil {
			t.Fatal(err)
		}
		checkGoMemLimit(t, orchestrator(t, pod(decode(t, out))))
	})
}
