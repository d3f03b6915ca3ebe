package config

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
)

// This file turns a YAML node tree into the JSON that sigs.k8s.io/json
// decodes into a Config, and finds every structural problem on the way with
// its line, column and field path.
//
// Why it walks the Go types itself: sigs.k8s.io/yaml's UnmarshalStrict (and
// any YAML-to-JSON-then-decode pipeline) loses line numbers, and the JSON
// decoder stops at the first type error, with a field path that has no list
// indices. So decode walks the yaml.v3 node tree (which keeps positions)
// alongside the Go type, using the json tags, and reports unknown fields,
// duplicate keys, and values of the wrong shape with their position. It does
// not decode values itself: every scalar is checked by decoding it with
// sigs.k8s.io/json into the field's type, and the whole document is then
// decoded by sigs.k8s.io/json's strict decoder, so the values a Config gets
// are exactly those of the JSON semantics of its json tags.

// pos is a 1-based line and column in the file.
type pos struct{ line, col int }

// decoder holds the state of one walk.
type decoder struct {
	file string
	// pos maps every field path present in the file to its position: that
	// of its key for a field or map entry, of the item for a list item.
	pos  map[string]pos
	errs []*FieldError
	// budget is how many more nodes the walk may visit; it bounds the
	// expansion of aliases ("billion laughs").
	budget int
	// expanding holds the anchored nodes being expanded through an alias, to
	// report an alias that contains itself.
	expanding map[*yaml.Node]bool
}

// maxErrors stops a walk that has found this many problems: a file that
// wrong is not worth reading further.
const maxErrors = 100

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	if len(d.errs) == maxErrors {
		d.errs = append(d.errs, &FieldError{File: d.file, Line: n.Line, Column: n.Column, Msg: "too many problems; stopping here"})
	}
	if len(d.errs) > maxErrors {
		return
	}
	d.errs = append(d.errs, &FieldError{File: d.file, Line: n.Line, Column: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// parseYAML parses data into its root node. The file must hold exactly one
// YAML document, and it must not be empty.
func parseYAML(file string, data []byte) (root *yaml.Node, err error) {
	// yaml.v3 has panicked on malformed input in the past; bad input must
	// never crash the bridge (the fuzz test holds us to it).
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &FieldError{File: file, Msg: fmt.Sprintf("invalid YAML: %v", r)}
		}
	}()
	docs, err := yamlDocuments(data)
	if err != nil {
		return nil, yamlError(file, err)
	}
	if len(docs) > 1 {
		return nil, &FieldError{File: file, Line: docs[1].Line, Column: docs[1].Column, Msg: "more than one YAML document; a configuration file holds one"}
	}
	if len(docs) == 0 || len(docs[0].Content) == 0 || isNull(docs[0].Content[0]) {
		return nil, &FieldError{File: file, Msg: "empty configuration; write {} for one with every default"}
	}
	return docs[0].Content[0], nil
}

// yamlDocuments returns the documents in data, leaving out a trailing empty
// one ("a: 1\n---\n").
func yamlDocuments(data []byte) ([]*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, &doc)
	}
	if n := len(docs); n > 1 {
		last := docs[n-1]
		if len(last.Content) == 0 || (isNull(last.Content[0]) && last.Content[0].Value == "") {
			docs = docs[:n-1]
		}
	}
	return docs, nil
}

// yamlError turns a yaml.v3 syntax error ("yaml: line 3: did not find
// expected key") into a FieldError with the line.
func yamlError(file string, err error) *FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	fe := &FieldError{File: file, Msg: "invalid YAML: " + msg}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if line, err := strconv.Atoi(n); err == nil {
				fe.Line, fe.Msg = line, "invalid YAML: "+after
			}
		}
	}
	return fe
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// countNodes counts the nodes of the tree under n without following aliases.
func countNodes(n *yaml.Node) int {
	c := 1
	for _, k := range n.Content {
		c += countNodes(k)
	}
	return c
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType        = reflect.TypeFor[metav1.Duration]()
)

// decodeInto checks the tree under root against the type of out (a pointer)
// and decodes it into out. It returns every problem found; out is unchanged
// when there is one.
func (d *decoder) decodeInto(root *yaml.Node, out any) []*FieldError {
	// Aliases may expand the document, but not without bound: a legitimate
	// configuration reuses a few anchored blocks, an attack multiplies them.
	d.budget = 4*countNodes(root) + 10000
	d.expanding = map[*yaml.Node]bool{}
	t := reflect.TypeOf(out).Elem()
	if root.Kind != yaml.MappingNode {
		d.errorf(root, "", "expected a mapping of fields, got %s", describe(root))
		return d.errs
	}
	v := d.value(root, t, "")
	if len(d.errs) > 0 {
		return d.errs
	}
	data, err := json.Marshal(v)
	if err == nil {
		var strict []error
		strict, err = sigsjson.UnmarshalStrict(data, out)
		if err == nil && len(strict) > 0 {
			err = strict[0]
		}
	}
	if err != nil {
		// The walk above accepts only what the JSON decoder accepts; if the
		// two ever disagree, say so rather than return half a config.
		d.errorf(root, "", "cannot decode configuration: %v", err)
	}
	return d.errs
}

