package watch

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
)

var cmGVK = schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}

// AC-01: every registration call fails with ErrNotStarted before Start and
// after Start returned.
func TestNotStarted(t *testing.T) {
	e, err := New(integration(t).Config, newRecorder(), Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w, r := watcher("w"), cmRef("default", "x")
	calls := map[string]func() error{
		"AddWatcher":    func() error { return e.AddWatcher(ctx, w, r) },
		"Subscribe":     func() error { return e.Subscribe(ctx, Subscription{Watcher: w, Watched: []cache.Ref{r}}) },
		"RemoveWatcher": func() error { return e.RemoveWatcher(w) },
		"StartBatch":    func() error { _, err := e.StartBatch(w); return err },
		"Query":         func() error { _, err := e.Query(ctx, w, WatcherOptions{}, []cache.Ref{r}); return err },
	}
	check := func(when string) {
		for name, call := range calls {
			if err := call(); !errors.Is(err, ErrNotStarted) {
				t.Errorf("%s %s: err = %v, want ErrNotStarted", name, when, err)
			}
		}
	}
	check("before Start")
	// ErrNotStarted comes before ErrCacheDisabled.
	noCache, err := New(integration(t).Config, newRecorder(), Options{Logger: testLogger(), DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"StartBatch": func() error { _, err := noCache.StartBatch(w); return err },
		"Query":      func() error { _, err := noCache.Query(ctx, w, WatcherOptions{}, []cache.Ref{r}); return err },
	} {
		if err := call(); !errors.Is(err, ErrNotStarted) {
			t.Errorf("%s before Start with the cache disabled: err = %v, want ErrNotStarted", name, err)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- e.Start(runCtx) }()
	<-e.Started()
	if err := e.Start(runCtx); err == nil {
		t.Error("second Start succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	check("after Start returned")
}

// AC-02, AC-03: invalid identifiers are rejected with ErrInvalidInput and
// change nothing.
func TestInvalidInput(t *testing.T) {
	e := startEngine(t, integration(t).Config, newRecorder(), Options{})
	ctx := ctxT(t)
	good := cmRef("default", "x")
	tests := map[string]func() error{
		"empty watcher":  func() error { return e.AddWatcher(ctx, cache.Ref{}, good) },
		"empty watched":  func() error { return e.AddWatcher(ctx, watcher("w"), cache.Ref{}) },
		"no watched":     func() error { return e.AddWatcher(ctx, watcher("w")) },
		"subscribe none": func() error { return e.Subscribe(ctx, Subscription{Watcher: watcher("w")}) },
		"remove empty":   func() error { return e.RemoveWatcher(cache.Ref{}) },
		"bad selector":   func() error { return e.AddWatcher(ctx, watcher("w"), cmSel("default", "something-random!=")) },
		"name and selector": func() error {
			return e.AddWatcher(ctx, watcher("w"), cache.Ref{Version: "v1", Kind: "ConfigMap", Name: "a", Selector: "a=b"})
		},
		"second of two is invalid": func() error { return e.AddWatcher(ctx, watcher("w"), good, cache.Ref{Version: "v1", Name: "x"}) },
		"negative debounce": func() error {
			return e.Subscribe(ctx, Subscription{Watcher: watcher("w"), Watched: []cache.Ref{good}, Options: WatcherOptions{Debounce: -time.Second}})
		},
	}
	for name, call := range tests {
		if err := call(); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%s: err = %v, want ErrInvalidInput", name, err)
		}
	}
	if st := e.Stats(); st.Watchers != 0 || st.Watched != 0 || st.Streams != 0 {
		t.Errorf("stats after invalid input = %+v, want nothing registered", st)
	}
}

// AC-06, AC-07, AC-08: an initial reconcile per new dependency on existing
// objects, none for kept dependencies, one per update.
func TestInitialAndUpdates(t *testing.T) {
	ns := namespace(t)
	cm1, cm2 := createCM(t, ns, "cm1", nil), createCM(t, ns, "cm2", nil)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
	b := newBarrier(t, e, rec, ns) // its source lists cm1 and cm2
	w := watcher("initial")

	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm1")); err != nil {
		t.Fatal(err)
	}
	reqs := rec.waitFor(t, w, 1)
	want := Cause{Watched: cmRef(ns, "cm1"), Namespace: ns, Name: "cm1", UID: cm1.UID, ResourceVersion: cm1.ResourceVersion, Op: OpInitial}
	if reqs[0].Watcher != w || !slices.Equal(reqs[0].Causes, []Cause{want}) {
		t.Fatalf("initial request = %+v, want watcher %s and cause %+v", reqs[0], w.Key(), want)
	}

	// AC-07: keep cm1, add cm2: one more reconcile, for cm2 only.
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: w, Watched: []cache.Ref{cmRef(ns, "cm1"), cmRef(ns, "cm2")}}); err != nil {
		t.Fatal(err)
	}
	reqs = rec.waitFor(t, w, 2)
	if got := reqs[1].Causes; len(got) != 1 || got[0].Name != "cm2" || got[0].Op != OpInitial || got[0].UID != cm2.UID {
		t.Fatalf("second request causes = %+v, want one initial for cm2", got)
	}
	if n := b.count(t, w); n != 2 {
		t.Fatalf("%d reconciles after subscribe, want 2", n)
	}

	// AC-08: one update, one reconcile with a modified cause.
	cm1 = updateCM(t, ns, "cm1", nil)
	reqs = rec.waitFor(t, w, 3)
	if got := reqs[2].Causes; len(got) != 1 || got[0].Op != OpModified || got[0].ResourceVersion != cm1.ResourceVersion {
		t.Fatalf("update causes = %+v, want modified at %s", got, cm1.ResourceVersion)
	}
	if n := b.count(t, w); n != 3 {
		t.Fatalf("%d reconciles after one update, want 3", n)
	}
}

// AC-09: with initial reconciles disabled, none on add, for every watcher
// whatever its own options say; updates still come.
func TestDisableInitialReconcile(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{DisableInitialReconcile: true})
	b := newBarrier(t, e, rec, ns) // its source lists cm
	w := watcher("no-initial")
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	subscribed, queried := watcher("no-initial-subscribe"), watcher("no-initial-query")
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: subscribed, Watched: []cache.Ref{cmRef(ns, "cm")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Query(ctxT(t), queried, WatcherOptions{}, []cache.Ref{cmRef(ns, "cm")}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []cache.Ref{w, subscribed, queried} {
		if n := b.count(t, w); n != 0 {
			t.Fatalf("%s: %d reconciles after add with initial disabled, want 0: %+v", w.Name, n, rec.requests(w))
		}
	}
	updateCM(t, ns, "cm", nil)
	rec.waitFor(t, w, 1)
	if n := b.count(t, w); n != 1 {
		t.Fatalf("%d reconciles after one update, want 1", n)
	}
}

// AC-Δ1: every watcher that joins a watch on existing objects gets its own
// initial reconcile, whoever watched them first.
func TestSecondWatcherGetsInitial(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{})
	createCM(t, ns, "shared", nil)
	first, second := watcher("first"), watcher("second")
	if err := e.AddWatcher(ctxT(t), first, cmRef(ns, "shared")); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, first, 1)
	streams := e.Stats().Streams
	if err := e.AddWatcher(ctxT(t), second, cmRef(ns, "shared")); err != nil {
		t.Fatal(err)
	}
	reqs := rec.waitFor(t, second, 1)
	if got := ops(reqs); !slices.Equal(got, []Op{OpInitial}) {
		t.Fatalf("second watcher's causes = %v, want [initial]", got)
	}
	if st := e.Stats(); st.Streams != streams || st.Watched != 1 {
		t.Fatalf("stats = %+v, want the same %d stream(s) and 1 watched ref", st, streams)
	}
}

