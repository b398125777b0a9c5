package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Variable is one environment variable of Config, as its struct tag
// declares it. Variables lists them, so Load and the tests can cover every
// setting, including ones added later, without a hand-kept list.
type Variable struct {
	// Name is the variable, with any prefix= of the structs it sits in.
	Name string
	// Field is the Go path of the field, such as "Dispatch.Retention".
	Field string
	// Index is the field's index sequence in Config, for
	// reflect.Value.FieldByIndex.
	Index []int
	// Structs are the struct types from Config down to the one the
	// field belongs to, such as [Config, server.Config,
	// server.Listen].
	Structs []reflect.Type
	// Type is the field's type (time.Duration, int, string, ...).
	Type reflect.Type
	// Default is the default= of the tag; HasDefault tells "" from none.
	Default    string
	HasDefault bool
}

// IsDuration reports whether the variable is a time.Duration.
func (v Variable) IsDuration() bool {
	return v.Type.PkgPath() == "time" && v.Type.Name() == "Duration"
}

// IsNumber reports whether the variable is an integer that is not a
// duration.
func (v Variable) IsNumber() bool {
	switch v.Type.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return !v.IsDuration()
	default:
		return false
	}
}

// Variables returns every variable Config reads, in field order.
func Variables() []Variable {
	return walk(reflect.TypeFor[Config](), "", "", nil, nil)
}

func walk(t reflect.Type, prefix, path string, index []int, structs []reflect.Type) []Variable {
	structs = append(slices.Clip(structs), t)
	var out []Variable
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts := parseTag(f.Tag.Get("env"))
		field := strings.TrimPrefix(path+"."+f.Name, ".")
		at := append(slices.Clip(index), i)
		if f.Type.Kind() == reflect.Struct {
			out = append(out, walk(f.Type, prefix+opts["prefix"], field, at, structs)...)
			continue
		}
		if name == "" {
			continue
		}
		def, hasDefault := opts["default"]
		out = append(out, Variable{
			Name: prefix + name, Field: field, Index: at, Structs: structs, Type: f.Type,
			Default: def, HasDefault: hasDefault,
		})
	}
	return out
}

// parseTag splits an env tag as go-envconfig does: the name, then options;
// default= takes the rest of the tag, commas included.
func parseTag(tag string) (string, map[string]string) {
	name, rest, _ := strings.Cut(tag, ",")
	opts := map[string]string{}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ")
		if v, ok := strings.CutPrefix(rest, "default="); ok {
			opts["default"] = v
			break
		}
		var opt string
		opt, rest, _ = strings.Cut(rest, ",")
		k, v, _ := strings.Cut(strings.TrimSpace(opt), "=")
		opts[k] = v
	}
	return strings.TrimSpace(name), opts
}

// refuseEmpty reports the numbers, durations and booleans set to an empty
// value. envconfig leaves those at zero, so PORT= would listen on a random
// port and SHUTDOWN_DELAY= would not drain, without a word; an empty
// string setting means what its own Validate says.
func refuseEmpty(env map[string]string) []error {
	var errs []error
	for _, v := range Variables() {
		if value, ok := env[v.Name]; !ok || value != "" {
			continue
		}
		switch {
		case v.IsDuration():
			errs = append(errs, fmt.Errorf("%s=\"\": must be a duration such as 500ms, 5s or 1m (unset it for the default)", v.Name))
		case v.IsNumber():
			errs = append(errs, fmt.Errorf("%s=\"\": must be a whole number (unset it for the default)", v.Name))
		case v.Type.Kind() == reflect.Bool:
			errs = append(errs, fmt.Errorf("%s=\"\": must be true or false (unset it for the default)", v.Name))
		}
	}
	return errs
}