// value checks n against Go type t at path and returns n as a JSON value
// (nil, bool, number, string, []any, map[string]any). It records the
// problems it finds in d.errs; what it returns then is meaningless.
func (d *decoder) value(n *yaml.Node, t reflect.Type, path string) any {
	d.budget--
	if d.budget == 0 {
		d.errorf(n, path, "document too large: too many nodes or alias expansions")
	}
	if d.budget <= 0 {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		target := n.Alias
		if target == nil || d.expanding[target] {
			d.errorf(n, path, "alias *%s refers to itself", n.Value)
			return nil
		}
		d.expanding[target] = true
		defer delete(d.expanding, target)
		return d.value(target, t, path)
	}
	if n.Kind == yaml.DocumentNode {
		d.errorf(n, path, "unexpected document")
		return nil
	}
	// JSON null leaves a value at its zero value (or sets a pointer, slice
	// or map to nil), whatever its type.
	if isNull(n) {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) || reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return d.leaf(n, t, path)
	}
	switch t.Kind() {
	case reflect.Struct:
		return d.object(n, t, path)
	case reflect.Map:
		return d.mapping(n, t, path)
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, path, "expected a list, got %s", describe(n))
			return nil
		}
		out := make([]any, 0, len(n.Content))
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			d.pos[p] = pos{item.Line, item.Column}
			out = append(out, d.value(item, t.Elem(), p))
		}
		return out
	case reflect.Interface:
		return d.any(n, path)
	default:
		return d.leaf(n, t, path)
	}
}

// object checks a mapping against struct type t.
func (d *decoder) object(n *yaml.Node, t reflect.Type, path string) any {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping of fields, got %s", describe(n))
		return nil
	}
	fields := jsonFields(t)
	out := make(map[string]any, len(n.Content)/2)
	d.entries(n, path, func(key string, k, v *yaml.Node) {
		p := joinPath(path, key)
		f, ok := fields[key]
		if !ok {
			d.errorf(k, p, "unknown field%s", suggest(key, fields))
			return
		}
		d.pos[p] = entryPos(k, v)
		val := d.value(v, f.Type, p)
		if val == nil && isNullNode(v) {
			// A field written with no value ("timeout:") is left out:
			// into a new Config that is what JSON null does, except to a
			// json.Unmarshaler such as metav1.Duration, which fails on it.
			return
		}
		out[key] = val
	})
	return out
}

// isNullNode reports whether n is null, through an alias.
func isNullNode(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return isNull(n)
}

// mapping checks a mapping against map type t (string keys).
func (d *decoder) mapping(n *yaml.Node, t reflect.Type, path string) any {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return nil
	}
	if t.Key().Kind() != reflect.String {
		d.errorf(n, path, "unsupported map key type %s", t.Key())
		return nil
	}
	out := make(map[string]any, len(n.Content)/2)
	d.entries(n, path, func(key string, k, v *yaml.Node) {
		p := path + "[" + strconv.Quote(key) + "]"
		d.pos[p] = entryPos(k, v)
		out[key] = d.value(v, t.Elem(), p)
	})
	return out
}

// any converts a node of unknown type to JSON, as JSON would decode it into
// an interface value.
func (d *decoder) any(n *yaml.Node, path string) any {
	switch n.Kind {
	case yaml.MappingNode:
		out := map[string]any{}
		d.entries(n, path, func(key string, k, v *yaml.Node) {
			p := joinPath(path, key)
			d.pos[p] = pos{k.Line, k.Column}
			out[key] = d.value(v, reflect.TypeFor[any](), p)
		})
		return out
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			d.pos[p] = pos{item.Line, item.Column}
			out = append(out, d.value(item, reflect.TypeFor[any](), p))
		}
		return out
	default:
		v, err := scalar(n)
		if err != nil {
			d.errorf(n, path, "%v", err)
		}
		return v
	}
}

// entries calls f for each key and value of mapping n, after checking that
// the key is a string that has not been seen before.
func (d *decoder) entries(n *yaml.Node, path string, f func(key string, k, v *yaml.Node)) {
	seen := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "a mapping key must be a string, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			d.errorf(k, path, "merge keys (<<) are not supported; repeat the fields instead")
			continue
		}
		key := k.Value
		if first, dup := seen[key]; dup {
			d.errorf(k, joinPath(path, key), "duplicate key (first at line %d)", first.Line)
			continue
		}
		seen[key] = k
		f(key, k, v)
	}
}

