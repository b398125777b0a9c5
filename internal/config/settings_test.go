package config_test

// One source per setting. A setting lives in several places: its struct
// tag, its Validate, the startup log object, the README's configuration
// table, and the chart (values.yaml, its schema, the ConfigMap). These
// tests take the list of variables from the struct tags and check every
// other place against it, naming the variable and the place, so a setting
// added on one side only fails here.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/yaml"

	"github.com/optiinfra/orchestrator/internal/config"
)

// root is the repository, from this package's directory.
const root = "../.."

// notInChart are the variables the chart deliberately does not set, each
// with the reason. Everything else must be in the ConfigMap (from
// values.yaml) or in the Deployment's env.
var notInChart = map[string]string{
	// A pod must listen on every interface: the kubelet's probes and the
	// Service reach it on the pod IP, which is not known in advance.
	"HTTP_HOST": "the pod listens on every interface",
	// Tokens never sit in the pod spec or a ConfigMap: the chart mounts
	// them from a Secret and sets AUTH_*_TOKENS_FILE instead.
	"AUTH_AGENT_TOKENS":    "tokens come from a Secret, as AUTH_AGENT_TOKENS_FILE",
	"AUTH_OPERATOR_TOKENS": "tokens come from a Secret, as AUTH_OPERATOR_TOKENS_FILE",
	// The database URL holds a password: the chart mounts it from a
	// Secret and sets DATABASE_URL_FILE instead.
	"DATABASE_URL": "the URL comes from a Secret, as DATABASE_URL_FILE",
}

// setByDeployment are variables the Deployment's env sets through a helper
// template (templates/_helpers.tpl) rather than a literal "- name:" line
// of templates/deployment.yaml, as it does with the database Secret's path.
var setByDeployment = []string{"DATABASE_URL_FILE"}

// secrets are logged as a description, never as their value.
var secrets = []string{"AUTH_AGENT_TOKENS", "AUTH_OPERATOR_TOKENS", "DATABASE_URL"}

// aliases are README rows for names that are not fields of Config.
var aliases = []string{"ORCHESTRATOR_PORT"}

