package main

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// A tiny swagger document with what the converter must handle: a core and a
// grouped kind, $refs with sibling descriptions, IntOrString, Quantity, a
// self-reference, required and optional properties, and a property named
// like a schema keyword.
const swagger = `{"definitions": {
  "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
  "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string", "description": "a quantity"},
  "example.Meta": {"type": "object", "properties": {"name": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
  "example.Spec": {"type": "object", "required": ["port"], "properties": {
    "port": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString", "description": "the port"},
    "size": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity"},
    "mode": {"type": "string", "enum": ["A", "B"]},
    "description": {"type": "string"},
    "children": {"type": "array", "items": {"$ref": "#/definitions/example.Spec"}}}},
  "example.Widget": {"type": "object", "description": "a widget",
    "x-kubernetes-group-version-kind": [{"group": "", "kind": "Widget", "version": "v1"}],
    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
      "metadata": {"$ref": "#/definitions/example.Meta"},
      "spec": {"$ref": "#/definitions/example.Spec"}}},
  "example.Gadget": {"type": "object",
    "x-kubernetes-group-version-kind": [
      {"group": "things.example.com", "kind": "Gadget", "version": "v1beta1"},
      {"group": "other.example.com", "kind": "Gadget", "version": "v2"}],
    "properties": {"metadata": {"$ref": "#/definitions/example.Meta"}}},
  "example.NoKind": {"type": "object", "properties": {"x": {"type": "string"}}}
}}`

func TestConvert(t *testing.T) {
	files, err := convert([]byte(swagger), false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range files[true] {
		names = append(names, n)
	}
	sort.Strings(names)
	wantNames := []string{"gadget-other-v2.json", "gadget-things-v1beta1.json", "widget-v1.json"}
	if !reflect.DeepEqual(names, wantNames) {
		t.Fatalf("file names = %v, want %v", names, wantNames)
	}

	decode := func(strict bool, file string) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(files[strict][file], &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	spec := "properties.spec.properties."
	tests := []struct {
		name   string
		strict bool
		file   string
		path   string // dot-separated keys from the schema's root
		want   any    // nil: the key must be absent
	}{
		{"ref inlined", false, "widget-v1.json", "properties.metadata.properties.name.type", []any{"string", "null"}},
		{"map kept as map", true, "widget-v1.json", "properties.metadata.properties.labels.additionalProperties.type", "string"},
		{"int-or-string", false, "widget-v1.json", spec + "port.type", []any{"string", "integer"}},
		{"int-or-string format dropped", false, "widget-v1.json", spec + "port.format", nil},
		{"quantity, optional", false, "widget-v1.json", spec + "size.type", []any{"string", "number", "null"}},
		{"optional enum takes null", false, "widget-v1.json", spec + "mode.enum", []any{"A", "B", nil}},
		{"property named description kept", false, "widget-v1.json", spec + "description.type", []any{"string", "null"}},
		{"descriptions dropped", false, "widget-v1.json", "description", nil},
		{"sibling description dropped", false, "widget-v1.json", spec + "port.description", nil},
		{"recursion cut to open schema", false, "widget-v1.json", spec + "children.items", map[string]any{}},
		{"plain allows unknown fields", false, "widget-v1.json", "additionalProperties", nil},
		{"strict root", true, "widget-v1.json", "additionalProperties", false},
		{"strict nested", true, "widget-v1.json", "properties.spec.additionalProperties", false},
		{"strict keeps gvk", true, "widget-v1.json", "x-kubernetes-group-version-kind.0.kind", "Widget"},
		{"grouped kind", true, "gadget-things-v1beta1.json", "properties.metadata.additionalProperties", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got any = decode(tt.strict, tt.file)
			for _, key := range strings.Split(tt.path, ".") {
				switch v := got.(type) {
				case map[string]any:
					got = v[key]
				case []any:
					got = v[int(key[0]-'0')]
				default:
					got = nil
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s: %s = %#v, want %#v", tt.file, tt.path, got, tt.want)
			}
		})
	}
}

func TestConvertKeepsDescriptions(t *testing.T) {
	files, err := convert([]byte(swagger), true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(files[false]["widget-v1.json"]), `"description":"the port"`) {
		t.Errorf("-descriptions: sibling description of $ref missing: %s", files[false]["widget-v1.json"])
	}
}

func TestFileName(t *testing.T) {
	for _, tt := range []struct{ kind, group, version, want string }{
		{"Deployment", "apps", "v1", "deployment-apps-v1.json"},
		{"Pod", "", "v1", "pod-v1.json"},
		{"HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscaler-autoscaling-v2.json"},
		{"Ingress", "networking.k8s.io", "v1", "ingress-networking-v1.json"},
		{"PodDisruptionBudget", "policy", "v1", "poddisruptionbudget-policy-v1.json"},
	} {
		if got := fileName(tt.kind, tt.group, tt.version); got != tt.want {
			t.Errorf("fileName(%q, %q, %q) = %q, want %q", tt.kind, tt.group, tt.version, got, tt.want)
		}
	}
}

func TestConvertRejectsEmpty(t *testing.T) {
	if _, err := convert([]byte(`{}`), false); err == nil {
		t.Error("want an error for a document without definitions")
	}
	if _, err := convert([]byte(`not json`), false); err == nil {
		t.Error("want an error for a document that is not JSON")
	}
}
