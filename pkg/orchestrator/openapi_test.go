package orchestrator

import (
	"bytes"
	"encoding/json"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
)

// wireSchemas maps the OpenAPI document's schemas to this package's types.
// written marks the schemas the server writes (answers): an optional
// property of those is omitted when empty, so its field must be omitempty.
var wireSchemas = map[string]struct {
	typ     reflect.Type
	written bool
}{
	"Registration":      {reflect.TypeFor[Registration](), false},
	"RegisterResponse":  {reflect.TypeFor[RegisterResponse](), true},
	"Heartbeat":         {reflect.TypeFor[HeartbeatRequest](), false},
	"HeartbeatResponse": {reflect.TypeFor[HeartbeatResponse](), true},
	"Agent":             {reflect.TypeFor[Agent](), true},
	"AgentList":         {reflect.TypeFor[AgentList](), true},
	"Message":           {reflect.TypeFor[message](), true},
	"Error":             {reflect.TypeFor[errorBody](), true},
	"TaskRequest":       {reflect.TypeFor[TaskRequest](), false},
	"TaskAccepted":      {reflect.TypeFor[TaskAccepted](), true},
	"Task":              {reflect.TypeFor[Task](), true},
	"TaskList":          {reflect.TypeFor[TaskList](), true},
	// The /api/v1 dialect.
	"RegistrationV1":       {reflect.TypeFor[RegistrationV1](), false},
	"RegisterResponseV1":   {reflect.TypeFor[RegisterResponseV1](), true},
	"HeartbeatV1":          {reflect.TypeFor[HeartbeatV1](), false},
	"HeartbeatResponseV1":  {reflect.TypeFor[HeartbeatResponseV1](), true},
	"UnregisterResponseV1": {reflect.TypeFor[UnregisterResponseV1](), true},
	"AgentV1":              {reflect.TypeFor[AgentV1](), true},
	"AgentListV1":          {reflect.TypeFor[AgentListV1](), true},
}

// loadOpenAPI loads the server's own document, the one it serves.
func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile(filepath.Join("..", "..", "internal", "api", "openapi.yaml"))
	if err != nil {
		t.Fatalf("loading internal/api/openapi.yaml: %v", err)
	}
	return doc
}

// example is one example of the document with the schema it is of.
type example struct {
	where  string
	schema string
	value  any
}

