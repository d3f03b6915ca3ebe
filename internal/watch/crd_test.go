package watch

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// widgetCRD defines group/Widget (plural widgets), namespaced.
func widgetCRD(group string) *unstructured.Unstructured {
	return testCRD(group, "Widget", "Namespaced")
}

// gadgetCRD defines group/Gadget (plural gadgets), cluster-scoped.
func gadgetCRD(group string) *unstructured.Unstructured { return testCRD(group, "Gadget", "Cluster") }

// testCRD defines group/kind, its plural the lowercase kind and "s", in
// scope (Namespaced or Cluster), with any content.
func testCRD(group, kind, scope string) *unstructured.Unstructured {
	singular := strings.ToLower(kind)
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": singular + "s." + group},
		"spec": map[string]any{
			"group": group, "scope": scope,
			"names": map[string]any{"plural": singular + "s", "singular": singular, "kind": kind, "listKind": kind + "List"},
			"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
}

// A watch on a kind whose CRD does not exist yet is accepted, visibly
// pending, and starts when the CRD is established; when the CRD is deleted,
// the watcher is reconciled and the watch waits again.
func TestPendingCRD(t *testing.T) {
	ns := namespace(t)
	dyn := dynamic.NewForConfigOrDie(integration(t).Config)
	group := "t" + randSuffix() + ".example.com"
	widgets := schema.GroupVersionResource{Group: group, Version: "v1", Resource: "widgets"}
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{})
	w := watcher("crd")
	ref := cache.Ref{Group: group, Version: "v1", Kind: "Widget", Namespace: ns, Selector: "*"}
	if err := e.AddWatcher(ctxT(t), w, ref); err != nil {
		t.Fatalf("add before the CRD exists: %v", err)
	}
	srcs := e.Sources()
	if i := slices.IndexFunc(srcs, func(s SourceStatus) bool { return s.Group == group }); i < 0 || srcs[i].State != StatePending {
		t.Fatalf("sources = %+v, want %s pending", srcs, group)
	}
	if st := e.Stats(); st.Pending != 1 || st.Watched != 1 {
		t.Fatalf("stats = %+v, want 1 pending", st)
	}

	ctx := context.Background()
	if _, err := dyn.Resource(crdGVR).Create(ctx, widgetCRD(group), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dyn.Resource(crdGVR).Delete(context.Background(), "widgets."+group, metav1.DeleteOptions{})
	})
	eventually(t, "the watch starts once the CRD is established", func() bool {
		s := e.Sources()
		i := slices.IndexFunc(s, func(s SourceStatus) bool { return s.Group == group })
		return i >= 0 && s[i].State == StateActive
	})
	widget := &unstructured.Unstructured{Object: map[string]any{"apiVersion": group + "/v1", "kind": "Widget",
		"metadata": map[string]any{"name": "w1", "namespace": ns}}}
	created, err := dyn.Resource(widgets).Namespace(ns).Create(ctx, widget, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reqs := rec.waitFor(t, w, 1)
	if c := reqs[0].Causes; c[0].Op != OpAdded || c[0].UID != created.GetUID() {
		t.Fatalf("causes = %+v, want added for the widget", c)
	}

	if err := dyn.Resource(crdGVR).Delete(ctx, "widgets."+group, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted and lost causes", func() bool {
		got := ops(rec.requests(w))
		return slices.Contains(got, OpDeleted) && slices.Contains(got, OpLost)
	})
	eventually(t, "the watch is pending again", func() bool {
		s := e.Sources()
		i := slices.IndexFunc(s, func(s SourceStatus) bool { return s.Group == group })
		return i >= 0 && s[i].State == StatePending
	})
	if st := e.Stats(); st.Watched != 1 || st.Pending != 1 {
		t.Fatalf("stats = %+v, want the dependency kept, pending", st)
	}
}

// A kind in a group no CRD can define (no dot) is an error, not pending.
func TestUnknownCoreKindIsNotPending(t *testing.T) {
	e := startEngine(t, integration(t).Config, newRecorder(), Options{})
	err := e.AddWatcher(ctxT(t), watcher("x"), cache.Ref{Group: "apps", Version: "v1", Kind: "NoSuchKind", Name: "x"})
	if err == nil || e.Stats().Pending != 0 {
		t.Fatalf("err = %v, pending = %d; want an error and nothing pending", err, e.Stats().Pending)
	}
}

// stepClock is a discovery clock that moves only when the test says so,
// and counts how often it is read.
type stepClock struct {
	mu    sync.Mutex
	now   time.Time
	reads int
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	return c.now
}

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *stepClock) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

