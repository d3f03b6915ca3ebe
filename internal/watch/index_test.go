package watch

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/depbridge/depbridge/internal/cache"
)

func TestIndexMatch(t *testing.T) {
	mk := func(ns, name, sel string) *refState {
		r := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: name, Selector: sel}
		r, err := r.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		st := &refState{ref: r}
		if sel != "" {
			st.sel, _ = cache.ParseSelector(sel)
		}
		return st
	}
	refs := map[string]*refState{
		"name a/x":      mk("a", "x", ""),
		"name any/x":    mk("", "x", ""),
		"name b/x":      mk("b", "x", ""),
		"app=web in a":  mk("a", "", "app=web"),
		"app in a":      mk("a", "", "app in (web,db),tier!=test"),
		"!app in a":     mk("a", "", "!app"),
		"exists any":    mk("", "", "tier"),
		"everything a":  mk("a", "", "*"),
		"app=web any":   mk("", "", "app=web"),
		"app=db in b":   mk("b", "", "app=db"),
		"notin any":     mk("", "", "app notin (web)"),
		"two keys in a": mk("a", "", "app=web,tier=front"),
	}
	ix := newIndex()
	for _, r := range refs {
		ix.add(r)
	}
	tests := map[string]struct {
		ns, name string
		labels   labels.Set
		want     []string
	}{
		"name in a, no labels": {"a", "x", nil, []string{"name a/x", "name any/x", "!app in a", "everything a", "notin any"}},
		"web in a": {"a", "y", labels.Set{"app": "web", "tier": "front"},
			[]string{"app=web in a", "app in a", "exists any", "everything a", "app=web any", "two keys in a"}},
		"web test tier in a": {"a", "y", labels.Set{"app": "web", "tier": "test"},
			[]string{"app=web in a", "exists any", "everything a", "app=web any"}},
		"db in b":    {"b", "x", labels.Set{"app": "db"}, []string{"name b/x", "name any/x", "app=db in b", "notin any"}},
		"web in c":   {"c", "z", labels.Set{"app": "web"}, []string{"app=web any"}},
		"unlabelled": {"c", "z", nil, []string{"notin any"}},
	}
	nameOf := map[*refState]string{}
	for n, r := range refs {
		nameOf[r] = n
	}
	for name, tc := range tests {
		var got []string
		ix.match(tc.ns, tc.name, tc.labels, func(r *refState) { got = append(got, nameOf[r]) })
		slices.Sort(got)
		want := slices.Clone(tc.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: matched %v, want %v", name, got, want)
		}
	}
	for _, r := range refs {
		ix.remove(r)
	}
	if len(ix.names) != 0 || len(ix.sels) != 0 {
		t.Errorf("index not empty after removing everything: %+v %+v", ix.names, ix.sels)
	}
}

func TestOpForHit(t *testing.T) {
	old, cur := &cache.Object{}, &cache.Object{}
	tests := map[string]struct {
		h        hit
		old, cur *cache.Object
		relist   bool
		want     Op
	}{
		"created":         {hit{inNew: true}, nil, cur, false, OpAdded},
		"updated":         {hit{inOld: true, inNew: true}, old, cur, false, OpModified},
		"deleted":         {hit{inOld: true}, old, nil, false, OpDeleted},
		"relabelled in":   {hit{inNew: true}, old, cur, false, OpEntered},
		"relabelled out":  {hit{inOld: true}, old, cur, false, OpLeft},
		"relist changed":  {hit{inOld: true, inNew: true}, old, cur, true, OpRelisted},
		"relist gone":     {hit{inOld: true}, old, nil, true, OpRelisted},
		"relist appeared": {hit{inNew: true}, nil, cur, true, OpRelisted},
	}
	for name, tc := range tests {
		if got := op(tc.h, tc.old, tc.cur, tc.relist); got != tc.want {
			t.Errorf("%s: %s, want %s", name, got, tc.want)
		}
	}
}

func TestMergeCause(t *testing.T) {
	tests := map[string]struct{ earlier, later, want Op }{
		"added then modified":   {OpAdded, OpModified, OpAdded},
		"entered then modified": {OpEntered, OpModified, OpEntered},
		"initial then modified": {OpInitial, OpModified, OpInitial},
		"added then deleted":    {OpAdded, OpDeleted, OpDeleted},
		"modified then left":    {OpModified, OpLeft, OpLeft},
		"modified twice":        {OpModified, OpModified, OpModified},
	}
	for name, tc := range tests {
		got := mergeCause(Cause{Op: tc.earlier, ResourceVersion: "1"}, Cause{Op: tc.later, ResourceVersion: "2"})
		if got.Op != tc.want || got.ResourceVersion != "2" {
			t.Errorf("%s: %s@%s, want %s@2", name, got.Op, got.ResourceVersion, tc.want)
		}
	}
	// Beyond MaxCauses, causes are counted, not kept.
	p := &pendingRequest{at: map[causeKey]int{}}
	for i := range 5 {
		p.merge(Cause{Name: string(rune('a' + i)), Op: OpAdded}, 3)
	}
	if len(p.causes) != 3 || p.truncated != 2 {
		t.Errorf("kept %d, truncated %d; want 3 and 2", len(p.causes), p.truncated)
	}
}
