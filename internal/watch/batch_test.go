package watch

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
)

func names(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetName())
	}
	return out
}

// AC-05: with the cache disabled, reads and batches fail with
// ErrCacheDisabled, started or not.
func TestCacheDisabled(t *testing.T) {
	e := startEngine(t, integration(t).Config, newRecorder(), Options{DisableCache: true})
	ctx := ctxT(t)
	calls := map[string]func() error{
		"Get":         func() error { _, err := e.Get(ctx, cmGVK, "default", "x"); return err },
		"List":        func() error { _, err := e.List(ctx, cmGVK, "default", nil); return err },
		"ListWatched": func() error { _, err := e.ListWatched(watcher("w")); return err },
		"StartBatch":  func() error { _, err := e.StartBatch(watcher("w")); return err },
		"Query": func() error {
			_, err := e.Query(ctx, watcher("w"), WatcherOptions{}, []cache.Ref{cmRef("default", "x")})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrCacheDisabled) {
			t.Errorf("%s: err = %v, want ErrCacheDisabled", name, err)
		}
	}
}

// AC-22 to AC-34: query batches.
func TestQueryBatch(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{DisableInitialReconcile: true, Workers: 1})
	createCM(t, ns, "watched1", map[string]string{"app": "x"})
	createCM(t, ns, "watched2", map[string]string{"app": "x"})
	createCM(t, ns, "direct", nil)
	w := watcher("batch")

	// AC-23: a watch added directly before the batch counts as previous.
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "direct")); err != nil {
		t.Fatal(err)
	}
	b, err := e.StartBatch(w)
	if err != nil {
		t.Fatal(err)
	}
	// AC-25: one batch per watcher.
	if _, err := e.StartBatch(w); !errors.Is(err, ErrBatchInProgress) {
		t.Fatalf("second StartBatch: err = %v, want ErrBatchInProgress", err)
	}
	// AC-31: direct changes are refused while the batch is open.
	for name, err := range map[string]error{
		"AddWatcher":    e.AddWatcher(ctxT(t), w, cmRef(ns, "x")),
		"Subscribe":     e.Subscribe(ctxT(t), Subscription{Watcher: w, Watched: []cache.Ref{cmRef(ns, "x")}}),
		"RemoveWatcher": e.RemoveWatcher(w),
	} {
		if !errors.Is(err, ErrBatchInProgress) {
			t.Errorf("%s during a batch: err = %v, want ErrBatchInProgress", name, err)
		}
	}

	// AC-24: Get returns the stripped object, body included, and watches it;
	// a second Get adds nothing. Several Gets may run at once, and each
	// waits for the object to be cached in full (the watcher's direct
	// dependency left a metadata-only copy).
	var wg sync.WaitGroup
	got := make([]*unstructured.Unstructured, 4)
	errs := make([]error, 4)
	for i := range got {
		wg.Go(func() { got[i], errs[i] = b.Get(ctxT(t), cmGVK, ns, "watched1") })
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || got[i] == nil || got[i].GetName() != "watched1" || got[i].GetNamespace() != ns || got[i].GetKind() != "ConfigMap" {
			t.Fatalf("Get %d = %v, %v", i, got[i], errs[i])
		}
		if _, ok := got[i].GetAnnotations()[cache.LastAppliedAnnotation]; ok || len(got[i].GetManagedFields()) > 0 {
			t.Fatalf("Get returned an unstripped object: %v", got[i].GetAnnotations())
		}
		if !hasData(got[i]) {
			t.Fatalf("Get %d returned no data: %v", i, got[i].Object)
		}
	}
	if st := e.Stats(); st.Watched != 2 {
		t.Fatalf("watched = %d after Gets of one object, want 2 (direct + watched1)", st.Watched)
	}
	// A Get of a missing object watches it and returns nil.
	if o, err := b.Get(ctxT(t), cmGVK, ns, "not-yet"); o != nil || err != nil {
		t.Fatalf("Get of a missing object = %v, %v", o, err)
	}
	// AC-29: List with a selector.
	sel, _ := cache.ParseSelector("app=x")
	objs, err := b.List(ctxT(t), cmGVK, ns, sel)
	if err != nil || !slices.Equal(names(objs), []string{"watched1", "watched2"}) {
		t.Fatalf("List = %v, %v", names(objs), err)
	}
	// AC-32: End drops what the batch did not touch, the direct watch
	// included.
	if err := b.End(); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 3 {
		t.Fatalf("watched after End = %d, want 3 (watched1, not-yet, app=x)", st.Watched)
	}
	// AC-22: an ended batch refuses everything.
	if _, err := b.Get(ctxT(t), cmGVK, ns, "watched1"); !errors.Is(err, ErrNoBatch) {
		t.Errorf("Get after End: err = %v, want ErrNoBatch", err)
	}
	if _, err := b.List(ctxT(t), cmGVK, ns, nil); !errors.Is(err, ErrNoBatch) {
		t.Errorf("List after End: err = %v, want ErrNoBatch", err)
	}
	if err := b.End(); !errors.Is(err, ErrNoBatch) {
		t.Errorf("End after End: err = %v, want ErrNoBatch", err)
	}

	bar := newBarrier(t, e, rec, ns)
	// A later creation of the missing object reconciles the watcher.
	createCM(t, ns, "not-yet", nil)
	rec.waitFor(t, w, 1)
	// AC-26: an update shows up in the cache.
	cur := updateCM(t, ns, "watched1", nil)
	rec.waitFor(t, w, 2)
	if o, err := e.Get(ctxT(t), cmGVK, ns, "watched1"); err != nil || o.GetResourceVersion() != cur.ResourceVersion {
		t.Fatalf("Get after update = %v, %v; want resourceVersion %s", o, err, cur.ResourceVersion)
	}
	// AC-29: a new matching object shows up in List.
	createCM(t, ns, "watched3", map[string]string{"app": "x"})
	rec.waitFor(t, w, 3)
	if objs, _ := e.List(ctxT(t), cmGVK, ns, sel); !slices.Equal(names(objs), []string{"watched1", "watched2", "watched3"}) {
		t.Fatalf("List after create = %v", names(objs))
	}
	// The dropped direct dependency no longer reconciles.
	n := len(rec.requests(w))
	updateCM(t, ns, "direct", nil)
	bar.wait(t)
	if m := len(rec.requests(w)); m != n {
		t.Fatalf("dropped dependency reconciled the watcher (%d -> %d)", n, m)
	}
	// AC-27: a deleted object reads as nil, nil.
	deleteCM(t, ns, "watched2")
	eventually(t, "deleted object gone from the cache", func() bool {
		o, err := e.Get(ctxT(t), cmGVK, ns, "watched2")
		return o == nil && err == nil
	})
	// AC-28: ListWatched returns each watched object once.
	lw, err := e.ListWatched(w)
	if err != nil || !slices.Equal(names(lw), []string{"not-yet", "watched1", "watched3"}) {
		t.Fatalf("ListWatched = %v, %v", names(lw), err)
	}
	// AC-30: RemoveWatcher drops what the batch kept.
	if err := e.RemoveWatcher(w); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 1 { // the barrier's
		t.Fatalf("watched after remove = %d, want 1", st.Watched)
	}
}