// A watch with a namespace on a cluster-scoped kind that is not served yet
// waits under its own Ref, which becomes the Ref without namespace when the
// kind appears. If another call registered that Ref first (and its source
// is listed), the waiting watcher joins it and is treated as one whose kind
// just appeared: told of the objects as added (NoInitial or not), its
// bodies read, later changes reported; and it leaves no count behind.
func TestPendingRefJoinsOneRegisteredSince(t *testing.T) {
	dyn := dynamic.NewForConfigOrDie(integration(t).Config)
	group := "t" + randSuffix() + ".example.com"
	gadgets := schema.GroupVersionResource{Group: group, Version: "v1", Resource: "gadgets"}
	ctx := context.Background()
	clock := &stepClock{now: time.Now()}
	g := testenv.NewFaults()
	// The engine learns of the CRD only when the test says so: its CRD watch
	// is held, and a lookup that misses refetches discovery only once the
	// clock has moved.
	hold(t, g, func(req *http.Request) bool { return strings.HasSuffix(req.URL.Path, "/customresourcedefinitions") })
	rec := newRecorder()
	e := startEngine(t, g.Wrap(integration(t).Config), rec, Options{PendingRetry: time.Hour,
		Mapper: cache.MapperOptions{MinRefresh: time.Hour, Now: clock.Now}})
	pendingW, servedW := watcher("joins-pending"), watcher("joins-served")
	ref := cache.Ref{Group: group, Version: "v1", Kind: "Gadget", Name: "g1"}
	inNS := ref
	inNS.Namespace = "x"
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: pendingW, Watched: []cache.Ref{inNS},
		Options: WatcherOptions{NoInitial: true, Objects: true}}); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Pending != 1 {
		t.Fatalf("stats = %+v, want 1 pending", st)
	}

	t.Cleanup(func() {
		_ = dyn.Resource(crdGVR).Delete(context.Background(), "gadgets."+group, metav1.DeleteOptions{})
	})
	if _, err := dyn.Resource(crdGVR).Create(ctx, gadgetCRD(group), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var created *unstructured.Unstructured
	eventually(t, "the gadget is created", func() bool {
		var err error
		created, err = dyn.Resource(gadgets).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": group + "/v1", "kind": "Gadget", "metadata": map[string]any{"name": "g1"}}}, metav1.CreateOptions{})
		return err == nil
	})

	// Wake the resolver and let it look the kind up twice (not found:
	// discovery is not refetched): its next look is at least a second
	// away, unless it is woken.
	for range 2 {
		n := clock.count()
		e.kickResolver()
		// Two reads: the TTL check, then whether a miss may refetch.
		eventually(t, "the resolver looks the kind up", func() bool { return clock.count() >= n+2 })
	}
	// Another call finds the kind first and registers the Ref without
	// namespace; it returns once its source has listed.
	clock.advance(2 * time.Hour)
	if err := e.AddWatcher(ctxT(t), servedW, ref); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Pending != 1 {
		t.Fatalf("stats = %+v: the resolver found the kind before the second call; the race was not arranged", st)
	}
	if c := rec.waitFor(t, servedW, 1)[0].Causes; len(c) != 1 || c[0].Op != OpInitial || c[0].UID != created.GetUID() {
		t.Fatalf("served watcher: causes = %+v, want initial for the gadget", c)
	}

	e.kickResolver()
	eventually(t, "the pending Ref is resolved", func() bool { return e.Stats().Pending == 0 })
	if st := e.Stats(); st.Watched != 1 {
		t.Fatalf("stats = %+v, want 1 watched Ref", st)
	}
	reqs := rec.waitFor(t, pendingW, 1)
	if c := reqs[0].Causes; len(c) != 1 || c[0].Op != OpAdded || c[0].UID != created.GetUID() || c[0].Watched != ref {
		t.Fatalf("joining watcher: causes = %+v, want added for the gadget, watched as %s", c, ref)
	}
	gadgetSource := func() SourceStatus {
		for _, s := range e.Sources() {
			if s.Group == group {
				return s
			}
		}
		return SourceStatus{}
	}
	eventually(t, "the gadgets are listed in full for the joining watcher", func() bool {
		s := gadgetSource()
		return s.Full && s.State == StateActive
	})

	created.SetLabels(map[string]string{"changed": "yes"})
	updated, err := dyn.Resource(gadgets).Update(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reqs = rec.waitFor(t, pendingW, 2)
	if c := reqs[1].Causes; len(c) != 1 || c[0].Op != OpModified || c[0].ResourceVersion != updated.GetResourceVersion() {
		t.Fatalf("joining watcher: causes = %+v, want modified for the gadget", c)
	}

	if err := e.RemoveWatcher(pendingW); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	k := e.kinds[gadgets]
	bodyPairs := -1
	if k != nil {
		bodyPairs = k.bodyPairs
	}
	e.mu.Unlock()
	if bodyPairs != 0 {
		t.Fatalf("body pairs = %d after the joining watcher left, want 0", bodyPairs)
	}
	eventually(t, "the gadgets are listed as metadata only again", func() bool {
		s := gadgetSource()
		return !s.Full && s.State == StateActive
	})
}
