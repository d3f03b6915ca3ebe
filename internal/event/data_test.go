package event

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/watch"
)

// marshalData is what encoding/json makes of d, with nil Causes as [].
func marshalData(t testing.TB, d Data) string {
	t.Helper()
	if d.Causes == nil {
		d.Causes = []watch.Cause{}
	}
	b, err := json.Marshal(&d)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDataJSONMatchesEncodingJSON(t *testing.T) {
	tricky := `a "quoted" \ <b>&amp; ü € 😀 ` + "\x00\t\n\x7f\u2028\xff"
	tests := map[string]Data{
		"causes":    {Watcher: watcherCM, Causes: request().Causes},
		"no causes": {Watcher: watcherCM},
		"empty causes, truncated": {Watcher: cache.Ref{Group: "x.io", Version: "v1", Kind: "K", Selector: "*"},
			Causes: []watch.Cause{}, Truncated: 7},
		"lost":   {Watcher: watcherCM, Causes: []watch.Cause{{Watched: watchedD, Op: watch.OpLost, Reason: "kind removed"}}},
		"resync": {Watcher: watcherCM, Causes: []watch.Cause{{Op: watch.OpResync}, {Watched: watchedD, Namespace: "n", Name: "d", Op: watch.OpInitial}}},
		"every field needs escaping": {
			Watcher: cache.Ref{Group: tricky, Version: tricky, Kind: tricky, Namespace: tricky, Name: tricky, Selector: tricky},
			Causes: []watch.Cause{{
				Watched:   cache.Ref{Group: tricky, Version: tricky, Kind: tricky, Namespace: tricky, Name: tricky, Selector: tricky},
				Namespace: tricky, Name: tricky, UID: "u<" + "\x01", ResourceVersion: tricky, Op: watch.Op(tricky), Reason: tricky,
			}},
			Truncated: -1,
		},
		"objects": {Watcher: watcherCM, Causes: request().Causes,
			Objects: []map[string]any{secret().Object, deployment().Object}},
		"objects omitted": {Watcher: watcherCM, Causes: request().Causes, ObjectsOmitted: true},
	}
	for name, d := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := d.encode()
			if err != nil {
				t.Fatal(err)
			}
			if want := marshalData(t, d); string(got) != want {
				t.Errorf("encode =\n%s\nencoding/json =\n%s", got, want)
			}
		})
	}
}

func TestDataJSONBadObject(t *testing.T) {
	d := Data{Watcher: watcherCM, Objects: []map[string]any{{"x": make(chan int)}}}
	if _, err := d.encode(); err == nil {
		t.Error("encode encoded a channel")
	}
}

// TestDataJSONFields fails when cache.Ref or watch.Cause gains, loses or
// renames a JSON field: appendRefJSON and appendCauseJSON then need the
// same change.
func TestDataJSONFields(t *testing.T) {
	tests := map[string]struct {
		typ  reflect.Type
		want []string
	}{
		"cache.Ref": {reflect.TypeFor[cache.Ref](), []string{
			"group,omitempty", "version", "kind", "namespace,omitempty", "name,omitempty", "selector,omitempty"}},
		"watch.Cause": {reflect.TypeFor[watch.Cause](), []string{
			"watched,omitzero", "namespace,omitempty", "name,omitempty", "uid,omitempty", "resourceVersion,omitempty", "op", "reason,omitempty"}},
		"Data": {reflect.TypeFor[Data](), []string{"watcher", "causes", "truncated", "objects,omitempty", "objectsOmitted,omitempty"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			var got []string
			for f := range tt.typ.Fields() {
				got = append(got, f.Tag.Get("json"))
				if k := f.Type.Kind(); f.Type != reflect.TypeFor[cache.Ref]() && k != reflect.String && k != reflect.Int && k != reflect.Slice && k != reflect.Bool {
					t.Errorf("field %s is a %s: the hand-written encoder writes strings, ints, bools and the known slices only", f.Name, f.Type)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("JSON fields of %s are %q, the hand-written encoder writes %q: update data.go", name, got, tt.want)
			}
		})
	}
}

// FuzzDataJSON checks that encode writes what encoding/json writes for
// any strings.
func FuzzDataJSON(f *testing.F) {
	for _, s := range []string{"", "plain", `"q"`, `\`, "<>&", "ü", "\x00", "\xff", "\u2028", "a b"} {
		f.Add(s, s+"x", 3, s == "")
	}
	f.Fuzz(func(t *testing.T, a, b string, n int, omitted bool) {
		d := Data{
			Watcher: cache.Ref{Group: a, Version: b, Kind: a, Namespace: b, Name: a, Selector: b},
			Causes: []watch.Cause{
				{Watched: cache.Ref{Version: a, Kind: b, Name: a}, Namespace: b, Name: a, UID: "u", ResourceVersion: b, Op: watch.Op(a), Reason: b},
				{Watched: cache.Ref{Group: b, Version: "v1", Kind: "K", Selector: a}, Op: watch.OpModified},
			},
			Truncated:      n,
			ObjectsOmitted: omitted,
		}
		got, err := d.encode()
		if err != nil {
			t.Fatal(err)
		}
		if want := marshalData(t, d); string(got) != want {
			t.Fatalf("encode =\n%s\nencoding/json =\n%s", got, want)
		}
	})
}

// TestNewValid checks that New builds valid events for unusual watchers,
// since it does not validate them itself.
func TestNewValid(t *testing.T) {
	for _, r := range []cache.Ref{
		watcherCM,
		{Version: "v1", Kind: "Namespace", Name: "n"},
		{Group: "x.io", Version: "v1", Kind: "K", Selector: "*"},
		{Version: "v1", Kind: "K", Namespace: " ", Name: " "},
	} {
		for _, opts := range []Options{{}, {Cluster: "c", Instance: "i"}, {Cluster: "a b", Instance: "%"},
			{IncludeObjects: true, Objects: []*unstructured.Unstructured{deployment()}}} {
			e, err := New(watch.Request{Watcher: r, Causes: request().Causes}, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Validate(); err != nil {
				t.Errorf("watcher %v, options %+v: %v", r, opts, err)
			}
			if strings.TrimSpace(e.Subject()) == "" || !strings.HasPrefix(e.Source(), "depbridge://") {
				t.Errorf("subject %q, source %q", e.Subject(), e.Source())
			}
		}
	}
}