// AC-33: an empty batch removes every dependency; AC-34: batch cleanup
// respects dependencies shared with other watchers.
func TestBatchCleanup(t *testing.T) {
	ns := namespace(t)
	e := startEngine(t, integration(t).Config, newRecorder(), Options{})
	createCM(t, ns, "shared", nil)
	for _, w := range []cache.Ref{watcher("a"), watcher("b")} {
		b, err := e.StartBatch(w)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctxT(t), cmGVK, ns, "shared"); err != nil {
			t.Fatal(err)
		}
		if err := b.End(); err != nil {
			t.Fatal(err)
		}
	}
	if st := e.Stats(); st.Watched != 1 || st.Streams != 1 || st.Watchers != 2 {
		t.Fatalf("stats = %+v, want one shared watch", st)
	}
	empty, err := e.StartBatch(watcher("a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := empty.End(); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 1 || st.Watchers != 1 {
		t.Fatalf("stats after a's empty batch = %+v, want b's watch kept", st)
	}
	if err := e.RemoveWatcher(watcher("b")); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 0 || st.Streams != 0 || st.Watchers != 0 {
		t.Fatalf("stats after removing b = %+v, want nothing", st)
	}
}

// AC-35, AC-36: a cluster-scoped kind read with a bogus namespace works,
// and repeating the batch does not tear its watch down.
func TestClusterScopedBatch(t *testing.T) {
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{DisableInitialReconcile: true})
	res, err := e.Resource(ctxT(t), cmGVK)
	if err != nil || res.Resource != "configmaps" || !res.Namespaced {
		t.Fatalf("Resource(ConfigMap) = %+v, %v", res, err)
	}
	nsGVK := schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}
	ns := namespace(t)
	w := watcher("cluster-scoped")
	for range 2 {
		b, err := e.StartBatch(w)
		if err != nil {
			t.Fatal(err)
		}
		o, err := b.Get(ctxT(t), nsGVK, "some-namespace", ns)
		if err != nil || o == nil || o.GetName() != ns {
			t.Fatalf("Get namespace = %v, %v", o, err)
		}
		if err := b.End(); err != nil {
			t.Fatal(err)
		}
		if st := e.Stats(); st.Watched != 1 || st.Streams != 1 {
			t.Fatalf("stats = %+v, want the watch kept", st)
		}
	}
	if o, err := e.Get(ctxT(t), nsGVK, "", ns); err != nil || o == nil {
		t.Fatalf("Get with no namespace = %v, %v", o, err)
	}
	// Deleting it marks it terminating (envtest runs no namespace
	// controller): a modification.
	if err := kube(t).CoreV1().Namespaces().Delete(ctxT(t), ns, deleteNow); err != nil {
		t.Fatal(err)
	}
	if c := rec.waitFor(t, w, 1)[0].Causes; c[0].Op != OpModified || c[0].Namespace != "" || c[0].Name != ns {
		t.Fatalf("causes = %+v, want modified for namespace %s", c, ns)
	}
}

