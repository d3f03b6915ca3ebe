package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// This file generates config/schema.json from the Go types and their doc
// comments, and the field reference of docs/config.md from the schema.
// TestGenerated fails when either is stale; "go generate ./internal/config"
// (go test -run ^TestGenerated$ -update) rewrites them.

var update = flag.Bool("update", false, "rewrite config/schema.json and the reference in docs/config.md")

// schemaOverlay adds to the generated property schemas what the Go types do
// not say: descriptions of undocumented fields, enums and bounds. Keys are
// "GoType.jsonName", GoType being the struct that declares the field.
var schemaOverlay = map[string]map[string]any{
	"Sink.name":               {"description": "Name of the sink, which routes and the control channel refer to.", "minLength": 1},
	"NATSConn.user":           {"description": "User name; \"${ENV_VAR}\" is expanded. Needs password."},
	"NATSConn.password":       {"description": "Password of user; \"${ENV_VAR}\" is expanded."},
	"NATSConn.token":          {"description": "Authentication token; \"${ENV_VAR}\" is expanded."},
	"NATSConn.credsFile":      {"description": "Path of a NATS credentials file (user JWT and NKey seed)."},
	"NATSConn.nkeyFile":       {"description": "Path of a file holding an NKey seed."},
	"NATSConn.url":            {"minLength": 1},
	"NATSConn.tls":            {"description": "TLS client settings; TLS is used when set or when the URL scheme is tls or wss."},
	"Kafka.brokers":           {"description": "Bootstrap brokers as host:port.", "minItems": 1},
	"Kafka.tls":               {"description": "TLS client settings; TLS is used when set."},
	"SASL.mechanism":          {"enum": []any{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}},
	"SASL.username":           {"description": "SASL user name; \"${ENV_VAR}\" is expanded."},
	"SASL.password":           {"description": "SASL password; \"${ENV_VAR}\" is expanded."},
	"HTTP.url":                {"description": "URL events are posted to: http or https.", "minLength": 1},
	"HTTP.headers":            {"description": "Extra request headers, such as Authorization; \"${ENV_VAR}\" in values is expanded. Content-Type and ce-* are set by the CloudEvents binding and cannot be configured."},
	"HTTP.tls":                {"description": "TLS client settings for an https URL."},
	"TLS.caFile":              {"description": "PEM file of the CAs that verify the server; the system roots when empty."},
	"TLS.certFile":            {"description": "PEM client certificate, for mutual TLS; needs keyFile."},
	"TLS.keyFile":             {"description": "PEM key of certFile."},
	"TLS.serverName":          {"description": "Server name to verify, when it differs from the host of the URL."},
	"TLS.insecureSkipVerify":  {"description": "Skips verifying the server's certificate. For tests only."},
	"Route.name":              {"description": "Name of the route, which subscriptions refer to.", "minLength": 1},
	"Route.sink":              {"minLength": 1},
	"Route.mode":              {"enum": []any{"binary", "structured"}},
	"Subscription.watcher":    {"description": "The watcher: the identity each reconcile request is for. Any Ref; it need not be a Kubernetes object."},
	"Subscription.watched":    {"description": "What the watcher depends on: objects by name, or by label selector (\"*\" for every object of the kind in the namespace).", "minItems": 1},
	"Control.sink":            {"minLength": 1},
	"Control.maxMessageBytes": {"minimum": 1},
	"Policy.allow":            {"description": "Rules; a subscription or query is allowed when one rule allows its group, kind and namespace."},
	"PolicyRule.groups":       {"description": "API groups; \"\" is the core group."},
	"PolicyRule.kinds":        {"description": "Kinds, such as ConfigMap."},
	"PolicyRule.namespaces":   {"description": "Namespaces."},
	"Engine.workers":          {"minimum": 0},
	"Ref.group":               {"description": "API group; empty for the core group."},
	"Ref.version":             {"description": "API version, such as v1.", "minLength": 1},
	"Ref.kind":                {"description": "Kind, such as ConfigMap.", "minLength": 1},
	"Ref.name":                {"description": "Name of one object; exclusive with selector."},
}

