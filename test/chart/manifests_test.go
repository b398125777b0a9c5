//go:build chart

package chart_test

import (
	"os"
	"os/exec"
	"testing"
)

// TestManifestsMatchTheChart fails when k8s/ is not what `make manifests`
// renders from the chart's defaults: the chart is the one source of truth.
func TestManifestsMatchTheChart(t *testing.T) {
	cmd := exec.Command("bash", "../../hack/manifests.sh", "check")
	cmd.Env = append(os.Environ(), "HELM="+helmBinary(t))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("k8s/ drifted from the chart (run `make manifests`): %v\n%s", err, out)
	}
}