func variables(t *testing.T) []config.Variable {
	t.Helper()
	vars := config.Variables()
	if len(vars) < 20 {
		t.Fatalf("found %d variables by reflection; the walk over config.Config is broken", len(vars))
	}
	return vars
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestEveryVariableIsInTheREADME checks the README's configuration table:
// a row per variable, with the tag's default, and no row for a variable
// that no longer exists.
func TestEveryVariableIsInTheREADME(t *testing.T) {
	readme := readFile(t, "README.md")
	start := strings.Index(readme, "\n## Configuration\n")
	if start < 0 {
		t.Fatal("README.md has no ## Configuration section")
	}
	section := readme[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	rows := map[string]string{} // variable -> default cell
	row := regexp.MustCompile("^\\| `([A-Z][A-Z0-9_]*)` \\|([^|]*)\\|")
	for line := range strings.SplitSeq(section, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			rows[m[1]] = strings.TrimSpace(m[2])
		}
	}
	known := slices.Clone(aliases)
	for _, v := range variables(t) {
		known = append(known, v.Name)
		cell, ok := rows[v.Name]
		switch {
		case !ok:
			t.Errorf("%s (%s) has no row in the README's configuration table", v.Name, v.Field)
		case v.Default != "" && cell != "`"+v.Default+"`":
			t.Errorf("%s: the README's default is %s, the struct tag's is `%s`", v.Name, cell, v.Default)
		case v.Default == "" && cell != "" && !strings.HasPrefix(cell, "*("):
			t.Errorf("%s: the README gives the default %s, but the struct tag has none", v.Name, cell)
		}
	}
	for name := range rows {
		if !slices.Contains(known, name) {
			t.Errorf("the README's configuration table has a row for %s, which is no setting of config.Config", name)
		}
	}
}

// snake is the log key of a Go field name: ReadHeaderTimeout ->
// read_header_timeout, HTTPTimeout -> http_timeout.
func snake(name string) string {
	var b strings.Builder
	runes := []rune(name)
	for i, r := range runes {
		if i > 0 && unicode.IsUpper(r) &&
			(!unicode.IsUpper(runes[i-1]) || i+1 < len(runes) && unicode.IsLower(runes[i+1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{
		"Port": "port", "ReadHeaderTimeout": "read_header_timeout", "MaxBodyBytes": "max_body_bytes",
		"HTTPTimeout": "http_timeout", "AgentTokensFile": "agent_tokens_file", "Level": "level",
	} {
		if got := snake(in); got != want {
			t.Errorf("snake(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEveryVariableIsInTheStartupLine checks the startup line's config
// object. The mapping is fixed: a variable's key is its Go field name in
// snake_case, in the object of the innermost struct around the field that
// marshals itself (server.Config for server.Listen's fields), and that
// object is in the startup line. A plain setting is logged with its
// value; a secret is not.
func TestEveryVariableIsInTheStartupLine(t *testing.T) {
	const token = "settings-test-token-0123456789"
	cfg, err := config.Load(context.Background(), map[string]string{
		"AUTH_AGENT_TOKENS": token, "AUTH_OPERATOR_TOKENS": token,
		"DATABASE_URL": "postgres://orchestrator:" + token + "@db.example:5432/orchestrator",
	})
	if err != nil {
		t.Fatal(err)
	}
	top := zapcore.NewMapObjectEncoder()
	if err := cfg.MarshalLogObject(top); err != nil {
		t.Fatal(err)
	}
	if logged := fmt.Sprint(top.Fields); strings.Contains(logged, token) {
		t.Fatalf("the startup line's config contains a token: %s", logged)
	}
	root := reflect.ValueOf(*cfg)
	for _, v := range variables(t) {
		// The innermost marshalling struct, and the field's place in it.
		owner, depth := root, 0
		value := root
		for i, idx := range v.Index[:len(v.Index)-1] {
			value = value.Field(idx)
			if _, ok := value.Interface().(zapcore.ObjectMarshaler); ok {
				owner, depth = value, i+1
			}
		}
		fields := top.Fields
		where := "the top level of the startup line's config"
		if depth > 0 {
			enc := zapcore.NewMapObjectEncoder()
			if err := owner.Interface().(zapcore.ObjectMarshaler).MarshalLogObject(enc); err != nil {
				t.Fatal(err)
			}
			fields = enc.Fields
			where = owner.Type().String() + ".MarshalLogObject"
			found := false
			for _, nested := range top.Fields {
				found = found || reflect.DeepEqual(nested, fields)
			}
			if !found {
				t.Errorf("%s: config.Config.MarshalLogObject does not include the object of %s", v.Name, owner.Type())
			}
		}
		key := snake(v.Field[strings.LastIndex(v.Field, ".")+1:])
		got, ok := fields[key]
		if !ok {
			t.Errorf("%s (%s) is not in the startup line: %s has no key %q", v.Name, v.Field, where, key)
			continue
		}
		field := root.FieldByIndex(v.Index)
		switch {
		case slices.Contains(secrets, v.Name):
			if fmt.Sprint(got) == fmt.Sprint(field.Interface()) {
				t.Errorf("%s is a secret but %s logs its value under %q", v.Name, where, key)
			}
		case field.Kind() == reflect.Slice || field.Kind() == reflect.Map:
			// Logged in a form of its own (a list joined with commas).
		case fmt.Sprint(got) != fmt.Sprint(field.Interface()):
			t.Errorf("%s: %s logs %q = %v, but the setting is %v", v.Name, where, key, got, field.Interface())
		}
	}
}

// chart is what the chart sets: the ConfigMap's keys (with the template
// text of each) and the names in the Deployment's env.
func chart(t *testing.T) (configMap map[string]string, deploymentEnv []string) {
	t.Helper()
	configMap = map[string]string{}
	key := regexp.MustCompile(`^  ([A-Z][A-Z0-9_]*): (.*)$`)
	for line := range strings.SplitSeq(readFile(t, "charts/orchestrator/templates/configmap.yaml"), "\n") {
		if m := key.FindStringSubmatch(line); m != nil {
			configMap[m[1]] = m[2]
		}
	}
	for _, m := range regexp.MustCompile(`- name: ([A-Z][A-Z0-9_]*)`).FindAllStringSubmatch(
		readFile(t, "charts/orchestrator/templates/deployment.yaml"), -1) {
		deploymentEnv = append(deploymentEnv, m[1])
	}
	if len(configMap) < 10 {
		t.Fatalf("found %d keys in the ConfigMap template; its parsing is broken", len(configMap))
	}
	return configMap, deploymentEnv
}

// TestEveryVariableIsInTheChart checks the chart's environment: each
// variable is in the ConfigMap or the Deployment's env, or listed in
// notInChart with its reason. A ConfigMap value read from .Values must
// exist in values.yaml and in values.schema.json, and values.yaml must
// name the variable in the comment of its knob.
func TestEveryVariableIsInTheChart(t *testing.T) {
	configMap, deploymentEnv := chart(t)
	valuesText := readFile(t, "charts/orchestrator/values.yaml")
	var values map[string]any
	if err := yaml.Unmarshal([]byte(valuesText), &values); err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal([]byte(readFile(t, "charts/orchestrator/values.schema.json")), &schema); err != nil {
		t.Fatal(err)
	}
	ref := regexp.MustCompile(`\.Values\.([A-Za-z0-9_.]+)`)
	names := map[string]bool{}
	for _, v := range variables(t) {
		names[v.Name] = true
		line, inConfigMap := configMap[v.Name]
		inChart := inConfigMap || slices.Contains(deploymentEnv, v.Name) || slices.Contains(setByDeployment, v.Name)
		reason, excepted := notInChart[v.Name]
		switch {
		case excepted && inChart:
			t.Errorf("%s is in the chart, but notInChart says %q: drop the exception", v.Name, reason)
		case !excepted && !inChart:
			t.Errorf("%s (%s) is not in the chart: add it to templates/configmap.yaml from values.yaml (and the schema), "+
				"or to notInChart with the reason", v.Name, v.Field)
		}
		if !inConfigMap {
			continue
		}
		for _, m := range ref.FindAllStringSubmatch(line, -1) {
			path := strings.Split(m[1], ".")
			if !inValues(values, path) {
				t.Errorf("%s: templates/configmap.yaml reads .Values.%s, which values.yaml does not have", v.Name, m[1])
			}
			if !inSchema(schema, path) {
				t.Errorf("%s: templates/configmap.yaml reads .Values.%s, which values.schema.json does not describe", v.Name, m[1])
			}
		}
		if !strings.Contains(valuesText, v.Name) {
			t.Errorf("%s: values.yaml does not name it in the comment above its knob", v.Name)
		}
	}
	for name := range configMap {
		if !names[name] {
			t.Errorf("templates/configmap.yaml sets %s, which is no setting of config.Config", name)
		}
	}
	for name := range notInChart {
		if !names[name] {
			t.Errorf("notInChart lists %s, which is no setting of config.Config", name)
		}
	}
}

func inValues(values map[string]any, path []string) bool {
	var node any = values
	for _, p := range path {
		m, ok := node.(map[string]any)
		if !ok {
			return false
		}
		if node, ok = m[p]; !ok {
			return false
		}
	}
	return true
}

func inSchema(schema map[string]any, path []string) bool {
	node := schema
	for _, p := range path {
		props, _ := node["properties"].(map[string]any)
		next, ok := props[p].(map[string]any)
		if !ok {
			return false
		}
		node = next
	}
	return true
}

// TestValidateRefusesAbsurdValues gives every number and duration the
// largest and the smallest value its type holds, and every boolean a
// word that is none: Load must refuse each, naming the variable. A
// setting without limits fails here.
func TestValidateRefusesAbsurdValues(t *testing.T) {
	for _, v := range variables(t) {
		var absurd []string
		switch {
		case v.IsDuration():
			absurd = []string{time.Duration(math.MaxInt64).String(), time.Duration(math.MinInt64).String()}
		case v.IsNumber() && v.Type.Kind() >= reflect.Uint && v.Type.Kind() <= reflect.Uint64:
			absurd = []string{strconv.FormatUint(math.MaxUint64>>(64-v.Type.Bits()), 10)}
		case v.IsNumber():
			bits := v.Type.Bits()
			absurd = []string{strconv.FormatInt(math.MaxInt64>>(64-bits), 10), strconv.FormatInt(math.MinInt64>>(64-bits), 10)}
		case v.Type.Kind() == reflect.Bool:
			absurd = []string{"maybe"}
		}
		for _, value := range absurd {
			_, err := config.Load(context.Background(), map[string]string{v.Name: value})
			switch {
			case err == nil:
				t.Errorf("%s=%s: Load accepted it; give the setting limits in its Validate", v.Name, value)
			case !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), v.Name):
				t.Errorf("%s=%s: Load = %v, want config.ErrInvalid naming %s", v.Name, value, err, v.Name)
			}
		}
	}
}