// typeOverlay adds to the schema of a whole type.
var typeOverlay = map[string]map[string]any{
	"Sink": {"oneOf": []any{
		map[string]any{"required": []any{"nats"}}, map[string]any{"required": []any{"jetstream"}},
		map[string]any{"required": []any{"kafka"}}, map[string]any{"required": []any{"http"}},
		map[string]any{"required": []any{"stdout"}},
	}},
	"Ref": {"oneOf": []any{map[string]any{"required": []any{"name"}}, map[string]any{"required": []any{"selector"}}}},
}

// durationSchema is the schema of a metav1.Duration.
var durationSchema = obj{
	{"type", "string"},
	{"description", `A duration: decimal numbers with a unit (ns, us, ms, s, m, h), such as "500ms" or "1m30s".`},
	{"pattern", `^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$`},
}

func TestGenerated(t *testing.T) {
	schema := generateSchema(t)
	checkOrUpdate(t, schemaPath, schema)

	current, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := spliceReference(string(current), generateReference(t, schema))
	if err != nil {
		t.Fatal(err)
	}
	checkOrUpdate(t, docsPath, []byte(docs))
}

func checkOrUpdate(t *testing.T, path string, want []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale: run go generate ./internal/config", path)
	}
}

// obj is a JSON object that keeps the order of its keys.
type obj []kv

type kv struct {
	k string
	v any
}

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, e := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := marshalNoEscape(e.k)
		if err != nil {
			return nil, err
		}
		v, err := marshalNoEscape(e.v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func marshalNoEscape(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// docComments reads the doc comments of the types of this package and of
// cache.Ref: by "Type" and by "Type.GoField".
func docComments(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return strings.HasSuffix(f, "_test.go") })
	files = append(files, "../cache/ref.go")
	out := map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range af.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				doc := ts.Doc
				if doc == nil && len(gd.Specs) == 1 {
					doc = gd.Doc
				}
				out[ts.Name.Name] = oneLine(doc.Text())
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, field := range st.Fields.List {
					text := oneLine(field.Doc.Text())
					if text == "" {
						text = oneLine(field.Comment.Text())
					}
					for _, name := range field.Names {
						out[ts.Name.Name+"."+name.Name] = text
					}
					if len(field.Names) == 0 {
						out[ts.Name.Name+"."+fmt.Sprint(field.Type)] = text
					}
				}
			}
		}
	}
	return out
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// schemaField is a JSON field with the Go type that declares it.
type schemaField struct {
	jsonField
	declaredBy reflect.Type
	goName     string
}

// schemaFields lists the JSON fields of struct t in Go order, with the
// fields of inline embedded structs in place.
func schemaFields(t reflect.Type) []schemaField {
	var out []schemaField
	byName := jsonFields(t)
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if sf.Anonymous && name == "" && sf.Type.Kind() == reflect.Struct {
			out = append(out, schemaFields(sf.Type)...)
			continue
		}
		if !sf.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		out = append(out, schemaField{jsonField: byName[name], declaredBy: t, goName: sf.Name})
	}
	return out
}

// defaultValues returns, by struct type and JSON field, the value Default
// gives each scalar field left at zero.
func defaultValues() map[reflect.Type]map[string]any {
	c := &Config{
		Sinks:         []Sink{{NATS: &NATS{}}, {JetStream: &JetStream{}}, {Kafka: &Kafka{}}, {HTTP: &HTTP{}}, {Stdout: &Stdout{}}},
		Routes:        []Route{{}},
		Subscriptions: []Subscription{{}},
		Control:       &Control{},
		Checkpoint:    &Checkpoint{File: &CheckpointFile{}, JetStream: &CheckpointJetStream{}, Kafka: &CheckpointKafka{}},
	}
	c.Default()
	out := map[reflect.Type]map[string]any{}
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Slice:
			for i := range v.Len() {
				walk(v.Index(i))
			}
		case reflect.Struct:
			if v.Type() == durationType {
				return
			}
			m := out[v.Type()]
			if m == nil {
				m = map[string]any{}
				out[v.Type()] = m
			}
			for _, f := range schemaFields(v.Type()) {
				fv := v.FieldByName(f.goName) // promoted fields of inline structs too
				ft := f.Type
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				scalar := ft == durationType || ft.Kind() != reflect.Struct && ft.Kind() != reflect.Slice && ft.Kind() != reflect.Map
				if scalar && !fv.IsZero() {
					m[f.Name] = fv.Interface()
				}
				walk(fv)
			}
		}
	}
	walk(reflect.ValueOf(c))
	return out
}