// Query applies a list of queries as one batch, all or nothing, and
// returns what each finds.
func TestQuery(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{})
	createCM(t, ns, "one", map[string]string{"app": "q"})
	createCM(t, ns, "two", map[string]string{"app": "q"})
	w := watcher("query")
	res, err := e.Query(ctxT(t), w, WatcherOptions{NoInitial: true}, []cache.Ref{cmRef(ns, "one"), cmSel(ns, "app=q"), cmRef(ns, "absent")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || !slices.Equal(names(res[0].Objects), []string{"one"}) ||
		!slices.Equal(names(res[1].Objects), []string{"one", "two"}) || len(res[2].Objects) != 0 {
		t.Fatalf("results = %+v", res)
	}
	// A bad query changes nothing.
	bad := cache.Ref{Version: "v1", Kind: "NoSuchKind", Namespace: ns, Name: "x"}
	if _, err := e.Query(ctxT(t), w, WatcherOptions{}, []cache.Ref{cmRef(ns, "two"), bad}); !errors.Is(err, ErrNoVersionedResource) {
		t.Fatalf("bad query: err = %v", err)
	}
	if st := e.Stats(); st.Watched != 3 {
		t.Fatalf("watched after a failed query = %d, want 3", st.Watched)
	}
	// Exactly these queries: a narrower query drops the others.
	if _, err := e.Query(ctxT(t), w, WatcherOptions{NoInitial: true}, []cache.Ref{cmRef(ns, "two")}); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 1 {
		t.Fatalf("watched after a narrower query = %d, want 1", st.Watched)
	}
	updateCM(t, ns, "two", nil)
	if c := rec.waitFor(t, w, 1)[0].Causes; c[0].Name != "two" || c[0].Op != OpModified {
		t.Fatalf("causes = %+v", c)
	}
	// No queries: no dependencies.
	if _, err := e.Query(ctxT(t), w, WatcherOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after an empty query = %+v", st)
	}
}