// leaf checks a scalar against type t by decoding its JSON form into a new
// t with sigs.k8s.io/json, the decoder that decodes the whole file.
func (d *decoder) leaf(n *yaml.Node, t reflect.Type, path string) any {
	want := describeType(t)
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, path, "expected %s, got %s", want, describe(n))
		return nil
	}
	v, err := scalar(n)
	if err != nil {
		d.errorf(n, path, "%v", err)
		return nil
	}
	if got, ok := jsonKind(v); ok && !kindFits(t, got) {
		// Never echo the value: it may be a password.
		msg := fmt.Sprintf("expected %s, got %s", want, got)
		if t.Kind() == reflect.String {
			msg += " (quote it to make it a string)"
		}
		d.errorf(n, path, "%s", msg)
		return nil
	}
	data, err := json.Marshal(v)
	if err == nil {
		err = sigsjson.UnmarshalCaseSensitivePreserveInts(data, reflect.New(t).Interface())
	}
	if err != nil {
		switch {
		case t == durationType:
			// metav1.Duration reports time.ParseDuration's error, which
			// quotes the (non-secret) duration.
			d.errorf(n, path, "%s", strings.TrimPrefix(err.Error(), "time: "))
		case isFraction(v):
			d.errorf(n, path, "expected %s, got a number with a fraction", want)
		default:
			d.errorf(n, path, "expected %s, got a number out of its range", want)
		}
		return nil
	}
	return v
}

func isFraction(v any) bool {
	f, ok := v.(float64)
	return ok && f != math.Trunc(f)
}

// scalar is the JSON value of a YAML scalar, resolved as yaml.v3 resolves
// it (YAML 1.2: "yes" is a string, 0x1F an int).
func scalar(n *yaml.Node) (any, error) {
	if n.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("expected a scalar, got %s", describe(n))
	}
	if n.ShortTag() == "!!timestamp" {
		// A date is text in JSON; keep it as written.
		return n.Value, nil
	}
	var v any
	if err := n.Decode(&v); err != nil {
		// yaml.v3's message quotes the value, which may be a secret.
		return nil, fmt.Errorf("invalid value for YAML tag %s", n.ShortTag())
	}
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("expected a finite number")
		}
	case nil, bool, int, int64, uint64, string:
	default:
		return fmt.Sprint(v), nil
	}
	return v, nil
}

// jsonKind names the JSON type of a scalar value.
func jsonKind(v any) (string, bool) {
	switch v.(type) {
	case string:
		return "a string", true
	case bool:
		return "a boolean", true
	case int, int64, uint64, float64:
		return "a number", true
	}
	return "", false
}

// kindFits says whether a JSON value of kind got can decode into t.
func kindFits(t reflect.Type, got string) bool {
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) {
		if t == durationType {
			return got == "a string"
		}
		return true
	}
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return got == "a string"
	}
	switch t.Kind() {
	case reflect.String:
		return got == "a string"
	case reflect.Bool:
		return got == "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		return got == "a number"
	}
	return true
}

// describeType says what a value of type t looks like in YAML.
func describeType(t reflect.Type) string {
	if t == durationType {
		return `a duration such as "500ms" or "1m30s"`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean (true or false)"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct, reflect.Map:
		return "a mapping"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "a " + t.String()
}

// describe says what a node is, without its value.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		v, err := scalar(n)
		if err != nil {
			return "an invalid scalar"
		}
		if k, ok := jsonKind(v); ok {
			return k
		}
		return "null"
	}
	return "a document"
}

// entryPos is the position recorded for a mapping entry: that of a scalar
// value, which a problem with the value is about, else that of the key.
func entryPos(k, v *yaml.Node) pos {
	if v.Kind == yaml.ScalarNode || v.Kind == yaml.AliasNode && v.Alias != nil && v.Alias.Kind == yaml.ScalarNode {
		return pos{v.Line, v.Column}
	}
	return pos{k.Line, k.Column}
}

// joinPath appends field name to path.
func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// jsonField is a struct field as encoding/json sees it.
type jsonField struct {
	Name      string
	Type      reflect.Type
	Index     []int
	OmitEmpty bool
}

// jsonFields lists the fields of struct type t by JSON name, following
// encoding/json's rules for what we use: the name comes from the json tag or
// the Go name, "-" and unexported fields are skipped, and the fields of an
// embedded struct with no tag name (`json:",inline"`) are promoted. (The
// rules for conflicting promoted names are not implemented: our types have
// none, and the schema test would notice one.)
func jsonFields(t reflect.Type) map[string]jsonField {
	out := map[string]jsonField{}
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := sf.Type
		if sf.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for n, f := range jsonFields(et) {
					f.Index = append([]int{i}, f.Index...)
					out[n] = f
				}
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		out[name] = jsonField{Name: name, Type: ft, Index: []int{i}, OmitEmpty: slices.Contains(strings.Split(opts, ","), "omitempty")}
	}
	return out
}

// suggest returns " (did you mean "x"?)" for the known field closest to an
// unknown key, or "" when none is close.
func suggest(key string, fields map[string]jsonField) string {
	best, bestDist := "", 3
	for name := range fields {
		dist := editDistance(strings.ToLower(key), strings.ToLower(name))
		if dist < bestDist || dist == bestDist && name < best {
			best, bestDist = name, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes; a
// dozen lines are not worth a dependency.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
