package watch

import (
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// index finds the watched refs of one resource that an object matches,
// without scanning them all: name refs by (name, namespace), selector refs by
// namespace and by one "anchor" requirement (key=value or key in (...)) that
// every matching object must satisfy. Selectors without such a requirement
// (key, !key, key!=v, everything) are checked one by one. A namespace of ""
// in a ref means every namespace. Not safe for concurrent use.
type index struct {
	names map[string]map[string]*refState // name -> namespace -> ref
	sels  map[string]*selIndex            // namespace -> selector refs
}

type selIndex struct {
	anchored map[string]map[string]map[*refState]struct{} // key -> value -> refs
	scan     map[*refState]struct{}
}

func newIndex() *index {
	return &index{names: map[string]map[string]*refState{}, sels: map[string]*selIndex{}}
}

// anchor picks the requirement a selector is indexed under.
func anchor(sel labels.Selector) (key string, values []string, ok bool) {
	reqs, _ := sel.Requirements()
	for _, r := range reqs {
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			return r.Key(), r.Values().UnsortedList(), true
		}
	}
	return "", nil, false
}

func (ix *index) add(r *refState) {
	ns := r.ref.Namespace
	if r.sel == nil {
		byNS := ix.names[r.ref.Name]
		if byNS == nil {
			byNS = map[string]*refState{}
			ix.names[r.ref.Name] = byNS
		}
		byNS[ns] = r
		return
	}
	si := ix.sels[ns]
	if si == nil {
		si = &selIndex{anchored: map[string]map[string]map[*refState]struct{}{}, scan: map[*refState]struct{}{}}
		ix.sels[ns] = si
	}
	key, values, ok := anchor(r.sel)
	if !ok {
		si.scan[r] = struct{}{}
		return
	}
	byValue := si.anchored[key]
	if byValue == nil {
		byValue = map[string]map[*refState]struct{}{}
		si.anchored[key] = byValue
	}
	for _, v := range values {
		set := byValue[v]
		if set == nil {
			set = map[*refState]struct{}{}
			byValue[v] = set
		}
		set[r] = struct{}{}
	}
}

func (ix *index) remove(r *refState) {
	ns := r.ref.Namespace
	if r.sel == nil {
		if byNS := ix.names[r.ref.Name]; byNS != nil && byNS[ns] == r {
			delete(byNS, ns)
			if len(byNS) == 0 {
				delete(ix.names, r.ref.Name)
			}
		}
		return
	}
	si := ix.sels[ns]
	if si == nil {
		return
	}
	if key, values, ok := anchor(r.sel); ok {
		for _, v := range values {
			delete(si.anchored[key][v], r)
			if len(si.anchored[key][v]) == 0 {
				delete(si.anchored[key], v)
			}
		}
		if len(si.anchored[key]) == 0 {
			delete(si.anchored, key)
		}
	} else {
		delete(si.scan, r)
	}
	if len(si.anchored) == 0 && len(si.scan) == 0 {
		delete(ix.sels, ns)
	}
}

// match calls fn once for every ref an object with this namespace, name and
// labels matches.
func (ix *index) match(namespace, name string, lbls labels.Set, fn func(*refState)) {
	if byNS := ix.names[name]; byNS != nil {
		if r := byNS[namespace]; r != nil {
			fn(r)
		}
		if namespace != "" {
			if r := byNS[""]; r != nil {
				fn(r)
			}
		}
	}
	ix.matchSelectors(ix.sels[namespace], lbls, fn)
	if namespace != "" {
		ix.matchSelectors(ix.sels[""], lbls, fn)
	}
}

func (ix *index) matchSelectors(si *selIndex, lbls labels.Set, fn func(*refState)) {
	if si == nil {
		return
	}
	for r := range si.scan {
		if r.sel.Matches(lbls) {
			fn(r)
		}
	}
	if len(si.anchored) == 0 {
		return
	}
	// Walk the smaller side: the object's labels or the anchor keys.
	visit := func(key, value string) {
		for r := range si.anchored[key][value] {
			if r.sel.Matches(lbls) {
				fn(r)
			}
		}
	}
	if len(lbls) <= len(si.anchored) {
		for k, v := range lbls {
			visit(k, v)
		}
		return
	}
	for k := range si.anchored {
		if v, ok := lbls[k]; ok {
			visit(k, v)
		}
	}
}
