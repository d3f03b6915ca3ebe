package config

import (
	"reflect"
	"testing"

	"github.com/depbridge/depbridge/internal/cache"
)

func TestDiff(t *testing.T) {
	const base = `
sinks: [{name: s, stdout: {}}]
routes: [{name: default, sink: s}, {name: other, sink: s}]
subscriptions:
  - watcher: {version: v1, kind: A, name: keep}
    watched: [{version: v1, kind: B, selector: "x=1,y=2"}, {version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: change}
    watched: [{version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: remove}
    watched: [{version: v1, kind: B, name: b}]
`
	ref := func(name string) cache.Ref { return cache.Ref{Version: "v1", Kind: "A", Name: name} }
	watchers := func(subs []Subscription) []cache.Ref {
		var out []cache.Ref
		for _, s := range subs {
			out = append(out, s.Watcher)
		}
		return out
	}
	tests := map[string]struct {
		new                        string
		added, changed, removed    []cache.Ref
		sinks, routes, ctl, settng bool
	}{
		"identical": {new: base},
		"reordered and re-spelled is the same": {new: `
sinks: [{name: s, stdout: {}}]
routes: [{name: default, sink: s, mode: binary}, {name: other, sink: s}]
subscriptions:
  - watcher: {version: v1, kind: A, name: remove}
    watched: [{version: v1, kind: B, name: b}]
    initialReconcile: true
  - watcher: {version: v1, kind: A, name: change}
    watched: [{version: v1, kind: B, name: b}, {version: v1, kind: B, name: b}]
    route: default
  - watcher: {version: v1, kind: A, name: keep}
    watched: [{version: v1, kind: B, name: b}, {version: v1, kind: B, selector: "y=2, x=1"}]
`},
		"added, changed, removed": {
			new: `
sinks: [{name: s, stdout: {}}]
routes: [{name: default, sink: s}, {name: other, sink: s}]
subscriptions:
  - watcher: {version: v1, kind: A, name: keep}
    watched: [{version: v1, kind: B, selector: "x=1,y=2"}, {version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: change}
    watched: [{version: v1, kind: B, name: b}]
    debounce: 1s
  - watcher: {version: v1, kind: A, name: new2}
    watched: [{version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: new1}
    watched: [{version: v1, kind: B, name: b}]
`,
			added:   []cache.Ref{ref("new1"), ref("new2")},
			changed: []cache.Ref{ref("change")},
			removed: []cache.Ref{ref("remove")},
		},
		"route, watched set and initialReconcile changes": {
			new: `
sinks: [{name: s, stdout: {}}]
routes: [{name: default, sink: s}, {name: other, sink: s}]
subscriptions:
  - watcher: {version: v1, kind: A, name: keep}
    watched: [{version: v1, kind: B, selector: "x=1"}, {version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: change}
    watched: [{version: v1, kind: B, name: b}]
    route: other
  - watcher: {version: v1, kind: A, name: remove}
    watched: [{version: v1, kind: B, name: b}]
    initialReconcile: false
`,
			changed: []cache.Ref{ref("change"), ref("keep"), ref("remove")},
		},
		"sinks, routes, control and settings": {
			new: `
cluster: other
sinks: [{name: s, http: {url: "http://x"}}]
routes: [{name: default, sink: s, includeObjects: true}, {name: other, sink: s}]
control: {sink: s}
subscriptions:
  - watcher: {version: v1, kind: A, name: keep}
    watched: [{version: v1, kind: B, selector: "x=1,y=2"}, {version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: change}
    watched: [{version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: remove}
    watched: [{version: v1, kind: B, name: b}]
`,
			sinks: true, routes: true, ctl: true, settng: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			old, err := validate(t, base)
			if err != nil {
				t.Fatal(err)
			}
			// Diff must not depend on Validate having canonicalised.
			nw, err := parseWithEnv("t.yaml", []byte(tc.new), env())
			if err != nil {
				t.Fatal(err)
			}
			before := *nw
			ch := Diff(old, nw)
			if !reflect.DeepEqual(before, *nw) {
				t.Error("Diff changed its argument")
			}
			if got := watchers(ch.Added); !reflect.DeepEqual(got, tc.added) {
				t.Errorf("added = %v, want %v", got, tc.added)
			}
			if got := watchers(ch.Changed); !reflect.DeepEqual(got, tc.changed) {
				t.Errorf("changed = %v, want %v", got, tc.changed)
			}
			if got := watchers(ch.Removed); !reflect.DeepEqual(got, tc.removed) {
				t.Errorf("removed = %v, want %v", got, tc.removed)
			}
			if ch.Sinks != tc.sinks || ch.Routes != tc.routes || ch.Control != tc.ctl || ch.Settings != tc.settng {
				t.Errorf("sinks, routes, control, settings = %v %v %v %v, want %v %v %v %v",
					ch.Sinks, ch.Routes, ch.Control, ch.Settings, tc.sinks, tc.routes, tc.ctl, tc.settng)
			}
			wantEmpty := tc.added == nil && tc.changed == nil && tc.removed == nil && !tc.sinks && !tc.routes && !tc.ctl && !tc.settng
			if ch.Empty() != wantEmpty {
				t.Errorf("Empty() = %v, want %v", ch.Empty(), wantEmpty)
			}
		})
	}
}

func TestDiffFromNothing(t *testing.T) {
	c, err := validate(t, `subscriptions: [{watcher: {version: v1, kind: A, selector: "b=1,a=1"}, watched: [{version: v1, kind: B, name: b}]}]`)
	if err != nil {
		t.Fatal(err)
	}
	ch := Diff(nil, c)
	if len(ch.Added) != 1 || ch.Added[0].Watcher.Selector != "a=1,b=1" || ch.Added[0].Route != DefaultRoute {
		t.Errorf("Diff(nil, c).Added = %+v, want the canonical subscription", ch.Added)
	}
	if ch = Diff(c, nil); len(ch.Removed) != 1 {
		t.Errorf("Diff(c, nil).Removed = %+v, want one", ch.Removed)
	}
	if ch = Diff(&Config{Sinks: []Sink{}}, &Config{}); !ch.Empty() {
		t.Errorf("empty and nil sinks differ: %+v", ch)
	}
}
