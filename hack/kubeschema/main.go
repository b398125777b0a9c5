// Command kubeschema turns a Kubernetes OpenAPI v2 document
// (api/openapi-spec/swagger.json in the k8s.io/kubernetes module) into the
// standalone JSON schemas that kubeconform reads, so that manifests can be
// validated offline against an exact Kubernetes version.
//
// kubeconform's own schemas live on the internet, which CI cannot reach; the
// swagger document, though, ships inside the k8s.io/kubernetes module zip that
// the Go module proxy serves. For every definition that carries
// x-kubernetes-group-version-kind it writes
//
//	<out>/<version>-standalone/<kind>[-<group>]-<apiversion>.json
//	<out>/<version>-standalone-strict/<kind>[-<group>]-<apiversion>.json
//
// named as kubeconform's -schema-location template
// {{ .ResourceKind }}{{ .KindSuffix }} expects: kind lowercased, then the first
// dot-label of the group (none for the core group), then the API version;
// e.g. deployment-apps-v1.json, pod-v1.json, ingress-networking-v1.json.
//
// Every $ref is inlined, so each file stands alone. A $ref back to a
// definition already being expanded (JSONSchemaProps refers to itself) becomes
// an open schema {} instead. IntOrString becomes type [string, integer],
// Quantity [string, number]; optional properties also accept null, as the API
// server does. The -strict tree adds additionalProperties: false to every
// object schema with properties, so an unknown (e.g. misspelt) field fails,
// as it does with kubectl's strict field validation. Descriptions are dropped
// unless -descriptions is given: kubeconform never shows them.
//
// Usage:
//
//	go run ./hack/kubeschema -spec swagger.json -version v1.34.2 -out .tools/schemas
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

const (
	intOrString = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
	quantity    = "io.k8s.apimachinery.pkg.api.resource.Quantity"
)

type schema = map[string]any

type converter struct {
	defs         map[string]schema
	descriptions bool
}

func main() {
	spec := flag.String("spec", "", "path to the OpenAPI v2 swagger.json")
	version := flag.String("version", "", "Kubernetes version the spec belongs to, e.g. v1.34.2")
	out := flag.String("out", "", "directory to write <version>-standalone[-strict]/ into")
	desc := flag.Bool("descriptions", false, "keep descriptions in the schemas")
	flag.Parse()
	if *spec == "" || *version == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	data, err := os.ReadFile(*spec)
	if err != nil {
		log.Fatal(err)
	}
	files, err := convert(data, *desc)
	if err != nil {
		log.Fatal(err)
	}
	v := "v" + strings.TrimPrefix(*version, "v")
	for strict, suffix := range map[bool]string{false: "-standalone", true: "-standalone-strict"} {
		dir := filepath.Join(*out, v+suffix)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			log.Fatal(err)
		}
		for name, s := range files[strict] {
			if err := os.WriteFile(filepath.Join(dir, name), s, 0o644); err != nil {
				log.Fatal(err)
			}
		}
	}
	fmt.Printf("kubeschema: %d schemas for %s in %s/%s-standalone{,-strict}\n", len(files[false]), v, *out, v)
}

// convert returns the encoded schemas by file name, for the plain (false)
// and strict (true) trees.
func convert(swagger []byte, descriptions bool) (map[bool]map[string][]byte, error) {
	var doc struct {
		Definitions map[string]schema `json:"definitions"`
	}
	if err := json.Unmarshal(swagger, &doc); err != nil {
		return nil, fmt.Errorf("parse swagger: %w", err)
	}
	if len(doc.Definitions) == 0 {
		return nil, fmt.Errorf("swagger has no definitions")
	}
	c := &converter{defs: doc.Definitions, descriptions: descriptions}
	files := map[bool]map[string][]byte{false: {}, true: {}}
	owner := map[string]string{}
	names := make([]string, 0, len(c.defs))
	for name := range c.defs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, def := range names {
		gvks, _ := c.defs[def]["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			if kind == "" || version == "" {
				continue
			}
			file := fileName(kind, group, version)
			if prev, dup := owner[file]; dup {
				if prev != def {
					log.Printf("kubeschema: %s: both %s and %s; keeping %s", file, prev, def, prev)
				}
				continue
			}
			owner[file] = def
			s := c.expand(schema{"$ref": "#/definitions/" + def}, nil)
			for _, strict := range []bool{false, true} { // plain first: makeStrict edits s
				if strict {
					makeStrict(s)
				}
				b, err := json.Marshal(s)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", def, err)
				}
				files[strict][file] = b
			}
		}
	}
	return files, nil
}

