package config

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

// loadSchema returns config/schema.json as generic JSON.
func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("%s: %v", schemaPath, err)
	}
	return s
}

// TestSchemaMatchesGoTypes checks, independently of the generator, that
// every JSON field of every struct reachable from Config is a property of
// its schema with a compatible type, and that the schema has no other
// properties and allows none.
func TestSchemaMatchesGoTypes(t *testing.T) {
	root := loadSchema(t)
	defs := root["$defs"].(map[string]any)
	resolve := func(s map[string]any) map[string]any {
		if ref, ok := s["$ref"].(string); ok {
			d, ok := defs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
			if !ok {
				t.Fatalf("dangling $ref %s", ref)
			}
			return d
		}
		return s
	}
	checked := map[reflect.Type]bool{}
	var check func(path string, typ reflect.Type, s map[string]any)
	check = func(path string, typ reflect.Type, s map[string]any) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		s = resolve(s)
		want := map[reflect.Kind]string{
			reflect.String: "string", reflect.Bool: "boolean", reflect.Int: "integer",
			reflect.Slice: "array", reflect.Map: "object", reflect.Struct: "object",
		}[typ.Kind()]
		if typ == durationType {
			want = "string"
		}
		if got := s["type"]; got != want {
			t.Errorf("%s (%s): schema type %v, want %q", path, typ, got, want)
			return
		}
		switch {
		case typ == durationType:
		case typ.Kind() == reflect.Slice:
			check(path+"[]", typ.Elem(), s["items"].(map[string]any))
		case typ.Kind() == reflect.Map:
			check(path+"{}", typ.Elem(), s["additionalProperties"].(map[string]any))
		case typ.Kind() == reflect.Struct:
			if checked[typ] {
				return
			}
			checked[typ] = true
			if s["additionalProperties"] != false {
				t.Errorf("%s (%s): additionalProperties is not false", path, typ)
			}
			props, _ := s["properties"].(map[string]any)
			fields := jsonFields(typ)
			for name, f := range fields {
				p, ok := props[name].(map[string]any)
				if !ok {
					t.Errorf("%s.%s: missing from the schema", path, name)
					continue
				}
				if d, _ := p["description"].(string); d == "" {
					t.Errorf("%s.%s: no description", path, name)
				}
				check(joinPath(path, name), f.Type, p)
			}
			for name := range props {
				if _, ok := fields[name]; !ok {
					t.Errorf("%s.%s: in the schema but not in %s", path, name, typ)
				}
			}
		}
	}
	check("", reflect.TypeFor[Config](), root)
	if len(checked) < 10 {
		t.Errorf("checked only %d struct types", len(checked))
	}
}

// defaultsTo finds a default in a comment: `Defaults to "x".`, `Defaults
// to 10ms.` or `"x" (default)`.
var defaultsTo = regexp.MustCompile(`Defaults to ("[^"]*"|[^ .]+)|("[^"]*") \(default\)`)

// TestSchemaDefaultsDocumented checks that every default Default applies is
// stated in the field's comment, and every default a comment states is
// applied (except zero).
func TestSchemaDefaultsDocumented(t *testing.T) {
	defs := loadSchema(t)["$defs"].(map[string]any)
	for dn, d := range defs {
		props, _ := d.(map[string]any)["properties"].(map[string]any)
		for pn, p := range props {
			p := p.(map[string]any)
			desc, _ := p["description"].(string)
			m := defaultsTo.FindStringSubmatch(desc)
			if m != nil && m[1] == "" {
				m[1] = m[2]
			}
			def, has := p["default"]
			switch {
			case has && m == nil:
				t.Errorf("%s.%s: default %v is not stated in the doc comment", dn, pn, def)
			case !has && m != nil && m[1] != "0":
				t.Errorf("%s.%s: the comment says %q but Default applies nothing", dn, pn, m[0])
			case has:
				j, _ := json.Marshal(def)
				if strings.Trim(m[1], `"`) != strings.Trim(string(j), `"`) {
					t.Errorf("%s.%s: comment says %s, schema default is %s", dn, pn, m[1], j)
				}
			}
		}
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	data, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("schema.json")
	if err != nil {
		t.Fatalf("compile %s: %v", schemaPath, err)
	}
	return s
}

// yamlInstance turns YAML into an instance for the schema validator.
func yamlInstance(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

func TestExamplesMatchSchema(t *testing.T) {
	s := compileSchema(t)
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			if err := s.Validate(yamlInstance(t, ex.data)); err != nil {
				t.Errorf("schema: %v", err)
			}
		})
	}
}

// TestSchemaRejects checks that the schema and the loader agree on some
// configurations that are wrong.
func TestSchemaRejects(t *testing.T) {
	s := compileSchema(t)
	tests := map[string]string{
		"unknown field":        "clustr: a\n",
		"wrong type":           "engine: {workers: many}\n",
		"two transports":       "sinks: [{name: a, stdout: {}, http: {url: 'http://x'}}]\n",
		"no transport":         "sinks: [{name: a}]\n",
		"bad mode":             "routes: [{name: r, sink: default, mode: Binary}]\n",
		"bad mechanism":        "sinks: [{name: k, kafka: {brokers: ['k:1'], sasl: {mechanism: GSSAPI, username: u, password: p}}}]\n",
		"name and selector":    "subscriptions: [{watcher: {version: v1, kind: A, name: a, selector: x}, watched: [{version: v1, kind: B, name: b}]}]\n",
		"no watched":           "subscriptions: [{watcher: {version: v1, kind: A, name: a}, watched: []}]\n",
		"bad duration":         "subscriptions: [{watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, name: b}], debounce: 5x}]\n",
		"negative duration":    "subscriptions: [{watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, name: b}], debounce: -5s}]\n",
		"no sink name":         "sinks: [{stdout: {}}]\n",
		"negative workers":     "engine: {workers: -1}\n",
		"zero maxMessageBytes": "control: {sink: default, maxMessageBytes: 0}\n",
	}
	for name, yml := range tests {
		t.Run(name, func(t *testing.T) {
			if err := s.Validate(yamlInstance(t, []byte(yml))); err == nil {
				t.Error("the schema accepts it")
			}
			c, err := parseWithEnv("t.yaml", []byte(yml), env())
			if err == nil {
				err = c.Validate()
			}
			// maxMessageBytes: 0 means the default to the loader, which
			// the schema cannot say; every other case must fail both.
			if err == nil && name != "zero maxMessageBytes" {
				t.Error("Load and Validate accept it")
			}
		})
	}
}
