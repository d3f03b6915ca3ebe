package cache

import (
	"errors"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

var (
	cmGVR = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	cmGVK = schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}
)

func cm(ns, name, rv string, lbls map[string]string) *Object {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(cmGVK)
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetUID(types.UID(ns + "/" + name))
	u.SetResourceVersion(rv)
	u.SetLabels(lbls)
	u.SetAnnotations(map[string]string{LastAppliedAnnotation: "{}", "keep": "me"})
	u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "kubectl"}})
	o, err := NewObject(u)
	if err != nil {
		panic(err)
	}
	return o
}

func namesOf(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetNamespace()+"/"+o.GetName())
	}
	return out
}

// AC-37, AC-38, AC-42: nothing cached is ErrNoCacheEntry; a covered scope
// answers (nil, nil) for absent objects; updates replace; forgetting brings
// ErrNoCacheEntry back.
func TestStoreEntries(t *testing.T) {
	s := NewStore()
	if o, err := s.Get(cmGVR, "ns", "a"); o != nil || !errors.Is(err, ErrNoCacheEntry) {
		t.Fatalf("Get on an empty store = %v, %v", o, err)
	}
	if l, err := s.List(cmGVR, "ns", nil); l != nil || !errors.Is(err, ErrNoCacheEntry) {
		t.Fatalf("List on an empty store = %v, %v", l, err)
	}
	s.Replace(cmGVR, cmGVK, "ns", nil) // an empty list: covered, nothing in it
	if o, err := s.Get(cmGVR, "ns", "a"); o != nil || err != nil {
		t.Fatalf("Get of an absent object = %v, %v; want nil, nil", o, err)
	}
	if l, err := s.List(cmGVR, "ns", nil); len(l) != 0 || err != nil {
		t.Fatalf("List of an empty scope = %v, %v", l, err)
	}
	if _, err := s.Get(cmGVR, "other", "a"); !errors.Is(err, ErrNoCacheEntry) {
		t.Fatalf("Get in an uncovered namespace: err = %v", err)
	}
	if old, changed := s.Apply(cmGVR, cmGVK, cm("ns", "a", "1", nil)); old != nil || !changed {
		t.Fatalf("Apply new = %v, %v", old, changed)
	}
	if old, changed := s.Apply(cmGVR, cmGVK, cm("ns", "a", "1", nil)); old == nil || changed {
		t.Fatalf("Apply same version = %v, %v; want old and unchanged", old, changed)
	}
	s.Apply(cmGVR, cmGVK, cm("ns", "a", "2", nil))
	o, err := s.Get(cmGVR, "ns", "a")
	if err != nil || o.GetResourceVersion() != "2" {
		t.Fatalf("Get after update = %v, %v", o, err)
	}
	if _, ok := o.GetAnnotations()[LastAppliedAnnotation]; ok || o.GetAnnotations()["keep"] != "me" || len(o.GetManagedFields()) != 0 {
		t.Fatalf("stored object not stripped: %v %v", o.GetAnnotations(), o.GetManagedFields())
	}
	s.Forget(cmGVR)
	if _, err := s.Get(cmGVR, "ns", "a"); !errors.Is(err, ErrNoCacheEntry) {
		t.Fatalf("Get after Forget: err = %v", err)
	}
}