// AC-10: an unknown kind fails registration and changes nothing; a failed
// Subscribe keeps the previous dependencies.
func TestUnknownKind(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
	b := newBarrier(t, e, rec, ns)
	w := watcher("unknown-kind")
	bad := cache.Ref{Version: "v1", Kind: "SuperCoolConfigMap", Namespace: ns, Name: "x"}
	if err := e.AddWatcher(ctxT(t), w, bad); !errors.Is(err, ErrNoVersionedResource) {
		t.Fatalf("add unknown kind: err = %v, want ErrNoVersionedResource", err)
	}
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	before := e.Stats()
	err := e.Subscribe(ctxT(t), Subscription{Watcher: w, Watched: []cache.Ref{cmRef(ns, "other"), bad}})
	if !errors.Is(err, ErrNoVersionedResource) {
		t.Fatalf("subscribe with unknown kind: err = %v, want ErrNoVersionedResource", err)
	}
	if after := e.Stats(); after.Watched != before.Watched || after.Streams != before.Streams {
		t.Fatalf("stats after failed subscribe = %+v, want as before %+v", after, before)
	}
	n := b.count(t, w)
	updateCM(t, ns, "cm", nil) // the kept dependency still works
	rec.waitFor(t, w, n+1)
}

// AC-11, AC-12, AC-13: watchers share one watch; removing one keeps it,
// removing the last stops it by the time the call returns; removals never
// reconcile, and removed dependencies no longer do.
func TestSharingAndRemoval(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
	createCM(t, ns, "a", nil)
	createCM(t, ns, "b", nil)
	w1, w2 := watcher("one"), watcher("two")
	if err := e.AddWatcher(ctxT(t), w1, cmRef(ns, "a"), cmRef(ns, "b")); err != nil {
		t.Fatal(err)
	}
	if err := e.AddWatcher(ctxT(t), w2, cmRef(ns, "a")); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Streams != 1 || st.Watched != 2 || st.Watchers != 2 {
		t.Fatalf("stats = %+v, want 1 stream for 2 refs of 2 watchers", st)
	}
	rec.waitFor(t, w1, 1)
	rec.waitFor(t, w2, 1)

	// AC-12: dropping b from w1 takes effect by return.
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: w1, Watched: []cache.Ref{cmRef(ns, "a")}}); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 1 {
		t.Fatalf("watched after subset = %d, want 1", st.Watched)
	}
	if err := e.RemoveWatcher(w1); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Streams != 1 || st.Watchers != 1 {
		t.Fatalf("stats after removing one of two = %+v, want the stream kept", st)
	}
	if err := e.RemoveWatcher(w2); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Streams != 0 || st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after removing the last = %+v, want nothing", st)
	}
	if err := e.RemoveWatcher(w2); err != nil {
		t.Fatalf("removing an unknown watcher: %v", err)
	}

	// AC-13: nothing for the removed watchers, before or after updates.
	b := newBarrier(t, e, rec, ns)
	n1, n2 := len(rec.requests(w1)), len(rec.requests(w2))
	updateCM(t, ns, "a", nil)
	updateCM(t, ns, "b", nil)
	b.wait(t)
	if len(rec.requests(w1)) != n1 || len(rec.requests(w2)) != n2 {
		t.Fatalf("removed watchers were reconciled: %v / %v", rec.requests(w1), rec.requests(w2))
	}
}

