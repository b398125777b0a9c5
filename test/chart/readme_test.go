//go:build chart

package chart_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestReadmeListsEveryValue: the chart's README has a line for each
// top-level value of values.yaml, so a new group of values cannot go
// undocumented there.
func TestReadmeListsEveryValue(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "\n## Values\n")
	if !ok {
		t.Fatal("the chart's README has no \"## Values\" section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	rows := map[string]bool{}
	for line := range strings.Lines(table) {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		for name := range strings.SplitSeq(first, ",") {
			rows[strings.Trim(strings.TrimSpace(name), "`")] = true
		}
	}
	for key := range values {
		if !rows[key] {
			t.Errorf("values.yaml has %s, but the Values table of the chart's README has no row for it", key)
		}
	}
	for name := range rows {
		if _, ok := values[name]; !ok {
			t.Errorf("the chart's README lists %s, which values.yaml does not have", name)
		}
	}
}
