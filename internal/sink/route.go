package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// DefaultSubject is the subject (or topic) template of a route that sets
// none.
const DefaultSubject = "depbridge.reconcile.{{.Kind}}.{{.Namespace}}.{{.Name}}"

// maxTopicLength is Kafka's limit on a topic name.
const maxTopicLength = 249

// Route is a configured route bound to its sink: where and how a watcher's
// events are published. It is immutable and safe for concurrent use.
type Route struct {
	// Name of the route.
	Name string
	// SinkName and Sink receive the route's events.
	SinkName string
	Sink     Sink
	// Mode is the content mode.
	Mode Mode
	// IncludeObjects and IncludeSecretData are the route's event options.
	IncludeObjects    bool
	IncludeSecretData bool

	syntax syntax
	tmpl   *template.Template // nil when the sink takes no subject
	// parts is tmpl compiled to literals and fields when it uses nothing
	// but {{.Field}} actions (the common case), so rendering needs no
	// reflection; nil otherwise.
	parts []part
}

// part of a simple template: a literal, or a field when field is set.
type part struct {
	literal string
	field   field
}

// field names one of SubjectFields; noField is a literal part.
type field int

const (
	noField field = iota
	fieldGroup
	fieldVersion
	fieldKind
	fieldNamespace
	fieldName
	fieldSelector
)

// syntax is what a rendered subject must be.
type syntax int

const (
	noSubject   syntax = iota // HTTP, stdout
	natsSubject               // NATS and JetStream
	kafkaTopic                // Kafka
)

// SubjectFields are the values a subject template can use, each escaped
// (see EscapeToken): .Group, .Version, .Kind, .Namespace, .Name,
// .Selector.
type SubjectFields struct {
	Group, Version, Kind, Namespace, Name, Selector string
}

// NewRoute binds cfg to sink s, configured by sinkCfg. It parses the
// subject template once and renders it for a sample watcher, so a bad
// template or one that cannot give a valid subject or topic fails here,
// with the route's name, not at the first event.
func NewRoute(cfg config.Route, sinkCfg config.Sink, s Sink) (*Route, error) {
	if cfg.Sink != sinkCfg.Name {
		return nil, fmt.Errorf("route %q: names sink %q, bound to sink %q", cfg.Name, cfg.Sink, sinkCfg.Name)
	}
	mode, err := ParseMode(cfg.Mode)
	if err != nil {
		return nil, fmt.Errorf("route %q: mode: %w", cfg.Name, err)
	}
	r := &Route{
		Name: cfg.Name, SinkName: sinkCfg.Name, Sink: s, Mode: mode,
		IncludeObjects: cfg.IncludeObjects, IncludeSecretData: cfg.IncludeSecretData,
	}
	switch {
	case sinkCfg.NATS != nil || sinkCfg.JetStream != nil:
		r.syntax = natsSubject
	case sinkCfg.Kafka != nil:
		r.syntax = kafkaTopic
	default:
		return r, nil
	}
	text := cfg.Subject
	if text == "" {
		text = DefaultSubject
	}
	r.tmpl, err = template.New(cfg.Name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("route %q: subject template %q: %w", cfg.Name, text, err)
	}
	r.parts = compile(r.tmpl)
	sample := cache.Ref{Group: "example.com", Version: "v1", Kind: "Sample", Namespace: "ns", Name: "name"}
	if _, err := r.render(sample); err != nil {
		return nil, fmt.Errorf("route %q: subject template %q: %w", cfg.Name, text, err)
	}
	if _, err := r.pattern(); err != nil {
		return nil, fmt.Errorf("route %q: subject template %q: %w", cfg.Name, text, err)
	}
	return r, nil
}

// Target renders the route's subject for watcher. Every value substituted
// into the template is escaped with EscapeToken, so a watcher's name can
// never add tokens, wildcards or illegal characters.
func (r *Route) Target(watcher cache.Ref) (Target, error) {
	subject, err := r.render(watcher)
	if err != nil {
		return Target{}, fmt.Errorf("route %q: subject for %s: %w", r.Name, watcher.Key(), err)
	}
	return Target{Subject: subject, Mode: r.Mode}, nil
}

func (r *Route) render(watcher cache.Ref) (string, error) {
	if r.tmpl == nil {
		return "", nil
	}
	f := SubjectFields{
		Group: EscapeToken(watcher.Group), Version: EscapeToken(watcher.Version), Kind: EscapeToken(watcher.Kind),
		Namespace: EscapeToken(watcher.Namespace), Name: EscapeToken(watcher.Name), Selector: EscapeToken(watcher.Selector),
	}
	var subject string
	if r.parts != nil {
		var stack [256]byte
		b := stack[:0]
		for _, p := range r.parts {
			if p.field != noField {
				b = append(b, f.get(p.field)...)
			} else {
				b = append(b, p.literal...)
			}
		}
		subject = string(b)
	} else {
		var err error
		if subject, err = execute(r.tmpl, f); err != nil {
			return "", err
		}
	}
	if err := r.syntax.validate(subject); err != nil {
		return "", err
	}
	return subject, nil
}

// execute runs t over f. It takes f by value so that only templates that
// need reflection pay for f on the heap.
func execute(t *template.Template, f SubjectFields) (string, error) {
	var b strings.Builder
	if err := t.Execute(&b, &f); err != nil {
		return "", err
	}
	return b.String(), nil
}

func (f *SubjectFields) get(i field) string {
	switch i {
	case fieldGroup:
		return f.Group
	case fieldVersion:
		return f.Version
	case fieldKind:
		return f.Kind
	case fieldNamespace:
		return f.Namespace
	case fieldName:
		return f.Name
	case fieldSelector:
		return f.Selector
	}
	return ""
}

