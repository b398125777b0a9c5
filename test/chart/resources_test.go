//go:build chart

package chart_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestDefaultsAskOnlyForCPUAndMemory: a node whose kubelet runs with
// localStorageCapacityIsolation: false (kind on rootless Docker or Podman,
// kubernetes-sigs/kind#3359) reports no ephemeral-storage, and a pod that
// requests or limits it stays Pending there for good. Every pod the defaults
// render, the helm test pod included, and every pod in k8s/, asks only for
// what every node reports: CPU and memory.
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