// examples collects every example of a request or response body whose
// schema is one of wireSchemas, and every such schema's own example.
func examples(doc *openapi3.T) []example {
	var out []example
	add := func(where string, content openapi3.Content) {
		for _, mt := range slices.Sorted(maps.Keys(content)) {
			media := content[mt]
			if media.Schema == nil {
				continue
			}
			name := strings.TrimPrefix(media.Schema.Ref, "#/components/schemas/")
			if _, ok := wireSchemas[name]; !ok {
				continue
			}
			if media.Example != nil {
				out = append(out, example{where + " " + mt, name, media.Example})
			}
			for _, key := range slices.Sorted(maps.Keys(media.Examples)) {
				out = append(out, example{where + " " + mt + " " + key, name, media.Examples[key].Value.Value})
			}
		}
	}
	for _, path := range slices.Sorted(maps.Keys(doc.Paths.Map())) {
		item := doc.Paths.Value(path)
		for _, method := range slices.Sorted(maps.Keys(item.Operations())) {
			op := item.GetOperation(method)
			where := method + " " + path
			if op.RequestBody != nil {
				add(where+" request", op.RequestBody.Value.Content)
			}
			for _, code := range slices.Sorted(maps.Keys(op.Responses.Map())) {
				add(where+" "+code, op.Responses.Value(code).Value.Content)
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(wireSchemas)) {
		if s := doc.Components.Schemas[name]; s != nil && s.Value.Example != nil {
			out = append(out, example{"components.schemas." + name, name, s.Value.Example})
		}
	}
	return out
}

// TestTypesRoundTripOpenAPIExamples decodes every example of the OpenAPI
// document into this package's type for its schema, refusing fields the
// type lacks, and encodes it again: the JSON must be the example's. A
// renamed field, a wrong type or an omitempty the server does not have
// fails here.
func TestTypesRoundTripOpenAPIExamples(t *testing.T) {
	doc := loadOpenAPI(t)
	seen := map[string]int{}
	for _, ex := range examples(doc) {
		seen[ex.schema]++
		t.Run(ex.where, func(t *testing.T) {
			want, err := json.Marshal(ex.value)
			if err != nil {
				t.Fatal(err)
			}
			v := reflect.New(wireSchemas[ex.schema].typ)
			dec := json.NewDecoder(bytes.NewReader(want))
			dec.DisallowUnknownFields()
			if err := dec.Decode(v.Interface()); err != nil {
				t.Fatalf("the %s example %s does not decode into %s: %v", ex.schema, want, v.Type().Elem(), err)
			}
			got, err := json.Marshal(v.Interface())
			if err != nil {
				t.Fatal(err)
			}
			if !sameJSON(t, got, want) {
				t.Errorf("%s round trip:\n got %s\nwant %s", v.Type().Elem(), got, want)
			}
		})
	}
	for name := range wireSchemas {
		if seen[name] == 0 {
			t.Errorf("no example of the %s schema in the document: nothing holds %s to it", name, wireSchemas[name].typ)
		}
	}
}

// TestTypesMatchOpenAPISchemas holds each type's fields to its schema's
// properties: the same names, compatible JSON types, required properties
// never omitted, and the optional properties of answers omitted when
// empty, as the server does. Examples alone would miss a property no
// example shows.
func TestTypesMatchOpenAPISchemas(t *testing.T) {
	doc := loadOpenAPI(t)
	for _, name := range slices.Sorted(maps.Keys(wireSchemas)) {
		t.Run(name, func(t *testing.T) {
			ref := doc.Components.Schemas[name]
			if ref == nil {
				t.Fatalf("the document has no %s schema", name)
			}
			schema, typ := ref.Value, wireSchemas[name].typ
			fields := jsonFields(typ)
			for _, prop := range slices.Sorted(maps.Keys(schema.Properties)) {
				f, ok := fields[prop]
				if !ok {
					t.Errorf("%s has no field for the property %q", typ, prop)
					continue
				}
				required := slices.Contains(schema.Required, prop)
				switch {
				case required && f.omitempty:
					t.Errorf("%s.%s is omitempty, but %q is required", typ, f.name, prop)
				case !required && wireSchemas[name].written && !f.omitempty:
					t.Errorf("%s.%s is not omitempty, but the server omits %q when it is empty", typ, f.name, prop)
				}
				if !compatible(schema.Properties[prop].Value, f.typ) {
					t.Errorf("%s.%s is a %s, which cannot hold the schema's %v %s", typ, f.name, f.typ,
						schema.Properties[prop].Value.Type.Slice(), schema.Properties[prop].Value.Format)
				}
			}
			for prop, f := range fields {
				if _, ok := schema.Properties[prop]; !ok {
					t.Errorf("%s.%s (%q) is not a property of the %s schema", typ, f.name, prop, name)
				}
			}
		})
	}
}

type jsonField struct {
	name      string
	typ       reflect.Type
	omitempty bool
}

// jsonFields lists a struct's fields by their JSON names.
func jsonFields(typ reflect.Type) map[string]jsonField {
	out := map[string]jsonField{}
	for f := range typ.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out[name] = jsonField{f.Name, f.Type, slices.Contains(strings.Split(opts, ","), "omitempty")}
	}
	return out
}

var (
	rawJSON  = reflect.TypeFor[json.RawMessage]()
	timeType = reflect.TypeFor[time.Time]()
)

// compatible reports whether a Go field of type t can hold the values of s.
func compatible(s *openapi3.Schema, t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == rawJSON {
		return true // any JSON value
	}
	switch {
	case s.Type == nil || len(s.Type.Slice()) == 0:
		return t.Kind() == reflect.Interface
	case s.Type.Is("string") && s.Format == "date-time":
		return t == timeType
	case s.Type.Is("string"):
		return t.Kind() == reflect.String
	case s.Type.Is("integer"):
		return t.Kind() == reflect.Int || t.Kind() == reflect.Int64
	case s.Type.Is("number"):
		return t.Kind() == reflect.Float64
	case s.Type.Is("boolean"):
		return t.Kind() == reflect.Bool
	case s.Type.Is("array"):
		return t.Kind() == reflect.Slice && (s.Items == nil || compatible(s.Items.Value, t.Elem()))
	case s.Type.Is("object"):
		return t.Kind() == reflect.Map || t.Kind() == reflect.Struct
	}
	return false
}

// sameJSON reports whether a and b are the same JSON value.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}
