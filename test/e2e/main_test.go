//go:build e2e

// Package e2e_test runs the orchestrator's used-by flows on a real
// Kubernetes cluster: whatever the current kubeconfig points at (kind,
// minikube, or the local node that `make e2e-local` brings up). It installs
// the Helm chart into a namespace that enforces the "restricted" Pod
// Security Standard, follows the pods through the kubelet's own probes,
// takes a pod out of its Service on purpose, runs `helm test`, port-forwards
// and curls, restarts and scales the Deployment (two pods on the bundled
// PostgreSQL) under load and requires that no request fails, runs a test
// agent pod that registers, receives a routed task, carries out the steps
// of an execution plan and unregisters (with both token roles on), keeps a stream of tasks to that agent flowing
// through a rollout, a force-deleted pod and a restart of the bundled
// database on its volume (every accepted task ends once, none is
// delivered twice at the same time), applies k8s/ and k8s/postgres/ with
// kustomize, and runs Skaffold. On a node without ephemeral-storage, it installs the
// chart's defaults and runs `helm test` (the one case for such
// a node: E2E_NODE_WITHOUT_EPHEMERAL_STORAGE).
//
// It needs kubectl, helm and skaffold on PATH and:
//
//	E2E_IMAGE        the orchestrator image the cluster can run (repository:tag),
//	                 built from the project's Dockerfile and loaded or pushed
//	E2E_AGENT_IMAGE  the test agent image the cluster can run, built from
//	                 test/e2e/agent/Dockerfile (context: the repository root)
//	E2E_POSTGRES_IMAGE  the PostgreSQL image for the bundled database (repository:tag),
//	                 when the cluster cannot pull the chart's default; make
//	                 e2e-local builds one from Debian's packages (hack/postgres)
//	E2E_AGENT        "run" (default) to run the agent case, "skip" to leave it out
//	E2E_SKAFFOLD          "run" (default) to run the Skaffold case, "skip" to leave it out
//	E2E_SKAFFOLD_PROFILE  a skaffold.yaml profile to add, e.g. buildah (no Docker engine)
//	E2E_SKAFFOLD_ARGS     more flags for skaffold run and dev, e.g. --default-repo=127.0.0.1:5000
//	E2E_NODE_WITHOUT_EPHEMERAL_STORAGE  "1" on a node whose kubelet runs with
//	                 localStorageCapacityIsolation: false, to run the case for it
//	                 (alone: -test.run TestDefaultsOnANodeWithoutEphemeralStorage)
//
// Run it with `make e2e`.
package e2e_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// image is the orchestrator image under test, split for the chart.
var image struct{ ref, repository, tag string }

func TestMain(m *testing.M) {
	ref := os.Getenv("E2E_IMAGE")
	slash := strings.LastIndex(ref, "/")
	colon := strings.LastIndex(ref, ":")
	if ref == "" || colon < slash {
		fmt.Fprintln(os.Stderr, "e2e: set E2E_IMAGE to the orchestrator image the cluster can run, as repository:tag")
		os.Exit(2)
	}
	image.ref, image.repository, image.tag = ref, ref[:colon], ref[colon+1:]
	if out, err := tryCmd(30*time.Second, "kubectl", "version"); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: no cluster to test against: %v\n", err)
		os.Exit(2)
	} else {
		fmt.Fprint(os.Stderr, out)
	}
	os.Exit(m.Run())
}
