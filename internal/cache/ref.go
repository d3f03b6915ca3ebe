package cache

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
)

// Everything is the selector of a Ref that selects every object of its kind in
// its namespace (or in the whole cluster when Namespace is empty). It is not
// label-selector syntax, so it cannot be confused with a real selector.
const Everything = "*"

// Ref identifies a watcher or what a watcher depends on: one object by Name,
// or the objects matching a label Selector. Exactly one of Name and Selector
// is set. Ref is comparable; two Refs denote the same thing if and only if
// their canonical forms (see Canonical) are equal.
type Ref struct {
	Group   string `json:"group,omitempty"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
	// Namespace is empty for cluster-scoped kinds; for a namespaced kind an
	// empty Namespace means every namespace.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Selector is a label selector in kubectl syntax ("app=web,tier in (a,b)"),
	// or Everything.
	Selector string `json:"selector,omitempty"`
}

// Validate reports, wrapped in ErrInvalidInput, the first thing wrong with r:
// no version, no kind, neither or both of name and selector, or a selector
// that does not parse.
func (r Ref) Validate() error {
	_, err := r.Canonical()
	return err
}

// Canonical validates r and returns it with its selector in canonical form
// (requirements sorted, whitespace removed), so that "b=1,a=1" and "a=1, b=1"
// become the same Ref.
func (r Ref) Canonical() (Ref, error) {
	switch {
	case r.Version == "":
		return r, fmt.Errorf("%w: %s: version is required", ErrInvalidInput, r)
	case r.Kind == "":
		return r, fmt.Errorf("%w: %s: kind is required", ErrInvalidInput, r)
	case r.Name == "" && strings.TrimSpace(r.Selector) == "":
		return r, fmt.Errorf("%w: %s: one of name or selector is required (selector %q selects everything)", ErrInvalidInput, r, Everything)
	case r.Name != "" && r.Selector != "":
		return r, fmt.Errorf("%w: %s: name and selector are mutually exclusive", ErrInvalidInput, r)
	case r.Selector == "":
		return r, nil
	}
	sel, err := ParseSelector(r.Selector)
	if err != nil {
		return r, fmt.Errorf("%w: %s: %w", ErrInvalidInput, r, err)
	}
	r.Selector = SelectorString(sel)
	return r, nil
}

// ParseSelector parses a label selector in kubectl syntax, or Everything.
// Unlike kubectl it rejects "key!=" with no value, an incomplete
// expression (write "!key" or "key" for absence or presence).
func ParseSelector(s string) (labels.Selector, error) {
	if strings.TrimSpace(s) == Everything {
		return labels.Everything(), nil
	}
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("selector %q: %w", s, err)
	}
	reqs, _ := sel.Requirements()
	for _, r := range reqs {
		if r.Operator() == selection.NotEquals && r.Values().Has("") {
			return nil, fmt.Errorf("selector %q: %q has no value after \"!=\"", s, r.Key())
		}
	}
	return sel, nil
}

// SelectorString is the canonical text of sel: Everything for a selector
// that matches every object, else sel.String() (sorted requirements).
func SelectorString(sel labels.Selector) string {
	if sel == nil || sel.Empty() {
		return Everything
	}
	return sel.String()
}

// GroupVersionKind of r.
func (r Ref) GroupVersionKind() schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: r.Kind}
}

// APIVersion of r: "v1" for the core group, else "group/version".
func (r Ref) APIVersion() string {
	return schema.GroupVersion{Group: r.Group, Version: r.Version}.String()
}

// String renders r as "GroupVersion=v1, Kind=ConfigMap, Namespace=ns,
// Name=n", with ", Selector=s" appended only when a selector is set.
func (r Ref) String() string {
	s := fmt.Sprintf("GroupVersion=%s, Kind=%s, Namespace=%s, Name=%s", r.APIVersion(), r.Kind, r.Namespace, r.Name)
	if r.Selector != "" {
		s += ", Selector=" + r.Selector
	}
	return s
}

// Key is the compact form of r used as a CloudEvent subject and partition
// key: "apiVersion/Kind/namespace/name", with "?selector" in place of the
// name for a selector Ref. The namespace segment is empty for cluster-wide
// Refs ("v1/Namespace//default").
func (r Ref) Key() string {
	last := r.Name
	if r.Selector != "" {
		last = "?" + r.Selector
	}
	return r.APIVersion() + "/" + r.Kind + "/" + r.Namespace + "/" + last
}
