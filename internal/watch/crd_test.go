package watch

import (
	"context"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/depbridge/depbridge/internal/cache"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// widgetCRD defines group/Widget (plural widgets), namespaced.
func widgetCRD(group string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "widgets." + group},
		"spec": map[string]any{
			"group": group, "scope": "Namespaced",
			"names": map[string]any{"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
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