// AC-39 adapted: lists come back in a stable order (namespace, name);
// Replace reports exactly what differs.
func TestStoreReplaceDiff(t *testing.T) {
	s := NewStore()
	s.Replace(cmGVR, cmGVK, "", []*Object{cm("b", "x", "1", nil), cm("a", "y", "1", map[string]string{"app": "w"}), cm("a", "x", "1", nil)})
	l, _ := s.List(cmGVR, "", nil)
	if got := namesOf(l); !slices.Equal(got, []string{"a/x", "a/y", "b/x"}) {
		t.Fatalf("List = %v", got)
	}
	sel, _ := ParseSelector("app=w")
	if l, _ := s.List(cmGVR, "a", sel); !slices.Equal(namesOf(l), []string{"a/y"}) {
		t.Fatalf("List with selector = %v", namesOf(l))
	}
	changes := s.Replace(cmGVR, cmGVK, "a", []*Object{cm("a", "x", "1", nil), cm("a", "z", "1", nil)})
	var got []string
	for _, c := range changes {
		switch {
		case c.Old == nil:
			got = append(got, "+"+c.New.Name)
		case c.New == nil:
			got = append(got, "-"+c.Old.Name)
		default:
			got = append(got, "~"+c.New.Name)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"+z", "-y"}) {
		t.Fatalf("changes = %v, want +z -y (a/x unchanged, b untouched)", got)
	}
	if l, _ := s.List(cmGVR, "", nil); !slices.Equal(namesOf(l), []string{"a/x", "a/z", "b/x"}) {
		t.Fatalf("after a namespace replace = %v", namesOf(l))
	}
	// Narrowing the coverage drops what is outside it.
	s.Retain(cmGVR, []string{"a"})
	if _, err := s.Get(cmGVR, "b", "x"); !errors.Is(err, ErrNoCacheEntry) {
		t.Fatalf("b after Retain(a): err = %v", err)
	}
	if o, err := s.Get(cmGVR, "a", "z"); o == nil || err != nil {
		t.Fatalf("a/z after Retain(a) = %v, %v", o, err)
	}
	if s.Len(cmGVR) != 2 {
		t.Fatalf("Len = %d", s.Len(cmGVR))
	}
}

// AC-43, AC-Δ4 (the seed's P4): reads are copies by default; without
// copies, readers see stored objects but results already returned never
// change when the store does.
func TestStoreReadsAreSafe(t *testing.T) {
	s := NewStore()
	s.Replace(cmGVR, cmGVK, "ns", []*Object{cm("ns", "a", "1", nil), cm("ns", "b", "1", nil), cm("ns", "c", "1", nil)})
	o, _ := s.Get(cmGVR, "ns", "a")
	o.SetLabels(map[string]string{"mutated": "yes"})
	if again, _ := s.Get(cmGVR, "ns", "a"); len(again.GetLabels()) != 0 {
		t.Fatal("mutating a read changed the store")
	}

	s.UnsafeDisableDeepCopy = true
	held, _ := s.List(cmGVR, "ns", nil)
	first, _ := s.Get(cmGVR, "ns", "a")
	if first != held[0] {
		t.Fatal("without deep copies, reads should return the stored object")
	}
	s.Delete(cmGVR, "ns", "a")
	s.Apply(cmGVR, cmGVK, cm("ns", "b", "2", nil))
	if got := namesOf(held); !slices.Equal(got, []string{"ns/a", "ns/b", "ns/c"}) || held[1].GetResourceVersion() != "1" {
		t.Fatalf("a held result changed under its reader: %v (b at %s)", got, held[1].GetResourceVersion())
	}
}

// AC-Δ9 (the seed's P3): storing nothing is an error, never a panic.
func TestNewObjectRejectsNil(t *testing.T) {
	for name, obj := range map[string]any{
		"nil":                 nil,
		"nil unstructured":    (*unstructured.Unstructured)(nil),
		"nil metadata":        (*metav1.PartialObjectMetadata)(nil),
		"wrong type":          "a string",
		"typed object as map": map[string]any{},
	} {
		if _, err := NewObject(obj); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%s: err = %v, want ErrInvalidInput", name, err)
		}
	}
}

// Metadata-only objects are exported as unstructured objects of their kind.
func TestStoreMetadataOnly(t *testing.T) {
	s := NewStore()
	m := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "m", ResourceVersion: "7",
		Labels: map[string]string{"a": "b"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}}}}
	o, err := NewObject(m)
	if err != nil {
		t.Fatal(err)
	}
	s.Replace(cmGVR, cmGVK, "ns", []*Object{o})
	got, err := s.List(cmGVR, "ns", labels.SelectorFromSet(labels.Set{"a": "b"}))
	if err != nil || len(got) != 1 {
		t.Fatalf("List = %v, %v", got, err)
	}
	if got[0].GetKind() != "ConfigMap" || got[0].GetAPIVersion() != "v1" || got[0].GetResourceVersion() != "7" || len(got[0].GetManagedFields()) != 0 {
		t.Fatalf("exported metadata = %v", got[0].Object)
	}
}