// Pattern is the set of subjects the route can produce, as a NATS subject
// whose "*" tokens depend on the watcher ("depbridge.reconcile.*.*.*"), or
// a Kafka topic with "*" where it depends on the watcher. Empty when the
// sink takes no subject.
func (r *Route) Pattern() string {
	p, _ := r.pattern() // checked by NewRoute
	return p
}

// sentinel stands for a substituted value when computing the pattern; it
// cannot come from escaped values and is rejected in template text by the
// subject syntax checks.
const sentinel = "\x00"

func (r *Route) pattern() (string, error) {
	if r.tmpl == nil {
		return "", nil
	}
	s := SubjectFields{sentinel, sentinel, sentinel, sentinel, sentinel, sentinel}
	var b strings.Builder
	if err := r.tmpl.Execute(&b, &s); err != nil {
		return "", err
	}
	out := b.String()
	if r.syntax == kafkaTopic {
		return strings.ReplaceAll(out, sentinel, "*"), nil
	}
	tokens := strings.Split(out, ".")
	for i, t := range tokens {
		if strings.Contains(t, sentinel) {
			tokens[i] = "*"
		}
	}
	return strings.Join(tokens, "."), nil
}

// fields are the SubjectFields a simple template can name.
var fields = map[string]field{
	"Group": fieldGroup, "Version": fieldVersion, "Kind": fieldKind,
	"Namespace": fieldNamespace, "Name": fieldName, "Selector": fieldSelector,
}

// compile returns the parts of t when it is only text and {{.Field}}
// actions, else nil (and t is executed as a template).
func compile(t *template.Template) []part {
	if t.Tree == nil || t.Root == nil {
		return nil
	}
	var parts []part
	for _, n := range t.Root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			parts = append(parts, part{literal: string(n.Text)})
		case *parse.ActionNode:
			if len(n.Pipe.Decl) != 0 || len(n.Pipe.Cmds) != 1 || len(n.Pipe.Cmds[0].Args) != 1 {
				return nil
			}
			fn, ok := n.Pipe.Cmds[0].Args[0].(*parse.FieldNode)
			if !ok || len(fn.Ident) != 1 || fields[fn.Ident[0]] == noField {
				return nil
			}
			parts = append(parts, part{field: fields[fn.Ident[0]]})
		default:
			return nil
		}
	}
	if parts == nil {
		parts = []part{} // an empty template renders ""
	}
	return parts
}

func (s syntax) validate(subject string) error {
	switch s {
	case natsSubject:
		return validNATSSubject(subject)
	case kafkaTopic:
		return validKafkaTopic(subject)
	}
	return nil
}

// validNATSSubject accepts a subject to publish to: non-empty dot-separated
// tokens of printable, non-space characters, with no wildcard.
func validNATSSubject(s string) error {
	if s == "" {
		return errors.New("empty NATS subject")
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return fmt.Errorf("NATS subject %q has an empty token", s)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c <= ' ' || c == 0x7F || c == '*' || c == '>' {
				return fmt.Errorf("NATS subject %q contains %q, which is not allowed in a subject to publish to", s, c)
			}
		}
	}
	return nil
}

// validKafkaTopic accepts a legal Kafka topic name: 1 to 249 of
// [a-zA-Z0-9._-], not "." or "..".
func validKafkaTopic(s string) error {
	if s == "" || s == "." || s == ".." {
		return fmt.Errorf("Kafka topic %q is not a legal name", s)
	}
	if len(s) > maxTopicLength {
		return fmt.Errorf("Kafka topic %q is longer than %d characters", s, maxTopicLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isTokenByte(c) && c != '.' && c != '_' {
			return fmt.Errorf("Kafka topic %q contains %q: allowed are a-z, A-Z, 0-9, '.', '_' and '-'", s, c)
		}
	}
	return nil
}

// EscapeToken makes s one token that is valid in a NATS subject and in a
// Kafka topic, and never equal to the escape of another string. Letters,
// digits and '-' are kept; every other byte (including '.', '_', '*', '>',
// whitespace and each byte of a non-ASCII character) becomes '_' followed
// by two uppercase hex digits ("my.cm" → "my_2Ecm"). The empty string (a
// cluster-scoped watcher's namespace) becomes "_", which no non-empty
// string escapes to.
func EscapeToken(s string) string {
	if s == "" {
		return "_"
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isTokenByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xF])
	}
	return b.String()
}

func isTokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-'
}

// CheckRoutes asks each sink that implements Checker to verify the
// patterns of the routes bound to it (a JetStream stream captures them, a
// Kafka topic exists). Call it once at start.
func CheckRoutes(ctx context.Context, routes []*Route) error {
	type group struct {
		name     string
		c        Checker
		patterns []string
	}
	var groups []*group
	bySink := map[string]*group{}
	for _, r := range routes {
		c, ok := r.Sink.(Checker)
		if !ok || r.tmpl == nil {
			continue
		}
		g := bySink[r.SinkName]
		if g == nil {
			g = &group{name: r.SinkName, c: c}
			bySink[r.SinkName] = g
			groups = append(groups, g)
		}
		g.patterns = append(g.patterns, r.Pattern())
	}
	var errs []error
	for _, g := range groups {
		if err := g.c.Check(ctx, g.patterns); err != nil {
			errs = append(errs, fmt.Errorf("sink %q: %w", g.name, err))
		}
	}
	return errors.Join(errs...)
}