// AC-14, AC-Δ5: cancelling Start's context tears every watch down, even
// with a batch open.
func TestShutdownTearsDown(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	e := runEngine(t, integration(t).Config, newRecorder(), Options{})
	if err := e.AddWatcher(ctxT(t), watcher("a"), cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	b, err := e.StartBatch(watcher("batch"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctxT(t), cmGVK, ns, "cm"); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Streams == 0 {
		t.Fatal("no stream before shutdown")
	}
	if err := e.stop(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Streams != 0 || st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after shutdown = %+v, want nothing", st)
	}
	if _, err := b.Get(context.Background(), cmGVK, ns, "cm"); !errors.Is(err, ErrNoBatch) {
		t.Fatalf("Get on a batch after shutdown: err = %v, want ErrNoBatch", err)
	}
}

// AC-Δ6: selectors are canonical: two spellings are one watch and one
// cache key.
func TestCanonicalSelectors(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{})
	createCM(t, ns, "x", map[string]string{"a": "1", "b": "1"})
	if err := e.AddWatcher(ctxT(t), watcher("p"), cmSel(ns, "b=1,a=1")); err != nil {
		t.Fatal(err)
	}
	if err := e.AddWatcher(ctxT(t), watcher("q"), cmSel(ns, " a = 1 , b=1")); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 1 {
		t.Fatalf("watched refs = %d, want 1", st.Watched)
	}
	sel, _ := cache.ParseSelector("b=1, a=1")
	got, err := e.List(ctxT(t), cmGVK, ns, sel)
	if err != nil || len(got) != 1 || got[0].GetName() != "x" {
		t.Fatalf("List = %v, %v; want [x]", got, err)
	}
}

// AC-Δ7: any watched object can be read by name, whatever query brought it
// in; the cache strips managedFields and the last-applied annotation.
func TestGetByNameFromSelector(t *testing.T) {
	ns := namespace(t)
	e := startEngine(t, integration(t).Config, newRecorder(), Options{})
	createCM(t, ns, "x", map[string]string{"app": "web"})
	b, err := e.StartBatch(watcher("sel"))
	if err != nil {
		t.Fatal(err)
	}
	sel, _ := cache.ParseSelector("app=web")
	if objs, err := b.List(ctxT(t), cmGVK, ns, sel); err != nil || len(objs) != 1 {
		t.Fatalf("List = %v, %v", objs, err)
	}
	if err := b.End(); err != nil {
		t.Fatal(err)
	}
	o, err := e.Get(ctxT(t), cmGVK, ns, "x")
	if err != nil || o == nil {
		t.Fatalf("Get by name = %v, %v", o, err)
	}
	if _, ok := o.GetAnnotations()[cache.LastAppliedAnnotation]; ok || o.GetAnnotations()["keep"] != "me" {
		t.Errorf("annotations = %v, want last-applied stripped and others kept", o.GetAnnotations())
	}
	if len(o.GetManagedFields()) != 0 {
		t.Errorf("managedFields kept: %v", o.GetManagedFields())
	}
	if o.GetKind() != "ConfigMap" || o.GetAPIVersion() != "v1" || o.GetNamespace() != ns {
		t.Errorf("object = %s %s %s", o.GetAPIVersion(), o.GetKind(), o.GetNamespace())
	}
	// Not watched: no entry, not "not found".
	if _, err := e.Get(ctxT(t), cmGVK, "kube-system", "x"); !errors.Is(err, ErrNoCacheEntry) {
		t.Errorf("Get in an unwatched namespace: err = %v, want ErrNoCacheEntry", err)
	}
	// Watched and absent: nil, nil.
	if o, err := e.Get(ctxT(t), cmGVK, ns, "absent"); o != nil || err != nil {
		t.Errorf("Get of an absent object = %v, %v; want nil, nil", o, err)
	}
}

// Shared sources: one list+watch per namespace while every dependency is
// namespaced, one cluster-wide once one is not (or too many namespaces are
// watched); metadata only until a watcher reads objects.
func TestSourceScopesAndModes(t *testing.T) {
	ns1, ns2 := namespace(t), namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{MaxNamespaceSources: 2})
	createCM(t, ns1, "a", nil)
	createCM(t, ns2, "b", map[string]string{"app": "x"})
	if err := e.AddWatcher(ctxT(t), watcher("a"), cmRef(ns1, "a")); err != nil {
		t.Fatal(err)
	}
	if err := e.AddWatcher(ctxT(t), watcher("b"), cmSel(ns2, "app=x")); err != nil {
		t.Fatal(err)
	}
	scopes := func() (out []string, full []bool) {
		for _, s := range e.Sources() {
			out = append(out, s.Namespace)
			full = append(full, s.Full)
		}
		return out, full
	}
	got, full := scopes()
	want := []string{ns1, ns2}
	slices.Sort(want)
	if !slices.Equal(got, want) || slices.Contains(full, true) {
		t.Fatalf("sources = %v (full %v), want metadata-only per namespace %v", got, full, want)
	}
	// A dependency across namespaces: one cluster-wide source, and changes
	// made while switching are not lost.
	if err := e.AddWatcher(ctxT(t), watcher("all"), cmSel("", "app=x")); err != nil {
		t.Fatal(err)
	}
	if got, _ := scopes(); !slices.Equal(got, []string{""}) {
		t.Fatalf("sources = %v, want one cluster-wide", got)
	}
	updateCM(t, ns1, "a", nil)
	rec.waitFor(t, watcher("a"), 2)
	// A reader of objects: full objects.
	if _, err := e.Query(ctxT(t), watcher("reader"), WatcherOptions{}, []cache.Ref{cmRef(ns2, "b")}); err != nil {
		t.Fatal(err)
	}
	if _, full := scopes(); !slices.Equal(full, []bool{true}) {
		t.Fatalf("full = %v after a query, want [true]", full)
	}
	// Back to namespaced once the cross-namespace dependency goes.
	if err := e.RemoveWatcher(watcher("all")); err != nil {
		t.Fatal(err)
	}
	if got, _ := scopes(); !slices.Equal(got, want) {
		t.Fatalf("sources = %v, want %v again", got, want)
	}
	if e.Stats().Streams != 2 {
		t.Fatalf("streams = %d, want 2", e.Stats().Streams)
	}
	updateCM(t, ns1, "a", nil)
	rec.waitFor(t, watcher("a"), 3)
}
