package watch

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
)

// hold holds back f's requests that match until the test releases them
// (or ends).
func hold(t *testing.T, f *testenv.Faults, match func(*http.Request) bool) {
	f.Hold(match)
	t.Cleanup(f.Release)
}

// heldRequest waits until f holds a request.
func heldRequest(t *testing.T, f *testenv.Faults) string {
	t.Helper()
	return receive(t, f.Held(), wait, "no request held")
}

// isCollection: a LIST or WATCH of resource in namespace ns (a Reflector
// lists through a watch, sendInitialEvents, when the server allows it).
func isCollection(ns, resource string) func(*http.Request) bool {
	return func(req *http.Request) bool {
		return req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/namespaces/"+ns+"/"+resource)
	}
}

// hasData reports whether a ConfigMap read from the cache has its body.
func hasData(o *unstructured.Unstructured) bool {
	v, found, _ := unstructured.NestedString(o.Object, "data", "v")
	return found && v != ""
}

// A watcher that depends on an object as metadata only and then queries it
// gets its body: the call waits for the full source that replaces the
// metadata-only one.
func TestQueryAfterSubscribeReturnsBodies(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	e := startEngine(t, integration(t).Config, newRecorder(), Options{})
	w := watcher("meta-then-query")
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: w, Watched: []cache.Ref{cmRef(ns, "cm")}}); err != nil {
		t.Fatal(err)
	}
	if srcs := e.Sources(); len(srcs) != 1 || srcs[0].Full {
		t.Fatalf("sources = %+v, want one metadata-only", srcs)
	}
	res, err := e.Query(ctxT(t), w, WatcherOptions{}, []cache.Ref{cmRef(ns, "cm")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || len(res[0].Objects) != 1 || !hasData(res[0].Objects[0]) {
		t.Fatalf("Query = %+v, want cm with its data", res)
	}
	if o, err := e.Get(ctxT(t), cmGVK, ns, "cm"); err != nil || !hasData(o) {
		t.Fatalf("Get = %v, %v; want cm with its data", o, err)
	}
}

// AC-24: Gets of the same object may run at once; each returns once the
// object is cached in full, whichever call registered it, and still does
// when that call gives up and rolls back.
func TestConcurrentGetsShareTheWait(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	g := testenv.NewFaults()
	e := startEngine(t, g.Wrap(integration(t).Config), newRecorder(), Options{})
	b, err := e.StartBatch(watcher("gets"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.End() }()

	type result struct {
		o   *unstructured.Unstructured
		err error
	}
	get := func(ctx context.Context) chan result {
		ch := make(chan result, 1)
		go func() {
			o, err := b.Get(ctx, cmGVK, ns, "cm")
			ch <- result{o, err}
		}()
		return ch
	}
	hold(t, g, isCollection(ns, "configmaps"))
	firstCtx, cancelFirst := context.WithCancel(ctxT(t))
	defer cancelFirst()
	first := get(firstCtx)
	heldRequest(t, g) // the first Get registered the object and listens
	second := get(ctxT(t))
	select {
	case r := <-second:
		t.Fatalf("second Get returned %v, %v before the object was listed", r.o, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	// The first Get gives up: the second registers the object again.
	cancelFirst()
	if r := receive(t, first, wait, "first Get did not return"); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("first Get = %v, %v; want context.Canceled", r.o, r.err)
	}
	select {
	case r := <-second:
		t.Fatalf("second Get returned %v, %v when the first gave up", r.o, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	third := get(ctxT(t))
	g.Release()
	for name, ch := range map[string]chan result{"second": second, "third": third} {
		r := receive(t, ch, wait, name+" Get did not return")
		if r.err != nil || r.o == nil || !hasData(r.o) {
			t.Fatalf("%s Get = %v, %v; want cm with its data", name, r.o, r.err)
		}
	}
	if st := e.Stats(); st.Watched != 1 || st.Streams != 1 {
		t.Fatalf("stats = %+v, want 1 watched and 1 stream", st)
	}
}

// Two registrations of the same dependency at once both fail when its
// watch is refused: the second does not return before the first knows.
func TestConcurrentAddsShareTheFailure(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	user := "nowatch-" + ns
	grant(t, user, ns, "get", "list")
	g := testenv.NewFaults()
	e := startEngine(t, g.Wrap(userConfig(t, user)), newRecorder(), Options{})
	w := watcher("concurrent-adds")
	hold(t, g, isCollection(ns, "configmaps"))
	errs := make(chan error, 2)
	go func() { errs <- e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")) }()
	heldRequest(t, g)
	go func() { errs <- e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")) }()
	select {
	case err := <-errs:
		t.Fatalf("an AddWatcher returned %v before the list", err)
	case <-time.After(300 * time.Millisecond):
	}
	g.Release()
	for range 2 {
		if err := receive(t, errs, wait, "AddWatcher did not return"); !apierrors.IsForbidden(err) {
			t.Fatalf("AddWatcher: err = %v, want Forbidden", err)
		}
	}
	if st := e.Stats(); st.Watchers != 0 || st.Watched != 0 || st.Streams != 0 {
		t.Fatalf("stats = %+v, want nothing left", st)
	}
}

// A watcher of a kind that is not served yet hears of every object of it as
// added, whatever NoInitial says: none existed when it started to depend
// on them. Objects in the kind's first list included, and again after the
// CRD was deleted and came back.
func TestPendingKindReportsObjectsAsAdded(t *testing.T) {
	ns := namespace(t)
	dyn := dynamic.NewForConfigOrDie(integration(t).Config)
	group := "t" + randSuffix() + ".example.com"
	widgets := schema.GroupVersionResource{Group: group, Version: "v1", Resource: "widgets"}
	g := testenv.NewFaults()
	rec := newRecorder()
	e := startEngine(t, g.Wrap(integration(t).Config), rec, Options{})
	quiet, loud := watcher("pending-noinitial"), watcher("pending-initial")
	ref := cache.Ref{Group: group, Version: "v1", Kind: "Widget", Namespace: ns, Name: "w1"}
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: quiet, Watched: []cache.Ref{ref}, Options: WatcherOptions{NoInitial: true}}); err != nil {
		t.Fatal(err)
	}
	if err := e.AddWatcher(ctxT(t), loud, ref); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		_ = dyn.Resource(crdGVR).Delete(context.Background(), "widgets."+group, metav1.DeleteOptions{})
	})
	// installAndCreate installs the CRD and creates the widget while the
	// engine's first list of widgets is held back, so that the widget is in
	// that list.
	installAndCreate := func() *unstructured.Unstructured {
		t.Helper()
		hold(t, g, isCollection(ns, "widgets"))
		eventually(t, "the CRD is created", func() bool {
			_, err := dyn.Resource(crdGVR).Create(ctx, widgetCRD(group), metav1.CreateOptions{})
			return err == nil
		})
		heldRequest(t, g)
		var created *unstructured.Unstructured
		eventually(t, "the widget is created", func() bool {
			var err error
			created, err = dyn.Resource(widgets).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": group + "/v1", "kind": "Widget", "metadata": map[string]any{"name": "w1", "namespace": ns}}}, metav1.CreateOptions{})
			return err == nil
		})
		g.Release()
		return created
	}
	// check: each watcher's next request after its before first ones says
	// the widget was added.
	check := func(before map[cache.Ref]int, created *unstructured.Unstructured) {
		t.Helper()
		for w, n := range before {
			reqs := rec.waitFor(t, w, n+1)
			c := reqs[n].Causes
			if len(c) != 1 || c[0].Op != OpAdded || c[0].UID != created.GetUID() {
				t.Fatalf("%s: causes = %+v, want added for the widget", w.Name, c)
			}
		}
	}
	check(map[cache.Ref]int{quiet: 0, loud: 0}, installAndCreate())

	if err := dyn.Resource(crdGVR).Delete(ctx, "widgets."+group, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the widget kind is pending again", func() bool {
		return e.Stats().Pending == 1 && slices.Contains(ops(rec.requests(quiet)), OpLost) &&
			slices.Contains(ops(rec.requests(loud)), OpLost)
	})
	eventually(t, "the CRD is gone", func() bool {
		_, err := dyn.Resource(crdGVR).Get(ctx, "widgets."+group, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	check(map[cache.Ref]int{quiet: len(rec.requests(quiet)), loud: len(rec.requests(loud))}, installAndCreate())
}

// Removing a kind whose CRD was deleted does not hold the engine's lock
// while discovery is being fetched (client-go's mapper holds its own lock
// for the whole fetch): the watcher hears of it at once.
func TestKindGoneDoesNotWaitForDiscovery(t *testing.T) {
	ns := namespace(t)
	dyn := dynamic.NewForConfigOrDie(integration(t).Config)
	group := "t" + randSuffix() + ".example.com"
	ctx := context.Background()
	if _, err := dyn.Resource(crdGVR).Create(ctx, widgetCRD(group), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dyn.Resource(crdGVR).Delete(context.Background(), "widgets."+group, metav1.DeleteOptions{})
	})
	g := testenv.NewFaults()
	rec := newRecorder()
	// Every lookup of an unknown kind refetches discovery.
	e := startEngine(t, g.Wrap(integration(t).Config), rec, Options{Mapper: cache.MapperOptions{MinRefresh: time.Nanosecond}})
	w := watcher("kind-gone")
	ref := cache.Ref{Group: group, Version: "v1", Kind: "Widget", Namespace: ns, Selector: "*"}
	eventually(t, "the widget kind is watched", func() bool {
		if err := e.AddWatcher(ctxT(t), w, ref); err != nil {
			t.Fatal(err)
		}
		return e.Stats().Pending == 0
	})

	// Hold discovery (/api, /apis, /api/v1, /apis/group/version), and start
	// a lookup that must fetch it: it holds the mapper's lock until the
	// faults release it.
	hold(t, g, func(req *http.Request) bool {
		parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
		return (parts[0] == "api" && len(parts) <= 2) || (parts[0] == "apis" && len(parts) <= 3)
	})
	go func() {
		_, _ = e.Resource(ctx, schema.GroupVersionKind{Group: "none-" + group, Version: "v1", Kind: "Nothing"})
	}()
	heldRequest(t, g)

	if err := dyn.Resource(crdGVR).Delete(ctx, "widgets."+group, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !slices.Contains(ops(rec.requests(w)), OpLost) {
		if time.Now().After(deadline) {
			t.Fatalf("no lost cause within 15s of the CRD's deletion while discovery is held; requests %+v", rec.requests(w))
		}
		time.Sleep(20 * time.Millisecond)
	}
	statsDone := make(chan Stats, 1)
	go func() { statsDone <- e.Stats() }()
	if st := receive(t, statsDone, time.Second, "Stats blocked while discovery is held"); st.Pending != 1 {
		t.Fatalf("stats = %+v, want the dependency pending", st)
	}
}

// A call that fails does not take away a dependency a concurrent call
// named too and has returned on: that call confirmed it, with its initial
// reconcile, and its watcher keeps hearing of it.
func TestRollbackKeepsWhatAnotherCallReturnedOn(t *testing.T) {
	ns1, ns2 := namespace(t), namespace(t)
	createCM(t, ns1, "a", nil)
	createCM(t, ns2, "b", nil)
	g := testenv.NewFaults()
	rec := newRecorder()
	e := startEngine(t, g.Wrap(integration(t).Config), rec, Options{})
	w := watcher("rolled-back")
	hold(t, g, isCollection(ns2, "configmaps"))
	ctxA, cancelA := context.WithCancel(ctxT(t))
	defer cancelA()
	errA := make(chan error, 1)
	go func() { errA <- e.AddWatcher(ctxA, w, cmRef(ns1, "a"), cmRef(ns2, "b")) }()
	heldRequest(t, g) // A added both and waits for ns2's list
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns1, "a")); err != nil {
		t.Fatalf("B: %v", err)
	}
	cancelA()
	if err := receive(t, errA, wait, "A did not return"); !errors.Is(err, context.Canceled) {
		t.Fatalf("A = %v, want context.Canceled", err)
	}
	reqs := rec.waitFor(t, w, 1)
	if c := reqs[0].Causes; len(c) != 1 || c[0].Op != OpInitial || c[0].Name != "a" {
		t.Fatalf("first request %+v, want the initial reconcile of %s/a", reqs[0], ns1)
	}
	if st := e.Stats(); st.Watchers != 1 || st.Watched != 1 {
		t.Fatalf("stats = %+v, want the watcher with its one dependency left", st)
	}
	updateCM(t, ns1, "a", nil)
	reqs = rec.waitFor(t, w, 2)
	if c := reqs[1].Causes; len(c) != 1 || c[0].Op != OpModified || c[0].Name != "a" {
		t.Fatalf("after an update of a: %+v, want it modified", reqs[1])
	}
}