// generateSchema builds config/schema.json.
func generateSchema(t *testing.T) []byte {
	t.Helper()
	docs := docComments(t)
	defaults := defaultValues()
	defs := map[string]obj{"Duration": durationSchema}
	var order []string
	var define func(t reflect.Type) string
	propSchema := func(ft reflect.Type) obj {
		var s obj
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft == durationType:
			s = obj{{"$ref", "#/$defs/Duration"}}
		case ft.Kind() == reflect.Struct:
			s = obj{{"$ref", "#/$defs/" + define(ft)}}
		case ft.Kind() == reflect.Slice:
			s = obj{{"type", "array"}, {"items", itemSchema(ft.Elem(), define)}}
		case ft.Kind() == reflect.Map:
			s = obj{{"type", "object"}, {"additionalProperties", itemSchema(ft.Elem(), define)}}
		default:
			s = itemSchema(ft, define)
		}
		return s
	}
	define = func(st reflect.Type) string {
		name := st.Name()
		if _, ok := defs[name]; ok {
			return name
		}
		defs[name] = nil // break cycles
		order = append(order, name)
		var props obj
		var required []any
		for _, f := range schemaFields(st) {
			key := f.declaredBy.Name() + "." + f.Name
			ps := propSchema(f.Type)
			desc := docs[f.declaredBy.Name()+"."+f.goName]
			extra := schemaOverlay[key]
			if d, ok := extra["description"].(string); ok {
				if desc != "" {
					t.Errorf("%s: has a doc comment and an overlay description; drop the overlay", key)
				}
				desc = d
			}
			if desc == "" {
				// A field of a documented struct type says what it is.
				ft := f.Type
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct && ft != durationType {
					desc = docs[ft.Name()]
				}
			}
			if desc == "" {
				t.Errorf("%s: no description: add a doc comment to the field, or one to schemaOverlay", key)
			}
			// The description goes first, then the type, then the rest.
			ps = append(obj{{"description", desc}}, ps...)
			if d, ok := defaults[st][f.Name]; ok {
				ps = append(ps, kv{"default", d})
			}
			for _, k := range sortedKeys(extra) {
				if k != "description" {
					ps = append(ps, kv{k, extra[k]})
				}
			}
			props = append(props, kv{f.Name, ps})
			if !f.OmitEmpty {
				required = append(required, f.Name)
			}
		}
		def := obj{{"description", docs[name]}, {"type", "object"}, {"additionalProperties", false}}
		if len(required) > 0 {
			def = append(def, kv{"required", required})
		}
		def = append(def, kv{"properties", props})
		for _, k := range sortedKeys(typeOverlay[name]) {
			def = append(def, kv{k, typeOverlay[name][k]})
		}
		defs[name] = def
		return name
	}
	define(reflect.TypeFor[Config]())
	var defsObj obj
	for _, name := range append(order, "Duration") {
		defsObj = append(defsObj, kv{name, defs[name]})
	}
	root := obj{
		{"$schema", "https://json-schema.org/draft/2020-12/schema"},
		{"title", "depbridge configuration"},
		{"description", "The configuration file of the bridge (bridge run --config FILE). Generated from internal/config by go generate; do not edit."},
		{"$ref", "#/$defs/Config"},
		{"$defs", defsObj},
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(root); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func itemSchema(t reflect.Type, define func(reflect.Type) string) obj {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return obj{{"$ref", "#/$defs/Duration"}}
	case t.Kind() == reflect.Struct:
		return obj{{"$ref", "#/$defs/" + define(t)}}
	case t.Kind() == reflect.String:
		return obj{{"type", "string"}}
	case t.Kind() == reflect.Bool:
		return obj{{"type", "boolean"}}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return obj{{"type", "integer"}}
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return obj{{"type", "number"}}
	}
	panic(fmt.Sprintf("no schema for Go type %s", t))
}

// markdownEscape keeps text literal in a Markdown table cell.
func markdownEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;").Replace(s)
}