// fileName is kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}.json.
func fileName(kind, group, version string) string {
	name := strings.ToLower(kind)
	if group != "" {
		name += "-" + strings.ToLower(strings.Split(group, ".")[0])
	}
	return name + "-" + strings.ToLower(version) + ".json"
}

// expand returns a fresh copy of s with every $ref inlined. stack holds the
// definitions being expanded on the way here, to cut recursion.
func (c *converter) expand(s schema, stack []string) schema {
	if ref, ok := s["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/definitions/")
		def, known := c.defs[name]
		if !known {
			log.Printf("kubeschema: unknown $ref %q: left open", ref)
		}
		if !known || slices.Contains(stack, name) {
			return schema{} // recursive or unknown: accept anything here
		}
		out := c.expand(def, append(stack, name))
		switch name {
		case intOrString:
			out["type"] = []any{"string", "integer"}
			delete(out, "format")
		case quantity:
			out["type"] = []any{"string", "number"}
		}
		for k, v := range s { // siblings of $ref (descriptions) win
			if k != "$ref" && (k != "description" || c.descriptions) {
				out[k] = v
			}
		}
		return out
	}
	out := schema{}
	for k, v := range s {
		switch k {
		case "description":
			if c.descriptions {
				out[k] = v
			}
		case "properties", "patternProperties":
			props := schema{}
			for p, ps := range v.(map[string]any) {
				props[p] = c.expand(ps.(map[string]any), stack)
			}
			out[k] = props
		case "items", "additionalProperties", "not":
			if sub, ok := v.(map[string]any); ok {
				out[k] = c.expand(sub, stack)
			} else {
				out[k] = v // a boolean, or (items) a tuple we do not meet in Kubernetes
			}
		case "allOf", "anyOf", "oneOf":
			var list []any
			for _, sub := range v.([]any) {
				list = append(list, c.expand(sub.(map[string]any), stack))
			}
			out[k] = list
		default:
			out[k] = v
		}
	}
	switch out["format"] {
	case "int-or-string":
		out["type"] = []any{"string", "integer"}
		delete(out, "format")
	case "quantity":
		out["type"] = []any{"string", "number"}
		delete(out, "format")
	}
	if props, ok := out["properties"].(schema); ok {
		required, _ := out["required"].([]any)
		for p, ps := range props {
			if !slices.Contains(required, any(p)) {
				allowNull(ps.(schema))
			}
		}
	}
	return out
}

// allowNull lets an optional property be null: the API server drops it.
func allowNull(s schema) {
	switch t := s["type"].(type) {
	case string:
		s["type"] = []any{t, "null"}
	case []any:
		if !slices.Contains(t, any("null")) {
			s["type"] = append(t, "null")
		}
	default:
		return // untyped: null passes already
	}
	if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, nil) {
		s["enum"] = append(enum, nil)
	}
}

// makeStrict adds additionalProperties: false, in place, to every object
// schema that lists properties and says nothing about other fields.
func makeStrict(s schema) {
	if _, ok := s["properties"]; ok && s["additionalProperties"] == nil && s["x-kubernetes-preserve-unknown-fields"] != true {
		s["additionalProperties"] = false
	}
	for k, v := range s {
		switch k {
		case "properties", "patternProperties":
			for _, ps := range v.(schema) {
				makeStrict(ps.(schema))
			}
		case "items", "additionalProperties", "not":
			if sub, ok := v.(schema); ok {
				makeStrict(sub)
			}
		case "allOf", "anyOf", "oneOf":
			for _, sub := range v.([]any) {
				makeStrict(sub.(schema))
			}
		}
	}
}