// Markers around the generated reference in docs/config.md.
const (
	beginReference = "<!-- BEGIN GENERATED REFERENCE (go generate ./internal/config) -->"
	endReference   = "<!-- END GENERATED REFERENCE -->"
)

func spliceReference(doc, ref string) (string, error) {
	before, rest, ok := strings.Cut(doc, beginReference)
	if !ok {
		return "", fmt.Errorf("%s: no %q", docsPath, beginReference)
	}
	_, after, ok := strings.Cut(rest, endReference)
	if !ok {
		return "", fmt.Errorf("%s: no %q", docsPath, endReference)
	}
	return before + beginReference + "\n" + ref + endReference + after, nil
}

// schemaDoc is the part of a JSON schema the reference needs.
type schemaDoc struct {
	Ref                  string       `json:"$ref"`
	Type                 string       `json:"type"`
	Description          string       `json:"description"`
	Default              any          `json:"default"`
	Enum                 []any        `json:"enum"`
	Items                *schemaDoc   `json:"items"`
	AdditionalProperties any          `json:"additionalProperties"`
	Properties           orderedProps `json:"properties"`
	Required             []string     `json:"required"`
	Defs                 orderedDefs  `json:"$defs"`
}

type namedSchema struct {
	name string
	s    *schemaDoc
}

// orderedProps and orderedDefs decode a JSON object keeping its order.
type orderedProps []namedSchema
type orderedDefs []namedSchema

func (o *orderedProps) UnmarshalJSON(b []byte) error { return decodeOrdered(b, (*[]namedSchema)(o)) }
func (o *orderedDefs) UnmarshalJSON(b []byte) error  { return decodeOrdered(b, (*[]namedSchema)(o)) }

func decodeOrdered(b []byte, out *[]namedSchema) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		var s schemaDoc
		if err := dec.Decode(&s); err != nil {
			return err
		}
		*out = append(*out, namedSchema{tok.(string), &s})
	}
	return nil
}

func parseSchemaDoc(t *testing.T, data []byte) *schemaDoc {
	t.Helper()
	var s schemaDoc
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("schema: %v", err)
	}
	return &s
}

// typeName renders the type of a property for the reference.
func typeName(s *schemaDoc) string {
	switch {
	case s.Ref == "#/$defs/Duration":
		return "duration"
	case s.Ref != "":
		name := strings.TrimPrefix(s.Ref, "#/$defs/")
		return "[" + name + "](#" + strings.ToLower(name) + ")"
	case s.Type == "array":
		return "list of " + typeName(s.Items)
	case s.Type == "object":
		if m, ok := s.AdditionalProperties.(map[string]any); ok {
			return "map of " + fmt.Sprint(m["type"])
		}
		return "object"
	}
	return s.Type
}

// generateReference renders the reference section of docs/config.md: one
// table per type of the schema.
func generateReference(t *testing.T, schemaJSON []byte) string {
	t.Helper()
	root := parseSchemaDoc(t, schemaJSON)
	var b strings.Builder
	for _, def := range root.Defs {
		if def.name == "Duration" {
			continue
		}
		fmt.Fprintf(&b, "\n### %s\n\n%s\n\n", def.name, markdownEscape(def.s.Description))
		b.WriteString("| Field | Type | Required | Default | Description |\n|---|---|---|---|---|\n")
		for _, p := range def.s.Properties {
			def0 := ""
			if p.s.Default != nil {
				d, _ := marshalNoEscape(p.s.Default)
				def0 = "`" + string(d) + "`"
			}
			desc := p.s.Description
			if len(p.s.Enum) > 0 {
				var vals []string
				for _, e := range p.s.Enum {
					vals = append(vals, fmt.Sprintf("`%v`", e))
				}
				desc += " One of " + strings.Join(vals, ", ") + "."
			}
			req := ""
			if slices.Contains(def.s.Required, p.name) {
				req = "yes"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", p.name, typeName(p.s), req, def0, markdownEscape(desc))
		}
	}
	for _, def := range root.Defs {
		if def.name == "Duration" {
			fmt.Fprintf(&b, "\n### Durations\n\n%s\n\n", def.s.Description)
		}
	}
	return b.String()
}
